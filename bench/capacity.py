"""How many concurrent live streams one API process carries (issue 21).

    python bench/capacity.py [--steps 1000,2000,5000,10000,20000,40000] [--per-node 1000]
                             [--interval 10] [--hold 60] [--ramp SECONDS] [--connections 64]
                             [--keepalive] [--workdir DIR] [--out results.json]

For each step N (stopping at the first that fails), on a fresh file database:
- the real server (`python -m livestream_api serve`, hooks on their own listener)
  with N channels over N/10 users (each allowed 10 live channels) and one ingest
  node per --per-node streams: `[ingest]` is the first, `[ingest.n1]`... the rest;
- a child process (this file, `stat-nodes`) plays the nodes' `/stat`: one HTTP
  server per node serving nginx-rtmp's `rtmp_stat all` XML (the real capture in
  tests/data/rtmp_stat.xml, one <stream> per live stream) with byte counters that
  advance at 2,500 kbps; it also runs the App Server's webhook receiver and records
  each delivery's lag (its arrival minus the event's createdAt);
- this process drives, open loop on asyncio, what nginx-rtmp sends: `publish` for
  every stream (ramped over --ramp seconds), then `update_publish` every --interval
  per stream at its own phase (N / interval calls per second, spread evenly), each
  on a connection of its own, HTTP/1.0 with `Connection: Close`, as nginx-rtmp
  sends them (at most --connections at once; --keepalive: over that many
  keep-alive connections instead); and an App Server: GET
  /v1/channels?status=live every second, GET /v1/channels/{id}/stats 50/s, 5
  creates/s, a webhook registered (when the server has webhooks).

Latency is taken from each call's scheduled time (a late send counts against the
server, no coordinated omission). After the ramp and one interval, --hold seconds
are measured: hook calls/s achieved vs offered, p50/p99/max, errors, streams
wrongly ended (sessions of the step that ended while their stream was still
heartbeating), server CPU % (of one core) and peak RSS, database growth per
minute, webhook lag p99, and the CPU of this load generator and of the stat nodes
(they share the box with the server: 2 cores here).

A step passes with hook p99 <= 50 ms, no errors, nothing wrongly ended, RSS <
150 MB, webhook lag p99 <= 2 s and >= 99% of the offered hook calls answered.
"""

import argparse
import asyncio
import datetime
import heapq
import http.server
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import run as bench_run  # noqa: E402  (Process, request, basic, free_port, machine)
import seed as seeding  # noqa: E402

HOOK_SECRET = bench_run.HOOK_SECRET
KBPS = 2500
TARGETS = {'p99_ms': 50.0, 'rss_mb': 150.0, 'webhook_lag_p99_s': 2.0, 'answered': 0.99}
STAT_SAMPLE = os.path.join(ROOT, 'tests', 'data', 'rtmp_stat.xml')


# The nodes' /stat and the webhook receiver (a child process) ##################

def stream_template():
    """The captured <stream> block with its name, time, counters and publisher's id
    made into format fields; the document around it split into head and tail."""
    with open(STAT_SAMPLE) as sample:
        xml = re.sub(r'<!--.*?-->\n', '', sample.read(), flags=re.S)
    start, end = xml.index('<stream>'), xml.index('</stream>') + len('</stream>')
    block = xml[start:end].replace('{', '{{').replace('}', '}}')
    block = block.replace('<name>STREAM</name>', '<name>{name}</name>')
    block = re.sub(r'<time>3753</time><bw_in>0</bw_in>\n<bytes_in>123402</bytes_in>',
                   '<time>{ms}</time><bw_in>{bw}</bw_in>\n<bytes_in>{bytes}</bytes_in>', block)
    block = block.replace('<id>2</id>', '<id>{client}</id>')
    return xml[:start], block, xml[end:]


