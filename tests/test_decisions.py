"""The ingest's rules, one table per decision: who may go live, which stream keeps
its session, which may resume one, which has passed a limit, and which edit ends it. Each decision
is a plain function over one read, so every case is a row here."""

import pytest

from livestream_api import (decide_drop, decide_edit, decide_left, decide_limits, decide_publish,
                            decide_resume, decide_unasked, decide_update, edit_event,
                            measured_bitrate)

NOW = 1_800_000_000.0
CUTOFF = NOW - 30  # stale_after: 3 update intervals of 10 s
KEY = 'k' * 40


def channel(**changes):
    """start_session's read of an enabled, idle channel whose user may have 1 live."""
    row = {'id': 1, 'user_pk': 1, 'enabled': 1, 'stream_key': KEY, 'live_session_id': None,
           'live_channels': 0, 'max_live_channels': 1, 'connection': None,
           'last_seen_at': None, 'stale_live': 0, 'left_at': None}
    row.update(changes)
    return row


def live_on(connection, last_seen_at, **changes):
    """The channel live from `connection`, last heard from at `last_seen_at`."""
    return channel(live_session_id=7, live_channels=1, connection=connection,
                   last_seen_at=last_seen_at, **changes)


def left(connection, window_ends, **changes):
    """The channel whose publisher on `connection` left 5 s ago, its reconnect window
    ending at `window_ends` (Store.disconnect sets last_seen_at so that it goes stale then)."""
    return live_on(connection, window_ends - 30, left_at=NOW - 5, **changes)


#: (case, start_session's read, key, connection) -> (why refused, end_stale, take_over)
PUBLISH = [
    ('idle channel, right key', channel(), KEY, 'A', (None, False, False)),
    ('no such channel', None, KEY, 'A', ('no such channel', False, False)),
    ('wrong key', channel(), 'x' * 40, 'A', ('wrong stream key', False, False)),
    ('empty key', channel(), '', 'A', ('wrong stream key', False, False)),
    ('disabled, right key', channel(enabled=0), KEY, 'A',
     ('channel is disabled', False, False)),
    ('disabled, wrong key: the key is checked first', channel(enabled=0), 'x', 'A',
     ('wrong stream key', False, False)),
    ('live from another connection, fresh', live_on('B', NOW - 5), KEY, 'A',
     ('channel is already live from another connection', False, False)),
    ('live from another connection, heard from at the cutoff', live_on('B', CUTOFF), KEY,
     'A', ('channel is already live from another connection', False, False)),
    ('live from another connection, stale: ended first, then taken over',
     live_on('B', CUTOFF - 1, stale_live=1), KEY, 'A', (None, True, False)),
    ('live from this connection, fresh: a repeated publish takes it over',
     live_on('A', NOW - 5), KEY, 'A', (None, False, True)),
    ('live from this connection, stale', live_on('A', CUTOFF - 1, stale_live=1), KEY, 'A',
     (None, True, False)),
    ('user at maxLiveChannels', channel(live_channels=1), KEY, 'A',
     ('user is at maxLiveChannels (1)', False, False)),
    ('maxLiveChannels 0', channel(max_live_channels=0), KEY, 'A',
     ('user is at maxLiveChannels (0)', False, False)),
    ('unlimited live channels', channel(live_channels=50, max_live_channels=None), KEY, 'A',
     (None, False, False)),
    ("user at the limit, but another channel's session is stale",
     channel(live_channels=1, stale_live=1), KEY, 'A', (None, True, False)),
    ('user over the limit even without its stale sessions',
     channel(live_channels=3, max_live_channels=2, stale_live=1), KEY, 'A',
     ('user is at maxLiveChannels (2)', False, False)),
    ('limit 1, this channel live from this connection: a takeover, not a second live',
     live_on('A', NOW - 5), KEY, 'A', (None, False, True)),
    ('publisher left, window open, another connection: the broadcast resumes',
     left('A', NOW + 5), KEY, 'B', (None, False, False, True)),
    ('publisher left, window open, same connection: resumes', left('A', NOW + 5), KEY, 'A',
     (None, False, False, True)),
    ('publisher left, window open, at maxLiveChannels 1: its own slot', left('A', NOW + 5),
     KEY, 'B', (None, False, False, True)),
    ('publisher left, window open, wrong key', left('A', NOW + 5), 'x', 'B',
     ('wrong stream key', False, False, False)),
    ('publisher left, window open, channel disabled', left('A', NOW + 5, enabled=0), KEY, 'B',
     ('channel is disabled', False, False, False)),
    ('publisher left, window over: ended first, a new session',
     left('A', NOW - 1, stale_live=1), KEY, 'B', (None, True, False, False)),
]


#: (case, start_session's read, key, connection) -> the publish.refused reason
REFUSALS = [
    ('no such channel: no event', None, KEY, 'A', None),
    ('wrong key', channel(), 'x' * 40, 'A', 'wrong_key'),
    ('disabled', channel(enabled=0), KEY, 'A', 'channel_disabled'),
    ('live elsewhere', live_on('B', NOW - 5), KEY, 'A', 'already_live'),
    ('at maxLiveChannels', channel(live_channels=1), KEY, 'A', 'max_live_channels'),
    ('allowed', channel(), KEY, 'A', None),
]


