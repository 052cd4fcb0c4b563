-- roomcast schema for PostgreSQL, version 1.

CREATE TABLE rooms (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL,           -- Unix milliseconds
    is_private  BOOLEAN NOT NULL DEFAULT FALSE,
    owner_id    TEXT
);

-- Every message takes its id from this sequence while its room's row is
-- locked, so ids of one room are assigned in commit order across all nodes.
CREATE SEQUENCE message_ids;

CREATE TABLE messages (
    id             BIGINT PRIMARY KEY,
    room           TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    username       TEXT NOT NULL,
    user_kind      TEXT NOT NULL,
    content        TEXT NOT NULL,
    created_at     BIGINT NOT NULL,        -- Unix milliseconds
    client_msg_id  TEXT,
    reply_to       BIGINT,
    attachment     TEXT                    -- JSON file object, or NULL
);

CREATE INDEX messages_room_id ON messages (room, id);

CREATE UNIQUE INDEX messages_client_msg_id
    ON messages (room, user_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    room        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,             -- JSON
    user_id     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
