"""The nginx-rtmp notify hook: who may go live, when a stream is dropped, how a
session ends. Driven with nginx-shaped form posts (the `hook` fixture); live
metrics come from a real local HTTP server serving nginx-rtmp /stat XML."""

import urllib.parse

import pytest
import webtest

from ingest_support import (get, iso, make_channel, publish, publish_done,
                            sessions, stream_args, update)


@pytest.fixture
def app(make_app, stat_server):
    """The app, reading ingest statistics from the fake /stat server."""
    app = make_app(ingest={'stat_url': stat_server.url})[1]
    stat_server.pollers.append(app.livestream.pollers['default'])
    return app


def assert_refused(answer):
    assert answer.status_int == 403, answer.text
    assert answer.json['ec'] == 4


# The hook secret ##############################################################

@pytest.mark.parametrize('secret', [None, '', 'wrong', 'right+x', 'RIGHT'])
def test_wrong_or_missing_secret_is_refused(app, admin, secret):
    channel = make_channel(admin)
    name, key = stream_args(channel)
    real = app.livestream.hook_secret
    url = '/v1/hooks/nginx-rtmp'
    if secret is not None:
        url += '?secret=' + urllib.parse.quote(
            {'right+x': real + 'x', 'RIGHT': real.upper()}.get(secret, secret))
    answer = webtest.TestApp(app).post(url, {'call': 'publish', 'name': name, 'key': key,
                                             'app': 'live', 'clientid': '1'},
                                       expect_errors=True)
    assert_refused(answer)
    assert answer.content_type == 'application/json'
    assert get(admin, channel)['status'] == 'idle'
    assert sessions(admin, channel)['total'] == 0


@pytest.mark.parametrize('order', ['right first', 'wrong first'])
def test_a_repeated_secret_is_refused_whichever_comes_first(app, admin, order):
    """The first secret is checked (a wrong one: 403), and a URL that repeats it is
    refused (400) like any repeated query parameter: nothing goes live either way."""
    channel = make_channel(admin)
    name, key = stream_args(channel)
    secrets = [app.livestream.hook_secret, 'wrong']
    if order == 'wrong first':
        secrets.reverse()
    answer = webtest.TestApp(app).post(
        '/v1/hooks/nginx-rtmp?' + urllib.parse.urlencode([('secret', secret)
                                                          for secret in secrets]),
        {'call': 'publish', 'name': name, 'key': key, 'app': 'live', 'clientid': '1'},
        expect_errors=True)
    assert answer.status_int == (400 if order == 'right first' else 403), answer.text
    assert get(admin, channel)['status'] == 'idle'


# publish ######################################################################

def test_publish_with_the_right_key_goes_live(admin, hook, clock):
    channel = make_channel(admin)
    answer = publish(hook, channel)
    assert answer.status_int == 200
    assert answer.json['ec'] == 0
    live = get(admin, channel)
    assert live['status'] == 'live'
    assert live['liveSince'] == iso(clock.now)
    assert [item['id'] for item in
            admin.get('/v1/channels?status=live').json['data']['items']] == [channel['id']]
    assert admin.get('/v1/users/streamer').json['data']['usage']['liveChannels'] == 1
    listed = sessions(admin, channel)
    assert listed['total'] == 1
    assert listed['items'][0]['startedAt'] == iso(clock.now)
    assert listed['items'][0]['endedAt'] is None


@pytest.mark.parametrize('case', ['wrong key', 'no key', "another channel's key",
                                  'unknown channel', 'disabled channel', 'deleted channel'])
def test_publish_is_refused(admin, hook, case):
    channel = make_channel(admin)
    other = make_channel(admin)
    name, key = stream_args(channel)
    if case == 'wrong key':
        key = 'f' * len(key)
    elif case == 'no key':
        key = ''
    elif case == "another channel's key":
        key = stream_args(other)[1]
    elif case == 'unknown channel':
        name = 'a' * len(name)
    elif case == 'disabled channel':
        admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    elif case == 'deleted channel':
        admin.delete('/v1/channels/' + channel['id'])
    assert_refused(hook('publish', name, type='live', key=key))
    if case == 'deleted channel':
        admin.get('/v1/channels/' + channel['id'], status=404)
    else:
        expected = 'disabled' if case == 'disabled channel' else 'idle'
        assert get(admin, channel)['status'] == expected
        assert get(admin, channel)['liveSince'] is None
        assert sessions(admin, channel)['total'] == 0
    assert admin.get('/v1/channels?status=live').json['data']['total'] == 0


