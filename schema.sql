-- Livestream API store.
--
-- This file is the ordered migration list: each block below runs once, in
-- order, when PRAGMA user_version is below its number, inside one transaction.
-- Blocks are only ever appended; nothing here drops data.
--
-- Times are REAL unix seconds (UTC). Counters on clients, users and channels are
-- kept by the triggers at the end of block 1, so every write path (API, hooks,
-- cascades) keeps them true without remembering to.

-- migration: 1
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS clients (
    id            INTEGER PRIMARY KEY,
    public_id     TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'app')),
    token_id      TEXT NOT NULL UNIQUE,
    secret_hash   BLOB NOT NULL,           -- sha256(secret): secrets are 256-bit random
    from_env      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    users         INTEGER NOT NULL DEFAULT 0,
    channels      INTEGER NOT NULL DEFAULT 0,
    live_channels INTEGER NOT NULL DEFAULT 0,
    sessions      INTEGER NOT NULL DEFAULT 0,
    live_seconds  REAL NOT NULL DEFAULT 0,
    bytes_in      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS users (
    id                  INTEGER PRIMARY KEY,
    client_id           INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_id             TEXT NOT NULL,
    max_channels        INTEGER,           -- NULL: unlimited
    max_live_channels   INTEGER,
    max_bitrate_kbps    INTEGER,
    max_session_seconds INTEGER,
    channels            INTEGER NOT NULL DEFAULT 0,
    live_channels       INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    UNIQUE (client_id, user_id)
);
CREATE INDEX IF NOT EXISTS users_by_client ON users (client_id, id);

CREATE TABLE IF NOT EXISTS channels (
    id              INTEGER PRIMARY KEY,
    public_id       TEXT NOT NULL UNIQUE,
    client_id       INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_pk         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    metadata        TEXT NOT NULL DEFAULT '{}',
    enabled         INTEGER NOT NULL DEFAULT 1,
    stream_key      TEXT NOT NULL,
    live_session_id INTEGER,               -- the open session, NULL when not live
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    sessions        INTEGER NOT NULL DEFAULT 0,
    live_seconds    REAL NOT NULL DEFAULT 0,   -- of ended sessions
    bytes_in        INTEGER NOT NULL DEFAULT 0 -- of ended sessions
);
CREATE INDEX IF NOT EXISTS channels_by_client ON channels (client_id, id);
CREATE INDEX IF NOT EXISTS channels_by_user ON channels (user_pk, id);
CREATE INDEX IF NOT EXISTS channels_live ON channels (live_session_id)
    WHERE live_session_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS sessions (
    id                INTEGER PRIMARY KEY,
    public_id         TEXT NOT NULL UNIQUE,
    channel_id        INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    ingest_client     TEXT NOT NULL,       -- the ingest server's connection id
    addr              TEXT NOT NULL,
    started_at        REAL NOT NULL,
    last_seen_at      REAL NOT NULL,
    ended_at          REAL,
    end_reason        TEXT,
    bytes_in          INTEGER NOT NULL DEFAULT 0,
    bitrate_kbps      REAL,                -- last measured
    peak_bitrate_kbps REAL,
    viewers           INTEGER NOT NULL DEFAULT 0,
    peak_viewers      INTEGER NOT NULL DEFAULT 0,
    video             TEXT,                -- JSON {codec, width, height, fps}
    audio             TEXT                 -- JSON {codec, sampleRate, channels}
);
CREATE INDEX IF NOT EXISTS sessions_by_channel ON sessions (channel_id, id);
CREATE INDEX IF NOT EXISTS sessions_open ON sessions (last_seen_at) WHERE ended_at IS NULL;

CREATE TABLE IF NOT EXISTS session_samples (
    session_id   INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    at           REAL NOT NULL,
    bitrate_kbps REAL,
    bytes_in     INTEGER,
    viewers      INTEGER
);
CREATE INDEX IF NOT EXISTS session_samples_by_session ON session_samples (session_id, at);

