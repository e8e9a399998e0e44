-- Room events taken from the homeserver, kept from before their transaction is
-- acknowledged until the bridge has handled them (played a voice message,
-- answered a command): a crash in between replays them at the next start, and
-- a handled one is never handled again (issue 14.6). Kept in step with
-- ../sqlite/0002_inbound_events.sql.
CREATE TABLE inbound_events (
    seq         BIGSERIAL NOT NULL PRIMARY KEY,
    event_id    TEXT      NOT NULL UNIQUE,
    room_id     TEXT      NOT NULL,
    -- The event as the homeserver sent it (JSON).
    event       TEXT      NOT NULL,
    received_at BIGINT    NOT NULL,
    -- NULL until handled.
    done_at     BIGINT
);
CREATE INDEX inbound_events_pending ON inbound_events (done_at, seq);
