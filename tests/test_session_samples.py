"""GET /v1/channels/{id}/sessions/{sessionId}: a broadcast with its samples averaged
down in SQL, and the samples' retention by the purge worker."""

import pytest

from ingest_support import iso, make_channel, publish, publish_done, update
from ingest_support import record as record_beat

EC_BAD_REQUEST, EC_NOT_FOUND = 1, 6


def record(store, channel, clock, figures):
    """One sample per (bitrate, bytes, viewers), 10 s apart, on the channel's live session."""
    session_id = store.ingest_channel(channel['id'])['live_session_id']
    for bitrate, bytes_in, viewers in figures:
        clock.advance(10)
        record_beat(store, session_id, clock(), {'bitrateKbps': bitrate, 'bytesIn': bytes_in,
                                                  'viewers': viewers, 'video': None,
                                                  'audio': None})


@pytest.fixture
def app(make_app):
    """Samples 10 s apart are each kept: [ingest] sample_interval = 10."""
    return make_app(ingest={'sample_interval': '10'})[1]


@pytest.fixture
def broadcast(app, admin, hook, clock):
    """A channel with one ended session of 100 s: ten samples, at 10 s to 100 s."""
    channel = make_channel(admin)
    started = clock()
    assert publish(hook, channel).status_int == 200
    record(app.livestream.store, channel, clock,
           [(1000.0 * n, 125000 * n, n) for n in range(1, 11)])
    assert publish_done(hook, channel).status_int == 200
    session = admin.get('/v1/channels/%s/sessions' % channel['id']).json['data']['items'][0]
    return channel, session, started


def path_of(channel, session):
    return '/v1/channels/%s/sessions/%s' % (channel['id'], session['id'])


def test_a_session_with_every_sample_by_default(admin, broadcast):
    channel, session, started = broadcast
    answer = admin.get(path_of(channel, session)).json['data']
    samples = answer.pop('samples')
    assert answer == session
    assert len(samples) == 10
    assert samples[0] == {'at': iso(started + 10), 'bitrateKbps': 1000.0, 'bytesIn': 125000,
                          'viewers': 1, 'viewersRtmp': 1, 'viewersHls': 0}
    assert [sample['bytesIn'] for sample in samples] == [125000 * n for n in range(1, 11)]


def test_samples_averaged_down_to_evenly_spaced_points(admin, broadcast):
    channel, session, started = broadcast
    samples = admin.get(path_of(channel, session) + '?points=2').json['data']['samples']
    # Slices [0, 50) and [50, 100]: samples at 10-40 s, then at 50-100 s.
    assert samples == [
        {'at': iso(started), 'bitrateKbps': 2500.0, 'bytesIn': 4 * 125000, 'viewers': 2,
         'viewersRtmp': 2, 'viewersHls': 0},
        {'at': iso(started + 50), 'bitrateKbps': 7500.0, 'bytesIn': 10 * 125000,
         'viewers': 8, 'viewersRtmp': 8, 'viewersHls': 0}]
    one = admin.get(path_of(channel, session) + '?points=1').json['data']['samples']
    assert one == [{'at': iso(started), 'bitrateKbps': 5500.0, 'bytesIn': 1250000,
                    'viewers': 6, 'viewersRtmp': 6, 'viewersHls': 0}]


def test_a_live_session_is_charted_up_to_now(app, admin, hook, clock):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    record(app.livestream.store, channel, clock, [(100.0, 1000, 0), (300.0, 2000, 0)])
    session = admin.get('/v1/channels/%s/sessions' % channel['id']).json['data']['items'][0]
    answer = admin.get(path_of(channel, session) + '?points=1').json['data']
    assert answer['endedAt'] is None
    assert answer['samples'][0]['bitrateKbps'] == 200.0


def test_unknown_or_foreign_session_is_404(admin, new_client, broadcast):
    channel, session, _ = broadcast
    other = make_channel(admin, 'someone')
    for path in ('/v1/channels/%s/sessions/%s' % (other['id'], session['id']),
                 '/v1/channels/%s/sessions/aaaaaaaaaaaaaaaa' % channel['id'],
                 '/v1/channels/%s/sessions/not-an-id' % channel['id'],
                 # 404 comes before 400: a bad query on an unknown session
                 '/v1/channels/%s/sessions/aaaaaaaaaaaaaaaa?points=0' % channel['id']):
        answer = admin.get(path, status=404)
        assert (answer.json['ec'], answer.json['msg']) == (EC_NOT_FOUND, 'session not found')
    stranger = new_client()
    answer = stranger.get(path_of(channel, session), status=404)
    assert (answer.json['ec'], answer.json['msg']) == (EC_NOT_FOUND, 'channel not found')


@pytest.mark.parametrize('query', ['points=0', 'points=1001', 'points=x', 'points=',
                                   'points=1&points=2', 'limit=3'])
def test_bad_query_is_400(admin, broadcast, query):
    channel, session, _ = broadcast
    answer = admin.get(path_of(channel, session) + '?' + query, status=400)
    assert answer.json['ec'] == EC_BAD_REQUEST


def three_live(make_app, clock, **sections):
    """(admin TestApp, app, hook) of an app made with `sections`, and three channels
    (client.channels) live with three samples each."""
    client, app = make_app(**sections)
    client.authorization = ('Basic', ('admin-token', 'admin-secret-for-tests'))
    hook_path = '/v1/hooks/nginx-rtmp?secret=' + app.livestream.hook_secret

    def hook(call, name, status='*', **fields):
        return client.post(hook_path, dict(fields, call=call, name=name, app='live'),
                           status=status, expect_errors=True)
    client.channels = [make_channel(client, user_id) for user_id in ('a', 'b', 'c')]
    for channel in client.channels:
        assert publish(hook, channel).status_int == 200
        record(app.livestream.store, channel, clock, [(100.0, 1000, 1)] * 3)
    return client, app, hook


