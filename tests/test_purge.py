"""Force deletes: the client or user vanishes at once (credentials, reads, hooks,
totals), and the purge worker deletes the rest in small batches, driven here by
direct run_once() calls; the CLI finishes the purge itself."""

import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

import livestream_api
from conftest import ADMIN, basic
from ingest_support import make_channel, publish, record, update

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'bench'))
import seed as seeding  # noqa: E402  (its counter checks: every counter against its rows)


@pytest.fixture
def store(app):
    """The app's store, with purge batches of a few rows, so every path takes several."""
    store = app.livestream.store
    store.PURGE_CHANNELS, store.PURGE_SESSIONS, store.PURGE_USERS = 2, 3, 1
    return store


def rows(app, sql, *args):
    """One number from the app's database (or the database file `app`)."""
    path = app if isinstance(app, pathlib.Path) else app.livestream.config['database']['path']
    with sqlite3.connect(path) as db:
        return db.execute(sql, args).fetchone()[0]


def sessions_of(app, channels):
    """(open sessions, sessions ended as channel_deleted) of these channels."""
    marks = ', '.join('?' * len(channels))
    ids = [channel['id'] for channel in channels]
    sql = ('SELECT count(*) FROM sessions s JOIN channels c ON c.id = s.channel_id '
           'WHERE %s AND c.public_id IN (' + marks + ')')
    return (rows(app, sql % 's.ended_at IS NULL', *ids),
            rows(app, sql % "s.end_reason = 'channel_deleted'", *ids))


def purge(app):
    """run_once() until the worker says it is done; how many calls it took."""
    calls = 1
    while app.livestream.purger.run_once():
        calls += 1
        assert calls < 1000, 'the purge does not end'
    return calls


#: What a measured update_publish records (Store.heartbeat).
METRICS = {'bytesIn': 125000, 'bitrateKbps': 1000.0, 'viewers': 2, 'video': None, 'audio': None}


def broadcast(hook, store, clock, channel, times=1):
    """`times` ended broadcasts on the channel, each with two samples, then one left live."""
    for number in range(times + 1):
        assert publish(hook, channel).status_int == 200
        session_id = store.ingest_channel(channel['id'])['live_session_id']
        for _ in range(2):
            clock.advance(5)
            record(store, session_id, clock(), METRICS)
        if number < times:
            assert hook('publish_done', channel['id'], clientid='1').status_int == 200


@pytest.fixture
def doomed(store, new_client, hook, clock):
    """An app client with users ann and bob, two channels each, sessions with samples,
    and one live channel each."""
    client = new_client(name='doomed')
    for user_id in ('ann', 'bob'):
        client.put_json('/v1/users/' + user_id, {'limits': {'maxLiveChannels': None}})
    channels = [make_channel(client, user_id) for user_id in ('ann', 'ann', 'bob', 'bob')]
    broadcast(hook, store, clock, channels[0], times=4)  # more sessions than a batch
    broadcast(hook, store, clock, channels[2])
    client.pk = store.client_by_token(client.client['tokenId'])['id']
    client.channels = channels
    return client


def test_force_deleted_client_vanishes_at_once_and_is_purged(app, store, admin, doomed,
                                                             new_client, hook):
    survivor = new_client(name='survivor')
    kept = make_channel(survivor, 'carl')
    before = admin.get('/v1/stats').json['data']
    live = doomed.channels[0]
    admin.delete('/v1/clients/%s?force=true' % doomed.client['tokenId'], status=204)

    # At once: its credentials fail, its resources 404, lists and totals leave it out,
    # and the ingest refuses its streams.
    doomed.get('/v1/channels', status=401)
    for channel in doomed.channels:
        admin.get('/v1/channels/' + channel['id'], status=404)
    admin.get('/v1/users/ann?clientId=' + doomed.client['id'], status=404)
    listed = {item['id'] for item in admin.get('/v1/channels?limit=100').json['data']['items']}
    assert kept['id'] in listed and not listed & {channel['id'] for channel in doomed.channels}
    listing = admin.get('/v1/channels?clientId=' + survivor.client['id']).json['data']
    assert listing['total'] == 1
    assert doomed.client['tokenId'] not in [
        item['tokenId'] for item in admin.get('/v1/clients').json['data']['items']]
    after = admin.get('/v1/stats').json['data']
    assert after['channels'] == before['channels'] - 4
    assert after['users'] == before['users'] - 2
    assert after['liveChannels'] == before['liveChannels'] - 2
    assert update(hook, live).status_int == 403
    assert publish(hook, live).status_int == 403
    # The rows are still there, hidden: the request did not delete them. Its live
    # sessions ended in that request.
    assert rows(app, 'SELECT count(*) FROM channels WHERE client_id = ?', doomed.pk) == 4
    assert sessions_of(app, doomed.channels) == (0, 2)

    calls = purge(app)
    assert calls > 5  # in small batches
    for table, column in (('channels', 'client_id'), ('users', 'client_id'),
                          ('clients', 'id')):
        assert rows(app, 'SELECT count(*) FROM %s WHERE %s = ?' % (table, column),
                    doomed.pk) == 0, table
    assert rows(app, 'SELECT count(*) FROM sessions WHERE channel_id NOT IN '
                '(SELECT id FROM channels)') == 0
    assert rows(app, 'SELECT count(*) FROM session_samples') == 0
    assert seeding.check_counters(app.livestream.config['database']['path']) == []
    assert admin.get('/v1/stats').json['data'] == after
    admin.get('/v1/channels/' + kept['id'], status=200)


