"""Time one session's chart query (GET /v1/channels/{id}/sessions/{sessionId}) at 100k samples.

    python bench/chart.py [--db /tmp/c.db] [--samples 100000] [--runs 20]

Seeds a database with bench/seed.py (10 channels, 10 sessions), gives the newest
session --samples samples 10 s apart (a 278-hour broadcast at update_interval 10),
then times Store.session_samples itself (the SQL, in process) at 300 and 1000
points, and at 300 points for a session of 6 samples (a one-minute broadcast).
Prints the median and the worst of --runs calls, in milliseconds.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import seed as seeding  # noqa: E402
import livestream_api  # noqa: E402


def add_samples(store, session_pk, count, start):
    """`count` samples 10 s apart from `start`, bitrate and viewers varying."""
    with store.transaction() as db:
        db.executemany('INSERT INTO session_samples (session_id, at, bitrate_kbps, bytes_in, '
                       'viewers, viewers_hls) VALUES (?, ?, ?, ?, ?, ?)',
                       ((session_pk, start + 10 * n, 2500 + n % 700, 3_200_000 * n,
                         n % 90, n % 40) for n in range(count)))


def time_chart(store, session_pk, start, end, points, runs):
    """(median ms, worst ms, points returned) over `runs` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        samples = store.session_samples(session_pk, start, end, points)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), len(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--db', default='/tmp/livestream-bench-chart.db')
    parser.add_argument('--samples', type=int, default=100000)
    parser.add_argument('--runs', type=int, default=20)
    args = parser.parse_args()
    if os.path.exists(args.db):
        os.unlink(args.db)
    seeding.seed(args.db, 10, 10, 10)
    store = livestream_api.Store(args.db, 'rtmp://bench/live', 'http://bench/hls')
    store.migrate()
    long_pk, short_pk = [row[0] for row in store.db.execute(
        'SELECT id FROM sessions ORDER BY id DESC LIMIT 2')]
    start = 1_700_000_000.0
    add_samples(store, long_pk, args.samples, start)
    add_samples(store, short_pk, 6, start)
    print('%-34s %10s %10s %7s' % ('session, points', 'median ms', 'worst ms', 'points'))
    for label, session_pk, count, points in (
            ('%d samples, 300 points' % args.samples, long_pk, args.samples, 300),
            ('%d samples, 1000 points' % args.samples, long_pk, args.samples, 1000),
            ('6 samples, 300 points', short_pk, 6, 300)):
        median, worst, returned = time_chart(store, session_pk, start, start + 10 * count,
                                             points, args.runs)
        print('%-34s %10.2f %10.2f %7d' % (label, median, worst, returned))
    store.close()


if __name__ == '__main__':
    main()
