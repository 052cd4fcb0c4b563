//! The PostgreSQL store, for installations that outgrow one SQLite file or
//! run several roomcast nodes against one database.
//!
//! One writer task per process commits appends in batches, like the SQLite
//! store. Each batch locks the rows of the rooms it writes to (in name order,
//! so two batches never deadlock) before it draws ids from the `message_ids`
//! sequence. Two nodes writing to the same room therefore take turns, and a
//! message that becomes visible later always has a higher id than every
//! message of that room already visible: a client recovering with `since_id`
//! cannot skip one.
//!
//! Reads run on a second connection, concurrently with the writer.

use super::rows;
use super::{
    Account, Appended, BoxFuture, CommitCallback, CommitSink, FileRecord, HistoryPage,
    MessageStore, NewEvent, NewMessage, NewRoom, Page, RecordedEvent, Retention, RoomRecord,
    Staleness, StoreError, UploadClaim, UploadRecord, WebhookDelivery, WebhookRoutes,
    claim_refusal, deliver_commit, event_entries, message_entries,
};
use crate::protocol::{Message, Timestamp};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

/// Schema migrations, applied in order inside one transaction; the table
/// `roomcast_schema` records the version. Never edit a released migration.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_retention.sql"),
    include_str!("migrations/postgres/0003_accounts.sql"),
    include_str!("migrations/postgres/0004_event_keys.sql"),
    include_str!("migrations/postgres/0005_files.sql"),
    include_str!("migrations/postgres/0006_webhook_outbox.sql"),
];

/// Key of the advisory lock that serializes migrations of concurrent starts.
const MIGRATION_LOCK: i64 = 0x726f_6f6d_6361_7374;

/// Most appends committed in one transaction (see the SQLite store).
const MAX_BATCH: usize = 1024;

const MESSAGE_COLUMNS: &str = message_columns!();

/// History pages: the newest, before an id, after an id. Parameters: room,
/// limit, id. Each is a range scan of the `(room, id)` index; a test checks
/// the query plans.
pub const HISTORY_QUERIES: [&str; 3] = [
    concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE room = $1 ORDER BY id DESC LIMIT $2"
    ),
    concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE room = $1 AND id < $3 ORDER BY id DESC LIMIT $2"
    ),
    concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE room = $1 AND id > $3 ORDER BY id ASC LIMIT $2"
    ),
];

enum Command {
    Append(Box<NewMessage>, CommitCallback),
    Flush(oneshot::Sender<()>),
    WriteThrough(Arc<dyn CommitSink>),
}

/// Message store on PostgreSQL.
pub struct PostgresStore {
    commands: mpsc::UnboundedSender<Command>,
    reader: Connection,
    webhooks: Arc<WebhookRoutes>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore { .. }")
    }
}

/// A client that reconnects when its connection has dropped.
struct Connection {
    config: tokio_postgres::Config,
    client: Mutex<Arc<Client>>,
}

impl Connection {
    async fn open(config: tokio_postgres::Config) -> Result<Connection, StoreError> {
        let client = connect(&config).await?;
        Ok(Connection {
            config,
            client: Mutex::new(Arc::new(client)),
        })
    }

    /// The current client, reconnecting first if the connection was lost.
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let current = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = Arc::new(connect(&self.config).await?);
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

impl PostgresStore {
    /// Connects, applies migrations, and starts the writer task.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with_webhooks(url, Arc::default()).await
    }

    /// [`PostgresStore::open`] for a server with webhooks: each stored
    /// message or event of a room a webhook wants gets its delivery row in
    /// its own transaction.
    pub async fn open_with_webhooks(
        url: &str,
        webhooks: Arc<WebhookRoutes>,
    ) -> Result<PostgresStore, StoreError> {
        let config: tokio_postgres::Config = url.parse()?;
        let mut setup = connect(&config).await?;
        migrate(&mut setup).await?;
        drop(setup);
        let writer = connect(&config).await?;
        let reader = Connection::open(config.clone()).await?;
        let (commands, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(config, writer, queue, webhooks.clone()));
        Ok(PostgresStore {
            commands,
            reader,
            webhooks,
        })
    }
}

