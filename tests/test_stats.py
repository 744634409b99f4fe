"""Channel statistics, broadcast history and GET /v1/stats, fed by nginx-shaped
hook calls and nginx-rtmp /stat XML served by a real local HTTP server."""

import socket
import time
import urllib.request
from xml.etree import ElementTree

import pytest

from ingest_support import (StatServer, get, iso, make_channel, publish, publish_done,
                            sessions, update)


@pytest.fixture
def app(request, make_app, stat_server):
    """The app reading the fake /stat server, or (parametrized indirectly) a stat
    URL that fails: 'refused' (nothing listens), 'silent' (accepts, never answers),
    'not xml' and 'http 404'."""
    stat_url = stat_server.url
    failure = getattr(request, 'param', None)
    if failure in ('refused', 'silent'):
        dead = socket.socket()
        request.addfinalizer(dead.close)
        dead.bind(('127.0.0.1', 0))  # kept bound so no one else takes the port
        if failure == 'silent':
            dead.listen(8)
        stat_url = 'http://127.0.0.1:%d/stat' % dead.getsockname()[1]
    elif failure == 'not xml':
        stat_server.xml = b'<html><body>502 Bad Gateway</body>'
    elif failure == 'http 404':
        stat_url = stat_server.url.replace('/stat', '/nothing-here')
    app = make_app(ingest={'stat_url': stat_url})[1]
    stat_server.pollers.append(app.livestream.pollers['default'])
    if failure:
        app.livestream.pollers['default'].poll_once()  # as the poller's first reading
    return app


def stats(client, channel):
    return client.get('/v1/channels/%s/stats' % channel['id']).json['data']


VIDEO_720 = {'codec': 'H264', 'width': 1280, 'height': 720, 'frame_rate': 30}
AUDIO_STEREO = {'codec': 'AAC', 'sample_rate': 48000, 'channels': 2}


def api_video(video):
    return {'codec': video['codec'], 'width': video['width'], 'height': video['height'],
            'fps': video['frame_rate']}


def api_audio(audio):
    return {'codec': audio['codec'], 'sampleRate': audio['sample_rate'],
            'channels': audio['channels']}


# Channel statistics ###########################################################

def test_current_figures_of_a_live_channel(admin, hook, clock, interval, stat_server):
    channel = make_channel(admin)
    elsewhere = make_channel(admin, 'someone-else')
    started = clock.now
    assert publish(hook, channel).status_int == 200
    measured = stats(admin, channel)['current']
    assert measured['startedAt'] == iso(started)
    assert measured['bitrateKbps'] is None  # nothing measured before the first update
    assert measured['video'] is None and measured['audio'] is None

    stream = {'name': channel['id'], 'bw_in': 2345678, 'bytes_in': 3456789, 'viewers': 2,
              'video': VIDEO_720, 'audio': AUDIO_STEREO}
    clock.advance(interval)
    stat_server.serve({'name': elsewhere['id'], 'bw_in': 999000, 'bytes_in': 42, 'viewers': 7},
                      stream)
    assert update(hook, channel).status_int == 200

    answer = stats(admin, channel)
    assert answer['status'] == 'live'
    current = answer['current']
    assert current['sessionId'] == sessions(admin, channel)['items'][0]['id']
    assert current['startedAt'] == iso(started)
    assert current['durationSeconds'] == interval
    assert current['bitrateKbps'] == pytest.approx(stream['bw_in'] / 1000, abs=0.05)
    assert current['bytesIn'] == stream['bytes_in']
    assert current['viewers'] == stream['viewers']
    assert current['video'] == api_video(VIDEO_720)
    assert current['audio'] == api_audio(AUDIO_STEREO)

    clock.advance(7)
    assert stats(admin, channel)['current']['durationSeconds'] == interval + 7


def test_an_idle_channel_has_no_current_figures(admin):
    channel = make_channel(admin)
    assert stats(admin, channel) == {'status': 'idle', 'current': None,
                                     'totals': {'sessions': 0, 'liveSeconds': 0, 'bytesIn': 0}}


def test_bitrate_from_bytes_when_bw_in_is_still_zero(admin, hook, clock, interval, stat_server):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    first, second = 1000000, 1000000 + 1250000
    clock.advance(interval)
    stat_server.serve({'name': channel['id'], 'bw_in': 0, 'bytes_in': first})
    assert update(hook, channel).status_int == 200
    clock.advance(interval)
    stat_server.serve({'name': channel['id'], 'bw_in': 0, 'bytes_in': second})
    assert update(hook, channel).status_int == 200
    current = stats(admin, channel)['current']
    assert current['bytesIn'] == second
    assert current['bitrateKbps'] == pytest.approx((second - first) * 8 / 1000 / interval,
                                                   abs=0.05)


