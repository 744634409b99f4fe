"""Benchmark livestream-api against the fastest this stack can go (issue 8).

    python bench/run.py [--duration 5] [--connections 16] [--threads 8] [--runs 3]
                        [--scale] [--profile] [--only get_channel,list] [--out results.json]

Starts, as subprocesses, the real server (`python -m livestream_api serve` on a
seeded file database under waitress) and the ceiling (bench/ceiling.py: a bare
Bottle app on waitress with the same thread count, answering a constant JSON
envelope), and drives both with wrk (bench/wrk.lua) at the same concurrency. For
every endpoint and run it measures the ceiling, then the endpoint, back to back,
and reports medians over the runs: requests/s, p50, p99, and the ratio of the
ceiling's requests/s measured in the same pair (absolute numbers drift on a
shared machine; ratios are what we compare).

Then the references: the ceiling app doing one SQLite operation per request
(bench/ceiling.py --work: a point read; a durable INSERT under a write lock, and
two ways without one), each paired with the ceiling like an endpoint and shown
next to the endpoint it is the floor of (GET /v1/channels/{id}, POST /v1/channels).

wrk repeats the same request, so reads the server caches (a channel, a page of
channels) measure cache hits; list_uncached requests UNCACHED_PAGES distinct pages
round-robin, more than the cache holds, so each of its requests runs its SQL.

--scale  also seeds 100k channels across 10k users with 1M sessions (bulk SQL,
         bench/seed.py) and repeats the read measurements, each as a slowdown
         against its figure at 1k channels, and the server's peak RSS (VmHWM).
--profile afterwards runs each endpoint that missed its target (or every one in
         --only) against the server under cProfile (bench/profiled_server.py,
         per worker thread; --profile-threads 1 by default, --profile-timer wall
         or cpu) and writes <workdir>/profile-<1k|scale>-<endpoint>-<timer>.{prof,txt}.
"""

import argparse
import base64
import json
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import seed as seeding  # noqa: E402
import livestream_api  # noqa: E402

HOOK_SECRET = 'bench-hook-secret'
ADMIN = ('bench-admin', 'bench-admin-secret-0123456789abcdef')
UNLIMITED = {'limits': {'maxChannels': None, 'maxLiveChannels': None,
                        'maxBitrateKbps': None, 'maxSessionSeconds': None}}
CREATOR_USER = 'creator'
BASE = {'channels': 1000, 'users': 100, 'sessions': 10000}
SCALE = {'channels': 100000, 'users': 10000, 'sessions': 1000000}
TARGET_SCALE_SLOWDOWN = 1.5
TARGET_RSS_MB = 80


# Endpoints ####################################################################

class Endpoint:
    """One thing to measure: the request wrk repeats, what a good answer is, the target."""

    def __init__(self, name, label, method, paths, expect, target=None, body=None,
                 ctype=None, auth=None, read=True, p99_factor=None):
        self.name, self.label, self.method, self.paths = name, label, method, paths
        self.expect, self.target, self.body, self.ctype = expect, target, body, ctype
        self.auth, self.read, self.p99_factor = auth, read, p99_factor

    def wrk_env(self):
        return {'BENCH_METHOD': self.method, 'BENCH_PATHS': '|'.join(self.paths),
                'BENCH_BODY': self.body or '', 'BENCH_CTYPE': self.ctype or '',
                'BENCH_AUTH': self.auth or ''}


def basic(token_id, secret):
    return 'Basic ' + base64.b64encode(('%s:%s' % (token_id, secret)).encode()).decode()


def hook_form(call, live):
    """An nginx-rtmp notify call as nginx sends it (the stream's ?key= among the fields)."""
    return urllib.parse.urlencode([
        ('app', 'live'), ('flashver', 'FMLE/3.0 (compatible; FMSc/1.0)'), ('swfurl', ''),
        ('tcurl', 'rtmp://127.0.0.1:1935/live'), ('pageurl', ''), ('addr', '127.0.0.1'),
        ('clientid', '42'), ('call', call), ('time', '20'), ('timestamp', '20000'),
        ('name', live['id']), ('type', 'live'), ('key', live['key'])])


