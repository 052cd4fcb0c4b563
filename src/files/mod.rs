//! File sharing: a user asks over the WebSocket (`file_upload_request`),
//! gets a short-lived single-use token bound to one upload, PUTs the bytes
//! over HTTP, and the room is told (`file_shared`) with a chat message that
//! carries the file. Any node may take the PUT or serve the file: uploads
//! and files are recorded in the store, the bytes are in the file store.
//!
//! - [`content`]: the allow-list, the check of a file's first bytes against
//!   its declared type, and safe names.
//! - [`blob`]: the file store (a directory or an S3-compatible bucket).
//! - [`upload`]: authorizing, receiving and serving; the janitor.

mod blob;
mod content;
mod upload;

pub use blob::{BlobError, Blobs};
pub use content::{agrees, checkable, content_disposition, essence, sanitize_filename};
pub use upload::{
    Authorization, FileError, Files, Received, UPLOADS_PER_USER_PER_MINUTE, UploadBody,
    run_janitor, token_hash,
};
