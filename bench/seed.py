"""Bulk-seed a livestream-api database for bench/run.py, in seconds.

    python bench/seed.py --db /tmp/bench.db --channels 100000 --users 10000 --sessions 1000000

The schema comes from `livestream-api init-db` (so it is exactly the app's);
then, in ONE transaction, the counter triggers are set aside, clients, users,
channels and ended sessions are inserted with executemany, the triggers are put
back verbatim (their SQL read from sqlite_master first), and every counter the
triggers keep (clients.users/channels/live_channels/sessions/live_seconds/bytes_in,
users.channels/live_channels, channels.sessions/live_seconds/bytes_in) is
recomputed from the rows. check_counters() proves they agree.

What it makes (all deterministic for a given --seed):
- client "bench-app" (role app) owning every user and channel;
- client "bench-creator" (role app) with nothing, for POST /v1/channels;
- users user00000.. with the default limits, channels spread round-robin over them;
- channels named "Channel 000123"; NEEDLES of them are named "Needle show N"
  (so ?q=needle matches a few, spread from oldest to newest);
- sessions/channels ended sessions per channel, spread over the past year.
"""

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import livestream_api  # noqa: E402  (after the path is set)

NEEDLES = 5
Q_WORD = 'needle'
APP_TOKEN = 'bench-app'
CREATOR_TOKEN = 'bench-creator'
YEAR = 365 * 86400


#: byte -> a character of the public-id alphabet (256 is a multiple of 32: uniform).
_ALPHABET = bytes(range(256)).translate(bytes.maketrans(
    bytes(range(256)), (b'abcdefghijklmnopqrstuvwxyz234567' * 8)))


def _ids(rng, count):
    """`count` public ids ([a-z2-7]{16}, 80 random bits: distinct with overwhelming
    odds), fast: translate a block of random bytes into the alphabet, then slice."""
    text = rng.randbytes(16 * count).translate(_ALPHABET).decode('ascii')
    return [text[i:i + 16] for i in range(0, 16 * count, 16)]


def _keys(rng, count):
    text = rng.randbytes(20 * count).hex()
    return [text[i:i + 40] for i in range(0, 40 * count, 40)]


