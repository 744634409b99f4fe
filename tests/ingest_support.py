"""Helpers shared by the hook, statistics and kick tests: nginx-rtmp /stat XML and
its control module, and an ingest's JSON API (SRS, MediaMTX), served by real local
HTTP servers, and nginx-shaped notify calls."""

import copy
import http.server
import json
import pathlib
import threading
import time
import urllib.parse
from xml.etree import ElementTree

#: nginx-rtmp 1.1.4's `rtmp_stat all` while ffmpeg published (one viewer, one
#: publisher); its stream is renamed per test by stat_xml().
STAT_SAMPLE = pathlib.Path(__file__).parent / 'data' / 'rtmp_stat.xml'


def stat_xml(*streams):
    """The captured /stat XML with one <stream> per dict: name, bw_in (bit/s),
    bytes_in, viewers, and nginx's own meta names under video / audio."""
    root = ElementTree.parse(STAT_SAMPLE).getroot()
    live = root.find('server/application/live')
    sample = live.find('stream')
    live.remove(sample)
    viewer = next(client for client in sample.findall('client')
                  if client.find('publishing') is None)
    sample.remove(viewer)
    for number, spec in enumerate(streams):
        stream = copy.deepcopy(sample)
        stream.find('name').text = spec['name']
        stream.find('bw_in').text = str(spec.get('bw_in', 0))
        stream.find('bytes_in').text = str(spec.get('bytes_in', 0))
        for index in range(spec.get('viewers', 0)):
            client = copy.deepcopy(viewer)
            client.find('id').text = str(100 * (number + 1) + index)
            stream.insert(list(stream).index(stream.find('client')), client)
        for part in ('video', 'audio'):
            for field, value in spec.get(part, {}).items():
                stream.find('meta/%s/%s' % (part, field)).text = str(value)
        stream.find('nclients').text = str(spec.get('viewers', 0) + 1)
        live.insert(list(live).index(live.find('nclients')), stream)
    live.find('nclients').text = str(sum(spec.get('viewers', 0) + 1 for spec in streams))
    return ElementTree.tostring(root, encoding='utf-8', xml_declaration=True)


class StatServer:
    """A real HTTP server on 127.0.0.1 answering GET /stat with the XML set by serve(),
    which the `pollers` (StatsPoller, added by the test) then read once, as their
    timer would: tests never wait for it."""

    def __init__(self):
        self.xml = stat_xml()
        self.pollers = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.xml if self.path == '/stat' else b'not found'
                self.send_response(200 if self.path == '/stat' else 404)
                self.send_header('Content-Type', 'text/xml')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d/stat' % self.httpd.server_port
        # shutdown() waits out serve_forever's poll interval (0.5 s by default) at
        # every close, and dozens of tests close one.
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={'poll_interval': 0.01})
        self.thread.start()

    def serve(self, *streams):
        self.xml = stat_xml(*streams)
        for poller in self.pollers:
            poller.poll_once()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class ControlServer:
    """A real HTTP server on 127.0.0.1 standing in for nginx-rtmp's control module:
    it records each GET (path and query) and answers "1" (one publisher dropped),
    or, with hang set, holds the request until closed."""

    def __init__(self):
        self.calls = []
        self.hang = False
        self.released = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.calls.append(self.path)
                if server.hang:
                    server.released.wait(30)
                    return
                self.send_response(200)
                self.send_header('Content-Type', 'text/plain')
                self.send_header('Content-Length', '1')
                self.end_headers()
                self.wfile.write(b'1')

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = 'http://127.0.0.1:%d/control' % self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def record(store, session_pk, now, metrics=None):
    """An update_publish's heartbeat (with figures, if given) on a session, written
    at once, as the heartbeat writer's pass does."""
    store.heartbeat(session_pk, now, metrics)
    store.flush_heartbeats()


def iso(timestamp):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(timestamp))


def make_channel(client, user_id='streamer', **limits):
    """A new channel of `user_id`, whose limits are first set to `limits` if any."""
    if limits:
        client.put_json('/v1/users/' + user_id, {'limits': limits})
    return client.post_json('/v1/channels', {'userId': user_id, 'name': 'my channel'}).json['data']


def stream_args(channel):
    """(name, key) as nginx-rtmp gets them when OBS publishes streamUrl/streamId."""
    name, args = channel['streamId'].split('?', 1)
    return name, urllib.parse.parse_qs(args)['key'][0]


def publish(hook, channel, clientid='1', key=None):
    name, right_key = stream_args(channel)
    return hook('publish', name, clientid=clientid, type='live',
                key=right_key if key is None else key)


def update(hook, channel, clientid='1'):
    name, key = stream_args(channel)
    return hook('update_publish', name, clientid=clientid, time='10', timestamp='10000', key=key)


def publish_done(hook, channel, clientid='1'):
    name, key = stream_args(channel)
    return hook('publish_done', name, clientid=clientid, key=key)


def get(client, channel):
    return client.get('/v1/channels/' + channel['id']).json['data']


def sessions(client, channel):
    return client.get('/v1/channels/%s/sessions' % channel['id']).json['data']


class JsonApi:
    """A real HTTP server on 127.0.0.1 standing in for an ingest's HTTP API (SRS's,
    MediaMTX's): it records each request as (method, path with query) and answers
    what answer(method, path) returns, a (status, JSON-able body) pair."""

    def __init__(self, answer):
        self.calls = []
        self.answer = answer
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                server.calls.append((self.command, self.path))
                status, body = server.answer(self.command, self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = 'http://127.0.0.1:%d' % self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={'poll_interval': 0.01})
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
