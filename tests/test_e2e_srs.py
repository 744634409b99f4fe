"""End to end with SRS: the API under waitress (kind srs, polling SRS's HTTP API), a
real SRS 6 on the config `livestream-api srs-conf` prints (built once from its
source: tests/srs_support.py), and ffmpeg publishing as OBS does. They skip without
ffmpeg or an SRS source or binary, and fail instead when LIVESTREAM_E2E=1."""

import os
import secrets
import shutil
import signal
import time
import urllib.request

import pytest

from e2e_support import UPDATE_INTERVAL, skip_or_fail_if_missing, tail, wait_exit, wait_for
from srs_support import SrsStack, srs_binary
from test_e2e_nginx import (REFUSED_SECONDS, channel_of, key_of, live_ids, new_channel,
                            publish, sessions_of, wait_live, with_nginx)

pytestmark = pytest.mark.e2e

#: The slow stack's update interval: a cut must come from the kick, not from a poll.
CUT_OFF_UPDATE_INTERVAL = 10
#: Bound on a cut: the encoder gone within this long of the API's answer.
CUT_OFF_SECONDS = CUT_OFF_UPDATE_INTERVAL + 3


def running_stack(update_interval):
    missing = [] if shutil.which('ffmpeg') else ['ffmpeg']
    binary, why = (None, None) if missing else srs_binary()
    skip_or_fail_if_missing(missing + ([why] if why else []))
    stack = SrsStack(binary, update_interval)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope='module')
def stack():
    yield from running_stack(UPDATE_INTERVAL)


@pytest.fixture(scope='module')
def slow_stack():
    yield from running_stack(CUT_OFF_UPDATE_INTERVAL)


@pytest.fixture
def e2e(stack):
    yield from with_nginx(stack)


@pytest.fixture
def e2e_slow(slow_stack):
    yield from with_nginx(slow_stack)


def stats_of(stack, channel):
    return stack.api.ok('GET', '/v1/channels/%s/stats' % channel['id'])


def test_publishing_the_stream_id_to_srs_goes_live(e2e):
    channel = new_channel(e2e)
    started = time.monotonic()
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    print('live after %.1f s' % (time.monotonic() - started))
    assert channel_of(e2e, channel)['liveSince'] is not None
    assert live_ids(e2e, '&userId=' + channel['userId']) == {channel['id']}


def test_stats_show_the_stream_as_srs_measures_it(e2e):
    channel = new_channel(e2e)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)

    # SRS's kbps.recv_30s stays 0 for ~30 s: the API measures recv_bytes' growth then.
    def measured():
        current = stats_of(e2e, channel)['current']
        return current and current['bitrateKbps'] and current['video'] and current
    current = wait_for(measured, 20, 'a measured bitrate in stats.current')
    assert current['video']['codec'] == 'H264'
    assert (current['video']['width'], current['video']['height']) == (640, 352)
    assert current['audio']['codec'] == 'AAC'
    assert current['bitrateKbps'] > 0 and current['bytesIn'] > 0
    ingest = e2e.api.ok('GET', '/v1/stats')['system']['ingest']
    assert ingest[0]['reachable'] is True and ingest[0]['streams'] >= 1


def test_hls_from_srs_counts_a_viewer_and_the_key_leaks_nowhere(e2e):
    channel = new_channel(e2e)
    key = key_of(channel)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    assert channel['playback']['hls'] == 'http://127.0.0.1:%d/live/%s.m3u8' % (
        e2e.http_port, channel['id'])

    def playlist():
        try:
            with urllib.request.urlopen(channel['playback']['hls'], timeout=5) as answer:
                return answer.status, answer.read().decode()
        except OSError:
            return None
    status, body = wait_for(playlist, 20, 'the HLS playlist from SRS')
    assert status == 200 and body.startswith('#EXTM3U')
    # The fetch fired on_play with stream <id>.m3u8: a viewer of the channel, at once.
    viewers = wait_for(lambda: stats_of(e2e, channel)['current']['viewers'], 5,
                       'the HLS viewer counted')
    assert viewers == 1
    hls_files = os.listdir(e2e.hls_dir)
    assert '%s.m3u8' % channel['id'] in hls_files
    assert [name for name in hls_files if key in name] == []
    with urllib.request.urlopen('%s/api/v1/streams/?count=100' % e2e.env[
            'LIVESTREAM_INGEST_API_URL'], timeout=5) as answer:
        assert key not in answer.read().decode()
    for log in (e2e.srs_log, e2e.srs_out, e2e.api_log):
        text = log.read_text()
        assert key not in text, log
        assert e2e.hook_secret not in text, log


