//! A connection's outgoing frames. A frame goes straight into the socket when
//! nothing is queued before it, from whichever thread is broadcasting; what
//! the socket cannot take at once waits here, in order, for the session task
//! to write when the socket becomes writable. No task is woken for a frame
//! the socket accepted.
//!
//! Inside a [`Batch`] (a storage commit delivering many messages at once),
//! frames are only queued, and each socket gets all of its frames with one
//! system call when the batch ends.

use crate::wire::Stream;
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Frames handed to one `writev`, at most.
const MAX_IOVECS: usize = 64;

/// A drained queue keeps at most this many slots allocated (1 KiB), so that
/// a busy socket does not allocate per delivery or per batch;
/// [`Outbox::trim`] gives them back when the connection goes quiet.
const KEPT_SLOTS: usize = 64;

/// A batch's list of outboxes keeps at most this many slots between
/// batches, so that a thread committing message after message does not grow
/// a new list each time.
const KEPT_BATCH_SLOTS: usize = 4096;

thread_local! {
    /// The batch running on this thread, if any.
    static BATCH: RefCell<Running> = const {
        RefCell::new(Running { open: false, flushing: false, touched: Vec::new() })
    };
}

/// A thread's batch: whether one runs, and the outboxes it queued frames in.
struct Running {
    open: bool,
    /// The flusher's task is running on this thread: a batch deferred to
    /// it is written by this thread when it ends, not in the next round.
    flushing: bool,
    touched: Vec<Arc<Outbox>>,
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
    fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Hands a batch's outboxes to the task; writes them here if the task
    /// has stopped.
    fn enqueue(&self, mut outboxes: impl Iterator<Item = Arc<Outbox>>) {
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

    /// Runs a storage commit's callbacks (acknowledgements, broadcasts) for
    /// `messages` messages on the flusher's task, after the callbacks of
    /// earlier commits: the thread that queues a frame is then the one that
    /// writes it, and the storage thread goes on to the next commit. Without
    /// a flusher (`None`, or its task not running) they run here, at once,
    /// their frames written as one batch.
    pub fn deliver(flusher: Option<&Arc<Flusher>>, messages: usize, callbacks: Callbacks) {
        match flusher {
            Some(flusher) => crate::store::CommitSink::deliver(&**flusher, messages, callbacks),
            None => {
                let _writes = Batch::start();
                callbacks();
            }
        }
    }
}

impl crate::store::CommitSink for Flusher {
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

/// How many bytes a write put into the socket, or why it stopped: the
/// socket is full ([`Flush::Blocked`]) or failed ([`Flush::Failed`], and
/// the queue accepts nothing more).
fn accepted(result: std::io::Result<usize>, queue: &mut Queue) -> Result<usize, Flush> {
    match result {
        Ok(0) => {
            queue.closed = true;
            Err(Flush::Failed)
        }
        Ok(written) => Ok(written),
        Err(err) if err.kind() == ErrorKind::WouldBlock => Err(Flush::Blocked),
        Err(_) => {
            queue.closed = true;
            Err(Flush::Failed)
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

/// How a flush writes: through tokio (which then tracks whether the socket
/// is full), or straight into the socket (see `Stream::send_now`).
#[derive(Debug, Clone, Copy)]
enum Through {
    Tokio,
    Socket,
}

/// What [`Outbox::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Written, or queued behind earlier frames.
    Queued,
    /// The queue is at capacity; the frame was dropped.
    Full,
    /// The outbox is closed; the frame was dropped.
    Closed,
}

/// What [`Outbox::flush`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing is queued any more.
    Done,
    /// The socket takes no more for now.
    Blocked,
    /// The socket failed.
    Failed,
}

/// The fields every delivery reads come first, next to each other (about
/// 130 bytes: two or three cache lines), with an atomic flag at its start,
/// in its middle and at its end, so that [`Outbox::warm`] can fetch every
/// line of it without taking the lock.
#[derive(Debug)]
#[repr(C)]
pub struct Outbox {
    /// The connection is closing: no frame is accepted any more.
    refusing: AtomicBool,
    capacity: usize,
    queue: Mutex<Queue>,
    /// A patient sender waits on `room`: only then does a flush notify it
    /// (the notification takes a lock, once per delivery otherwise).
    room_wanted: AtomicBool,
    /// `None` for an outbox that only queues (tests, tools). The session
    /// reads from it too, through [`Outbox::stream`].
    stream: Option<Stream>,
    /// Frames wait for the socket to become writable; the session task
    /// takes this flag when its bell rings.
    backlog: AtomicBool,
    /// The session task's one wake-up: rung when frames wait for the
    /// socket, when a close is requested, when a pending write finishes.
    /// One signal keeps one small future in every idle task, not three.
    bell: Notify,
    /// Tells patient senders that the queue has room again.
    room: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes of the first queued frame already written.
    written: usize,
    /// Listed in the running batch of some thread.
    batched: bool,
    /// Frames are only queued until the session releases them (the welcome
    /// must be the first frame on the wire).
    held: bool,
    /// The first queued bytes are the handshake's answer, which goes out
    /// with the welcome in one write.
    prefaced: bool,
    /// No more frames are accepted.
    closed: bool,
}

impl Outbox {
    /// An outbox writing to `stream`, holding frames until [`Outbox::release`].
    pub fn new(stream: Option<Stream>, capacity: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            refusing: AtomicBool::new(false),
            stream,
            capacity,
            queue: Mutex::new(Queue {
                held: true,
                ..Queue::default()
            }),
            backlog: AtomicBool::new(false),
            bell: Notify::new(),
            room: Notify::new(),
            room_wanted: AtomicBool::new(false),
        })
    }

