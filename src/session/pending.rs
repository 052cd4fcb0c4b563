//! Counting a connection's chat messages that wait for storage.

use crate::hub::Outbox;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Chat messages of one connection handed to the store and not yet
/// acknowledged. The handler counts one up, the commit callback counts it
/// down and rings the session's bell; the session waits for the count to
/// fall to keep replies in order.
#[derive(Debug)]
pub struct PendingWrites {
    count: AtomicUsize,
    /// The outbox whose bell wakes the session task.
    session: Arc<Outbox>,
}

impl PendingWrites {
    pub fn new(session: Arc<Outbox>) -> PendingWrites {
        PendingWrites {
            count: AtomicUsize::new(0),
            session,
        }
    }

    pub fn start(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub fn finish(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.session.ring();
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}