@pytest.mark.parametrize('limit', [0, 1, 2])
def test_max_live_channels(admin, hook, limit):
    channels = [make_channel(admin, maxLiveChannels=limit) for _ in range(limit + 1)]
    for number, channel in enumerate(channels[:limit]):
        assert publish(hook, channel, clientid=str(number)).status_int == 200
    refused = channels[limit]
    assert_refused(publish(hook, refused, clientid='99'))
    assert get(admin, refused)['status'] == 'idle'
    assert admin.get('/v1/users/streamer').json['data']['usage']['liveChannels'] == limit
    if limit:
        assert publish_done(hook, channels[0], clientid='0').status_int == 200
        assert publish(hook, refused, clientid='99').status_int == 200
        assert get(admin, refused)['status'] == 'live'


def test_max_live_channels_counts_per_user(admin, hook):
    mine = make_channel(admin, 'alice', maxLiveChannels=1)
    theirs = make_channel(admin, 'bob', maxLiveChannels=1)
    assert publish(hook, mine, clientid='1').status_int == 200
    assert publish(hook, theirs, clientid='2').status_int == 200


def test_second_publish_from_another_connection_waits_for_staleness(admin, hook, clock,
                                                                     interval):
    channel = make_channel(admin)
    assert publish(hook, channel, clientid='1').status_int == 200
    clock.advance(interval)
    assert update(hook, channel, clientid='1').status_int == 200
    last_seen = clock.now
    first_session = sessions(admin, channel)['items'][0]['id']

    assert_refused(publish(hook, channel, clientid='2'))
    clock.advance(3 * interval - 1)
    assert_refused(publish(hook, channel, clientid='2'))
    assert sessions(admin, channel)['items'][0]['id'] == first_session

    clock.advance(2)  # now 3 intervals + 1 s after the last update: the old one is stale
    assert publish(hook, channel, clientid='2').status_int == 200
    live = get(admin, channel)
    assert live['status'] == 'live'
    assert live['liveSince'] == iso(clock.now)
    new, old = sessions(admin, channel)['items']
    assert old['id'] == first_session
    assert old['endReason'] == 'stale'
    assert old['endedAt'] == iso(last_seen)
    assert new['endedAt'] is None
    assert admin.get('/v1/users/streamer').json['data']['usage']['liveChannels'] == 1

    # The dead connection's late calls must not touch the new session.
    assert publish_done(hook, channel, clientid='1').status_int == 200
    assert get(admin, channel)['status'] == 'live'
    assert_refused(update(hook, channel, clientid='1'))
    assert sessions(admin, channel)['items'][0]['id'] == new['id']
    assert sessions(admin, channel)['items'][0]['endedAt'] is None


def test_a_stale_session_does_not_count_against_max_live_channels(admin, hook, clock,
                                                                  interval):
    """The publish decision itself ends the user's stale sessions: no API read between."""
    silent, next_one = make_channel(admin, maxLiveChannels=1), make_channel(admin)
    assert publish(hook, silent, clientid='1').status_int == 200
    clock.advance(3 * interval + 1)
    assert publish(hook, next_one, clientid='2').status_int == 200
    assert get(admin, next_one)['status'] == 'live'
    assert get(admin, silent)['status'] == 'idle'
    assert sessions(admin, silent)['items'][0]['endReason'] == 'stale'
    assert admin.get('/v1/users/streamer').json['data']['usage']['liveChannels'] == 1


# update_publish ###############################################################

def test_update_publish_keeps_a_session_fresh(admin, hook, clock, interval):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    for _ in range(4):  # 8 intervals in all: stale long ago without the updates
        clock.advance(2 * interval)
        answer = update(hook, channel)
        assert answer.status_int == 200
        assert answer.json['ec'] == 0
        assert get(admin, channel)['status'] == 'live'
    assert sessions(admin, channel)['total'] == 1


@pytest.mark.parametrize('action, reason', [('disable', 'channel_disabled'),
                                            ('rotate', 'key_rotated'),
                                            ('delete', None)])
