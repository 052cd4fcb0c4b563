//! The in-process broker: a broadcast is a direct hand-off to the local hub.

use super::{Broker, Stored};
use crate::hub::{Audience, Hub, OutFrame};
use std::sync::Arc;

/// Broker for a single node.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    hub: Arc<Hub>,
}

impl LocalBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalBroker { hub }
    }
}

impl Broker for LocalBroker {
    fn publish(&self, audience: Audience, frame: OutFrame, except: Option<&str>) {
        self.hub.broadcast(&audience, &frame, except);
    }

    fn kick(&self, connection_id: &str) -> crate::store::BoxFuture<'static, bool> {
        let found = kick_here(&self.hub, connection_id);
        Box::pin(std::future::ready(found))
    }

    /// One node stores and delivers in commit order already.
    fn publish_stored(&self, message: Stored) {
        self.hub.broadcast(
            &super::sequencer::audience(&message.room),
            &message.frame,
            None,
        );
    }
}

/// Closes one of this node's connections with 4003; whether it was here
/// (and not already closing).
pub(super) fn kick_here(hub: &Hub, connection_id: &str) -> bool {
    match hub
        .get(connection_id)
        .filter(|connection| connection.close_requested().is_none())
    {
        Some(connection) => {
            connection.close(crate::protocol::CloseReason::KICKED);
            true
        }
        None => false,
    }
}
