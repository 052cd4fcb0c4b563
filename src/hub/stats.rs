//! Counters the hub keeps for `GET /api/stats` and `GET /metrics`.
//!
//! All counters are relaxed atomics indexed by enum position, so counting on
//! the hot path is one uncontended add and never takes a lock.

use crate::protocol::{ErrorCode, MessageType, ServerType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in microseconds, of the broadcast latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000,
];

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct HubStats {
    pub(super) active: AtomicU64,
    pub(super) peak: AtomicU64,
    pub(super) total: AtomicU64,
    pub(super) slow_consumer_disconnects: AtomicU64,
    messages_in: [AtomicU64; <MessageType as strum::EnumCount>::COUNT],
    messages_out: [AtomicU64; <ServerType as strum::EnumCount>::COUNT],
    errors: [AtomicU64; <ErrorCode as strum::EnumCount>::COUNT],
    broadcast_latency: Histogram,
}

impl HubStats {
    pub fn count_in(&self, kind: MessageType) {
        self.messages_in[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_out(&self, kind: ServerType, frames: u64) {
        self.messages_out[kind.index()].fetch_add(frames, Ordering::Relaxed);
    }

    pub fn count_error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_broadcast(&self, elapsed: Duration) {
        self.broadcast_latency.observe(elapsed);
    }

    pub(super) fn connection_opened(&self) {
        let active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        self.peak.fetch_max(active, Ordering::Relaxed);
    }

    pub(super) fn connection_closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.slow_consumer_disconnects.load(Ordering::Relaxed)
    }

    /// Count per client message type received, by type name.
    pub fn messages_in(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        MessageType::all().map(|kind| {
            (
                kind.as_str(),
                self.messages_in[kind.index()].load(Ordering::Relaxed),
            )
        })
    }

    /// Count per server frame type sent (one per recipient), by type name.
    pub fn messages_out(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ServerType::all().map(|kind| {
            (
                kind.as_str(),
                self.messages_out[kind.index()].load(Ordering::Relaxed),
            )
        })
    }

    /// Count per error code sent, by code.
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ErrorCode::all().map(|code| {
            (
                code.as_str(),
                self.errors[code.index()].load(Ordering::Relaxed),
            )
        })
    }

    pub fn broadcast_latency(&self) -> &Histogram {
        &self.broadcast_latency
    }
}

/// Upper bounds, in microseconds, of buckets for slow things (AI answers).
pub const SLOW_BUCKETS_US: [u64; 10] = [
    50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
    60_000_000,
];

/// A fixed-bucket latency histogram in the shape Prometheus expects.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    /// Buckets from 5 µs to 50 ms, for the fast paths.
    fn default() -> Self {
        Histogram::with_bounds(&LATENCY_BUCKETS_US)
    }
}

impl Histogram {
    /// A histogram with these bucket upper bounds (µs, ascending).
    pub fn with_bounds(bounds_us: &'static [u64]) -> Self {
        Histogram {
            bounds_us,
            buckets: bounds_us.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(slot) = self.bounds_us.iter().position(|&bound| micros <= bound) {
            self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Each bucket's upper bound in seconds and the observations in it
    /// (not counting the buckets below).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds_us
            .iter()
            .zip(self.buckets.iter())
            .map(|(&bound, count)| (bound as f64 / 1e6, count.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }
}