impl MessageStore for PostgresStore {
    fn append(&self, message: NewMessage, on_commit: CommitCallback) {
        if let Err(mpsc::error::SendError(Command::Append(_, on_commit))) = self
            .commands
            .send(Command::Append(Box::new(message), on_commit))
        {
            on_commit(Err(StoreError::Closed));
        }
    }

    fn history(
        &self,
        room: &str,
        page: Page,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryPage, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
            let [newest, before, after] = HISTORY_QUERIES;
            let rows = match page {
                Page::Newest => client.query(newest, &[&room, &fetch]).await?,
                Page::Before(id) => client.query(before, &[&room, &fetch, &id]).await?,
                Page::After(id) => client.query(after, &[&room, &fetch, &id]).await?,
            };
            let descending = !matches!(page, Page::After(_));
            let mut messages = rows
                .iter()
                .map(rows::message)
                .collect::<Result<Vec<_>, _>>()?;
            let has_more = messages.len() > limit;
            messages.truncate(limit);
            if descending {
                messages.reverse();
            }
            Ok(HistoryPage { messages, has_more })
        })
    }

    fn ensure_room(&self, room: &str) -> BoxFuture<'_, Result<RoomRecord, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute(
                    "INSERT INTO rooms (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&room, &Timestamp::now().as_millis()],
                )
                .await?;
            find_room(&client, &room)
                .await?
                .ok_or_else(|| StoreError::Corrupt("room vanished".into()))
        })
    }

    fn room(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomRecord>, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            find_room(&client, &room).await
        })
    }

    fn record_event(&self, event: NewEvent) -> BoxFuture<'_, Result<RecordedEvent, StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            // The id is drawn first, so that the webhook deliveries (which
            // carry it) are written by the same statement as the event.
            let id: i64 = client
                .query_one(
                    "SELECT nextval(pg_get_serial_sequence('events', 'id'))",
                    &[],
                )
                .await?
                .try_get(0)?;
            let entries = event_entries(
                &self.webhooks,
                &event.room,
                event.kind,
                id,
                &event.user_id,
                &event.payload,
            );
            let webhooks: Vec<&str> = entries.iter().map(|e| e.webhook.as_str()).collect();
            let kinds: Vec<&str> = entries.iter().map(|e| e.kind).collect();
            let bodies: Vec<&str> = entries.iter().map(|e| e.body.as_str()).collect();
            let now = Timestamp::now().as_millis();
            let inserted = client
                .query_opt(
                    "WITH e AS (INSERT INTO events \
                     (id, room, kind, payload, user_id, created_at, idempotency_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (room, idempotency_key) WHERE idempotency_key IS NOT NULL \
                     DO NOTHING RETURNING id), \
                     d AS (INSERT INTO webhook_outbox (webhook, kind, body, created_at, next_attempt_at) \
                     SELECT w, k, b, $6, $6 FROM UNNEST($8::text[], $9::text[], $10::text[]) AS t(w, k, b) \
                     WHERE EXISTS (SELECT 1 FROM e)) \
                     SELECT id FROM e",
                    &[
                        &id,
                        &&*event.room,
                        &event.kind,
                        &event.payload.to_string(),
                        &&*event.user_id,
                        &now,
                        &event.idempotency_key,
                        &webhooks,
                        &kinds,
                        &bodies,
                    ],
                )
                .await?;
            if inserted.is_some() {
                return Ok(RecordedEvent {
                    id,
                    duplicate: false,
                });
            }
            let row = client
                .query_one(
                    "SELECT id FROM events WHERE room = $1 AND idempotency_key = $2",
                    &[&&*event.room, &event.idempotency_key],
                )
                .await?;
            Ok(RecordedEvent {
                id: row.try_get(0)?,
                duplicate: true,
            })
        })
    }

    fn prune(&self, retention: Retention, chunk: usize) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            let chunk = i64::try_from(chunk).unwrap_or(i64::MAX);
            let mut deleted = 0;
            if let Some(cutoff) = retention.cutoff() {
                deleted += client
                    .execute(
                        "DELETE FROM messages WHERE id IN \
                         (SELECT id FROM messages WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                        &[&cutoff.as_millis(), &chunk],
                    )
                    .await?;
            }
            if let Some(keep) = retention.max_messages_per_room {
                let keep = i64::try_from(keep).unwrap_or(i64::MAX);
                for row in client.query("SELECT name FROM rooms", &[]).await? {
                    let room: String = row.try_get(0)?;
                    deleted += client
                        .execute(
                            "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
                             WHERE room = $1 AND id < (SELECT id FROM messages WHERE room = $1 \
                             ORDER BY id DESC LIMIT 1 OFFSET $2) ORDER BY id LIMIT $3)",
                            &[&room, &(keep - 1).max(0), &chunk],
                        )
                        .await?;
                }
            }
            Ok(deleted)
        })
    }

    fn create_room(&self, room: NewRoom) -> BoxFuture<'_, Result<RoomRecord, StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            let inserted = client
                .execute(
                    "INSERT INTO rooms (name, created_at, is_private, owner_id) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name) DO NOTHING",
                    &[&room.name, &Timestamp::now().as_millis(), &room.private, &room.owner_id],
                )
                .await?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            find_room(&client, &room.name)
                .await?
                .ok_or_else(|| StoreError::Corrupt("room vanished".into()))
        })
    }

    fn set_member(
        &self,
        room: &str,
        user_id: &str,
        member: bool,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (room, user_id) = (room.to_owned(), user_id.to_owned());
        Box::pin(async move {
            let client = self.reader.client().await?;
            let changed = if member {
                client
                    .execute(
                        "INSERT INTO room_members (room, user_id, added_at) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                        &[&room, &user_id, &Timestamp::now().as_millis()],
                    )
                    .await?
            } else {
                client
                    .execute(
                        "DELETE FROM room_members WHERE room = $1 AND user_id = $2",
                        &[&room, &user_id],
                    )
                    .await?
            };
            Ok(changed > 0)
        })
    }

    fn is_member(&self, room: &str, user_id: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (room, user_id) = (room.to_owned(), user_id.to_owned());
        Box::pin(async move {
            let client = self.reader.client().await?;
            let row = client
                .query_opt(
                    "SELECT 1 FROM room_members WHERE room = $1 AND user_id = $2",
                    &[&room, &user_id],
                )
                .await?;
            Ok(row.is_some())
        })
    }

    fn create_account(&self, account: Account) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            let inserted = client
                .execute(
                    "INSERT INTO users (id, username, username_key, password_hash, role, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[
                        &account.id,
                        &account.username,
                        &account.username.to_lowercase(),
                        &account.password_hash,
                        &account.role,
                        &account.created_at.as_millis(),
                    ],
                )
                .await?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            Ok(())
        })
    }

    fn find_account(&self, username: &str) -> BoxFuture<'_, Result<Option<Account>, StoreError>> {
        let key = username.to_lowercase();
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .query_opt(
                    "SELECT id, username, password_hash, role, created_at FROM users WHERE username_key = $1",
                    &[&key],
                )
                .await?
                .map(|row| rows::account(&row))
                .transpose()
        })
    }

    fn forget_unused_room(&self, room: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            let removed = client
                .execute(
                    "DELETE FROM rooms WHERE name = $1 AND NOT is_private AND owner_id IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM messages WHERE room = $1) \
                     AND NOT EXISTS (SELECT 1 FROM events WHERE room = $1) \
                     AND NOT EXISTS (SELECT 1 FROM room_members WHERE room = $1)",
                    &[&room],
                )
                .await?;
            Ok(removed > 0)
        })
    }

    fn account_alike(&self, skeleton: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let skeleton = skeleton.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            let query = format!(
                "SELECT EXISTS (SELECT 1 FROM users WHERE {} = $1)",
                crate::auth::SKELETON_SQL
            );
            Ok(client.query_one(&query, &[&skeleton]).await?.get(0))
        })
    }

    fn list_accounts(&self) -> BoxFuture<'_, Result<Vec<Account>, StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .query(
                    "SELECT id, username, password_hash, role, created_at FROM users ORDER BY username_key",
                    &[],
                )
                .await?
                .iter()
                .map(rows::account)
                .collect()
        })
    }

    fn create_upload(&self, upload: UploadRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute(
                    "INSERT INTO uploads (id, file_id, token_hash, room, user_id, username, \
                     user_kind, filename, size, content_type, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &upload.id,
                        &upload.file_id,
                        &upload.token_hash,
                        &&*upload.room,
                        &&*upload.user.id,
                        &&*upload.user.username,
                        &upload.user.kind.as_str(),
                        &upload.filename,
                        &rows::size_column(upload.size),
                        &upload.content_type,
                        &upload.expires_at.as_millis(),
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn claim_upload(
        &self,
        id: &str,
        token_hash: &str,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<UploadClaim, StoreError>> {
        let (id, token_hash) = (id.to_owned(), token_hash.to_owned());
        Box::pin(async move {
            let client = self.reader.client().await?;
            let claimed = client
                .query_opt(
                    "UPDATE uploads SET state = 'uploading', claimed_at = $3 \
                     WHERE id = $1 AND token_hash = $2 AND state = 'pending' AND expires_at > $3 \
                     RETURNING id, file_id, token_hash, room, user_id, username, user_kind, \
                     filename, size, content_type, expires_at",
                    &[&id, &token_hash, &now.as_millis()],
                )
                .await?;
            if let Some(row) = claimed {
                return Ok(UploadClaim::Claimed(rows::upload(&row)?));
            }
            let found = client
                .query_opt(
                    "SELECT token_hash, state FROM uploads WHERE id = $1",
                    &[&id],
                )
                .await?
                .map(|row| Ok::<_, StoreError>((row.try_get(0)?, row.try_get(1)?)))
                .transpose()?;
            Ok(claim_refusal(found, &token_hash))
        })
    }

    fn release_upload(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute(
                    "UPDATE uploads SET state = 'pending', claimed_at = NULL \
                     WHERE id = $1 AND state = 'uploading'",
                    &[&id],
                )
                .await?;
            Ok(())
        })
    }

    fn finish_upload(
        &self,
        upload_id: &str,
        file: FileRecord,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let upload_id = upload_id.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            // One statement, so the two changes commit together.
            let inserted = client
                .execute(
                    "WITH done AS (UPDATE uploads SET state = 'done' \
                     WHERE id = $1 AND state = 'uploading' RETURNING id) \
                     INSERT INTO files (id, room, user_id, name, size, content_type, sha256, \
                     created_at) SELECT $2, $3, $4, $5, $6, $7, $8, $9 FROM done",
                    &[
                        &upload_id,
                        &file.id,
                        &&*file.room,
                        &&*file.user_id,
                        &file.name,
                        &rows::size_column(file.size),
                        &file.content_type,
                        &file.sha256,
                        &file.created_at.as_millis(),
                    ],
                )
                .await?;
            Ok(inserted > 0)
        })
    }

    fn attach_file(&self, file_id: &str, message_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let file_id = file_id.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute(
                    "UPDATE files SET message_id = $2 WHERE id = $1",
                    &[&file_id, &message_id],
                )
                .await?;
            Ok(())
        })
    }

    fn file(&self, id: &str) -> BoxFuture<'_, Result<Option<FileRecord>, StoreError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .query_opt(
                    "SELECT id, room, user_id, name, size, content_type, sha256, created_at \
                     FROM files WHERE id = $1",
                    &[&id],
                )
                .await?
                .map(|row| rows::file(&row))
                .transpose()
        })
    }

    fn stale_blobs(
        &self,
        staleness: Staleness,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let (now, before) = (staleness.now.as_millis(), staleness.before.as_millis());
            client
                .execute(
                    "DELETE FROM uploads WHERE state = 'done' AND expires_at < $1",
                    &[&now],
                )
                .await?;
            let mut stale: Vec<String> = client
                .query(
                    "SELECT file_id FROM uploads WHERE (state = 'pending' AND expires_at < $1) \
                     OR (state = 'uploading' AND claimed_at < $2) LIMIT $3",
                    &[&now, &before, &limit],
                )
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            let files = client
                .query(
                    "SELECT id FROM files WHERE (message_id IS NULL AND created_at < $1) \
                     OR (message_id IS NOT NULL \
                         AND NOT EXISTS (SELECT 1 FROM messages WHERE id = files.message_id)) \
                     LIMIT $2",
                    &[&before, &limit],
                )
                .await?;
            for row in files {
                stale.push(row.try_get(0)?);
            }
            Ok(stale)
        })
    }

    fn forget_blobs(&self, file_ids: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute(
                    "DELETE FROM uploads WHERE file_id = ANY($1) AND state <> 'done'",
                    &[&file_ids],
                )
                .await?;
            client
                .execute("DELETE FROM files WHERE id = ANY($1)", &[&file_ids])
                .await?;
            Ok(())
        })
    }

    fn lease_webhooks(
        &self,
        node: &str,
        webhooks: Vec<String>,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<WebhookDelivery>, StoreError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            client
                .query(
                    "UPDATE webhook_outbox SET leased_until = $3, leased_by = $5 WHERE id IN (\
                     SELECT id FROM webhook_outbox \
                     WHERE webhook = ANY($1) AND failed_at IS NULL AND next_attempt_at <= $2 \
                     AND (leased_until IS NULL OR leased_until < $2) \
                     ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     RETURNING id, webhook, kind, body, attempts",
                    &[
                        &webhooks,
                        &now.as_millis(),
                        &lease_until.as_millis(),
                        &limit,
                        &node,
                    ],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(WebhookDelivery {
                        id: row.try_get(0)?,
                        webhook: row.try_get(1)?,
                        kind: row.try_get(2)?,
                        body: row.try_get(3)?,
                        attempts: i64::from(row.try_get::<_, i32>(4)?),
                    })
                })
                .collect()
        })
    }

    fn release_webhooks(&self, node: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute(
                    "UPDATE webhook_outbox SET leased_until = NULL, leased_by = NULL \
                     WHERE leased_by = $1 AND leased_until IS NOT NULL",
                    &[&node],
                )
                .await?;
            Ok(())
        })
    }

    fn webhook_delivered(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
                .await?;
            Ok(())
        })
    }

    fn webhook_failed(
        &self,
        id: i64,
        retry_at: Option<Timestamp>,
        error: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.reader.client().await?;
            client
                .execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, leased_until = NULL, \
                     last_error = $4, next_attempt_at = COALESCE($2, next_attempt_at), \
                     failed_at = CASE WHEN $2::int8 IS NULL THEN $3::int8 END WHERE id = $1",
                    &[
                        &id,
                        &retry_at.map(Timestamp::as_millis),
                        &Timestamp::now().as_millis(),
                        &error,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let (done, flushed) = oneshot::channel();
        let queued = self.commands.send(Command::Flush(done));
        Box::pin(async move {
            queued.map_err(|_| StoreError::Closed)?;
            flushed.await.map_err(|_| StoreError::Closed)
        })
    }

    fn write_through(&self, flusher: Arc<dyn CommitSink>) {
        // Refused only when the writer has stopped, and then nothing is left
        // to write.
        let _ = self.commands.send(Command::WriteThrough(flusher));
    }
}