def test_update_publish_drops_a_stream_the_channel_no_longer_allows(admin, hook, clock,
                                                                   interval, action, reason):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    clock.advance(interval)
    assert update(hook, channel).status_int == 200
    clock.advance(1)
    if action == 'disable':
        admin.patch_json('/v1/channels/' + channel['id'], {'enabled': False})
    elif action == 'rotate':
        admin.post('/v1/channels/%s/rotate-key' % channel['id'])
    else:
        admin.delete('/v1/channels/' + channel['id'])
    ended_at = clock.now
    if reason:  # ended at once, before the ingest's next call
        ended = sessions(admin, channel)['items'][0]
        assert ended['endReason'] == reason
        assert ended['endedAt'] == iso(ended_at)
    clock.advance(interval - 1)
    assert_refused(update(hook, channel))  # the encoder still sends its old key
    if action == 'delete':
        admin.get('/v1/channels/' + channel['id'], status=404)
        return
    assert get(admin, channel)['status'] == ('disabled' if action == 'disable' else 'idle')
    listed = sessions(admin, channel)
    assert listed['total'] == 1
    assert listed['items'][0]['endReason'] == reason
    assert listed['items'][0]['endedAt'] == iso(ended_at)


def test_a_rotated_key_publishes_again(admin, hook):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    rotated = admin.post('/v1/channels/%s/rotate-key' % channel['id']).json['data']
    assert_refused(publish(hook, channel, clientid='2'))
    assert publish(hook, rotated, clientid='2').status_int == 200
    assert get(admin, channel)['status'] == 'live'


def test_update_publish_past_max_session_seconds(admin, hook, clock, interval):
    limit = 2 * interval + interval // 2
    channel = make_channel(admin, maxSessionSeconds=limit)
    started = clock.now
    assert publish(hook, channel).status_int == 200
    while clock.now + interval - started <= limit:
        clock.advance(interval)
        assert update(hook, channel).status_int == 200
    clock.advance(interval)
    assert clock.now - started > limit
    assert_refused(update(hook, channel))
    assert get(admin, channel)['status'] == 'idle'
    ended = sessions(admin, channel)['items'][0]
    assert ended['endReason'] == 'max_session_seconds'
    assert ended['endedAt'] == iso(clock.now)
    assert ended['durationSeconds'] == round(clock.now - started)
    clock.advance(interval)
    assert_refused(update(hook, channel))  # no resuming a session ended for a limit
    assert sessions(admin, channel)['total'] == 1


def test_update_publish_over_max_bitrate(admin, hook, clock, interval, stat_server):
    limit = 2500
    channel = make_channel(admin, maxBitrateKbps=limit)
    assert publish(hook, channel).status_int == 200
    under, over = (limit - 500) * 1000, (limit + 500) * 1000  # bw_in is in bit/s
    stat_server.serve({'name': channel['id'], 'bw_in': under, 'bytes_in': 10 ** 6})
    clock.advance(interval)
    assert update(hook, channel).status_int == 200
    stat_server.serve({'name': channel['id'], 'bw_in': over, 'bytes_in': 2 * 10 ** 6})
    clock.advance(interval)
    assert_refused(update(hook, channel))
    assert get(admin, channel)['status'] == 'idle'
    ended = sessions(admin, channel)['items'][0]
    assert ended['endReason'] == 'max_bitrate'
    assert ended['peakBitrateKbps'] == over / 1000
    assert ended['endedAt'] == iso(clock.now)


def test_a_bitrate_limit_cuts_at_the_first_update(admin, hook, clock, interval, stat_server):
    """nginx's bw_in stays 0 for a stream's first ~10 s: the first update measures
    the bytes received since the session began instead."""
    channel = make_channel(admin, maxBitrateKbps=100)
    assert publish(hook, channel).status_int == 200
    clock.advance(interval)
    stat_server.serve({'name': channel['id'], 'bw_in': 0, 'bytes_in': 320 * 125 * interval})
    assert_refused(update(hook, channel))
    ended = sessions(admin, channel)['items'][0]
    assert ended['endReason'] == 'max_bitrate'
    assert ended['peakBitrateKbps'] == 320.0


@pytest.mark.parametrize('history', ['reaped as stale', 'never published'])
def test_update_publish_without_an_open_session_resumes(admin, hook, clock, interval, history):
    channel = make_channel(admin)
    if history == 'reaped as stale':
        assert publish(hook, channel).status_int == 200
        clock.advance(3 * interval + 1)
        assert get(admin, channel)['status'] == 'idle'
    answer = update(hook, channel)
    assert answer.status_int == 200
    assert answer.json['ec'] == 0
    live = get(admin, channel)
    assert live['status'] == 'live'
    assert live['liveSince'] == iso(clock.now)
    listed = sessions(admin, channel)
    assert listed['items'][0]['endedAt'] is None
    assert listed['items'][0]['startedAt'] == iso(clock.now)
    if history == 'reaped as stale':
        assert listed['total'] == 2
        assert listed['items'][1]['endReason'] == 'stale'
    else:
        assert listed['total'] == 1