def stat_nodes(args):
    """Serve each node's /stat and the webhook receiver until stdin closes."""
    with open(args.streams) as streams:
        plan = json.load(streams)
    head, block, tail = stream_template()
    lags = []
    clock = {'t0': float('inf')}  # streams appear from their publish on: t0 + offset

    def node_handler(node):
        mine = [(name, client, offset) for name, client, offset, on in plan['streams']
                if on == node]

        class Stat(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                age = time.time() - clock['t0']
                body = (head + ''.join(
                    block.format(name=name, ms=int((age - offset) * 1000), bw=KBPS * 1000,
                                 bytes=int((age - offset) * KBPS * 125), client=client)
                    for name, client, offset in mine if offset <= age) + tail).encode()
                self.send_response(200)
                self.send_header('Content-Type', 'text/xml')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass
        return Stat

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            event = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
            created = datetime.datetime.fromisoformat(event['createdAt'].replace('Z', '+00:00'))
            lags.append(time.time() - created.timestamp())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_):
            pass

    servers = [http.server.ThreadingHTTPServer(('127.0.0.1', 0), node_handler(node))
               for node in range(plan['nodes'])]
    servers.append(http.server.ThreadingHTTPServer(('127.0.0.1', 0), Receiver))
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps([server.server_address[1] for server in servers]), flush=True)
    clock['t0'] = float(sys.stdin.readline())  # the parent's wall time of the ramp's start
    sys.stdin.read()  # the parent closes it when the step ends
    with open(args.lags, 'w') as out:
        json.dump(lags, out)


# An open-loop HTTP/1.1 client ##################################################

class Client:
    """Calls to one port, at most `size` at once: over keep-alive connections, or
    (keepalive=False) each on its own connection, HTTP/1.0 with `Connection: Close`,
    as nginx-rtmp's notify module sends every hook call."""

    def __init__(self, port, size, keepalive=True):
        self.port, self.size, self.keepalive = port, size, keepalive
        self.free = asyncio.Queue()
        self.opened = 0
        self.slots = asyncio.Semaphore(size)

    async def call(self, method, path, body=b'', ctype=None, auth=None):
        """(status, body bytes); a broken connection is dropped and the error raised."""
        if not self.keepalive:
            async with self.slots:
                return await self._once(method, path, body, ctype, auth)
        if self.free.empty() and self.opened < self.size:
            self.opened += 1
            self.free.put_nowait(await asyncio.open_connection('127.0.0.1', self.port))
        reader, writer = await self.free.get()
        try:
            writer.write(self._request('HTTP/1.1', method, path, body, ctype, auth))
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b'\r\n', b''):
                    break
                if line.lower().startswith(b'content-length:'):
                    length = int(line.split(b':')[1])
            answer = await reader.readexactly(length)
            status = int(status_line.split()[1])
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            writer.close()
            self.opened -= 1
            raise
        self.free.put_nowait((reader, writer))
        return status, answer

    async def _once(self, method, path, body, ctype, auth):
        reader, writer = await asyncio.open_connection('127.0.0.1', self.port)
        try:
            writer.write(self._request('HTTP/1.0', method, path, body, ctype, auth,
                                       'Connection: Close'))
            head, _, answer = (await reader.read()).partition(b'\r\n\r\n')
            return int(head.split(None, 2)[1]), answer
        finally:
            writer.close()

    @staticmethod
    def _request(version, method, path, body, ctype, auth, *extra):
        head = ['%s %s %s' % (method, path, version), 'Host: 127.0.0.1',
                'Content-Length: %d' % len(body)] + list(extra)
        if ctype:
            head.append('Content-Type: ' + ctype)
        if auth:
            head.append('Authorization: ' + auth)
        return ('\r\n'.join(head) + '\r\n\r\n').encode() + body


# One step ######################################################################

def hook_body(call, channel_id, key, client):
    return ('app=live&flashver=FMLE%%2F3.0&swfurl=&tcurl=rtmp%%3A%%2F%%2F127.0.0.1%%2Flive'
            '&pageurl=&addr=10.1.%d.%d&clientid=%d&call=%s&name=%s&type=live&key=%s'
            % (client // 250 % 250, client % 250 + 1, client, call, channel_id,
               key)).encode()


