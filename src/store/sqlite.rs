//! The embedded SQLite store.
//!
//! One writer owns the database connection and works through a queue of
//! commands in order: a thread of its own for a database file, whose commits
//! wait for the disk; a task on the server's runtime for an in-memory
//! database, which never waits for anything (no thread is woken per message,
//! there or back). Appends that are waiting in the queue when the thread
//! gets to them are written in one transaction and made durable with one
//! commit (group commit): under load, many messages share one fsync, and a
//! lone message is committed at once. Reads are queued behind the writes that
//! came before them, so a read never misses an acknowledged message.
//!
//! The newest messages of `global` (what a welcome carries) are also kept in
//! memory ([`NewestGlobal`]), so a welcome does not queue behind writes. A
//! database file therefore belongs to one roomcast process.
//!
//! Files are opened in WAL mode with `synchronous = FULL`: a committed
//! transaction survives power loss and `kill -9`.

use super::recent::{self, NewestGlobal};
use super::rows;
use super::{
    Account, Appended, BoxFuture, CommitCallback, CommitSink, FileRecord, HistoryPage,
    MessageStore, NewEvent, NewMessage, NewRoom, Page, RecordedEvent, Retention, RoomRecord,
    Staleness, StoreError, UploadClaim, UploadRecord, WebhookDelivery, WebhookRoutes,
    claim_refusal, deliver_commit, event_entries, message_entries,
};
use crate::protocol::{GLOBAL_ROOM, Message, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Schema migrations, applied in order; the database's `user_version` says
/// how many have run. Never edit a released migration: add the next one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_init.sql"),
    include_str!("migrations/sqlite/0002_retention.sql"),
    include_str!("migrations/sqlite/0003_accounts.sql"),
    include_str!("migrations/sqlite/0004_event_keys.sql"),
    include_str!("migrations/sqlite/0005_files.sql"),
    include_str!("migrations/sqlite/0006_webhook_outbox.sql"),
];

/// Most appends committed in one transaction. Each commit's callbacks queue
/// their frames at once, so this also bounds the burst a busy room puts into
/// a member's outbox (see `outbox_capacity`).
const MAX_BATCH: usize = 1024;

/// History pages: the newest, before an id, after an id. Parameters: room,
/// limit, id. Each is a range scan of the `(room, id)` index; a test checks
/// the query plans.
pub const HISTORY_QUERIES: [&str; 3] = [
    concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE room = ?1 ORDER BY id DESC LIMIT ?2"
    ),
    concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE room = ?1 AND id < ?3 ORDER BY id DESC LIMIT ?2"
    ),
    concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE room = ?1 AND id > ?3 ORDER BY id ASC LIMIT ?2"
    ),
];

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Command {
    Append(Box<NewMessage>, CommitCallback),
    Run(Job),
    WriteThrough(Arc<dyn CommitSink>),
}