ENDPOINT_NAMES = ('health', 'get_channel', 'list', 'list_uncached', 'list_q', 'channel_stats',
                  'stats', 'create', 'hook', 'hook_webhook')
#: More distinct pages than the server's read cache holds (1,024 entries), requested
#: round-robin: every request of list_uncached misses the cache.
UNCACHED_PAGES = 1500


def endpoints(info):
    app = basic(*info['app'])
    live = info['live']
    hook_path = '/v1/hooks/nginx-rtmp?secret=%s' % HOOK_SECRET
    return [
        Endpoint('health', 'GET /v1/health', 'GET', ['/v1/health'], 200),
        Endpoint('get_channel', 'GET /v1/channels/{id}', 'GET',
                 ['/v1/channels/%s' % cid for cid in info['sample_ids']], 200, 0.70, auth=app),
        Endpoint('list', 'GET /v1/channels?limit=20', 'GET', ['/v1/channels?limit=20'], 200,
                 0.45, auth=app),
        Endpoint('list_uncached', 'GET /v1/channels?limit=20&cursor=... (uncached)', 'GET',
                 ['/v1/channels?limit=20&cursor=%s' % livestream_api.next_cursor(after)
                  for after in range(30, 30 + UNCACHED_PAGES)], 200, auth=app),
        Endpoint('list_q', 'GET /v1/channels?q=%s' % info['q'], 'GET',
                 ['/v1/channels?q=%s' % info['q']], 200, 0.45, auth=app),
        Endpoint('channel_stats', 'GET /v1/channels/{id}/stats', 'GET',
                 ['/v1/channels/%s/stats' % live['id']], 200, auth=app),
        Endpoint('stats', 'GET /v1/stats', 'GET', ['/v1/stats'], 200, auth=app),
        Endpoint('create', 'POST /v1/channels', 'POST', ['/v1/channels'], 201, 0.35,
                 body=json.dumps({'userId': CREATOR_USER, 'name': 'Bench created'}),
                 ctype='application/json', auth=basic(*info['creator']), read=False),
        Endpoint('hook', 'POST hook update_publish', 'POST', [hook_path], 200, 0.60,
                 body=hook_form('update_publish', live),
                 ctype='application/x-www-form-urlencoded', read=False, p99_factor=2.0),
        # The same, while the webhook worker is stuck on an endpoint that hangs, with a
        # backlog of events for it (hanging_webhook()): it must cost the hook nothing.
        Endpoint('hook_webhook', 'POST hook update_publish, webhook hanging', 'POST',
                 [hook_path], 200, 0.60, body=hook_form('update_publish', live),
                 ctype='application/x-www-form-urlencoded', read=False, p99_factor=2.0),
    ]


#: Seconds the hanging webhook endpoint holds each delivery (the API gives up at 5).
HANG_SECONDS = 10
#: Events queued for it before each measurement.
WEBHOOK_BACKLOG = 100


