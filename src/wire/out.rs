//! A server frame encoded once as a WebSocket text frame, header included,
//! so that a broadcast shares the same bytes among all its recipients.

use crate::protocol::{Frame, ServerType};
use bytes::Bytes;

/// An encoded frame ready to be queued to any number of connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    /// Its protocol type, for the statistics.
    pub kind: ServerType,
    /// The whole WebSocket frame, header included, shared by all recipients.
    pub bytes: Bytes,
}

impl From<Frame> for OutFrame {
    fn from(frame: Frame) -> Self {
        OutFrame {
            kind: frame.kind,
            bytes: super::frame::text(&frame.text),
        }
    }
}