@pytest.mark.parametrize('row, key, connection, expected', [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
def test_publish_refusal_reason(row, key, connection, expected):
    assert decide_publish(row, key, connection, CUTOFF).refusal == expected


@pytest.mark.parametrize('row, key, connection, expected',
                         [case[1:] for case in PUBLISH], ids=[case[0] for case in PUBLISH])
def test_decide_publish(row, key, connection, expected):
    assert tuple(decide_publish(row, key, connection, CUTOFF))[:len(expected)] == expected


def ingest_row(**changes):
    """ingest_channel's read of a channel live from connection 'A'."""
    row = {'id': 1, 'live_session_id': 7, 'session_id': 'sessionpublicid1',
           'connection': 'A', 'started_at': NOW - 60, 'last_seen_at': NOW - 10,
           'bytes_in': 10 ** 6, 'sampled_at': NOW - 10, 'max_bitrate_kbps': 2500,
           'max_session_seconds': 3600, 'left_at': None, 'paused_seconds': 0.0,
           'reconnect_window': None}
    row.update(changes)
    return row


IDLE = {'live_session_id': None, 'session_id': None, 'connection': None,
        'started_at': None, 'last_seen_at': None, 'bytes_in': None, 'sampled_at': None}

#: (case, ingest_channel's read, connection) -> (action, why)
UPDATE = [
    ('its own open session', ingest_row(), 'A', ('keep', None)),
    ('channel deleted', None, 'A', ('refuse', 'channel was deleted')),
    ('channel idle', ingest_row(**IDLE), 'A', ('orphan', None)),
    ("another connection's session", ingest_row(connection='B'), 'A', ('orphan', None)),
    ('its session, but it left (reconnect window): a late word', ingest_row(left_at=NOW - 5),
     'A', ('refuse', 'publisher left')),
    ("a session left by another connection: resumes through a publish",
     ingest_row(connection='B', left_at=NOW - 5), 'A', ('orphan', None)),
]


#: (case, the channel's reconnectWindowSeconds, [ingest] reconnect_window) -> seconds open
DROPS = [
    ('both off', None, 0, 0),
    ('the config default', None, 20, 20),
    ('the channel over the default', 60, 20, 60),
    ("the channel's 0 turns it off", 0, 20, 0),
]


@pytest.mark.parametrize('window, default, expected', [case[1:] for case in DROPS],
                         ids=[case[0] for case in DROPS])
def test_decide_drop(window, default, expected):
    assert decide_drop(ingest_row(reconnect_window=window), default) == expected


@pytest.mark.parametrize('row, connection, expected', [case[1:] for case in UPDATE],
                         ids=[case[0] for case in UPDATE])
def test_decide_update(row, connection, expected):
    assert decide_update(row, connection) == expected


#: (case, the connection's latest session on the channel) -> why it may not resume
RESUME = [
    ('never had one (the database lost it)', None, None),
    ('reaped as stale: the API stopped hearing from it', {'end_reason': 'stale'}, None),
    ('nginx said publish_done: never resurrected', {'end_reason': 'publisher_left'},
     'session was ended: publisher_left'),
    ('channel disabled', {'end_reason': 'channel_disabled'},
     'session was ended: channel_disabled'),
    ('key rotated', {'end_reason': 'key_rotated'}, 'session was ended: key_rotated'),
    ('channel deleted', {'end_reason': 'channel_deleted'}, 'session was ended: channel_deleted'),
    ('past maxSessionSeconds', {'end_reason': 'max_session_seconds'},
     'session was ended: max_session_seconds'),
    ('past maxBitrateKbps', {'end_reason': 'max_bitrate'}, 'session was ended: max_bitrate'),
]


@pytest.mark.parametrize('last, expected', [case[1:] for case in RESUME],
                         ids=[case[0] for case in RESUME])
def test_decide_resume(last, expected):
    assert decide_resume(last) == expected


#: (case, the connection's latest session, at a publish_done finding none open) ->
#: whether it is recorded as left, so that no late update_publish resumes it
LEFT = [
    ('none', None, False),
    ('ended as stale by the API', {'end_reason': 'stale'}, True),
    ('already left', {'end_reason': 'publisher_left'}, False),
    ('cut by the API', {'end_reason': 'channel_disabled'}, False),
]


@pytest.mark.parametrize('last, expected', [case[1:] for case in LEFT],
                         ids=[case[0] for case in LEFT])
def test_decide_left(last, expected):
    assert decide_left(last) is expected


#: (case, the connection's latest session, for a stream a poll sees with no open
#: session) -> why it is kicked (None: left alone)
UNASKED = [
    ('none: its publish may be under way', None, None),
    ('cut by the API', {'end_reason': 'key_rotated'}, 'session was ended: key_rotated'),
    ('ended as stale: no key to resume it by', {'end_reason': 'stale'},
     'session was ended: stale'),
    ('left, yet still listed', {'end_reason': 'publisher_left'},
     'session was ended: publisher_left'),
]


@pytest.mark.parametrize('last, expected', [case[1:] for case in UNASKED],
                         ids=[case[0] for case in UNASKED])
def test_decide_unasked(last, expected):
    assert decide_unasked(last) == expected


#: (case, ingest_channel's read, seconds since it started, bitrate) -> end reason
LIMITS = [
    ('within both', ingest_row(), 60, 2000.0, None),
    ('no bitrate measured yet', ingest_row(), 60, None, None),
    ('bitrate at the limit', ingest_row(), 60, 2500.0, None),
    ('bitrate over the limit', ingest_row(), 60, 2500.1, 'max_bitrate'),
    ('duration at the limit', ingest_row(), 3600, 2000.0, None),
    ('duration over the limit', ingest_row(), 3601, 2000.0, 'max_session_seconds'),
    ('both over: duration first', ingest_row(), 3601, 9000.0, 'max_session_seconds'),
    ('unlimited', ingest_row(max_bitrate_kbps=None, max_session_seconds=None), 10 ** 6,
     10 ** 6, None),
    ('limit 0 bitrate, nothing measured', ingest_row(max_bitrate_kbps=0), 60, None, None),
    ('limit 0 bitrate, any measured', ingest_row(max_bitrate_kbps=0), 60, 0.1, 'max_bitrate'),
    ('duration over only with the reconnect gap: the gap is not counted',
     ingest_row(paused_seconds=10.0), 3605, 2000.0, None),
    ('duration over without the gap', ingest_row(paused_seconds=10.0), 3611, 2000.0,
     'max_session_seconds'),
]


@pytest.mark.parametrize('row, seconds, bitrate, expected', [case[1:] for case in LIMITS],
                         ids=[case[0] for case in LIMITS])
def test_decide_limits(row, seconds, bitrate, expected):
    assert decide_limits(row, row['started_at'] + seconds, bitrate) == expected


def stream(bw_in_kbps, bytes_in):
    return {'bitrateKbps': bw_in_kbps, 'bytesIn': bytes_in}


#: (case, /stat's figures, ingest_channel's read, seconds since it started) -> kbit/s
BITRATE = [
    ("nginx's bw_in, once it has one", stream(2500.0, 10 ** 6), ingest_row(), 60, 2500.0),
    ('first update, bw_in still 0: the bytes since the session began',
     stream(0.0, 400000), ingest_row(sampled_at=None, bytes_in=0), 10, 320.0),
    ('a later update, bw_in still 0: the growth since the last sample',
     stream(0.0, 10 ** 6 + 250000), ingest_row(sampled_at=NOW - 10, bytes_in=10 ** 6), 60,
     200.0),
    ('no time since the last sample: what nginx says', stream(0.0, 10 ** 6),
     ingest_row(sampled_at=NOW - 10), 50, 0.0),
    ('bytes_in went back (nginx restarted): never negative', stream(0.0, 1000),
     ingest_row(sampled_at=NOW - 20, bytes_in=10 ** 6), 60, 0.0),
]


@pytest.mark.parametrize('metrics, row, seconds, expected', [case[1:] for case in BITRATE],
                         ids=[case[0] for case in BITRATE])
def test_measured_bitrate(metrics, row, seconds, expected):
    assert measured_bitrate(metrics, row, row['started_at'] + seconds) == expected


#: (case, the fields a PUT, PATCH or rotate-key writes) -> the live session's end
EDITS = [
    ('rename', {'name': 'x'}, None),
    ('enable', {'enabled': True}, None),
    ('disable', {'enabled': False, 'name': 'x'}, 'channel_disabled'),
    ('new key', {'stream_key': KEY}, 'key_rotated'),
]


@pytest.mark.parametrize('fields, expected', [case[1:] for case in EDITS],
                         ids=[case[0] for case in EDITS])
def test_decide_edit(fields, expected):
    assert decide_edit(fields) == expected


#: (case, the fields written, whether the channel was enabled) -> the event
EDIT_EVENTS = [
    ('rename', {'name': 'x'}, True, 'channel.updated'),
    ('enable an enabled channel: an update', {'enabled': True, 'name': 'x'}, True,
     'channel.updated'),
    ('disable', {'enabled': False, 'name': 'x'}, True, 'channel.disabled'),
    ('enable', {'enabled': True}, False, 'channel.enabled'),
    ('PUT on a disabled channel leaving it disabled', {'enabled': False, 'name': 'x'}, False,
     'channel.updated'),
    ('new key', {'stream_key': KEY}, True, 'channel.key_rotated'),
]


@pytest.mark.parametrize('fields, was_enabled, expected', [case[1:] for case in EDIT_EVENTS],
                         ids=[case[0] for case in EDIT_EVENTS])
def test_edit_event(fields, was_enabled, expected):
    assert edit_event(fields, was_enabled) == expected
