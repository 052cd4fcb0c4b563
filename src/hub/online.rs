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
use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// An online user and how many announced connections they have; found by
/// user id. Kept small (40 bytes): a crowd has one per connection.
#[derive(Debug)]
struct OnlineUser {
    user: User,
    connections: Cell<u32>,
}

impl Borrow<str> for OnlineUser {
    fn borrow(&self) -> &str {
        &self.user.id
    }
}

impl Hash for OnlineUser {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.user.id).hash(state);
    }
}

impl PartialEq for OnlineUser {
    fn eq(&self, other: &Self) -> bool {
        self.user.id == other.user.id
    }
}

impl Eq for OnlineUser {}

/// A user ordered by username (byte-wise), then id, as presence lists are.
struct ByName<'a>(&'a User);

impl ByName<'_> {
    fn key(&self) -> (&str, &str) {
        (&self.0.username, &self.0.id)
    }
}

impl PartialEq for ByName<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ByName<'_> {}

impl PartialOrd for ByName<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByName<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The first `limit` of `users` by username, in order.
fn first_by_name<'a>(users: impl Iterator<Item = &'a User>, limit: usize) -> Vec<User> {
    // A max-heap of the best `limit` so far: one pass, no full sort.
    let mut best: BinaryHeap<ByName<'a>> = BinaryHeap::with_capacity(limit + 1);
    for user in users {
        best.push(ByName(user));
        if best.len() > limit {
            best.pop();
        }
    }
    best.into_sorted_vec()
        .into_iter()
        .map(|ByName(user)| user.clone())
        .collect()
}

/// Whom one connection watches.
#[derive(Debug)]
enum Watch {
    Everyone,
    Users(Box<[Arc<str>]>),
}

/// Online users and the online subscriptions.
#[derive(Debug, Default)]
pub(super) struct Online {
    /// Users with at least one announced connection.
    users: HashSet<OnlineUser>,
    /// The skeletons of the usernames in use ([`crate::auth::skeleton`]),
    /// for guest name checks; kept only where
    /// guests may name themselves.
    names: Option<HashMap<String, Arc<str>>>,
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
    /// An empty list; `guest_names`: keep the names in use, for guests
    /// naming themselves.
    pub(super) fn new(guest_names: bool) -> Online {
        Online {
            names: guest_names.then(HashMap::new),
            ..Online::default()
        }
    }

    /// Connections of this user that are online.
    pub(super) fn connections_of(&self, user_id: &str) -> usize {
        self.users
            .get(user_id)
            .map_or(0, |online| online.connections.get() as usize)
    }

    pub(super) fn users(&self) -> Vec<User> {
        self.users
            .iter()
            .map(|online| online.user.clone())
            .collect()
    }

    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Whether `user` (id, name and kind) is online as given.
    pub(super) fn is_online_as(&self, user: &User) -> bool {
        self.users
            .get(&*user.id)
            .is_some_and(|online| online.user == *user)
    }

    /// The user online under a name with this skeleton; `None` also where
    /// names are not kept.
    pub(super) fn owner_of_name(&self, skeleton: &str) -> Option<&Arc<str>> {
        self.names.as_ref()?.get(skeleton)
    }

    /// Moves one connection from `previous` to `next`, either of which may
    /// be nobody, and says whose first or last connection that was.
    pub(super) fn swap(&mut self, previous: Option<User>, next: Option<User>) -> IdentityChange {
        let mut change = IdentityChange::default();
        if previous == next {
            return change;
        }
        if let Some(user) = previous
            && let Some(online) = self.users.get(&*user.id)
        {
            let left = online.connections.get().saturating_sub(1);
            online.connections.set(left);
            if left == 0 {
                self.users.remove(&*user.id);
                if let Some(names) = &mut self.names {
                    let name = crate::auth::skeleton(&user.username);
                    if names.get(&name) == Some(&user.id) {
                        names.remove(&name);
                    }
                }
                change.left = Some(user);
            }
        }
        if let Some(user) = next {
            match self.users.get(&*user.id) {
                Some(online) => online.connections.set(online.connections.get() + 1),
                None => {
                    if let Some(names) = &mut self.names {
                        names
                            .entry(crate::auth::skeleton(&user.username))
                            .or_insert_with(|| user.id.clone());
                    }
                    self.users.insert(OnlineUser {
                        user: user.clone(),
                        connections: Cell::new(1),
                    });
                    change.joined = Some(user);
                }
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
        elsewhere: &[User],
    ) -> Watched {
        self.unsubscribe(&connection.id);
        let id = connection.id.clone();
        // Users online on other nodes and not here (several nodes).
        let elsewhere: Vec<&User> = elsewhere
            .iter()
            .filter(|user| !self.users.contains(&*user.id))
            .collect();
        match user_ids {
            None => {
                self.everyone.insert(id.clone(), connection.clone());
                self.subscriptions.insert(id, Watch::Everyone);
                let online = || {
                    self.users
                        .iter()
                        .map(|online| &online.user)
                        .chain(elsewhere.iter().copied())
                };
                Watched {
                    listed: first_by_name(online(), listed),
                    count: self.users.len() + elsewhere.len(),
                }
            }
            Some(ids) => {
                let mut seen = HashSet::with_capacity(ids.len());
                let ids: Box<[Arc<str>]> = ids
                    .into_iter()
                    .filter(|user_id| seen.insert(user_id.clone()))
                    .map(Arc::from)
                    .collect();
                for user_id in ids.iter() {
                    self.watchers
                        .entry(user_id.clone())
                        .or_default()
                        .push(connection.clone());
                }
                let online = || {
                    ids.iter()
                        .filter_map(|id| self.users.get(&**id))
                        .map(|online| &online.user)
                        .chain(
                            elsewhere
                                .iter()
                                .copied()
                                .filter(|user| seen.contains(&*user.id)),
                        )
                };
                let watched = Watched {
                    count: online().count(),
                    listed: first_by_name(online(), listed),
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

    /// Whether any connection watches this user.
    pub(super) fn is_watched(&self, user_id: &str) -> bool {
        !self.everyone.is_empty() || self.watchers.contains_key(user_id)
    }

    /// Calls `each` for every connection watching this user.
    pub(super) fn for_each_watcher(&self, user_id: &str, mut each: impl FnMut(&Connection)) {
        self.everyone.values().for_each(|c| each(c));
        if let Some(watchers) = self.watchers.get(user_id) {
            watchers.iter().for_each(|c| each(c));
        }
    }
}
