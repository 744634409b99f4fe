"""End to end: the API under waitress, nginx-rtmp on the config it generates, and
ffmpeg publishing as OBS does. Run with `python -m pytest -m e2e`; they skip
where nginx, its RTMP module or ffmpeg is missing, and fail instead when
LIVESTREAM_E2E=1."""

import os
import secrets
import signal
import time
import urllib.request

import pytest

from e2e_support import (MAX_STREAM_SECONDS, UPDATE_INTERVAL, Stack, bytes_sent,
                         skip_or_fail_if_missing, tail, wait_exit, wait_for)

pytestmark = pytest.mark.e2e

#: Generous bounds for a busy 2-core machine; the tests normally finish well inside them.
GO_LIVE_SECONDS = 20
REFUSED_SECONDS = 15
#: A stream the API stops allowing is dropped through nginx's control module at once:
#: within this many seconds of the API's answer, with nginx's update calls 10 s apart.
CUT_OFF_SECONDS = 1.5
#: The update interval of the stack the cut-off is measured on: long, so that an
#: update call cannot be what drops the stream.
CUT_OFF_UPDATE_INTERVAL = 10


def running_stack(update_interval=UPDATE_INTERVAL):
    """A started Stack (stopped when the generator closes), or a skip / failure
    naming what this machine lacks."""
    skip_or_fail_if_missing()
    stack = Stack(update_interval)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope='module')
def stack():
    yield from running_stack()


@pytest.fixture(scope='module')
def slow_updates_stack():
    yield from running_stack(CUT_OFF_UPDATE_INTERVAL)


def with_nginx(stack):
    """The stack with nginx running; the test's encoders are killed after it."""
    if not stack.nginx_running():
        stack.start_nginx()
    yield stack
    stack.stop_encoders()


@pytest.fixture
def e2e(stack):
    yield from with_nginx(stack)


@pytest.fixture
def e2e_slow_updates(slow_updates_stack):
    yield from with_nginx(slow_updates_stack)


def new_channel(stack, max_live_channels=1, channels=1):
    """Channels of a user of their own, so no other test's limits or streams count."""
    user_id = 'e2e-%s' % secrets.token_hex(6)
    user = stack.api.ok('PUT', '/v1/users/' + user_id,
                        {'limits': {'maxLiveChannels': max_live_channels}}, status=201)
    assert user['limits']['maxLiveChannels'] == max_live_channels
    made = [stack.api.ok('POST', '/v1/channels', {'userId': user_id, 'name': 'e2e %d' % number},
                         status=201) for number in range(channels)]
    return made if channels > 1 else made[0]


def publish(stack, channel, seconds=MAX_STREAM_SECONDS, key=None):
    """Publish to the channel's streamUrl + "/" + streamId (or that id with another key)."""
    stream_id = channel['streamId'] if key is None else '%s?key=%s' % (channel['id'], key)
    return stack.publish(channel['streamUrl'], stream_id, seconds)


def channel_of(stack, channel):
    return stack.api.ok('GET', '/v1/channels/' + channel['id'])


def wait_live(stack, channel, encoder):
    def live():
        if encoder.poll() is not None:
            raise AssertionError('ffmpeg exited with %s before the channel went live:\n%s'
                                 % (encoder.returncode, tail(encoder.log_path)))
        return channel_of(stack, channel)['status'] == 'live'
    wait_for(live, GO_LIVE_SECONDS, 'channel %s to go live' % channel['id'])


def sessions_of(stack, channel):
    return stack.api.ok('GET', '/v1/channels/%s/sessions' % channel['id'])


def live_ids(stack, query=''):
    listed = stack.api.ok('GET', '/v1/channels?status=live' + query)
    return {item['id'] for item in listed['items']}


def key_of(channel):
    return channel['streamId'].split('?key=', 1)[1]


def test_publishing_the_stream_id_goes_live(e2e):
    channel = new_channel(e2e)
    assert channel['status'] == 'idle'
    started = time.monotonic()
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    print('live after %.1f s' % (time.monotonic() - started))
    live = channel_of(e2e, channel)
    assert live['liveSince'] is not None
    assert channel['id'] in live_ids(e2e)
    assert live_ids(e2e, '&userId=' + channel['userId']) == {channel['id']}
    idle = e2e.api.ok('GET', '/v1/channels?status=idle&userId=' + channel['userId'])
    assert idle['items'] == []


