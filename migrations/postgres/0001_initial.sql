-- walkie-bridge store, PostgreSQL. Times are unix milliseconds (BIGINT).
-- Kept in step with ../sqlite/0001_initial.sql: same tables, columns and
-- meaning; each backend has its own migration set because later changes
-- (ALTER TABLE, types) will differ between the two dialects.

-- Appservice transactions already processed (DESIGN.md §4: each txnId once).
CREATE TABLE handled_txns (
    txn_id     TEXT   NOT NULL PRIMARY KEY,
    handled_at BIGINT NOT NULL
);
CREATE INDEX handled_txns_handled_at ON handled_txns (handled_at);

-- Room aliases of [[channel]] room = "#…" resolved to room ids.
CREATE TABLE rooms (
    alias       TEXT   NOT NULL PRIMARY KEY,
    room_id     TEXT   NOT NULL,
    resolved_at BIGINT NOT NULL
);

-- Puppets standing for external talkers.
CREATE TABLE puppets (
    user_id      TEXT    NOT NULL PRIMARY KEY,
    endpoint     TEXT    NOT NULL,
    talker_name  TEXT    NOT NULL,
    display_name TEXT    NOT NULL,
    registered   BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at   BIGINT  NOT NULL
);

CREATE TABLE puppet_rooms (
    user_id   TEXT   NOT NULL REFERENCES puppets (user_id) ON DELETE CASCADE,
    room_id   TEXT   NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- MSC4002 opt-ins. device_id '' is the user-wide opt-in (covers every device);
-- until_ms NULL is permanent.
CREATE TABLE opt_ins (
    user_id   TEXT   NOT NULL,
    device_id TEXT   NOT NULL DEFAULT '',
    until_ms  BIGINT,
    since_ms  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX opt_ins_until_ms ON opt_ins (until_ms);

-- Archive outbox: one row per recorded transmission, keyed by its id (also the
-- Matrix transaction id of the m.audio it becomes). Pending while event_id is NULL.
CREATE TABLE outbox (
    tx_id           TEXT   NOT NULL PRIMARY KEY,
    channel         TEXT   NOT NULL,
    room_id         TEXT   NOT NULL,
    sender          TEXT   NOT NULL,
    file_path       TEXT   NOT NULL,
    duration_ms     BIGINT NOT NULL,
    size_bytes      BIGINT NOT NULL,
    waveform        TEXT   NOT NULL,
    mimetype        TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    mxc_uri         TEXT,
    event_id        TEXT,
    posted_at       BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT
);
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at) WHERE event_id IS NULL;
CREATE INDEX outbox_pending_created ON outbox (created_at) WHERE event_id IS NULL;
CREATE INDEX outbox_posted_at ON outbox (posted_at) WHERE event_id IS NOT NULL;
