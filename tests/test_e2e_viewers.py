"""End to end: HLS viewers counted from nginx's syslog access log, with real nginx,
ffmpeg publishing and players reading HLS from distinct loopback addresses."""

import http.client
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from e2e_support import Stack, free_udp_port, kill_group, skip_or_fail_if_missing, wait_for
from test_e2e_nginx import key_of, new_channel, publish, wait_live

pytestmark = pytest.mark.e2e

#: Generous for a busy 2-core machine (the issue asks for 10 s).
COUNTED_SECONDS = 10
#: The stack's [ingest] viewer_window: short, so that the readers' leaving shows soon.
WINDOW = 8


class Relay(threading.Thread):
    """Receives nginx's datagrams on its own port and passes them on to the API's,
    keeping each, so a test can read what nginx sent."""

    def __init__(self, to_port):
        super().__init__(daemon=True)
        self.to_port, self.datagrams = to_port, []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.settimeout(0.2)
        self.port, self.stopping = self.sock.getsockname()[1], threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                datagram = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.datagrams.append(datagram)
            self.sock.sendto(datagram, ('127.0.0.1', self.to_port))


@pytest.fixture(scope='module')
def e2e():
    """A stack whose nginx sends its HLS access log through a Relay (stack.relay)."""
    skip_or_fail_if_missing()
    stack = Stack()
    api_port = free_udp_port()
    stack.env['LIVESTREAM_INGEST_VIEWER_LOG_PORT'] = str(api_port)
    stack.env['LIVESTREAM_INGEST_VIEWER_WINDOW'] = str(WINDOW)
    stack.relay = Relay(api_port)
    stack.relay.start()
    try:
        stack.start_api()
        stack.write_nginx_conf()
        conf = stack.prefix / 'nginx.conf'
        line = 'syslog:server=127.0.0.1:%d,' % api_port
        assert line in conf.read_text()
        conf.write_text(conf.read_text().replace(line, 'syslog:server=127.0.0.1:%d,'
                                                 % stack.relay.port))
        stack.start_nginx()
        yield stack
    finally:
        stack.relay.stopping.set()
        stack.stop()


class HlsReader(threading.Thread):
    """A player on `address`: the playlist and its newest segment every 2 s."""

    def __init__(self, hls_url, channel_id, address, user_agent):
        super().__init__(daemon=True)
        url = urllib.parse.urlsplit(hls_url)
        self.host, self.port, self.base = url.hostname, url.port, url.path
        self.channel_id, self.address, self.user_agent = channel_id, address, user_agent
        self.stopping, self.fetched = threading.Event(), 0

    def get(self, path):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=5,
                                                source_address=(self.address, 0))
        try:
            connection.request('GET', path, headers={'User-Agent': self.user_agent})
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()

    def run(self):
        while not self.stopping.is_set():
            try:
                status, playlist = self.get('%s/%s.m3u8' % (self.base, self.channel_id))
                segments = [line for line in playlist.decode().splitlines()
                            if line.endswith('.ts')]
                if status == 200 and segments:
                    self.get('%s/%s' % (self.base, segments[-1]))
                    self.fetched += 1
            except OSError:
                pass  # the playlist is not there yet
            self.stopping.wait(2)


def current(stack, channel):
    return stack.api.ok('GET', '/v1/channels/%s/stats' % channel['id'])['current']


def rtmp_reader(stack, channel):
    """ffmpeg playing the channel's RTMP playback URL, as an RTMP player does."""
    return subprocess.Popen(
        ['ffmpeg', '-hide_banner', '-nostdin', '-loglevel', 'error', '-i',
         channel['playback']['rtmp'], '-f', 'null', '-'],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def test_hls_and_rtmp_readers_are_counted_and_charted(e2e):
    channel = new_channel(e2e)
    key = key_of(channel)
    encoder = publish(e2e, channel)
    wait_live(e2e, channel, encoder)
    hls_url = channel['playback']['hls'].rsplit('/', 1)[0]
    readers = [HlsReader(hls_url, channel['id'], '127.0.0.%d' % number, 'Player/%d' % number)
               for number in (2, 3, 4)]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: all(reader.fetched for reader in readers), 30,
                 'the readers to fetch a segment')
        started = time.monotonic()
        wait_for(lambda: current(e2e, channel)['viewersHls'] == 3, COUNTED_SECONDS,
                 'three HLS viewers')
        print('counted after %.1f s' % (time.monotonic() - started))
        now = current(e2e, channel)
        assert now['viewers'] == now['viewersRtmp'] + 3
        player = rtmp_reader(e2e, channel)
        try:
            wait_for(lambda: current(e2e, channel)['viewersRtmp'] == 1, 20, 'an RTMP viewer')
            assert current(e2e, channel)['viewers'] == 4
            # One update_publish samples the four (peakViewers is taken from samples).
            wait_for(lambda: e2e.api.ok('GET', '/v1/channels/%s/sessions' % channel['id'])
                     ['items'][0]['peakViewers'] == 4, 30, 'a sample of four viewers')
        finally:
            kill_group(player, signal.SIGTERM)
    finally:
        for reader in readers:
            reader.stopping.set()
        for reader in readers:
            reader.join(10)
    started = time.monotonic()
    # The bound is WINDOW + 5 s; 10 s more for a loaded box (measured: ~8 s).
    wait_for(lambda: current(e2e, channel)['viewers'] == 0, WINDOW + 5 + 10,
             'the viewers to leave')
    print('gone after %.1f s' % (time.monotonic() - started))
    e2e.stop_encoders()
    wait_for(lambda: e2e.api.ok('GET', '/v1/channels/' + channel['id'])['status'] == 'idle',
             30, 'the channel to go idle')
    session = e2e.api.ok('GET', '/v1/channels/%s/sessions' % channel['id'])['items'][0]
    assert session['peakViewers'] == 4
    charted = e2e.api.ok('GET', '/v1/channels/%s/sessions/%s?points=50'
                         % (channel['id'], session['id']))
    assert 0 < len(charted['samples']) <= 50
    assert any(sample['bitrateKbps'] for sample in charted['samples'])
    assert max(sample['viewersHls'] for sample in charted['samples']) >= 3
    views = [datagram for datagram in e2e.relay.datagrams
             if b'/hls/%s' % channel['id'].encode() in datagram]
    assert views and all(b'Player/' in datagram for datagram in views)
    assert not any(key.encode() in datagram for datagram in e2e.relay.datagrams)
