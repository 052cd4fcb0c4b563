//! The webhook outbox as the store sees it: which webhooks want which
//! rooms (so that a message's deliveries are written in its own
//! transaction), what a delivery's body is, and the rows a dispatcher
//! leases.

use crate::protocol::{Message, ServerMessage, Timestamp};
use std::sync::Arc;

/// Which webhooks want which rooms.
#[derive(Debug, Clone, Default)]
pub struct WebhookRoutes {
    /// A webhook's id and its rooms (empty: every room).
    routes: Vec<(String, Vec<String>)>,
}

impl WebhookRoutes {
    pub fn new(routes: Vec<(String, Vec<String>)>) -> Arc<WebhookRoutes> {
        Arc::new(WebhookRoutes { routes })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The ids of the webhooks that want `room`.
    pub fn wanting<'a>(&'a self, room: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.routes
            .iter()
            .filter(move |(_, rooms)| rooms.is_empty() || rooms.iter().any(|r| r == room))
            .map(|(id, _)| id.as_str())
    }
}

/// One delivery to write: for a webhook, its kind and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub webhook: String,
    pub kind: &'static str,
    pub body: String,
}

/// The deliveries of a stored message: what the room was told
/// (`chat_message`, or `file_shared` for a message with a file).
pub fn message_entries(routes: &WebhookRoutes, message: &Message) -> Vec<OutboxEntry> {
    let mut wanting = routes.wanting(&message.room).peekable();
    if wanting.peek().is_none() {
        return Vec::new();
    }
    let frame = ServerMessage::stored(message).encode(None);
    let kind = frame.kind.as_str();
    wanting
        .map(|webhook| OutboxEntry {
            webhook: webhook.to_owned(),
            kind,
            body: frame.text.clone(),
        })
        .collect()
}

/// The deliveries of a recorded project or ticket event.
pub fn event_entries(
    routes: &WebhookRoutes,
    room: &str,
    kind: &'static str,
    event_id: i64,
    user_id: &str,
    payload: &serde_json::Value,
) -> Vec<OutboxEntry> {
    let mut wanting = routes.wanting(room).peekable();
    if wanting.peek().is_none() {
        return Vec::new();
    }
    let mut body = serde_json::json!({
        "type": kind,
        "room": room,
        "event_id": event_id,
        "user_id": user_id,
        "timestamp": Timestamp::now(),
    });
    if let (Some(body), Some(fields)) = (body.as_object_mut(), payload.as_object()) {
        for (name, value) in fields {
            body.insert(name.clone(), value.clone());
        }
    }
    let body = body.to_string();
    wanting
        .map(|webhook| OutboxEntry {
            webhook: webhook.to_owned(),
            kind,
            body: body.clone(),
        })
        .collect()
}

/// A delivery leased to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub id: i64,
    pub webhook: String,
    pub kind: String,
    pub body: String,
    /// Tries made before this one.
    pub attempts: i64,
}
