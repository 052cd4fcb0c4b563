//! How broadcasts travel: the [`Broker`] takes an encoded frame for an
//! audience and gets it to every node's hub.
//!
//! The in-process [`LocalBroker`] is the whole story for a single node. The
//! [`RedisBroker`] spans nodes: it delivers to the local hub and forwards the
//! same bytes to the other nodes (see [`envelope`]), which deliver to theirs.

mod connection;
pub mod envelope;
mod local;
mod redis;
pub use connection::CLUSTER_SCHEME;
mod sequencer;

pub use local::LocalBroker;
pub use redis::{BrokerError, Eviction, RedisBroker, RedisTasks};
pub use sequencer::Stored;

/// Figures of every live node added up (see [`Broker::cluster`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterTotals {
    /// Nodes that reported in the last 15 seconds.
    pub nodes: u64,
    pub active_connections: u64,
    pub total_connections: u64,
    /// Distinct users online on each node, added up (a user on two nodes
    /// counts twice).
    pub online_users: u64,
}

use crate::hub::{Audience, OutFrame};
use crate::protocol::User;

/// Delivers broadcasts.
///
/// Contract: `publish` does not block and does not wait for the network; frames
/// published by one caller reach each recipient in the order they were
/// published; `except` (a connection id) is skipped on every node.
pub trait Broker: Send + Sync + 'static {
    fn publish(&self, audience: Audience, frame: OutFrame, except: Option<&str>);

    /// Publishes a stored chat message to its room (or to everyone, for
    /// `global`): on every node its room sees the room's messages in id
    /// order, each once.
    fn publish_stored(&self, message: Stored);

    /// Announces to `user`'s watchers that the user's first connection on
    /// this node arrived (`arrived`) or its last one here left. With
    /// several nodes the announcement goes out only if it changes whether
    /// the user is online anywhere.
    fn announce(&self, user: &User, arrived: bool, frame: OutFrame, except: Option<&str>) {
        let audience = Audience::Watchers {
            user: user.clone(),
            if_online: Some(arrived),
        };
        self.publish(audience, frame, except);
    }

    /// The user's first connection in `room` on this node joined it
    /// (`joined`), or their last one here left. Other nodes learn of it and
    /// tell their own members (room presence events, counts); each node
    /// tells its own. Nothing to do on one node.
    fn membership(&self, _room: &str, _user: &User, _joined: bool) {}

    /// How many connections `user_id` has on the other nodes, as they last
    /// counted them; `None` on one node.
    fn connections_elsewhere(
        &self,
        _user_id: &str,
    ) -> Option<crate::store::BoxFuture<'static, usize>> {
        None
    }

    /// The users online on any node (all, or those of `user_ids`), as the
    /// nodes last counted them; `None` on one node.
    fn online_elsewhere(
        &self,
        _user_ids: Option<&[String]>,
    ) -> Option<crate::store::BoxFuture<'static, Vec<User>>> {
        None
    }

    /// Whether broadcasts reach other nodes too: then this node's view of
    /// who would receive one is not the whole picture.
    fn spans_nodes(&self) -> bool {
        false
    }

    /// Closes a connection with 4003 (kicked), on whichever node holds it;
    /// resolves to whether one was found.
    fn kick(&self, connection_id: &str) -> crate::store::BoxFuture<'static, bool>;

    /// Tells the other nodes that `user_id` was removed from the private
    /// `room`: their connections of that user leave it (this node's are
    /// the caller's to handle). Nothing to do on one node.
    fn evict(&self, _room: &str, _user_id: &str) {}

    /// Totals over every live node (`None` on one node): what each node
    /// last reported of itself, added up.
    fn cluster(&self) -> Option<crate::store::BoxFuture<'static, Option<ClusterTotals>>> {
        None
    }

    /// A join read `room`'s history up to `newest` (`None`: the room has no
    /// message yet): where this node's order of the room starts if it has
    /// none yet, so that a message it missed before is noticed.
    fn history_read(&self, _room: &str, _newest: Option<i64>) {}

    /// After this node's first connection joined `room`: what to wait for
    /// until broadcasts from other nodes to the room arrive here (`None`:
    /// they already do).
    fn following(&self, _room: &str) -> Option<crate::store::BoxFuture<'static, ()>> {
        None
    }
}