def test_update_publish_resumes_only_under_the_publish_rules(admin, hook):
    channel = make_channel(admin, maxLiveChannels=1)
    other = make_channel(admin)
    name, key = stream_args(channel)
    assert_refused(hook('update_publish', name, key='f' * len(key)))
    assert get(admin, channel)['status'] == 'idle'
    assert publish(hook, other, clientid='2').status_int == 200
    assert_refused(update(hook, channel))  # the user is at maxLiveChannels
    assert get(admin, channel)['status'] == 'idle'
    assert sessions(admin, channel)['total'] == 0


def test_a_late_update_publish_after_publish_done_does_not_resurrect(admin, hook, clock,
                                                                     interval):
    """nginx sends its calls on separate connections: an update_publish may land
    after the publish_done of the same stream, and must not reopen it."""
    channel = make_channel(admin)
    assert publish(hook, channel, clientid='1').status_int == 200
    clock.advance(interval)
    assert publish_done(hook, channel, clientid='1').status_int == 200
    assert_refused(update(hook, channel, clientid='1'))
    assert get(admin, channel)['status'] == 'idle'
    assert [item['endReason'] for item in sessions(admin, channel)['items']] == ['publisher_left']
    assert publish(hook, channel, clientid='2').status_int == 200  # the encoder reconnects
    assert get(admin, channel)['status'] == 'live'


def test_a_late_update_publish_after_publish_done_of_a_stale_session_is_refused(
        admin, hook, clock, interval):
    """The API ended the session as stale, then nginx said publish_done: nginx itself
    said the stream is over, so a late update_publish may not resume it either."""
    channel = make_channel(admin)
    assert publish(hook, channel, clientid='1').status_int == 200
    clock.advance(3 * interval + 1)
    ended = sessions(admin, channel)['items'][0]  # the read ends it as stale
    assert ended['endReason'] == 'stale'
    answer = publish_done(hook, channel, clientid='1')
    assert answer.status_int == 200
    assert answer.json['data'] == {'ended': False}
    assert sessions(admin, channel)['items'] == [dict(ended, endReason='publisher_left')]
    assert_refused(update(hook, channel, clientid='1'))
    assert get(admin, channel)['status'] == 'idle'


# publish_done and staleness ###################################################

def test_publish_done_ends_the_session(admin, hook, clock):
    channel = make_channel(admin)
    started = clock.now
    assert publish(hook, channel).status_int == 200
    clock.advance(42)
    answer = publish_done(hook, channel)
    assert answer.status_int == 200
    idle = get(admin, channel)
    assert idle['status'] == 'idle'
    assert idle['liveSince'] is None
    ended = sessions(admin, channel)['items'][0]
    assert ended['endReason'] == 'publisher_left'
    assert ended['endedAt'] == iso(clock.now)
    assert ended['durationSeconds'] == round(clock.now - started)
    assert admin.get('/v1/users/streamer').json['data']['usage']['liveChannels'] == 0
    clock.advance(1)
    assert publish_done(hook, channel).status_int == 200  # nginx may repeat itself
    assert sessions(admin, channel)['items'][0]['endedAt'] == ended['endedAt']


@pytest.mark.parametrize('read', [
    lambda client, channel: get(client, channel)['status'] == 'idle',
    lambda client, channel: client.get('/v1/channels?status=live').json['data']['items'] == [],
    lambda client, channel: client.get('/v1/channels/%s/stats' % channel['id'])
    .json['data']['current'] is None,
    lambda client, channel: sessions(client, channel)['items'][0]['endReason'] == 'stale',
    lambda client, channel: client.get('/v1/stats').json['data']['liveChannels'] == 0,
    lambda client, channel: client.get('/v1/users/streamer')
    .json['data']['usage']['liveChannels'] == 0,
], ids=['channel', 'live list', 'channel stats', 'sessions', 'stats', 'user'])
def test_a_stale_session_is_ended_on_read(admin, hook, clock, interval, read):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    clock.advance(5)
    assert update(hook, channel).status_int == 200
    last_seen = clock.now
    clock.advance(3 * interval - 1)
    assert get(admin, channel)['status'] == 'live'
    clock.advance(2)
    assert read(admin, channel)
    assert get(admin, channel)['liveSince'] is None
    ended = sessions(admin, channel)['items'][0]
    assert ended['endReason'] == 'stale'
    assert ended['endedAt'] == iso(last_seen)
    assert ended['durationSeconds'] == 5


