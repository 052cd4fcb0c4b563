-- roomcast schema for PostgreSQL, version 3: accounts and private-room members.

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL,
    username_key   TEXT NOT NULL UNIQUE,   -- lower-cased: names are unique case-insensitively
    password_hash  TEXT NOT NULL,          -- Argon2id, PHC string
    role           TEXT NOT NULL DEFAULT 'user',
    created_at     BIGINT NOT NULL
);

CREATE TABLE room_members (
    room      TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    added_at  BIGINT NOT NULL,
    PRIMARY KEY (room, user_id)
);
