//! How broadcasts travel: the [`Broker`] takes an encoded frame for an
//! audience and gets it to every node's hub.
//!
//! The in-process [`LocalBroker`] is the whole story for a single node. A
//! broker that spans nodes (Redis) implements the same trait: it delivers to
//! the local hub and forwards the same bytes to the other nodes, which deliver
//! to theirs.

mod local;

pub use local::LocalBroker;

use crate::hub::{Audience, OutFrame};

/// Delivers broadcasts.
///
/// Contract: `publish` does not block and does not wait for the network; frames
/// published by one caller reach each recipient in the order they were
/// published; `except` (a connection id) is skipped on every node.
pub trait Broker: Send + Sync + 'static {
    fn publish(&self, audience: Audience, frame: OutFrame, except: Option<&str>);
}
