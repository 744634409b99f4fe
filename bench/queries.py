"""Time the channel-list queries that once walked every channel, at the bench seed.

    python bench/queries.py [--db /tmp/q.db] [--channels 100000] [--disabled 1000] [--runs 20]

Seeds a database with bench/seed.py (100k channels, 10k users, 1M sessions by
default; an existing --db is reused), disables --disabled channels spread over
the table, then times Store.list_channels itself (not HTTP: the cost of the SQL)
with the read cache emptied before each call, as the app client and as admin.
Prints the median and the worst of --runs calls per query, in milliseconds.
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

#: (label, as admin, list_channels filters): the issue's slow queries and their kin.
QUERIES = [
    ('?userId=U (admin)', True, {'user_id': 'user00042'}),
    ('?userId=U (app)', False, {'user_id': 'user00042'}),
    ('?status=disabled (admin)', True, {'status': 'disabled'}),
    ('?status=disabled (app)', False, {'status': 'disabled'}),
    ('?status=idle (admin)', True, {'status': 'idle'}),
    ('?status=idle (app)', False, {'status': 'idle'}),
    ('?status=live (app)', False, {'status': 'live'}),
    ('?q=needle (app)', False, {'q': 'needle'}),
    ('no filter (admin)', True, {}),
]


def open_store(db_path):
    store = livestream_api.Store(
        db_path, livestream_api.load_config(environ={})['ingest_nodes'])
    store.migrate()
    return store


def time_queries(store, client_pk, runs):
    """{label: (median ms, worst ms)} over `runs` uncached calls of each query."""
    results = {}
    for label, admin, filters in QUERIES:
        times = []
        for _ in range(runs):
            store._rows.clear()  # measure the SQL, not the read cache
            started = time.perf_counter()
            store.list_channels(None if admin else client_pk, filters.get('user_id'),
                                filters.get('status'), filters.get('q'), 2 ** 63 - 1, 20, admin)
            times.append((time.perf_counter() - started) * 1000)
        results[label] = (statistics.median(times), max(times))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--db', default='/tmp/livestream-bench-queries.db')
    parser.add_argument('--channels', type=int, default=100000)
    parser.add_argument('--disabled', type=int, default=1000)
    parser.add_argument('--runs', type=int, default=20)
    args = parser.parse_args()
    if not os.path.exists(args.db):
        seeding.seed(args.db, args.channels, args.channels // 10, args.channels * 10)
    store = open_store(args.db)
    client_pk = store.client_by_token(seeding.APP_TOKEN)['id']
    step = max(1, args.channels // max(1, args.disabled))
    with store.transaction() as db:
        db.execute('UPDATE channels SET enabled = 0 WHERE enabled = 1 AND id % ? = 0 '
                   'AND live_session_id IS NULL', (step,))
    print('%-28s %10s %10s' % ('query', 'median ms', 'worst ms'))
    for label, (median, worst) in time_queries(store, client_pk, args.runs).items():
        print('%-28s %10.2f %10.2f' % (label, median, worst))
    store.close()


if __name__ == '__main__':
    main()
