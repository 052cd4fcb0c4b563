-- Events published through the HTTP API may carry an idempotency key: a
-- retry with the same key in the same room finds the event stored first.

ALTER TABLE events ADD COLUMN idempotency_key TEXT;

CREATE UNIQUE INDEX events_idempotency_key
    ON events (room, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
