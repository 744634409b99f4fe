"""The ceiling for bench/run.py: a bare Bottle app on waitress answering every
request with a constant JSON envelope. Nothing the stack does can be faster.

    python bench/ceiling.py --port 8099 --threads 8
    python bench/ceiling.py --port 8099 --threads 8 --work insert --db /tmp/ref.db

--work makes it a reference instead: the same app doing one SQLite operation per
request before it answers, set up the way livestream_api sets up its store (a
connection per thread kept open, WAL, synchronous = FULL). It shows what that one
operation costs on this stack, apart from everything else an endpoint does:

    read             a point read by primary key
    insert           a durable INSERT under a process-wide write lock (the store
                     serializes its writes the same way)
    insert-unlocked  the same INSERT with no lock: SQLite's busy timeout makes the
                     writers take turns (sleeping 1, 2, 5, 10 ms... between tries)
    insert-polled    the same INSERT with no lock and no busy timeout: a writer that
                     finds SQLite's write lock taken tries again after POLL_SECONDS
"""

import argparse
import itertools
import json
import logging
import random
import secrets
import sqlite3
import threading
import time

import bottle
import waitress

#: The one answer, to every request.
BODY = json.dumps({'ec': 0, 'data': {'status': 'ok'}}, separators=(',', ':'))
#: What a request does before it answers: nothing (the ceiling) or a reference's operation.
WORK = ('none', 'read', 'insert', 'insert-unlocked', 'insert-polled')
#: Rows in a reference database, for the point reads to pick from.
ROWS = 1000
#: How long an insert-polled writer waits before trying SQLite's write lock again.
POLL_SECONDS = 0.0002


def open_db(path, busy_timeout=10):
    """A connection configured as the store configures its own."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout)
    conn.executescript('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;')
    return conn


def create_db(path):
    """A table shaped like a small channels table, with ROWS rows to read."""
    conn = open_db(path)
    conn.executescript('CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, '
                       'public_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, '
                       'created_at REAL NOT NULL)')
    with conn:
        conn.executemany('INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?)',
                         [(i, 'item%d' % i, 'Item %d' % i, time.time())
                          for i in range(1, ROWS + 1)])
    conn.close()


def make_app(work='none', db=None):
    app = bottle.Bottle()
    local = threading.local()
    write_lock = threading.Lock() if work == 'insert' else None
    # Ids without a system call per request (os.urandom would release the GIL too).
    prefix, serial = secrets.token_hex(8), itertools.count()

    def conn():
        if getattr(local, 'conn', None) is None:
            local.conn = open_db(db, busy_timeout=0 if work == 'insert-polled' else 10)
        return local.conn

    def read():
        conn().execute('SELECT * FROM items WHERE id = ?',
                       (random.randrange(ROWS) + 1,)).fetchone()

    def insert():
        conn().execute('INSERT INTO items (public_id, name, created_at) VALUES (?, ?, ?)',
                       ('%s-%d' % (prefix, next(serial)), 'Bench created', time.time()))

    def locked_insert():
        with write_lock:
            insert()

    def polled_insert():
        while True:
            try:
                return insert()
            except sqlite3.OperationalError as error:
                if 'locked' not in str(error):
                    raise
            time.sleep(POLL_SECONDS)

    operation = {'none': None, 'read': read, 'insert': locked_insert,
                 'insert-unlocked': insert, 'insert-polled': polled_insert}[work]

    @app.route('/<path:path>', method=['GET', 'POST', 'PUT', 'PATCH', 'DELETE'])
    def constant(path):
        if operation and path != 'v1/health':  # readiness probes stay free
            operation()
        bottle.response.content_type = 'application/json'
        return BODY

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--threads', type=int, default=8)
    parser.add_argument('--work', choices=WORK, default='none')
    parser.add_argument('--db', help='the reference database (required with --work)')
    args = parser.parse_args()
    if args.work != 'none':
        if not args.db:
            parser.error('--work needs --db')
        create_db(args.db)
    # As the real server does: under load waitress warns of its queue depth per request.
    logging.getLogger('waitress.queue').setLevel(logging.ERROR)
    waitress.serve(make_app(args.work, args.db), host=args.host, port=args.port,
                   threads=args.threads, ident='ceiling', _quiet=True)


if __name__ == '__main__':
    main()
