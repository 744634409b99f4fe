"""Heartbeats held in memory and written once a second (HeartbeatWriter): while the
writer runs, an update_publish writes nothing; one pass writes every session's
last-seen time and figures in one transaction; ends, disconnects and staleness
take what is held first; a failed pass loses nothing; samples are kept at most
once per [ingest] sample_interval."""

import sqlite3
import threading

import pytest

from ingest_support import make_channel, publish, publish_done, stream_args, update


@pytest.fixture
def app(make_app, stat_server):
    app = make_app(ingest={'stat_url': stat_server.url, 'sample_interval': '30'})[1]
    stat_server.pollers.append(app.livestream.pollers['default'])
    return app


@pytest.fixture
def store(app):
    return app.livestream.store


@pytest.fixture
def writer(app):
    """The heartbeat writer running, as under serve, but with its timer parked: the
    test makes its passes with run_once()."""
    writer = app.livestream.heartbeat_writer
    writer.interval = 3600
    writer.start()
    yield writer
    writer.stop()


def row(store, session_pk, columns='last_seen_at, bytes_in, bitrate_kbps, peak_bitrate_kbps'):
    db = sqlite3.connect(store.path)
    try:
        return db.execute('SELECT %s FROM sessions WHERE id = ?' % columns,
                          (session_pk,)).fetchone()
    finally:
        db.close()


def samples(store, session_pk):
    db = sqlite3.connect(store.path)
    try:
        return db.execute('SELECT at, bitrate_kbps FROM session_samples WHERE session_id = ? '
                          'ORDER BY at', (session_pk,)).fetchall()
    finally:
        db.close()


def live_pk(store, channel):
    return store.ingest_channel(stream_args(channel)[0])['live_session_id']


def figures(bytes_in, kbps, viewers=0):
    return {'bytesIn': bytes_in, 'bitrateKbps': kbps, 'viewers': viewers, 'video': None,
            'audio': None}