def live_and_updated(admin, hook, clock, interval, stat_server, bw_in, bytes_in):
    """A new channel, published and then updated once, an interval later, with these figures."""
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    clock.advance(interval)
    stat_server.serve({'name': channel['id'], 'bw_in': bw_in, 'bytes_in': bytes_in})
    assert update(hook, channel).status_int == 200
    return channel


def test_the_first_bitrate_comes_from_the_bytes_since_the_session_began(
        admin, hook, clock, interval, stat_server):
    channel = live_and_updated(admin, hook, clock, interval, stat_server, 0, 400000)
    assert stats(admin, channel)['current']['bitrateKbps'] == \
        pytest.approx(400000 * 8 / 1000 / interval, abs=0.05)


@pytest.mark.parametrize('end', [None, 'publisher_left'])
def test_the_peak_bitrate_is_never_below_the_average(admin, hook, clock, interval,
                                                     stat_server, end):
    """nginx's bw_in is a smoothed rate: it can report less than the bytes say."""
    channel = live_and_updated(admin, hook, clock, interval, stat_server, 100000, 10 ** 6)
    if end:
        assert publish_done(hook, channel).status_int == 200
    session = sessions(admin, channel)['items'][0]
    assert session['avgBitrateKbps'] == pytest.approx(8000 / interval, abs=0.05)
    assert session['peakBitrateKbps'] == session['avgBitrateKbps']


def test_bytes_after_the_last_update_are_extrapolated(admin, hook, clock, interval,
                                                      stat_server):
    """nginx lists a stream in /stat no longer once it calls publish_done: the bytes
    since the last update are counted at the last measured rate."""
    channel = live_and_updated(admin, hook, clock, interval, stat_server, 800000, 10 ** 6)
    clock.advance(4)
    stat_server.serve()
    assert publish_done(hook, channel).status_int == 200
    expected = 10 ** 6 + 800 * 125 * 4
    assert sessions(admin, channel)['items'][0]['bytesIn'] == expected
    assert stats(admin, channel)['totals']['bytesIn'] == expected


def test_publish_done_takes_fresh_figures_while_stat_still_lists_the_stream(
        app, admin, hook, clock, interval, stat_server):
    channel = live_and_updated(admin, hook, clock, interval, stat_server, 800000, 10 ** 6)
    clock.advance(0.5)  # the poller's next reading, while nginx still lists the stream
    stat_server.serve({'name': channel['id'], 'bw_in': 800000, 'bytes_in': 1234567})
    assert publish_done(hook, channel).status_int == 200
    assert sessions(admin, channel)['items'][0]['bytesIn'] == 1234567


def test_totals_count_ended_sessions_and_the_running_one(admin, hook, clock, interval,
                                                         stat_server):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    clock.advance(interval)
    stat_server.serve({'name': channel['id'], 'bytes_in': 700000})
    assert update(hook, channel).status_int == 200
    clock.advance(5)
    first_bytes = 900000  # the last figure nginx reports before publish_done
    stat_server.serve({'name': channel['id'], 'bytes_in': first_bytes})
    assert publish_done(hook, channel).status_int == 200
    first_seconds = interval + 5
    assert stats(admin, channel)['totals'] == {'sessions': 1, 'liveSeconds': first_seconds,
                                               'bytesIn': first_bytes}

    clock.advance(100)  # idle time counts for nothing
    assert publish(hook, channel, clientid='2').status_int == 200
    second_bytes = 400000
    clock.advance(interval)
    stat_server.serve({'name': channel['id'], 'bytes_in': second_bytes})
    assert update(hook, channel, clientid='2').status_int == 200
    clock.advance(3)
    assert stats(admin, channel)['totals'] == {
        'sessions': 2, 'liveSeconds': first_seconds + interval + 3,
        'bytesIn': first_bytes + second_bytes}


# Sessions #####################################################################