/// The writer task: commits queued appends in batches until the store is dropped.
async fn write_loop(
    config: tokio_postgres::Config,
    mut client: Client,
    mut queue: mpsc::UnboundedReceiver<Command>,
    webhooks: Arc<WebhookRoutes>,
) {
    // Messages and their callbacks side by side: the messages are borrowed
    // across the commit's awaits, the callbacks (not `Sync`) are not.
    let mut batch: Vec<Box<NewMessage>> = Vec::new();
    let mut callbacks: Vec<CommitCallback> = Vec::new();
    let mut flushes = Vec::new();
    let mut flusher: Option<Arc<dyn CommitSink>> = None;
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Append(message, on_commit) => {
                    batch.push(message);
                    callbacks.push(on_commit);
                }
                Command::Flush(done) => flushes.push(done),
                Command::WriteThrough(to) => flusher = Some(to),
            }
            next = if batch.len() < MAX_BATCH {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            if client.is_closed() {
                match connect(&config).await {
                    Ok(fresh) => client = fresh,
                    Err(err) => tracing::error!(error = %err, "cannot reconnect to PostgreSQL"),
                }
            }
            let outcome = commit(&mut client, &batch, &webhooks).await;
            batch.clear();
            deliver_commit(flusher.as_ref(), std::mem::take(&mut callbacks), outcome);
        }
        for done in flushes.drain(..) {
            // The caller may have stopped waiting; the flush is done anyway.
            let _ = done.send(());
        }
    }
}

