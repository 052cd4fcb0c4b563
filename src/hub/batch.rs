//! Batches: while a [`Batch`] lives on a thread, frames delivered there are
//! only queued, and each socket gets all of its frames with one system call
//! when the batch ends (or the hub's [`Flusher`] writes them, for a
//! deferred batch).

use super::flusher::Flusher;
use super::outbox::Outbox;
use std::cell::RefCell;
use std::sync::Arc;

/// A batch's list of outboxes keeps at most this many slots between
/// batches, so that a thread committing message after message does not grow
/// a new list each time.
const KEPT_BATCH_SLOTS: usize = 4096;

thread_local! {
    /// The batch running on this thread, if any.
    pub(super) static BATCH: RefCell<Running> = const {
        RefCell::new(Running { open: false, flushing: false, touched: Vec::new() })
    };
}

/// A thread's batch: whether one runs, and the outboxes it queued frames in.
pub(super) struct Running {
    pub(super) open: bool,
    /// The flusher's task is running on this thread: a batch deferred to
    /// it is written by this thread when it ends, not in the next round.
    pub(super) flushing: bool,
    pub(super) touched: Vec<Arc<Outbox>>,
}

/// While alive, frames delivered on this thread are queued, and written
/// when it is dropped: one system call per socket for the whole batch.
/// Must not be held across an `.await`.
pub struct Batch {
    outermost: bool,
    /// Where the batch goes when it ends; `None`: written by this thread.
    flusher: Option<Arc<Flusher>>,
}

impl Batch {
    /// A batch written by this thread when it ends.
    pub fn start() -> Batch {
        Batch::begin(None)
    }

    /// A batch handed to `flusher` when it ends (if its task runs):
    /// announcements to everyone, or the frames of storage commits, arriving
    /// close together then share one write per socket instead of one each,
    /// and the thread that made them does not wait for the writes.
    pub fn deferred(flusher: &Arc<Flusher>) -> Batch {
        Batch::written_by(Some(flusher))
    }

    /// [`Batch::deferred`] to `flusher` if there is one, else
    /// [`Batch::start`].
    pub fn written_by(flusher: Option<&Arc<Flusher>>) -> Batch {
        let flushing = BATCH.with(|batch| batch.borrow().flushing);
        Batch::begin(
            flusher
                .filter(|flusher| !flushing && flusher.is_running())
                .cloned(),
        )
    }

    fn begin(flusher: Option<Arc<Flusher>>) -> Batch {
        let outermost = BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            let outermost = !batch.open;
            batch.open = true;
            outermost
        });
        Batch { outermost, flusher }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        let mut touched = BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            batch.open = false;
            std::mem::take(&mut batch.touched)
        });
        match &self.flusher {
            Some(flusher) => flusher.enqueue(touched.drain(..)),
            None => touched.drain(..).for_each(|o| o.write_out()),
        }
        // The list goes back for the next batch, its slots kept.
        touched.shrink_to(KEPT_BATCH_SLOTS);
        BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            // Writing out starts no batch, so nothing was listed meanwhile.
            debug_assert!(batch.touched.is_empty() && !batch.open);
            batch.touched = touched;
        });
    }
}
