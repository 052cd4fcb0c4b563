//! The records behind file sharing: authorized uploads and shared files.
//! The bytes themselves live in the file store ([`crate::files`]).

use crate::protocol::{FileInfo, Timestamp, User};
use std::sync::Arc;

/// An upload authorized by `file_upload_request`, waiting for its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: String,
    /// The name the blob gets; chosen by the server, never by a client.
    pub file_id: String,
    /// SHA-256 of the upload token (hex): the token itself is not stored.
    pub token_hash: String,
    pub room: Arc<str>,
    pub user: User,
    pub filename: String,
    pub size: u64,
    pub content_type: String,
    pub expires_at: Timestamp,
}

/// What claiming an upload for its PUT found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadClaim {
    /// The upload is this PUT's now; nobody else can claim it.
    Claimed(UploadRecord),
    /// No upload has this id.
    Unknown,
    /// The token is wrong, expired, or was spent by a completed upload.
    Refused,
    /// Another PUT is receiving this upload right now.
    Busy,
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub id: String,
    pub room: Arc<str>,
    pub user_id: Arc<str>,
    pub name: String,
    pub size: u64,
    pub content_type: String,
    pub sha256: String,
    pub created_at: Timestamp,
}

impl FileRecord {
    /// The protocol's `file` object.
    pub fn info(&self) -> FileInfo {
        FileInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            size: self.size,
            content_type: self.content_type.clone(),
            url: format!("/api/files/{}", self.id),
            sha256: self.sha256.clone(),
        }
    }
}

/// When the janitor considers an upload or a file abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// Now: pending uploads that expired before it are abandoned.
    pub now: Timestamp,
    /// Uploads claimed before this, and files shared by no message that
    /// were recorded before this, are abandoned.
    pub before: Timestamp,
}

/// Why an upload could not be claimed, from its row (token hash and state)
/// if it has one.
pub(super) fn claim_refusal(found: Option<(String, String)>, token_hash: &str) -> UploadClaim {
    match found {
        None => UploadClaim::Unknown,
        Some((stored, state)) if stored == token_hash && state == "uploading" => UploadClaim::Busy,
        Some(_) => UploadClaim::Refused,
    }
}