/// Writes webhook delivery rows (inside the caller's transaction).
async fn queue_deliveries(
    transaction: &tokio_postgres::Transaction<'_>,
    entries: &[super::OutboxEntry],
) -> Result<(), tokio_postgres::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let webhooks: Vec<&str> = entries.iter().map(|e| e.webhook.as_str()).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind).collect();
    let bodies: Vec<&str> = entries.iter().map(|e| e.body.as_str()).collect();
    transaction
        .execute(
            "INSERT INTO webhook_outbox (webhook, kind, body, created_at, next_attempt_at) \
             SELECT w, k, b, $4, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(w, k, b)",
            &[&webhooks, &kinds, &bodies, &Timestamp::now().as_millis()],
        )
        .await?;
    Ok(())
}

/// What to do with one message of a batch.
enum Plan {
    Insert(usize),
    Duplicate(Box<Message>),
    DuplicateInBatch(usize),
    ReplyToNotFound,
}

/// Writes one batch in one transaction and returns each message's outcome.
async fn commit(
    client: &mut Client,
    batch: &[Box<NewMessage>],
    webhooks: &WebhookRoutes,
) -> Result<Vec<Result<Appended, StoreError>>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let mut rooms: Vec<&str> = batch.iter().map(|m| &*m.room).collect();
    rooms.sort_unstable();
    rooms.dedup();
    transaction
        .execute(
            "INSERT INTO rooms (name, created_at) SELECT name, $2 FROM UNNEST($1::text[]) AS name \
             ORDER BY name ON CONFLICT (name) DO NOTHING",
            &[&rooms, &Timestamp::now().as_millis()],
        )
        .await?;
    transaction
        .query(
            "SELECT name FROM rooms WHERE name = ANY($1) ORDER BY name FOR UPDATE",
            &[&rooms],
        )
        .await?;
    // Each room's newest id, read once the rooms are locked (a statement
    // of its own: a statement that waited for the locks would still see
    // the rows as they were before it waited). The batch's first message in
    // a room follows it.
    let mut newest: HashMap<String, Option<i64>> = HashMap::new();
    for row in transaction
        .query(
            "SELECT r, (SELECT m.id FROM messages m WHERE m.room = r ORDER BY m.id DESC LIMIT 1) \
             FROM UNNEST($1::text[]) AS r",
            &[&rooms],
        )
        .await?
    {
        newest.insert(row.try_get(0)?, row.try_get(1)?);
    }

    // Earlier sends of the same client_msg_id.
    let keyed: Vec<&NewMessage> = batch
        .iter()
        .map(|m| &**m)
        .filter(|m| m.client_msg_id.is_some())
        .collect();
    let mut stored: HashMap<(String, String, String), Message> = HashMap::new();
    if !keyed.is_empty() {
        let key_rooms: Vec<&str> = keyed.iter().map(|m| &*m.room).collect();
        let key_users: Vec<&str> = keyed.iter().map(|m| &*m.user.id).collect();
        let key_ids: Vec<&str> = keyed
            .iter()
            .filter_map(|m| m.client_msg_id.as_deref())
            .collect();
        let rows = transaction
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE (room, user_id, client_msg_id) IN \
                     (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))"
                ),
                &[&key_rooms, &key_users, &key_ids],
            )
            .await?;
        for row in &rows {
            if let Ok(message) = rows::message(row) {
                let key = (
                    message.room.to_string(),
                    message.user.id.to_string(),
                    message.client_msg_id.clone().unwrap_or_default(),
                );
                stored.insert(key, message);
            }
        }
    }

    // Messages that replies point to.
    let reply_ids: Vec<i64> = batch.iter().filter_map(|m| m.reply_to).collect();
    let mut replyable: HashSet<(i64, String)> = HashSet::new();
    if !reply_ids.is_empty() {
        for row in transaction
            .query(
                "SELECT id, room FROM messages WHERE id = ANY($1)",
                &[&reply_ids],
            )
            .await?
        {
            replyable.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }

    let mut plans = Vec::with_capacity(batch.len());
    let mut first_in_batch: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut inserts = 0;
    for (index, message) in batch.iter().enumerate() {
        if let Some(client_msg_id) = message.client_msg_id.as_deref() {
            let key = (
                message.room.to_string(),
                message.user.id.to_string(),
                client_msg_id.to_owned(),
            );
            if let Some(existing) = stored.get(&key) {
                plans.push(Plan::Duplicate(Box::new(existing.clone())));
                continue;
            }
            let batch_key = (&*message.room, &*message.user.id, client_msg_id);
            if let Some(&earlier) = first_in_batch.get(&batch_key) {
                plans.push(Plan::DuplicateInBatch(earlier));
                continue;
            }
            first_in_batch.insert(batch_key, index);
        }
        if let Some(reply_to) = message.reply_to
            && !replyable.contains(&(reply_to, message.room.to_string()))
        {
            plans.push(Plan::ReplyToNotFound);
            continue;
        }
        plans.push(Plan::Insert(inserts));
        inserts += 1;
    }

    // Ids drawn while the rooms are locked, in batch order.
    let mut ids: Vec<i64> = Vec::with_capacity(inserts);
    if inserts > 0 {
        for row in transaction
            .query(
                "SELECT nextval('message_ids') FROM generate_series(1, $1::int8)",
                &[&(inserts as i64)],
            )
            .await?
        {
            ids.push(row.try_get(0)?);
        }
        ids.sort_unstable();
        let inserted: Vec<&NewMessage> = batch
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| matches!(plan, Plan::Insert(_)))
            .map(|(m, _)| &**m)
            .collect();
        let column =
            |f: fn(&NewMessage) -> String| inserted.iter().map(|m| f(m)).collect::<Vec<_>>();
        let attachments: Vec<Option<String>> = inserted
            .iter()
            .map(|m| {
                m.attachment
                    .as_ref()
                    .and_then(|file| serde_json::to_string(file).ok())
            })
            .collect();
        transaction
            .execute(
                "INSERT INTO messages (id, room, user_id, username, user_kind, content, created_at, \
                 client_msg_id, reply_to, attachment) SELECT * FROM UNNEST($1::int8[], $2::text[], \
                 $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::text[], $9::int8[], \
                 $10::text[])",
                &[
                    &ids,
                    &column(|m| m.room.to_string()),
                    &column(|m| m.user.id.to_string()),
                    &column(|m| m.user.username.to_string()),
                    &column(|m| m.user.kind.as_str().to_owned()),
                    &column(|m| m.content.clone()),
                    &inserted
                        .iter()
                        .map(|m| m.created_at.as_millis())
                        .collect::<Vec<_>>(),
                    &inserted
                        .iter()
                        .map(|m| m.client_msg_id.clone())
                        .collect::<Vec<_>>(),
                    &inserted.iter().map(|m| m.reply_to).collect::<Vec<_>>(),
                    &attachments,
                ],
            )
            .await?;
        if !webhooks.is_empty() {
            let entries: Vec<super::OutboxEntry> = inserted
                .iter()
                .zip(&ids)
                .flat_map(|(new, id)| message_entries(webhooks, &stored_message(*id, new)))
                .collect();
            queue_deliveries(&transaction, &entries).await?;
        }
    }
    transaction.commit().await?;

    let mut results: Vec<Result<Appended, StoreError>> = Vec::with_capacity(batch.len());
    for (new, plan) in batch.iter().zip(plans) {
        let result = match plan {
            Plan::Insert(slot) => {
                let previous = newest
                    .get_mut(&*new.room)
                    .and_then(|newest| newest.replace(ids[slot]));
                Ok(Appended {
                    message: stored_message(ids[slot], new),
                    duplicate: false,
                    previous,
                })
            }
            Plan::Duplicate(message) => Ok(Appended {
                message: *message,
                duplicate: true,
                previous: None,
            }),
            Plan::DuplicateInBatch(earlier) => match &results[earlier] {
                Ok(first) => Ok(Appended {
                    message: first.message.clone(),
                    duplicate: true,
                    previous: None,
                }),
                Err(_) => Err(StoreError::ReplyToNotFound),
            },
            Plan::ReplyToNotFound => Err(StoreError::ReplyToNotFound),
        };
        results.push(result);
    }
    Ok(results)
}

