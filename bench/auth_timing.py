"""Does a failed login tell an unknown token id from a wrong secret by its timing?

    python bench/auth_timing.py [--runs 7] [--pairs 2000] [--http]

Builds the app on a fresh database with one client, then sends pairs of failing
requests, one with an unknown token id and one with the client's token id and a
wrong secret (same lengths), in alternating order, and times each. Per run it
prints the median of (wrong secret - unknown id) over the pairs, in microseconds;
a sign that stays the same in every run is a difference an attacker can measure.
By default the requests go through the WSGI app in this process (the least
noise); --http sends them to a real waitress server over loopback, as an attacker
would. Not a test: the machine's noise would make any threshold flaky.
"""

import argparse
import base64
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import livestream_api  # noqa: E402


def basic(token_id, secret):
    return 'Basic ' + base64.b64encode(('%s:%s' % (token_id, secret)).encode()).decode()


def make_app(workdir):
    """The app on its own database, never holding an address (every request fails)."""
    config = livestream_api.load_config(environ={}, overrides={
        'database': {'path': os.path.join(workdir, 'timing.db')},
        'ingest': {'stat_url': ''}, 'auth': {'throttle_failures': str(2 ** 31)}})
    app = livestream_api.create_app(config)
    token_id, _ = livestream_api.new_token()
    app.livestream.store.create_client('timing', 'app', token_id,
                                       livestream_api.hash_secret('x' * 43), time.time())
    return app, token_id


def wsgi_sender(app):
    """A function sending one request with `header` through the WSGI app."""
    def send(header, addr):
        environ = {'REQUEST_METHOD': 'GET', 'PATH_INFO': '/v1/stats', 'SERVER_NAME': 'x',
                   'SERVER_PORT': '80', 'wsgi.url_scheme': 'http', 'wsgi.input': None,
                   'REMOTE_ADDR': addr, 'HTTP_AUTHORIZATION': header}
        statuses = []
        b''.join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        assert statuses[0].startswith('401'), statuses
    return send


def http_sender(app):
    """A function sending one request with `header` to the app under waitress."""
    import waitress.server
    server = waitress.server.create_server(app, host='127.0.0.1', port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    conn = http.client.HTTPConnection('127.0.0.1', server.effective_port)

    def send(header, _addr):
        conn.request('GET', '/v1/stats', headers={'Authorization': header})
        response = conn.getresponse()
        response.read()
        assert response.status == 401, response.status
    return send


def run(send, token_id, pairs, run_number):
    """The median of (wrong secret - unknown id) in microseconds over `pairs` pairs."""
    differences = []
    for pair in range(pairs):
        unknown = basic(livestream_api.new_token()[0], 'y' * 43)
        wrong = basic(token_id, livestream_api.new_token()[1])
        # A fresh address per pair: no address's failure list grows over the run.
        addr = '10.%d.%d.%d' % (run_number, pair >> 8, pair & 255)
        timings = {}
        order = ('unknown', 'wrong') if pair % 2 else ('wrong', 'unknown')
        for kind in order:
            header = unknown if kind == 'unknown' else wrong
            started = time.perf_counter_ns()
            send(header, addr)
            timings[kind] = time.perf_counter_ns() - started
        differences.append((timings['wrong'] - timings['unknown']) / 1000)
    return statistics.median(differences)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=7)
    parser.add_argument('--pairs', type=int, default=2000)
    parser.add_argument('--http', action='store_true', help='through waitress over loopback')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        app, token_id = make_app(workdir)
        send = (http_sender if args.http else wsgi_sender)(app)
        for _ in range(200):  # warm the connection, the caches and the code paths
            send(basic(token_id, 'warm'), '10.255.0.1')
            send(basic('warm', 'warm'), '10.255.0.1')
        medians = [run(send, token_id, args.pairs, number) for number in range(args.runs)]
    print('wrong secret - unknown id, median per run (us): %s'
          % ' '.join('%+.2f' % median for median in medians))
    print('over the runs: median %+.2f us, %d of %d runs positive'
          % (statistics.median(medians), sum(m > 0 for m in medians), len(medians)))


if __name__ == '__main__':
    main()