    /// Accepts no frame from now on (the connection is closing); what is
    /// queued stays, for the session to write or drop.
    pub fn refuse(&self) {
        self.refusing.store(true, Ordering::Release);
    }

    /// Whether [`Outbox::refuse`] was called.
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Reads the three flags that frame the fields a push reads (see the
    /// struct), bringing their cache lines in. A broadcast warms all its
    /// outboxes before it writes to any, so that their cache misses overlap
    /// instead of each stalling the `send` after it. What it returns means
    /// nothing; it is there to be read.
    pub fn warm(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
            | self.room_wanted.load(Ordering::Relaxed)
            | self.backlog.load(Ordering::Relaxed)
    }

    /// The socket this outbox writes to.
    pub fn stream(&self) -> Option<&Stream> {
        self.stream.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes or queues a frame, without waiting.
    pub fn push(self: &Arc<Self>, frame: &Bytes) -> Push {
        let mut queue = self.lock();
        if queue.closed {
            return Push::Closed;
        }
        if queue.frames.len() >= self.capacity {
            return Push::Full;
        }
        if queue.held {
            queue.frames.push_back(frame.clone());
            return Push::Queued;
        }
        let batched = BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            if !batch.open {
                return false;
            }
            queue.frames.push_back(frame.clone());
            if !queue.batched {
                queue.batched = true;
                batch.touched.push(self.clone());
            }
            true
        });
        if batched {
            return Push::Queued;
        }
        if !queue.frames.is_empty() {
            // The session already knows about the frames before this one.
            queue.frames.push_back(frame.clone());
            return Push::Queued;
        }
        // Nothing waits: straight into the socket, and only what it does
        // not take is queued. The session task, told of the backlog, writes
        // through tokio before it waits (see `Stream::send_now`).
        let written = match &self.stream {
            Some(stream) => match accepted(stream.send_now(frame), &mut queue) {
                Err(Flush::Blocked) => Ok(0),
                other => other,
            },
            None => Ok(0),
        };
        let flush = match written {
            Ok(written) if written == frame.len() => Flush::Done,
            Ok(written) => {
                queue.frames.push_back(frame.clone());
                queue.written = written;
                Flush::Blocked
            }
            Err(failed) => failed,
        };
        match flush {
            Flush::Done => Push::Queued,
            Flush::Blocked => {
                drop(queue);
                self.report_backlog();
                Push::Queued
            }
            Flush::Failed => Push::Closed,
        }
    }

    /// Flushes straight into the socket (see `Stream::send_now`), and
    /// leaves what the socket would not take to the session task, which
    /// writes it when the socket drains.
    fn write_out(&self) {
        if self.drain(Through::Socket) == Flush::Blocked {
            self.report_backlog();
        }
    }

    fn report_backlog(&self) {
        self.backlog.store(true, Ordering::Release);
        self.ring();
    }

    /// Writes as much of the queue as the socket takes, several frames per
    /// system call. Through tokio: the session task flushes before it waits
    /// for the socket, and so tokio learns that the socket is full.
    pub fn flush(&self) -> Flush {
        self.drain(Through::Tokio)
    }

