//! One WebSocket connection as the hub sees it: identity, state, rooms,
//! counters, and the bounded outbox its session drains.
//!
//! A `Connection` is shared (`Arc`) between its session task, which owns the
//! socket, and everybody who sends to it. Sending never blocks: a frame goes
//! into the outbox with `try_send`, and a full outbox closes the connection as
//! a slow consumer instead of slowing the sender down.

use super::outbox::{Outbox, Push};
use super::pending::PendingWrites;
use crate::protocol::{CloseReason, Timestamp, User, UserKind};
use crate::wire::Stream;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Lifecycle state of a connection (section 3 of the protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionState {
    Connected = 0,
    Authenticated = 1,
    Disconnected = 2,
    Inactive = 3,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "CONNECTED",
            ConnectionState::Authenticated => "AUTHENTICATED",
            ConnectionState::Disconnected => "DISCONNECTED",
            ConnectionState::Inactive => "INACTIVE",
        }
    }

    fn from_u8(value: u8) -> ConnectionState {
        match value {
            1 => ConnectionState::Authenticated,
            2 => ConnectionState::Disconnected,
            3 => ConnectionState::Inactive,
            _ => ConnectionState::Connected,
        }
    }
}

/// What a token lets its holder do beyond chatting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    Admin,
}

/// Who is on a connection: the user object others see, the role, and when
/// the credential that proved it runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: User,
    pub role: Role,
    /// Expiry of the token the connection logged in with; `None` for guests.
    pub expires_at: Option<Timestamp>,
}

/// What happened to a frame handed to [`Connection::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The outbox was full: the connection is now closing with 4002.
    Overflowed,
    /// The connection is already closing or closed; the frame was dropped.
    Closed,
}

/// Queues a frame; `None` if the outbox is full (nothing else happens).
fn push_unless_full(outbox: &Arc<Outbox>, frame: &Bytes) -> Option<Delivery> {
    if outbox.is_refusing() {
        return Some(Delivery::Closed);
    }
    match outbox.push(frame) {
        Push::Queued => Some(Delivery::Queued),
        Push::Full => None,
        Push::Closed => Some(Delivery::Closed),
    }
}

