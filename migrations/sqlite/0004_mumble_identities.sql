-- The certificate a Mumble bot presents when its section names none (issue 17):
-- made on the endpoint's first start and kept, so the bot can be registered on
-- the Mumble server (which knows registered users by certificate) and keeps its
-- name. Keyed by the endpoint's config name ("mumble.ops"). Back it up with the
-- rest of the database: a lost key is a new, unregistered bot.
CREATE TABLE mumble_identities (
    endpoint   TEXT PRIMARY KEY,
    cert_pem   TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