    fn drain(&self, through: Through) -> Flush {
        let mut queue = self.lock();
        queue.batched = false;
        let result = self.write_queued(&mut queue, through);
        if queue.frames.is_empty() && queue.frames.capacity() > KEPT_SLOTS {
            queue.frames = VecDeque::new();
        }
        drop(queue);
        self.tell_room();
        result
    }

    fn tell_room(&self) {
        if self.room_wanted.swap(false, Ordering::SeqCst) {
            self.room.notify_waiters();
        }
    }

    fn write_queued(&self, queue: &mut Queue, through: Through) -> Flush {
        let Some(stream) = &self.stream else {
            return if queue.frames.is_empty() {
                Flush::Done
            } else {
                Flush::Blocked
            };
        };
        while let Some(first) = queue.frames.front() {
            // One frame (the common case): `send`, a shorter path through the
            // kernel than `writev`, and no slice table to fill.
            let result = if queue.frames.len() == 1 {
                let rest = &first[queue.written..];
                match through {
                    Through::Tokio => stream.try_write(rest),
                    Through::Socket => stream.send_now(rest),
                }
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                for (slot, frame) in slices.iter_mut().zip(queue.frames.iter()) {
                    *slot = IoSlice::new(frame);
                }
                slices[0] = IoSlice::new(&first[queue.written..]);
                let slices = &slices[..queue.frames.len().min(MAX_IOVECS)];
                match through {
                    Through::Tokio => stream.try_write_vectored(slices),
                    Through::Socket => stream.send_vectored_now(slices),
                }
            };
            let mut written = match accepted(result, queue) {
                Ok(written) => written,
                Err(stop) => return stop,
            };
            while let Some(first) = queue.frames.front() {
                let left = first.len() - queue.written;
                if written < left {
                    queue.written += written;
                    break;
                }
                written -= left;
                queue.written = 0;
                queue.frames.pop_front();
            }
        }
        Flush::Done
    }

    /// Queues the handshake's answer (`101 Switching Protocols`) ahead of
    /// everything, to be written with the welcome: one write and one TCP
    /// segment where there were two. Only while the outbox is held.
    pub fn preface(&self, answer: Bytes) {
        let mut queue = self.lock();
        queue.frames.push_front(answer);
        queue.prefaced = true;
    }

    /// Puts `first` before everything queued so far (after the handshake's
    /// answer) and starts writing.
    pub fn release(&self, first: Bytes) {
        let mut queue = self.lock();
        let at = usize::from(std::mem::take(&mut queue.prefaced));
        queue.frames.insert(at, first);
        queue.held = false;
        drop(queue);
        self.write_out();
        // Most connections sit idle after their welcome: they get slots
        // again with their first broadcast, and keep those until they go
        // quiet.
        self.trim();
    }

    /// Gives the queue's slots back if nothing waits in it: called at every
    /// heartbeat, so a connection that went quiet holds none.
    pub fn trim(&self) {
        let mut queue = self.lock();
        if queue.frames.is_empty() {
            queue.frames = VecDeque::new();
        }
    }

    /// Resolves when the socket may take more (never, without a socket).
    /// Only the session task waits for this.
    pub fn writable(&self) -> impl Future<Output = std::io::Result<()>> + '_ {
        std::future::poll_fn(move |cx| match &self.stream {
            Some(stream) => stream.poll_write_ready(cx),
            None => std::task::Poll::Pending,
        })
    }

    /// Wakes the session task (or makes its next wait return at once).
    pub fn ring(&self) {
        self.bell.notify_one();
    }

