-- File sharing. An upload authorized over the WebSocket waits here for its
-- body; the PUT that carries it claims the row (pending → uploading), and a
-- complete upload marks it done and records the file in one statement, so a
-- token is spent once and any node can take the PUT.

CREATE TABLE uploads (
    id            TEXT PRIMARY KEY,
    file_id       TEXT NOT NULL,           -- the blob's name, chosen at authorization
    token_hash    TEXT NOT NULL,           -- SHA-256 of the upload token, hex
    room          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    username      TEXT NOT NULL,
    user_kind     TEXT NOT NULL,
    filename      TEXT NOT NULL,
    size          BIGINT NOT NULL,
    content_type  TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,           -- Unix milliseconds
    state         TEXT NOT NULL DEFAULT 'pending', -- pending | uploading | done
    claimed_at    BIGINT
);

CREATE INDEX uploads_expires_at ON uploads (expires_at);

CREATE TABLE files (
    id            TEXT PRIMARY KEY,
    room          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    name          TEXT NOT NULL,
    size          BIGINT NOT NULL,
    content_type  TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,           -- Unix milliseconds
    message_id    BIGINT                     -- the chat message that shares it
);

CREATE INDEX files_message_id ON files (message_id);