def test_a_wrong_key_is_refused_by_srs_and_srs_logs_the_key_tried(e2e):
    channel = new_channel(e2e)
    wrong = secrets.token_urlsafe(24)
    encoder = publish(e2e, channel, key=wrong)
    assert wait_exit(encoder, REFUSED_SECONDS) != 0
    assert channel_of(e2e, channel)['status'] == 'idle'
    assert sessions_of(e2e, channel)['total'] == 0
    assert 'srs on_publish on channel %s refused: wrong stream key' % channel['id'] \
        in e2e.api_log.read_text()
    # What the README says of SRS's log at warn: a refused publish is logged with the
    # hook URL and the request, so the key tried and the hook secret are in it; the
    # channel's own key is not (it was never sent), and nothing of ours logs either.
    srs_log = e2e.srs_log.read_text()
    assert wrong in srs_log
    assert e2e.hook_secret in srs_log
    assert key_of(channel) not in srs_log
    assert wrong not in e2e.api_log.read_text()


@pytest.mark.parametrize('action, end_reason', [
    ('disable', 'channel_disabled'), ('rotate-key', 'key_rotated'), ('delete', 'channel_deleted'),
    ('delete-user', 'channel_deleted')])
def test_the_api_kicks_a_live_encoder_off_srs(e2e_slow, action, end_reason):
    e2e = e2e_slow
    channel = new_channel(e2e)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    path = '/v1/channels/' + channel['id']
    if action == 'disable':
        e2e.api.ok('PATCH', path, {'enabled': False})
    elif action == 'rotate-key':
        e2e.api.ok('POST', path + '/rotate-key')
    elif action == 'delete':
        assert e2e.api.call('DELETE', path) == (204, None)
    else:
        assert e2e.api.call('DELETE', '/v1/users/%s?force=true' % channel['userId']) == \
            (204, None)
    answered = time.monotonic()
    assert wait_exit(encoder, CUT_OFF_SECONDS) != 0
    print('%s: encoder cut %.2f s after the answer' % (action, time.monotonic() - answered))
    assert channel['id'] not in live_ids(e2e)
    assert 'kicked the publisher of channel %s' % channel['id'] in e2e.api_log.read_text()
    if action.startswith('delete'):
        assert e2e.api.get(path)[0] == 404
    else:
        assert [session['endReason'] for session in sessions_of(e2e, channel)['items']] == \
            [end_reason]


def test_a_user_at_max_live_channels_cannot_start_another_stream_on_srs(e2e):
    first, second = new_channel(e2e, max_live_channels=1, channels=2)
    encoder = publish(e2e, first)
    wait_live(e2e, first, encoder)
    refused = publish(e2e, second)
    assert wait_exit(refused, REFUSED_SECONDS) != 0
    assert channel_of(e2e, second)['status'] == 'idle'
    assert 'srs on_publish on channel %s refused: user is at maxLiveChannels (1)' \
        % second['id'] in e2e.api_log.read_text()
    assert encoder.poll() is None
    assert channel_of(e2e, first)['status'] == 'live'


def test_a_finished_stream_on_srs_leaves_a_session(e2e):
    channel = new_channel(e2e)
    encoder = publish(e2e, channel, seconds=8)
    wait_live(e2e, channel, encoder)
    assert wait_exit(encoder, 30) == 0, tail(encoder.log_path)
    wait_for(lambda: channel_of(e2e, channel)['status'] == 'idle', 10, 'the channel to be idle')
    listed = sessions_of(e2e, channel)
    assert listed['total'] == 1
    session = listed['items'][0]
    assert session['endReason'] == 'publisher_left'
    assert 4 <= session['durationSeconds'] <= 30
    assert session['bytesIn'] > 0
    assert session['video']['codec'] == 'H264'
    assert stats_of(e2e, channel)['current'] is None


def test_no_channel_stays_live_after_srs_is_killed(e2e):
    channel = new_channel(e2e)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    try:
        e2e.kill_nginx(signal.SIGKILL)  # no on_unpublish: only the failed polls end it
        killed = time.monotonic()
        assert wait_exit(encoder, 10) != 0
        wait_for(lambda: not live_ids(e2e), 3 * UPDATE_INTERVAL + 6,
                 'no channel to be live after SRS was killed')
        print('idle %.1f s after the kill' % (time.monotonic() - killed))
        assert [session['endReason'] for session in sessions_of(e2e, channel)['items']] == \
            ['stale']
    finally:
        e2e.start_nginx()
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
