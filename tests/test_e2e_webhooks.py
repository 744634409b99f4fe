"""End to end with webhooks: ffmpeg publishing through nginx-rtmp to the API, whose
events reach a real receiver; and the reconnect window across a killed encoder.
Skips like test_e2e_nginx.py where nginx or ffmpeg is missing (fails under
LIVESTREAM_E2E=1)."""

import time

import pytest

from e2e_support import tail, wait_exit, wait_for
from test_e2e_nginx import (channel_of, e2e, new_channel, publish, sessions_of,  # noqa: F401
                            stack, wait_live)
from webhook_support import Receiver

pytestmark = pytest.mark.e2e

#: channel.live reaches the receiver within this many seconds of the channel being live.
EVENT_SECONDS = 2.0


@pytest.fixture(scope='module')
def receiver(stack):  # noqa: F811 (the fixture)
    """The admin's endpoint: it receives every channel's events."""
    receiver = Receiver()
    stack.api.ok('PUT', '/v1/webhook', {'url': receiver.url, 'events': [
        'channel.live', 'channel.idle', 'channel.disconnected', 'channel.reconnected']},
        status=201)
    yield receiver
    receiver.close()


def events_of(receiver, channel):
    """[(type, event, arrival time)] of one channel, in order of arrival."""
    return [(event['type'], event, at) for event, at in zip(receiver.events, receiver.arrived_at)
            if event['data']['channel']['id'] == channel['id']]


def wait_events(receiver, channel, types, timeout):
    wait_for(lambda: [kind for kind, _, _ in events_of(receiver, channel)] == types, timeout,
             '%s at the receiver (got %s)' % (types, [kind for kind, _, _ in
                                                      events_of(receiver, channel)]))
    return events_of(receiver, channel)


def test_live_and_idle_reach_the_receiver(e2e, receiver):  # noqa: F811
    channel = new_channel(e2e)
    encoder = publish(e2e, channel, seconds=8)
    wait_live(e2e, channel, encoder)
    live_seen = time.monotonic()
    [(_, live, arrived)] = wait_events(receiver, channel, ['channel.live'], 10)
    print('channel.live arrived %.2f s after the API showed the channel live'
          % (arrived - live_seen))
    assert arrived - live_seen <= EVENT_SECONDS
    assert live['data']['session']['endedAt'] is None
    assert wait_exit(encoder, 40) == 0, tail(encoder.log_path)
    found = wait_events(receiver, channel, ['channel.live', 'channel.idle'], 15)
    idle = found[1][1]['data']
    assert idle['session']['id'] == live['data']['session']['id']
    assert idle['session']['endReason'] == 'publisher_left'
    assert idle['session']['bytesIn'] > 0
    assert idle['channel']['status'] == 'idle'


def test_a_reconnect_within_the_window_is_one_broadcast(e2e, receiver):  # noqa: F811
    """A 10 s window: ffmpeg killed, started again 3 s later, then stopped for good."""
    channel = new_channel(e2e)
    e2e.api.ok('PATCH', '/v1/channels/' + channel['id'], {'reconnectWindowSeconds': 10})
    first = publish(e2e, channel)
    wait_live(e2e, channel, first)
    time.sleep(4)  # some bytes on air
    first.kill()
    first.wait(10)
    wait_events(receiver, channel, ['channel.live', 'channel.disconnected'], 10)
    stats = e2e.api.ok('GET', '/v1/channels/%s/stats' % channel['id'])
    assert stats['status'] == 'live' and stats['current']['connected'] is False
    time.sleep(3)
    second = publish(e2e, channel, seconds=6)
    wait_events(receiver, channel, ['channel.live', 'channel.disconnected',
                                    'channel.reconnected'], 15)
    assert e2e.api.ok('GET', '/v1/channels/%s/stats' % channel['id'])['current'][
        'connected'] is True
    assert wait_exit(second, 40) == 0, tail(second.log_path)
    wait_events(receiver, channel, ['channel.live', 'channel.disconnected',
                                    'channel.reconnected', 'channel.disconnected'], 15)
    assert channel_of(e2e, channel)['status'] == 'live'  # within the window
    stopped = time.monotonic()
    found = wait_events(receiver, channel, [
        'channel.live', 'channel.disconnected', 'channel.reconnected', 'channel.disconnected',
        'channel.idle'], 20)
    print('channel.idle %.1f s after the final stop (window 10 s)'
          % (found[-1][2] - stopped))
    assert found[-1][2] - stopped >= 8
    assert len({event['data']['session']['id'] for _, event, _ in found}) == 1
    assert sessions_of(e2e, channel)['total'] == 1
    idle = found[-1][1]['data']['session']
    assert idle['endReason'] == 'publisher_left'
    assert idle['bytesIn'] > found[1][1]['data']['session']['bytesIn'] > 0
    assert 6 <= idle['durationSeconds'] <= 30  # both connections, not the gap
