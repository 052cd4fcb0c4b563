//! Authorizing an upload, receiving its bytes, and the janitor that
//! removes what was abandoned.

use super::blob::{BlobError, Blobs};
use super::content::{SNIFF_BYTES, agrees, essence, sanitize_filename};
use crate::app::App;
use crate::protocol::{Message, Timestamp, User};
use crate::store::{FileRecord, NewMessage, Staleness, StoreError, UploadClaim, UploadRecord};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Longest a PUT may take to deliver its body.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// An upload or file the janitor finds unfinished this long is abandoned
/// (longer than [`UPLOAD_DEADLINE`], so it never takes a live one).
const ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);
/// How often the janitor looks at most; more often where retention runs
/// more often (so a file goes soon after the message retention deleted).
const JANITOR_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Blobs the janitor deletes per store round trip.
const JANITOR_BATCH: usize = 500;

/// Why an upload or a download failed: mapped to an HTTP status once, in
/// the server's file routes.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no such upload or file")]
    NotFound,
    #[error("upload token is invalid, expired or already used")]
    TokenRefused,
    #[error("this upload is being received by another request")]
    Busy,
    #[error("the body is larger than the {limit} bytes announced")]
    TooLarge { limit: u64 },
    #[error("the body ended after {received} of the {expected} bytes announced")]
    Short { received: u64, expected: u64 },
    #[error("the content is not {declared}")]
    TypeMismatch { declared: String },
    #[error("the upload took longer than {} minutes", UPLOAD_DEADLINE.as_secs() / 60)]
    Timeout,
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Upload authorizations a user may ask for per minute (on each node),
/// after a burst of as many: each is a row kept until it expires.
pub const UPLOADS_PER_USER_PER_MINUTE: u32 = 30;

/// File sharing as configured.
#[derive(Debug)]
pub struct Files {
    pub blobs: Blobs,
    pub max_bytes: u64,
    /// Lower-case types users may upload; empty: sharing is off.
    pub types: Vec<String>,
    pub ttl: Duration,
    /// Authorizations per user.
    pub requests: crate::limits::KeyedLimiter<Arc<str>>,
}

/// What `file_upload_authorized` tells the client.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub upload_id: String,
    pub upload_url: String,
    pub upload_token: String,
    pub expires_at: Timestamp,
    pub max_size: u64,
}

/// A received upload: the file, and the message that shares it.
#[derive(Debug, Clone)]
pub struct Received {
    pub file: FileRecord,
    pub message: Message,
}

/// An upload's body as it arrives.
pub type UploadBody = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// SHA-256 of an upload token, as the store keeps it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_id(bytes: usize) -> Result<String, FileError> {
    crate::auth::random_hex(bytes)
        .ok_or_else(|| FileError::Body("the operating system gave no randomness for an id".into()))
}

impl Files {
    pub fn new(blobs: Blobs, max_bytes: u64, types: Vec<String>, ttl: Duration) -> Files {
        Files {
            blobs,
            max_bytes,
            types,
            ttl,
            requests: crate::limits::KeyedLimiter::new(
                f64::from(UPLOADS_PER_USER_PER_MINUTE) / 60.0,
                UPLOADS_PER_USER_PER_MINUTE,
            ),
        }
    }

    /// Whether `content_type` (any case, parameters allowed) may be uploaded.
    pub fn allows(&self, content_type: &str) -> bool {
        self.types.contains(&essence(content_type))
    }

