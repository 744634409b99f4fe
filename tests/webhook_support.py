"""A real webhook receiver (stdlib http.server on a free loopback port, in a thread)
and an independent check of the signatures it gets."""

import hashlib
import hmac
import http.server
import json
import threading
import time


class Receiver:
    """Records every POST (headers, raw body) and answers from `answers` (a list of
    statuses used up in order, then 200); with `hang` set, holds each request until
    release() or close()."""

    def __init__(self, port=0):
        self.requests = []
        self.arrived_at = []  # time.monotonic() of each request's arrival
        self.answers = []
        self.hang = False
        self.released = threading.Event()
        self.arrived = threading.Condition()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                with server.arrived:
                    server.requests.append((dict(self.headers), body))
                    server.arrived_at.append(time.monotonic())
                    server.arrived.notify_all()
                if server.hang:
                    server.released.wait(30)
                status = server.answers.pop(0) if server.answers else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header('Location', server.url + '/elsewhere')
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', port), Handler)
        self.httpd.daemon_threads = True
        self.url = 'http://127.0.0.1:%d/hook' % self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={'poll_interval': 0.01})
        self.thread.start()

    @property
    def events(self):
        """The bodies received, parsed, in order of arrival."""
        return [json.loads(body) for _, body in self.requests]

    @property
    def types(self):
        return [event['type'] for event in self.events]

    def wait_for(self, count, timeout=10.0):
        """Wait until `count` requests have arrived; the bodies received."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.requests) < count and time.monotonic() < deadline:
                self.arrived.wait(deadline - time.monotonic())
        return self.events

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def signatures(header):
    """(t, [v1 hex digests]) of an X-Livestream-Signature header."""
    parts = [part.split('=', 1) for part in header.split(',')]
    assert parts[0][0] == 't'
    assert all(name == 'v1' for name, _ in parts[1:])
    return int(parts[0][1]), [value for _, value in parts[1:]]


def verifies(secret, headers, body):
    """Whether the request carries a v1 signature made with `secret`, computed here as
    a receiver would: HMAC-SHA256 over "<t>.<raw body>" keyed by the secret's text."""
    timestamp, digests = signatures(headers['X-Livestream-Signature'])
    expected = hmac.new(secret.encode(), b'%d.' % timestamp + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, digest) for digest in digests)


def deliver(app):
    """Have the app's webhook worker attempt everything due now, until nothing is."""
    deliverer = app.livestream.deliverer
    while deliverer.deliver_due():
        deliverer.settle()
