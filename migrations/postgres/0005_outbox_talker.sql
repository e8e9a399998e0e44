-- Who talked (the recording's ARTIST tag, e.g. "kilo (Mumble)"), so the live
-- page's history can list an archived transmission without fetching it
-- (issue 20). NULL for rows queued before this column existed.
ALTER TABLE outbox ADD COLUMN talker TEXT;
-- The history asks for a channel's latest posted transmissions.
CREATE INDEX outbox_channel_posted ON outbox (channel, created_at) WHERE event_id IS NOT NULL;
