"""SRS as an ingest node: its http_hooks (bodies as SRS 6.0.157 sent them), answered
in the form SRS reads ({"code": 0} allows); its HTTP API polled for the streams'
figures (Service.observe keeps the sessions fresh and enforces the limits, since SRS
never re-asks) and called to kick publishers. The API is a local stand-in here,
answering as SRS did; tests/test_e2e_srs.py runs the real SRS."""

import logging
import re

import pytest
import webtest

import livestream_api
from conftest import ADMIN
from ingest_support import JsonApi, get, make_channel, sessions, stream_args

#: SRS's own ids: the server's (hook server_id, streams API server) and a client's.
SERVER = 'vid-kre35l4'


def srs_stream(name, cid='589a46j9', recv_bytes=61277, kbps=0, clients=1, active=True):
    """One item of SRS 6.0.157's GET /api/v1/streams/ (as seen with ffmpeg publishing)."""
    return {'id': 'vid-671jw14', 'name': name, 'vhost': 'vid-4974871', 'app': 'live',
            'tcUrl': 'rtmp://127.0.0.1:19350/live', 'url': '/live/' + name,
            'live_ms': 1796084074660, 'clients': clients, 'frames': 0, 'send_bytes': 4386,
            'recv_bytes': recv_bytes, 'kbps': {'recv_30s': kbps, 'send_30s': 0},
            'publish': {'active': active, 'cid': cid},
            'video': {'codec': 'H264', 'profile': 'Other', 'level': '3', 'width': 640,
                      'height': 352},
            'audio': {'codec': 'AAC', 'sample_rate': 44100, 'channel': 2, 'profile': 'LC'}}


class FakeSrs:
    """SRS's HTTP API: the streams set by tests (paged as SRS pages them), and
    DELETE /api/v1/clients/<cid> answering code 0 for a listed publisher, else 2049."""

    def __init__(self):
        self.streams, self.code = [], 0
        self.api = JsonApi(self.answer)
        self.url = self.api.url

    def answer(self, method, path):
        if method == 'GET' and path.startswith('/api/v1/streams/?'):
            query = dict(re.findall(r'(\w+)=(\d+)', path))
            start, count = int(query.get('start', 0)), max(10, int(query.get('count', 10)))
            return 200, {'code': self.code, 'server': SERVER, 'service': '78v7008u',
                         'pid': '27778', 'streams': self.streams[start:start + count]}
        if method == 'DELETE' and path.startswith('/api/v1/clients/'):
            cid = path.rsplit('/', 1)[1]
            listed = [stream for stream in self.streams if stream['publish']['cid'] == cid]
            for stream in listed:
                self.streams.remove(stream)
            return 200, {'code': 0} if listed else {'code': 2049}
        return 404, {'code': 1000}

    @property
    def kicks(self):
        return [path for method, path in self.api.calls if method == 'DELETE']


@pytest.fixture
def srs():
    fake = FakeSrs()
    yield fake
    fake.api.close()


@pytest.fixture
def app(make_app, srs):
    return make_app(ingest={'kind': 'srs', 'api_url': srs.url, 'update_interval': '10'})[1]


@pytest.fixture
def hook(app):
    test_app = webtest.TestApp(app)

    def hook(action, channel, client_id='589a46j9', key=None, stream=None, secret=None,
             **fields):
        name, right_key = stream_args(channel) if isinstance(channel, dict) else (channel, '')
        body = {'server_id': SERVER, 'service_id': '78v7008u', 'action': action,
                'client_id': client_id, 'ip': '127.0.0.1', 'vhost': '__defaultVhost__',
                'app': 'live', 'tcUrl': 'rtmp://127.0.0.1:19350/live',
                'stream': name if stream is None else stream,
                'param': '?key=%s' % (right_key if key is None else key),
                'stream_url': '/live/' + name, 'stream_id': 'vid-671jw14'}
        body.update(fields)
        return test_app.post_json('/v1/hooks/srs?secret=%s' % (
            app.livestream.hook_secret if secret is None else secret), body, expect_errors=True)
    return hook


