//! One room's live membership: the connections in it (for fan-out) and the
//! distinct users behind them (for `members`, presence and room stats),
//! with, on several nodes, the users the room has on the other nodes.

use super::Outbox;
use super::connection::Connection;
use crate::protocol::User;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Orders members by username compared byte-wise, as the protocol requires;
/// the user id breaks ties between two users that share a display name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MemberKey {
    username: Arc<str>,
    user_id: Arc<str>,
}

impl MemberKey {
    fn of(user: &User) -> MemberKey {
        MemberKey {
            username: user.username.clone(),
            user_id: user.id.clone(),
        }
    }
}

#[derive(Debug)]
struct Member {
    user: User,
    /// Connections of this user in the room on this node.
    connections: usize,
    /// The other nodes on which the user is in the room; the user leaves
    /// when neither this node nor another has them.
    elsewhere: Vec<Arc<str>>,
}

impl Member {
    fn present(&self) -> bool {
        self.connections > 0 || !self.elsewhere.is_empty()
    }
}

#[derive(Debug, Default)]
pub(super) struct Members {
    /// Fan-out list. A `Vec` because broadcast iterates it far more often
    /// than joins and leaves change it.
    pub(super) connections: Vec<Arc<Connection>>,
    /// Their outboxes, at the same positions: a broadcast goes through
    /// these and reads a connection only when its outbox is full.
    pub(super) outboxes: Vec<Arc<Outbox>>,
    /// Each connection's position in `connections`, by connection id, so
    /// that a leave in a big room does not scan it.
    positions: HashMap<Arc<str>, usize>,
    users: BTreeMap<MemberKey, Member>,
    /// More distinct users than the presence limit are in the room: no
    /// per-user presence events, counts instead (protocol rule 13).
    pub(super) large: bool,
    /// The member count the members were last told, by events or by a
    /// `presence_count`; a count is due when the room's differs.
    pub(super) told: usize,
    /// The room is on the presence-count task's list.
    pub(super) counted: bool,
}

/// What a join or leave did to a room's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The user's first connection in the room (on a join) or last (on a
    /// leave), on every node this node knows of: the user's membership
    /// changed.
    pub user_changed: bool,
    /// The user's first connection in the room on this node, or last.
    pub here_changed: bool,
    /// The room is large: the change is told by a count, not by an event.
    pub quiet: bool,
    /// The room has just become large and needs to go on the count list.
    pub(super) became_large: bool,
}

impl Members {
    /// Adds a connection. With more than `limit` distinct users the room
    /// becomes large.
    pub(super) fn add(&mut self, connection: Arc<Connection>, user: &User, limit: usize) -> Change {
        self.positions
            .insert(connection.id.clone(), self.connections.len());
        self.outboxes.push(connection.outbox.clone());
        self.connections.push(connection);
        let member = self.member(user);
        member.connections += 1;
        let here_changed = member.connections == 1;
        let user_changed = here_changed && member.elsewhere.is_empty();
        self.changed(user_changed, here_changed, true, limit)
    }

    /// Removes a connection; `None` if it was not here. `user` must be the
    /// identity the connection joined with. At `limit` distinct users or
    /// fewer a large room is small again, and this leave is an event.
    pub(super) fn remove(
        &mut self,
        connection_id: &str,
        user: &User,
        limit: usize,
    ) -> Option<Change> {
        let position = self.positions.remove(connection_id)?;
        self.connections.swap_remove(position);
        self.outboxes.swap_remove(position);
        if let Some(moved) = self.connections.get(position) {
            self.positions.insert(moved.id.clone(), position);
        }
        let key = MemberKey::of(user);
        let (here_changed, user_changed) = match self.users.get_mut(&key) {
            Some(member) if member.connections > 1 => {
                member.connections -= 1;
                (false, false)
            }
            Some(member) => {
                member.connections = 0;
                let gone = !member.present();
                if gone {
                    self.users.remove(&key);
                }
                (true, gone)
            }
            None => (false, false),
        };
        Some(self.changed(user_changed, here_changed, false, limit))
    }

    /// Another node says the user is in the room there (`joined`) or no
    /// longer is; `None` if that changes nothing.
    pub(super) fn elsewhere(
        &mut self,
        node: &Arc<str>,
        user: &User,
        joined: bool,
        limit: usize,
    ) -> Option<Change> {
        let key = MemberKey::of(user);
        let user_changed = if joined {
            let member = self.member(user);
            if member.elsewhere.contains(node) {
                return None;
            }
            member.elsewhere.push(node.clone());
            member.connections == 0 && member.elsewhere.len() == 1
        } else {
            let member = self.users.get_mut(&key)?;
            let at = member.elsewhere.iter().position(|known| known == node)?;
            member.elsewhere.swap_remove(at);
            let gone = !member.present();
            if gone {
                self.users.remove(&key);
            }
            gone
        };
        Some(self.changed(user_changed, false, joined, limit))
    }

    /// The users with a connection in the room on this node.
    pub(super) fn users_here(&self) -> Vec<User> {
        self.users
            .values()
            .filter(|member| member.connections > 0)
            .map(|member| member.user.clone())
            .collect()
    }

    /// What other nodes said of their members: (node, user) pairs.
    pub(super) fn elsewhere_pairs(&self) -> Vec<(Arc<str>, User)> {
        self.users
            .values()
            .flat_map(|member| {
                member
                    .elsewhere
                    .iter()
                    .map(|node| (node.clone(), member.user.clone()))
            })
            .collect()
    }

    fn member(&mut self, user: &User) -> &mut Member {
        self.users
            .entry(MemberKey::of(user))
            .or_insert_with(|| Member {
                user: user.clone(),
                connections: 0,
                elsewhere: Vec::new(),
            })
    }

    /// Keeps the large flag and the told count in step with a change of
    /// the distinct users (`arrived`: one more, else one fewer).
    fn changed(
        &mut self,
        user_changed: bool,
        here_changed: bool,
        arrived: bool,
        limit: usize,
    ) -> Change {
        let mut became_large = false;
        if user_changed {
            let users = self.users.len();
            if arrived && users > limit {
                if !self.large {
                    // Members know the count from before this join.
                    self.large = true;
                    self.told = users - 1;
                    became_large = !self.counted;
                    self.counted = true;
                }
            } else if users <= limit {
                // At `limit` or fewer a large room is small again.
                self.large = false;
                self.told = users;
            }
        }
        Change {
            user_changed,
            here_changed,
            quiet: self.large,
            became_large,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    pub(super) fn page(&self, offset: usize, limit: usize) -> Vec<User> {
        self.users
            .values()
            .skip(offset)
            .take(limit)
            .map(|member| member.user.clone())
            .collect()
    }
}

/// A room with at least one connection in it.
#[derive(Debug)]
pub(super) struct Room {
    members: RwLock<Members>,
}

impl Room {
    pub(super) fn new() -> Room {
        Room {
            members: RwLock::new(Members::default()),
        }
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Members> {
        self.members.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Members> {
        self.members.write().unwrap_or_else(PoisonError::into_inner)
    }
}
