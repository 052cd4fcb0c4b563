//! One room's live membership: the connections in it (for fan-out) and the
//! distinct users behind them (for `members`, presence and room stats).

use super::Outbox;
use super::connection::Connection;
use crate::protocol::User;
use std::collections::BTreeMap;
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
    /// Connections of this user in the room; the user leaves at zero.
    connections: usize,
}

#[derive(Debug, Default)]
pub(super) struct Members {
    /// Fan-out list. A `Vec` because broadcast iterates it far more often
    /// than joins and leaves change it.
    pub(super) connections: Vec<Arc<Connection>>,
    /// Their outboxes, at the same positions: a broadcast goes through
    /// these and reads a connection only when its outbox is full.
    pub(super) outboxes: Vec<Arc<Outbox>>,
    users: BTreeMap<MemberKey, Member>,
}

impl Members {
    /// Adds a connection; returns whether it is the user's first in the room.
    pub(super) fn add(&mut self, connection: Arc<Connection>, user: &User) -> bool {
        self.outboxes.push(connection.outbox.clone());
        self.connections.push(connection);
        let member = self
            .users
            .entry(MemberKey::of(user))
            .or_insert_with(|| Member {
                user: user.clone(),
                connections: 0,
            });
        member.connections += 1;
        member.connections == 1
    }

    /// Removes a connection; returns whether it was the user's last here.
    /// `user` must be the identity the connection joined with.
    pub(super) fn remove(&mut self, connection_id: &str, user: &User) -> bool {
        let Some(position) = self
            .connections
            .iter()
            .position(|c| &*c.id == connection_id)
        else {
            return false;
        };
        self.connections.swap_remove(position);
        self.outboxes.swap_remove(position);
        let key = MemberKey::of(user);
        match self.users.get_mut(&key) {
            Some(member) if member.connections > 1 => {
                member.connections -= 1;
                false
            }
            Some(_) => {
                self.users.remove(&key);
                true
            }
            None => false,
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