CREATE TRIGGER IF NOT EXISTS user_added AFTER INSERT ON users BEGIN
    UPDATE clients SET users = users + 1 WHERE id = NEW.client_id;
END;
CREATE TRIGGER IF NOT EXISTS user_removed AFTER DELETE ON users BEGIN
    UPDATE clients SET users = users - 1 WHERE id = OLD.client_id;
END;

CREATE TRIGGER IF NOT EXISTS channel_added AFTER INSERT ON channels BEGIN
    UPDATE users SET channels = channels + 1 WHERE id = NEW.user_pk;
    UPDATE clients SET channels = channels + 1 WHERE id = NEW.client_id;
END;
CREATE TRIGGER IF NOT EXISTS channel_removed AFTER DELETE ON channels BEGIN
    UPDATE users SET channels = channels - 1,
                     live_channels = live_channels - (OLD.live_session_id IS NOT NULL)
     WHERE id = OLD.user_pk;
    UPDATE clients SET channels = channels - 1,
                       live_channels = live_channels - (OLD.live_session_id IS NOT NULL),
                       sessions = sessions - OLD.sessions,
                       live_seconds = live_seconds - OLD.live_seconds,
                       bytes_in = bytes_in - OLD.bytes_in
     WHERE id = OLD.client_id;
END;
CREATE TRIGGER IF NOT EXISTS channel_went_live AFTER UPDATE OF live_session_id ON channels
WHEN OLD.live_session_id IS NULL AND NEW.live_session_id IS NOT NULL BEGIN
    UPDATE users SET live_channels = live_channels + 1 WHERE id = NEW.user_pk;
    UPDATE clients SET live_channels = live_channels + 1 WHERE id = NEW.client_id;
END;
CREATE TRIGGER IF NOT EXISTS channel_went_idle AFTER UPDATE OF live_session_id ON channels
WHEN OLD.live_session_id IS NOT NULL AND NEW.live_session_id IS NULL BEGIN
    UPDATE users SET live_channels = live_channels - 1 WHERE id = NEW.user_pk;
    UPDATE clients SET live_channels = live_channels - 1 WHERE id = NEW.client_id;
END;

CREATE TRIGGER IF NOT EXISTS session_started AFTER INSERT ON sessions BEGIN
    UPDATE channels SET sessions = sessions + 1 WHERE id = NEW.channel_id;
    UPDATE clients SET sessions = sessions + 1
     WHERE id = (SELECT client_id FROM channels WHERE id = NEW.channel_id);
END;
CREATE TRIGGER IF NOT EXISTS session_ended AFTER UPDATE OF ended_at ON sessions
WHEN OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL BEGIN
    UPDATE channels SET live_seconds = live_seconds + (NEW.ended_at - NEW.started_at),
                        bytes_in = bytes_in + NEW.bytes_in
     WHERE id = NEW.channel_id;
    UPDATE clients SET live_seconds = live_seconds + (NEW.ended_at - NEW.started_at),
                       bytes_in = bytes_in + NEW.bytes_in
     WHERE id = (SELECT client_id FROM channels WHERE id = NEW.channel_id);
END;

-- migration: 2
-- Name search (GET /v1/channels?q=) through a trigram index, so a search costs
-- what it finds rather than the number of channels. Kept in step by triggers.
CREATE VIRTUAL TABLE IF NOT EXISTS channel_names USING fts5 (
    name, content = 'channels', content_rowid = 'id', tokenize = 'trigram'
);
CREATE TRIGGER IF NOT EXISTS channel_name_added AFTER INSERT ON channels BEGIN
    INSERT INTO channel_names (rowid, name) VALUES (NEW.id, NEW.name);
END;
CREATE TRIGGER IF NOT EXISTS channel_name_removed AFTER DELETE ON channels BEGIN
    INSERT INTO channel_names (channel_names, rowid, name) VALUES ('delete', OLD.id, OLD.name);
