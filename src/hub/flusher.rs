//! The hub's writer task: it writes the frames of deferred batches and runs
//! storage commits' callbacks (it is the store's [`CommitSink`]), so that the
//! thread that queues a frame is the one that writes it and the storage
//! writer goes on to its next commit.

use super::batch::{BATCH, Batch};
use super::outbox::Outbox;
use crate::store::CommitSink;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

/// A storage commit's callbacks, run by the flusher's task.
pub use crate::store::Callbacks;

/// Writes deferred batches and runs storage commits' callbacks: one task
/// per hub, woken when work waits.
#[derive(Default)]
pub struct Flusher {
    waiting: Mutex<Waiting>,
    wake: Notify,
    /// A copy of `Waiting::running` readable without the lock, for a
    /// batch deciding where it goes; whether work is accepted is decided
    /// under the lock.
    running: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Waiting {
    /// Outboxes with frames queued by deferred batches.
    outboxes: Vec<Arc<Outbox>>,
    /// Commits' callbacks, in commit order.
    deliveries: Vec<Callbacks>,
    /// Messages those callbacks deliver.
    messages: usize,
    /// The task runs and will take what is queued here. Checked and changed
    /// under the lock, so that nothing is queued after the task stopped.
    running: bool,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.outboxes.is_empty() && self.deliveries.is_empty()
    }

    /// Moves the waiting work into `taken` (empty), keeping the lists'
    /// slots: the two swap lists, and `running` stays as it is.
    fn hand_over(&mut self, taken: &mut Waiting) {
        std::mem::swap(&mut self.outboxes, &mut taken.outboxes);
        std::mem::swap(&mut self.deliveries, &mut taken.deliveries);
        taken.messages = std::mem::take(&mut self.messages);
    }
}

impl Flusher {
    pub(super) fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Hands a batch's outboxes to the task; writes them here if the task
    /// has stopped.
    pub(super) fn enqueue(&self, mut outboxes: impl Iterator<Item = Arc<Outbox>>) {
        let queued = self.add(|waiting| waiting.outboxes.extend(&mut outboxes));
        if !queued {
            outboxes.for_each(|outbox| outbox.write_out());
        }
    }

    /// Queues work for the task and wakes it; `false` (and nothing queued)
    /// when the task is not running.
    fn add(&self, add: impl FnOnce(&mut Waiting)) -> bool {
        let mut waiting = self.waiting();
        if !waiting.running {
            return false;
        }
        let first = waiting.is_empty();
        add(&mut waiting);
        let wake = first && !waiting.is_empty();
        drop(waiting);
        if wake {
            self.wake.notify_one();
        }
        true
    }
}

impl CommitSink for Flusher {
    /// Runs a storage commit's callbacks (acknowledgements, broadcasts) for
    /// `messages` messages on the flusher's task, after the callbacks of
    /// earlier commits: the thread that queues a frame is then the one that
    /// writes it, and the storage thread goes on to the next commit. When
    /// the task does not run they run here, at once, their frames written
    /// as one batch.
    fn deliver(&self, messages: usize, callbacks: Callbacks) {
        let mut here = Some(callbacks);
        self.add(|waiting| {
            waiting.deliveries.extend(here.take());
            waiting.messages += messages;
        });
        if let Some(callbacks) = here {
            let _writes = Batch::start();
            callbacks();
        }
    }
}

impl Flusher {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs for as long as the server does.
    pub async fn run(&self) {
        self.waiting().running = true;
        self.running
            .store(true, std::sync::atomic::Ordering::Release);
        // Should the task end (dropped at shutdown), what it had not taken
        // yet is delivered at once, and commits are delivered by the storage
        // threads again instead of waiting for it forever.
        let _stopped = Stopped(self);
        let mut taken = Waiting::default();
        loop {
            self.wake.notified().await;
            // Let announcements that are being made right now join this
            // round; commits' callbacks go at once.
            if !self.waiting().outboxes.is_empty() {
                tokio::task::yield_now().await;
            }
            self.waiting().hand_over(&mut taken);
            BATCH.with(|batch| batch.borrow_mut().flushing = true);
            {
                // A lone message goes straight into each socket; several
                // share one write per socket.
                let _writes = (taken.messages > 1).then(Batch::start);
                taken.deliveries.drain(..).for_each(run_callbacks);
            }
            taken.messages = 0;
            taken
                .outboxes
                .drain(..)
                .for_each(|outbox| outbox.write_out());
            BATCH.with(|batch| batch.borrow_mut().flushing = false);
        }
    }
}

