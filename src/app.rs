//! The state every part of a running server shares: configuration, the hub,
//! the broker, the store and the token keys.

use crate::ai::{AiControl, Provider};
use crate::auth::{Accounts, Tokens};
use crate::broker::Broker;
use crate::config::Config;
use crate::hub::{Audience, Connection, Delivery, Hub, OutFrame};
use crate::protocol::ServerMessage;
use crate::store::MessageStore;
use std::sync::Arc;

/// Shared server state, passed to handlers as `&Arc<App>`.
pub struct App {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn MessageStore>,
    pub tokens: Tokens,
    pub accounts: Accounts,
    /// The assistant's model, where `--ai-base-url` is configured.
    pub ai: Option<Arc<dyn Provider>>,
    /// Admission control and counters for AI requests.
    pub ai_control: Arc<AiControl>,
    /// The runtime, for work started from outside it (commit callbacks).
    pub runtime: tokio::runtime::Handle,
    /// Rooms each user may still create by joining (per hour), where
    /// rooms are auto-created and a limit is set.
    pub room_creations: Option<crate::limits::KeyedLimiter<std::sync::Arc<str>>>,
    /// File sharing, unless the allow-list of upload types is empty.
    pub files: Option<Arc<crate::files::Files>>,
    /// Delivers the webhook outbox, where `--webhook` is configured.
    pub webhooks: Option<Arc<crate::webhooks::Dispatcher>>,
}

impl App {
    /// Encodes a frame and queues it for one connection.
    pub fn send(
        &self,
        connection: &Connection,
        message: &ServerMessage<'_>,
        reference: Option<&str>,
    ) -> Delivery {
        self.hub
            .send(connection, &OutFrame::from(message.encode(reference)))
    }

    /// Like [`App::send`] for a frame that must not be dropped: waits up to
    /// `patience` for the connection's outbox to have room.
    pub async fn send_patiently(
        &self,
        connection: &Connection,
        message: &ServerMessage<'_>,
        reference: Option<&str>,
        patience: std::time::Duration,
    ) -> Delivery {
        let frame = OutFrame::from(message.encode(reference));
        self.hub.send_patiently(connection, &frame, patience).await
    }

    /// Broadcasts a newly stored chat message to its room (everyone, for
    /// `global`), in the room's id order on every node: as `chat_message`,
    /// or as `file_shared` when it carries a file.
    pub fn publish_stored(&self, appended: &crate::store::Appended) {
        let message = &appended.message;
        self.broker.publish_stored(crate::broker::Stored {
            room: message.room.clone(),
            id: message.id,
            previous: appended.previous,
            frame: OutFrame::from(ServerMessage::stored(message).encode(None)),
        });
    }

    /// Stores a chat message and, once it is durable, broadcasts it (in the
    /// room's commit order, like every chat message); resolves to what was
    /// stored. A retried `client_msg_id` finds the first message and is not
    /// broadcast again.
    pub async fn store_and_publish(
        self: &std::sync::Arc<Self>,
        message: crate::store::NewMessage,
    ) -> Result<crate::store::Appended, crate::store::StoreError> {
        let (done, stored) = tokio::sync::oneshot::channel();
        let app = self.clone();
        self.store.append(
            message,
            Box::new(move |result| {
                if let Ok(appended) = &result
                    && !appended.duplicate
                {
                    app.publish_stored(appended);
                }
                // The caller waits for this; if it is gone, nobody needs it.
                let _ = done.send(result);
            }),
        );
        stored
            .await
            .unwrap_or(Err(crate::store::StoreError::Closed))
    }

    /// Encodes a frame once and broadcasts it to an audience.
    pub fn publish(&self, audience: Audience, message: &ServerMessage<'_>, except: Option<&str>) {
        self.broker
            .publish(audience, OutFrame::from(message.encode(None)), except);
    }

    /// Broadcasts to this node's connections only: for what each node
    /// decides for its own (room presence events, whose changes the broker
    /// carries to the other nodes as memberships).
    pub fn tell_here(
        &self,
        audience: &Audience,
        message: &ServerMessage<'_>,
        except: Option<&str>,
    ) {
        self.hub
            .broadcast(audience, &OutFrame::from(message.encode(None)), except);
    }
}
