//! The connection manager: which connections exist, who is on them, which
//! rooms they are in, and how frames reach them.
//!
//! The hub is infrastructure only. It reports transitions (a user's first
//! connection, a user's last connection in a room) and leaves it to the
//! handlers to decide what to announce. Sends never wait: each connection has
//! a bounded outbox, and a broadcast hands every recipient a clone of the same
//! encoded bytes.
//!
//! Locking: connection and room maps are sharded `RwLock`s, so joins in one
//! room do not stall broadcasts in another. Lock order is shard → room members;
//! no lock is ever held across an `.await`.

mod batch;
mod connection;
mod flusher;
mod online;
mod outbox;
mod pending;
mod room;
mod stats;

pub use batch::Batch;
pub use connection::{Connection, ConnectionState, Delivery, Identity, Role};
pub use flusher::{Callbacks, Flusher};
pub use online::{IdentityChange, Watched};
pub use outbox::{Flush, Outbox};
pub use pending::PendingWrites;
pub use stats::{Histogram, HubStats, LATENCY_BUCKETS_US, SLOW_BUCKETS_US};

use crate::protocol::{CloseReason, ServerType, User, UserKind};
use crate::wire::Stream;
use online::Online;
pub use room::Change as RoomChange;
use room::Room;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 32;

/// Members of a room whose outboxes a broadcast reads in together before
/// writing to their sockets (see `Hub::broadcast`).
const WARMED_TOGETHER: usize = 32;

/// What the hub queues: a frame encoded once, for any number of connections.
pub use crate::wire::OutFrame;

/// How many of `connections` are of each kind (user, guest, assistant, system).
pub fn count_by_kind(connections: &[Arc<Connection>]) -> [(UserKind, u64); 4] {
    let mut counts = [
        (UserKind::User, 0),
        (UserKind::Guest, 0),
        (UserKind::Assistant, 0),
        (UserKind::System, 0),
    ];
    for connection in connections {
        let kind = connection.kind();
        if let Some(entry) = counts.iter_mut().find(|(k, _)| *k == kind) {
            entry.1 += 1;
        }
    }
    counts
}

/// Who a broadcast goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every connection in the room.
    Room(Arc<str>),
    /// Every authenticated connection and named guest.
    Everyone,
    /// The online subscribers watching this user (protocol rule 6).
    Watchers {
        user: User,
        /// Deliver only while the user is (`Some(true)`) or is not
        /// (`Some(false)`) online as `user`: an announcement that a newer
        /// change of the same user overtook is dropped, so watchers never
        /// see a user's arrival after their departure.
        if_online: Option<bool>,
    },
}

/// A guest asked for a display name that someone online already uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("username already in use")]
pub struct NameTaken;

/// A room this connection left, and whether it was the user's last connection there.
#[derive(Debug)]
pub struct RoomDeparture {
    pub room: Arc<str>,
    pub user: User,
    /// The user is no longer in the room on any node this node knows of.
    pub last_of_user: bool,
    /// That was the user's last connection in the room on this node.
    pub last_here: bool,
    /// That was the room's last connection on this node.
    pub emptied: bool,
    /// The room is large: members learn of the leave by a count (rule 13).
    pub quiet: bool,
}

/// A connection of a user (by id) logged in (+1) or out (-1).
pub type Login = (Arc<str>, i32);

/// A room gained its first member on this node (`true`) or lost its last.
pub type RoomInterest = (Arc<str>, bool);

/// A room whose member count is told by `presence_count`, for the task that
/// tells it (see [`CountTicker`]).
type CountedRoom = (Arc<str>, Arc<Room>);

/// One shard of a [`Sharded`] map.
type Shard<V> = RwLock<HashMap<Arc<str>, V>>;

/// A map split into shards by key hash.
#[derive(Debug)]
struct Sharded<V> {
    hasher: RandomState,
    shards: Box<[Shard<V>]>,
}

