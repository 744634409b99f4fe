"""HLS viewers: nginx's syslog access-log datagrams parsed, counted per channel in a
window, bounded, salted; the listener worker and the nginx lines that feed it."""

import logging
import socket
from pathlib import Path

import pytest

import livestream_api
from livestream_api import ViewerCounter, ViewerLog, parse_hls_view
from test_reliability import Api, spawn  # noqa: F401 (spawn: a fixture)

CHANNEL = 'abcdefghijklmnop'


def datagram(uri='/hls/%s.m3u8' % CHANNEL, status='200', addr='127.0.0.2', agent='Player/2'):
    """A datagram as nginx sends it (measured: INGEST-NOTES, no trailing newline)."""
    return ('<190>Nov 30 18:02:56 livestream: 1796061776.552|%s|%s|%s|%s'
            % (addr, agent, uri, status)).encode()


@pytest.mark.parametrize('uri', ['/hls/%s.m3u8' % CHANNEL, '/hls/%s-17.ts' % CHANNEL,
                                 '/hls/%s/index.m3u8' % CHANNEL, '/hls/%s/3.ts' % CHANNEL])
@pytest.mark.parametrize('status', ['200', '206'])
def test_a_served_playlist_or_segment_is_a_view(uri, status):
    assert parse_hls_view(datagram(uri, status)) == (CHANNEL, '127.0.0.2', 'Player/2')


#: Datagrams captured from nginx 1.22 + nginx-rtmp (tests/test_e2e_viewers.py's relay),
#: the channel id replaced: a 404 before the first playlist, playlists, segments.
CAPTURED = (Path(__file__).parent / 'data' / 'hlsview_datagrams.txt').read_bytes().splitlines()
AGENT = r'Mozilla/5.0 (X11; Linux x86_64) \x22quoted\x22 Player/2'


def test_captured_nginx_datagrams_parse():
    views = [parse_hls_view(line) for line in CAPTURED]
    assert views == [None if line.endswith(b'|404') else (CHANNEL, '127.0.0.2', AGENT)
                     for line in CAPTURED]
    assert views.count(None) == 2 and len(views) == 6


def test_a_captured_datagram_cut_anywhere_is_never_a_view():
    line = CAPTURED[2]
    for length in range(len(line)):
        try:
            assert parse_hls_view(line[:length]) is None
        except ValueError:
            pass


def test_a_single_digit_day_and_a_user_agent_with_bars_parse():
    line = b'<190>Nov  3 18:02:56 livestream: 1796061776.552|::1|A|B (x)|/hls/%s-0.ts|200' \
        % CHANNEL.encode()
    assert parse_hls_view(line) == (CHANNEL, '::1', 'A|B (x)')


@pytest.mark.parametrize('uri, status', [
    ('/hls/%s.m3u8' % CHANNEL, '404'), ('/hls/%s.m3u8' % CHANNEL, '304'),
    ('/stat', '200'), ('/hls/', '200'), ('/hls/ABCDEFGHIJKLMNOP.m3u8', '200'),
    ('/hls/%s.mp4' % CHANNEL, '200'), ('/hls/%s/../x.ts' % CHANNEL, '200')])
def test_other_requests_are_no_views(uri, status):
    assert parse_hls_view(datagram(uri, status)) is None


@pytest.mark.parametrize('line', [
    b'', b'garbage', b'<190>Nov 30 18:02:56 other: 1.000|a|b|/hls/x.m3u8|200',
    b'<190>Nov 30 18:02:56 livestream: hello',
    b'<190>Nov 30 18:02:56 livestream: 1796061776.552|127.0.0.2|Player/2|/hls/abc',
    b'<190>Nov 30 18:02:56 livestream: 1796061776.552||P|/hls/%s.m3u8|200' % CHANNEL.encode(),
    b'<190>Nov 30 18:02:56 livestream: now|127.0.0.2|P|/hls/%s.m3u8|200' % CHANNEL.encode(),
    b'\xff\xfe<190>'])
