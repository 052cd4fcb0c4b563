-- Webhook deliveries. A row is written in the same transaction as the
-- message or event it tells of, one per webhook that wants its room, and
-- deleted once the webhook answered 2xx; a row that failed every try is
-- kept with failed_at set.

CREATE TABLE webhook_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook          TEXT NOT NULL,       -- the webhook's id (from its URL)
    kind             TEXT NOT NULL,       -- chat_message, file_shared, project_update, ticket_update
    body             TEXT NOT NULL,       -- the JSON that is POSTed
    created_at       INTEGER NOT NULL,       -- Unix milliseconds
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    leased_by        TEXT,                -- the node delivering it
    leased_until     INTEGER,                -- a node is delivering it until then
    failed_at        INTEGER,                -- given up after the last try
    last_error       TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (webhook, next_attempt_at)
    WHERE failed_at IS NULL;