fn stored_message(id: i64, new: &NewMessage) -> Message {
    Message {
        id,
        room: new.room.clone(),
        user: new.user.clone(),
        content: new.content.clone(),
        created_at: new.created_at,
        client_msg_id: new.client_msg_id.clone(),
        reply_to: new.reply_to,
        attachment: new.attachment.clone(),
    }
}

async fn find_room(client: &Client, room: &str) -> Result<Option<RoomRecord>, StoreError> {
    let row = client
        .query_opt(
            "SELECT name, created_at, is_private, owner_id FROM rooms WHERE name = $1",
            &[&room],
        )
        .await?;
    row.map(|row| {
        Ok(RoomRecord {
            name: row.try_get(0)?,
            created_at: Timestamp(row.try_get(1)?),
            private: row.try_get(2)?,
            owner_id: row.try_get(3)?,
        })
    })
    .transpose()
}

/// Brings the schema up to date, refusing a database from a newer roomcast.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    transaction
        .batch_execute("CREATE TABLE IF NOT EXISTS roomcast_schema (version INT NOT NULL)")
        .await?;
    let found: i32 = transaction
        .query_one("SELECT COALESCE(MAX(version), 0) FROM roomcast_schema", &[])
        .await?
        .try_get(0)?;
    let supported = MIGRATIONS.len() as i32;
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            found: i64::from(found),
            supported: i64::from(supported),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO roomcast_schema (version) VALUES ($1)",
                &[&(index as i32 + 1)],
            )
            .await?;
        tracing::info!(version = index + 1, "applied PostgreSQL schema migration");
    }
    transaction.commit().await?;
    Ok(())
}