def test_force_deleted_user_vanishes_at_once_and_is_purged(app, store, doomed, admin, hook):
    ann_channels, bob_channels = doomed.channels[:2], doomed.channels[2:]
    before = doomed.get('/v1/stats').json['data']
    doomed.delete('/v1/users/ann?force=true', status=204)

    doomed.get('/v1/users/ann', status=404)
    for channel in ann_channels:
        doomed.get('/v1/channels/' + channel['id'], status=404)
        admin.get('/v1/channels/' + channel['id'], status=404)
    assert publish(hook, ann_channels[1]).status_int == 403
    assert sessions_of(app, ann_channels) == (0, 1)
    assert sessions_of(app, bob_channels) == (1, 0)
    listing = doomed.get('/v1/channels').json['data']
    assert sorted(item['id'] for item in listing['items']) == \
        sorted(channel['id'] for channel in bob_channels)
    assert listing['total'] == 2
    assert doomed.get('/v1/channels?status=idle').json['data']['total'] == 1
    stats = doomed.get('/v1/stats').json['data']
    assert (stats['users'], stats['channels'], stats['liveChannels'], stats['sessions']) == \
        (1, 2, 1, before['sessions'] - 5)
    assert [user['userId'] for user in doomed.get('/v1/users').json['data']['items']] == ['bob']
    # The name is free at once: a new ann starts empty.
    doomed.put_json('/v1/users/ann', {}, status=201)
    assert doomed.get('/v1/users/ann').json['data']['usage'] == {'channels': 0,
                                                                 'liveChannels': 0}

    purge(app)
    assert rows(app, 'SELECT count(*) FROM users WHERE deleted_at IS NOT NULL') == 0
    assert rows(app, 'SELECT count(*) FROM channels WHERE client_id = ?', doomed.pk) == 2
    assert seeding.check_counters(app.livestream.config['database']['path']) == []
    assert doomed.get('/v1/stats').json['data'] == dict(stats, users=2)


def test_a_delete_without_force_of_a_client_whose_users_are_purging(app, store, doomed, admin):
    for user_id in ('ann', 'bob'):
        doomed.delete('/v1/users/%s?force=true' % user_id, status=204)
    admin.delete('/v1/clients/' + doomed.client['tokenId'], status=204)
    purge(app)
    assert rows(app, 'SELECT count(*) FROM clients WHERE id = ?', doomed.pk) == 0
    assert rows(app, 'SELECT count(*) FROM channels') == 0


def test_create_for_a_force_deleted_client_is_404(app, store, doomed, admin):
    doomed_admin_view = '/v1/channels?clientId=' + doomed.client['id']
    admin.delete('/v1/clients/%s?force=true' % doomed.client['tokenId'], status=204)
    # A request that authenticated before the delete: its client is gone.
    assert store.create_channel(doomed.pk, 'ann', {'name': 'late'},
                                app.livestream.default_limits, 0) == (None, None)
    admin.get(doomed_admin_view, status=404)


def test_cli_force_delete_finishes_the_purge(app, doomed, tmp_path, capsys):
    path = app.livestream.config['database']['path']
    status = livestream_api.main(['client', 'delete', doomed.client['tokenId'], '--force',
                                  '--db', path], {})
    assert status == 0
    for table in ('channels', 'users', 'sessions', 'session_samples'):
        assert rows(app, 'SELECT count(*) FROM %s' % table) == 0, table
    assert rows(app, 'SELECT count(*) FROM clients') == 1  # the environment's admin


@pytest.mark.slow
def test_serve_runs_the_purge_worker_and_stops_it_on_sigterm(tmp_path):
    db = tmp_path / 'live.db'
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(('LIVESTREAM_', 'LIVE_TOKEN_'))}
    env.update({'PYTHONPATH': str(REPO), 'LIVE_TOKEN_ID': ADMIN[0],
                'LIVE_TOKEN_SECRET': ADMIN[1], 'LIVESTREAM_INGEST_STAT_URL': '',
                # hooks on a port of the system's choosing: the API's port + 1 may be taken
                'LIVESTREAM_SERVER_HOOK_LISTEN': '127.0.0.1:0'})
    with open(tmp_path / 'serve.log', 'wb') as log:
        server = subprocess.Popen([sys.executable, '-m', 'livestream_api', 'serve', '--db',
                                   str(db), '--port', str(port)], cwd=str(REPO), env=env,
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        def call(method, path, body=None, auth=ADMIN):
            request = urllib.request.Request(
                'http://127.0.0.1:%d%s' % (port, path), method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={'Content-Type': 'application/json', 'Authorization': basic(*auth)})
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or 'null')

        deadline = time.monotonic() + 30
        while True:  # until it listens
            try:
                call('GET', '/v1/health')
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / 'serve.log').read_text()
                time.sleep(0.1)
        created = call('POST', '/v1/clients', {'name': 'doomed'})[1]['data']
        owner = (created['tokenId'], created['tokenSecret'])
        for n in range(3):
            call('POST', '/v1/channels', {'userId': 'u%d' % n, 'name': 'c'}, auth=owner)
        assert call('DELETE', '/v1/clients/%s?force=true' % created['tokenId'])[0] == 204
        deadline = time.monotonic() + 30
        while rows(db, 'SELECT count(*) FROM channels') or rows(
                db, 'SELECT count(*) FROM clients WHERE deleted_at IS NOT NULL'):
            assert time.monotonic() < deadline, 'the worker of serve did not purge'
            time.sleep(0.1)  # the worker runs in another process: poll what it leaves
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
