//! Retention: how long messages are kept, and the background task that
//! deletes the rest.

use super::MessageStore;
use crate::protocol::Timestamp;
use std::sync::Arc;
use std::time::Duration;

/// Messages deleted per store call; between calls, writes go ahead.
const CHUNK: usize = 1000;

/// What a deployment keeps. Both limits apply when both are set; with
/// neither, everything is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many of the newest messages of each room.
    pub max_messages_per_room: Option<u64>,
    /// Delete messages older than this.
    pub max_age: Option<Duration>,
}

impl Retention {
    pub fn keeps_everything(&self) -> bool {
        self.max_messages_per_room.is_none() && self.max_age.is_none()
    }

    /// Messages created before this instant are too old.
    pub fn cutoff(&self) -> Option<Timestamp> {
        self.max_age.map(|age| {
            let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            Timestamp(Timestamp::now().as_millis().saturating_sub(age_ms))
        })
    }
}

/// Runs forever: every `interval`, deletes what `retention` no longer keeps,
/// a chunk at a time.
pub async fn enforce_retention(
    store: Arc<dyn MessageStore>,
    retention: Retention,
    interval: Duration,
) {
    if retention.keeps_everything() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut total = 0;
        loop {
            match store.prune(retention, CHUNK).await {
                Ok(deleted) => {
                    total += deleted;
                    if deleted < CHUNK as u64 {
                        break;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "retention pass failed");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(deleted = total, "retention removed old messages");
        }
    }
}