def test_stats_show_the_stream_as_nginx_measures_it(e2e):
    channel = new_channel(e2e)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)

    # nginx's own bw_in stays 0 for ~10 s: until then the API derives the bitrate
    # from bytes_in (since the session began, at the first update).
    def measured():
        stats = e2e.api.ok('GET', '/v1/channels/%s/stats' % channel['id'])
        current = stats['current']
        return current and current['bitrateKbps'] and current['video'] and stats
    stats = wait_for(measured, 20, 'a measured bitrate in stats.current')
    current = stats['current']
    assert stats['status'] == 'live'
    assert current['video']['codec'] == 'H264'
    assert current['video']['width'] == 640
    assert current['video']['fps'] == 25
    assert current['audio']['codec'] == 'AAC'
    assert current['bitrateKbps'] > 0
    assert current['bytesIn'] > 0
    assert current['durationSeconds'] >= UPDATE_INTERVAL
    ingest = e2e.api.ok('GET', '/v1/stats')['system']['ingest']
    assert ingest[0]['reachable'] is True and ingest[0]['streams'] >= 1


def test_hls_plays_and_the_key_leaks_nowhere(e2e):
    channel = new_channel(e2e)
    key = key_of(channel)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    assert channel['playback']['hls'].endswith('/%s.m3u8' % channel['id'])
    assert key not in channel['playback']['hls'] and key not in channel['playback']['rtmp']

    def playlist():
        try:
            with urllib.request.urlopen(channel['playback']['hls'], timeout=5) as answer:
                return answer.status, answer.headers['Content-Type'], answer.read().decode()
        except OSError:
            return None
    status, content_type, body = wait_for(playlist, 15, 'the HLS playlist')
    assert status == 200
    assert body.startswith('#EXTM3U')
    assert content_type == 'application/vnd.apple.mpegurl'

    hls_files = os.listdir(e2e.hls_dir)
    assert '%s.m3u8' % channel['id'] in hls_files
    assert [name for name in hls_files if key in name] == []
    with urllib.request.urlopen('http://127.0.0.1:%d/stat' % e2e.http_port, timeout=5) as answer:
        stat = answer.read().decode()
    assert '<name>%s</name>' % channel['id'] in stat
    assert key not in stat
    assert key not in e2e.error_log.read_text()
    assert key not in e2e.api_log.read_text()
    assert e2e.hook_secret not in e2e.error_log.read_text()
    assert e2e.hook_secret not in e2e.api_log.read_text()
    # nginx-rtmp's built-in default access log (an absolute path outside the
    # prefix) records each stream's arguments unless the config turns it off.
    if os.path.exists('/var/log/nginx/access.log'):
        with open('/var/log/nginx/access.log', errors='replace') as access_log:
            assert key not in access_log.read()


def test_a_wrong_key_is_refused(e2e):
    channel = new_channel(e2e)
    encoder = publish(e2e, channel, key=secrets.token_urlsafe(24))
    assert wait_exit(encoder, REFUSED_SECONDS) != 0
    assert channel_of(e2e, channel)['status'] == 'idle'
    assert sessions_of(e2e, channel)['total'] == 0
    # Refused by the API for the key (not, say, for nginx being down), and said why.
    assert 'nginx-rtmp publish on channel %s refused: wrong stream key' % channel['id'] \
        in e2e.api_log.read_text()


@pytest.mark.parametrize('action, end_reason', [
    ('disable', 'channel_disabled'), ('rotate-key', 'key_rotated'), ('delete', 'channel_deleted'),
    ('delete-user', 'channel_deleted')])
def test_the_api_cuts_a_live_encoder_off_at_once(e2e_slow_updates, action, end_reason):
    e2e = e2e_slow_updates
    channel = new_channel(e2e)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    path = '/v1/channels/' + channel['id']
    if action == 'disable':
        assert e2e.api.ok('PATCH', path, {'enabled': False})['status'] == 'disabled'
    elif action == 'rotate-key':
        assert e2e.api.ok('POST', path + '/rotate-key')['streamId'] != channel['streamId']
    elif action == 'delete':
        assert e2e.api.call('DELETE', path) == (204, None)
    else:
        assert e2e.api.call('DELETE', '/v1/users/%s?force=true' % channel['userId']) == \
            (204, None)
    answered = time.monotonic()
    assert wait_exit(encoder, CUT_OFF_SECONDS) != 0
    print('%s cut the encoder off %.2f s after the answer' % (action, time.monotonic() - answered))
    assert channel['id'] not in live_ids(e2e)
    if action.startswith('delete'):
        assert e2e.api.get(path)[0] == 404
        return
    assert channel_of(e2e, channel)['status'] == ('disabled' if action == 'disable' else 'idle')
    ended = sessions_of(e2e, channel)['items']
    assert [session['endReason'] for session in ended] == [end_reason]
    assert 'kicked the publisher of channel %s' % channel['id'] in e2e.api_log.read_text()


