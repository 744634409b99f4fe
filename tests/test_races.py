"""A request finds a row, then another request changes it before this one reads
what hangs off it. Each test forces that interleaving by wrapping the store
method the first request uses to find the row, so the second request's write
lands at exactly that point: the answer is the one the later state calls for,
never a crash, and nothing deleted comes back."""

import sqlite3

import pytest

from ingest_support import make_channel, publish, publish_done, record, stream_args, update
from livestream_api import EC_FORBIDDEN, EC_NOT_FOUND


def after(store, method, then, when=lambda result: True):
    """Make store.method(...) run `then(result)` once, right after the first call
    that returns a result `when` accepts. `then` changes the store through its
    own methods: a nested HTTP request would replace this thread's bottle.request."""
    original = getattr(store, method)
    pending = [then]

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if pending and when(result):
            pending.pop()(result)
        return result
    setattr(store, method, wrapped)


def delete_client_before(store, method, clock):
    """Make store.method(client_pk, ...) delete that client first, as if another
    request did it after this one authenticated."""
    original = getattr(store, method)

    def wrapped(client_pk, *args, **kwargs):
        store.delete_client(client_pk, clock(), force=True)
        return original(client_pk, *args, **kwargs)
    setattr(store, method, wrapped)


def assert_not_found(answer, what):
    assert answer.status_int == 404, answer.text
    assert answer.json['ec'] == EC_NOT_FOUND
    assert what in answer.json['msg']


@pytest.fixture
def store(app):
    return app.livestream.store


@pytest.mark.parametrize('what', ['sessions', 'stats'])
def test_a_live_channel_deleted_meanwhile(admin, hook, store, clock, what):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    after(store, 'channel', lambda row: store.delete_channel(row['id'], clock()))
    assert_not_found(admin.get('/v1/channels/%s/%s' % (channel['id'], what), status='*'),
                     'channel')


def test_stats_of_a_session_that_ended_meanwhile_count_it_to_its_end(admin, hook, store,
                                                                     clock):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    clock.advance(30)

    def end_it(row):
        store.end_session(row['live_session_id'], 'publisher_left', clock())
        clock.advance(70)
    after(store, 'channel', end_it)
    stats = admin.get('/v1/channels/%s/stats' % channel['id']).json['data']
    assert stats['current']['durationSeconds'] == 30
    assert stats['totals']['liveSeconds'] == 30
    assert admin.get('/v1/channels/%s/stats' % channel['id']).json['data']['totals'] == \
        dict(stats['totals'], sessions=1)


def test_patch_of_a_user_deleted_meanwhile_does_not_bring_it_back(admin, store, clock):
    admin.put_json('/v1/users/gone', {'limits': {'maxChannels': 3}}, status=201)
    after(store, 'user', lambda row: store.delete_user(row['id'], clock(), force=True))
    assert_not_found(admin.patch_json('/v1/users/gone', {'limits': {'maxChannels': 9}},
                                      status='*'), 'user')
    assert_not_found(admin.get('/v1/users/gone', status='*'), 'user')
    assert admin.get('/v1/users').json['data']['total'] == 0


def test_rotating_a_client_deleted_meanwhile(admin, new_client, store, clock):
    client = new_client()
    after(store, 'client_by_token',
          lambda row: store.delete_client(row['id'], clock(), force=True),
          when=lambda row: row and row['token_id'] == client.client['tokenId'])
    assert_not_found(admin.post('/v1/clients/%s/rotate' % client.client['tokenId'],
                                status='*'), 'client')


def test_users_of_a_client_deleted_meanwhile(admin, new_client, store, clock):
    client = new_client()
    client.put_json('/v1/users/someone', {'limits': {}}, status=201)
    delete_client_before(store, 'list_users', clock)
    listed = client.get('/v1/users').json['data']
    assert (listed['items'], listed['total']) == ([], 0)


@pytest.mark.parametrize('change', ['disabled', 'key rotated', 'deleted'])
def test_update_publish_resuming_a_channel_changed_meanwhile_is_refused(admin, hook, store,
                                                                         clock, change):
    channel = make_channel(admin)
    channel_pk = store.ingest_channel(stream_args(channel)[0])['id']

    def change_channel(result):
        assert result[1] is None  # the resume went live, and now its channel...
        if change == 'disabled':
            store.update_channel(channel_pk, {'enabled': False}, clock(), 'channel_disabled')
        elif change == 'key rotated':
            store.update_channel(channel_pk, {'stream_key': 'k' * 40}, clock(), 'key_rotated')
        else:
            store.delete_channel(channel_pk, clock())
    after(store, 'start_session', change_channel)
    answer = update(hook, channel)
    assert answer.status_int == 403, answer.text
    assert answer.json['ec'] == EC_FORBIDDEN


def test_a_sample_for_a_session_that_ended_meanwhile_changes_nothing(admin, hook, store,
                                                                     clock):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    session_pk = store.ingest_channel(stream_args(channel)[0])['live_session_id']
    record(store, session_pk, clock(), {'bytesIn': 1000, 'bitrateKbps': 8.0,
                                              'viewers': 1, 'video': None, 'audio': None})
    clock.advance(10)
    assert publish_done(hook, channel).json['data']['ended']
    clock.advance(5)
    record(store, session_pk, clock(), {'bytesIn': 9000, 'bitrateKbps': 64.0,
                                              'viewers': 2, 'video': None, 'audio': None})
    record(store, session_pk, clock(), None)
    ended_bytes = 1000 + 8 * 125 * 10  # extrapolated over the 10 s after its sample
    db = sqlite3.connect(store.path)
    try:
        assert db.execute('SELECT bytes_in, last_seen_at, viewers FROM sessions WHERE id = ?',
                          (session_pk,)).fetchone() == (ended_bytes, clock() - 15, 1)
        assert db.execute('SELECT count(*) FROM session_samples WHERE session_id = ?',
                          (session_pk,)).fetchone() == (1,)
        assert db.execute('SELECT bytes_in FROM channels').fetchone() == (ended_bytes,)
    finally:
        db.close()


@pytest.mark.parametrize('write', ['put user', 'create channel'])
def test_writes_for_a_client_deleted_meanwhile(admin, new_client, store, clock, write):
    client = new_client()
    delete_client_before(store, 'put_user' if write == 'put user' else 'create_channel', clock)
    if write == 'put user':
        answer = client.put_json('/v1/users/someone', {'limits': {}}, status='*')
    else:
        answer = client.post_json('/v1/channels', {'userId': 'someone', 'name': 'n'},
                                  status='*')
    assert_not_found(answer, 'client')
    assert admin.get('/v1/users').json['data']['total'] == 0