def init_db(db_path, env=None):
    """The app's own schema, by its own command."""
    env = dict(env or os.environ, LIVESTREAM_INGEST_STAT_URL='')
    subprocess.run([sys.executable, '-m', 'livestream_api', 'init-db', '--db', db_path],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def seed(db_path, channels, users, sessions, seed=1, now=None):
    """Create and fill the database; returns what the benchmark needs to know."""
    if os.path.exists(db_path):
        raise SystemExit('seed: %s exists; seeding needs a new file' % db_path)
    started = time.perf_counter()
    init_db(db_path)
    rng = random.Random(seed)
    now = time.time() if now is None else now
    config = livestream_api.load_config(environ={})
    limits = config['limits']
    app_secret, creator_secret = rng.randbytes(24).hex(), rng.randbytes(24).hex()
    users = max(1, min(users, channels))
    per_channel = sessions // channels if channels else 0
    extra = sessions - per_channel * channels  # the first `extra` channels get one more

    conn = sqlite3.connect(db_path, isolation_level=None)
    # A new file, one commit: a rollback journal in memory (not 300 MB through the WAL),
    # no fsyncs. WAL, as the app wants it, is switched back on after the commit.
    conn.execute('PRAGMA journal_mode = MEMORY')
    conn.execute('PRAGMA synchronous = OFF')
    conn.execute('PRAGMA cache_size = -262144')  # 256 MiB: index builds stay in memory
    conn.execute('BEGIN IMMEDIATE')
    try:
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                'ORDER BY name').fetchall()
        for name, _ in triggers:
            conn.execute('DROP TRIGGER %s' % name)

        client_ids = _ids(rng, 2)
        conn.executemany(
            'INSERT INTO clients (id, public_id, name, role, token_id, secret_hash, created_at) '
            "VALUES (?, ?, ?, 'app', ?, ?, ?)",
            [(1001, client_ids[0], 'bench app server', APP_TOKEN,
              livestream_api.hash_secret(app_secret), now - YEAR),
             (1002, client_ids[1], 'bench creator', CREATOR_TOKEN,
              livestream_api.hash_secret(creator_secret), now - YEAR)])
        app_pk = 1001

        conn.executemany(
            'INSERT INTO users (id, client_id, user_id, max_channels, max_live_channels, '
            'max_bitrate_kbps, max_session_seconds, created_at, updated_at) '
            'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
            ((pk, app_pk, 'user%05d' % pk, limits['max_channels'], limits['max_live_channels'],
              limits['max_bitrate_kbps'], limits['max_session_seconds'],
              now - YEAR + pk, now - YEAR + pk) for pk in range(1, users + 1)))

        channel_ids = _ids(rng, channels)
        keys = _keys(rng, channels)
        needles = {1 + (channels - 1) * k // max(1, NEEDLES - 1) for k in range(NEEDLES)} \
            if channels >= NEEDLES else set(range(1, channels + 1))
        metadata = json.dumps({'category': 'music', 'lang': 'en'}, separators=(',', ':'))
        conn.executemany(
            'INSERT INTO channels (id, public_id, client_id, user_pk, name, description, '
            'metadata, enabled, stream_key, created_at, updated_at) '
            'VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)',
            ((pk, channel_ids[pk - 1], app_pk, (pk - 1) % users + 1,
              'Needle show %d' % pk if pk in needles else 'Channel %06d' % pk,
              'A benchmark channel', metadata, keys[pk - 1],
              now - YEAR + pk * YEAR / (2 * channels), now - YEAR + pk * YEAR / (2 * channels))
             for pk in range(1, channels + 1)))

        # Sorted: appending to the unique index is twice as fast as random inserts, and
        # nothing reads sessions by public id in an order that this would flatter.
        session_ids = sorted(_ids(rng, sessions))
        random_ = rng.random

        video = '{"codec":"H264","width":1280,"height":720,"fps":30.0}'
        audio = '{"codec":"AAC","sampleRate":48000,"channels":2}'

        def session_rows():
            pk = 0
            for channel in range(1, channels + 1):
                for _ in range(per_channel + (channel <= extra)):
                    start = now - YEAR + random_() * (YEAR - 86400)
                    seconds = 300 + random_() * 7000
                    kbps = 2000 + random_() * 4000
                    yield (pk + 1, session_ids[pk], channel, 'bench/%d' % pk, '10.0.0.1',
                           start, start + seconds, start + seconds, 'publisher_left',
                           int(seconds * kbps * 125), kbps, kbps * 1.2, pk % 7, video, audio)
                    pk += 1
        conn.executemany(
            'INSERT INTO sessions (id, public_id, channel_id, ingest_client, addr, started_at, '
            'last_seen_at, ended_at, end_reason, bytes_in, bitrate_kbps, peak_bitrate_kbps, '
            'peak_viewers, video, audio) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
            session_rows())

        for _, sql in triggers:
            conn.execute(sql)
        recompute_counters(conn)
        # The name search index is trigger-kept too: build it from the rows.
        conn.execute("INSERT INTO channel_names (channel_names) VALUES ('rebuild')")
        conn.execute('COMMIT')
    except BaseException:
        conn.execute('ROLLBACK')
        conn.close()
        raise
    conn.execute('PRAGMA journal_mode = WAL')
    conn.close()
    sample = random.Random(seed + 1)
    return {
        'db': db_path, 'channels': channels, 'users': users, 'sessions': sessions,
        'seconds': round(time.perf_counter() - started, 2),
        'app': (APP_TOKEN, app_secret), 'creator': (CREATOR_TOKEN, creator_secret),
        'q': Q_WORD, 'q_matches': len(needles),
        # GET /v1/channels/{id} walks these, spread over the whole table
        'sample_ids': [channel_ids[sample.randrange(channels)] for _ in range(64)],
        # the channel that goes live (stats and the update_publish hook)
        'live': {'id': channel_ids[channels // 2], 'key': keys[channels // 2],
                 'user_id': 'user%05d' % ((channels // 2) % users + 1)},
    }


def recompute_counters(conn):
    """Set every trigger-kept counter to what the rows say."""
    conn.execute('CREATE TEMP TABLE bench_agg AS SELECT channel_id, count(*) AS n, '
                 'total(CASE WHEN ended_at IS NOT NULL THEN ended_at - started_at END) AS secs, '
                 'coalesce(sum(CASE WHEN ended_at IS NOT NULL THEN bytes_in END), 0) AS bytes '
                 'FROM sessions GROUP BY channel_id')
    conn.execute('UPDATE channels SET sessions = 0, live_seconds = 0, bytes_in = 0')
    conn.execute('UPDATE channels SET sessions = a.n, live_seconds = a.secs, bytes_in = a.bytes '
                 'FROM bench_agg a WHERE a.channel_id = channels.id')
    conn.execute('DROP TABLE bench_agg')
    conn.execute('UPDATE users SET channels = 0, live_channels = 0')
    conn.execute('UPDATE users SET channels = a.n, live_channels = a.live FROM '
                 '(SELECT user_pk, count(*) AS n, count(live_session_id) AS live FROM channels '
                 'GROUP BY user_pk) a WHERE a.user_pk = users.id')
    conn.execute('UPDATE clients SET users = (SELECT count(*) FROM users u '
                 'WHERE u.client_id = clients.id)')
    conn.execute('UPDATE clients SET channels = 0, live_channels = 0, sessions = 0, '
                 'live_seconds = 0, bytes_in = 0')
    conn.execute('UPDATE clients SET channels = a.n, live_channels = a.live, sessions = a.s, '
                 'live_seconds = a.secs, bytes_in = a.bytes FROM '
                 '(SELECT client_id, count(*) AS n, count(live_session_id) AS live, '
                 'sum(sessions) AS s, total(live_seconds) AS secs, sum(bytes_in) AS bytes '
                 'FROM channels GROUP BY client_id) a WHERE a.client_id = clients.id')


#: (what, counter query, recomputed query): each pair must give the same rows.
COUNTER_CHECKS = [
    ('clients', 'SELECT id, users, channels, live_channels, sessions, round(live_seconds, 3), '
     'bytes_in FROM clients ORDER BY id',
     'SELECT cl.id, (SELECT count(*) FROM users u WHERE u.client_id = cl.id), '
     '(SELECT count(*) FROM channels c WHERE c.client_id = cl.id), '
     '(SELECT count(live_session_id) FROM channels c WHERE c.client_id = cl.id), '
     '(SELECT count(*) FROM sessions s JOIN channels c ON c.id = s.channel_id '
     ' WHERE c.client_id = cl.id), '
     '(SELECT round(total(s.ended_at - s.started_at), 3) FROM sessions s JOIN channels c '
     ' ON c.id = s.channel_id WHERE c.client_id = cl.id AND s.ended_at IS NOT NULL), '
     '(SELECT coalesce(sum(s.bytes_in), 0) FROM sessions s JOIN channels c '
     ' ON c.id = s.channel_id WHERE c.client_id = cl.id AND s.ended_at IS NOT NULL) '
     'FROM clients cl ORDER BY cl.id'),
    ('users', 'SELECT id, channels, live_channels FROM users ORDER BY id',
     'SELECT u.id, (SELECT count(*) FROM channels c WHERE c.user_pk = u.id), '
     '(SELECT count(live_session_id) FROM channels c WHERE c.user_pk = u.id) '
     'FROM users u ORDER BY u.id'),
    ('channels', 'SELECT id, sessions, round(live_seconds, 3), bytes_in FROM channels '
     'ORDER BY id',
     'SELECT c.id, count(s.id), round(total(CASE WHEN s.ended_at IS NOT NULL '
     'THEN s.ended_at - s.started_at END), 3), '
     'coalesce(sum(CASE WHEN s.ended_at IS NOT NULL THEN s.bytes_in END), 0) '
     'FROM channels c LEFT JOIN sessions s ON s.channel_id = c.id GROUP BY c.id ORDER BY c.id'),
]


def check_counters(db_path):
    """[] when every counter matches its rows; else a description of each mismatch."""
    conn = sqlite3.connect(db_path)
    problems = []
    try:
        for what, counters, truth in COUNTER_CHECKS:
            got, want = conn.execute(counters).fetchall(), conn.execute(truth).fetchall()
            bad = [(g, w) for g, w in zip(got, want) if g != w]
            if len(got) != len(want) or bad:
                problems.append('%s: %d rows differ, e.g. %r' % (what, len(bad), bad[:2]))
        count = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")
        if count.fetchone()[0] == 0:
            problems.append('the triggers are missing')
    finally:
        conn.close()
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--db', required=True)
    parser.add_argument('--channels', type=int, default=1000)
    parser.add_argument('--users', type=int, default=100)
    parser.add_argument('--sessions', type=int, default=10000)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--check', action='store_true', help='verify the counters afterwards')
    args = parser.parse_args()
    info = seed(args.db, args.channels, args.users, args.sessions, args.seed)
    print(json.dumps({k: info[k] for k in ('db', 'channels', 'users', 'sessions', 'seconds')}))
    if args.check:
        problems = check_counters(args.db)
        print('counters: %s' % ('ok' if not problems else '; '.join(problems)))
        return 1 if problems else 0
    return 0


if __name__ == '__main__':
    sys.exit(main())
