"""MediaMTX as an ingest node, verified against its documented formats, not a
running MediaMTX (it cannot be built here): its HTTP auth requests (the JSON body
of internal/auth's authenticateHTTP: ip, user, password, token, action, path,
protocol, id, query), runOnUnavailable's call as the generated mediamtx.yml makes
it, and its control API (api/openapi.yaml: /v3/paths/list in both field
generations, the kick endpoints) served by a local stand-in that records kicks."""

import logging
import re
import uuid

import pytest
import webtest
import yaml

import livestream_api
from ingest_support import JsonApi, get, make_channel, sessions, stream_args

PROTOCOLS = ['rtmp', 'rtsp', 'srt', 'webrtc']
#: Where MediaMTX lists (and kicks) a publisher of each protocol, and its source type.
LISTS = {'rtmp': ('rtmpconns', 'rtmpConn'), 'rtsp': ('rtspsessions', 'rtspSession'),
         'srt': ('srtconns', 'srtConn'), 'webrtc': ('webrtcsessions', 'webRTCSession')}


def path_item(channel_id, conn_id, protocol='rtmp', inbound=0, readers=0, old=False):
    """One item of GET /v3/paths/list: the current fields, or (old) the ones before
    MediaMTX 1.x renamed them (ready, bytesReceived, tracks as codec names)."""
    item = {'name': 'live/' + channel_id, 'confName': '~^live/[a-z2-7]{16}$',
            'source': {'type': LISTS[protocol][1], 'id': conn_id},
            'readers': [{'type': 'hlsSession', 'id': str(uuid.uuid4())}
                        for _ in range(readers)], 'bytesSent': 0}
    if old:
        item.update(ready=True, readyTime='2026-12-01T00:00:00Z', bytesReceived=inbound,
                    tracks=['H264', 'MPEG-4 Audio'])
    else:
        item.update(available=True, availableTime='2026-12-01T00:00:00Z', online=True,
                    inboundBytes=inbound, outboundBytes=0, tracks2=[
                        {'codec': 'H264', 'codecProps': {'width': 1280, 'height': 720,
                                                         'profile': 'High', 'level': '4.1'}},
                        {'codec': 'MPEG-4 Audio', 'codecProps': {'sampleRate': 48000,
                                                                 'channelCount': 2}}])
    return item


