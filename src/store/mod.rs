//! Durable storage of messages, rooms and events, behind the [`MessageStore`]
//! trait.
//!
//! The embedded default is SQLite ([`SqliteStore`]): one writer commits
//! appends in batches (group commit), so many concurrent senders share one
//! fsync. [`PostgresStore`] does the same against PostgreSQL, for bigger
//! installations and several nodes. Schema migrations are embedded in the
//! binary and applied at open; a database from a newer roomcast is refused.

/// The columns of a stored message, in the order the row readers expect.
macro_rules! message_columns {
    () => {
        "id, room, user_id, username, user_kind, content, created_at, client_msg_id, reply_to, attachment"
    };
}

mod files;
mod postgres;
mod recent;
mod retention;
mod rows;
mod sqlite;
mod webhooks;

use files::claim_refusal;
pub use files::{FileRecord, Staleness, UploadClaim, UploadRecord};
pub use postgres::{HISTORY_QUERIES as POSTGRES_HISTORY_QUERIES, PostgresStore};
pub use retention::{Retention, enforce_retention};
pub use sqlite::{HISTORY_QUERIES as SQLITE_HISTORY_QUERIES, SqliteStore};
pub use webhooks::{OutboxEntry, WebhookDelivery, WebhookRoutes, event_entries, message_entries};

use crate::protocol::{FileInfo, Message, Timestamp, User};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, so that the trait can be used as `dyn MessageStore`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Called once an append is durably committed (or has failed).
pub type CommitCallback = Box<dyn FnOnce(Result<Appended, StoreError>) + Send>;

/// The callbacks of one commit, run together.
pub type Callbacks = Box<dyn FnOnce() + Send>;

/// Where a store hands the callbacks of each commit (the hub's writer task,
/// [`crate::hub::Flusher`]), so that the storage writer goes on to its next
/// commit while they run.
pub trait CommitSink: Send + Sync + 'static {
    /// Runs the `callbacks` of a commit of `messages` messages, after those
    /// of earlier commits.
    fn deliver(&self, messages: usize, callbacks: Callbacks);
}

/// Has the callbacks of one commit run in order: each with its message's
/// result, or all with the commit's error (logged here). They run in `sink`
/// where there is one, else here.
fn deliver_commit<E: std::error::Error + Send + Sync + 'static>(
    sink: Option<&Arc<dyn CommitSink>>,
    callbacks: Vec<CommitCallback>,
    outcome: Result<Vec<Result<Appended, StoreError>>, E>,
) {
    let messages = callbacks.len();
    let run: Callbacks = match outcome {
        Ok(results) => Box::new(move || {
            for (on_commit, result) in callbacks.into_iter().zip(results) {
                on_commit(result);
            }
        }),
        Err(err) => {
            tracing::error!(error = %err, messages, "commit of a message batch failed");
            let err: Arc<dyn std::error::Error + Send + Sync> = Arc::new(err);
            Box::new(move || {
                for on_commit in callbacks {
                    on_commit(Err(StoreError::Commit(err.clone())));
                }
            })
        }
    };
    match sink {
        Some(sink) => sink.deliver(messages, run),
        None => run(),
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `reply_to` names no stored message in the same room.
    #[error("reply_to names no message in this room")]
    ReplyToNotFound,
    /// The database was written by a newer roomcast.
    #[error(
        "database schema version {found} is newer than this roomcast supports ({supported}); upgrade roomcast"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    /// The store's worker has stopped (the server is shutting down).
    #[error("message store is closed")]
    Closed,
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A batch commit failed; every message of the batch gets this error.
    #[error("commit failed: {0}")]
    Commit(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("PostgreSQL: {}", postgres_cause(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A unique name (username, room) is already taken.
    #[error("already exists")]
    Conflict,
}

/// What PostgreSQL said, not just "db error": the server's message and
/// SQLSTATE, or the error and its causes (say, why a connection failed).
fn postgres_cause(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let hint = if *db.code() == tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME {
            ": does the schema named in the URL's search_path exist?"
        } else {
            ""
        };
        return format!("{} (SQLSTATE {}){hint}", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A message to store; the store assigns `id`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: Arc<str>,
    pub user: User,
    pub content: String,
    pub created_at: Timestamp,
    pub client_msg_id: Option<String>,
    pub reply_to: Option<i64>,
    pub attachment: Option<FileInfo>,
}

/// A committed append.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    /// The same user had already stored this `client_msg_id` in this room;
    /// `message` is that earlier message and nothing new was stored.
    pub duplicate: bool,
    /// The id of the room's newest message when this one was stored, where
    /// the store tells it (PostgreSQL, which several nodes share): a node
    /// that receives this message from another sees from it whether it
    /// missed one in between. `None` for the room's first message, for a
    /// duplicate, and on SQLite.
    pub previous: Option<i64>,
}

/// Which page of a room's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages.
    Newest,
    /// The messages right before this id.
    Before(i64),
    /// The messages right after this id.
    After(i64),
}

/// One page of history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// More messages exist in the direction of paging.
    pub has_more: bool,
}

/// A room's stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub name: String,
    pub created_at: Timestamp,
    /// Only users on the member list (and the owner) may join.
    pub private: bool,
    /// The user who created the room with `POST /api/rooms`; rooms created
    /// by a first join have none.
    pub owner_id: Option<String>,
}

/// A room to create explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    pub name: String,
    pub private: bool,
    pub owner_id: String,
}

