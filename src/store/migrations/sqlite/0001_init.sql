-- roomcast schema, version 1.

CREATE TABLE rooms (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,          -- Unix milliseconds
    is_private  INTEGER NOT NULL DEFAULT 0,
    owner_id    TEXT
);

CREATE TABLE messages (
    id             INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, even after retention
    room           TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    username       TEXT NOT NULL,
    user_kind      TEXT NOT NULL,
    content        TEXT NOT NULL,
    created_at     INTEGER NOT NULL,       -- Unix milliseconds
    client_msg_id  TEXT,
    reply_to       INTEGER,
    attachment     TEXT                    -- JSON file object, or NULL
);

-- Every history read is a range scan of this index.
CREATE INDEX messages_room_id ON messages (room, id);

-- A retried send (same user, room and client_msg_id) is stored once.
CREATE UNIQUE INDEX messages_client_msg_id
    ON messages (room, user_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    room        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,             -- JSON
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
