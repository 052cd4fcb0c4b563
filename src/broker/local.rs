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

    /// One node stores and delivers in commit order already.
    fn publish_stored(&self, message: Stored) {
        self.hub.broadcast(
            &super::sequencer::audience(&message.room),
            &message.frame,
            None,
        );
    }
}
