//! Counting a connection's chat messages that wait for storage.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Chat messages of one connection handed to the store and not yet
/// acknowledged. The handler counts one up, the commit callback counts it
/// down; the session waits on it to keep replies in order.
#[derive(Debug, Default)]
pub struct PendingWrites {
    count: AtomicUsize,
    changed: Notify,
}

impl PendingWrites {
    pub fn start(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub fn finish(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once fewer than `limit` writes are pending.
    pub async fn below(&self, limit: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before checking, so a `finish` in between is not missed.
            changed.as_mut().enable();
            if self.count() < limit {
                return;
            }
            changed.await;
        }
    }
}