# The hooks ---------------------------------------------------------------------

def test_on_publish_with_the_key_goes_live_and_answers_code_0(admin, hook):
    channel = make_channel(admin)
    answer = hook('on_publish', channel)
    assert answer.status_int == 200
    assert answer.json == {'code': 0, 'ec': 0, 'data': {'allowed': True}}
    assert get(admin, channel)['status'] == 'live'


@pytest.mark.parametrize('case', ['wrong key', 'no key', 'wrong secret', 'disabled'])
def test_a_refusal_is_403_with_a_non_zero_code(admin, hook, case):
    channel = make_channel(admin)
    if case == 'disabled':
        admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    answer = hook('on_publish', channel, key={'wrong key': 'x' * 40, 'no key': ''}.get(case),
                  secret='wrong' if case == 'wrong secret' else None)
    assert answer.status_int == 403
    assert answer.json['code'] == 403 and answer.json['ec'] == 4
    assert answer.json['msg']
    assert get(admin, channel)['status'] == ('disabled' if case == 'disabled' else 'idle')


def test_a_body_srs_does_not_send_is_a_400_with_a_code(app, admin, hook):
    channel = make_channel(admin)
    assert hook('on_what', channel).json['code'] == 400
    form = webtest.TestApp(app).post('/v1/hooks/srs?secret=' + app.livestream.hook_secret,
                                     {'action': 'on_publish'}, expect_errors=True)
    assert (form.status_int, form.json['code'], form.json['ec']) == (400, 400, 1)


def test_other_actions_are_acknowledged(admin, hook):
    channel = make_channel(admin)
    answer = hook('on_dvr', channel)
    assert answer.json == {'code': 0, 'ec': 0, 'data': {'ignored': 'on_dvr'}}


def test_on_unpublish_ends_the_session(admin, hook):
    channel = make_channel(admin)
    hook('on_publish', channel)
    assert hook('on_unpublish', channel).json['data'] == {'ended': True}
    assert get(admin, channel)['status'] == 'idle'
    assert sessions(admin, channel)['items'][0]['endReason'] == 'publisher_left'


def test_another_connection_cannot_publish_a_live_channel(admin, hook):
    channel = make_channel(admin)
    hook('on_publish', channel, client_id='first')
    taken = hook('on_publish', channel, client_id='second')
    assert (taken.status_int, taken.json['code']) == (403, 403)
    assert 'another connection' in taken.json['msg']


def test_an_hls_playlist_fetch_is_a_viewer_of_its_stream(admin, hook):
    channel = make_channel(admin)
    hook('on_publish', channel)
    answer = hook('on_play', channel, client_id='34505042', stream=channel['id'] + '.m3u8',
                  param='', tcUrl='http://127.0.0.1/live', pageUrl='')
    assert answer.json == {'code': 0, 'ec': 0, 'data': {'allowed': True}}
    stats = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']
    assert stats['current']['viewers'] == 1
    hook('on_stop', channel, client_id='34505042', stream=channel['id'] + '.m3u8', param='')
    stats = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']
    assert stats['current']['viewers'] == 0


def test_an_hls_viewer_of_no_channel_is_refused(hook):
    answer = hook('on_play', 'abcdefghijklmnop', stream='abcdefghijklmnop.m3u8', param='')
    assert (answer.status_int, answer.json['code']) == (403, 403)
    assert answer.json['msg'] == 'no such channel'