    /// Records an upload of `size` bytes of `content_type` by `user` into
    /// `room` and returns its token. Checks of size and type are the
    /// caller's (they are protocol errors, not file errors).
    pub async fn authorize(
        &self,
        app: &App,
        user: &User,
        room: &str,
        filename: &str,
        size: u64,
        content_type: &str,
    ) -> Result<Authorization, FileError> {
        let upload_id = random_id(16)?;
        let token = random_id(32)?;
        let expires_at = Timestamp(
            Timestamp::now()
                .as_millis()
                .saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)),
        );
        app.store
            .create_upload(UploadRecord {
                id: upload_id.clone(),
                file_id: random_id(16)?,
                token_hash: token_hash(&token),
                room: room.into(),
                user: user.clone(),
                filename: sanitize_filename(filename),
                size,
                content_type: essence(content_type),
                expires_at,
            })
            .await?;
        Ok(Authorization {
            upload_url: format!("/api/uploads/{upload_id}"),
            upload_id,
            upload_token: token,
            expires_at,
            max_size: size,
        })
    }

    /// Receives the body of an upload for the holder of `token`: claims the
    /// upload, streams the body into the file store (hashing it and checking
    /// its first bytes on the way), makes it visible, records the file and
    /// shares it in its room. A failed PUT gives the upload back, so the
    /// token may be used again until it expires.
    pub async fn receive(
        &self,
        app: &Arc<App>,
        upload_id: &str,
        token: &str,
        announced_length: Option<u64>,
        body: UploadBody,
    ) -> Result<Received, FileError> {
        let upload = match app
            .store
            .claim_upload(upload_id, &token_hash(token), Timestamp::now())
            .await?
        {
            UploadClaim::Claimed(upload) => upload,
            UploadClaim::Unknown => return Err(FileError::NotFound),
            UploadClaim::Refused => return Err(FileError::TokenRefused),
            UploadClaim::Busy => return Err(FileError::Busy),
        };
        let stored = match announced_length {
            Some(length) if length > upload.size => Err(FileError::TooLarge { limit: upload.size }),
            _ => {
                match tokio::time::timeout(UPLOAD_DEADLINE, self.store_body(&upload, body)).await {
                    Ok(result) => result,
                    Err(_) => Err(FileError::Timeout),
                }
            }
        };
        let file = match stored {
            Ok(file) => file,
            Err(err) => {
                if let Err(release) = app.store.release_upload(&upload.id).await {
                    tracing::warn!(error = %release, "could not give a failed upload back");
                }
                return Err(err);
            }
        };
        if !app.store.finish_upload(&upload.id, file.clone()).await? {
            // The janitor gave up on it meanwhile: nothing may point at it.
            self.blobs.delete(&file.id).await?;
            return Err(FileError::TokenRefused);
        }
        let appended = app
            .store_and_publish(NewMessage {
                room: upload.room.clone(),
                user: upload.user.clone(),
                content: file.name.clone(),
                created_at: Timestamp::now(),
                client_msg_id: None,
                reply_to: None,
                attachment: Some(file.info()),
            })
            .await?;
        // Until this is noted, the janitor sees a file nothing shares; it
        // waits an hour before it believes that.
        app.store.attach_file(&file.id, appended.message.id).await?;
        Ok(Received {
            file,
            message: appended.message,
        })
    }

    /// Streams `body` into a new blob and returns the file's record; the
    /// blob is visible once this returns `Ok`, and never otherwise.
    async fn store_body(
        &self,
        upload: &UploadRecord,
        mut body: UploadBody,
    ) -> Result<FileRecord, FileError> {
        let mut writer = self.blobs.create(&upload.file_id).await?;
        let mut hasher = Sha256::new();
        let mut head: Vec<u8> = Vec::new();
        let mut checked = false;
        let mut received: u64 = 0;
        let outcome: Result<(), FileError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(FileError::Body)?;
                received += chunk.len() as u64;
                if received > upload.size {
                    return Err(FileError::TooLarge { limit: upload.size });
                }
                if !checked {
                    let wanted = SNIFF_BYTES - head.len();
                    head.extend_from_slice(&chunk[..chunk.len().min(wanted)]);
                    if head.len() >= SNIFF_BYTES {
                        check(upload, &head, false)?;
                        checked = true;
                    }
                }
                hasher.update(&chunk);
                writer.write(chunk).await?;
            }
            if received < upload.size {
                return Err(FileError::Short {
                    received,
                    expected: upload.size,
                });
            }
            if !checked {
                check(upload, &head, true)?;
            }
            Ok(())
        }
        .await;
        if let Err(err) = outcome {
            writer.abort().await;
            return Err(err);
        }
        writer.finish().await?;
        Ok(FileRecord {
            id: upload.file_id.clone(),
            room: upload.room.clone(),
            user_id: upload.user.id.clone(),
            name: upload.filename.clone(),
            size: received,
            content_type: upload.content_type.clone(),
            sha256: hex::encode(hasher.finalize()),
            created_at: Timestamp::now(),
        })
    }

    /// One janitor round: deletes the blobs of abandoned uploads, of files
    /// no message shares (never shared, or deleted by retention), and
    /// half-written parts, then forgets their records. Returns how many.
    pub async fn sweep(&self, app: &App) -> Result<usize, FileError> {
        let now = Timestamp::now();
        let before = Timestamp(
            now.as_millis()
                .saturating_sub(i64::try_from(ABANDONED_AFTER.as_millis()).unwrap_or(i64::MAX)),
        );
        let mut total = self.blobs.sweep_parts(ABANDONED_AFTER);
        loop {
            let stale = app
                .store
                .stale_blobs(Staleness { now, before }, JANITOR_BATCH)
                .await?;
            if stale.is_empty() {
                break;
            }
            let count = stale.len();
            for file_id in &stale {
                self.blobs.delete(file_id).await?;
            }
            app.store.forget_blobs(stale).await?;
            total += count;
            if count < JANITOR_BATCH {
                break;
            }
        }
        Ok(total)
    }
}

fn check(upload: &UploadRecord, head: &[u8], complete: bool) -> Result<(), FileError> {
    if agrees(&upload.content_type, head, complete) {
        Ok(())
    } else {
        Err(FileError::TypeMismatch {
            declared: upload.content_type.clone(),
        })
    }
}

/// Runs the janitor forever (every few minutes; at once on start).
pub async fn run_janitor(app: Arc<App>) {
    let Some(files) = app.files.clone() else {
        return;
    };
    let mut ticker = tokio::time::interval(JANITOR_INTERVAL.min(app.config.retention_interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match files.sweep(&app).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed abandoned uploads and unshared files"),
            Err(err) => tracing::warn!(error = %err, "file janitor round failed"),
        }
    }
}