END;
CREATE TRIGGER IF NOT EXISTS channel_name_changed AFTER UPDATE OF name ON channels BEGIN
    INSERT INTO channel_names (channel_names, rowid, name) VALUES ('delete', OLD.id, OLD.name);
    INSERT INTO channel_names (rowid, name) VALUES (NEW.id, NEW.name);
END;
INSERT INTO channel_names (channel_names) VALUES ('rebuild');

-- migration: 3
-- Channel lists that must not walk a client's (or every) channel: an admin's
-- ?userId= finds the users by name, ?status=disabled walks only the disabled.
CREATE INDEX IF NOT EXISTS users_by_user_id ON users (user_id);
CREATE INDEX IF NOT EXISTS channels_disabled ON channels (client_id, id) WHERE enabled = 0;

-- Force deletes. A deleted client or user is marked (deleted_at) and renamed out
-- of the API's reach in one short transaction, and every read hides it and what
-- hangs off it; the purge worker then deletes its rows in small batches. A user's
-- share of its client's counters is taken off when it is marked, so the counter
-- triggers skip what the purge later deletes under a marked user.
ALTER TABLE clients ADD COLUMN deleted_at REAL;
ALTER TABLE users ADD COLUMN deleted_at REAL;
CREATE INDEX IF NOT EXISTS users_deleted ON users (id) WHERE deleted_at IS NOT NULL;

DROP TRIGGER IF EXISTS user_removed;
CREATE TRIGGER user_removed AFTER DELETE ON users WHEN OLD.deleted_at IS NULL BEGIN
    UPDATE clients SET users = users - 1 WHERE id = OLD.client_id;
END;
DROP TRIGGER IF EXISTS channel_removed;
CREATE TRIGGER channel_removed AFTER DELETE ON channels BEGIN
    UPDATE users SET channels = channels - 1,
                     live_channels = live_channels - (OLD.live_session_id IS NOT NULL)
     WHERE id = OLD.user_pk;
    UPDATE clients SET channels = channels - 1,
                       live_channels = live_channels - (OLD.live_session_id IS NOT NULL),
                       sessions = sessions - OLD.sessions,
                       live_seconds = live_seconds - OLD.live_seconds,
                       bytes_in = bytes_in - OLD.bytes_in
     WHERE id = OLD.client_id
       AND (SELECT deleted_at FROM users WHERE id = OLD.user_pk) IS NULL;
