"""The reconnect window: a publisher that drops and comes back within it continues
the same broadcast; the window's end, or a disable, re-key or delete, ends it.
Driven through the nginx-rtmp hook on the test clock; no sleeping."""

import pytest

from ingest_support import get, iso, make_channel, publish, publish_done, sessions, update
from webhook_support import deliver


@pytest.fixture
def app(make_app, stat_server):
    app = make_app(ingest={'stat_url': stat_server.url, 'reconnect_window': '20'})[1]
    stat_server.pollers.append(app.livestream.pollers['default'])
    yield app
    app.livestream.deliverer.stop()


def stats(client, channel):
    return client.get('/v1/channels/%s/stats' % channel['id']).json['data']


def test_a_drop_within_the_window_continues_the_broadcast(app, admin, hook, clock, receiver,
                                                         stat_server):
    admin.put_json('/v1/webhook', {'url': receiver.url, 'events': [
        'channel.live', 'channel.idle', 'channel.disconnected', 'channel.reconnected']})
    channel = make_channel(admin, maxLiveChannels=1)
    other = make_channel(admin)
    assert publish(hook, channel, clientid='1').status_int == 200
    clock.advance(10)
    stat_server.serve({'name': channel['id'], 'bw_in': 8000, 'bytes_in': 10000})
    update(hook, channel, clientid='1')
    assert publish_done(hook, channel, clientid='1').status_int == 200
    dropped_at = clock.now
    clock.advance(15)
    now = stats(admin, channel)
    assert now['status'] == 'live'
    assert now['current']['connected'] is False
    assert now['current']['durationSeconds'] == 10  # time stands still while away
    assert publish(hook, other).status_int == 403  # the slot is still held
    assert publish(hook, channel, clientid='2').status_int == 200  # the encoder is back
    clock.advance(10)
    stat_server.serve({'name': channel['id'], 'bw_in': 8000, 'bytes_in': 5000})
    assert update(hook, channel, clientid='2').status_int == 200
    now = stats(admin, channel)
    assert now['current']['connected'] is True
    assert now['current']['durationSeconds'] == 20
    assert now['current']['bytesIn'] == 15000  # the new connection counts from 0
    assert publish_done(hook, channel, clientid='2').status_int == 200
    left_at = clock.now
    clock.advance(19)
    assert get(admin, channel)['status'] == 'live'
    clock.advance(2)
    assert get(admin, channel)['status'] == 'idle'  # the window passed: ended on read
    [session] = sessions(admin, channel)['items']
    assert session['endReason'] == 'publisher_left'
    assert session['endedAt'] == iso(left_at)  # when the publisher left, not now
    assert session['durationSeconds'] == 20
    assert session['bytesIn'] == 15000
    assert stats(admin, channel)['totals'] == {'sessions': 1, 'liveSeconds': 20,
                                               'bytesIn': 15000}
    deliver(app)
    assert receiver.types == ['channel.live', 'channel.disconnected', 'channel.reconnected',
                              'channel.disconnected', 'channel.idle']
    assert len({event['data']['session']['id'] for event in receiver.events}) == 1
    assert receiver.events[1]['data']['session']['endedAt'] is None
    assert dropped_at < left_at


def test_the_window_end_is_found_by_the_worker_without_a_read(app, admin, hook, clock,
                                                             receiver):
    admin.put_json('/v1/webhook', {'url': receiver.url, 'events': ['channel.idle']})
    channel = make_channel(admin)
    publish(hook, channel)
    publish_done(hook, channel)
    clock.advance(21)
    app.livestream.deliverer.run_once()
    app.livestream.deliverer.settle()
    [idle] = receiver.wait_for(1)
    assert idle['data']['session']['endReason'] == 'publisher_left'
    assert idle['data']['channel']['status'] == 'idle'


@pytest.mark.parametrize('edit, reason', [
    (lambda client, path: client.patch_json(path, {'enabled': False}), 'channel_disabled'),
    (lambda client, path: client.post(path + '/rotate-key'), 'key_rotated'),
    (lambda client, path: client.delete(path), 'channel_deleted'),
])
def test_disable_rotate_or_delete_ends_the_window_at_once(admin, hook, clock, edit, reason):
    channel = make_channel(admin)
    publish(hook, channel)
    clock.advance(30)
    publish_done(hook, channel)
    left_at = clock.now
    clock.advance(5)
    session_id = stats(admin, channel)['current']['sessionId']
    path = '/v1/channels/' + channel['id']
    edit(admin, path)
    events = admin.get('/v1/events?type=channel.idle').json['data']['items']
    [idle] = [event for event in events if event['data']['session']['id'] == session_id]
    assert idle['data']['session']['endReason'] == reason
    assert idle['data']['session']['endedAt'] == iso(left_at)
    assert publish(hook, channel).status_int == 403


def test_a_wrong_key_does_not_resume(admin, hook, clock):
    channel = make_channel(admin)
    publish(hook, channel)
    publish_done(hook, channel)
    assert publish(hook, channel, clientid='2', key='x' * 40).status_int == 403
    assert stats(admin, channel)['current']['connected'] is False


def test_a_late_update_from_the_connection_that_left_is_refused(admin, hook, clock):
    channel = make_channel(admin)
    publish(hook, channel)
    publish_done(hook, channel)
    assert update(hook, channel, clientid='1').status_int == 403
    assert stats(admin, channel)['current']['connected'] is False


def test_a_channel_window_of_0_turns_it_off(admin, hook):
    channel = make_channel(admin)
    admin.patch_json('/v1/channels/' + channel['id'], {'reconnectWindowSeconds': 0})
    publish(hook, channel)
    publish_done(hook, channel)
    assert get(admin, channel)['status'] == 'idle'


@pytest.mark.parametrize('value', [-1, 1801, 2.5, '10', True])
def test_bad_windows_are_422(admin, value):
    answer = admin.post_json('/v1/channels', {'userId': 'u', 'name': 'x',
                                              'reconnectWindowSeconds': value}, status=422)
    assert 'reconnectWindowSeconds' in answer.json['data']['fields']


def test_the_window_is_on_the_channel_object(admin):
    channel = admin.post_json('/v1/channels', {'userId': 'u', 'name': 'x',
                                               'reconnectWindowSeconds': 60}).json['data']
    assert channel['reconnectWindowSeconds'] == 60
    path = '/v1/channels/' + channel['id']
    assert admin.put_json(path, {'name': 'y'}).json['data']['reconnectWindowSeconds'] is None
    assert admin.patch_json(path, {'reconnectWindowSeconds': 1800}).json['data'][
        'reconnectWindowSeconds'] == 1800
