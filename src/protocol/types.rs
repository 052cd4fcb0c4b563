//! The objects that travel inside frames: users, stored messages and shared files.

use super::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What kind of party a connection or a message author is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserKind {
    User,
    Guest,
    Assistant,
    System,
}

impl UserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::User => "user",
            UserKind::Guest => "guest",
            UserKind::Assistant => "assistant",
            UserKind::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<UserKind> {
        match text {
            "user" => Some(UserKind::User),
            "guest" => Some(UserKind::Guest),
            "assistant" => Some(UserKind::Assistant),
            "system" => Some(UserKind::System),
            _ => None,
        }
    }
}

/// `{"id", "username", "kind"}`: who sent a message or is online.
///
/// Strings are `Arc<str>` because one user object is copied into every room
/// membership and every message the user writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    pub id: Arc<str>,
    pub username: Arc<str>,
    pub kind: UserKind,
}

/// A file attached to a message (`file` object of the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub content_type: String,
    pub url: String,
    pub sha256: String,
}

/// A stored chat message as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub id: i64,
    pub room: Arc<str>,
    pub user: User,
    pub content: String,
    pub created_at: Timestamp,
    pub client_msg_id: Option<String>,
    pub reply_to: Option<i64>,
    pub attachment: Option<FileInfo>,
}