/// Message store on an embedded SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    commands: mpsc::UnboundedSender<Command>,
    newest_global: Arc<NewestGlobal>,
    webhooks: Arc<WebhookRoutes>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, or an in-memory database
    /// when `path` is `None`, applies migrations, and starts the writer: a
    /// thread for a file; for an in-memory database a task on the tokio
    /// runtime this is called in (a thread when there is none).
    pub fn open(path: Option<&Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with_webhooks(path, Arc::default())
    }

    /// [`SqliteStore::open`] for a server with webhooks: each stored
    /// message or event of a room a webhook wants gets its delivery row in
    /// its own transaction.
    pub fn open_with_webhooks(
        path: Option<&Path>,
        webhooks: Arc<WebhookRoutes>,
    ) -> Result<SqliteStore, StoreError> {
        let mut connection = match path {
            None => Connection::open_in_memory()?,
            Some(path) => {
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                Connection::open(path)?
            }
        };
        // Refuse a newer schema before anything (even the journal mode) is
        // written to the file.
        schema_version(&connection)?;
        if path.is_some() {
            connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| {
                row.get::<_, String>(0)
            })?;
            connection.pragma_update(None, "synchronous", "FULL")?;
        }
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        plan_once(&connection)?;
        migrate(&mut connection)?;
        let (commands, queue) = mpsc::unbounded_channel();
        let newest_global = Arc::new(NewestGlobal::default());
        let writer = Writer {
            connection,
            batch: Appends::default(),
            flusher: None,
            newest_global: newest_global.clone(),
            webhooks: webhooks.clone(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if path.is_none() => drop(runtime.spawn(writer.run_as_task(queue))),
            _ => {
                std::thread::Builder::new()
                    .name("roomcast-sqlite".into())
                    .spawn(move || writer.run_on_thread(queue))
                    .map_err(|source| StoreError::DataDir {
                        path: path.map(Path::to_owned).unwrap_or_default(),
                        source,
                    })?;
            }
        }
        Ok(SqliteStore {
            commands,
            newest_global,
            webhooks,
        })
    }

    /// Runs `job` on the writer after everything queued before it.
    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = self.commands.send(Command::Run(Box::new(move |connection| {
            // The caller may have stopped waiting (its connection closed);
            // the work is done either way, so a dropped answer is fine.
            let _ = reply.send(job(connection));
        })));
        Box::pin(async move {
            queued.map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl MessageStore for SqliteStore {
    fn append(&self, message: NewMessage, on_commit: CommitCallback) {
        self.newest_global.appending();
        if let Err(mpsc::error::SendError(Command::Append(_, on_commit))) = self
            .commands
            .send(Command::Append(Box::new(message), on_commit))
        {
            self.newest_global.settled(1);
            on_commit(Err(StoreError::Closed));
        }
    }

    fn history(
        &self,
        room: &str,
        page: Page,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryPage, StoreError>> {
        if room == GLOBAL_ROOM && matches!(page, Page::Newest) {
            if let Some(page) = self.newest_global.page(limit) {
                return Box::pin(std::future::ready(Ok(page)));
            }
            let newest_global = self.newest_global.clone();
            return self.run(move |connection| {
                if !newest_global.is_known() {
                    newest_global.fill(read_page(
                        connection,
                        GLOBAL_ROOM,
                        Page::Newest,
                        recent::KEPT,
                    )?);
                }
                match newest_global.page(limit) {
                    Some(page) => Ok(page),
                    None => read_page(connection, GLOBAL_ROOM, Page::Newest, limit),
                }
            });
        }
        let room = room.to_owned();
        self.run(move |connection| read_page(connection, &room, page, limit))
    }

    fn ensure_room(&self, room: &str) -> BoxFuture<'_, Result<RoomRecord, StoreError>> {
        let room = room.to_owned();
        self.run(move |connection| {
            if let Some(record) = find_room(connection, &room)? {
                return Ok(record);
            }
            let created_at = Timestamp::now();
            connection
                .prepare_cached("INSERT OR IGNORE INTO rooms (name, created_at) VALUES (?1, ?2)")?
                .execute(params![room, created_at.as_millis()])?;
            find_room(connection, &room)?.ok_or_else(|| StoreError::Corrupt("room vanished".into()))
        })
    }

    fn room(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomRecord>, StoreError>> {
        let room = room.to_owned();
        self.run(move |connection| find_room(connection, &room))
    }

    fn record_event(&self, event: NewEvent) -> BoxFuture<'_, Result<RecordedEvent, StoreError>> {
        let webhooks = self.webhooks.clone();
        self.run(move |connection| {
            let transaction = connection.transaction()?;
            let inserted = transaction
                .prepare_cached(
                    "INSERT INTO events (room, kind, payload, user_id, created_at, idempotency_key) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (room, idempotency_key) WHERE idempotency_key IS NOT NULL \
                     DO NOTHING",
                )?
                .execute(params![
                    &*event.room,
                    event.kind,
                    event.payload.to_string(),
                    &*event.user_id,
                    Timestamp::now().as_millis(),
                    event.idempotency_key,
                ])?;
            if inserted > 0 {
                let id = transaction.last_insert_rowid();
                let entries = event_entries(
                    &webhooks,
                    &event.room,
                    event.kind,
                    id,
                    &event.user_id,
                    &event.payload,
                );
                for entry in &entries {
                    queue_delivery(&transaction, entry)?;
                }
                transaction.commit()?;
                return Ok(RecordedEvent {
                    id,
                    duplicate: false,
                });
            }
            let id = transaction
                .prepare_cached("SELECT id FROM events WHERE room = ?1 AND idempotency_key = ?2")?
                .query_row(params![&*event.room, event.idempotency_key], |row| row.get(0))?;
            Ok(RecordedEvent {
                id,
                duplicate: true,
            })
        })
    }

    fn prune(&self, retention: Retention, chunk: usize) -> BoxFuture<'_, Result<u64, StoreError>> {
        let newest_global = self.newest_global.clone();
        self.run(move |connection| {
            // Before deleting: a prune that fails half-way has deleted some.
            newest_global.forget();
            let chunk = i64::try_from(chunk).unwrap_or(i64::MAX);
            let mut deleted = 0;
            if let Some(cutoff) = retention.cutoff() {
                deleted += connection
                    .prepare_cached(
                        "DELETE FROM messages WHERE id IN \
                         (SELECT id FROM messages WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
                    )?
                    .execute(params![cutoff.as_millis(), chunk])?;
            }
            if let Some(keep) = retention.max_messages_per_room {
                let keep = i64::try_from(keep).unwrap_or(i64::MAX);
                let rooms: Vec<String> = connection
                    .prepare_cached("SELECT DISTINCT room FROM messages")?
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut delete = connection.prepare_cached(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
                     WHERE room = ?1 AND id < (SELECT id FROM messages WHERE room = ?1 \
                     ORDER BY id DESC LIMIT 1 OFFSET ?2) ORDER BY id LIMIT ?3)",
                )?;
                for room in rooms {
                    deleted += delete.execute(params![room, (keep - 1).max(0), chunk])?;
                }
            }
            Ok(deleted as u64)
        })
    }

    fn create_room(&self, room: NewRoom) -> BoxFuture<'_, Result<RoomRecord, StoreError>> {
        self.run(move |connection| {
            let inserted = connection
                .prepare_cached(
                    "INSERT OR IGNORE INTO rooms (name, created_at, is_private, owner_id) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    room.name,
                    Timestamp::now().as_millis(),
                    room.private,
                    room.owner_id
                ])?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            find_room(connection, &room.name)?
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
        self.run(move |connection| {
            let changed = if member {
                connection
                    .prepare_cached(
                        "INSERT OR IGNORE INTO room_members (room, user_id, added_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![room, user_id, Timestamp::now().as_millis()])?
            } else {
                connection
                    .prepare_cached("DELETE FROM room_members WHERE room = ?1 AND user_id = ?2")?
                    .execute(params![room, user_id])?
            };
            Ok(changed > 0)
        })
    }

    fn is_member(&self, room: &str, user_id: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (room, user_id) = (room.to_owned(), user_id.to_owned());
        self.run(move |connection| {
            Ok(connection
                .prepare_cached("SELECT 1 FROM room_members WHERE room = ?1 AND user_id = ?2")?
                .exists(params![room, user_id])?)
        })
    }

    fn create_account(&self, account: Account) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(move |connection| {
            let inserted = connection
                .prepare_cached(
                    "INSERT OR IGNORE INTO users (id, username, username_key, password_hash, role, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    account.id,
                    account.username,
                    account.username.to_lowercase(),
                    account.password_hash,
                    account.role,
                    account.created_at.as_millis()
                ])?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            Ok(())
        })
    }

    fn find_account(&self, username: &str) -> BoxFuture<'_, Result<Option<Account>, StoreError>> {
        let key = username.to_lowercase();
        self.run(move |connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT id, username, password_hash, role, created_at FROM users WHERE username_key = ?1",
                )?
                .query_row(params![key], |row| rows::account(row))
                .optional()?)
        })
    }

    fn forget_unused_room(&self, room: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let room = room.to_owned();
        self.run(move |connection| {
            let removed = connection
                .prepare_cached(
                    "DELETE FROM rooms WHERE name = ?1 AND NOT is_private AND owner_id IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM messages WHERE room = ?1) \
                     AND NOT EXISTS (SELECT 1 FROM events WHERE room = ?1) \
                     AND NOT EXISTS (SELECT 1 FROM room_members WHERE room = ?1)",
                )?
                .execute(params![room])?;
            Ok(removed > 0)
        })
    }

    fn account_alike(&self, skeleton: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let skeleton = skeleton.to_owned();
        self.run(move |connection| {
            let query = format!(
                "SELECT EXISTS (SELECT 1 FROM users WHERE {} = ?1)",
                crate::auth::SKELETON_SQL
            );
            Ok(connection
                .prepare_cached(&query)?
                .query_row(params![skeleton], |row| row.get(0))?)
        })
    }

    fn list_accounts(&self) -> BoxFuture<'_, Result<Vec<Account>, StoreError>> {
        self.run(move |connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT id, username, password_hash, role, created_at FROM users ORDER BY username_key",
                )?
                .query_map([], |row| rows::account(row))?
                .collect::<Result<_, _>>()?)
        })
    }

    fn create_upload(&self, upload: UploadRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO uploads (id, file_id, token_hash, room, user_id, username, \
                     user_kind, filename, size, content_type, expires_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    upload.id,
                    upload.file_id,
                    upload.token_hash,
                    &*upload.room,
                    &*upload.user.id,
                    &*upload.user.username,
                    upload.user.kind.as_str(),
                    upload.filename,
                    rows::size_column(upload.size),
                    upload.content_type,
                    upload.expires_at.as_millis(),
                ])?;
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
        self.run(move |connection| {
            let claimed = connection
                .prepare_cached(
                    "UPDATE uploads SET state = 'uploading', claimed_at = ?3 \
                     WHERE id = ?1 AND token_hash = ?2 AND state = 'pending' AND expires_at > ?3 \
                     RETURNING id, file_id, token_hash, room, user_id, username, user_kind, \
                     filename, size, content_type, expires_at",
                )?
                .query_row(params![id, token_hash, now.as_millis()], |row| {
                    rows::upload(row)
                })
                .optional()?;
            if let Some(upload) = claimed {
                return Ok(UploadClaim::Claimed(upload));
            }
            let found: Option<(String, String)> = connection
                .prepare_cached("SELECT token_hash, state FROM uploads WHERE id = ?1")?
                .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(claim_refusal(found, &token_hash))
        })
    }

    fn release_upload(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_owned();
        self.run(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE uploads SET state = 'pending', claimed_at = NULL \
                     WHERE id = ?1 AND state = 'uploading'",
                )?
                .execute(params![id])?;
            Ok(())
        })
    }

    fn finish_upload(
        &self,
        upload_id: &str,
        file: FileRecord,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let upload_id = upload_id.to_owned();
        self.run(move |connection| {
            let transaction = connection.transaction()?;
            let done = transaction
                .prepare_cached(
                    "UPDATE uploads SET state = 'done' WHERE id = ?1 AND state = 'uploading'",
                )?
                .execute(params![upload_id])?;
            if done == 0 {
                return Ok(false);
            }
            transaction
                .prepare_cached(
                    "INSERT INTO files (id, room, user_id, name, size, content_type, sha256, \
                     created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    file.id,
                    &*file.room,
                    &*file.user_id,
                    file.name,
                    rows::size_column(file.size),
                    file.content_type,
                    file.sha256,
                    file.created_at.as_millis(),
                ])?;
            transaction.commit()?;
            Ok(true)
        })
    }

    fn attach_file(&self, file_id: &str, message_id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let file_id = file_id.to_owned();
        self.run(move |connection| {
            connection
                .prepare_cached("UPDATE files SET message_id = ?2 WHERE id = ?1")?
                .execute(params![file_id, message_id])?;
            Ok(())
        })
    }

    fn file(&self, id: &str) -> BoxFuture<'_, Result<Option<FileRecord>, StoreError>> {
        let id = id.to_owned();
        self.run(move |connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT id, room, user_id, name, size, content_type, sha256, created_at \
                     FROM files WHERE id = ?1",
                )?
                .query_row(params![id], |row| rows::file(row))
                .optional()?)
        })
    }

    fn stale_blobs(
        &self,
        staleness: Staleness,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.run(move |connection| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let (now, before) = (staleness.now.as_millis(), staleness.before.as_millis());
            connection
                .prepare_cached("DELETE FROM uploads WHERE state = 'done' AND expires_at < ?1")?
                .execute(params![now])?;
            let mut stale: Vec<String> = connection
                .prepare_cached(
                    "SELECT file_id FROM uploads WHERE (state = 'pending' AND expires_at < ?1) \
                     OR (state = 'uploading' AND claimed_at < ?2) LIMIT ?3",
                )?
                .query_map(params![now, before, limit], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let files: Vec<String> = connection
                .prepare_cached(
                    "SELECT id FROM files WHERE (message_id IS NULL AND created_at < ?1) \
                     OR (message_id IS NOT NULL \
                         AND NOT EXISTS (SELECT 1 FROM messages WHERE id = files.message_id)) \
                     LIMIT ?2",
                )?
                .query_map(params![before, limit], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            stale.extend(files);
            Ok(stale)
        })
    }

    fn forget_blobs(&self, file_ids: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(move |connection| {
            let transaction = connection.transaction()?;
            for id in &file_ids {
                transaction
                    .prepare_cached("DELETE FROM uploads WHERE file_id = ?1 AND state <> 'done'")?
                    .execute(params![id])?;
                transaction
                    .prepare_cached("DELETE FROM files WHERE id = ?1")?
                    .execute(params![id])?;
            }
            transaction.commit()?;
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
        self.run(move |connection| {
            let names = serde_json::Value::from(webhooks).to_string();
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            Ok(connection
                .prepare_cached(
                    "UPDATE webhook_outbox SET leased_until = ?3, leased_by = ?5 WHERE id IN (\
                     SELECT id FROM webhook_outbox \
                     WHERE webhook IN (SELECT value FROM json_each(?1)) AND failed_at IS NULL \
                     AND next_attempt_at <= ?2 AND (leased_until IS NULL OR leased_until < ?2) \
                     ORDER BY id LIMIT ?4) \
                     RETURNING id, webhook, kind, body, attempts",
                )?
                .query_map(
                    params![names, now.as_millis(), lease_until.as_millis(), limit, node],
                    |row| {
                        Ok(WebhookDelivery {
                            id: row.get(0)?,
                            webhook: row.get(1)?,
                            kind: row.get(2)?,
                            body: row.get(3)?,
                            attempts: row.get(4)?,
                        })
                    },
                )?
                .collect::<Result<_, _>>()?)
        })
    }

    fn release_webhooks(&self, node: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let node = node.to_owned();
        self.run(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE webhook_outbox SET leased_until = NULL, leased_by = NULL \
                     WHERE leased_by = ?1 AND leased_until IS NOT NULL",
                )?
                .execute(params![node])?;
            Ok(())
        })
    }

    fn webhook_delivered(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(move |connection| {
            connection
                .prepare_cached("DELETE FROM webhook_outbox WHERE id = ?1")?
                .execute(params![id])?;
            Ok(())
        })
    }

    fn webhook_failed(
        &self,
        id: i64,
        retry_at: Option<Timestamp>,
        error: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(move |connection| {
            let now = Timestamp::now().as_millis();
            connection
                .prepare_cached(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, leased_until = NULL, \
                     last_error = ?4, next_attempt_at = COALESCE(?2, next_attempt_at), \
                     failed_at = CASE WHEN ?2 IS NULL THEN ?3 END WHERE id = ?1",
                )?
                .execute(params![id, retry_at.map(Timestamp::as_millis), now, error])?;
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(|_| Ok(()))
    }

    fn write_through(&self, flusher: Arc<dyn CommitSink>) {
        // Refused only when the writer has stopped, and then nothing is left
        // to write.
        let _ = self.commands.send(Command::WriteThrough(flusher));
    }
}

/// The writer: the connection, the appends waiting for the next commit, and
/// where commits are delivered. Runs until every `SqliteStore` handle is
/// dropped.
struct Writer {
    connection: Connection,
    batch: Appends,
    flusher: Option<Arc<dyn CommitSink>>,
    newest_global: Arc<NewestGlobal>,
    webhooks: Arc<WebhookRoutes>,
}

/// Appends waiting for the next commit, beside their callbacks.
#[derive(Default)]
struct Appends {
    messages: Vec<NewMessage>,
    callbacks: Vec<CommitCallback>,
}

impl Writer {
    /// Works on its own thread: whatever queued up while a commit waited for
    /// the disk goes into the next one.
    fn run_on_thread(mut self, mut queue: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = queue.blocking_recv() {
            self.take(first);
            while let Ok(command) = queue.try_recv() {
                self.take(command);
            }
            self.commit();
        }
    }

    /// Works as a task: what queued up while it waited for its turn goes
    /// into one commit, at most [`MAX_BATCH`] commands at a time, so that
    /// the connections' tasks run between long batches.
    async fn run_as_task(mut self, mut queue: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = queue.recv().await {
            self.take(first);
            let mut taken = 1;
            while taken < MAX_BATCH {
                let Ok(command) = queue.try_recv() else { break };
                self.take(command);
                taken += 1;
            }
            self.commit();
            if taken == MAX_BATCH {
                tokio::task::yield_now().await;
            }
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Append(message, on_commit) => {
                self.batch.messages.push(*message);
                self.batch.callbacks.push(on_commit);
                if self.batch.messages.len() >= MAX_BATCH {
                    self.commit();
                }
            }
            Command::Run(job) => {
                // Earlier appends first, so the job sees them.
                self.commit();
                job(&mut self.connection);
            }
            Command::WriteThrough(to) => self.flusher = Some(to),
        }
    }

    /// Writes the batch in one transaction, then has the callbacks run in
    /// order: on the flusher's task when there is one (the writer goes on to
    /// the next commit meanwhile), else here.
    fn commit(&mut self) {
        if self.batch.messages.is_empty() {
            return;
        }
        let outcome = insert_all(&mut self.connection, &self.batch.messages, &self.webhooks);
        self.batch.messages.clear();
        if let Ok(results) = &outcome {
            results
                .iter()
                .flatten()
                .filter(|appended| !appended.duplicate && &*appended.message.room == GLOBAL_ROOM)
                .for_each(|appended| self.newest_global.push(&appended.message));
        }
        self.newest_global.settled(self.batch.callbacks.len());
        deliver_commit(
            self.flusher.as_ref(),
            std::mem::take(&mut self.batch.callbacks),
            outcome,
        );
    }
}

fn insert_all(
    connection: &mut Connection,
    batch: &[NewMessage],
    webhooks: &WebhookRoutes,
) -> Result<Vec<Result<Appended, StoreError>>, rusqlite::Error> {
    // `BEGIN` and `COMMIT` as cached statements: a transaction opened with
    // `Connection::transaction` parses both again on every commit.
    connection.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let results = batch
        .iter()
        .map(|message| {
            let appended = insert_one(connection, message)?;
            if !appended.duplicate && !webhooks.is_empty() {
                for entry in message_entries(webhooks, &appended.message) {
                    queue_delivery(connection, &entry)?;
                }
            }
            Ok(appended)
        })
        .collect();
    match connection
        .prepare_cached("COMMIT")
        .and_then(|mut commit| commit.execute([]))
    {
        Ok(_) => Ok(results),
        Err(err) => {
            if !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            Err(err)
        }
    }
}

/// Writes one webhook delivery row (inside the caller's transaction).
fn queue_delivery(connection: &Connection, entry: &super::OutboxEntry) -> Result<(), StoreError> {
    let now = Timestamp::now().as_millis();
    connection
        .prepare_cached(
            "INSERT INTO webhook_outbox (webhook, kind, body, created_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )?
        .execute(params![entry.webhook, entry.kind, entry.body, now])?;
    Ok(())
}

/// The message a client already sent with this `client_msg_id`.
const DUPLICATE_QUERY: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = ?1 AND user_id = ?2 AND client_msg_id = ?3"
);

/// Inserts one message; runs inside the batch's transaction. A message
/// whose `client_msg_id` is stored already is answered with the stored one.
fn insert_one(transaction: &Connection, new: &NewMessage) -> Result<Appended, StoreError> {
    if let Some(reply_to) = new.reply_to {
        // A retry is answered as before even if its reply target is gone.
        if let Some(message) = stored_duplicate(transaction, new)? {
            return Ok(Appended {
                message,
                duplicate: true,
                previous: None,
            });
        }
        let found = transaction
            .prepare_cached("SELECT 1 FROM messages WHERE id = ?1 AND room = ?2")?
            .exists(params![reply_to, &*new.room])?;
        if !found {
            return Err(StoreError::ReplyToNotFound);
        }
    }
    let attachment = new
        .attachment
        .as_ref()
        .map(|file| serde_json::to_string(file).map_err(|err| StoreError::Corrupt(err.to_string())))
        .transpose()?;
    // Retries are rare: insert first, and look the stored message up only
    // when the unique `client_msg_id` index refused the row.
    let inserted = transaction
        .prepare_cached(
            "INSERT INTO messages (room, user_id, username, user_kind, content, created_at, \
             client_msg_id, reply_to, attachment) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            &*new.room,
            &*new.user.id,
            &*new.user.username,
            new.user.kind.as_str(),
            new.content,
            new.created_at.as_millis(),
            new.client_msg_id,
            new.reply_to,
            attachment
        ])?;
    if inserted == 0 {
        return match stored_duplicate(transaction, new)? {
            Some(message) => Ok(Appended {
                message,
                duplicate: true,
                previous: None,
            }),
            None => Err(StoreError::Corrupt(
                "an insert was refused but no duplicate is stored".into(),
            )),
        };
    }
    Ok(Appended {
        message: Message {
            id: transaction.last_insert_rowid(),
            room: new.room.clone(),
            user: new.user.clone(),
            content: new.content.clone(),
            created_at: new.created_at,
            client_msg_id: new.client_msg_id.clone(),
            reply_to: new.reply_to,
            attachment: new.attachment.clone(),
        },
        duplicate: false,
        previous: None,
    })
}

/// The message stored earlier with the same room, user and `client_msg_id`.
fn stored_duplicate(
    transaction: &Connection,
    new: &NewMessage,
) -> Result<Option<Message>, StoreError> {
    let Some(client_msg_id) = &new.client_msg_id else {
        return Ok(None);
    };
    Ok(transaction
        .prepare_cached(DUPLICATE_QUERY)?
        .query_row(params![&*new.room, &*new.user.id, client_msg_id], |row| {
            rows::message(row)
        })
        .optional()?)
}

fn read_page(
    connection: &mut Connection,
    room: &str,
    page: Page,
    limit: usize,
) -> Result<HistoryPage, StoreError> {
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
    let [newest, before, after] = HISTORY_QUERIES;
    let (sql, bound) = match page {
        Page::Newest => (newest, None),
        Page::Before(id) => (before, Some(id)),
        Page::After(id) => (after, Some(id)),
    };
    let mut statement = connection.prepare_cached(sql)?;
    let read = |row: &rusqlite::Row<'_>| rows::message(row);
    let found = match bound {
        Some(id) => statement.query_map(params![room, fetch, id], read)?,
        None => statement.query_map(params![room, fetch], read)?,
    };
    let messages = found.collect::<Result<Vec<_>, _>>()?;
    Ok(rows::page(messages, page, limit))
}

fn find_room(connection: &Connection, room: &str) -> Result<Option<RoomRecord>, StoreError> {
    Ok(connection
        .prepare_cached("SELECT name, created_at, is_private, owner_id FROM rooms WHERE name = ?1")?
        .query_row(params![room], |row| {
            Ok(RoomRecord {
                name: row.get(0)?,
                created_at: Timestamp(row.get(1)?),
                private: row.get(2)?,
                owner_id: row.get(3)?,
            })
        })
        .optional()?)
}

/// The schema version of the database, refusing one from a newer roomcast.
fn schema_version(connection: &Connection) -> Result<i64, StoreError> {
    let found: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    Ok(found)
}

/// Plans each statement once. Without this, SQLite weighs the partial index
/// on `client_msg_id` against every newly bound value and re-parses the
/// statement on each run: the welcome's history read, on every connection.
fn plan_once(connection: &Connection) -> Result<(), StoreError> {
    connection.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Brings the schema up to date.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let found = schema_version(connection)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
        tracing::info!(version = index + 1, "applied SQLite schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{User, UserKind};

    fn user() -> User {
        User {
            id: "u1".into(),
            username: "ann".into(),
            kind: UserKind::User,
        }
    }

    fn new_message(room: &str, content: &str, client_msg_id: Option<&str>) -> NewMessage {
        NewMessage {
            room: room.into(),
            user: user(),
            content: content.into(),
            created_at: Timestamp::now(),
            client_msg_id: client_msg_id.map(str::to_owned),
            reply_to: None,
            attachment: None,
        }
    }

    async fn append(store: &SqliteStore, message: NewMessage) -> Result<Appended, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append(
            message,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.await.map_err(|_| StoreError::Closed)?
    }

    #[tokio::test]
    async fn appends_page_and_deduplicate() {
        let store = SqliteStore::open(None).expect("open");
        let mut ids = Vec::new();
        for i in 0..5 {
            let appended = append(&store, new_message("r", &format!("m{i}"), None))
                .await
                .expect("append");
            ids.push(appended.message.id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let newest = store.history("r", Page::Newest, 3).await.expect("page");
        assert_eq!(newest.messages.len(), 3);
        assert!(newest.has_more);
        assert_eq!(newest.messages[0].content, "m2");
        let after = store
            .history("r", Page::After(ids[3]), 3)
            .await
            .expect("page");
        assert_eq!(after.messages.len(), 1);
        assert!(!after.has_more);

        let first = append(&store, new_message("r", "x", Some("c1")))
            .await
            .expect("append");
        let again = append(&store, new_message("r", "x", Some("c1")))
            .await
            .expect("append");
        assert!(!first.duplicate);
        assert!(again.duplicate);
        assert_eq!(first.message.id, again.message.id);
    }

    #[tokio::test]
    async fn history_reads_reuse_their_plan() {
        let store = SqliteStore::open(None).expect("open");
        append(&store, new_message("general", "hello", Some("c1")))
            .await
            .expect("append");
        for room in ["general", "other", "general"] {
            store.history(room, Page::Newest, 20).await.expect("page");
        }
        let (runs, reprepares) = store
            .run(|connection| {
                let statement = connection.prepare_cached(HISTORY_QUERIES[0])?;
                Ok((
                    statement.get_status(rusqlite::StatementStatus::Run),
                    statement.get_status(rusqlite::StatementStatus::RePrepare),
                ))
            })
            .await
            .expect("status");
        assert_eq!(runs, 3);
        assert_eq!(reprepares, 0, "the history query was parsed again");
    }

    #[tokio::test]
    async fn reply_to_must_exist_in_the_room() {
        let store = SqliteStore::open(None).expect("open");
        let other = append(&store, new_message("a", "x", None))
            .await
            .expect("append");
        let mut reply = new_message("b", "y", None);
        reply.reply_to = Some(other.message.id);
        assert!(matches!(
            append(&store, reply).await,
            Err(StoreError::ReplyToNotFound)
        ));
    }

    /// Where a commit's callback runs when no flusher takes it: on the
    /// writer.
    async fn commit_thread(store: &SqliteStore) -> std::thread::ThreadId {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append(
            new_message("r", "x", None),
            Box::new(move |result| {
                let _ = tx.send((std::thread::current().id(), result.is_ok()));
            }),
        );
        let (thread, stored) = rx.await.expect("callback");
        assert!(stored);
        thread
    }

    #[tokio::test]
    async fn an_in_memory_writer_is_a_task_and_a_file_writer_a_thread() {
        let here = std::thread::current().id();
        let memory = SqliteStore::open(None).expect("open");
        assert_eq!(
            commit_thread(&memory).await,
            here,
            "the writer has a thread"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SqliteStore::open(Some(&dir.path().join("db.sqlite"))).expect("open");
        assert_ne!(commit_thread(&file).await, here, "the writer has no thread");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(Some(&path)).expect("open"));
        let connection = Connection::open(&path).expect("open raw");
        connection
            .pragma_update(None, "user_version", 99)
            .expect("set version");
        drop(connection);
        assert!(matches!(
            SqliteStore::open(Some(&path)),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    /// Blocks the writer until the returned sender is dropped or used. The
    /// store must be a file's, whose writer is a thread: blocking an
    /// in-memory store's writer would block the test's runtime.
    fn block_writer(store: &SqliteStore) -> std::sync::mpsc::Sender<()> {
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let _ = store.commands.send(Command::Run(Box::new(move |_| {
            let _ = blocked.recv();
        })));
        release
    }

    #[tokio::test]
    async fn a_welcome_page_does_not_wait_for_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(Some(&dir.path().join("db.sqlite"))).expect("open");
        let stored = append(&store, new_message(GLOBAL_ROOM, "hello", None))
            .await
            .expect("append");
        // The first read fills the memo on the writer thread.
        store
            .history(GLOBAL_ROOM, Page::Newest, 50)
            .await
            .expect("page");
        let release = block_writer(&store);
        let page = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            store.history(GLOBAL_ROOM, Page::Newest, 50),
        )
        .await
        .expect("answered while the writer is busy")
        .expect("page");
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].id, stored.message.id);
        assert!(!page.has_more);

        // An append waiting behind the busy writer: a read issued now waits
        // for it rather than answering without it.
        let (tx, committed) = tokio::sync::oneshot::channel();
        store.append(
            new_message(GLOBAL_ROOM, "later", None),
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        let read = tokio::spawn({
            let store = store.clone();
            async move { store.history(GLOBAL_ROOM, Page::Newest, 50).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!read.is_finished(), "a read skipped an uncommitted append");
        drop(release);
        let later = committed.await.expect("callback").expect("stored");
        let page = read.await.expect("task").expect("page");
        assert_eq!(
            page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [stored.message.id, later.message.id]
        );
    }
}