class HangingEndpoint:
    """A webhook receiver in this process that holds every POST for HANG_SECONDS."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                time.sleep(HANG_SECONDS)
                self.send_response(200)
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = 'http://127.0.0.1:%d/events' % self.httpd.server_port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


_HANGING = []


def hanging_webhook(server, info, on):
    """Register (on) the app client's webhook at the hanging endpoint and queue
    WEBHOOK_BACKLOG events for it (renames), or delete it (its deliveries fail)."""
    app = basic(*info['app'])
    if not on:
        request(server.port, 'DELETE', '/v1/webhook', auth=app)
        return
    if not _HANGING:
        _HANGING.append(HangingEndpoint())
    answer = request(server.port, 'PUT', '/v1/webhook', json.dumps({'url': _HANGING[0].url}),
                     'application/json', app)
    if answer[0] not in (200, 201):
        raise RuntimeError('PUT /v1/webhook: %r' % (answer,))
    for n in range(WEBHOOK_BACKLOG):
        expect('rename (an event)', request(
            server.port, 'PATCH', '/v1/channels/%s' % info['sample_ids'][0],
            json.dumps({'name': 'renamed %d' % n}), 'application/json', app), 200)


# Processes ####################################################################

def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def request(port, method, path, body=None, ctype=None, auth=None, timeout=10):
    """(status, parsed JSON body or None)."""
    headers = {}
    if auth:
        headers['Authorization'] = auth
    if ctype:
        headers['Content-Type'] = ctype
    req = urllib.request.Request('http://127.0.0.1:%d%s' % (port, path), method=method,
                                 data=body.encode() if body is not None else None,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


class Process:
    """A server subprocess with its output in a log file; stopped with SIGTERM."""

    def __init__(self, name, argv, env, log_path, port):
        self.name, self.port, self.log_path = name, port, log_path
        self.log = open(log_path, 'wb')
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, path, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('%s exited with %s:\n%s' % (self.name, self.proc.returncode,
                                                              self.tail()))
            try:
                if request(self.port, 'GET', path, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError('%s not ready after %ds:\n%s' % (self.name, timeout, self.tail()))

    def alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError('%s died (exit %s):\n%s' % (self.name, self.proc.returncode,
                                                           self.tail()))

    def peak_rss_mb(self):
        """VmHWM: the most resident memory the process has had, in MiB."""
        with open('/proc/%d/status' % self.proc.pid) as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
        return None

    def tail(self, lines=30):
        self.log.flush()
        with open(self.log_path, 'rb') as log:
            return b''.join(log.readlines()[-lines:]).decode('utf-8', 'replace')

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def server_env(threads):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('LIVESTREAM_', 'LIVE_'))}
    env.update({
        'LIVE_TOKEN_ID': ADMIN[0], 'LIVE_TOKEN_SECRET': ADMIN[1],
        'LIVESTREAM_INGEST_STAT_URL': '',  # no stat fetch: nothing to fetch it from here
        'LIVESTREAM_INGEST_CONTROL_URL': '',  # and no nginx to kick publishers at
        'LIVESTREAM_INGEST_HOOK_SECRET': HOOK_SECRET,
        'LIVESTREAM_SERVER_THREADS': str(threads),
        # Hooks are measured on the API's port; no second listener, whose port
        # (the API's + 1) another process may hold.
        'LIVESTREAM_SERVER_HOOK_LISTEN': '',
        # A session is stale after 3 update intervals without a hook call; the live
        # session must not be reaped while other endpoints are being measured.
        'LIVESTREAM_INGEST_UPDATE_INTERVAL': '3600',
    })
    return env


def start_server(db, threads, workdir, tag, profile_out=None, profile_timer='wall'):
    port = free_port()
    env = server_env(threads)
    if profile_out:
        env['BENCH_PROFILE_OUT'] = profile_out
        env['BENCH_PROFILE_TIMER'] = profile_timer
        argv = [sys.executable, os.path.join(HERE, 'profiled_server.py')]
    else:
        argv = [sys.executable, '-m', 'livestream_api']
    argv += ['serve', '--db', db, '--port', str(port)]
    server = Process('server (%s)' % tag, argv, env,
                     os.path.join(workdir, 'server-%s.log' % tag), port)
    server.wait_ready('/v1/health')
    return server


def start_ceiling(threads, workdir, work='none'):
    """The ceiling, or with `work` one of its references (bench/ceiling.py --work)."""
    port = free_port()
    name = 'ceiling' if work == 'none' else 'reference-%s' % work
    argv = [sys.executable, os.path.join(HERE, 'ceiling.py'), '--port', str(port),
            '--threads', str(threads), '--work', work]
    if work != 'none':
        argv += ['--db', os.path.join(workdir, '%s.db' % name)]
    ceiling = Process(name, argv, dict(os.environ), os.path.join(workdir, '%s.log' % name),
                      port)
    ceiling.wait_ready('/v1/health')
    return ceiling


def expect(what, answer, status):
    got, body = answer
    if got != status or not isinstance(body, dict) or body.get('ec') != 0:
        raise RuntimeError('%s: expected %d with ec 0, got %d %r' % (what, status, got, body))
    return body['data']


def prepare(server, info):
    """Through the API: unlimited users for the live channel and the creator, then
    the live channel goes live through the publish hook."""
    live = info['live']
    expect('PUT live user limits', request(
        server.port, 'PUT', '/v1/users/%s' % live['user_id'], json.dumps(UNLIMITED),
        'application/json', basic(*info['app'])), 200)
    answer = request(server.port, 'PUT', '/v1/users/%s' % CREATOR_USER, json.dumps(UNLIMITED),
                     'application/json', basic(*info['creator']))
    if answer[0] != 200:
        expect('PUT creator user', answer, 201)
    hook = '/v1/hooks/nginx-rtmp?secret=%s' % HOOK_SECRET
    expect('publish hook', request(server.port, 'POST', hook, hook_form('publish', live),
                                   'application/x-www-form-urlencoded'), 200)
    check_live(server, info)


def check_live(server, info):
    """The live channel is live, and one update_publish is allowed (kept fresh)."""
    live = info['live']
    hook = '/v1/hooks/nginx-rtmp?secret=%s' % HOOK_SECRET
    expect('update_publish hook', request(
        server.port, 'POST', hook, hook_form('update_publish', live),
        'application/x-www-form-urlencoded'), 200)
    stats = expect('channel stats', request(server.port, 'GET', '/v1/channels/%s/stats'
                                            % live['id'], auth=basic(*info['app'])), 200)
    if stats['status'] != 'live' or not stats['current']:
        raise RuntimeError('the live channel is not live: %r' % stats)
    return stats['current']['sessionId']


# Load #########################################################################

def wrk(port, endpoint, args, duration=None):
    env = dict(os.environ, **endpoint.wrk_env())
    argv = ['wrk', '-t%d' % args.wrk_threads, '-c%d' % args.connections,
            '-d%ss' % (duration or args.duration), '--timeout', '10s',
            '-s', os.path.join(HERE, 'wrk.lua'), 'http://127.0.0.1:%d' % port]
    done = subprocess.run(argv, env=env, capture_output=True, text=True,
                          timeout=(duration or args.duration) + 60)
    match = re.search(r'^BENCH_JSON (.*)$', done.stdout, re.M)
    if done.returncode != 0 or not match:
        raise RuntimeError('wrk failed (%d):\n%s\n%s' % (done.returncode, done.stdout,
                                                         done.stderr))
    result = json.loads(match.group(1))
    result['rps'] = result['requests'] / (result['duration_us'] / 1e6)
    result['error_count'] = sum(result['errors'].values())
    return result


def measure(endpoint, server, ceiling, info, args):
    """One pair: the ceiling with the same request, then the endpoint."""
    expect('%s (before measuring)' % endpoint.label, request(
        server.port, endpoint.method, endpoint.paths[0], endpoint.body, endpoint.ctype,
        endpoint.auth), endpoint.expect)
    if endpoint.name in ('hook', 'hook_webhook', 'channel_stats'):
        session = check_live(server, info)
    if endpoint.name == 'hook_webhook':
        hanging_webhook(server, info, on=True)
    try:
        ceiling_result = wrk(ceiling.port, endpoint, args)
        result = wrk(server.port, endpoint, args)
    finally:
        if endpoint.name == 'hook_webhook':
            hanging_webhook(server, info, on=False)
    server.alive()
    if endpoint.name in ('hook', 'hook_webhook', 'channel_stats') and \
            check_live(server, info) != session:
        raise RuntimeError('%s ended or replaced the live session' % endpoint.label)
    return pair(ceiling_result, result)


def pair(ceiling_result, result):
    return {'ceiling': ceiling_result, 'server': result,
            'ratio': result['rps'] / ceiling_result['rps'],
            'p99_factor': result['p99_us'] / max(1, ceiling_result['p99_us'])}


def summarize(pairs):
    med = statistics.median
    return {
        'rps': med(p['server']['rps'] for p in pairs),
        'p50_ms': med(p['server']['p50_us'] for p in pairs) / 1000,
        'p99_ms': med(p['server']['p99_us'] for p in pairs) / 1000,
        'ceiling_rps': med(p['ceiling']['rps'] for p in pairs),
        'ceiling_p99_ms': med(p['ceiling']['p99_us'] for p in pairs) / 1000,
        'ratio': med(p['ratio'] for p in pairs),
        'ratios': [round(p['ratio'], 3) for p in pairs],
        'p99_factor': med(p['p99_factor'] for p in pairs),
        'errors': sum(p['server']['error_count'] for p in pairs),
        'ceiling_errors': sum(p['ceiling']['error_count'] for p in pairs),
    }


def bench(label, todo, server, ceiling, info, args):
    """Every endpoint in `todo`, --runs times, each run a (ceiling, endpoint) pair per
    endpoint; returns {name: summary}."""
    wrk(server.port, todo[0], args, duration=1)  # warm up: threads, connections, caches
    wrk(ceiling.port, todo[0], args, duration=1)
    pairs = {endpoint.name: [] for endpoint in todo}
    for run in range(args.runs):
        for endpoint in todo:
            measured = measure(endpoint, server, ceiling, info, args)
            pairs[endpoint.name].append(measured)
            print('  [%s run %d/%d] %-30s %7.0f req/s  ceiling %7.0f  ratio %.2f%s'
                  % (label, run + 1, args.runs, endpoint.label, measured['server']['rps'],
                     measured['ceiling']['rps'], measured['ratio'],
                     '  ERRORS %r' % measured['server']['errors']
                     if measured['server']['error_count'] else ''), flush=True)
    return {name: dict(summarize(found), raw=found) for name, found in pairs.items()}


#: The references (bench/ceiling.py --work): the bare app doing one SQLite
#: operation per request, each measured with the request of the endpoint it is
#: the floor of.
REFERENCES = (
    ('read', 'get_channel', 'one SQLite point read'),
    ('insert', 'create', 'one durable INSERT under a write lock'),
    ('insert-unlocked', 'create', 'one durable INSERT, no lock (SQLite busy waits)'),
    ('insert-polled', 'create', "one durable INSERT, no lock, SQLite's lock polled"),
)


def references(todo, ceiling, args):
    """Each reference whose endpoint is in `todo`, --runs (ceiling, reference) pairs;
    returns {work: summary}."""
    chosen = {endpoint.name: endpoint for endpoint in todo}
    results = {}
    for work, name, label in REFERENCES:
        if name not in chosen:
            continue
        endpoint = chosen[name]
        reference = start_ceiling(args.threads, args.workdir, work)
        try:
            wrk(reference.port, endpoint, args, duration=1)  # warm up
            pairs = []
            for run in range(args.runs):
                ceiling_result = wrk(ceiling.port, endpoint, args)
                result = wrk(reference.port, endpoint, args)
                reference.alive()
                pairs.append(pair(ceiling_result, result))
                print('  [reference run %d/%d] %-44s %7.0f req/s  ceiling %7.0f  ratio %.2f'
                      % (run + 1, args.runs, label, result['rps'], ceiling_result['rps'],
                         pairs[-1]['ratio']), flush=True)
        finally:
            reference.stop()
        results[work] = dict(summarize(pairs), raw=pairs, label=label, endpoint=name)
    return results


# Report #######################################################################

def verdict(ok):
    return 'pass' if ok else '**FAIL**'


def judge(endpoint, summary):
    """(target text, pass/fail text) for one endpoint at 1k."""
    if summary['errors']:
        return 'no errors', '**FAIL** (%d errors)' % summary['errors']
    if endpoint.target is None:
        return '-', '-'
    ok = summary['ratio'] >= endpoint.target
    text = '>= %.2f' % endpoint.target
    if endpoint.p99_factor:
        text += ', p99 <= %gx ceiling' % endpoint.p99_factor
        ok = ok and summary['p99_factor'] <= endpoint.p99_factor
    return text, verdict(ok)


def table(todo, results):
    lines = ['| endpoint | req/s | p50 ms | p99 ms | ceiling req/s | ceiling p99 ms '
             '| ratio | target | result |', '|---|---:|---:|---:|---:|---:|---:|---|---|']
    for endpoint in todo:
        s = results[endpoint.name]
        target, result = judge(endpoint, s)
        lines.append('| `%s` | %.0f | %.2f | %.2f | %.0f | %.2f | %.2f | %s | %s |' % (
            endpoint.label, s['rps'], s['p50_ms'], s['p99_ms'], s['ceiling_rps'],
            s['ceiling_p99_ms'], s['ratio'], target, result))
    return '\n'.join(lines)


def reference_table(todo, base, found):
    labels = {endpoint.name: endpoint.label for endpoint in todo}
    lines = ['| reference: the ceiling app doing | req/s | p50 ms | p99 ms | ceiling req/s '
             '| ratio | ratios | the endpoint | its ratio |',
             '|---|---:|---:|---:|---:|---:|---|---|---:|']
    for work, name, label in REFERENCES:
        if work in found:
            r = found[work]
            lines.append('| %s | %.0f | %.2f | %.2f | %.0f | %.2f | %s | `%s` | %.2f |' % (
                label, r['rps'], r['p50_ms'], r['p99_ms'], r['ceiling_rps'], r['ratio'],
                ' '.join('%.2f' % ratio for ratio in r['ratios']), labels[name],
                base[name]['ratio']))
    return '\n'.join(lines)


def scale_table(todo, base, scaled, big):
    lines = ['| endpoint | req/s @1k | req/s @{0} | ratio @1k | ratio @{0} | slowdown '
             '| p50 ms @{0} | p99 ms @{0} | target | result |'.format(big),
             '|---|---:|---:|---:|---:|---:|---:|---:|---|---|']
    for endpoint in todo:
        b, s = base[endpoint.name], scaled[endpoint.name]
        slowdown = b['ratio'] / s['ratio'] if s['ratio'] else float('inf')
        s['slowdown'] = slowdown
        result = verdict(slowdown <= TARGET_SCALE_SLOWDOWN and not s['errors'])
        if s['errors']:
            result += ' (%d errors)' % s['errors']
        lines.append('| `%s` | %.0f | %.0f | %.2f | %.2f | %.2fx | %.2f | %.2f | <= %.1fx | %s |'
                     % (endpoint.label, b['rps'], s['rps'], b['ratio'], s['ratio'], slowdown,
                        s['p50_ms'], s['p99_ms'], TARGET_SCALE_SLOWDOWN, result))
    return '\n'.join(lines)


def filesystem_of(path):
    best, kind = '', '?'
    with open('/proc/mounts') as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            if path.startswith(point) and len(point) > len(best):
                best, kind = point, fstype
    return kind


def machine(workdir):
    model = '?'
    with open('/proc/cpuinfo') as cpuinfo:
        for line in cpuinfo:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    import bottle
    from importlib.metadata import version
    wrk_version = subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split()
    return {
        'cores': os.cpu_count(), 'cpu': model, 'python': platform.python_version(),
        'sqlite': sqlite3.sqlite_version, 'bottle': bottle.__version__,
        'waitress': version('waitress'), 'wrk': wrk_version[1] if len(wrk_version) > 1 else '?',
        'kernel': platform.release(), 'db_filesystem': filesystem_of(workdir),
        'loadavg_at_start': os.getloadavg(),
    }


# Profiling ####################################################################

def profile(todo, db, info, args, tag):
    """Each endpoint under cProfile in a server of its own; top costs to text files."""
    import pstats
    written = []
    for endpoint in todo:
        out = os.path.join(args.workdir, 'profile-%s-%s-%s.prof'
                           % (tag, endpoint.name, args.profile_timer))
        server = start_server(db, args.profile_threads, args.workdir, 'profile-%s-%s'
                              % (tag, endpoint.name), profile_out=out,
                              profile_timer=args.profile_timer)
        try:
            prepare(server, info)
            result = wrk(server.port, endpoint, args)
        finally:
            server.stop()
        if not os.path.exists(out):
            print('  no profile written for %s; see %s' % (endpoint.label, server.log_path))
            continue
        text_path = out[:-5] + '.txt'
        with open(text_path, 'w') as text:
            text.write('%s: %d requests in %.1fs under cProfile (%.0f req/s; profiled, so '
                       'slow), %d waitress thread(s), %d connections; %s time summed over '
                       'the worker threads\n'
                       % (endpoint.label, result['requests'], result['duration_us'] / 1e6,
                          result['rps'], args.profile_threads, args.connections,
                          'CPU' if args.profile_timer == 'cpu' else 'wall-clock'))
            for order in ('tottime', 'cumulative'):
                text.write('\n==== by %s ====\n' % order)
                stats = pstats.Stats(out, stream=text)
                stats.strip_dirs().sort_stats(order).print_stats(30)
        written.append(text_path)
        print('  profiled %-30s -> %s' % (endpoint.label, text_path), flush=True)
    return written


# Main #########################################################################

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=5,
                        help='seconds of load per measurement (default 5)')
    parser.add_argument('--connections', type=int, default=16)
    parser.add_argument('--threads', type=int,
                        default=int(livestream_api.CONFIG_KEYS['server']['threads'][1]),
                        help='waitress threads of both servers (default: the server default)')
    parser.add_argument('--runs', type=int, default=3, help='paired runs; medians are reported')
    parser.add_argument('--scale', action='store_true',
                        help='also measure the reads at 100k channels / 10k users / 1M sessions')
    parser.add_argument('--profile', action='store_true',
                        help='then profile the endpoints that missed their target')
    parser.add_argument('--only', help='comma-separated endpoint names (%s)'
                        % ', '.join(ENDPOINT_NAMES))
    parser.add_argument('--profile-threads', type=int, default=1,
                        help='waitress threads of the profiled server (default 1: each '
                        "request's own costs, not time spent waiting for the GIL)")
    parser.add_argument('--profile-timer', choices=('wall', 'cpu'), default='wall',
                        help='wall: times include waiting (GIL, locks, fsync); cpu: each '
                        "thread's CPU time only")
    parser.add_argument('--wrk-threads', type=int, default=1)
    parser.add_argument('--workdir', help='where databases and logs go (default: a new temp dir)')
    parser.add_argument('--out', help='write every measurement as JSON here')
    parser.add_argument('--scale-channels', type=int, default=SCALE['channels'],
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix='livestream-bench-'))
    os.makedirs(args.workdir, exist_ok=True)
    if args.duration < 1 or args.duration != int(args.duration):
        parser.error('--duration must be a whole number of seconds >= 1')
    args.duration = int(args.duration)

    started = time.monotonic()
    report = {'machine': machine(args.workdir), 'args': {
        k: v for k, v in vars(args).items()}, 'results': {}}
    print('# livestream-api benchmark\n')
    m = report['machine']
    print('Machine: %d cores (%s), Python %s, SQLite %s, bottle %s, waitress %s, wrk %s; '
          'database on %s; load average at start %.2f. wrk: %d connections, %d thread(s), '
          '%ds per measurement, %d paired runs; waitress threads %d. Workdir %s\n'
          % (m['cores'], m['cpu'], m['python'], m['sqlite'], m['bottle'], m['waitress'],
             m['wrk'], m['db_filesystem'], m['loadavg_at_start'][0], args.connections,
             args.wrk_threads, args.duration, args.runs, args.threads, args.workdir),
          flush=True)

    base_db = os.path.join(args.workdir, 'bench-1k.db')
    info = seeding.seed(base_db, **BASE)
    print('seeded %(channels)d channels, %(users)d users, %(sessions)d sessions in %(seconds)ss'
          % info, flush=True)
    todo = endpoints(info)
    if args.only:
        names = args.only.split(',')
        unknown = set(names) - {e.name for e in todo}
        if unknown:
            parser.error('unknown endpoint(s): %s' % ', '.join(sorted(unknown)))
        todo = [e for e in todo if e.name in names]

    ceiling = start_ceiling(args.threads, args.workdir)
    scale_info = None
    try:
        server = start_server(base_db, args.threads, args.workdir, '1k')
        try:
            prepare(server, info)
            base = bench('1k', todo, server, ceiling, info, args)
            report['results']['1k'] = base
            report['results']['1k_peak_rss_mb'] = server.peak_rss_mb()
        finally:
            server.stop()
        problems = seeding.check_counters(base_db)
        report['results']['1k_counter_problems'] = problems
        print('\n## At %d channels (medians of %d paired runs)\n' % (BASE['channels'],
                                                                      args.runs))
        print(table(todo, base))
        if 'hook' in base and 'hook_webhook' in base:
            print('\nupdate_publish with a webhook endpoint that hangs, against without: '
                  'ratio %.2f / %.2f = %.2f (target >= 0.90)' % (
                      base['hook_webhook']['ratio'], base['hook']['ratio'],
                      base['hook_webhook']['ratio'] / base['hook']['ratio']))
        print('\nPeak RSS of the server: %.1f MB. Counters after the load (creates, hooks): %s'
              % (report['results']['1k_peak_rss_mb'],
                 'consistent' if not problems else '**WRONG**: ' + '; '.join(problems)),
              flush=True)

        found = references(todo, ceiling, args)
        report['results']['references'] = found
        if found:
            print('\n## References: what one SQLite operation costs this stack '
                  '(bench/ceiling.py --work)\n')
            print(reference_table(todo, base, found), flush=True)

        if args.scale and not any(e.read for e in todo):
            print('\n(--scale repeats the reads; none were chosen with --only)')
        elif args.scale:
            sizes = dict(SCALE, channels=args.scale_channels)
            sizes['users'] = min(sizes['users'], sizes['channels'])
            sizes['sessions'] = sizes['channels'] * SCALE['sessions'] // SCALE['channels']
            scale_db = os.path.join(args.workdir, 'bench-scale.db')
            print('\nseeding %(channels)d channels, %(users)d users, %(sessions)d sessions...'
                  % sizes, flush=True)
            scale_info = seeding.seed(scale_db, **sizes)
            print('seeded in %(seconds)ss' % scale_info, flush=True)
            scale_todo = [e for e in endpoints(scale_info) if e.read
                          and e.name in {t.name for t in todo}]
            server = start_server(scale_db, args.threads, args.workdir, 'scale')
            try:
                prepare(server, scale_info)
                scaled = bench('scale', scale_todo, server, ceiling, scale_info, args)
                rss = server.peak_rss_mb()
            finally:
                server.stop()
            report['results']['scale'] = scaled
            report['results']['scale_peak_rss_mb'] = rss
            big = '%dk' % (sizes['channels'] // 1000)
            print('\n## At %d channels / %d users / %d sessions, against 1k '
                  '(slowdown = ratio @1k / ratio @%s)\n' % (sizes['channels'], sizes['users'],
                                                            sizes['sessions'], big))
            print(scale_table(scale_todo, base, scaled, big))
            print('\nPeak RSS (VmHWM) of the server under load at %d channels: %.1f MB '
                  '(target < %d MB): %s' % (sizes['channels'], rss, TARGET_RSS_MB,
                                            verdict(rss < TARGET_RSS_MB)))
    finally:
        ceiling.stop()

    if args.profile:
        missed = [e for e in todo if 'FAIL' in judge(e, base[e.name])[1]]
        chosen = todo if args.only else missed
        print('\n## Profiles (cProfile per worker thread) of: %s\n'
              % (', '.join(e.name for e in chosen) or 'nothing missed its target'))
        report['profiles'] = profile(chosen, base_db, info, args, '1k')
        if args.scale and scale_info:
            scaled_missed = [e for e in endpoints(scale_info) if e.name in report['results'][
                'scale'] and report['results']['scale'][e.name].get('slowdown', 0)
                > TARGET_SCALE_SLOWDOWN]
            report['profiles'] += profile(scaled_missed, scale_db, scale_info, args, 'scale')

    report['machine']['loadavg_at_end'] = os.getloadavg()
    print('\nCeiling: bench/ceiling.py, a bare Bottle app on waitress (%d threads) returning a '
          'constant JSON envelope for every path; ratio = endpoint req/s / ceiling req/s in '
          'the same pair. Load average at end %.2f. Total time %.0fs.'
          % (args.threads, report['machine']['loadavg_at_end'][0], time.monotonic() - started))
    if args.out:
        with open(args.out, 'w') as out:
            json.dump(report, out, indent=1, default=str)
        print('Wrote %s' % args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
