"""Issue 22: backups and continuous replication, each tested on a real server.

1. `backup` under 8 writers: test_backup_under_8_writers_is_whole_and_checked
2. `restore`: test_restore_refuses_a_running_database_and_an_existing_target,
   test_a_restored_database_serves
3. Litestream: test_litestream_gives_back_1000_channels_after_kill_9_and_a_lost_disk
   (it measures the RPO and RTO the README states), test_sigterm_under_litestream_exits_0
4. With a live nginx-rtmp stream: test_a_live_session_is_not_stuck_live_after_a_litestream_restore
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import livestream_api

from test_reliability import REPO, Api, free_port, server_env, spawn  # noqa: F401 (fixture)

LITESTREAM = shutil.which('litestream') or shutil.which(
    'litestream', path=os.path.dirname(sys.executable))
needs_litestream = pytest.mark.skipif(
    LITESTREAM is None and os.environ.get('LIVESTREAM_E2E') != '1',
    reason="litestream is not installed (pip install '.[replicate]')")
MANY = {'LIVESTREAM_LIMITS_MAX_CHANNELS': '100000'}


def cli(*args, env=None):
    """Run `livestream-api ARGS` in a subprocess: (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, '-m', 'livestream_api'] + list(args),
                          cwd=str(REPO), env=env or server_env(), capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def create_channels(port, user, count, acknowledged, threads=1):
    """POST `count` channels for `user` over `threads` connections; each id is put
    in `acknowledged` (a dict id -> time of the 201) once answered."""
    def work(part):
        api = Api(port)
        for n in range(part, count, threads):
            status, _, body = api.request('POST', '/v1/channels',
                                          {'userId': user, 'name': 'c%d' % n})
            assert status == 201, body
            acknowledged[body['data']['id']] = time.time()
        api.close()
    workers = [threading.Thread(target=work, args=(part,)) for part in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def channel_ids(path):
    with sqlite3.connect(str(path)) as db:
        return {row[0] for row in db.execute('SELECT public_id FROM channels')}


# 1. backup ####################################################################

@pytest.mark.slow
def test_backup_under_8_writers_is_whole_and_checked(tmp_path, spawn):
    server = spawn(tmp_path / 'live.db', **MANY)
    acknowledged, stop, errors = {}, threading.Event(), []

    def writer(n):
        api = Api(server.port)
        try:
            while not stop.is_set():
                status, _, body = api.request('POST', '/v1/channels',
                                              {'userId': 'w%d' % n, 'name': 'c'})
                assert status == 201, body
                acknowledged[body['data']['id']] = time.time()
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in writers:
        thread.start()
    time.sleep(1)
    before = set(acknowledged)
    status, out, err = cli('backup', '--db', str(server.db), str(tmp_path / 'copy.db'))
    after = set(acknowledged)
    stop.set()
    for thread in writers:
        thread.join(timeout=30)
    assert not errors, errors
    assert status == 0, err
    assert 'integrity ok' in out and 'channels' in out
    copy = tmp_path / 'copy.db'
    with sqlite3.connect(str(copy)) as db:
        assert db.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
    copied = channel_ids(copy)
    assert before and before <= copied
    assert len(after) > len(before)  # the writers went on while it copied
    assert not list(tmp_path.glob('copy.db.tmp-*'))
    status, _, body = Api(server.port).request('GET', '/v1/stats')
    assert body['data']['system']['lastBackupAt'] is not None


def test_a_replicated_store_leaves_checkpoints_to_litestream(tmp_path):
    """With a reader holding a snapshot (as Litestream does), close() returns at once
    and leaves the WAL to it: no TRUNCATE checkpoint waiting out busy_timeout."""
    db = tmp_path / 'live.db'
    config = livestream_api.load_config(environ={}, overrides={
        'database': {'path': str(db), 'replicated': 'true'}, 'ingest': {'stat_url': ''}})
    store = livestream_api.create_app(config).livestream.store
    assert store.replicated
    reader = sqlite3.connect(str(db), isolation_level=None)
    reader.execute('BEGIN')
    reader.execute('SELECT count(*) FROM settings').fetchone()
    with store.transaction() as tx:
        tx.execute("INSERT INTO settings (name, value) VALUES ('x', 1)")
    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 5
    assert os.path.getsize(str(db) + '-wal') > 0
    reader.execute('COMMIT')
    reader.close()


def test_backup_failure_is_a_clear_message_and_exit_1(tmp_path):
    db = tmp_path / 'live.db'
    assert cli('init-db', '--db', str(db))[0] == 0
    status, out, err = cli('backup', '--db', str(db), str(tmp_path / 'nowhere' / 'copy.db'))
    assert status == 1 and out == ''
    assert 'backup to %s failed' % (tmp_path / 'nowhere' / 'copy.db') in err


def test_last_backup_at_is_in_admin_stats(app, admin):
    assert 'lastBackupAt' not in admin.get('/v1/stats').json['data']['system']
    app.livestream.store.backup(app.livestream.store.path + '.copy', 1_800_000_000)
    assert (admin.get('/v1/stats').json['data']['system']['lastBackupAt']
            == '2027-01-15T08:00:00Z')


# 2. restore ###################################################################

@pytest.mark.slow
def test_restore_refuses_a_running_database_and_an_existing_target(tmp_path, spawn):
    server = spawn(tmp_path / 'live.db')
    assert cli('backup', '--db', str(server.db), str(tmp_path / 'copy.db'))[0] == 0
    status, _, err = cli('restore', '--db', str(server.db), '--force',
                         str(tmp_path / 'copy.db'))
    assert status == 1 and 'is in use' in err and 'stop `serve`' in err
    assert Api(server.port).request('GET', '/v1/health', auth=None)[0] == 200
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    status, _, err = cli('restore', '--db', str(server.db), str(tmp_path / 'copy.db'))
    assert status == 1 and 'pass --force' in err
    (tmp_path / 'bad.db').write_bytes(b'not a database' * 100)
    status, _, err = cli('restore', '--db', str(tmp_path / 'new.db'), str(tmp_path / 'bad.db'))
    assert status == 1 and 'restore refused' in err
    assert not (tmp_path / 'new.db').exists()


@pytest.mark.slow
def test_a_restored_database_serves(tmp_path, spawn):
    server = spawn(tmp_path / 'live.db')
    status, _, body = Api(server.port).request('POST', '/v1/channels',
                                               {'userId': 'u', 'name': 'kept'})
    channel = body['data']
    assert cli('backup', '--db', str(server.db), str(tmp_path / 'copy.db'))[0] == 0
    Api(server.port).request('DELETE', '/v1/channels/' + channel['id'])
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    status, out, err = cli('restore', '--force', '--db', str(server.db),
                           str(tmp_path / 'copy.db'))
    assert status == 0, err
    again = spawn(server.db, 'restored')
    status, _, body = Api(again.port).request('GET', '/v1/channels/' + channel['id'])
    assert status == 200 and body['data']['streamId'] == channel['streamId']
    key = channel['streamId'].split('key=')[1]
    assert Api(again.port).hook('publish', channel['id'], key=key)[0] == 200


def test_restore_refuses_a_schema_newer_than_this_version(tmp_path):
    db = tmp_path / 'live.db'
    assert cli('init-db', '--db', str(db))[0] == 0
    assert cli('backup', '--db', str(db), str(tmp_path / 'copy.db'))[0] == 0
    with sqlite3.connect(str(tmp_path / 'copy.db')) as copy:
        copy.execute('PRAGMA user_version = 999')
    status, _, err = cli('restore', '--db', str(tmp_path / 'new.db'), str(tmp_path / 'copy.db'))
    assert status == 1 and 'schema version 999' in err
    assert not (tmp_path / 'new.db').exists() and not list(tmp_path.glob('new.db.*'))


# 3. Litestream ################################################################

class Replicated:
    """`litestream replicate -exec "livestream-api serve"` on one database, in its own
    process group, with a file replica."""

    def __init__(self, tmp_path, db):
        self.tmp_path, self.db = tmp_path, db
        self.conf = tmp_path / 'litestream.yml'
        status, out, err = cli('litestream-conf', '--db', str(db), '--replica',
                               'file://%s' % (tmp_path / 'replica'))
        assert status == 0, err
        self.conf.write_text(out)
        self.proc = None

    def start(self, timeout=30):
        self.port = free_port()
        # The hooks on a port of the system's choosing: the API's port + 1 may be taken.
        env = server_env(LIVESTREAM_DATABASE_REPLICATED='true',
                         LIVESTREAM_SERVER_HOOK_LISTEN='127.0.0.1:0', **MANY)
        serve = '%s -m livestream_api serve --db %s --port %d' % (sys.executable, self.db,
                                                                  self.port)
        self.log = open(self.tmp_path / 'litestream.log', 'ab')
        self.proc = subprocess.Popen([LITESTREAM, 'replicate', '-config', str(self.conf),
                                      '-exec', serve], cwd=str(REPO), env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        wait_healthy(self.port, timeout, self.proc)
        return self

    def output(self):
        return (self.tmp_path / 'litestream.log').read_text(errors='replace')

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


def wait_healthy(port, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            if Api(port, timeout=5, keep_alive=False).request(
                    'GET', '/v1/health', auth=None)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError('not healthy within %d s' % timeout)


@pytest.fixture
def replicated(tmp_path):
    if LITESTREAM is None:
        pytest.fail("LIVESTREAM_E2E=1 but litestream is not installed: pip install "
                    "'.[replicate]'")
    made = []

    def start(db):
        made.append(Replicated(tmp_path, db))
        return made[-1].start()
    yield start
    for one in made:
        one.stop()


@needs_litestream
@pytest.mark.slow
def test_litestream_gives_back_1000_channels_after_kill_9_and_a_lost_disk(
        tmp_path, spawn, replicated):
    db = tmp_path / 'live.db'
    primary = replicated(db)
    acknowledged, trickle = {}, {}
    create_channels(primary.port, 'u', 1000, acknowledged, threads=4)
    # Writes go on during the 3 s before the crash: the newest lost one tells the RPO.
    stop = threading.Event()

    def trickler():
        api = Api(primary.port)
        while not stop.is_set():
            try:
                status, _, body = api.request('POST', '/v1/channels',
                                              {'userId': 't', 'name': 't'})
            except OSError:  # the request in flight at the kill: never acknowledged
                return
            assert status == 201
            trickle[body['data']['id']] = time.time()
            time.sleep(0.05)
    thread = threading.Thread(target=trickler)
    thread.start()
    time.sleep(3)
    killed_at = time.time()
    os.killpg(primary.proc.pid, signal.SIGKILL)
    primary.proc.wait(timeout=10)
    stop.set()
    thread.join(timeout=30)
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(str(db) + suffix):
            os.unlink(str(db) + suffix)

    started = time.monotonic()
    restore = subprocess.run([LITESTREAM, 'restore', '-config', str(primary.conf), str(db)],
                             capture_output=True, text=True, timeout=60)
    assert restore.returncode == 0, restore.stderr
    server = spawn(db, 'after-restore')
    rto = time.monotonic() - started

    restored = channel_ids(db)
    assert set(acknowledged) <= restored
    with sqlite3.connect(str(db)) as check:
        assert check.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
    lost = [at for channel, at in trickle.items() if channel not in restored]
    rpo = killed_at - min(lost) if lost else 0.0
    assert rpo <= 2.0, 'writes acknowledged %.1f s before the kill were lost' % rpo
    assert rto < 10, rto
    print('\nRPO %.2f s (%d of %d late writes lost), RTO %.2f s (restore + serve healthy)'
          % (rpo, len(lost), len(trickle), rto))
    api = Api(server.port)
    for channel in list(acknowledged)[::97]:
        status, _, body = api.request('GET', '/v1/channels/' + channel)
        assert status == 200
    status, _, body = api.request('GET', '/v1/channels/' + next(iter(acknowledged)))
    key = body['data']['streamId'].split('key=')[1]
    assert api.hook('publish', body['data']['id'], key=key)[0] == 200
    status, _, body = api.request('GET', '/v1/stats')
    assert body['data']['channels'] == len(restored)


@needs_litestream
@pytest.mark.slow
def test_sigterm_under_litestream_exits_0(tmp_path, replicated):
    primary = replicated(tmp_path / 'live.db')
    status, _, _ = Api(primary.port).request('POST', '/v1/channels', {'userId': 'u', 'name': 'x'})
    assert status == 201
    primary.proc.send_signal(signal.SIGTERM)
    assert primary.proc.wait(timeout=30) == 0, primary.output()
    assert 'stopped' in primary.output()


# 4. Litestream with a live nginx-rtmp stream ###################################

@needs_litestream
@pytest.mark.slow
@pytest.mark.e2e
def test_a_live_session_is_not_stuck_live_after_a_litestream_restore():
    """A stream is live through nginx-rtmp when the API's disk is lost: after the
    restore its session is resumed by the ingest's updates or ended, never left live."""
    import e2e_support
    missing = e2e_support.missing_requirements()
    if missing:
        if os.environ.get('LIVESTREAM_E2E') == '1':
            pytest.fail('end-to-end tests need ' + ', '.join(missing))
        pytest.skip('end-to-end tests need ' + ', '.join(missing))
    stack = e2e_support.Stack()
    try:
        conf = stack.workdir / 'litestream.yml'
        status, out, err = cli('litestream-conf', '--db', str(stack.db), '--replica',
                               'file://%s' % (stack.workdir / 'replica'), env=stack.env)
        assert status == 0, err
        conf.write_text(out)
        serve = '%s -m livestream_api serve --port %d --db %s' % (
            sys.executable, stack.api_port, stack.db)
        with open(stack.api_log, 'ab') as log:
            stack.api_process = subprocess.Popen(
                [LITESTREAM, 'replicate', '-config', str(conf), '-exec', serve], cwd=str(REPO),
                env=dict(stack.env, LIVESTREAM_DATABASE_REPLICATED='true'),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_healthy(stack.api_port, 30, stack.api_process)
        stack.write_nginx_conf()
        stack.start_nginx()
        channel = stack.api.ok('POST', '/v1/channels', {'userId': 'u', 'name': 'on air'},
                               status=201)
        stack.publish(channel['streamUrl'], channel['streamId'])
        e2e_support.wait_for(lambda: stack.api.get('/v1/channels/%s/stats' % channel['id'])
                             [1]['data']['status'] == 'live', 30, 'the channel to go live')
        time.sleep(3)
        os.killpg(stack.api_process.pid, signal.SIGKILL)
        stack.api_process.wait(timeout=10)
        for suffix in ('', '-wal', '-shm'):
            if os.path.exists(str(stack.db) + suffix):
                os.unlink(str(stack.db) + suffix)
        restore = subprocess.run([LITESTREAM, 'restore', '-config', str(conf), str(stack.db)],
                                 capture_output=True, text=True, timeout=60)
        assert restore.returncode == 0, restore.stderr
        stack.start_api()
        # The encoder still runs: the ingest's next update_publish resumes the restored
        # session (its bytes move on)...
        restored = stack.api.get('/v1/channels/%s/stats' % channel['id'])[1]['data']['current']

        def resumed():
            stats = stack.api.get('/v1/channels/%s/stats' % channel['id'])[1]['data']
            return (stats['status'] == 'live' and stats['current']['sessionId']
                    == restored['sessionId'] and stats['current']['bytesIn']
                    > restored['bytesIn'])
        e2e_support.wait_for(resumed, 30, 'the session to be resumed')
        # ...and when it stops, the session ends: nothing is left live.
        stack.stop_encoders()
        e2e_support.wait_for(lambda: stack.api.get('/v1/channels/' + channel['id'])
                             [1]['data']['status'] == 'idle', 30, 'the channel to be idle')
        sessions = stack.api.get('/v1/channels/%s/sessions' % channel['id'])[1]['data']
        assert sessions['items'] and all(item['endedAt'] for item in sessions['items'])
    finally:
        stack.stop()
