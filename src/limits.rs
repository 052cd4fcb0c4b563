//! Rate limits: a token bucket, and a table of buckets keyed by client
//! address for limits that span connections (login attempts).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Refills `rate` tokens per second up to `burst`; each action takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_second: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate_per_second,
            burst,
            tokens: burst,
            updated: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(
                Duration::from_secs_f64(missing / self.rate.max(f64::MIN_POSITIVE))
                    .max(Duration::from_millis(1)),
            )
        }
    }

    /// Whether the bucket is full again (so it can be forgotten).
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Buckets per key (e.g. per client IP), forgotten once full again.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

/// Keys tracked before full buckets are swept out.
const SWEEP_AT: usize = 10_000;

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        KeyedLimiter {
            rate: rate_per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is available.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .take(now)
    }

    /// Checks without taking: how long until `key` may act again, if it must wait.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        match buckets.get(key) {
            Some(bucket) => bucket.clone().take(now).map(|_| ()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).expect_err("empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(bucket.take(start + Duration::from_millis(100)).is_ok());
        assert!(bucket.take(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn keyed_limiter_separates_keys() {
        let limiter = KeyedLimiter::new(1.0, 2);
        assert!(limiter.take(&"a").is_ok());
        assert!(limiter.take(&"a").is_ok());
        assert!(limiter.take(&"a").is_err());
        assert!(limiter.check(&"a").is_err());
        assert!(limiter.take(&"b").is_ok());
        assert!(limiter.check(&"c").is_ok());
    }
}