def test_sessions_newest_first_with_every_figure(admin, hook, clock, interval, stat_server):
    channel = make_channel(admin)
    broadcasts = [  # per update: (bw_in, bytes_in, viewers)
        {'samples': [(800000, 1000000, 1), (1200000, 2500000, 3), (600000, 3000000, 2)],
         'video': {'codec': 'H264', 'width': 640, 'height': 352, 'frame_rate': 25},
         'audio': {'codec': 'AAC', 'sample_rate': 44100, 'channels': 1}, 'end': 'left'},
        {'samples': [(3000000, 4000000, 0), (2000000, 6500000, 5)],
         'video': VIDEO_720, 'audio': AUDIO_STEREO, 'end': 'disabled'},
        {'samples': [(4500000, 5000000, 4)],
         'video': {'codec': 'H264', 'width': 1920, 'height': 1080, 'frame_rate': 60},
         'audio': AUDIO_STEREO, 'end': None},
    ]
    for number, broadcast in enumerate(broadcasts):
        if number:
            clock.advance(60)  # idle between broadcasts
        clientid = str(number + 1)
        broadcast['startedAt'] = clock.now
        assert publish(hook, channel, clientid=clientid).status_int == 200
        for bw_in, bytes_in, viewers in broadcast['samples']:
            clock.advance(interval)
            stat_server.serve({'name': channel['id'], 'bw_in': bw_in, 'bytes_in': bytes_in,
                               'viewers': viewers, 'video': broadcast['video'],
                               'audio': broadcast['audio']})
            assert update(hook, channel, clientid=clientid).status_int == 200
        clock.advance(2)
        if broadcast['end'] == 'left':
            assert publish_done(hook, channel, clientid=clientid).status_int == 200
        elif broadcast['end'] == 'disabled':
            admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
            admin.patch_json('/v1/channels/' + channel['id'], {'enabled': True})
        broadcast['endedAt'] = clock.now if broadcast['end'] else None

    first_page = admin.get('/v1/channels/%s/sessions?limit=2' % channel['id']).json['data']
    assert first_page['total'] == 3
    assert first_page['nextCursor'] is not None
    second_page = admin.get('/v1/channels/%s/sessions?limit=2&cursor=%s'
                            % (channel['id'], first_page['nextCursor'])).json['data']
    assert second_page['nextCursor'] is None
    assert second_page['total'] == 3
    items = first_page['items'] + second_page['items']
    assert [item['startedAt'] for item in items] == \
        [iso(broadcast['startedAt']) for broadcast in reversed(broadcasts)]
    assert len({item['id'] for item in items}) == 3
    assert items[0]['id'] == stats(admin, channel)['current']['sessionId']

    for item, broadcast in zip(items, reversed(broadcasts)):
        end = broadcast['endedAt'] if broadcast['endedAt'] is not None else clock.now
        duration = end - broadcast['startedAt']
        bytes_in = broadcast['samples'][-1][1]
        # Ended 2 s after its last sample, with no newer stats reading: the bytes
        # since are counted at the last bw_in.
        if broadcast['end'] in ('disabled', 'left'):
            bytes_in += broadcast['samples'][-1][0] // 8 * 2
        assert item['channelId'] == channel['id']
        assert item['endedAt'] == (iso(end) if broadcast['endedAt'] is not None else None)
        assert item['durationSeconds'] == duration
        assert item['bytesIn'] == bytes_in
        assert item['avgBitrateKbps'] == pytest.approx(bytes_in * 8 / 1000 / duration, abs=0.05)
        assert item['peakBitrateKbps'] == pytest.approx(
            max(sample[0] for sample in broadcast['samples']) / 1000, abs=0.05)
        assert item['peakViewers'] == max(sample[2] for sample in broadcast['samples'])
        assert item['video'] == api_video(broadcast['video'])
        assert item['audio'] == api_audio(broadcast['audio'])
        assert item['endReason'] == {'left': 'publisher_left', 'disabled': 'channel_disabled',
                                     None: None}[broadcast['end']]


@pytest.mark.parametrize('query', ['limit=0', 'limit=101', 'limit=x', 'cursor=garbage',
                                   'cursor=', 'page=2'])
def test_sessions_refuse_bad_paging(admin, query):
    channel = make_channel(admin)
    answer = admin.get('/v1/channels/%s/sessions?%s' % (channel['id'], query), status=400)
    assert answer.json['ec'] == 1


def test_another_clients_channel_stats_are_not_found(admin, new_client, hook):
    owner, stranger = new_client(name='owner'), new_client(name='stranger')
    channel = make_channel(owner)
    assert publish(hook, channel).status_int == 200
    for path in ('stats', 'sessions'):
        answer = stranger.get('/v1/channels/%s/%s' % (channel['id'], path), status=404)
        assert answer.json['ec'] == 6
    assert stats(owner, channel)['status'] == 'live'


# GET /v1/stats ################################################################