def test_a_hook_names_its_node_and_an_unknown_node_is_refused(make_app, srs):
    """srs-conf --node NAME puts &node=NAME on the hook URL: an SRS node of its own."""
    _, app = make_app(**{'ingest.edge1': {'kind': 'srs', 'api_url': srs.url,
                                              'rtmp_url': 'rtmp://edge1/live',
                                              'hls_url': 'http://edge1/hls'}})
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    channel = admin.post_json('/v1/channels', {'userId': 'streamer', 'name': 'edge',
                                               'ingest': 'edge1'}).json['data']
    body = {'action': 'on_publish', 'client_id': '589a46j9', 'ip': '10.0.0.9',
            'vhost': '__defaultVhost__', 'app': 'live', 'stream': channel['id'],
            'param': '?key=' + channel['streamId'].partition('?key=')[2], 'server_id': 'vid-1'}
    url = '/v1/hooks/srs?secret=%s&node=%%s' % app.livestream.hook_secret
    assert admin.post_json(url % 'edge1', body).json['code'] == 0
    assert get(admin, channel)['status'] == 'live'
    assert sessions(admin, channel)['items'][0]['ingest'] == 'edge1'
    refused = admin.post_json(url % 'edge2', body, status=403)
    assert refused.json['code'] == 403 and refused.json['msg'] == 'unknown ingest node'


# The poll ----------------------------------------------------------------------

def test_the_poll_keeps_a_session_fresh_with_srs_figures(app, admin, hook, srs, clock):
    channel = make_channel(admin)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id'], recv_bytes=250_000, kbps=0, clients=3))
    for _ in range(5):  # 50 s: stale after 30 s without the poll
        clock.advance(10)
        snapshot = app.livestream.pollers['default'].poll_once()
        assert snapshot['reachable'] is True
    assert ('GET', '/api/v1/streams/?start=0&count=1000') in srs.api.calls
    stats = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']
    assert stats['status'] == 'live'
    current = stats['current']
    assert current['bytesIn'] == 250_000
    # recv_30s is 0 for SRS's first ~30 s: the bytes' growth gives the rate then
    # (250 kB in the 10 s to the first poll, none since).
    assert current['bitrateKbps'] == 0
    assert current['viewers'] == 2  # clients counts the publisher
    assert current['video'] == {'codec': 'H264', 'width': 640, 'height': 352, 'fps': None}
    assert current['audio'] == {'codec': 'AAC', 'sampleRate': 44100, 'channels': 2}
    srs.streams[0].update(recv_bytes=500_000, kbps={'recv_30s': 1234, 'send_30s': 0})
    clock.advance(10)
    app.livestream.pollers['default'].poll_once()
    current = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['current']
    assert current['bitrateKbps'] == 1234
    session = sessions(admin, channel)['items'][0]
    assert session['peakBitrateKbps'] == 1234
    ingest = admin.get('/v1/stats').json['data']['system']['ingest']
    assert ingest == [{'name': 'default', 'kind': 'srs', 'url': srs.url, 'reachable': True,
                       'streams': 1, 'bitrateKbpsIn': 1234}]


def test_the_first_poll_measures_the_bytes_growth(app, admin, hook, srs, clock):
    channel = make_channel(admin)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id'], recv_bytes=250_000, kbps=0))
    clock.advance(10)
    app.livestream.pollers['default'].poll_once()
    current = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['current']
    assert current['bitrateKbps'] == 200  # 250 kB * 8 / 10 s


def test_the_poll_pages_past_1000_streams(app, srs):
    srs.streams = [srs_stream('s%05d' % number, cid='c%d' % number) for number in range(1005)]
    snapshot = app.livestream.pollers['default'].poll_once()
    assert len(snapshot['streams']) == 1005
    assert [path for _, path in srs.api.calls] == [
        '/api/v1/streams/?start=0&count=1000', '/api/v1/streams/?start=1000&count=1000']


def test_a_stream_srs_still_lists_after_its_publisher_left_is_not_live(app, srs):
    srs.streams = [srs_stream('abcdefghijklmnop', active=False)]
    assert app.livestream.pollers['default'].poll_once()['streams'] == {}