END;
-- migration: 4
-- When a session's figures (bytes_in, bitrate_kbps) were last measured: the base of
-- a bitrate from the growth of bytes_in, and of the bytes extrapolated at its end.
ALTER TABLE sessions ADD COLUMN sampled_at REAL;
-- migration: 5
-- HLS viewers (counted from nginx's access log) apart in each sample; `viewers` is
-- RTMP and HLS together. NULL in samples from before: none counted.
ALTER TABLE session_samples ADD COLUMN viewers_hls INTEGER;
-- Sessions deleted as history ([ingest] history_days): the channel's `sessions`
-- counts every broadcast ever; its session list counts the ones kept.
ALTER TABLE channels ADD COLUMN sessions_forgotten INTEGER NOT NULL DEFAULT 0;
-- Set once the samples of an ended session are averaged down to one a minute
-- ([ingest] sample_retention_days after its end); the index finds the ones due.
ALTER TABLE sessions ADD COLUMN samples_compacted INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS sessions_uncompacted ON sessions (id)
    WHERE samples_compacted = 0 AND ended_at IS NOT NULL;
-- migration: 6
-- Webhooks and the event log. One endpoint per client. The signing secret is kept
-- as is (it must sign), as stream keys are: the database file is 0600.
CREATE TABLE IF NOT EXISTS webhooks (
    id                INTEGER PRIMARY KEY,
    client_id         INTEGER NOT NULL UNIQUE REFERENCES clients (id) ON DELETE CASCADE,
    url               TEXT NOT NULL,
    events            TEXT,                -- JSON array of types; NULL: every type
    secret            TEXT NOT NULL,
    old_secret        TEXT,                -- signs too until old_secret_until (a rotation)
    old_secret_until  REAL,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL
);
-- An event is written in the transaction of the change that causes it (the outbox);
-- client_id owns the channel it is about. No foreign keys: the log outlives what it
-- tells of, until [webhooks] retention_days.
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    public_id   TEXT NOT NULL UNIQUE,
    client_id   INTEGER NOT NULL,
    channel_id  TEXT,                      -- the channel's public id, if about one
    type        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    data        TEXT NOT NULL              -- JSON
);
CREATE INDEX IF NOT EXISTS events_by_client ON events (client_id, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at);
-- One row per endpoint an event is for (its owner's, every admin's), made with it.
CREATE TABLE IF NOT EXISTS deliveries (
    event_id         INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    client_id        INTEGER NOT NULL,     -- whose endpoint
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status      INTEGER,
    last_error       TEXT,
    queued_at        REAL NOT NULL,        -- retried until 24 h after this
    next_attempt_at  REAL,
    delivered_at     REAL,
    PRIMARY KEY (event_id, client_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (client_id, event_id)
    WHERE status = 'pending';
-- The reconnect window: a session whose publisher left (left_at) stays open for the
-- channel's window (NULL: [ingest] reconnect_window); a resume adds the gap to
-- paused_seconds (not counted as live) and carries bytes_in over as bytes_base.
ALTER TABLE channels ADD COLUMN reconnect_window INTEGER;
ALTER TABLE sessions ADD COLUMN left_at REAL;
ALTER TABLE sessions ADD COLUMN paused_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN bytes_base INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER IF EXISTS session_ended;
CREATE TRIGGER session_ended AFTER UPDATE OF ended_at ON sessions
WHEN OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL BEGIN
    UPDATE channels SET live_seconds = live_seconds
                            + (NEW.ended_at - NEW.started_at - NEW.paused_seconds),
                        bytes_in = bytes_in + NEW.bytes_in
     WHERE id = NEW.channel_id;
    UPDATE clients SET live_seconds = live_seconds
                           + (NEW.ended_at - NEW.started_at - NEW.paused_seconds),
                       bytes_in = bytes_in + NEW.bytes_in
     WHERE id = (SELECT client_id FROM channels WHERE id = NEW.channel_id);
END;

-- migration: 7
-- Ingest nodes ([ingest.NAME] sections beside [ingest]'s `default`). A channel is
-- placed on one (`ingest`); a session names the node it is live on, which may be
-- another (a failover). ingest_nodes keeps what the API decides about a node: its
-- `accepting` as set by PATCH /v1/ingest/{name} (NULL: as configured), shared by
-- every process and kept across restarts; and its channel count for placement.
ALTER TABLE channels ADD COLUMN ingest TEXT NOT NULL DEFAULT 'default';
ALTER TABLE sessions ADD COLUMN ingest TEXT NOT NULL DEFAULT 'default';
CREATE INDEX IF NOT EXISTS sessions_live_by_ingest ON sessions (ingest) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS ingest_nodes (
    name      TEXT PRIMARY KEY,
    accepting INTEGER,
    channels  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO ingest_nodes (name, channels) SELECT ingest, count(*) FROM channels
    GROUP BY ingest;
CREATE TRIGGER IF NOT EXISTS channel_placed AFTER INSERT ON channels BEGIN
    INSERT INTO ingest_nodes (name, channels) VALUES (NEW.ingest, 1)
        ON CONFLICT (name) DO UPDATE SET channels = channels + 1;
END;
CREATE TRIGGER IF NOT EXISTS channel_unplaced AFTER DELETE ON channels BEGIN
    UPDATE ingest_nodes SET channels = channels - 1 WHERE name = OLD.ingest;
END;