def test_stats_for_each_app_and_for_the_admin(app, admin, new_client, hook, clock, interval,
                                              stat_server):
    mine, theirs = new_client(name='mine'), new_client(name='theirs')
    main = make_channel(mine, 'u1')
    ended = make_channel(mine, 'u1')
    make_channel(mine, 'u2')
    other = make_channel(theirs, 'v1')

    assert publish(hook, ended, clientid='1').status_int == 200
    ended_seconds = 20
    clock.advance(ended_seconds)
    assert publish_done(hook, ended, clientid='1').status_int == 200

    streams = [{'name': main['id'], 'bw_in': 1500000, 'bytes_in': 10 ** 6},
               {'name': other['id'], 'bw_in': 800000, 'bytes_in': 2 * 10 ** 6},
               {'name': 'not-a-channel-of-ours', 'bw_in': 300000, 'bytes_in': 3 * 10 ** 6}]
    stat_server.serve(*streams)
    assert publish(hook, main, clientid='2').status_int == 200
    assert publish(hook, other, clientid='3').status_int == 200
    clock.advance(interval)
    assert update(hook, main, clientid='2').status_int == 200
    assert update(hook, other, clientid='3').status_int == 200
    clock.advance(5)
    running = interval + 5

    expected = {
        'mine': {'users': 2, 'channels': 3, 'liveChannels': 1,
                 'bitrateKbpsIn': streams[0]['bw_in'] / 1000, 'sessions': 2,
                 'liveSeconds': ended_seconds + running},
        'theirs': {'users': 1, 'channels': 1, 'liveChannels': 1,
                   'bitrateKbpsIn': streams[1]['bw_in'] / 1000, 'sessions': 1,
                   'liveSeconds': running}}
    expected['admin'] = {name: sum(figures[name] for figures in expected.values())
                         for name in expected['mine']}
    for name, client in (('mine', mine), ('theirs', theirs), ('admin', admin)):
        answer = client.get('/v1/stats')
        assert answer.json['ec'] == 0
        figures = answer.json['data']
        for field, value in expected[name].items():
            assert figures[field] == pytest.approx(value, abs=0.05), (name, field)
        assert ('system' in figures) == (name == 'admin')

    system = admin.get('/v1/stats').json['data']['system']
    assert system['version'] == admin.get('/v1/health').json['data']['version']
    assert isinstance(system['uptimeSeconds'], int) and system['uptimeSeconds'] >= 0
    assert system['dbBytes'] > 0
    assert len(system['ingest']) == 1
    ingest = system['ingest'][0]
    assert ingest['url'] == stat_server.url
    assert ingest['reachable'] is True
    assert ingest['streams'] == len(streams)
    assert ingest['bitrateKbpsIn'] == pytest.approx(
        sum(stream['bw_in'] for stream in streams) / 1000, abs=0.05)


def test_stats_of_a_new_app_are_zero(new_client):
    figures = new_client().get('/v1/stats').json['data']
    for field in ('users', 'channels', 'liveChannels', 'bitrateKbpsIn', 'sessions',
                  'liveSeconds'):
        assert figures[field] == 0, field
    assert 'system' not in figures


# An unreachable stat URL ######################################################

@pytest.mark.parametrize('app', ['refused', 'silent', 'not xml', 'http 404'], indirect=True)
def test_an_unreachable_stat_url_costs_metrics_only(app, admin, hook, clock, interval):
    channel = make_channel(admin)
    for call in ('publish', 'update_publish'):
        began = time.monotonic()
        answer = publish(hook, channel) if call == 'publish' else update(hook, channel)
        assert answer.status_int == 200
        assert answer.json['ec'] == 0
        assert time.monotonic() - began < 3  # hooks read the poller's snapshot, not the URL
        clock.advance(interval)

    answer = stats(admin, channel)
    assert answer['status'] == 'live'
    current = answer['current']
    assert current['durationSeconds'] == 2 * interval
    assert current['bitrateKbps'] is None
    assert current['video'] is None and current['audio'] is None
    assert current['bytesIn'] == 0

    ingest = admin.get('/v1/stats').json['data']['system']['ingest']
    assert ingest == [{'name': 'default', 'kind': 'nginx-rtmp', 'reachable': False,
                       'url': app.livestream.config['ingest']['stat_url'], 'streams': 0,
                       'bitrateKbpsIn': 0}]
    clock.advance(3)
    assert publish_done(hook, channel).status_int == 200
    assert sessions(admin, channel)['items'][0]['endReason'] == 'publisher_left'
    assert get(admin, channel)['status'] == 'idle'


def test_stat_server_fixture_serves_what_the_test_sets():
    """The fake /stat is a real HTTP server answering the XML the test gave it."""
    server = StatServer()
    try:
        server.serve({'name': 'abcdefghijklmnop', 'bw_in': 5, 'bytes_in': 6, 'viewers': 2})
        with urllib.request.urlopen(server.url, timeout=5) as answer:
            root = ElementTree.fromstring(answer.read())
        stream = root.find('server/application/live/stream')
        assert stream.findtext('name') == 'abcdefghijklmnop'
        assert stream.findtext('bw_in') == '5'
        assert len(stream.findall('client')) == 3
        assert len(stream.findall('client/publishing')) == 1
    finally:
        server.close()
