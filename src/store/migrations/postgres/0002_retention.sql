-- roomcast schema for PostgreSQL, version 2: retention by age reads this index.
CREATE INDEX messages_created_at ON messages (created_at);