/// Marks a flusher as stopped when its task ends, however it ends.
struct Stopped<'a>(&'a Flusher);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let left = {
            let mut waiting = self.0.waiting();
            waiting.running = false;
            std::mem::take(&mut *waiting)
        };
        self.0
            .running
            .store(false, std::sync::atomic::Ordering::Release);
        let _ = BATCH.try_with(|batch| {
            if let Ok(mut batch) = batch.try_borrow_mut() {
                batch.flushing = false;
            }
        });
        let _writes = Batch::start();
        left.deliveries.into_iter().for_each(run_callbacks);
        left.outboxes.iter().for_each(|outbox| outbox.write_out());
    }
}

/// Runs one commit's callbacks; one that panics is logged and does not stop
/// the flusher or keep the commits after it from being delivered.
fn run_callbacks(callbacks: Callbacks) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(callbacks)).is_err() {
        tracing::error!("a storage commit's callbacks panicked; the commits after it go on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::outbox::released;
    use bytes::Bytes;

    /// Starts the flusher's task and waits until it runs.
    async fn running(flusher: &Arc<Flusher>) -> tokio::task::JoinHandle<()> {
        let task = tokio::spawn({
            let flusher = flusher.clone();
            async move { flusher.run().await }
        });
        while !flusher.is_running() {
            tokio::task::yield_now().await;
        }
        task
    }

    fn pushing(outbox: &Arc<Outbox>, frame: &'static [u8]) -> Callbacks {
        let outbox = outbox.clone();
        Box::new(move || {
            outbox.push(&Bytes::from_static(frame));
        })
    }

    #[test]
    fn without_a_flusher_callbacks_run_at_once() {
        let outbox = released();
        // A flusher whose task does not run is no flusher.
        let idle = Flusher::default();
        idle.deliver(1, pushing(&outbox, b"a"));
        assert_eq!(outbox.take_queued(), [Bytes::from_static(b"a")]);
        idle.deliver(2, pushing(&outbox, b"b"));
        assert_eq!(outbox.take_queued(), [Bytes::from_static(b"b")]);
    }

    #[test]
    fn commits_are_delivered_on_the_flushers_task_in_order() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let flusher = Arc::new(Flusher::default());
        let outbox = released();
        let (ran_on, threads) = std::sync::mpsc::channel();
        runtime.block_on(async {
            let task = running(&flusher).await;
            let storage = std::thread::spawn({
                let (flusher, outbox) = (flusher.clone(), outbox.clone());
                move || {
                    for (messages, frame) in [(1, b"1"), (3, b"2"), (1, b"3")] {
                        let push = pushing(&outbox, frame);
                        let ran_on = ran_on.clone();
                        let callbacks: Callbacks = Box::new(move || {
                            let _ = ran_on.send(std::thread::current().id());
                            push();
                        });
                        flusher.deliver(messages, callbacks);
                    }
                }
            });
            while outbox.len() < 3 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            storage.join().expect("storage thread");
            task.abort();
            let _ = task.await;
        });
        let frames: Vec<Bytes> = outbox.take_queued();
        assert_eq!(frames, [&b"1"[..], b"2", b"3"].map(Bytes::from_static));
        // Its task gone, the flusher no longer takes callbacks to run later.
        flusher.deliver(1, pushing(&outbox, b"4"));
        assert_eq!(outbox.take_queued(), [Bytes::from_static(b"4")]);
        let here = std::thread::current().id();
        assert!(
            threads.try_iter().all(|thread| thread == here),
            "every callback ran on the runtime's thread, not the storage thread"
        );
    }

    #[test]
    fn callbacks_queued_when_the_task_stops_are_still_run() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let flusher = Arc::new(Flusher::default());
        let outbox = released();
        runtime.block_on(async {
            let task = running(&flusher).await;
            // Queued for the task, which stops before it takes them (this
            // thread does not yield in between).
            flusher.deliver(1, pushing(&outbox, b"1"));
            task.abort();
            let _ = task.await;
        });
        assert_eq!(outbox.take_queued(), [Bytes::from_static(b"1")]);
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_commits_after_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let flusher = Arc::new(Flusher::default());
        let outbox = released();
        runtime.block_on(async {
            let task = running(&flusher).await;
            flusher.deliver(1, Box::new(|| panic!("a bug")));
            flusher.deliver(1, pushing(&outbox, b"2"));
            while outbox.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(flusher.is_running());
            task.abort();
            let _ = task.await;
        });
        assert_eq!(outbox.take_queued(), [Bytes::from_static(b"2")]);
    }
}