def stat_url(port, args):
    return '' if args.no_stats else 'http://127.0.0.1:%d/stat' % port


def write_config(path, ports, nodes, args):
    lines = ['[server]', 'threads = %d' % args.threads, '',
             '[ingest]', 'hook_secret = %s' % HOOK_SECRET,
             'update_interval = %d' % args.interval, 'control_url =',
             'stat_url = %s' % stat_url(ports[0], args), '']
    for node in range(1, nodes):
        lines += ['[ingest.n%d]' % node, 'kind = nginx-rtmp',
                  'rtmp_url = rtmp://127.0.0.1:%d/live' % (1935 + node),
                  'hls_url = http://127.0.0.1:%d/hls' % (8080 + node),
                  'stat_url = %s' % stat_url(ports[node], args), '']
    with open(path, 'w') as config:
        config.write('\n'.join(lines))


def cpu_seconds(pid):
    with open('/proc/%d/stat' % pid) as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def db_bytes(db):
    """Live pages of the database (WAL included), freelist left out."""
    conn = sqlite3.connect('file:%s?mode=ro' % db, uri=True)
    try:
        pages, free, size = [conn.execute('PRAGMA %s' % p).fetchone()[0]
                             for p in ('page_count', 'freelist_count', 'page_size')]
        return (pages - free) * size
    finally:
        conn.close()


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def drive(n, server_port, hook_port, streams, info, args, started, window_opened):
    """Ramp, then hold; returns what was measured from this side. `started(t0)` is
    told the wall time of the first publish; `window_opened()` is called as the
    measured window opens."""
    hooks = Client(hook_port, args.connections, keepalive=args.keepalive)
    app = Client(server_port, 8)
    app_auth = bench_run.basic(*info['app'])
    creator_auth = bench_run.basic(*info['creator'])
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 1.0
    started(time.time() + 1.0)
    window = (t0 + args.ramp + args.interval, t0 + args.ramp + args.interval + args.hold)
    # Calls not yet answered, at most 5 s worth: past that the step has failed, and
    # queueing more would only grow this process (a call beyond it is counted an
    # error, `not_sent`, and not made).
    backlog_cap = max(1000, 5 * n // args.interval)
    measured = {'in_flight': 0, 'not_sent': 0, 'latency': [], 'timeline': [], 'start_lag': [],
                'errors': 0, 'error_samples': [], 'offered': 0,
                'answered': 0, 'app_latency': [], 'app_errors': 0}
    pending = set()

    async def one(call, stream, due):
        channel_id, key, client, node = stream
        path = '/v1/hooks/nginx-rtmp?secret=%s%s' % (
            HOOK_SECRET, '&node=n%d' % node if node else '')
        counted = window[0] <= due < window[1]
        if counted:
            measured['offered'] += 1
            # How late this generator itself starts the call (its own loop's delay,
            # counted in the latency too: a p99 it dominates says nothing of the server).
            measured['start_lag'].append(loop.time() - due)
        try:
            status, body = await hooks.call('POST', path, hook_body(call, channel_id, key, client),
                                            'application/x-www-form-urlencoded')
        except Exception as error:  # counted, and the run goes on
            status, body = None, repr(error).encode()
        finally:
            measured['in_flight'] -= 1
        if counted:
            measured['latency'].append(loop.time() - due)
            measured['timeline'].append((round(due - t0, 4), round(loop.time() - due, 4)))
            measured['answered'] += 1
        if status != 200:
            measured['errors'] += 1
            if len(measured['error_samples']) < 5:
                measured['error_samples'].append('%s %s: %s' % (call, status, body[:200]))

    async def app_call(method, path, auth, body=b'', ctype=None, expect=200):
        started = loop.time()
        try:
            status, _ = await app.call(method, path, body, ctype, auth)
        except Exception:
            status = None
        if window[0] <= started < window[1]:
            measured['app_latency'].append(loop.time() - started)
            if status != expect:
                measured['app_errors'] += 1

    async def app_server():
        tick, made = 0, 0
        while loop.time() < window[1]:
            await asyncio.sleep(0.02)
            tick += 1
            target = random.choice(streams)[0]
            pending.add(asyncio.ensure_future(app_call(
                'GET', '/v1/channels/%s/stats' % target, app_auth)))
            if tick % 50 == 0:
                pending.add(asyncio.ensure_future(app_call(
                    'GET', '/v1/channels?status=live&limit=100', app_auth)))
            if tick % 10 == 0:
                made += 1
                body = json.dumps({'userId': bench_run.CREATOR_USER,
                                   'name': 'Capacity %d' % made}).encode()
                pending.add(asyncio.ensure_future(app_call(
                    'POST', '/v1/channels', creator_auth, body, 'application/json', 201)))
            pending.difference_update([task for task in pending if task.done()])

    app_task = asyncio.ensure_future(app_server())
    # (due, index, call), a heap: every stream publishes once in the ramp, then
    # updates every interval from its publish (the ramp may be longer than that).
    schedule = [(t0 + i * args.ramp / n, i, 'publish') for i in range(n)]
    opened = False
    while True:
        now = loop.time()
        if now >= window[1]:
            break
        if not opened and now >= window[0]:
            opened = True
            # Off this loop: reading the database's size here would delay the calls.
            marks_taken = loop.run_in_executor(None, window_opened)
        while schedule and schedule[0][0] <= now:
            due, index, call = heapq.heappop(schedule)
            if measured['in_flight'] < backlog_cap:
                measured['in_flight'] += 1
                pending.add(asyncio.ensure_future(one(call, streams[index], due)))
            elif window[0] <= due < window[1]:  # the server is that far behind: not sent
                measured['offered'] += 1
                measured['errors'] += 1
                measured['not_sent'] += 1
            heapq.heappush(schedule, (due + args.interval, index, 'update_publish'))
        if len(pending) > 5000:
            pending.difference_update([task for task in pending if task.done()])
        await asyncio.sleep(0.002)
    await app_task
    await marks_taken
    await asyncio.wait(pending, timeout=10)
    return measured


def step(n, args, workdir):
    nodes = max(1, -(-n // args.per_node))
    # Publishes are write transactions, synced one at a time (about 1,000 a second
    # here): a ramp at 250 a second leaves the server time for the updates.
    args = argparse.Namespace(**dict(vars(args), ramp=args.ramp or max(30, n / 250)))
    stepdir = os.path.join(workdir, 'n%d' % n)
    os.makedirs(stepdir)
    db = os.path.join(stepdir, 'capacity.db')
    info = seeding.seed(db, n, max(1, n // 10), 0)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute('UPDATE users SET max_live_channels = 10')
        rows = conn.execute('SELECT public_id, stream_key FROM channels ORDER BY id').fetchall()
    conn.close()
    streams = [(channel_id, key, index + 1, index % nodes)
               for index, (channel_id, key) in enumerate(rows)]
    plan_path = os.path.join(stepdir, 'streams.json')
    with open(plan_path, 'w') as plan:
        json.dump({'nodes': nodes, 'streams': [
            (channel_id, client, (client - 1) * args.ramp / n, node)
            for channel_id, _, client, node in streams]}, plan)
    lags_path = os.path.join(stepdir, 'lags.json')
    stat_proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), 'stat-nodes', '--streams', plan_path,
         '--lags', lags_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ports = json.loads(stat_proc.stdout.readline())
    config = os.path.join(stepdir, 'capacity.ini')
    write_config(config, ports, nodes, args)

    port, hook_port = bench_run.free_port(), bench_run.free_port()
    env = bench_run.server_env(args.threads)
    for name in ('LIVESTREAM_INGEST_STAT_URL', 'LIVESTREAM_INGEST_UPDATE_INTERVAL',
                 'LIVESTREAM_SERVER_THREADS'):
        env.pop(name)
    env['LIVESTREAM_SERVER_HOOK_LISTEN'] = '127.0.0.1:%d' % hook_port
    server = bench_run.Process(
        'server (%d streams)' % n,
        [sys.executable, '-m', 'livestream_api', 'serve', '--config', config, '--db', db,
         '--port', str(port)], env, os.path.join(stepdir, 'server.log'), port)
    try:
        server.wait_ready('/v1/health')
        status, _ = bench_run.request(
            port, 'PUT', '/v1/webhook', json.dumps({'url': 'http://127.0.0.1:%d/' % ports[-1]}),
            'application/json', bench_run.basic(*info['app']))
        webhooks = status in (200, 201)
        answer = bench_run.request(port, 'PUT', '/v1/users/%s' % bench_run.CREATOR_USER,
                                   json.dumps(bench_run.UNLIMITED), 'application/json',
                                   bench_run.basic(*info['creator']))
        bench_run.expect('PUT creator user', answer, answer[0] if answer[0] == 200 else 201)
        own_start = os.times()
        marks = {}

        def started(t0):
            stat_proc.stdin.write('%r\n' % t0)
            stat_proc.stdin.flush()

        def window_opened():
            marks['start'] = (time.time(), cpu_seconds(server.proc.pid),
                              cpu_seconds(stat_proc.pid), db_bytes(db))
        measured = asyncio.run(drive(n, port, hook_port, streams, info, args, started,
                                     window_opened))
        ended = (time.time(), cpu_seconds(server.proc.pid), cpu_seconds(stat_proc.pid),
                 db_bytes(db))
        own = os.times()
        server.alive()
        rss = server.peak_rss_mb()
        conn = sqlite3.connect('file:%s?mode=ro' % db, uri=True)
        wrongly_ended = conn.execute(
            'SELECT count(*) FROM sessions WHERE ended_at IS NOT NULL').fetchone()[0]
        conn.close()
    finally:
        server.stop()
        stat_proc.stdin.close()
        stat_proc.wait(30)
    with open(lags_path) as lags_file:
        lags = json.load(lags_file)
    elapsed = ended[0] - marks['start'][0]
    latency = measured['latency']
    with open(os.path.join(stepdir, 'latencies.json'), 'w') as out:
        json.dump(measured['timeline'], out)  # (seconds from the ramp's start, latency)
    result = {
        'streams': n, 'nodes': nodes,
        'offered_per_s': round(measured['offered'] / args.hold, 1),
        'answered_per_s': round(measured['answered'] / elapsed, 1),
        'answered': measured['answered'] / max(1, measured['offered']),
        'p50_ms': percentile(latency, 0.50) and percentile(latency, 0.50) * 1000,
        'p99_ms': percentile(latency, 0.99) and percentile(latency, 0.99) * 1000,
        'generator_lag_p99_ms': percentile(measured['start_lag'], 0.99) and
        percentile(measured['start_lag'], 0.99) * 1000,
        'max_ms': max(latency) * 1000 if latency else None,
        'errors': measured['errors'], 'error_samples': measured['error_samples'],
        'not_sent': measured['not_sent'],
        'wrongly_ended': wrongly_ended,
        'server_cpu_pct': round(100 * (ended[1] - marks['start'][1]) / elapsed, 1),
        'stat_nodes_cpu_pct': round(100 * (ended[2] - marks['start'][2]) / elapsed, 1),
        'generator_cpu_pct': round(100 * ((own.user + own.system) -
                                          (own_start.user + own_start.system)) /
                                   (args.ramp + args.interval + args.hold + 1), 1),
        'rss_mb': rss and round(rss, 1),
        'db_growth_mb_per_min': round((ended[3] - marks['start'][3]) / 2 ** 20 /
                                      (elapsed / 60), 2),
        'webhook_lag_p99_s': (round(percentile(lags, 0.99), 3) if webhooks and lags
                              else None),
        'webhooks': webhooks,
        'app_p99_ms': (percentile(measured['app_latency'], 0.99) or 0) * 1000,
        'app_errors': measured['app_errors'],
    }
    result['passed'] = (result['p99_ms'] is not None and result['p99_ms'] <= TARGETS['p99_ms']
                        and not result['errors'] and not result['wrongly_ended']
                        and (rss or 0) < TARGETS['rss_mb']
                        and result['answered'] >= TARGETS['answered']
                        and not result['app_errors']
                        and (result['webhook_lag_p99_s'] is None
                             or result['webhook_lag_p99_s'] <= TARGETS['webhook_lag_p99_s']))
    return result


COLUMNS = [('streams', 'streams', '%d'), ('nodes', 'nodes', '%d'),
           ('offered_per_s', 'hooks/s offered', '%.0f'),
           ('answered_per_s', 'answered', '%.0f'), ('p50_ms', 'p50 ms', '%.1f'),
           ('p99_ms', 'p99 ms', '%.1f'), ('max_ms', 'max ms', '%.0f'),
           ('errors', 'errors', '%d'), ('wrongly_ended', 'ended wrongly', '%d'),
           ('server_cpu_pct', 'server CPU %', '%.0f'), ('rss_mb', 'RSS MB', '%.0f'),
           ('db_growth_mb_per_min', 'DB MB/min', '%.2f'),
           ('webhook_lag_p99_s', 'webhook lag p99 s', '%.2f'),
           ('app_p99_ms', 'app p99 ms', '%.0f'),
           ('generator_cpu_pct', 'generator CPU %', '%.0f'),
           ('generator_lag_p99_ms', 'generator lag p99 ms', '%.1f'),
           ('stat_nodes_cpu_pct', 'stat nodes CPU %', '%.0f'), ('passed', 'holds', '%s')]


def table(results):
    def cell(result, key, form):
        value = result.get(key)
        return '-' if value is None else form % value
    lines = ['| ' + ' | '.join(title for _, title, _ in COLUMNS) + ' |',
             '|' + '---|' * len(COLUMNS)]
    lines += ['| ' + ' | '.join(cell(result, key, form) for key, _, form in COLUMNS) + ' |'
              for result in results]
    return '\n'.join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['stat-nodes']:
        parser = argparse.ArgumentParser()
        parser.add_argument('--streams', required=True)
        parser.add_argument('--lags', required=True)
        return stat_nodes(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', default='1000,2000,5000,10000,20000,40000')
    parser.add_argument('--per-node', type=int, default=1000)
    parser.add_argument('--interval', type=int, default=10)
    parser.add_argument('--hold', type=int, default=60)
    parser.add_argument('--ramp', type=float, help='seconds over which the streams '
                        'publish (default: N/250, at least 30)')
    parser.add_argument('--connections', type=int, default=64)
    parser.add_argument('--no-stats', action='store_true',
                        help='nodes without /stat (no polls, no figures): the hooks alone')
    parser.add_argument('--keepalive', action='store_true',
                        help='hook calls over keep-alive connections (nginx-rtmp opens one '
                             'per call, as this bench does by default)')
    parser.add_argument('--threads', type=int, default=8)
    parser.add_argument('--workdir')
    parser.add_argument('--out')
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix='livestream-capacity-'))
    os.makedirs(workdir, exist_ok=True)
    print('machine:', json.dumps(bench_run.machine(workdir)))
    results = []
    for n in [int(value) for value in args.steps.split(',')]:
        result = step(n, args, workdir)
        results.append(result)
        print(json.dumps(result), flush=True)
        if not result['passed']:
            break
    print(table(results))
    if args.out:
        with open(args.out, 'w') as out:
            json.dump({'args': vars(args), 'results': results}, out, indent=1)


if __name__ == '__main__':
    main()
