"""The store under faults and beside other processes: durability settings that
hold when a transaction cannot start, connections opened while the database was
read-only, database files deleted while serving, logins revoked mid-check, and
several processes (two `serve`s and the CLI) on one database file."""

import logging
import sqlite3
import subprocess
import sys
import threading

import pytest
import webtest

import livestream_api
from conftest import ADMIN, basic
from test_reliability import HOOK_SECRET, REPO, Api, server_env, spawn  # noqa: F401


# Durability ###################################################################

def test_a_transaction_that_cannot_begin_leaves_fsync_on(app, tmp_path):
    store = app.livestream.store
    store.db.execute('PRAGMA busy_timeout = 50')
    holder = sqlite3.connect(str(tmp_path / 'live.db'), isolation_level=None)
    holder.execute('BEGIN IMMEDIATE')  # another connection holds the write lock
    try:
        with pytest.raises(sqlite3.OperationalError, match='locked'):
            with store.transaction(durable=False):
                pass
    finally:
        holder.execute('ROLLBACK')
        holder.close()
    assert store.db.execute('PRAGMA synchronous').fetchone()[0] == 2  # FULL


# A read-only window ###########################################################

def test_a_connection_that_fails_a_write_as_read_only_is_replaced(app, admin, monkeypatch):
    store = app.livestream.store
    store.close()  # this thread's next use of the store opens a connection

    def read_only():
        """What a connection opened during a read-only window is: read-only for good."""
        monkeypatch.undo()
        conn = sqlite3.connect('file:%s?mode=ro' % store.path, uri=True, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    monkeypatch.setattr(store, '_connect', read_only)
    with pytest.raises(sqlite3.OperationalError, match='readonly'):
        admin.put_json('/v1/users/window', {})
    assert admin.put_json('/v1/users/window', {}, status=201).json['data']['userId'] == 'window'
    assert admin.get('/v1/users/window').status_int == 200


# Database files deleted while serving ########################################

@pytest.fixture
def deleted(make_app, tmp_path, caplog):
    """An app whose database files were deleted after a first write: (admin TestApp, app)."""
    _, app = make_app()
    app.catchall = True  # as served: the 503 is rendered, not raised into the test
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    admin.put_json('/v1/users/before', {}, status=201)
    for name in ('live.db', 'live.db-wal', 'live.db-shm'):
        (tmp_path / name).unlink()
    caplog.set_level(logging.ERROR, logger='livestream')
    return admin, app


def test_deleted_database_files_make_health_503(deleted, caplog):
    admin, _ = deleted
    response = admin.get('/v1/health', status=503)
    assert response.json['ec'] == 99 and response.json['data']['db'] == 'error'
    assert 'was deleted or replaced while in use' in caplog.text


@pytest.mark.parametrize('write', [
    lambda admin: admin.put_json('/v1/users/after', {}, expect_errors=True),
    lambda admin: admin.post_json('/v1/channels', {'userId': 'before', 'name': 'x'},
                                  expect_errors=True),
    lambda admin: admin.delete('/v1/users/before', expect_errors=True),
])
def test_deleted_database_files_refuse_writes_with_503(deleted, caplog, write):
    admin, _ = deleted
    for _ in range(2):  # the first write is the one that finds out
        response = write(admin)
        assert (response.status_int, response.json['ec']) == (503, 99)
    assert 'the path now names nothing' in caplog.text
    assert caplog.text.count('was deleted or replaced') == 1  # said once, not per request


def test_deleted_database_files_are_not_recreated(deleted, tmp_path):
    _, app = deleted
    failures = []

    def new_thread():  # a new thread opens a new connection
        try:
            app.livestream.store.check()
        except sqlite3.Error as error:
            failures.append(error)

    thread = threading.Thread(target=new_thread)
    thread.start()
    thread.join()
    assert isinstance(failures[0], livestream_api.DatabaseGone)
    assert not (tmp_path / 'live.db').exists()


def test_a_database_file_replaced_by_another_refuses_writes(make_app, tmp_path):
    _, app = make_app()
    app.catchall = True
    admin = webtest.TestApp(app)
    admin.authorization = ('Basic', ADMIN)
    (tmp_path / 'live.db').rename(tmp_path / 'moved.db')
    sqlite3.connect(str(tmp_path / 'live.db')).close()  # an empty file under the old name
    response = admin.put_json('/v1/users/u', {}, expect_errors=True)
    assert (response.status_int, response.json['ec']) == (503, 99)


# Logins revoked while being checked ###########################################

@pytest.mark.parametrize('revoke', ['delete', 'rotate'])
def test_a_login_checked_while_its_client_is_revoked_is_not_remembered(
        app, admin, new_client, monkeypatch, revoke):
    client = new_client()
    svc = app.livestream
    store = svc.store
    read_row = store.client_for_login

    def revoked_right_after_the_read(token_id):
        row = read_row(token_id)
        monkeypatch.undo()
        if revoke == 'delete':  # as DELETE /v1/clients/{tokenId} does, on another thread
            store.delete_client(row['id'], svc.clock(), force=True)
        else:
            store.set_client_secret(row['id'], livestream_api.hash_secret('new'))
        svc.forget_logins()
        return row

    monkeypatch.setattr(store, 'client_for_login', revoked_right_after_the_read)
    client.get('/v1/users')  # it started before the revocation: it may pass
    client.get('/v1/users', status=401)


def test_an_authorization_header_over_4_kb_is_400_before_any_work(app, admin, monkeypatch):
    monkeypatch.setattr(app.livestream.store, 'client_for_login', None)  # never reached
    header = basic(ADMIN[0], ADMIN[1] + 'x' * 4096)
    response = admin.get('/v1/users', headers={'Authorization': header}, status=400)
    assert response.json['ec'] == 1
    assert 'Authorization' in response.json['msg']
    assert len(app.livestream.throttle) == 0  # not a failed login either


def test_remembered_logins_take_bounded_bytes_whatever_the_headers_size(app, admin):
    """One client spelling its Basic header many ways (padding the base64) must not
    grow the login cache by the headers' size."""
    logins = app.livestream.logins
    for padding in range(1, 40):
        header = 'Basic ' + ' ' * padding * 90 + basic(*ADMIN)[6:]
        admin.get('/v1/users', headers={'Authorization': header}, status=200)
    assert len(logins) == 39
    assert all(isinstance(key, bytes) and len(key) == 32 for key in logins)


def test_the_read_cache_counts_bytes_in_memory_not_characters(app, admin):
    name = '\U0001d4d0' * 200  # 4 bytes each, in memory and in UTF-8
    channel = admin.post_json('/v1/channels', {'userId': 'u', 'name': name,
                                               'description': name * 10}).json['data']
    store = app.livestream.store
    store._rows.clear()
    store._rows_bytes = 0
    admin.get('/v1/channels/' + channel['id'])
    # The row holds the name and description, and the channel object twice (JSON).
    assert store._rows_bytes > 4 * 3 * len(name * 11)


# Several processes on one database ###########################################

def test_a_commit_by_another_store_voids_every_cache_at_the_next_request(
        app, admin, new_client):
    """Another Store on the same file is another process as far as caches go."""
    store = app.livestream.store
    client = new_client()
    channel = client.post_json('/v1/channels', {'userId': 'u', 'name': 'one'}).json['data']
    assert client.get('/v1/channels/' + channel['id']).json['data']['enabled']  # cached
    other = livestream_api.Store(
        store.path, livestream_api.load_config(environ={})['ingest_nodes'])
    try:
        row = other.channel(None, channel['id'])
        other.update_channel(row['id'], {'enabled': False}, 0)
        assert client.get('/v1/channels/' + channel['id']).json['data']['enabled'] is False
        other.set_client_secret(other.client_by_token(client.client['tokenId'])['id'], b'x')
        client.get('/v1/users', status=401)
    finally:
        other.close()


def cli(db, *args):
    return subprocess.run([sys.executable, '-m', 'livestream_api', *args, '--db', str(db)],
                          cwd=str(REPO), env=server_env(), capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def two_servers(tmp_path, spawn):  # noqa: F811
    """Two `serve` processes on one database, and an app client created through the first."""
    db = tmp_path / 'shared.db'
    first, second = spawn(db, 'first'), spawn(db, 'second')
    status, _, body = Api(first.port).request('POST', '/v1/clients', {'name': 'app'})
    assert status == 201, body
    return db, first, second, (body['data']['tokenId'], body['data']['tokenSecret'])


def test_a_second_process_sees_channel_changes_at_its_next_request(two_servers):
    _, first, second, app_client = two_servers
    writer, reader = Api(first.port, auth=app_client), Api(second.port, auth=app_client)
    status, _, body = writer.request('POST', '/v1/channels', {'userId': 'u', 'name': 'one'})
    assert status == 201, body
    channel = body['data']
    assert reader.request('GET', '/v1/channels')[2]['data']['total'] == 1  # cached now
    assert reader.request('GET', '/v1/channels/' + channel['id'])[2]['data']['enabled']
    hook = Api(second.port, auth=None)
    name, key = channel['streamId'].split('?key=')
    assert hook.hook('publish', name, key=key)[0] == 200
    assert hook.hook('update_publish', name, key=key)[0] == 200  # the hook's read, cached

    writer.request('PATCH', '/v1/channels/' + channel['id'], {'enabled': False})
    assert reader.request('GET', '/v1/channels/' + channel['id'])[2]['data']['enabled'] is False
    assert hook.hook('update_publish', name, key=key)[0] == 403
    writer.request('POST', '/v1/channels', {'userId': 'u', 'name': 'two'})
    assert reader.request('GET', '/v1/channels')[2]['data']['total'] == 2
    writer.request('DELETE', '/v1/channels/' + channel['id'])
    assert reader.request('GET', '/v1/channels/' + channel['id'])[0] == 404


def test_credentials_revoked_in_one_process_fail_at_once_in_the_other(two_servers):
    _, first, second, app_client = two_servers
    assert Api(second.port, auth=app_client).request('GET', '/v1/users')[0] == 200  # remembered
    status, _, body = Api(first.port).request('POST', '/v1/clients/%s/rotate' % app_client[0])
    assert status == 200, body
    assert Api(second.port, auth=app_client).request('GET', '/v1/users')[0] == 401
    rotated = (app_client[0], body['data']['tokenSecret'])
    assert Api(second.port, auth=rotated).request('GET', '/v1/users')[0] == 200


def test_credentials_deleted_by_the_cli_fail_at_once_in_every_server(two_servers):
    db, first, second, app_client = two_servers
    for server in (first, second):
        assert Api(server.port, auth=app_client).request('GET', '/v1/users')[0] == 200
    deleted = cli(db, 'client', 'delete', app_client[0])
    assert deleted.returncode == 0, deleted.stderr
    for server in (first, second):
        assert Api(server.port, auth=app_client).request('GET', '/v1/users')[0] == 401


def test_a_server_keeps_its_locks_while_other_processes_open_and_close_the_database(
        tmp_path, spawn):  # noqa: F811
    """The server never opens and closes a database file behind SQLite's back: closing
    any descriptor of a file drops all of a process's POSIX locks on it, after which
    another process that opens the database thinks itself alone and resets the -shm
    file under the server (which then died of SIGBUS)."""
    db = tmp_path / 'shared.db'
    server = spawn(db)
    stop, answers = threading.Event(), []

    def write_and_read():
        api = Api(server.port)
        while not stop.is_set():
            try:
                answers.append(api.request('POST', '/v1/clients', {'name': 'c'})[0])
                answers.append(api.request('GET', '/v1/clients?limit=1')[0])
            except OSError:
                answers.append('no answer')
                return
    writer = threading.Thread(target=write_and_read)
    writer.start()
    try:
        for _ in range(300):  # as the CLI, a backup script or an operator's sqlite3 do
            other = sqlite3.connect(db)
            other.execute('SELECT count(*) FROM clients').fetchone()
            other.close()
    finally:
        stop.set()
        writer.join()
    assert server.proc.poll() is None, server.stderr()
    assert set(answers) == {200, 201}, server.stderr()