# play and play_done ###########################################################

def test_play_and_play_done_count_viewers(admin, hook):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    name = channel['id']
    for viewer in range(3):
        assert hook('play', name, clientid=str(10 + viewer)).status_int == 200
    assert hook('play_done', name, clientid='10').status_int == 200
    stats = admin.get('/v1/channels/%s/stats' % name).json['data']
    assert stats['current']['viewers'] == 2
    for viewer in range(3):  # one more play_done than plays left: never below zero
        assert hook('play_done', name, clientid=str(11 + viewer)).status_int == 200
    assert admin.get('/v1/channels/%s/stats' % name).json['data']['current']['viewers'] == 0
    assert hook('play', name, clientid='20').status_int == 200
    assert admin.get('/v1/channels/%s/stats' % name).json['data']['current']['viewers'] == 1
    assert sessions(admin, channel)['items'][0]['peakViewers'] == 3


def test_play_of_an_unknown_channel_is_refused(hook):
    assert_refused(hook('play', 'a' * 16, clientid='10'))


# Malformed and unknown calls ##################################################

def _form(**fields):
    form = {'app': 'live', 'clientid': '1', 'addr': '127.0.0.1'}
    form.update(fields)
    return urllib.parse.urlencode(form)


@pytest.mark.parametrize('body, content_type', [
    (_form(name='aaaaaaaaaaaaaaaa'), 'application/x-www-form-urlencoded'),
    (_form(call='', name='aaaaaaaaaaaaaaaa'), 'application/x-www-form-urlencoded'),
    (_form(call='frobnicate', name='aaaaaaaaaaaaaaaa'), 'application/x-www-form-urlencoded'),
    (_form(call='publish'), 'application/x-www-form-urlencoded'),
    (_form(call='update_publish'), 'application/x-www-form-urlencoded'),
    (_form(call='publish_done'), 'application/x-www-form-urlencoded'),
    (_form(call='play'), 'application/x-www-form-urlencoded'),
    (_form(call='publish', name='../../etc/passwd'), 'application/x-www-form-urlencoded'),
    (_form(call='update_publish', name='x' * 5000), 'application/x-www-form-urlencoded'),
    (_form(call='publish_done', name='abc?key=1'), 'application/x-www-form-urlencoded'),
    (_form(call='play', name='\u00e9' * 16), 'application/x-www-form-urlencoded'),
    ('call=publish&name=%ff%fe%00&key=%c3', 'application/x-www-form-urlencoded'),
    ('call=update_publish&name&key', 'application/x-www-form-urlencoded'),
    ('{"call": "publish", "name": "aaaaaaaaaaaaaaaa"}', 'application/json'),
    (b'\x00\x01garbage\xff', 'application/octet-stream'),
    ('', 'application/x-www-form-urlencoded'),
], ids=['no call', 'empty call', 'made-up call', 'publish no name', 'update no name',
        'done no name', 'play no name', 'path name', 'long name', 'name with args', 'unicode name',
        'bad utf-8', 'bare fields', 'json body', 'binary body', 'empty body'])
def test_malformed_hooks_are_refused_not_crashed(app, body, content_type):
    answer = webtest.TestApp(app).post(
        '/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret,
        body if isinstance(body, bytes) else body.encode(),
        content_type=content_type, expect_errors=True)
    assert 400 <= answer.status_int < 500, answer.text
    assert answer.json['ec'] in (1, 4)
    assert answer.content_type == 'application/json'


def test_an_oversized_hook_body_is_refused(app):
    answer = webtest.TestApp(app).post(
        '/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret,
        _form(call='publish', name='a' * 16, pad='x' * app.livestream.config['server']
              ['max_body_bytes']), content_type='application/x-www-form-urlencoded',
        expect_errors=True)
    assert answer.status_int == 413
    assert answer.json['ec'] == 8


@pytest.mark.parametrize('call', ['done', 'record_done', 'connect', 'disconnect', 'update_play'])
def test_calls_not_acted_on_are_acknowledged_and_ignored(admin, hook, call):
    """nginx-rtmp's other notify calls (on_done, on_record_done, ...) get a 200."""
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    name, key = stream_args(channel)
    answer = hook(call, name, key=key)
    assert answer.status_int == 200
    assert answer.json['ec'] == 0
    assert get(admin, channel)['status'] == 'live'
    assert sessions(admin, channel)['items'][0]['endedAt'] is None