def test_a_user_at_max_live_channels_cannot_start_another_stream(e2e):
    first, second = new_channel(e2e, max_live_channels=1, channels=2)
    encoder = publish(e2e, first)
    wait_live(e2e, first, encoder)
    refused = publish(e2e, second)
    assert wait_exit(refused, REFUSED_SECONDS) != 0
    assert channel_of(e2e, second)['status'] == 'idle'
    assert sessions_of(e2e, second)['total'] == 0
    assert 'nginx-rtmp publish on channel %s refused: user is at maxLiveChannels (1)' \
        % second['id'] in e2e.api_log.read_text()
    assert encoder.poll() is None
    assert channel_of(e2e, first)['status'] == 'live'


def test_a_finished_stream_leaves_a_session(e2e):
    channel = new_channel(e2e)
    encoder = publish(e2e, channel, seconds=6)
    wait_live(e2e, channel, encoder)
    assert wait_exit(encoder, 30) == 0, tail(encoder.log_path)
    wait_for(lambda: channel_of(e2e, channel)['status'] == 'idle', 10, 'the channel to be idle')
    listed = sessions_of(e2e, channel)
    assert listed['total'] == 1
    session = listed['items'][0]
    assert session['endReason'] == 'publisher_left'
    assert session['endedAt'] is not None
    assert 3 <= session['durationSeconds'] <= 30
    assert session['bytesIn'] > 0
    assert session['video']['codec'] == 'H264'
    stats = e2e.api.ok('GET', '/v1/channels/%s/stats' % channel['id'])
    assert stats['current'] is None
    assert stats['totals']['sessions'] == 1 and stats['totals']['bytesIn'] == session['bytesIn']


def test_a_broadcast_counts_its_bytes_to_the_end(e2e_slow_updates):
    """14 s on air, updates 10 s apart: the 4 s after the last update count too. nginx
    no longer lists a stream in /stat at its publish_done, so they are extrapolated
    at the last measured rate (before, the session kept its 10 s count)."""
    e2e = e2e_slow_updates
    channel = new_channel(e2e)
    encoder = publish(e2e, channel, seconds=14)
    wait_live(e2e, channel, encoder)
    assert wait_exit(encoder, 40) == 0, tail(encoder.log_path)
    wait_for(lambda: channel_of(e2e, channel)['status'] == 'idle', 10, 'the channel to be idle')
    session = sessions_of(e2e, channel)['items'][0]
    sent = bytes_sent(encoder)
    print('session bytesIn %d, ffmpeg sent %d (%.1f%%)' % (session['bytesIn'], sent,
                                                        100.0 * session['bytesIn'] / sent))
    assert session['endReason'] == 'publisher_left'
    assert session['bytesIn'] == pytest.approx(sent, rel=0.1)
    assert session['peakBitrateKbps'] >= session['avgBitrateKbps'] > 0


def test_no_channel_stays_live_after_nginx_is_killed(e2e):
    channel = new_channel(e2e)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    try:
        # SIGKILL: nginx sends no publish_done; only staleness can end the session.
        e2e.kill_nginx(signal.SIGKILL)
        killed = time.monotonic()
        assert wait_exit(encoder, 10) != 0
        wait_for(lambda: not live_ids(e2e), 3 * UPDATE_INTERVAL + 6,
                 'no channel to be live after nginx was killed')
        print('idle %.1f s after the kill' % (time.monotonic() - killed))
        assert e2e.api.ok('GET', '/v1/channels?status=live')['total'] == 0
        assert channel_of(e2e, channel)['status'] == 'idle'
        ended = sessions_of(e2e, channel)['items']
        assert [session['endReason'] for session in ended] == ['stale']
        assert ended[0]['endedAt'] is not None
    finally:
        e2e.start_nginx()
    # The restarted nginx takes the channel live again.
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