/// An account stored by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub username: String,
    /// Argon2id hash in PHC string format; never leaves the server.
    pub password_hash: String,
    /// `user`, `assistant` or `admin`.
    pub role: String,
    pub created_at: Timestamp,
}

/// A project or ticket event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub room: Arc<str>,
    pub kind: &'static str,
    pub payload: serde_json::Value,
    pub user_id: Arc<str>,
    /// A retry with the same key in the same room stores nothing and finds
    /// the event stored first.
    pub idempotency_key: Option<String>,
}

/// A recorded event: its id, and whether it had been recorded before
/// (same room and idempotency key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: i64,
    pub duplicate: bool,
}

/// Durable storage.
///
/// Contract:
/// - `append` returns at once; `on_commit` runs once the message is durably
///   committed (it survives a crash from then on), or with the error.
/// - Callbacks run in commit order, so the callbacks of one room run in
///   increasing id order; they must not block (queue frames, do not wait).
/// - Ids are unique across the store and increase in commit order per room.
/// - Reads issued after a callback has run see that message.
pub trait MessageStore: Send + Sync + 'static {
    fn append(&self, message: NewMessage, on_commit: CommitCallback);

    /// A page of a room's messages, oldest first, at most `limit` of them.
    fn history(
        &self,
        room: &str,
        page: Page,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryPage, StoreError>>;

    /// Returns the room's record, creating it if it does not exist.
    fn ensure_room(&self, room: &str) -> BoxFuture<'_, Result<RoomRecord, StoreError>>;

    /// The room's record, if the room exists.
    fn room(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomRecord>, StoreError>>;

    /// Deletes at most `chunk` messages that `retention` no longer keeps,
    /// and returns how many it deleted. Small chunks keep writes flowing.
    fn prune(&self, retention: Retention, chunk: usize) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Stores a project or ticket event and returns its id.
    fn record_event(&self, event: NewEvent) -> BoxFuture<'_, Result<RecordedEvent, StoreError>>;

    /// Creates a room explicitly; `Conflict` if it exists.
    fn create_room(&self, room: NewRoom) -> BoxFuture<'_, Result<RoomRecord, StoreError>>;

    /// Adds (`member: true`) or removes a user from a room's member list.
    /// Returns whether anything changed.
    fn set_member(
        &self,
        room: &str,
        user_id: &str,
        member: bool,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Whether the user is on the room's member list.
    fn is_member(&self, room: &str, user_id: &str) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Stores a new account; `Conflict` if the username is taken (compared
    /// case-insensitively).
    fn create_account(&self, account: Account) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The account with this username, compared case-insensitively.
    fn find_account(&self, username: &str) -> BoxFuture<'_, Result<Option<Account>, StoreError>>;

    /// Removes `room`'s row if nothing keeps it: public, without an owner,
    /// members, messages or events (a room a join created and nobody used).
    /// Returns whether it was removed.
    fn forget_unused_room(&self, room: &str) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Whether an account's username has this skeleton
    /// ([`crate::auth::skeleton`]).
    fn account_alike(&self, skeleton: &str) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Every account, by username.
    fn list_accounts(&self) -> BoxFuture<'_, Result<Vec<Account>, StoreError>>;

    /// Records an authorized upload.
    fn create_upload(&self, upload: UploadRecord) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Claims an upload for the PUT that presents `token_hash` at `now`:
    /// only a pending, unexpired upload with that token is claimed, and by
    /// one caller only.
    fn claim_upload(
        &self,
        id: &str,
        token_hash: &str,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<UploadClaim, StoreError>>;

    /// Gives a claimed upload back (its PUT failed) so that the token may
    /// be used again until it expires.
    fn release_upload(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Marks a claimed upload done and records its file, together. `false`
    /// if the upload was no longer claimed (the janitor took it).
    fn finish_upload(
        &self,
        upload_id: &str,
        file: FileRecord,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Notes the message that shares a file: the file lives as long as it.
    fn attach_file(&self, file_id: &str, message_id: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The file with this id.
    fn file(&self, id: &str) -> BoxFuture<'_, Result<Option<FileRecord>, StoreError>>;

    /// Up to `limit` blob names nothing needs any more: of abandoned
    /// uploads, of files never shared, and of files whose message retention
    /// deleted. Forgets spent uploads that expired.
    fn stale_blobs(
        &self,
        staleness: Staleness,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// Forgets the uploads and files of these blobs (deleted before).
    fn forget_blobs(&self, file_ids: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Leases up to `limit` webhook deliveries that are due at `now` to
    /// `node` until `lease_until` (another node skips them meanwhile),
    /// oldest first, of the webhooks named.
    fn lease_webhooks(
        &self,
        node: &str,
        webhooks: Vec<String>,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<WebhookDelivery>, StoreError>>;

    /// Gives back at once every delivery `node` leased and has not settled
    /// (it stops), so that any node may take them without waiting for the
    /// lease to end.
    fn release_webhooks(&self, node: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Forgets a delivery the webhook accepted.
    fn webhook_delivered(&self, id: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Notes a failed try: the next at `retry_at`, or none (`failed_at` is
    /// set and the row kept).
    fn webhook_failed(
        &self,
        id: i64,
        retry_at: Option<Timestamp>,
        error: String,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Resolves when everything appended before the call is committed.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Hands every commit's callbacks to `sink` (the hub's writer task), so
    /// that the store can start its next commit while they run, and frames
    /// of commits made meanwhile share a write. Until it is called, the
    /// store runs them itself.
    fn write_through(&self, sink: Arc<dyn CommitSink>);
}