/// A connection registered with the hub.
pub struct Connection {
    /// Unique across the deployment: node prefix plus a counter.
    pub id: Arc<str>,
    pub client_addr: SocketAddr,
    pub user_agent: Option<String>,
    pub connected_at: Timestamp,
    /// Frames on their way to the socket. Bounded: see [`Delivery::Overflowed`].
    pub outbox: Arc<Outbox>,
    /// Chat messages sent on this connection and not yet stored.
    pub pending_writes: PendingWrites,
    /// The close asked for: its code in the low 16 bits and its position
    /// in [`CloseReason::ALL`] above them (0: none yet).
    close_code: AtomicU32,
    /// Wakes whoever waits in [`Connection::closed`] when `close_code` is
    /// set (the session task hears it through the outbox's bell).
    close_signal: Notify,
    /// The server is stopping: the session reads no more frames, lets the
    /// chat messages it has sent to the store be acknowledged, then closes
    /// with 1001.
    draining: AtomicBool,
    state: AtomicU8,
    /// Set by authentication or by a guest naming itself; read by every
    /// handler that needs to know who is speaking.
    identity: RwLock<Option<Identity>>,
    /// Whether this connection is in the audience of global broadcasts
    /// (authenticated, or a named guest).
    announced: AtomicBool,
    /// Rooms joined by this connection; the hub's room map is the other side.
    rooms: Mutex<BTreeSet<Arc<str>>>,
    last_activity_ms: AtomicI64,
    /// Client frames received on this connection.
    message_count: AtomicU64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("client_addr", &self.client_addr)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Creates a connection writing to `stream` (`None`: frames are only
    /// queued, for tests and tools). Its outbox holds frames until the
    /// session releases it with the welcome.
    pub fn new(
        id: Arc<str>,
        client_addr: SocketAddr,
        user_agent: Option<String>,
        stream: Option<Stream>,
        outbox_capacity: usize,
    ) -> Arc<Connection> {
        let outbox = Outbox::new(stream, outbox_capacity);
        let now = Timestamp::now();
        let connection = Connection {
            id,
            client_addr,
            user_agent,
            connected_at: now,
            outbox,
            pending_writes: PendingWrites::default(),
            close_code: AtomicU32::new(0),
            close_signal: Notify::new(),
            draining: AtomicBool::new(false),
            state: AtomicU8::new(ConnectionState::Connected as u8),
            identity: RwLock::new(None),
            announced: AtomicBool::new(false),
            rooms: Mutex::new(BTreeSet::new()),
            last_activity_ms: AtomicI64::new(now.as_millis()),
            message_count: AtomicU64::new(0),
        };
        Arc::new(connection)
    }

    /// Queues a frame without waiting. A full outbox closes the connection.
    pub fn deliver(&self, frame: &Bytes) -> Delivery {
        self.deliver_through(&self.outbox, frame)
    }

    /// [`Connection::deliver`] through `outbox`, this connection's outbox
    /// held by the caller: a broadcast reads the connection itself only
    /// when the outbox is full.
    pub(super) fn deliver_through(&self, outbox: &Arc<Outbox>, frame: &Bytes) -> Delivery {
        debug_assert!(Arc::ptr_eq(outbox, &self.outbox));
        push_unless_full(outbox, frame).unwrap_or_else(|| self.overflowed())
    }

    fn overflowed(&self) -> Delivery {
        if self.close(CloseReason::SLOW_CONSUMER) {
            Delivery::Overflowed
        } else {
            Delivery::Closed
        }
    }

    /// Queues a frame that must not be dropped, waiting up to `patience` for
    /// room in the outbox; a client that stays full that long is closed as a
    /// slow consumer.
    pub async fn deliver_patiently(&self, frame: &Bytes, patience: Duration) -> Delivery {
        let attempt = async {
            loop {
                let room = self.outbox.room();
                tokio::pin!(room);
                // Registered before trying, so a flush in between is not missed.
                room.as_mut().enable();
                match push_unless_full(&self.outbox, frame) {
                    Some(delivery) => return delivery,
                    None => room.await,
                }
            }
        };
        match tokio::time::timeout(patience, attempt).await {
            Ok(delivery) => delivery,
            Err(_) => self.overflowed(),
        }
    }

    /// Asks the session to stop reading, finish what it has in flight
    /// with the store, and close with 1001 (see [`Connection::is_draining`]).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.outbox.ring();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks the session to close the socket with `reason`. Returns whether
    /// this call was the one that started the close.
    pub fn close(&self, reason: CloseReason) -> bool {
        let packed = (reason.index() << 16) | u32::from(reason.code);
        let started = self
            .close_code
            .compare_exchange(0, packed, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if started {
            self.outbox.refuse();
            self.close_signal.notify_waiters();
            self.outbox.ring();
        }
        started
    }

    /// The close code requested so far, if any.
    pub fn close_requested(&self) -> Option<u16> {
        self.close_reason().map(|reason| reason.code)
    }

    /// The close asked for, with its reason as given.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            packed => {
                let code = (packed & 0xFFFF) as u16;
                let reason = CloseReason::at(packed >> 16);
                Some(if reason.code == code {
                    reason
                } else {
                    CloseReason::from_code(code)
                })
            }
        }
    }

    /// A chat message sent on this connection is stored (or failed to be):
    /// wakes the session if a frame waits for it.
    pub fn write_stored(&self) {
        if self.pending_writes.finish() {
            self.outbox.ring();
        }
    }

    /// Resolves once [`Connection::close`] has been called.
    pub async fn closed(&self) {
        loop {
            let notified = self.close_signal.notified();
            if self.close_requested().is_some() {
                return;
            }
            notified.await;
        }
    }

    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: ConnectionState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn identity(&self) -> Option<Identity> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When the connection's token expires, if it has one.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|identity| identity.expires_at)
    }

    /// The connection's role, if it is logged in.
    pub fn role(&self) -> Option<Role> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|identity| identity.role)
    }

    pub fn user(&self) -> Option<User> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|identity| identity.user.clone())
    }

    /// The kind shown in statistics: the user's kind, or `guest` before login.
    pub fn kind(&self) -> UserKind {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(UserKind::Guest, |identity| identity.user.kind)
    }

    pub(super) fn set_identity(&self, identity: Option<Identity>) {
        let announced = identity.is_some();
        *self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner) = identity;
        self.announced.store(announced, Ordering::Release);
    }

    /// Whether the connection is authenticated or a named guest.
    pub fn is_announced(&self) -> bool {
        self.announced.load(Ordering::Acquire)
    }

    pub fn is_authenticated(&self) -> bool {
        self.state() == ConnectionState::Authenticated
    }

    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    pub fn room_count(&self) -> usize {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn in_room(&self, room: &str) -> bool {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(room)
    }

    /// Records the room on this side; returns false if it was already there.
    pub(super) fn add_room(&self, room: Arc<str>) -> bool {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(room)
    }

    pub(super) fn remove_room(&self, room: &str) -> bool {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(room)
    }

    /// Records that a frame (of any kind, pings and pongs included) arrived.
    pub fn touch(&self) {
        self.last_activity_ms
            .store(Timestamp::now().as_millis(), Ordering::Relaxed);
    }

    /// Counts a client frame for `message_count`.
    pub fn count_message(&self) {
        self.message_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> Timestamp {
        Timestamp(self.last_activity_ms.load(Ordering::Relaxed))
    }

    pub fn message_count(&self) -> u64 {
        self.message_count.load(Ordering::Relaxed)
    }
}