class FakeMediaMtx:
    """MediaMTX's control API: /v3/paths/list (paged by itemsPerPage and page) and
    POST /v3/<list>/kick/<id>, 200 for a listed publisher, else 404."""

    def __init__(self):
        self.paths = []
        self.api = JsonApi(self.answer)
        self.url = self.api.url

    def answer(self, method, path):
        if method == 'GET' and path.startswith('/v3/paths/list?'):
            query = dict(re.findall(r'(\w+)=(\d+)', path))
            per_page, page = int(query['itemsPerPage']), int(query['page'])
            pages = max(1, -(-len(self.paths) // per_page))
            return 200, {'itemCount': len(self.paths), 'pageCount': pages,
                         'items': self.paths[page * per_page:(page + 1) * per_page]}
        kick = re.match(r'^/v3/(\w+)/kick/([-0-9a-f]+)$', path)
        if method == 'POST' and kick:
            listed = [item for item in self.paths if item['source']['id'] == kick.group(2)
                      and LISTS[self.protocol_of(item)][0] == kick.group(1)]
            for item in listed:
                self.paths.remove(item)
            return (200, {}) if listed else (404, {'status': 'error', 'error': 'not found'})
        return 404, {'status': 'error', 'error': 'not found'}

    @staticmethod
    def protocol_of(item):
        return next(protocol for protocol, (_, source) in LISTS.items()
                    if source == item['source']['type'])

    @property
    def kicks(self):
        return [path for method, path in self.api.calls if method == 'POST']


@pytest.fixture
def mediamtx():
    fake = FakeMediaMtx()
    yield fake
    fake.api.close()


@pytest.fixture
def app(make_app, mediamtx):
    return make_app(ingest={'kind': 'mediamtx', 'api_url': mediamtx.url})[1]


@pytest.fixture
def auth(app):
    """auth(action, channel, **fields): MediaMTX's HTTP auth request for the channel."""
    test_app = webtest.TestApp(app)

    def auth(action, channel=None, protocol='rtmp', conn_id=None, key=None, generation='new',
             **fields):
        name, right_key = stream_args(channel) if channel else ('', '')
        body = {'ip': '203.0.113.7', 'user': '', 'password': '', 'action': action,
                'path': 'live/' + name if channel else '', 'protocol': protocol,
                'id': conn_id, 'query': 'key=%s' % (right_key if key is None else key)}
        if generation == 'new':
            body.update(token='', userAgent='OBS-Studio/31.0')
        body.update(fields)
        return test_app.post_json('/v1/hooks/mediamtx?secret=%s'
                                  % app.livestream.hook_secret, body, expect_errors=True)
    return auth


def unavailable(app, channel, protocol, conn_id):
    """runOnUnavailable's curl, as the generated mediamtx.yml runs it."""
    return webtest.TestApp(app).post(
        '/v1/hooks/mediamtx/unavailable?secret=' + app.livestream.hook_secret,
        {'path': 'live/' + channel['id'], 'source_type': LISTS[protocol][1],
         'source_id': conn_id}, expect_errors=True)


# The auth hook -------------------------------------------------------------------

@pytest.mark.parametrize('generation', ['new', 'old'])
@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_a_publisher_of_any_protocol_goes_live_and_its_stream_ends(
        app, admin, auth, protocol, generation):
    channel = make_channel(admin)
    conn_id = str(uuid.uuid4())
    answer = auth('publish', channel, protocol, conn_id, generation=generation)
    assert answer.status_int == 200
    assert answer.json == {'ec': 0, 'data': {'allowed': True}}
    assert get(admin, channel)['status'] == 'live'
    connection = app.livestream.store.ingest_channel(channel['id'])['connection']
    assert connection == '%s/%s' % (protocol, conn_id)  # kept for the kick
    assert unavailable(app, channel, protocol, conn_id).json['data'] == {'ended': True}
    assert sessions(admin, channel)['items'][0]['endReason'] == 'publisher_left'


def test_a_whip_bearer_token_is_a_key(admin, auth):
    channel = make_channel(admin)
    answer = auth('publish', channel, 'webrtc', str(uuid.uuid4()), query='',
                  token=stream_args(channel)[1])
    assert answer.status_int == 200


@pytest.mark.parametrize('case, fields, why', [
    ('wrong key', {'key': 'x' * 40}, 'wrong stream key'),
    ('no key', {'query': ''}, 'wrong stream key'),
    ('not a channel path', {'path': 'other/abcdefghijklmnop'}, 'not a channel id'),
    ('a protocol it cannot publish with', {'protocol': 'hls'}, 'not supported')])
def test_a_refused_publish_is_403(admin, auth, case, fields, why):
    channel = make_channel(admin)
    answer = auth('publish', channel, conn_id=str(uuid.uuid4()), **fields)
    assert (answer.status_int, answer.json['ec']) == (403, 4)
    assert why in answer.json['msg']
    assert get(admin, channel)['status'] == 'idle'


@pytest.mark.parametrize('action', ['read', 'playback'])
def test_reading_is_allowed_on_an_enabled_channel_only(admin, auth, action):
    channel = make_channel(admin)
    assert auth(action, channel, 'hls', str(uuid.uuid4()), query='').status_int == 200
    admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    refused = auth(action, channel, 'hls', str(uuid.uuid4()), query='')
    assert (refused.status_int, refused.json['msg']) == (403, 'channel is disabled')
    assert auth(action, None, 'rtsp', query='', path='live/abcdefghijklmnop').status_int == 403


@pytest.mark.parametrize('action', ['api', 'metrics', 'pprof'])
def test_its_own_api_actions_are_refused(auth, action):
    answer = auth(action, protocol='', query='', id=None)
    assert (answer.status_int, answer.json['ec']) == (403, 4)


def test_an_unknown_action_is_a_400(admin, auth):
    answer = auth('dance', make_channel(admin))
    assert (answer.status_int, answer.json['ec']) == (400, 1)


# The poll and the kicks ------------------------------------------------------------

@pytest.mark.parametrize('generation', ['new', 'old'])
def test_the_poll_reads_both_generations_and_measures_the_bitrate(
        app, admin, auth, mediamtx, clock, generation):
    channel = make_channel(admin)
    conn_id = str(uuid.uuid4())
    auth('publish', channel, 'srt', conn_id)
    mediamtx.paths = [path_item(channel['id'], conn_id, 'srt', inbound=1_250_000, readers=3,
                                old=generation == 'old')]
    clock.advance(10)
    snapshot = app.livestream.pollers['default'].poll_once()
    assert ('GET', '/v3/paths/list?itemsPerPage=1000&page=0') in mediamtx.api.calls
    assert snapshot['streams'][channel['id']]['connection'] == 'srt/' + conn_id
    current = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['current']
    assert current['bitrateKbps'] == 1000  # 1.25 MB in 10 s: MediaMTX gives no rate
    assert current['bytesIn'] == 1_250_000 and current['viewers'] == 3
    assert current['video']['codec'] == 'H264'
    assert current['audio'] == ({'codec': 'AAC', 'sampleRate': 48000, 'channels': 2}
                                if generation == 'new' else
                                {'codec': 'AAC', 'sampleRate': None, 'channels': None})
    if generation == 'new':
        assert (current['video']['width'], current['video']['height']) == (1280, 720)
    mediamtx.paths[0]['inboundBytes' if generation == 'new' else 'bytesReceived'] = 3_750_000
    clock.advance(10)
    app.livestream.pollers['default'].poll_once()
    current = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['current']
    assert current['bitrateKbps'] == 2000  # the growth since the last poll
    ingest = admin.get('/v1/stats').json['data']['system']['ingest']
    assert ingest == [{'name': 'default', 'kind': 'mediamtx', 'url': mediamtx.url,
                       'reachable': True, 'streams': 1, 'bitrateKbpsIn': 2000}]


def test_a_path_not_available_is_not_live(app, mediamtx):
    item = path_item('abcdefghijklmnop', str(uuid.uuid4()))
    item['available'] = False
    mediamtx.paths = [item, dict(path_item('bcdefghijklmnopq', 'x'), name='cams/front')]
    assert app.livestream.pollers['default'].poll_once()['streams'] == {}


def test_the_poll_pages(app, mediamtx):
    mediamtx.paths = [path_item('a%015d' % number, str(uuid.uuid4())) for number in range(1001)]
    assert len(app.livestream.pollers['default'].poll_once()['streams']) == 1001
    assert [path for _, path in mediamtx.api.calls] == [
        '/v3/paths/list?itemsPerPage=1000&page=0', '/v3/paths/list?itemsPerPage=1000&page=1']


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_a_cut_kicks_at_the_path_of_the_sessions_protocol(app, admin, auth, mediamtx,
                                                          protocol):
    channel = make_channel(admin)
    conn_id = str(uuid.uuid4())
    auth('publish', channel, protocol, conn_id)
    mediamtx.paths = [path_item(channel['id'], conn_id, protocol)]
    admin.post('/v1/channels/%s/rotate-key' % channel['id'])
    app.livestream.kickers['default'].run_once()
    assert mediamtx.kicks == ['/v3/%s/kick/%s' % (LISTS[protocol][0], conn_id)]
    assert sessions(admin, channel)['items'][0]['endReason'] == 'key_rotated'


def test_an_rtmps_publisher_is_kicked_from_its_own_list(app, admin, auth, mediamtx, caplog):
    channel = make_channel(admin)
    conn_id = str(uuid.uuid4())
    auth('publish', channel, 'rtmp', conn_id)  # the auth says rtmp for RTMPS too
    LISTS['rtmps'] = ('rtmpsconns', 'rtmpsConn')
    try:
        mediamtx.paths = [dict(path_item(channel['id'], conn_id),
                               source={'type': 'rtmpsConn', 'id': conn_id})]
        admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
        with caplog.at_level(logging.INFO, logger='livestream'):
            app.livestream.kickers['default'].run_once()
    finally:
        del LISTS['rtmps']
    assert mediamtx.kicks == ['/v3/rtmpconns/kick/' + conn_id, '/v3/rtmpsconns/kick/' + conn_id]
    assert 'kicked from rtmpsconns' in caplog.text


def test_a_limit_passed_while_live_ends_and_kicks(app, admin, auth, mediamtx, clock):
    channel = make_channel(admin, 'limited', maxBitrateKbps=500)
    conn_id = str(uuid.uuid4())
    auth('publish', channel, 'webrtc', conn_id)
    mediamtx.paths = [path_item(channel['id'], conn_id, 'webrtc', inbound=1_250_000)]
    clock.advance(10)
    app.livestream.pollers['default'].poll_once()
    assert sessions(admin, channel)['items'][0]['endReason'] == 'max_bitrate'
    app.livestream.kickers['default'].run_once()
    assert mediamtx.kicks == ['/v3/webrtcsessions/kick/' + conn_id]


# The generated mediamtx.yml --------------------------------------------------------

def test_mediamtx_conf_wires_auth_api_and_unavailable_to_this_api(tmp_path, capsys):
    database = str(tmp_path / 'live.db')
    assert livestream_api.main(['init-db', '--db', database], environ={}) == 0
    capsys.readouterr()
    config = tmp_path / 'live.ini'
    config.write_text('[ingest.mtx1]\nkind = mediamtx\napi_url = http://127.0.0.1:9998\n'
                      'rtmp_url = rtmp://mtx1/live\nhls_url = http://mtx1/hls\n')
    assert livestream_api.main(['mediamtx-conf', '--db', database, '--config', str(config),
                                '--node', 'mtx1',
                                '--api-port', '9998'], environ={}) == 0
    text = capsys.readouterr().out
    conf = yaml.safe_load(text)
    secret = livestream_api.create_app(livestream_api.load_config(
        environ={}, overrides={'database': {'path': database}})).livestream.hook_secret
    assert conf['authMethod'] == 'http'
    assert conf['authHTTPAddress'] == \
        'http://127.0.0.1:8081/v1/hooks/mediamtx?secret=%s&node=mtx1' % secret
    assert conf['authHTTPExclude'] == [{'action': 'api'}, {'action': 'metrics'},
                                       {'action': 'pprof'}]
    assert conf['api'] is True and conf['apiAddress'] == '127.0.0.1:9998'
    unavailable_command = conf['pathDefaults']['runOnUnavailable']
    assert 'http://127.0.0.1:8081/v1/hooks/mediamtx/unavailable?secret=%s&node=mtx1' \
        % secret in unavailable_command
    assert '$MTX_SOURCE_ID' in unavailable_command
    assert 'runOnNotReady' in text  # named for MediaMTX before 1.19.3
    assert list(conf['paths']) == ['~^live/[a-z2-7]{16}$']