def test_malformed_and_truncated_lines_raise_value_error(line):
    with pytest.raises(ValueError):
        parse_hls_view(line)


def test_a_line_cut_near_2kb_by_a_long_user_agent_is_malformed():
    cut = datagram(agent='A' * 3000)[:2048]
    with pytest.raises(ValueError):
        parse_hls_view(cut)


def test_a_viewer_is_a_distinct_address_and_user_agent_within_the_window():
    counter = ViewerCounter(window=30)
    counter.add(CHANNEL, '127.0.0.2', 'A', 100)
    counter.add(CHANNEL, '127.0.0.2', 'A', 101)  # the same viewer, a second request
    counter.add(CHANNEL, '127.0.0.2', 'B', 102)  # another player on the same address
    counter.add(CHANNEL, '127.0.0.3', 'A', 103)
    counter.add('otherchannel2345', '127.0.0.2', 'A', 103)
    assert counter.count(CHANNEL, 103) == 3
    assert counter.count('otherchannel2345', 103) == 1
    assert counter.count(CHANNEL, 131.5) == 2  # (2, A) last seen at 101: out
    assert counter.count(CHANNEL, 133) == 0
    assert counter.count('otherchannel2345', 133) == 0
    assert counter.count('nosuchchannel234', 100) == 0


def test_past_its_limit_the_counter_forgets_the_oldest_seen():
    counter = ViewerCounter(window=30, limit=3)
    for number, now in ((1, 100), (2, 101), (3, 102)):
        counter.add(CHANNEL, '10.0.0.%d' % number, 'A', now)
    counter.add(CHANNEL, '10.0.0.1', 'A', 103)  # seen again: now the newest
    counter.add('otherchannel2345', '10.0.0.4', 'A', 104)
    assert counter.count(CHANNEL, 104) == 2  # 10.0.0.2, the oldest seen, went
    assert counter.count('otherchannel2345', 104) == 1
    assert len(counter._seen) == 3


def test_no_raw_address_or_user_agent_is_kept_and_the_salt_is_per_process():
    first, second = ViewerCounter(window=30), ViewerCounter(window=30)
    for counter in (first, second):
        counter.add(CHANNEL, '198.51.100.77', 'SecretAgent/1', 100)
    dump = repr(first._seen) + repr(first.__dict__)
    for raw in ('198.51.100.77', 'SecretAgent'):
        assert raw not in dump and raw.encode() not in b''.join(
            digest for _, digest in first._seen)
    assert list(first._seen) != list(second._seen)  # another salt, another digest


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_malformed_datagrams_are_counted_and_logged_at_most_once_a_minute(caplog):
    viewer_log = ViewerLog(ViewerCounter(window=30), 0, Clock())
    with caplog.at_level(logging.WARNING, logger='livestream'):
        for now in (1000, 1001, 1030):
            viewer_log.run_once(b'<190>Nov 30 18:02:56 livestream: 127.0.0.9 junk', now)
        viewer_log.run_once(datagram(), 1031)
        viewer_log.run_once(b'junk', 1061)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and '1 malformed' in lines[0] and '3 malformed' in lines[1]
    assert not any('127.0.0.' in line for line in lines)
    assert viewer_log.counter.count(CHANNEL, 1060) == 1


def test_the_listener_counts_datagrams_sent_to_its_port():
    clock = Clock()
    viewer_log = ViewerLog(ViewerCounter(window=30), 0, clock)
    viewer_log.start()
    try:
        port = viewer_log._sock.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for addr in ('127.0.0.2', '127.0.0.3'):
                sender.sendto(datagram(addr=addr), ('127.0.0.1', port))
        for _ in range(200):
            if viewer_log.counter.count(CHANNEL, clock.now) == 2:
                break
            viewer_log._stopping.wait(0.02)
        assert viewer_log.counter.count(CHANNEL, clock.now) == 2
    finally:
        viewer_log.stop()