impl<V> Sharded<V> {
    fn new() -> Self {
        Sharded {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[index]
    }

    fn read(&self, key: &str) -> RwLockReadGuard<'_, HashMap<Arc<str>, V>> {
        self.shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, key: &str) -> RwLockWriteGuard<'_, HashMap<Arc<str>, V>> {
        self.shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn values(&self) -> Vec<V>
    where
        V: Clone,
    {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// The connection manager. One per server process.
#[derive(Debug)]
pub struct Hub {
    /// Prefix of connection ids, random per process so ids stay unique
    /// across nodes and restarts.
    node_id: String,
    next_connection: AtomicU64,
    outbox_capacity: usize,
    connections: Sharded<Arc<Connection>>,
    rooms: Sharded<Arc<Room>>,
    online: Mutex<Online>,
    /// Distinct members above which a room is large (protocol rule 13).
    presence_max_members: usize,
    /// Rooms that became large, on their way to the [`CountTicker`].
    newly_large: tokio::sync::mpsc::UnboundedSender<CountedRoom>,
    /// The receiving end, until [`Hub::count_ticker`] takes it.
    ticker: Mutex<Option<CountTicker>>,
    /// Told when a room gets its first member on this node (`true`) and
    /// loses its last (`false`), in that order per room; set by
    /// [`Hub::watch_rooms`] for a broker that subscribes by interest.
    interest: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RoomInterest>>,
    /// Told of each connection's user arriving (+1) or going (-1); set by
    /// [`Hub::watch_logins`] for a broker that counts connections per user
    /// across nodes.
    logins: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Login>>,
    /// Open connections per client IP, for the per-IP limit.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Set by [`Hub::close_all`]: connections registered from then on are
    /// closed at once.
    closing: AtomicBool,
    stats: HubStats,
    /// Writes deferred batches (announcements to everyone, the frames of
    /// storage commits), coalesced per socket.
    flusher: Arc<Flusher>,
}

impl Hub {
    /// Runs the task that writes deferred batches (announcements to
    /// everyone, commits' frames); without it they are written at once by
    /// whoever made them.
    pub async fn run_flusher(&self) {
        self.flusher.run().await;
    }

    /// The task-side writer of deferred batches (see [`Batch::deferred`]).
    pub fn flusher(&self) -> Arc<Flusher> {
        self.flusher.clone()
    }

    /// A hub whose rooms are large above 1,000 distinct members.
    pub fn new(outbox_capacity: usize) -> Hub {
        Hub::with_presence_limit(outbox_capacity, 1000)
    }

    /// A hub whose rooms are large above `presence_max_members` distinct
    /// members (protocol rule 13).
    pub fn with_presence_limit(outbox_capacity: usize, presence_max_members: usize) -> Hub {
        Hub::configured(outbox_capacity, presence_max_members, true)
    }

    /// A hub as a server runs it; `guest_names`: guests may name themselves,
    /// so the names in use are kept (see [`Hub::claim_guest_name`]).
    pub fn configured(
        outbox_capacity: usize,
        presence_max_members: usize,
        guest_names: bool,
    ) -> Hub {
        let (newly_large, receiver) = tokio::sync::mpsc::unbounded_channel();
        Hub {
            node_id: node_id(),
            next_connection: AtomicU64::new(1),
            outbox_capacity,
            connections: Sharded::new(),
            rooms: Sharded::new(),
            online: Mutex::new(Online::new(guest_names)),
            presence_max_members,
            newly_large,
            ticker: Mutex::new(Some(CountTicker {
                receiver,
                rooms: Vec::new(),
            })),
            interest: std::sync::OnceLock::new(),
            logins: std::sync::OnceLock::new(),
            per_ip: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            stats: HubStats::default(),
            flusher: Arc::new(Flusher::default()),
        }
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Registers a new connection (state CONNECTED, no identity) writing to
    /// `stream`.
    pub fn register(
        &self,
        client_addr: SocketAddr,
        user_agent: Option<String>,
        stream: Option<Stream>,
    ) -> Arc<Connection> {
        let number = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = format!("{}-{number}", self.node_id).into();
        let connection = Connection::new(
            id.clone(),
            client_addr,
            user_agent,
            stream,
            self.outbox_capacity,
        );
        self.connections.write(&id).insert(id, connection.clone());
        *self
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(client_addr.ip())
            .or_insert(0) += 1;
        self.stats.connection_opened();
        if self.closing.load(Ordering::Acquire) {
            connection.close(CloseReason::SHUTTING_DOWN);
        }
        connection
    }

    /// Open connections from this IP address, the caller's included.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    /// Announced connections of this user.
    pub fn user_connections(&self, user_id: &str) -> usize {
        self.online().connections_of(user_id)
    }

    fn online(&self) -> std::sync::MutexGuard<'_, Online> {
        self.online.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes a closed connection: it leaves its rooms and the online list.
    /// Returns the rooms it left and the user, if this was their last connection.
    pub fn unregister(&self, connection: &Connection) -> (Vec<RoomDeparture>, Option<User>) {
        let removed = self
            .connections
            .write(&connection.id)
            .remove(&connection.id);
        let departures = self.leave_all_rooms(connection);
        self.online().unsubscribe(&connection.id);
        let change = self.replace_identity(connection, None);
        if removed.is_some() {
            self.stats.connection_closed();
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let ip = connection.client_addr.ip();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        (departures, change.left)
    }

    pub fn get(&self, connection_id: &str) -> Option<Arc<Connection>> {
        self.connections
            .read(connection_id)
            .get(connection_id)
            .cloned()
    }

    /// Every registered connection, in no particular order.
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.connections.values()
    }

    /// Open connections by kind (user, guest, assistant, system).
    pub fn connections_by_kind(&self) -> [(UserKind, u64); 4] {
        count_by_kind(&self.connections.values())
    }

    /// Sets who is on a connection, keeping the online list in step. The
    /// caller must have taken the connection out of its rooms first if the
    /// user changes, since room membership is kept per user.
    pub fn set_identity(&self, connection: &Connection, identity: Identity) -> IdentityChange {
        self.replace_identity(connection, Some(identity))
    }

    /// Like [`Hub::set_identity`] for a guest's display name: refused when
    /// another online user, or another connection of the same guest, has
    /// the same name, compared case-insensitively.
    /// Names are compared only on a hub that keeps them (see
    /// [`Hub::configured`]).
    pub fn claim_guest_name(
        &self,
        connection: &Connection,
        identity: Identity,
    ) -> Result<IdentityChange, NameTaken> {
        let mut online = self.online();
        let wanted = crate::auth::skeleton(&identity.user.username);
        // Only the connection that holds a name may claim it again.
        if let Some(owner) = online.owner_of_name(&wanted)
            && connection.user().is_none_or(|user| user.id != *owner)
        {
            return Err(NameTaken);
        }
        Ok(self.swap_identity(&mut online, connection, Some(identity)))
    }

    /// Whether any online user uses this name or a look-alike of it
    /// ([`crate::auth::skeleton`]).
    pub fn name_in_use(&self, username: &str) -> bool {
        self.online()
            .owner_of_name(&crate::auth::skeleton(username))
            .is_some()
    }

    fn replace_identity(
        &self,
        connection: &Connection,
        identity: Option<Identity>,
    ) -> IdentityChange {
        self.swap_identity(&mut self.online(), connection, identity)
    }

    fn swap_identity(
        &self,
        online: &mut Online,
        connection: &Connection,
        identity: Option<Identity>,
    ) -> IdentityChange {
        let previous = connection.user();
        let next = identity.as_ref().map(|identity| identity.user.clone());
        if previous != next
            && let Some(logins) = self.logins.get()
        {
            // Told under the online lock: in the order they happened.
            if let Some(user) = &previous {
                let _ = logins.send((user.id.clone(), -1));
            }
            if let Some(user) = &next {
                let _ = logins.send((user.id.clone(), 1));
            }
        }
        connection.set_identity(identity);
        online.swap(previous, next)
    }

    /// Makes `connection` an online subscriber of every user (`None`) or of
    /// those listed, replacing its previous subscription, and queues the
    /// reply `reply` makes of the watched users online now (here, or on
    /// other nodes: `elsewhere`) before any announcement that follows the
    /// subscription.
    pub fn subscribe(
        &self,
        connection: &Arc<Connection>,
        user_ids: Option<Vec<String>>,
        listed: usize,
        elsewhere: &[User],
        reply: impl FnOnce(&Watched) -> OutFrame,
    ) -> Delivery {
        let mut online = self.online();
        let watched = online.subscribe(connection, user_ids, listed, elsewhere);
        // Queued under the lock: no announcement can come between the
        // state it reports and the reply.
        self.send(connection, &reply(&watched))
    }

    /// Whether any connection on this node watches this user: an
    /// announcement nobody here would get need not even be encoded.
    pub fn is_watched(&self, user_id: &str) -> bool {
        self.online().is_watched(user_id)
    }

    /// Ends the connection's online subscription; returns whether it had one.
    pub fn unsubscribe(&self, connection: &Connection) -> bool {
        self.online().unsubscribe(&connection.id)
    }

    /// The users online on this node.
    pub fn online_list(&self) -> Vec<User> {
        self.online().users()
    }

    /// Number of distinct users online.
    pub fn online_users(&self) -> usize {
        self.online().user_count()
    }

    /// Adds the connection to a room, creating the room's live state if
    /// needed. Returns `None` if it was already in the room, else whether
    /// this is the user's first connection there and whether the room is
    /// large (protocol rule 13).
    pub fn join_room(&self, connection: &Arc<Connection>, room: &str) -> Option<RoomChange> {
        let user = connection.user()?;
        let mut shard = self.rooms.write(room);
        let name: Arc<str> = match shard.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        if !connection.add_room(name.clone()) {
            return None;
        }
        let live = shard.entry(name.clone()).or_insert_with(|| {
            self.tell_interest(&name, true);
            Arc::new(Room::new())
        });
        let change = live
            .write()
            .add(connection.clone(), &user, self.presence_max_members);
        self.count_if_large(&name, live, change);
        Some(change)
    }

    /// Puts a room that just became large on the count ticker's list.
    fn count_if_large(&self, name: &Arc<str>, live: &Arc<Room>, change: RoomChange) {
        if change.became_large {
            // The ticker may be gone (shutting down); then no count is due.
            let _ = self.newly_large.send((name.clone(), live.clone()));
        }
    }

    /// Another node (`node`) says `user` joined `room` there (`joined`) or
    /// left it. Known only for rooms with members here; `None` when it
    /// changes nothing here.
    pub fn member_elsewhere(
        &self,
        room: &str,
        node: &Arc<str>,
        user: &User,
        joined: bool,
    ) -> Option<RoomChange> {
        let shard = self.rooms.read(room);
        let (name, live) = shard.get_key_value(room)?;
        let change = live
            .write()
            .elsewhere(node, user, joined, self.presence_max_members)?;
        self.count_if_large(name, live, change);
        Some(change)
    }

    /// Replaces what this node knows of `room`'s members on other nodes
    /// with `members` (node, user). Returns the users whose membership
    /// that changed (`true`: joined), with the change.
    pub fn members_elsewhere(
        &self,
        room: &str,
        members: &[(Arc<str>, User)],
    ) -> Vec<(User, bool, RoomChange)> {
        let shard = self.rooms.read(room);
        let Some((name, live)) = shard.get_key_value(room) else {
            return Vec::new();
        };
        let limit = self.presence_max_members;
        let wanted: std::collections::HashSet<(&str, &str)> = members
            .iter()
            .map(|(node, user)| (&**node, &*user.id))
            .collect();
        // By user id; a user who left by one pair and came back by another
        // did not change.
        let mut changes: HashMap<Arc<str>, (User, bool, RoomChange)> = HashMap::new();
        let mut record = |user: &User, joined: bool, change: RoomChange| {
            if !change.user_changed {
                return;
            }
            match changes.get(&user.id) {
                Some((_, before, _)) if *before != joined => {
                    changes.remove(&user.id);
                }
                _ => {
                    changes.insert(user.id.clone(), (user.clone(), joined, change));
                }
            }
        };
        let mut room_members = live.write();
        for (node, user) in room_members.elsewhere_pairs() {
            if !wanted.contains(&(&*node, &*user.id))
                && let Some(change) = room_members.elsewhere(&node, &user, false, limit)
            {
                record(&user, false, change);
            }
        }
        for (node, user) in members {
            if let Some(change) = room_members.elsewhere(node, user, true, limit) {
                self.count_if_large(name, live, change);
                record(user, true, change);
            }
        }
        drop(room_members);
        changes.into_values().collect()
    }

    /// Rooms opening and closing on this node, from now on, each told under
    /// its room's lock (so in order); `None` if something already watches.
    pub fn watch_rooms(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<RoomInterest>> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.interest.set(sender).ok()?;
        Some(receiver)
    }

    /// Each connection's user arriving (+1) and going (-1), from now on,
    /// in order; `None` if something already watches.
    pub fn watch_logins(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Login>> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.logins.set(sender).ok()?;
        Some(receiver)
    }

    /// The rooms with members on this node.
    pub fn room_names(&self) -> Vec<Arc<str>> {
        self.rooms
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn tell_interest(&self, room: &Arc<str>, open: bool) {
        if let Some(interest) = self.interest.get() {
            // The broker may be gone (shutting down); nobody needs it then.
            let _ = interest.send((room.clone(), open));
        }
    }

    /// This node's id, the prefix of its connection ids.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Takes the ticker of large rooms' counts; the first call gets it.
    pub fn count_ticker(&self) -> Option<CountTicker> {
        self.ticker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Takes the connection out of a room. Returns `None` if it was not in
    /// it, else whether that was the user's last connection there.
    pub fn leave_room(&self, connection: &Connection, room: &str) -> Option<RoomDeparture> {
        let user = connection.user()?;
        if !connection.remove_room(room) {
            return None;
        }
        let mut shard = self.rooms.write(room);
        let (name, live) = shard.get_key_value(room)?;
        let name = name.clone();
        let mut members = live.write();
        let change = members.remove(&connection.id, &user, self.presence_max_members)?;
        let empty = members.is_empty();
        drop(members);
        if empty {
            shard.remove(room);
            self.tell_interest(&name, false);
        }
        Some(RoomDeparture {
            room: name,
            user,
            last_of_user: change.user_changed,
            last_here: change.here_changed,
            emptied: empty,
            quiet: change.quiet,
        })
    }

    /// Takes `user_id`'s connections on this node out of `room`, but those
    /// `spared` keeps; returns each one that left, with its departure.
    pub fn evict(
        &self,
        room: &str,
        user_id: &str,
        spared: impl Fn(&Connection) -> bool,
    ) -> Vec<(Arc<Connection>, RoomDeparture)> {
        let theirs: Vec<Arc<Connection>> = self.live_room(room).map_or_else(Vec::new, |live| {
            live.read()
                .connections
                .iter()
                .filter(|connection| {
                    connection.user().is_some_and(|user| *user.id == *user_id)
                        && !spared(connection)
                })
                .cloned()
                .collect()
        });
        theirs
            .into_iter()
            .filter_map(|connection| {
                let departure = self.leave_room(&connection, room)?;
                Some((connection, departure))
            })
            .collect()
    }

    /// Takes the connection out of every room it is in.
    pub fn leave_all_rooms(&self, connection: &Connection) -> Vec<RoomDeparture> {
        connection
            .rooms()
            .iter()
            .filter_map(|room| self.leave_room(connection, room))
            .collect()
    }

    /// A page of the distinct users in a room, ordered by username, and the
    /// total number of them.
    pub fn room_members(&self, room: &str, offset: usize, limit: usize) -> (Vec<User>, usize) {
        match self.live_room(room) {
            Some(live) => {
                let members = live.read();
                (members.page(offset, limit), members.user_count())
            }
            None => (Vec::new(), 0),
        }
    }

    /// The users with a connection in `room` on this node.
    pub fn room_users_here(&self, room: &str) -> Vec<User> {
        self.live_room(room)
            .map_or_else(Vec::new, |live| live.read().users_here())
    }

    /// Number of connections in a room.
    pub fn room_connection_count(&self, room: &str) -> usize {
        self.live_room(room)
            .map_or(0, |live| live.read().connections.len())
    }

    /// Number of rooms with at least one connection.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    fn live_room(&self, room: &str) -> Option<Arc<Room>> {
        self.rooms.read(room).get(room).cloned()
    }

    /// Queues a frame for one connection.
    pub fn send(&self, connection: &Connection, frame: &OutFrame) -> Delivery {
        let delivery = connection.deliver(&frame.bytes);
        self.count_delivery(frame.kind, delivery, 1);
        delivery
    }

    /// Queues a frame that must arrive, waiting for room in the outbox.
    pub async fn send_patiently(
        &self,
        connection: &Connection,
        frame: &OutFrame,
        patience: Duration,
    ) -> Delivery {
        let delivery = connection.deliver_patiently(&frame.bytes, patience).await;
        self.count_delivery(frame.kind, delivery, 1);
        delivery
    }

    /// Queues a frame for every connection of an audience on this node,
    /// except `except`. Returns how many connections it was queued for.
    pub fn broadcast(&self, audience: &Audience, frame: &OutFrame, except: Option<&str>) -> usize {
        let started = Instant::now();
        let mut queued = 0;
        let mut overflowed = 0;
        let mut count = |delivery| match delivery {
            Delivery::Queued => queued += 1,
            Delivery::Overflowed => overflowed += 1,
            Delivery::Closed => {}
        };
        let excepted = |connection: &Connection| except.is_some_and(|id| *connection.id == *id);
        match audience {
            Audience::Room(room) => {
                // Presence frames are queued and written by the flusher:
                // a join storm's events then share one write per member
                // socket instead of one write each. Chat goes straight out.
                let _writes =
                    matches!(frame.kind, ServerType::Presence | ServerType::PresenceCount)
                        .then(|| Batch::deferred(&self.flusher));
                if let Some(live) = self.live_room(room) {
                    let members = live.read();
                    // The outboxes of a stretch of members are read once
                    // before any of their sockets is written: their cache
                    // misses overlap, where each would otherwise stall the
                    // write it comes before. A stretch at a time, so that
                    // a big room's outboxes are still cached when written.
                    let stretches = members
                        .connections
                        .chunks(WARMED_TOGETHER)
                        .zip(members.outboxes.chunks(WARMED_TOGETHER));
                    for (connections, outboxes) in stretches {
                        std::hint::black_box(outboxes.iter().filter(|o| o.warm()).count());
                        for (connection, outbox) in connections.iter().zip(outboxes) {
                            if !excepted(connection) {
                                count(connection.deliver_through(outbox, &frame.bytes));
                            }
                        }
                    }
                }
            }
            Audience::Everyone => {
                let _writes = Batch::deferred(&self.flusher);
                for shard in self.connections.shards.iter() {
                    let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
                    shard
                        .values()
                        .filter(|c| c.is_announced() && !excepted(c))
                        .for_each(|c| count(c.deliver(&frame.bytes)));
                }
            }
            Audience::Watchers { user, if_online } => {
                // Queued (not written) under the lock, so that announcements
                // of one user reach each watcher in the order of the changes.
                let _writes = Batch::deferred(&self.flusher);
                let online = self.online();
                if if_online.is_none_or(|wanted| online.is_online_as(user) == wanted) {
                    online.for_each_watcher(&user.id, |c| {
                        if !excepted(c) {
                            count(c.deliver(&frame.bytes));
                        }
                    });
                }
            }
        }
        self.stats.count_out(frame.kind, queued);
        self.stats
            .slow_consumer_disconnects
            .fetch_add(overflowed, Ordering::Relaxed);
        self.stats.observe_broadcast(started.elapsed());
        queued as usize
    }

    fn count_delivery(&self, kind: ServerType, delivery: Delivery, frames: u64) {
        match delivery {
            Delivery::Queued => self.stats.count_out(kind, frames),
            Delivery::Overflowed => {
                self.stats
                    .slow_consumer_disconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            Delivery::Closed => {}
        }
    }

    /// Shutdown: every connection stops reading, lets its chat messages in
    /// flight be stored and acknowledged, and closes with 1001 (see
    /// [`Connection::drain`]); a connection registered later is closed at
    /// once.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        for connection in self.connections() {
            connection.drain();
        }
    }
}

/// Tells large rooms' member counts: once a second at most per room, and
/// only counts that changed (protocol rule 13). Sleeps without a timer while
/// no room is large.
#[derive(Debug)]
pub struct CountTicker {
    receiver: tokio::sync::mpsc::UnboundedReceiver<CountedRoom>,
    rooms: Vec<CountedRoom>,
}

impl CountTicker {
    /// Seconds between two counts of one room, at least.
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// Waits for the next round and returns the rooms whose count is due,
    /// with their counts; `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Vec<(Arc<str>, usize)>> {
        if self.rooms.is_empty() {
            let room = self.receiver.recv().await?;
            self.rooms.push(room);
        }
        tokio::time::sleep(Self::PERIOD).await;
        while let Ok(room) = self.receiver.try_recv() {
            self.rooms.push(room);
        }
        let mut due = Vec::new();
        self.rooms.retain(|(name, room)| {
            let mut members = room.write();
            if !members.large {
                members.counted = false;
                return false;
            }
            let count = members.user_count();
            if count != members.told {
                members.told = count;
                due.push((name.clone(), count));
            }
            true
        });
        Some(due)
    }
}

/// A short random id for this process (8 hex digits), unique among nodes
/// and restarts with overwhelming likelihood.
fn node_id() -> String {
    crate::auth::random_hex(4).unwrap_or_else(|| {
        // No randomness from the operating system: the pid and the clock.
        let nanos = std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.subsec_nanos());
        format!("{:08x}", std::process::id().rotate_left(16) ^ nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UserKind;

    fn identity(id: &str, name: &str) -> Identity {
        Identity {
            user: User {
                id: id.into(),
                username: name.into(),
                kind: UserKind::User,
            },
            role: Role::User,
            expires_at: None,
        }
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn first_and_last_connection_of_a_user_are_reported() {
        let hub = Hub::new(16);
        let a = hub.register(addr(), None, None);
        let b = hub.register(addr(), None, None);
        assert!(hub.set_identity(&a, identity("u1", "ann")).joined.is_some());
        assert!(hub.set_identity(&b, identity("u1", "ann")).joined.is_none());
        let first = |change: Option<RoomChange>| change.map(|c| c.user_changed);
        assert_eq!(first(hub.join_room(&a, "r")), Some(true));
        assert_eq!(first(hub.join_room(&b, "r")), Some(false));
        assert_eq!(first(hub.join_room(&b, "r")), None);
        assert_eq!(hub.room_members("r", 0, 10).1, 1);
        assert_eq!(hub.room_connection_count("r"), 2);
        let (left_rooms, left) = hub.unregister(&a);
        assert!(!left_rooms[0].last_of_user);
        assert!(left.is_none());
        let (left_rooms, left) = hub.unregister(&b);
        assert!(left_rooms[0].last_of_user);
        assert!(left.is_some());
        assert_eq!(hub.room_count(), 0);
        assert_eq!(hub.stats().active(), 0);
    }

    #[test]
    fn members_are_ordered_by_username_bytes() {
        let hub = Hub::new(16);
        let names = ["bob", "Zed", "alice", "Ann"];
        let mut keep = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let c = hub.register(addr(), None, None);
            hub.set_identity(&c, identity(&format!("u{i}"), name));
            hub.join_room(&c, "r");
            keep.push(c);
        }
        let (page, total) = hub.room_members("r", 1, 2);
        let page: Vec<&str> = page.iter().map(|u| &*u.username).collect();
        assert_eq!(page, ["Zed", "alice"]);
        assert_eq!(total, 4);
    }

    /// A hub with outboxes of 16 frames, two logged-in connections that
    /// nobody drains, and a frame to broadcast.
    fn slow_and_fast() -> (Hub, Arc<Connection>, Arc<Connection>, OutFrame) {
        let hub = Hub::new(16);
        let slow = hub.register(addr(), None, None);
        let fast = hub.register(addr(), None, None);
        hub.set_identity(&slow, identity("u1", "slow"));
        hub.set_identity(&fast, identity("u2", "fast"));
        let frame = OutFrame {
            kind: ServerType::ChatMessage,
            bytes: crate::wire::frame::text("{}"),
        };
        (hub, slow, fast, frame)
    }

    #[test]
    fn a_room_broadcast_skips_the_excepted_and_the_closing() {
        let (hub, slow, fast, frame) = slow_and_fast();
        hub.join_room(&slow, "dev");
        hub.join_room(&fast, "dev");
        let room = Audience::Room("dev".into());
        assert_eq!(hub.broadcast(&room, &frame, Some(&*fast.id)), 1);
        assert_eq!(
            fast.outbox.take_queued().len(),
            0,
            "the excepted got nothing"
        );
        slow.close(CloseReason::IDLE);
        let queued = slow.outbox.len();
        assert_eq!(hub.broadcast(&room, &frame, None), 1, "only the open one");
        assert_eq!(
            slow.outbox.len(),
            queued,
            "a closing connection takes nothing more"
        );
        assert_eq!(fast.outbox.take_queued().len(), 1);
    }

    #[test]
    fn a_full_outbox_closes_only_that_connection() {
        let (hub, slow, fast, frame) = slow_and_fast();
        for _ in 0..17 {
            hub.broadcast(&Audience::Everyone, &frame, None);
            fast.outbox.take_queued();
        }
        assert_eq!(slow.close_requested(), Some(4002));
        assert_eq!(fast.close_requested(), None);
        assert_eq!(hub.stats().slow_consumer_disconnects(), 1);
    }

    /// Connects user `u{i}` and joins it to room `big`.
    fn join_big(hub: &Hub, i: usize) -> (Arc<Connection>, RoomChange) {
        let c = hub.register(addr(), None, None);
        hub.set_identity(&c, identity(&format!("u{i}"), &format!("n{i}")));
        let change = hub.join_room(&c, "big").expect("joined");
        (c, change)
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_room_is_quiet_and_counted_once_per_change() {
        let hub = Hub::with_presence_limit(16, 2);
        let mut ticker = hub.count_ticker().expect("the first take gets the ticker");
        assert!(hub.count_ticker().is_none(), "one ticker per hub");
        let (_u0, first) = join_big(&hub, 0);
        let (_u1, second) = join_big(&hub, 1);
        assert!(!first.quiet && !second.quiet);
        let (u2, third) = join_big(&hub, 2);
        assert!(third.user_changed && third.quiet, "above the limit: quiet");
        let due = ticker.next().await.expect("hub alive");
        assert_eq!(due, vec![("big".into(), 3)], "members knew of 2");
        // A second connection of a known user changes no count.
        let (again, change) = join_big(&hub, 2);
        assert!(!change.user_changed);
        let left = hub.leave_room(&u2, "big").expect("was in");
        assert!(!left.last_of_user, "u2 is still there on `again`");
        assert_eq!(ticker.next().await, Some(Vec::new()), "no change, no count");
        let (u3, _) = join_big(&hub, 3);
        let left = hub.leave_room(&u3, "big").expect("was in");
        assert!(left.last_of_user && left.quiet, "3 of limit 2: still quiet");
        let back = hub.leave_room(&again, "big").expect("was in");
        assert!(
            back.last_of_user && !back.quiet,
            "at the limit: events again"
        );
        assert_eq!(
            ticker.next().await,
            Some(Vec::new()),
            "small rooms get no count"
        );
        // The room is off the list: the ticker waits for the next large
        // room without a timer.
        let waiting = tokio::time::timeout(Duration::from_secs(3600), ticker.next()).await;
        assert!(waiting.is_err(), "no round while no room is large");
    }

    #[test]
    fn guest_names_are_unique_case_insensitively() {
        let hub = Hub::new(16);
        let a = hub.register(addr(), None, None);
        let b = hub.register(addr(), None, None);
        assert!(hub.claim_guest_name(&a, identity("g1", "Robin")).is_ok());
        assert_eq!(
            hub.claim_guest_name(&b, identity("g2", "robin")).err(),
            Some(NameTaken)
        );
        assert!(hub.name_in_use("ROBIN"));
        // The same guest (the same id) on another connection is refused too,
        // and the holder may claim its name again.
        assert_eq!(
            hub.claim_guest_name(&b, identity("g1", "Robin")).err(),
            Some(NameTaken)
        );
        assert!(hub.claim_guest_name(&a, identity("g1", "Robin")).is_ok());
    }
}
