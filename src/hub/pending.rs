//! Counting a connection's chat messages that wait for storage.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Chat messages of one connection handed to the store and not yet
/// acknowledged. The handler counts one up, the commit callback counts it
/// down ([`super::Connection::write_stored`]); the session waits for the
/// count to fall to keep replies in order, and only then does a commit ring
/// its bell (a wake-up per stored message would cost a burst a third of its
/// rate).
#[derive(Debug, Default)]
pub struct PendingWrites {
    count: AtomicUsize,
    /// The session has a frame waiting for the count to fall.
    watched: AtomicBool,
}

impl PendingWrites {
    // Sequentially consistent: the session sets `watched` then reads the
    // count, a commit lowers the count then reads `watched`; one of the two
    // sees the other, so a waiting session is never left asleep.

    pub fn start(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts one write down; returns whether the session is watching.
    pub(super) fn finish(&self) -> bool {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.watched.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether the session waits for the count to fall (and wants its bell
    /// rung when it does).
    pub fn watch(&self, watched: bool) {
        self.watched.store(watched, Ordering::SeqCst);
    }
}
