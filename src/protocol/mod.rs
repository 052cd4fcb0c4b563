//! The wire protocol: every message a client may send, every frame the server
//! sends back, the objects inside them, and the error and close codes.
//!
//! This module does no I/O. It turns a text frame into a typed [`ClientMessage`]
//! (or a [`Rejection`] that says which error to answer with), and turns a
//! [`ServerMessage`] into the bytes of one text frame. Everything above it —
//! sessions, handlers, the hub — works with these types and never with raw JSON.
//!
//! The user-facing description of the protocol is `docs/protocol.md`; keep the
//! two in step.

mod client;
mod error;
mod server;
mod time;
mod types;

pub use client::*;
pub use error::{CloseReason, ErrorCode};
pub use server::{Frame, PresenceEvent, ServerInfo, ServerMessage, ServerType, WelcomeLimits};
pub use time::{Timestamp, format_rfc3339_ms};
pub use types::{FileInfo, Message, User, UserKind};

/// The room a `chat_message` without `room` goes to. It reaches every
/// authenticated connection and named guest, and cannot be joined.
pub const GLOBAL_ROOM: &str = "global";
