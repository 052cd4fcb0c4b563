//! Stored messages reach this node's connections in id order, whichever node
//! stored them and whatever order Redis brings them in.
//!
//! Every stored message travels with the id of the room's message before it
//! (`previous`, from the store's commit). Per room the sequencer remembers
//! the last id it delivered: a message that follows it is delivered at once
//! (and any held message that follows that one); a message whose
//! predecessor has not arrived is held. If the gap is still open after
//! [`FILL_AFTER`], the missing messages are read from the store and
//! delivered, followed by what was held. A message at or below the last id
//! delivered (it came both ways, or was filled in) is dropped: each is
//! delivered once.

use crate::hub::{Audience, Hub, OutFrame};
use crate::protocol::{GLOBAL_ROOM, ServerMessage};
use crate::store::{MessageStore, Page};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How long a gap may stay open before it is filled from the store.
pub const FILL_AFTER: Duration = Duration::from_millis(150);
/// Messages read from the store per fill, at most.
const FILL_PAGE: usize = 1000;

/// A stored message on its way to this node's connections.
#[derive(Debug, Clone)]
pub struct Stored {
    pub room: Arc<str>,
    pub id: i64,
    pub previous: Option<i64>,
    pub frame: OutFrame,
}

/// What a room's members have been given.
#[derive(Debug, Default)]
struct RoomOrder {
    /// The last id delivered here; `None` until the first.
    last: Option<i64>,
    /// Messages waiting for their predecessor, by that predecessor's id.
    held: BTreeMap<i64, Stored>,
    /// A fill from the store is scheduled.
    filling: bool,
}

/// Puts stored messages in order per room.
pub struct Sequencer {
    hub: Arc<Hub>,
    store: Arc<dyn MessageStore>,
    rooms: Mutex<HashMap<Arc<str>, RoomOrder>>,
}

/// Who a room's stored messages go to: its members, or everyone for
/// `global`.
pub(super) fn audience(room: &Arc<str>) -> Audience {
    if &**room == GLOBAL_ROOM {
        Audience::Everyone
    } else {
        Audience::Room(room.clone())
    }
}

impl Sequencer {
    pub fn new(hub: Arc<Hub>, store: Arc<dyn MessageStore>) -> Arc<Sequencer> {
        Arc::new(Sequencer {
            hub,
            store,
            rooms: Mutex::new(HashMap::new()),
        })
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomOrder>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers `message` to this node's connections when its turn comes.
    pub fn offer(self: &Arc<Self>, message: Stored) {
        let mut rooms = self.rooms();
        let order = rooms.entry(message.room.clone()).or_default();
        let fill = self.place(order, message);
        drop(rooms);
        if let Some(room) = fill {
            self.schedule_fill(room);
        }
    }

    /// Starts the room's order after `newest` (0: before any message),
    /// unless this node already delivers to the room.
    pub fn start(&self, room: &str, newest: i64) {
        let mut rooms = self.rooms();
        match rooms.get_mut(room) {
            Some(order) if order.last.is_some() => {}
            Some(order) => order.last = Some(newest),
            None => {
                rooms.insert(
                    room.into(),
                    RoomOrder {
                        last: Some(newest),
                        ..RoomOrder::default()
                    },
                );
            }
        }
    }

    /// The room has no member here any more: what it was given is forgotten,
    /// so that a later member starts from its own join.
    pub fn forget(&self, room: &str) {
        self.rooms().remove(room);
    }

    /// Delivers or holds one message; returns the room if a fill is due.
    fn place(&self, order: &mut RoomOrder, message: Stored) -> Option<Arc<str>> {
        match order.last {
            Some(last) if message.id <= last => None,
            Some(last) if message.previous.is_some_and(|previous| previous > last) => {
                let room = message.room.clone();
                order.held.insert(message.previous.unwrap_or(last), message);
                if order.filling {
                    None
                } else {
                    order.filling = true;
                    Some(room)
                }
            }
            _ => {
                self.deliver(order, &message);
                self.release(order);
                None
            }
        }
    }

    fn deliver(&self, order: &mut RoomOrder, message: &Stored) {
        self.hub
            .broadcast(&audience(&message.room), &message.frame, None);
        order.last = Some(message.id);
    }

    /// Delivers the held messages that now follow the last one delivered,
    /// and drops those already overtaken.
    fn release(&self, order: &mut RoomOrder) {
        while let Some(last) = order.last {
            // Held behind a message that was filled in meanwhile: stale.
            while let Some((&previous, _)) = order.held.first_key_value() {
                if previous >= last {
                    break;
                }
                order.held.pop_first();
            }
            match order.held.remove(&last) {
                Some(next) => self.deliver(order, &next),
                None => break,
            }
        }
        if order.held.is_empty() {
            order.filling = false;
        }
    }

    /// Delivers what a fill read, then what was held; `true` when the
    /// room's gap is closed (or the room gone).
    fn delivered_fill(&self, room: &Arc<str>, messages: &[crate::protocol::Message]) -> bool {
        let mut rooms = self.rooms();
        let Some(order) = rooms.get_mut(room) else {
            return true;
        };
        for message in messages {
            if order.last.is_some_and(|last| message.id <= last) {
                continue;
            }
            let frame = OutFrame::from(ServerMessage::ChatMessage { message }.encode(None));
            let stored = Stored {
                room: room.clone(),
                id: message.id,
                previous: order.last,
                frame,
            };
            self.deliver(order, &stored);
        }
        self.release(order);
        order.held.is_empty()
    }

    fn schedule_fill(self: &Arc<Self>, room: Arc<str>) {
        let sequencer = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(FILL_AFTER).await;
            fill(sequencer, room).await;
        });
    }
}

/// Reads what a room's open gap is missing from the store and delivers it,
/// then what was held; again while a gap stays open.
async fn fill(sequencer: Weak<Sequencer>, room: Arc<str>) {
    loop {
        let Some(strong) = sequencer.upgrade() else {
            return;
        };
        let after = {
            let rooms = strong.rooms();
            match rooms.get(&room) {
                Some(order) if !order.held.is_empty() => order.last,
                _ => return,
            }
        };
        let Some(after) = after else { return };
        let page = match strong
            .store
            .history(&room, Page::After(after), FILL_PAGE)
            .await
        {
            Ok(page) => page,
            Err(err) => {
                tracing::error!(error = %err, room = %room, "cannot read missed messages; retrying");
                tokio::time::sleep(FILL_AFTER).await;
                continue;
            }
        };
        if strong.delivered_fill(&room, &page.messages) {
            return;
        }
        // More than a page was missing, or a held message's predecessor is
        // not stored yet (its commit is under way): look again shortly.
        if !page.has_more {
            tokio::time::sleep(FILL_AFTER).await;
        }
    }
}
