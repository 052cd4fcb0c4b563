//! A connection's outgoing frames. A frame goes straight into the socket when
//! nothing is queued before it, from whichever thread is broadcasting; what
//! the socket cannot take at once waits here, in order, for the session task
//! to write when the socket becomes writable. No task is woken for a frame
//! the socket accepted.
//!
//! Inside a [`super::Batch`] (a storage commit delivering many messages at
//! once), frames are only queued, and each socket gets all of its frames
//! with one system call when the batch ends.

use super::batch::BATCH;
use crate::wire::Stream;
use bytes::Bytes;
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
    pub(super) fn write_out(&self) {
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

impl crate::wire::HoldsStream for Outbox {
    fn stream(&self) -> Option<&Stream> {
        Outbox::stream(self)
    }
}

/// An outbox without a socket, past its welcome, holding no slots.
#[cfg(test)]
pub(super) fn released() -> Arc<Outbox> {
    let outbox = Outbox::new(None, 1024);
    outbox.release(Bytes::from_static(b"welcome"));
    outbox.take_queued();
    outbox.trim();
    outbox
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Batch;

    fn slots(outbox: &Outbox) -> usize {
        outbox.lock().frames.capacity()
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
