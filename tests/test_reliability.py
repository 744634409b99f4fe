"""Issue 7: reliability and security promises, each proven by a test.

1. Crash durability (kill -9 under 16 writers): test_acknowledged_writes_survive_kill_9
2. Contention (32 threads, 20 s, one file): test_contention_no_5xx_no_locks_counters_true
3. Brute-force throttling: test_throttle_*
4. Identical auth failures; no secrets in logs: test_unknown_token_and_wrong_secret_*,
   test_no_secret_in_logs
5. Bad input table: tests/test_bad_input.py (and, through waitress,
   tests/test_serving.py::test_what_waitress_refuses_is_answered_with_an_envelope)
6. Ingest faults: test_hooks_answer_fast_when_stat_*, test_live_stream_survives_api_restart,
   test_hook_with_garbage_fields_is_4xx
7. Clean shutdown: test_sigterm_drains_in_flight_requests_and_exits_0

The subprocess tests run the real server (`python -m livestream_api serve`,
waitress, a file database) on a free 127.0.0.1 port, with a timeout on every
wait, and kill whatever they started when they end.
"""

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import webtest

import livestream_api

from conftest import ADMIN, basic
from e2e_support import wait_for
from server_support import serving

REPO = Path(__file__).resolve().parent.parent
HOOK_SECRET = 'hook-secret-for-reliability-tests-0123456789'


# Helpers: a real server in a subprocess, and a small HTTP client ##############

def free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Api:
    """A keep-alive HTTP/1.1 client for one thread, speaking JSON and Basic auth."""

    def __init__(self, port, auth=ADMIN, timeout=60, keep_alive=True):
        self.port, self.auth, self.timeout, self.keep_alive = port, auth, timeout, keep_alive
        self.conn = None

    def request(self, method, path, body=None, auth='default', headers=None, raw=None,
                content_type='application/json'):
        """(status, {lower-case header: value}, parsed JSON or raw bytes)."""
        auth = self.auth if auth == 'default' else auth
        headers = dict(headers or {})
        if auth:
            headers['Authorization'] = basic(*auth)
        payload = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None)
        if payload is not None:
            headers['Content-Type'] = content_type
        if not self.keep_alive:
            headers['Connection'] = 'close'
        if self.conn is None:
            self.conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=payload, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if not self.keep_alive or response.will_close:
            self.close()
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
        try:
            data = json.loads(data) if data else None
        except ValueError:
            pass
        return response.status, answer_headers, data

    def hook(self, call, name, secret=HOOK_SECRET, **fields):
        form = {'app': 'live', 'addr': '127.0.0.1', 'clientid': '1', 'call': call,
                'name': name}
        form.update(fields)
        return self.request('POST', '/v1/hooks/nginx-rtmp?secret=' + secret, auth=None,
                            raw=urlencode(form).encode(),
                            content_type='application/x-www-form-urlencoded')

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def server_env(**extra):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(('LIVESTREAM_', 'LIVE_TOKEN_'))}
    env.update({'PYTHONPATH': str(REPO), 'LIVE_TOKEN_ID': ADMIN[0],
                'LIVE_TOKEN_SECRET': ADMIN[1], 'LIVESTREAM_INGEST_STAT_URL': '',
                'LIVESTREAM_INGEST_CONTROL_URL': '',
                'LIVESTREAM_INGEST_HOOK_SECRET': HOOK_SECRET})
    env.update(extra)
    return env