def test_while_the_writer_runs_updates_write_nothing_until_its_pass(admin, hook, clock, store,
                                                                   writer, stat_server):
    channels = [make_channel(admin, 'user%d' % n) for n in range(3)]
    for channel in channels:
        assert publish(hook, channel).status_int == 200
    started = clock()
    clock.advance(10)
    stat_server.serve(*({'name': channel['id'], 'bw_in': 2000000, 'bytes_in': 2500000}
                        for channel in channels))
    writes = store.generation
    threads = [threading.Thread(target=update, args=(hook, channel)) for channel in channels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert store.generation == writes  # no write transaction on the hooks' path
    pks = [live_pk(store, channel) for channel in channels]
    assert [row(store, pk)[:3] for pk in pks] == [(started, 0, None)] * 3

    assert writer.run_once() == 3
    assert store.generation == writes + 1  # one transaction for the three
    assert [row(store, pk)[:3] for pk in pks] == [(started + 10, 2500000, 2000.0)] * 3
    assert writer.run_once() == 0  # nothing held: no transaction
    assert store.generation == writes + 1


def test_a_channels_stats_show_its_figures_after_the_pass(admin, hook, clock, writer,
                                                          stat_server):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    clock.advance(10)
    stat_server.serve({'name': channel['id'], 'bw_in': 3000000, 'bytes_in': 3750000})
    assert update(hook, channel).status_int == 200
    path = '/v1/channels/%s/stats' % channel['id']
    assert admin.get(path).json['data']['current']['bytesIn'] == 0
    writer.run_once()
    assert admin.get(path).json['data']['current']['bytesIn'] == 3750000


def test_an_end_takes_the_figures_held_for_its_session(admin, hook, clock, store, writer):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    pk = live_pk(store, channel)
    clock.advance(10)
    store.heartbeat(pk, clock(), figures(1250000, 1000.0))
    assert row(store, pk)[1] == 0
    assert publish_done(hook, channel).json['data']['ended']
    # Ended at once with the held figures: not extrapolated from the start (0 bytes).
    ended = admin.get('/v1/channels/%s/sessions' % channel['id']).json['data']['items'][0]
    assert ended['bytesIn'] == 1250000
    assert row(store, pk)[3] == 1000.0  # its peak
    assert writer.run_once() == 0  # taken by the end's transaction, not written twice


def test_a_held_heartbeat_keeps_its_session_from_going_stale(admin, hook, clock, store, app,
                                                             writer):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    pk = live_pk(store, channel)
    stale_after = app.livestream.stale_after
    clock.advance(stale_after - 1)
    store.heartbeat(pk, clock())  # heard, not yet written
    clock.advance(2)  # stale by the database's last-seen time alone
    assert store.end_stale_sessions(clock() - stale_after) == 0
    assert admin.get('/v1/channels/' + channel['id']).json['data']['status'] == 'live'
    assert row(store, pk)[0] == clock() - 2
    clock.advance(stale_after)
    assert admin.get('/v1/channels/' + channel['id']).json['data']['status'] == 'idle'


def test_a_disconnect_takes_the_held_figures_and_a_late_heartbeat_moves_nothing(
        admin, hook, clock, store, writer):
    channel = admin.post_json('/v1/channels', {'userId': 'streamer', 'name': 'back soon',
                                               'reconnectWindowSeconds': 20}).json['data']
    assert publish(hook, channel).status_int == 200
    pk = live_pk(store, channel)
    clock.advance(10)
    store.heartbeat(pk, clock(), figures(1250000, 1000.0))
    assert publish_done(hook, channel).json['data']['ended']  # the window opens
    left = row(store, pk, 'left_at, last_seen_at, bytes_in')
    assert left[0] == clock() and left[2] == 1250000
    store.heartbeat(pk, clock() + 1, figures(2500000, 2000.0))  # a word from before
    writer.run_once()
    assert row(store, pk, 'left_at, last_seen_at, bytes_in') == left


def test_peaks_of_figures_held_between_passes_are_kept(admin, hook, clock, store, writer):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    pk = live_pk(store, channel)
    clock.advance(10)
    store.heartbeat(pk, clock(), figures(1000000, 5000.0, viewers=9))
    store.heartbeat(pk, clock() - 5, figures(500000, 9000.0))  # older: only its peak counts
    clock.advance(0.5)
    store.heartbeat(pk, clock(), figures(1200000, 800.0, viewers=2))
    writer.run_once()
    assert row(store, pk, 'bytes_in, bitrate_kbps, peak_bitrate_kbps, viewers, peak_viewers') \
        == (1200000, 800.0, 9000.0, 2, 9)


def test_a_failed_pass_holds_its_heartbeats_for_the_next(admin, hook, clock, store, writer,
                                                         monkeypatch):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    pk = live_pk(store, channel)
    clock.advance(10)
    store.heartbeat(pk, clock(), figures(1250000, 1000.0))
    held = clock()

    def failing_write(db, beats):
        raise sqlite3.OperationalError('database or disk is full')
    monkeypatch.setattr(store, '_write_beats', failing_write)
    with pytest.raises(sqlite3.OperationalError):
        writer.run_once()
    monkeypatch.undo()
    clock.advance(1)
    store.heartbeat(pk, clock())  # a newer heartbeat, without figures
    assert writer.run_once() == 1
    assert row(store, pk)[:3] == (held + 1, 1250000, 1000.0)


def test_samples_are_kept_at_most_once_per_sample_interval(admin, hook, clock, store, writer):
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    pk = live_pk(store, channel)
    started = clock()
    for second in range(10, 101, 10):  # an update every 10 s for 100 s, sample_interval 30
        clock.advance(10)
        store.heartbeat(pk, clock(), figures(125000 * second, float(second)))
        writer.run_once()
        assert row(store, pk)[2] == float(second)  # the current figures, at every pass
    assert samples(store, pk) == [(started + s, float(s)) for s in (10, 40, 70, 100)]


def test_stop_writes_what_is_held_and_then_hooks_write_their_own(admin, hook, clock, store,
                                                                 app, stat_server):
    writer = app.livestream.heartbeat_writer
    writer.interval = 3600
    writer.start()
    channel = make_channel(admin)
    assert publish(hook, channel).status_int == 200
    pk = live_pk(store, channel)
    clock.advance(10)
    stat_server.serve({'name': channel['id'], 'bw_in': 2000000, 'bytes_in': 2500000})
    assert update(hook, channel).status_int == 200
    assert row(store, pk)[1] == 0
    writer.stop()
    assert row(store, pk)[1] == 2500000
    clock.advance(10)
    stat_server.serve({'name': channel['id'], 'bw_in': 4000000, 'bytes_in': 5000000})
    assert update(hook, channel).status_int == 200
    assert row(store, pk)[:3] == (clock(), 5000000, 4000.0)
