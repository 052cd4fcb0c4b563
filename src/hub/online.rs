//! Who is online, and who watches whom (protocol rule 6).
//!
//! One structure behind one lock, so that an online announcement is decided
//! and queued in the same step as the change it announces: two changes of
//! the same user reach a watcher in the order they happened, and a
//! subscription's `presence_state` and the announcements after it never
//! contradict each other.
//!
//! Costs: a user's arrival or departure reaches the connections that watch
//! everyone plus those that listed that user (an index from watched user to
//! watchers, never a scan); a subscription costs the users it lists.

use super::connection::Connection;
use crate::protocol::User;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Whom one connection watches.
#[derive(Debug)]
enum Watch {
    Everyone,
    Users(Box<[Arc<str>]>),
}

/// Online users and the online subscriptions.
#[derive(Debug, Default)]
pub(super) struct Online {
    /// Users with at least one announced connection, and how many they have.
    users: HashMap<Arc<str>, (User, usize)>,
    /// The same users ordered by username (byte-wise), then id: the first
    /// page of an everyone-subscription's `presence_state` without a sort.
    ordered: BTreeSet<(Arc<str>, Arc<str>)>,
    /// Lower-cased usernames in use, for guest name checks.
    names: HashMap<String, Arc<str>>,
    /// Each subscribed connection's subscription, by connection id.
    subscriptions: HashMap<Arc<str>, Watch>,
    /// Connections watching every user.
    everyone: HashMap<Arc<str>, Arc<Connection>>,
    /// Per watched user id, the connections that listed it.
    watchers: HashMap<Arc<str>, Vec<Arc<Connection>>>,
}

/// What a change of identity did to the online list.
#[derive(Debug, Default)]
pub struct IdentityChange {
    /// The previous user, when this was their last connection.
    pub left: Option<User>,
    /// The new user, when this is their first connection.
    pub joined: Option<User>,
}

/// The watched users online when a subscription started.
#[derive(Debug)]
pub struct Watched {
    /// The first of them by username, at most as many as asked for.
    pub listed: Vec<User>,
    /// How many there are.
    pub count: usize,
}

impl Online {
    /// Connections of this user that are online.
    pub(super) fn connections_of(&self, user_id: &str) -> usize {
        self.users.get(user_id).map_or(0, |(_, count)| *count)
    }

    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Whether `user` (id, name and kind) is online as given.
    pub(super) fn is_online_as(&self, user: &User) -> bool {
        self.users.get(&user.id).is_some_and(|(now, _)| now == user)
    }

    pub(super) fn owner_of_name(&self, lowercase_name: &str) -> Option<&Arc<str>> {
        self.names.get(lowercase_name)
    }

    /// Moves one connection from `previous` to `next`, either of which may
    /// be nobody, and says whose first or last connection that was.
    pub(super) fn swap(&mut self, previous: Option<User>, next: Option<User>) -> IdentityChange {
        let mut change = IdentityChange::default();
        if previous == next {
            return change;
        }
        if let Some(user) = previous
            && let Some((_, count)) = self.users.get_mut(&user.id)
        {
            *count -= 1;
            if *count == 0 {
                self.users.remove(&user.id);
                self.ordered
                    .remove(&(user.username.clone(), user.id.clone()));
                let name = user.username.to_lowercase();
                if self.names.get(&name) == Some(&user.id) {
                    self.names.remove(&name);
                }
                change.left = Some(user);
            }
        }
        if let Some(user) = next {
            let entry = self
                .users
                .entry(user.id.clone())
                .or_insert_with(|| (user.clone(), 0));
            entry.1 += 1;
            if entry.1 == 1 {
                self.ordered
                    .insert((user.username.clone(), user.id.clone()));
                self.names
                    .entry(user.username.to_lowercase())
                    .or_insert_with(|| user.id.clone());
                change.joined = Some(user);
            }
        }
        change
    }

    /// Makes `connection` watch every user (`None`) or those listed,
    /// replacing what it watched before, and returns the watched users
    /// online now: the first `listed` of them by username, and their number.
    pub(super) fn subscribe(
        &mut self,
        connection: &Arc<Connection>,
        user_ids: Option<Vec<String>>,
        listed: usize,
    ) -> Watched {
        self.unsubscribe(&connection.id);
        let id = connection.id.clone();
        match user_ids {
            None => {
                self.everyone.insert(id.clone(), connection.clone());
                self.subscriptions.insert(id, Watch::Everyone);
                Watched {
                    listed: self
                        .ordered
                        .iter()
                        .take(listed)
                        .filter_map(|(_, user_id)| self.users.get(user_id))
                        .map(|(user, _)| user.clone())
                        .collect(),
                    count: self.users.len(),
                }
            }
            Some(ids) => {
                let mut seen = HashSet::with_capacity(ids.len());
                let ids: Box<[Arc<str>]> = ids
                    .into_iter()
                    .filter(|user_id| seen.insert(user_id.clone()))
                    .map(Arc::from)
                    .collect();
                let mut online: Vec<&User> = Vec::new();
                for user_id in ids.iter() {
                    self.watchers
                        .entry(user_id.clone())
                        .or_default()
                        .push(connection.clone());
                    if let Some((user, _)) = self.users.get(user_id) {
                        online.push(user);
                    }
                }
                online.sort_unstable_by(|a, b| (&a.username, &a.id).cmp(&(&b.username, &b.id)));
                let watched = Watched {
                    count: online.len(),
                    listed: online.into_iter().take(listed).cloned().collect(),
                };
                self.subscriptions.insert(id, Watch::Users(ids));
                watched
            }
        }
    }

    /// Ends the connection's subscription; returns whether it had one.
    pub(super) fn unsubscribe(&mut self, connection_id: &str) -> bool {
        let Some(watch) = self.subscriptions.remove(connection_id) else {
            return false;
        };
        match watch {
            Watch::Everyone => {
                self.everyone.remove(connection_id);
            }
            Watch::Users(ids) => {
                for user_id in ids.iter() {
                    if let Some(watchers) = self.watchers.get_mut(user_id) {
                        watchers.retain(|c| &*c.id != connection_id);
                        if watchers.is_empty() {
                            self.watchers.remove(user_id);
                        }
                    }
                }
            }
        }
        true
    }

    /// Calls `each` for every connection watching this user.
    pub(super) fn for_each_watcher(&self, user_id: &str, mut each: impl FnMut(&Connection)) {
        self.everyone.values().for_each(|c| each(c));
        if let Some(watchers) = self.watchers.get(user_id) {
            watchers.iter().for_each(|c| each(c));
        }
    }
}
