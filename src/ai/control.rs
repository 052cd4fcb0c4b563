//! Keeping the assistant affordable and fair: per-user and per-room request
//! rates, per-user and per-room limits on requests in flight, a global cap on concurrent
//! provider calls (waiting requests are served first come, first served), and
//! the counters that `/metrics` and `/api/stats` report.

use crate::hub::{Histogram, SLOW_BUCKETS_US};
use crate::limits::KeyedLimiter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A running request: the requester's connection id and its cancel signal.
type Running = (Arc<str>, Arc<Notify>);

/// Requests a user may have in flight at once.
const PER_USER_IN_FLIGHT: usize = 2;

/// Requests (asked or auto-replies) a room may have in flight at once.
const PER_ROOM_IN_FLIGHT: usize = 3;

/// Admission control and statistics for AI requests.
#[derive(Debug)]
pub struct AiControl {
    per_user: KeyedLimiter<String>,
    per_room: KeyedLimiter<String>,
    in_flight: Mutex<HashMap<String, usize>>,
    /// FIFO: tokio's semaphore hands permits out in request order.
    slots: Arc<Semaphore>,
    /// Running requests by id: the requester's connection id and the signal
    /// that cancels the request.
    running: Mutex<HashMap<String, Running>>,
    pub stats: AiStats,
}

/// Counters of AI requests.
#[derive(Debug)]
pub struct AiStats {
    pub requests: AtomicU64,
    pub answered: AtomicU64,
    pub unavailable: AtomicU64,
    pub timeouts: AtomicU64,
    pub cancelled: AtomicU64,
    pub rate_limited: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub first_token: Histogram,
    pub total: Histogram,
}

impl Default for AiStats {
    fn default() -> Self {
        AiStats {
            requests: AtomicU64::default(),
            answered: AtomicU64::default(),
            unavailable: AtomicU64::default(),
            timeouts: AtomicU64::default(),
            cancelled: AtomicU64::default(),
            rate_limited: AtomicU64::default(),
            prompt_tokens: AtomicU64::default(),
            completion_tokens: AtomicU64::default(),
            first_token: Histogram::with_bounds(&SLOW_BUCKETS_US),
            total: Histogram::with_bounds(&SLOW_BUCKETS_US),
        }
    }
}

impl AiStats {
    /// `(outcome, count)` for every outcome of a request.
    pub fn outcomes(&self) -> [(&'static str, u64); 5] {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("answered", get(&self.answered)),
            ("unavailable", get(&self.unavailable)),
            ("timeout", get(&self.timeouts)),
            ("cancelled", get(&self.cancelled)),
            ("rate_limited", get(&self.rate_limited)),
        ]
    }
}

/// A request admitted: it holds its user's and its room's in-flight places
/// until dropped.
pub struct Admission {
    control: Arc<AiControl>,
    /// `user:<id>` and, with a room, `room:<name>`.
    keys: Vec<String>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut in_flight = self
            .control
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if let Some(count) = in_flight.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    in_flight.remove(key);
                }
            }
        }
    }
}

impl AiControl {
    /// `per_user_per_minute` and `per_room_per_minute` requests; at most
    /// `concurrent` provider calls at once.
    pub fn new(per_user_per_minute: u32, per_room_per_minute: u32, concurrent: usize) -> Self {
        let per_minute = |n: u32| KeyedLimiter::new(f64::from(n.max(1)) / 60.0, n.max(1));
        AiControl {
            per_user: per_minute(per_user_per_minute),
            per_room: per_minute(per_room_per_minute),
            in_flight: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(concurrent.max(1))),
            running: Mutex::new(HashMap::new()),
            stats: AiStats::default(),
        }
    }

    /// Admits a request, or says how long to wait.
    pub fn admit(self: &Arc<Self>, user: &str, room: Option<&str>) -> Result<Admission, Duration> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let refuse = |wait: Duration| {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            wait
        };
        let limits: Vec<(String, usize)> =
            std::iter::once((format!("user:{user}"), PER_USER_IN_FLIGHT))
                .chain(room.map(|room| (format!("room:{room}"), PER_ROOM_IN_FLIGHT)))
                .collect();
        // Checked and taken under one lock, so two requests cannot both take
        // the last place; no await happens while it is held.
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if limits
            .iter()
            .any(|(key, limit)| in_flight.get(key).copied().unwrap_or(0) >= *limit)
        {
            return Err(refuse(Duration::from_secs(1)));
        }
        self.per_user.take(&user.to_owned()).map_err(refuse)?;
        if let Some(room) = room {
            self.per_room.take(&room.to_owned()).map_err(refuse)?;
        }
        for (key, _) in &limits {
            *in_flight.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(Admission {
            control: self.clone(),
            keys: limits.into_iter().map(|(key, _)| key).collect(),
        })
    }

    /// Registers a running request; the returned signal fires on cancel.
    pub fn register(&self, request_id: &str, connection_id: Arc<str>) -> Arc<Notify> {
        let signal = Arc::new(Notify::new());
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id.to_owned(), (connection_id, signal.clone()));
        signal
    }

    pub fn unregister(&self, request_id: &str) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(request_id);
    }

    /// Cancels a request of `connection_id`; false if there is none.
    pub fn cancel(&self, request_id: &str, connection_id: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get(request_id) {
            Some((owner, signal)) if &**owner == connection_id => {
                signal.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Waits for a provider slot, first come, first served.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }
}