@pytest.mark.parametrize('answer', ['code', 'status', 'down'])
def test_an_srs_error_is_a_failed_poll_and_its_sessions_go_stale(
        app, admin, hook, srs, clock, answer, caplog):
    channel = make_channel(admin)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id']))
    if answer == 'code':  # SRS answers its own errors as HTTP 200
        srs.code = 1000
    elif answer == 'status':
        srs.api.answer = lambda method, path: (500, {'code': 1000})
    else:
        app.livestream.pollers['default'].url = 'http://127.0.0.1:9/none'
    with caplog.at_level(logging.WARNING, logger='livestream'):
        for _ in range(4):
            clock.advance(10)
            assert app.livestream.pollers['default'].poll_once()['reachable'] is False
    assert sum('unreachable' in record.getMessage() for record in caplog.records) == 1
    assert get(admin, channel)['status'] == 'idle'
    assert sessions(admin, channel)['items'][0]['endReason'] == 'stale'
    assert admin.get('/v1/stats').json['data']['system']['ingest'][0]['reachable'] is False


# Cuts and limits: the poll and the kicker ---------------------------------------

def kick_path(cid='589a46j9'):
    return '/api/v1/clients/' + cid


@pytest.mark.parametrize('action, end_reason', [
    ('disable', 'channel_disabled'), ('rotate-key', 'key_rotated'),
    ('delete', 'channel_deleted')])
def test_a_cut_kicks_the_publisher_through_the_srs_api(app, admin, hook, srs, action,
                                                       end_reason, caplog):
    channel = make_channel(admin)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id']))
    path = '/v1/channels/' + channel['id']
    if action == 'disable':
        admin.patch_json(path, {'enabled': False})
    elif action == 'rotate-key':
        admin.post(path + '/rotate-key')
    else:
        admin.delete(path)
    with caplog.at_level(logging.INFO, logger='livestream'):
        assert app.livestream.kickers['default'].run_once() == 1
    assert srs.kicks == [kick_path()]
    assert 'kicked the publisher of channel %s' % channel['id'] in caplog.text
    if action != 'delete':
        assert sessions(admin, channel)['items'][0]['endReason'] == end_reason


def test_a_kick_srs_already_did_is_no_failure(app, admin, hook, srs, caplog):
    channel = make_channel(admin)
    hook('on_publish', channel)  # not listed: SRS answers 2049
    admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    with caplog.at_level(logging.INFO, logger='livestream'):
        app.livestream.kickers['default'].run_once()
    assert 'already gone' in caplog.text
    assert 'could not kick' not in caplog.text


def test_a_stream_the_kick_missed_is_kicked_at_the_next_poll(app, admin, hook, srs):
    """The kick failed (SRS was away): the poll still sees the stream of an ended session."""
    channel = make_channel(admin)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id']))
    admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    app.livestream.kickers['default']._queue.get_nowait()  # the kick that got lost
    app.livestream.pollers['default'].poll_once()
    assert app.livestream.kickers['default'].run_once() == 1
    assert srs.kicks == [kick_path()]


def test_a_stream_of_a_deleted_channel_is_kicked_at_the_next_poll(app, admin, hook, srs):
    channel = make_channel(admin)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id']))
    admin.delete('/v1/channels/' + channel['id'])
    app.livestream.kickers['default']._queue.get_nowait()
    app.livestream.pollers['default'].poll_once()
    app.livestream.kickers['default'].run_once()
    assert srs.kicks == [kick_path()]


def test_a_stream_whose_publish_is_under_way_is_left_alone(app, admin, srs):
    """Listed by SRS before its on_publish answer committed: no session of it yet."""
    channel = make_channel(admin)
    srs.streams.append(srs_stream(channel['id']))
    app.livestream.pollers['default'].poll_once()
    assert app.livestream.kickers['default'].run_once() == 0


@pytest.mark.parametrize('limit, stream, seconds, end_reason', [
    ({'maxBitrateKbps': 1000}, {'kbps': 2500}, 10, 'max_bitrate'),
    ({'maxSessionSeconds': 60}, {}, 70, 'max_session_seconds')])