    /// Resolves when [`Outbox::ring`] was called since the last wait.
    pub fn rung(&self) -> Notified<'_> {
        self.bell.notified()
    }

    /// Whether frames were left waiting for the socket since the last call.
    pub fn take_backlog(&self) -> bool {
        self.backlog.swap(false, Ordering::AcqRel)
    }

    /// Resolves when a flush has made room (or may have). Take it before
    /// trying to queue, so that a flush in between is not missed.
    pub fn room(&self) -> Notified<'_> {
        // Created before the flag is raised: a flush that sees the flag
        // completes this future.
        let room = self.room.notified();
        self.room_wanted.store(true, Ordering::SeqCst);
        room
    }

    /// Queues a last frame (a close frame) and accepts nothing after it.
    /// With `discard`, frames not yet started are dropped first.
    pub fn seal(&self, last: Bytes, discard: bool) {
        let mut queue = self.lock();
        if discard {
            let keep = usize::from(queue.written > 0 || queue.prefaced);
            queue.frames.truncate(keep);
        }
        queue.frames.push_back(last);
        queue.held = false;
        queue.closed = true;
    }

    /// Frames waiting, including one partly written.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes every queued frame out (for outboxes without a socket).
    pub fn take_queued(&self) -> Vec<Bytes> {
        let frames = self.lock().frames.drain(..).collect();
        self.tell_room();
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(outbox: &Outbox) -> usize {
        outbox.lock().frames.capacity()
    }

    /// An outbox without a socket, past its welcome, holding no slots.
    fn released() -> Arc<Outbox> {
        let outbox = Outbox::new(None, 1024);
        outbox.release(Bytes::from_static(b"welcome"));
        outbox.take_queued();
        outbox.trim();
        outbox
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
        Flusher::deliver(None, 1, pushing(&outbox, b"a"));
        assert_eq!(outbox.take_queued(), [Bytes::from_static(b"a")]);
        // A flusher whose task does not run is no flusher.
        let idle = Arc::new(Flusher::default());
        Flusher::deliver(Some(&idle), 2, pushing(&outbox, b"b"));
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
            let task = tokio::spawn({
                let flusher = flusher.clone();
                async move { flusher.run().await }
            });
            while !flusher.is_running() {
                tokio::task::yield_now().await;
            }
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
                        Flusher::deliver(Some(&flusher), messages, callbacks);
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
        Flusher::deliver(Some(&flusher), 1, pushing(&outbox, b"4"));
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
            let task = tokio::spawn({
                let flusher = flusher.clone();
                async move { flusher.run().await }
            });
            while !flusher.is_running() {
                tokio::task::yield_now().await;
            }
            // Queued for the task, which stops before it takes them (this
            // thread does not yield in between).
            Flusher::deliver(Some(&flusher), 1, pushing(&outbox, b"1"));
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
            let task = tokio::spawn({
                let flusher = flusher.clone();
                async move { flusher.run().await }
            });
            while !flusher.is_running() {
                tokio::task::yield_now().await;
            }
            Flusher::deliver(Some(&flusher), 1, Box::new(|| panic!("a bug")));
            Flusher::deliver(Some(&flusher), 1, pushing(&outbox, b"2"));
            while outbox.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(flusher.is_running());
            task.abort();
            let _ = task.await;
        });
        assert_eq!(outbox.take_queued(), [Bytes::from_static(b"2")]);
    }

    #[test]
    fn a_busy_queue_keeps_its_slots_until_trimmed() {
        let outbox = released();
        assert_eq!(slots(&outbox), 0);
        for _ in 0..2 {
            {
                let _batch = Batch::start();
                for _ in 0..20 {
                    outbox.push(&Bytes::from_static(b"frame"));
                }
            }
            assert_eq!(outbox.take_queued().len(), 20);
            assert_eq!(outbox.flush(), Flush::Done);
        }
        let kept = slots(&outbox);
        assert!((20..=KEPT_SLOTS).contains(&kept), "{kept} slots");
        outbox.trim();
        assert_eq!(slots(&outbox), 0);
        // A large burst does not stay allocated even before a trim.
        {
            let _batch = Batch::start();
            for _ in 0..(KEPT_SLOTS * 4) {
                outbox.push(&Bytes::from_static(b"frame"));
            }
        }
        assert_eq!(outbox.take_queued().len(), KEPT_SLOTS * 4);
        outbox.flush();
        assert_eq!(slots(&outbox), 0);
    }

    #[test]
    fn warming_reaches_every_line_a_push_reads() {
        use std::mem::{offset_of, size_of};
        // A push reads from the start of the outbox to the end of its
        // stream. Outboxes sit in `Arc`s from the allocator, 16-byte
        // aligned, so that span may begin anywhere in a cache line at a
        // multiple of 16.
        let read = offset_of!(Outbox, stream) + size_of::<Option<Stream>>();
        let warmed = [
            offset_of!(Outbox, refusing),
            offset_of!(Outbox, room_wanted),
            offset_of!(Outbox, backlog),
        ];
        for start in [0, 16, 32, 48] {
            let mut line = 0;
            while line < start + read {
                let touched = (line.max(start)..line + 64).any(|at| warmed.contains(&(at - start)));
                assert!(
                    touched,
                    "the line at {line} (outbox at {start}) is not warmed"
                );
                line += 64;
            }
        }
    }
}