def test_a_taken_port_is_a_warning_and_no_listener(caplog):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(('127.0.0.1', 0))
        viewer_log = ViewerLog(ViewerCounter(window=30), taken.getsockname()[1], Clock())
        with caplog.at_level(logging.WARNING, logger='livestream'):
            viewer_log.start()
        viewer_log.stop()
    assert viewer_log._thread is None
    assert 'serving without HLS viewer counts' in caplog.text


def test_nginx_conf_logs_hls_requests_to_the_viewer_log_port(tmp_path, capsys):
    db = str(tmp_path / 'live.db')
    assert livestream_api.main(['init-db', '--db', db], environ={}) == 0
    capsys.readouterr()
    assert livestream_api.main(['nginx-conf', '--db', db],
                               environ={'LIVESTREAM_INGEST_VIEWER_LOG_PORT': '15999'}) == 0
    conf = capsys.readouterr().out
    assert "log_format hlsview '$msec|$remote_addr|$http_user_agent|$uri|$status';" in conf
    hls = conf[conf.index('location /hls'):]
    assert 'access_log syslog:server=127.0.0.1:15999,tag=livestream,nohostname hlsview;' \
        in hls[:hls.index('}\n    }')]
    assert livestream_api.main(['nginx-conf', '--db', db],
                               environ={'LIVESTREAM_INGEST_VIEWER_LOG_PORT': ''}) == 0
    assert 'syslog' not in capsys.readouterr().out


# Through the API ##############################################################

@pytest.fixture
def app(make_app, stat_server):
    app = make_app(ingest={'stat_url': stat_server.url})[1]
    stat_server.pollers.append(app.livestream.pollers['default'])
    return app


def test_hls_viewers_count_in_current_figures_peak_samples_and_stats(
        app, admin, hook, clock, interval, stat_server):
    from ingest_support import make_channel, publish, publish_done, sessions, update
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    stat_server.serve({'name': channel['id'], 'bw_in': 800000, 'bytes_in': 100000,
                       'viewers': 1})
    viewer_log = app.livestream.viewer_log
    for addr in ('127.0.0.2', '127.0.0.3', '127.0.0.4'):
        viewer_log.run_once(datagram('/hls/%s.m3u8' % channel['id'], addr=addr), clock())
    clock.advance(interval)
    assert update(hook, channel).status_int == 200

    current = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['current']
    assert (current['viewers'], current['viewersRtmp'], current['viewersHls']) == (4, 1, 3)
    assert admin.get('/v1/stats').json['data']['viewers'] == 4
    clock.advance(app.livestream.config['ingest']['viewer_window'])
    current = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['current']
    assert (current['viewers'], current['viewersRtmp'], current['viewersHls']) == (1, 1, 0)

    app.livestream.pollers['default'].poll_once()  # its reading in the window: still listed
    assert publish_done(hook, channel).status_int == 200
    session = sessions(admin, channel)['items'][0]
    assert session['peakViewers'] == 4
    samples = admin.get('/v1/channels/%s/sessions/%s' % (channel['id'], session['id'])
                        ).json['data']['samples']
    assert [(sample['viewers'], sample['viewersRtmp'], sample['viewersHls'])
            for sample in samples] == [(4, 1, 3), (1, 1, 0)]  # then its last figures


def test_serve_with_the_viewer_log_port_taken_warns_and_serves(tmp_path, spawn):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(('127.0.0.1', 0))
        port = taken.getsockname()[1]
        server = spawn(tmp_path / 'live.db',
                       LIVESTREAM_INGEST_VIEWER_LOG_PORT=str(port))
        assert Api(server.port).request('GET', '/v1/health')[0] == 200
        assert 'cannot listen for the HLS viewer log on udp 127.0.0.1:%d' % port \
            in server.stderr()
        assert 'serving without HLS viewer counts' in server.stderr()