def test_a_limit_passed_while_live_ends_and_kicks(app, admin, hook, srs, clock, limit,
                                                  stream, seconds, end_reason):
    channel = make_channel(admin, 'limited', **limit)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id'], **stream))
    clock.advance(seconds)
    app.livestream.pollers['default'].poll_once()
    assert get(admin, channel)['status'] == 'idle'
    assert sessions(admin, channel)['items'][0]['endReason'] == end_reason
    app.livestream.kickers['default'].run_once()
    assert srs.kicks == [kick_path()]
    # The poll's cut tells the App Server as an update_publish's does.
    events = admin.get('/v1/events?channelId=' + channel['id']).json['data']['items']
    assert [event['type'] for event in events][:2] == ['channel.idle', 'limit.exceeded']
    assert events[1]['data']['limit'] == next(iter(limit))


def test_a_session_within_its_limits_is_not_kicked(app, admin, hook, srs, clock):
    channel = make_channel(admin, 'limited', maxBitrateKbps=3000, maxSessionSeconds=600)
    hook('on_publish', channel)
    srs.streams.append(srs_stream(channel['id'], kbps=2500))
    clock.advance(30)
    app.livestream.pollers['default'].poll_once()
    assert app.livestream.kickers['default'].run_once() == 0
    assert get(admin, channel)['status'] == 'live'


def test_observe_is_called_with_any_snapshot(app, admin, hook, clock):
    """What a per-node poller hands over: {reachable, streams}, whoever fetched it."""
    channel = make_channel(admin)
    hook('on_publish', channel)
    clock.advance(25)
    metrics = livestream_api.Srs(app.livestream.config).parse_stats(
        {'code': 0, 'server': SERVER, 'streams': [srs_stream(channel['id'])]})
    app.livestream.observe('default', {'reachable': True, 'streams': metrics}, clock())
    clock.advance(25)  # 50 s after the publish, 25 s after the poll
    assert get(admin, channel)['status'] == 'live'


# Config ------------------------------------------------------------------------

def test_kind_srs_needs_an_api_url():
    with pytest.raises(livestream_api.ConfigError, match='api_url'):
        livestream_api.load_config(environ={'LIVESTREAM_INGEST_KIND': 'srs'})


def test_an_unknown_kind_is_a_config_error():
    with pytest.raises(livestream_api.ConfigError, match='nginx-rtmp, srs'):
        livestream_api.load_config(environ={'LIVESTREAM_INGEST_KIND': 'red5'})


def test_srs_conf_wires_hooks_api_hls_and_log_level(tmp_path, capsys):
    database = str(tmp_path / 'live.db')
    assert livestream_api.main(['init-db', '--db', database], environ={}) == 0
    capsys.readouterr()
    config = tmp_path / 'live.ini'
    config.write_text('[ingest.edge1]\nkind = srs\napi_url = http://127.0.0.1:1986\n'
                      'rtmp_url = rtmp://edge1/live\nhls_url = http://edge1/hls\n')
    assert livestream_api.main(['srs-conf', '--db', database, '--config', str(config),
                                '--node', 'edge1',
                                '--rtmp-port', '1936', '--http-port', '8090',
                                '--api-port', '1986', '--prefix', str(tmp_path / 'srs')],
                               environ={}) == 0
    conf = capsys.readouterr().out
    secret = livestream_api.create_app(livestream_api.load_config(
        environ={}, overrides={'database': {'path': database}})).livestream.hook_secret
    lines = {line.strip() for line in conf.splitlines()}
    assert {'daemon off;', 'listen 1936;', 'listen 127.0.0.1:1986;', 'listen 8090;',
            'srs_log_level_v2 warn;', 'hls_m3u8_file [app]/[stream].m3u8;',
            'hls_ts_file [app]/[stream]-[seq].ts;',
            'srs_log_file %s/srs.log;' % (tmp_path / 'srs')} <= lines
    hook = 'http://127.0.0.1:8081/v1/hooks/srs?secret=%s&node=edge1;' % secret
    assert {'%s %s' % (action, hook) for action in (
        'on_publish', 'on_unpublish', 'on_play', 'on_stop')} <= lines