class Server:
    """`python -m livestream_api serve` on a database file, output to files."""

    def __init__(self, tmp_path, db, name, **env):
        self.tmp_path, self.db, self.name, self.env = tmp_path, db, name, server_env(**env)
        self.proc = self.port = None
        self.stderr_path = tmp_path / ('%s.stderr' % name)
        self.stdout_path = tmp_path / ('%s.stdout' % name)

    def start(self, timeout=30):
        for _ in range(3):   # another process may take a free port (or the next) first
            self.port = free_port()
            # Each try starts its files afresh: what a test reads is this server's own.
            with open(self.stdout_path, 'wb') as out, open(self.stderr_path, 'wb') as err:
                self.proc = subprocess.Popen(
                    [sys.executable, '-m', 'livestream_api', 'serve', '--db', str(self.db),
                     '--port', str(self.port)], cwd=str(REPO), env=self.env, stdout=out,
                    stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    status, _, _ = Api(self.port, timeout=5, keep_alive=False).request(
                        'GET', '/v1/health', auth=None)
                    if status == 200:
                        return self
                except OSError:
                    pass
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.stop()
                raise AssertionError('%s not healthy within %d s:\n%s'
                                     % (self.name, timeout, self.stderr()))
            if 'address already in use' not in self.stderr().lower():
                break
        raise AssertionError('%s exited with %s:\n%s' % (self.name, self.proc.returncode,
                                                         self.stderr()))

    def stderr(self):
        return self.stderr_path.read_text(errors='replace') if self.stderr_path.exists() \
            else ''

    def stdout(self):
        return self.stdout_path.read_text(errors='replace') if self.stdout_path.exists() \
            else ''

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        """Kill it if it is still running (the `finally` of every subprocess test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def spawn(tmp_path):
    """spawn(db, name, **env) -> a started Server; all are killed at the end."""
    started = []

    def start(db, name='server', **env):
        server = Server(tmp_path, db, '%s-%d' % (name, len(started)), **env)
        started.append(server)
        return server.start()
    try:
        yield start
    finally:
        for server in started:
            server.stop()


def sqlite_one(path, sql, args=()):
    with contextlib.closing(sqlite3.connect(str(path), timeout=30)) as db:
        return db.execute(sql, args).fetchone()


def all_channels(api, user_id):
    """{id: channel} for every channel of a user, by following nextCursor."""
    channels, cursor = {}, None
    for _ in range(10_000):
        path = '/v1/channels?limit=100&userId=%s' % user_id + (
            '&cursor=' + cursor if cursor else '')
        status, _, body = api.request('GET', path)
        assert status == 200, body
        for item in body['data']['items']:
            channels[item['id']] = item
        cursor = body['data']['nextCursor']
        if cursor is None:
            return channels, body['data']['total']
    raise AssertionError('pagination did not end')


# 1. Crash durability ###########################################################

@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9(tmp_path, spawn):
    """16 writers create and rename channels; the server is SIGKILLed ~3 s in.
    After a restart on the same file (no repair step), every write that was
    answered 2xx is there (a rename's value or a later one), the counters agree
    with the rows, and PRAGMA integrity_check says ok."""
    db = tmp_path / 'x.db'
    server = spawn(db, 'crash')
    api = Api(server.port)
    status, _, body = api.request('PUT', '/v1/users/w', {'limits': {'maxChannels': None}})
    assert status == 201, body

    lock, stop = threading.Lock(), threading.Event()
    acked = {}          # channel id -> highest acknowledged rename number (0 = created)
    unexpected = []     # non-2xx answers while the server was up: there must be none

    def writer(n):
        client = Api(server.port, timeout=30)
        try:
            while not stop.is_set():
                try:
                    status, _, body = client.request('POST', '/v1/channels',
                                                     {'userId': 'w', 'name': 'w%d-0' % n})
                except (OSError, http.client.HTTPException):
                    return          # the server is gone
                if status != 201:
                    unexpected.append(('POST', status, body))
                    continue
                channel_id = body['data']['id']
                with lock:
                    acked[channel_id] = 0
                for rename in range(1, 4):
                    try:
                        status, _, body = client.request(
                            'PATCH', '/v1/channels/' + channel_id,
                            {'name': 'w%d-%d' % (n, rename)})
                    except (OSError, http.client.HTTPException):
                        return
                    if status != 200:
                        unexpected.append(('PATCH', status, body))
                        break
                    if body['data']['name'] != 'w%d-%d' % (n, rename):
                        unexpected.append(('PATCH answer', body))
                    with lock:
                        acked[channel_id] = rename
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    server.signal(signal.SIGKILL)
    server.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    snapshot = dict(acked)   # every answer a writer read before the kill
    assert unexpected == []
    assert len(snapshot) >= 20, 'too little load to prove anything: %d' % len(snapshot)

    restarted = spawn(db, 'after-crash')      # starts, migrates, serves: no repair step
    api = Api(restarted.port)
    channels, total = all_channels(api, 'w')
    assert len(channels) == total
    missing = sorted(set(snapshot) - set(channels))
    assert missing == [], '%d acknowledged channels lost' % len(missing)
    for channel_id, rename in snapshot.items():
        name = channels[channel_id]['name']
        assert int(name.split('-')[1]) >= rename, (channel_id, name, rename)
    status, _, body = api.request('GET', '/v1/users/w')
    assert status == 200 and body['data']['usage']['channels'] == len(channels)
    assert 'Traceback' not in restarted.stderr()
    assert sqlite_one(db, 'PRAGMA integrity_check') == ('ok',)
    assert sqlite_one(db, 'PRAGMA journal_mode') == ('wal',)


# 2. Contention #################################################################

@pytest.mark.slow
def test_contention_no_5xx_no_locks_counters_true(tmp_path, spawn):
    """32 threads mix reads, creates, updates, deletes, key rotations and
    nginx-rtmp hook calls (publish / update_publish / publish_done) for 20 s on
    one database file: no 5xx, no transport error, no 'database is locked';
    afterwards every counter agrees with the rows."""
    db = tmp_path / 'x.db'
    # update_interval 600: no session goes stale while the counters are compared.
    server = spawn(db, 'contention', LIVESTREAM_INGEST_UPDATE_INTERVAL='600')
    users = ['u%d' % n for n in range(8)]
    unlimited = {'limits': {'maxChannels': None, 'maxLiveChannels': None,
                            'maxBitrateKbps': None, 'maxSessionSeconds': None}}
    setup = Api(server.port)
    pool, lock = {}, threading.Lock()      # channel id -> stream key
    for user in users:
        assert setup.request('PUT', '/v1/users/' + user, unlimited)[0] == 201
        for _ in range(3):
            status, _, body = setup.request('POST', '/v1/channels',
                                            {'userId': user, 'name': 'seed'})
            assert status == 201
            pool[body['data']['id']] = body['data']['streamId'].split('key=')[1]

    stop = threading.Event()
    outcomes, failures = [], []            # (operation, status); transport errors

    def pick(rng):
        with lock:
            if not pool:
                return None, None
            channel_id = rng.choice(list(pool))
            return channel_id, pool[channel_id]

    def worker(n):
        rng = random.Random(n)
        client = Api(server.port, timeout=60)
        hook = Api(server.port, timeout=60)
        sequence = 0
        try:
            while not stop.is_set():
                sequence += 1
                op = rng.choices(['read', 'create', 'update', 'delete', 'hook', 'rotate',
                                  'user'], [30, 14, 18, 7, 25, 3, 3])[0]
                channel_id, key = pick(rng)
                user = rng.choice(users)
                try:
                    if op == 'read':
                        path = rng.choice(['/v1/channels?limit=50', '/v1/stats',
                                           '/v1/users/' + user, '/v1/users',
                                           '/v1/channels?status=live&userId=' + user,
                                           '/v1/channels/%s' % channel_id,
                                           '/v1/channels/%s/stats' % channel_id,
                                           '/v1/channels/%s/sessions' % channel_id])
                        outcomes.append((op, client.request('GET', path)[0]))
                    elif op == 'create':
                        status, _, body = client.request(
                            'POST', '/v1/channels', {'userId': user, 'name': 'c%d' % n,
                                                     'metadata': {'n': sequence}})
                        outcomes.append((op, status))
                        if status == 201:
                            with lock:
                                pool[body['data']['id']] = \
                                    body['data']['streamId'].split('key=')[1]
                    elif op == 'update' and channel_id:
                        method, body = rng.choice([
                            ('PATCH', {'name': 'p%d' % sequence}),
                            ('PATCH', {'enabled': rng.random() < 0.8}),
                            ('PUT', {'name': 'r%d' % sequence, 'description': 'd'})])
                        outcomes.append((op, client.request(method, '/v1/channels/'
                                                            + channel_id, body)[0]))
                    elif op == 'delete' and channel_id:
                        status = client.request('DELETE', '/v1/channels/' + channel_id)[0]
                        outcomes.append((op, status))
                        if status == 204:
                            with lock:
                                pool.pop(channel_id, None)
                    elif op == 'rotate' and channel_id:
                        status, _, body = client.request(
                            'POST', '/v1/channels/%s/rotate-key' % channel_id)
                        outcomes.append((op, status))
                        if status == 200:
                            with lock:
                                if channel_id in pool:
                                    pool[channel_id] = body['data']['streamId'].split('key=')[1]
                    elif op == 'user':
                        outcomes.append((op, client.request('PATCH', '/v1/users/' + user,
                                                            unlimited)[0]))
                    elif op == 'hook' and channel_id:
                        clientid = '%d-%d' % (n, sequence)
                        status = hook.hook('publish', channel_id, key=key, clientid=clientid)[0]
                        outcomes.append(('publish', status))
                        if status == 200:
                            for _ in range(rng.randint(1, 3)):
                                outcomes.append(('update_publish', hook.hook(
                                    'update_publish', channel_id, key=key,
                                    clientid=clientid)[0]))
                            outcomes.append(('play', hook.hook('play', channel_id,
                                                               clientid=clientid + 'v')[0]))
                            if rng.random() < 0.9:   # some streams stay live
                                outcomes.append(('publish_done', hook.hook(
                                    'publish_done', channel_id, clientid=clientid)[0]))
                except (OSError, http.client.HTTPException) as error:
                    failures.append((op, repr(error)))
        finally:
            client.close()
            hook.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(32)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(21)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert time.monotonic() - started >= 20

    log = server.stderr()
    assert failures == []
    server_errors = [outcome for outcome in outcomes if outcome[1] >= 500]
    assert server_errors == [], log[log.find('Traceback'):][:4000]
    kinds = {op for op, status in outcomes if status < 300}
    assert kinds >= {'read', 'create', 'update', 'delete', 'rotate', 'user', 'publish',
                     'update_publish', 'play', 'publish_done'}, kinds
    assert len(outcomes) >= 500, len(outcomes)
    assert 'database is locked' not in log
    assert 'Traceback' not in log and 'unhandled error' not in log

    # The counters against the rows, through the API and in SQLite.
    api = Api(server.port)
    for user in users:
        status, _, body = api.request('GET', '/v1/users/' + user)
        assert status == 200
        usage = body['data']['usage']
        channels, total = all_channels(api, user)
        assert usage['channels'] == total == len(channels)
        live = [channel for channel in channels.values() if channel['status'] == 'live']
        status, _, body = api.request('GET', '/v1/channels?status=live&limit=1&userId=' + user)
        assert usage['liveChannels'] == body['data']['total'] == len(live)
        assert sqlite_one(db, 'SELECT count(*), coalesce(sum(c.live_session_id IS NOT NULL), 0) '
                              'FROM channels c JOIN users u ON u.id = c.user_pk '
                              'WHERE u.user_id = ?', (user,)) == (usage['channels'],
                                                                 usage['liveChannels'])
    status, _, body = api.request('GET', '/v1/stats')
    stats = body['data']
    assert (stats['users'], stats['channels'], stats['liveChannels'], stats['sessions']) == (
        sqlite_one(db, 'SELECT count(*) FROM users')[0],
        sqlite_one(db, 'SELECT count(*) FROM channels')[0],
        sqlite_one(db, 'SELECT count(*) FROM channels WHERE live_session_id IS NOT NULL')[0],
        sqlite_one(db, 'SELECT count(*) FROM sessions')[0])
    # Exactly the live channels have an open session, and it is theirs.
    assert sqlite_one(db, 'SELECT count(*) FROM sessions WHERE ended_at IS NULL')[0] == \
        stats['liveChannels']
    assert sqlite_one(db, 'SELECT count(*) FROM channels c JOIN sessions s '
                          'ON s.id = c.live_session_id WHERE s.ended_at IS NULL '
                          'AND s.channel_id = c.id')[0] == stats['liveChannels']
    assert sqlite_one(db, 'SELECT sum(users), sum(channels), sum(live_channels), '
                          'sum(sessions) FROM clients') == (
        stats['users'], stats['channels'], stats['liveChannels'], stats['sessions'])
    assert sqlite_one(db, 'PRAGMA integrity_check') == ('ok',)


# 3. Brute-force throttling #####################################################

def as_addr(app, addr, auth=None):
    test_app = webtest.TestApp(app, extra_environ={'REMOTE_ADDR': addr})
    if auth:
        test_app.authorization = ('Basic', auth)
    return test_app


def fail_logins(app, addr, count, token_id=ADMIN[0]):
    for attempt in range(count):
        response = as_addr(app, addr, (token_id, 'wrong-%d' % attempt)).get(
            '/v1/stats', expect_errors=True)
        assert response.status_int == 401 and response.json['ec'] == 3, response.json


def assert_throttled(response, longest):
    assert response.status_int == 429, response.body
    assert response.content_type == 'application/json'
    assert response.json['ec'] == 9
    retry_after = int(response.headers['Retry-After'])
    assert 1 <= retry_after <= longest
    assert response.json['data']['retryAfter'] == retry_after


def test_throttle_holds_an_address_after_10_failures(make_app):
    _, app = make_app()
    addr = '203.0.113.7'
    # Unknown token ids and wrong secrets both count.
    fail_logins(app, addr, 5)
    fail_logins(app, addr, 4, token_id='no-such-token')
    assert as_addr(app, addr, ADMIN).get('/v1/stats').status_int == 200   # 9: not yet
    fail_logins(app, addr, 1)                                             # the 10th
    for auth in (ADMIN, (ADMIN[0], 'wrong'), ('nobody', 'x')):
        assert_throttled(as_addr(app, addr, auth).get('/v1/stats', expect_errors=True), 61)
    # Every route, write routes and bad requests included, once credentials are sent.
    response = as_addr(app, addr, ADMIN).post_json('/v1/channels', {'userId': 'u', 'name': 'n'},
                                                   expect_errors=True)
    assert_throttled(response, 61)
    assert_throttled(as_addr(app, addr, ADMIN).get('/v1/no-such-route', expect_errors=True), 61)
    assert int(as_addr(app, addr, ADMIN).get('/v1/stats', expect_errors=True)
               .headers['Retry-After']) >= 59                             # "for the next minute"
    # A garbled Authorization header is still credentials.
    response = as_addr(app, addr).get('/v1/stats', headers={'Authorization': 'Basic !!'},
                                      expect_errors=True)
    assert_throttled(response, 61)
    # No Authorization header: not an attempt, so a plain 401, and public routes work.
    response = as_addr(app, addr).get('/v1/stats', expect_errors=True)
    assert response.status_int == 401 and response.json['ec'] == 3
    assert as_addr(app, addr).get('/v1/health').status_int == 200
    # Other addresses are unaffected.
    assert as_addr(app, '203.0.113.8', ADMIN).get('/v1/stats').status_int == 200
    assert as_addr(app, '2001:db8::7', ADMIN).get('/v1/stats').status_int == 200


def test_throttle_requests_without_credentials_are_not_attempts(make_app):
    _, app = make_app()
    addr = '198.51.100.1'
    for _ in range(50):
        response = as_addr(app, addr).post_json('/v1/channels', {}, expect_errors=True)
        assert response.status_int == 401
    assert as_addr(app, addr, ADMIN).get('/v1/stats').status_int == 200
    assert len(app.livestream.throttle) == 0


def test_throttle_hold_expires_and_the_right_secret_works_again(make_app, clock):
    """[auth] throttle_seconds = 1: the window and the hold are 1 s (of svc.clock)."""
    _, app = make_app(auth={'throttle_seconds': '1'})
    addr = '192.0.2.44'
    fail_logins(app, addr, 10)
    assert_throttled(as_addr(app, addr, ADMIN).get('/v1/stats', expect_errors=True), 2)
    clock.advance(1.1)
    assert as_addr(app, addr, ADMIN).get('/v1/stats').status_int == 200
    # Failures further apart than the window do not add up.
    fail_logins(app, addr, 9)
    clock.advance(1.1)
    fail_logins(app, addr, 1)
    assert as_addr(app, addr, ADMIN).get('/v1/stats').status_int == 200


def test_throttle_threshold_is_configurable(make_app):
    _, app = make_app(auth={'throttle_failures': '3', 'throttle_seconds': '120'})
    fail_logins(app, '192.0.2.9', 3)
    assert_throttled(as_addr(app, '192.0.2.9', ADMIN).get('/v1/stats', expect_errors=True), 121)


def test_throttle_a_failure_during_a_hold_leaves_the_hold_as_it_was():
    throttle = livestream_api.Throttle(failures=3, seconds=60)
    for second in range(3):
        throttle.failed('192.0.2.5', 1000.0 + second)
    assert throttle.held_for('192.0.2.5', 1002.0) == 60
    throttle.failed('192.0.2.5', 1010.0)
    assert throttle.held_for('192.0.2.5', 1061.0) == 1    # the hold keeps its end
    assert throttle.held_for('192.0.2.5', 1062.0) == 0
    # failed() tells its caller of the hold (a 429, not a 401), and a fresh count after it.
    assert throttle.failed('192.0.2.5', 1020.0) == 42
    assert [throttle.failed('192.0.2.5', 1062.0 + second) for second in range(3)] == [0, 0, 0]
    assert throttle.held_for('192.0.2.5', 1064.0) == 60


def test_throttle_bursts_over_many_connections_get_exactly_the_allowed_answers(make_app):
    """600 wrong logins over 40 keep-alive connections at once, through waitress's
    8 threads: exactly throttle_failures of them are answered 401, every other 429."""
    _, app = make_app()
    statuses, start = [], threading.Barrier(40)

    def burst(port, connection):
        api = Api(port, auth=(ADMIN[0], 'wrong-%d' % connection))
        start.wait(timeout=30)
        statuses.extend(api.request('GET', '/v1/stats')[0] for _ in range(15))
        api.close()

    with serving(app) as port:
        threads = [threading.Thread(target=burst, args=(port, n)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(statuses) == 600
    assert statuses.count(401) == app.livestream.config['auth']['throttle_failures'] == 10
    assert statuses.count(429) == 590


@pytest.mark.slow
def test_throttle_memory_is_bounded(make_app):
    """20,000 distinct addresses, each failing, through the WSGI app: the hold
    table never holds more than its capacity."""
    _, app = make_app()
    throttle = app.livestream.throttle
    header = basic('nobody', 'wrong')
    largest = 0
    for n in range(20_000):
        environ = {'REQUEST_METHOD': 'GET', 'PATH_INFO': '/v1/stats', 'SERVER_NAME': 'x',
                   'SERVER_PORT': '80', 'wsgi.url_scheme': 'http', 'wsgi.input': None,
                   'REMOTE_ADDR': '10.%d.%d.%d' % (n >> 16, (n >> 8) & 255, n & 255),
                   'HTTP_AUTHORIZATION': header}
        statuses = []
        body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b''.join(body)
        assert statuses[0].startswith('401')
        largest = max(largest, len(throttle))
    assert throttle.capacity <= 10_000
    assert largest <= throttle.capacity
    assert len(throttle) == throttle.capacity


def test_wrong_hook_secret_is_403_and_never_throttles(make_app):
    """The ingest's address must never be locked out: wrong hook secrets get
    403 (ec 4) and put nothing on hold; the same address then calls the hook
    with the right secret, and the API with a token, fine."""
    _, app = make_app()
    addr = '127.0.0.1'
    admin = as_addr(app, addr, ADMIN)
    channel = admin.post_json('/v1/channels', {'userId': 'u', 'name': 'n'}).json['data']
    hook = as_addr(app, addr)
    for attempt in range(30):
        for url in ('/v1/hooks/nginx-rtmp?secret=wrong%d' % attempt, '/v1/hooks/nginx-rtmp'):
            response = hook.post(url, {'call': 'publish', 'name': channel['id']},
                                 expect_errors=True)
            assert response.status_int == 403 and response.json['ec'] == 4
    assert len(app.livestream.throttle) == 0
    response = hook.post('/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret,
                         {'call': 'publish', 'name': channel['id'], 'app': 'live',
                          'key': channel['streamId'].split('key=')[1], 'clientid': '1'})
    assert response.status_int == 200
    assert admin.get('/v1/stats').status_int == 200


# 4. Identical failures; no secrets in logs #####################################

def test_unknown_token_and_wrong_secret_answer_identically(make_app):
    _, app = make_app()
    unknown = as_addr(app, '192.0.2.1', ('no-such-token', ADMIN[1])).get(
        '/v1/channels', expect_errors=True)
    wrong = as_addr(app, '192.0.2.2', (ADMIN[0], 'not-the-secret')).get(
        '/v1/channels', expect_errors=True)
    assert unknown.status == wrong.status == '401 Unauthorized'
    assert sorted(unknown.headerlist) == sorted(wrong.headerlist)
    assert unknown.body == wrong.body
    assert unknown.json['ec'] == 3
    # Also when a token id exists but belongs to a deleted client.
    admin = as_addr(app, '192.0.2.3', ADMIN)
    client = admin.post_json('/v1/clients', {'name': 'gone'}).json['data']
    admin.delete('/v1/clients/' + client['tokenId'])
    deleted = as_addr(app, '192.0.2.4', (client['tokenId'], client['tokenSecret'])).get(
        '/v1/channels', expect_errors=True)
    assert (deleted.status, sorted(deleted.headerlist), deleted.body) == (
        wrong.status, sorted(wrong.headerlist), wrong.body)


@pytest.mark.slow
def test_no_secret_in_logs(tmp_path, spawn):
    """Run the real server with its output captured, use every secret there is
    (token secrets, stream keys, the hook secret, Authorization headers, wrong
    secrets), then look for each of them in everything it wrote."""
    server = spawn(tmp_path / 'x.db', 'logs')
    api = Api(server.port)
    status, _, body = api.request('POST', '/v1/clients', {'name': 'app', 'role': 'app'})
    assert status == 201
    token_id, first_secret = body['data']['tokenId'], body['data']['tokenSecret']
    status, _, body = api.request('POST', '/v1/clients/%s/rotate' % token_id)
    assert status == 200
    app_secret = body['data']['tokenSecret']
    app_api = Api(server.port, auth=(token_id, app_secret))
    status, _, body = app_api.request('POST', '/v1/channels', {'userId': 'u', 'name': 'n'})
    assert status == 201
    channel_id, key = body['data']['id'], body['data']['streamId'].split('key=')[1]
    status, _, body = app_api.request('POST', '/v1/channels/%s/rotate-key' % channel_id)
    assert status == 200
    new_key = body['data']['streamId'].split('key=')[1]

    hook = Api(server.port)
    assert hook.hook('publish', channel_id, key=key)[0] == 403              # the old key
    assert hook.hook('publish', channel_id, key=new_key)[0] == 200
    assert hook.hook('update_publish', channel_id, key=new_key)[0] == 200
    assert hook.hook('publish', channel_id, key=new_key, clientid='2')[0] == 403  # 2nd encoder
    assert hook.hook('publish_done', channel_id)[0] == 200
    wrong_hook_secret = 'wrong-hook-secret-9f8e7d6c5b4a'
    assert hook.hook('publish', channel_id, key=new_key, secret=wrong_hook_secret)[0] == 403
    assert hook.hook('publish', channel_id + 'x', key=new_key)[0] == 403
    wrong = ['wrong-secret-%d-abcdef' % n for n in range(3)]
    for secret in wrong:
        assert Api(server.port, auth=(token_id, secret)).request('GET', '/v1/stats')[0] == 401
    assert Api(server.port, auth=(token_id, first_secret)).request('GET', '/v1/stats')[0] == 401
    assert Api(server.port, auth=('unknown-id', 'unknown-secret-xyz')).request(
        'GET', '/v1/stats')[0] == 401
    # A secret in a query string (where it does not belong) is not logged either.
    assert api.request('GET', '/v1/stats?secret=' + app_secret)[0] == 400

    server.signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0
    output = server.stderr() + server.stdout()
    # The log is on and says what happened (so the absence below means something).
    assert 'POST /v1/channels 201' in output
    assert '/v1/hooks/nginx-rtmp 403' in output
    assert 'wrong stream key' in output and 'hook refused' in output
    secrets = {'admin secret': ADMIN[1], 'first app secret': first_secret,
               'app secret': app_secret, 'stream key': key, 'new stream key': new_key,
               'hook secret': HOOK_SECRET, 'wrong hook secret': wrong_hook_secret,
               'unknown secret': 'unknown-secret-xyz'}
    secrets.update(('wrong secret %d' % n, secret) for n, secret in enumerate(wrong))
    for auth in [ADMIN, (token_id, app_secret), (token_id, wrong[0])]:
        secrets['Authorization %s' % auth[0]] = basic(*auth).split()[1]
    leaked = [what for what, secret in secrets.items() if secret in output]
    assert leaked == []
    assert 'Authorization' not in output and 'Basic ' not in output


@pytest.mark.slow
def test_unknown_token_and_wrong_secret_identical_over_http(tmp_path, spawn):
    """The same over a real waitress server: status, every header but Date, body."""
    server = spawn(tmp_path / 'x.db', 'auth')
    answers = []
    for auth in (('no-such-token', ADMIN[1]), (ADMIN[0], 'not-the-secret')):
        status, headers, body = Api(server.port, auth=auth).request('GET', '/v1/channels')
        headers.pop('date')
        answers.append((status, sorted(headers.items()), body))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and answers[0][2]['ec'] == 3


# 6. Ingest faults ##############################################################

class SilentServer:
    """A TCP server that accepts connections and never answers (or, with
    trickle, sends a byte of a never-ending header every 0.2 s)."""

    def __init__(self, trickle=False):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.trickle, self.stop, self.accepted = trickle, threading.Event(), []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)
                if self.trickle:
                    conn.send(b'HTTP/1.1 200 OK\r\n')
            except OSError:
                pass
            if self.trickle:     # one byte of an endless header line, every 0.1 s
                for conn in list(self.accepted):
                    with contextlib.suppress(OSError):
                        conn.send(b'X')

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def live_channel(admin, post_hook, user='u'):
    channel = admin.post_json('/v1/channels', {'userId': user, 'name': 'n'}).json['data']
    key = channel['streamId'].split('key=')[1]
    assert post_hook('publish', channel['id'], key=key).status_int == 200
    return channel['id'], key


@pytest.mark.slow
@pytest.mark.parametrize('stat', ['closed port', 'hangs', 'trickles'])
def test_hooks_answer_fast_when_stat_is_down_or_hangs(make_app, stat):
    silent = None
    if stat == 'closed port':
        url = 'http://127.0.0.1:%d/stat' % free_port()
    else:
        silent = SilentServer(trickle=stat == 'trickles')
        url = 'http://127.0.0.1:%d/stat' % silent.port
    try:
        _, app = make_app(ingest={'stat_url': url})
        poller = app.livestream.pollers['default']
        poller.start()  # its thread reads the stat URL as serve's does, stuck or failing
        admin = as_addr(app, '127.0.0.1', ADMIN)

        def within(seconds, request):
            """request() must answer within `seconds`; a stuck one fails the test
            (and is released by closing the silent server in `finally`)."""
            answer, started = [], time.monotonic()
            worker = threading.Thread(target=lambda: answer.append(request()), daemon=True)
            worker.start()
            worker.join(timeout=5)
            elapsed = time.monotonic() - started
            assert answer, 'no answer within 5 s'
            assert elapsed < seconds, 'answered in %.2f s' % elapsed
            return answer[0]

        def post_hook(call, name, **fields):
            form = dict({'call': call, 'name': name, 'app': 'live', 'clientid': '1'}, **fields)
            return within(1.0, lambda: as_addr(app, '127.0.0.1').post(
                '/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret, form,
                expect_errors=True))

        channel_id, key = live_channel(admin, post_hook)
        for _ in range(3):
            assert post_hook('update_publish', channel_id, key=key).status_int == 200
        stats = within(1.0, lambda: admin.get('/v1/stats')).json['data']
        assert stats['system']['ingest'] == [{'name': 'default', 'kind': 'nginx-rtmp',
                                              'url': url, 'reachable': False, 'streams': 0,
                                              'bitrateKbpsIn': 0}]
        assert stats['liveChannels'] == 1
        # Several hooks at once (one per encoder) are not queued behind one another.
        others = [live_channel(admin, post_hook, 'other%d' % n) for n in range(3)]
        times, errors = [], []

        def update(channel):
            started = time.monotonic()
            response = as_addr(app, '127.0.0.1').post(
                '/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret,
                {'call': 'update_publish', 'name': channel[0], 'key': channel[1],
                 'clientid': '1', 'app': 'live'}, expect_errors=True)
            times.append(time.monotonic() - started)
            if response.status_int != 200:
                errors.append(response.body)
        threads = [threading.Thread(target=update, args=(channel,))
                   for channel in others + [(channel_id, key)]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=5)
        assert errors == [] and len(times) == 4, (errors, times)
        assert max(times) < 1.0, times
        assert post_hook('publish_done', channel_id).status_int == 200
        if silent:       # the stat URL was really asked, and really did not answer
            wait_for(lambda: silent.accepted, 10, 'the poller to ask the stat URL')
    finally:
        if silent:
            silent.close()
        poller.stop()


@pytest.mark.slow
@pytest.mark.parametrize('how', ['SIGKILL', 'SIGTERM'])
def test_live_stream_survives_api_restart(tmp_path, spawn, how):
    """A stream goes live, the API is killed and restarted on the same file; the
    ingest's next update_publish calls are allowed, the session is the same one,
    and publish_done ends it with endReason publisher_left."""
    db = tmp_path / 'x.db'
    first = spawn(db, 'before-restart')
    api = Api(first.port)
    status, _, body = api.request('POST', '/v1/channels', {'userId': 'u', 'name': 'live'})
    channel_id, key = body['data']['id'], body['data']['streamId'].split('key=')[1]
    hook = Api(first.port)
    assert hook.hook('publish', channel_id, key=key, clientid='42')[0] == 200
    assert hook.hook('update_publish', channel_id, key=key, clientid='42')[0] == 200
    status, _, body = api.request('GET', '/v1/channels/%s/stats' % channel_id)
    assert body['data']['status'] == 'live'
    session_id = body['data']['current']['sessionId']

    first.signal(getattr(signal, how))
    first.wait(timeout=15)
    second = spawn(db, 'after-restart')
    api, hook = Api(second.port), Api(second.port)
    for _ in range(3):
        status, _, body = hook.hook('update_publish', channel_id, key=key, clientid='42')
        assert status == 200, body
        status, _, body = api.request('GET', '/v1/channels/%s/stats' % channel_id)
        assert body['data']['status'] == 'live'
        assert body['data']['current']['sessionId'] == session_id
    status, _, body = hook.hook('publish_done', channel_id, clientid='42')
    assert status == 200 and body['data'] == {'ended': True}
    status, _, body = api.request('GET', '/v1/channels/%s/sessions' % channel_id)
    assert body['data']['total'] == 1
    session = body['data']['items'][0]
    assert session['id'] == session_id
    assert session['endReason'] == 'publisher_left' and session['endedAt'] is not None
    status, _, body = api.request('GET', '/v1/channels/' + channel_id)
    assert body['data']['status'] == 'idle'


@pytest.mark.parametrize('form', [
    {},
    {'name': 'aaaaaaaaaaaaaaaa'},
    {'call': 'publish'},
    {'call': 'update_publish'},
    {'call': 'publish_done', 'name': ''},
    {'call': 'publish', 'name': 'not a channel id'},
    {'call': 'update_publish', 'name': '\x00\x01'},
    {'call': 'publish_done', 'name': 'x' * 5000},
    {'call': '\xff\xfe garbage', 'name': 'aaaaaaaaaaaaaaaa'},
    {'call': 'publish', 'name': 'aaaaaaaaaaaaaaaa'},                   # no such channel
    {'call': 'update_publish', 'name': 'aaaaaaaaaaaaaaaa', 'key': 'k'},  # no such channel
], ids=['empty', 'no call', 'no name (publish)', 'no name (update)', 'empty name',
        'name not an id', 'control characters', 'over-long name', 'garbage call',
        'unknown channel (publish)', 'unknown channel (update)'])
def test_hook_with_garbage_fields_is_4xx(app, form):
    before = sqlite_one(app.livestream.store.path, 'SELECT count(*) FROM sessions')
    response = webtest.TestApp(app).post(
        '/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret, form, expect_errors=True)
    assert response.status_int in (400, 403), response.body
    assert response.json['ec'] == (1 if response.status_int == 400 else 4)
    assert sqlite_one(app.livestream.store.path, 'SELECT count(*) FROM sessions') == before


# 7. Clean shutdown #############################################################

@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path, spawn):
    """8 threads create channels in a loop (4 on keep-alive connections, 4 with
    a new connection each time); SIGTERM arrives mid-load. Every request gets a
    2xx or a clean connection refusal/close (never a 5xx or another status),
    the process exits 0 within a few seconds, every acknowledged channel is in
    the file, and no hot journal is left: the `-wal` file is gone or empty (the
    server checkpointed and closed every connection) and there is no rollback
    `-journal`. PRAGMA integrity_check says ok."""
    db = tmp_path / 'x.db'
    server = spawn(db, 'shutdown')
    assert Api(server.port).request('PUT', '/v1/users/w',
                                    {'limits': {'maxChannels': None}})[0] == 201
    lock, stop = threading.Lock(), threading.Event()
    results = []     # (started, ended, outcome, channel id)
    sigterm_at = []

    def writer(n):
        client = Api(server.port, timeout=30, keep_alive=n < 4)
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, _, body = client.request('POST', '/v1/channels',
                                                 {'userId': 'w', 'name': 's%d' % n})
                outcome = status
                channel_id = body['data']['id'] if status == 201 else None
            except ConnectionRefusedError:
                outcome, channel_id = 'refused', None
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.IncompleteRead) as error:
                outcome, channel_id = 'closed: %r' % error, None
            except Exception as error:       # a timeout, a bad answer: fails below
                outcome, channel_id = 'error: %r' % error, None
            with lock:
                results.append((started, time.monotonic(), outcome, channel_id))
            if outcome == 'refused':
                return
        client.close()

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    sigterm_at.append(time.monotonic())
    server.signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=8)
    finally:
        exited_after = time.monotonic() - sigterm_at[0]
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert code == 0, server.stderr()
    assert exited_after < 5, 'exited %.1f s after SIGTERM' % exited_after
    outcomes = [outcome for _, _, outcome, _ in results]
    bad = [outcome for outcome in outcomes
           if not (outcome == 201 or outcome == 'refused' or str(outcome).startswith('closed'))]
    assert bad == []
    assert all(thread.is_alive() is False for thread in threads)
    # Requests that were in flight when SIGTERM arrived finished with a 201.
    drained = [r for r in results if r[0] < sigterm_at[0] < r[1] and r[2] == 201]
    assert drained, 'no request was in flight at SIGTERM: the test proved nothing'
    assert 'Traceback' not in server.stderr()
    assert 'stopped' in server.stderr()

    wal, journal = Path(str(db) + '-wal'), Path(str(db) + '-journal')
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
    assert not journal.exists()
    acknowledged = {r[3] for r in results if r[2] == 201}
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        assert conn.execute('PRAGMA integrity_check').fetchone() == ('ok',)
        stored = {row[0] for row in conn.execute('SELECT public_id FROM channels')}
    # Exactly: a request the server took on was answered; one it dropped (on a
    # keep-alive connection closed by the drain) was not executed.
    assert stored == acknowledged
    assert len(acknowledged) >= 20
