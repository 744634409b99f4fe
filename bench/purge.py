"""A force delete of a large client must not stall other clients' writers.

    python bench/purge.py [--workdir DIR] [--channels 100000] [--seconds-before 3]

Seeds the bench database (bench/seed.py: client bench-app with 100k channels,
10k users, 1M sessions), gives every session of it 2 samples (2M rows), and
starts the real server (`serve`, which runs the purge worker). Another client
(bench-creator) puts a channel live; one thread then sends its update_publish
hook back to back and another creates channels for it, while the admin deletes
bench-app with ?force=true. Reports the DELETE's answer time, how long the purge
took, and the hook's and the creates' latencies (p50 / p99 / max) before and
during the purge. Then, in process on a second copy, times every purge
transaction (Store.purge_step), which bounds how long any writer waits for one.
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import run as bench  # noqa: E402  (the server, requests and hook bodies of bench/run.py)
import seed as seeding  # noqa: E402
import livestream_api  # noqa: E402

HOOK = '/v1/hooks/nginx-rtmp?secret=%s' % bench.HOOK_SECRET
FORM = 'application/x-www-form-urlencoded'


def add_samples(db_path, per_session=2):
    """`per_session` samples for every session, as update_publish would have written."""
    with sqlite3.connect(db_path) as db:
        for offset in range(per_session):
            db.execute('INSERT INTO session_samples (session_id, at, bitrate_kbps, bytes_in, '
                       'viewers) SELECT id, started_at + ? * 10, bitrate_kbps, bytes_in, '
                       'peak_viewers FROM sessions', (offset,))


def percentiles(latencies):
    if not latencies:
        return {'count': 0}
    ordered = sorted(latencies)
    return {'count': len(ordered), 'p50_ms': round(statistics.median(ordered), 1),
            'p99_ms': round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
            'max_ms': round(ordered[-1], 1)}


class Load:
    """A thread repeating one request, recording (sent at, answered at, ms, status)."""

    def __init__(self, send):
        self.send, self.answers = send, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            sent, started = time.monotonic(), time.perf_counter()
            try:
                status = self.send()
            except OSError:  # a timeout (10 s): the writer stalled behind the delete
                status = 599
            self.answers.append((sent, time.monotonic(),
                                 (time.perf_counter() - started) * 1000, status))

    def stop(self):
        self.stopping.set()
        self.thread.join(30)

    def between(self, start, end):
        """(latencies, statuses other than 2xx) of the requests in flight at any time
        in [start, end): a request the delete held up counts in the delete's window."""
        chosen = [(ms, status) for sent, answered, ms, status in self.answers
                  if sent < end and answered >= start]
        return [ms for ms, _ in chosen], [status for _, status in chosen if status >= 300]


def over_http(workdir, db_path, info, args):
    server = bench.start_server(db_path, 8, workdir, 'purge')
    try:
        creator = bench.basic(*info['creator'])
        bench.expect('creator user', bench.request(
            server.port, 'PUT', '/v1/users/%s' % bench.CREATOR_USER,
            json.dumps(bench.UNLIMITED), 'application/json', creator), 201)
        channel = bench.expect('creator channel', bench.request(
            server.port, 'POST', '/v1/channels', json.dumps(
                {'userId': bench.CREATOR_USER, 'name': 'stays live'}), 'application/json',
            creator), 201)
        live = {'id': channel['id'], 'key': channel['streamId'].split('?key=')[1]}
        bench.expect('publish', bench.request(server.port, 'POST', HOOK,
                                              bench.hook_form('publish', live), FORM), 200)
        create_body = json.dumps({'userId': bench.CREATOR_USER, 'name': 'made meanwhile'})
        hooks = Load(lambda: bench.request(server.port, 'POST', HOOK, bench.hook_form(
            'update_publish', live), FORM)[0])
        creates = Load(lambda: bench.request(server.port, 'POST', '/v1/channels', create_body,
                                             'application/json', creator)[0])
        time.sleep(args.seconds_before)
        asked = time.monotonic()
        status, _ = bench.request(server.port, 'DELETE', '/v1/clients/%s?force=true'
                                  % seeding.APP_TOKEN, auth=bench.basic(*bench.ADMIN),
                                  timeout=120)
        answered = time.monotonic()
        watcher = sqlite3.connect('file:%s?mode=ro' % db_path, uri=True)
        while watcher.execute('SELECT count(*) FROM clients WHERE id = ?',
                              (info['app_pk'],)).fetchone()[0]:
            time.sleep(0.1)
        purged = time.monotonic()
        watcher.close()
        hooks.stop()
        creates.stop()
        report = {'delete_status': status, 'delete_ms': round((answered - asked) * 1000, 1),
                  'purge_seconds': round(purged - asked, 2)}
        for name, load in (('hook', hooks), ('create', creates)):
            for phase, (start, end) in (('before', (0, asked)), ('during', (asked, purged))):
                latencies, failures = load.between(start, end)
                report['%s_%s' % (name, phase)] = dict(percentiles(latencies),
                                                       failures=len(failures))
        return report
    finally:
        server.stop()


def in_process(db_path):
    """Every purge transaction's duration, in process (no HTTP, nothing else running)."""
    store = livestream_api.Store(
        db_path, livestream_api.load_config(environ={})['ingest_nodes'])
    store.migrate()
    client = store.client_by_token(seeding.APP_TOKEN)
    started = time.perf_counter()
    store.delete_client(client['id'], time.time(), force=True)
    marked_ms = (time.perf_counter() - started) * 1000
    steps = []
    while True:
        started = time.perf_counter()
        more = store.purge_step()
        steps.append((time.perf_counter() - started) * 1000)
        if not more:
            break
    store.close()
    return {'mark_ms': round(marked_ms, 1), 'steps': len(steps),
            'total_seconds': round(sum(steps) / 1000, 2), 'step': percentiles(steps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir')
    parser.add_argument('--channels', type=int, default=100000)
    parser.add_argument('--seconds-before', type=float, default=3)
    parser.add_argument('--only', choices=('http', 'in_process'))
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix='livestream-purge-'))
    os.makedirs(workdir, exist_ok=True)
    seeded, info_path = os.path.join(workdir, 'seeded.db'), os.path.join(workdir, 'seeded.json')
    if not os.path.exists(info_path):  # seeded once per workdir; its secrets kept beside it
        info = seeding.seed(seeded, args.channels, args.channels // 10, args.channels * 10)
        add_samples(seeded)
        with open(info_path, 'w') as out:
            json.dump(info, out)
    with open(info_path) as saved:
        info = json.load(saved)
    with sqlite3.connect(seeded) as db:
        info['app_pk'] = db.execute('SELECT id FROM clients WHERE token_id = ?',
                                    (seeding.APP_TOKEN,)).fetchone()[0]
    phases = (('http', over_http), ('in_process', in_process))
    if args.only:
        phases = [phase for phase in phases if phase[0] == args.only]
    for name, measure in phases:
        copy = os.path.join(workdir, '%s.db' % name)
        shutil.copyfile(seeded, copy)
        result = measure(workdir, copy, info, args) if name == 'http' else measure(copy)
        print('%s: %s' % (name, json.dumps(result)), flush=True)


if __name__ == '__main__':
    main()