def raw_samples(store, channel):
    return [tuple(row) for row in store.db.execute(
        'SELECT at, bitrate_kbps, bytes_in, viewers FROM session_samples WHERE session_id = '
        '(SELECT max(s.id) FROM sessions s JOIN channels c ON c.id = s.channel_id '
        'WHERE c.public_id = ?) ORDER BY at', (channel['id'],))]


def test_samples_of_sessions_ended_past_retention_are_averaged_to_one_a_minute(make_app, clock):
    client, app, hook = three_live(make_app, clock, ingest={'sample_retention_days': '2'})
    store = app.livestream.store
    old, recent, live = client.channels
    record(store, old, clock, [(100.0 * n, 1000 * n, n) for n in range(1, 13)])
    assert publish_done(hook, old).status_int == 200
    before = {channel['id']: raw_samples(store, channel) for channel in client.channels}
    clock.advance(86400 + 60)
    assert publish_done(hook, recent).status_int == 200
    clock.advance(86400)  # old ended 2 days and a minute ago; recent, a day ago
    while app.livestream.purger.run_once():
        pass
    minutes = {}
    for at, bitrate, bytes_in, viewers in before[old['id']]:
        minutes.setdefault(int(at // 60), []).append((at, bitrate, bytes_in, viewers))
    # SQLite rounds halves away from zero.
    expected = [(min(s[0] for s in group), sum(s[1] for s in group) / len(group),
                 max(s[2] for s in group), int(sum(s[3] for s in group) / len(group) + 0.5))
                for _, group in sorted(minutes.items())]
    assert len(before[old['id']]) > len(expected) >= 3
    assert raw_samples(store, old) == pytest.approx(expected)
    assert raw_samples(store, live) == before[live['id']]
    assert raw_samples(store, recent)[:3] == before[recent['id']][:3]
    while app.livestream.purger.run_once():  # a second pass leaves them as they are
        pass
    assert raw_samples(store, old) == pytest.approx(expected)


def test_compaction_goes_one_session_at_a_time_and_ends_its_pass(app, admin, hook, clock):
    store = app.livestream.store
    channel = make_channel(admin)
    for _ in range(3):
        assert publish(hook, channel).status_int == 200
        record(store, channel, clock, [(1.0, 1, 1)] * 5)
        assert publish_done(hook, channel).status_int == 200
    cutoff, after, batches = clock() + 1, 0, 0
    while True:
        after = store.compact_samples(cutoff, after, sessions=2)
        batches += 1
        if after is None:
            break
    assert batches == 4  # three sessions, then the end of the pass
    assert store.compact_samples(cutoff, 0) is None  # nothing left to do
    assert store.db.execute('SELECT count(*) FROM sessions WHERE samples_compacted = 0'
                            ).fetchone()[0] == 0


def test_sessions_ended_past_history_days_are_deleted_with_their_samples(make_app, clock):
    client, app, hook = three_live(make_app, clock,
                                   ingest={'history_days': '3', 'sample_retention_days': '30'},
                                   limits={'max_session_seconds': 'none'})
    store = app.livestream.store
    old, recent, live = client.channels
    assert publish_done(hook, old).status_int == 200
    old_session = client.get('/v1/channels/%s/sessions' % old['id']).json['data']['items'][0]
    clock.advance(2 * 86400)
    assert publish_done(hook, recent).status_int == 200
    clock.advance(86400 + 60)  # old ended 3 days and a minute ago; recent, a day ago
    assert update(hook, live).status_int == 200  # live for 3 days: kept
    while app.livestream.purger.run_once():
        pass
    listed = client.get('/v1/channels/%s/sessions' % old['id']).json['data']
    assert (listed['items'], listed['total']) == ([], 0)
    client.get(path_of(old, old_session), status=404)
    totals = client.get('/v1/channels/%s/stats' % old['id']).json['data']['totals']
    assert totals['sessions'] == 1 and totals['bytesIn'] > 0  # totals keep what was
    assert store.db.execute('SELECT count(*) FROM session_samples WHERE session_id NOT IN '
                            '(SELECT id FROM sessions)').fetchone()[0] == 0
    for channel in (recent, live):
        listed = client.get('/v1/channels/%s/sessions' % channel['id']).json['data']
        assert listed['total'] == 1
        assert client.get(path_of(channel, listed['items'][0])).json['data']['samples']


def test_history_goes_in_batches_and_none_keeps_it_forever(make_app, app, admin, hook, clock):
    assert app.livestream.purger.history_seconds == 365 * 86400
    store = app.livestream.store
    channel = make_channel(admin)
    for _ in range(5):
        assert publish(hook, channel).status_int == 200
        assert publish_done(hook, channel).status_int == 200
    cutoff, after, batches = clock() + 1, 0, 0
    while True:
        after = store.expire_sessions(cutoff, after, rows=10, batch=2)
        batches += 1
        if after is None:
            break
    assert batches == 3
    assert admin.get('/v1/channels/%s/sessions' % channel['id']).json['data']['total'] == 0
    forever = make_app(ingest={'history_days': 'none'})[1].livestream.purger
    assert forever.history_seconds is None
