//! Webhooks: the rooms' chat messages, shared files and project and ticket
//! events, POSTed as JSON to the URLs of `--webhook`.
//!
//! Deliveries come from the store's outbox: the store writes a message's or
//! event's delivery rows in the transaction that stores it, so nothing
//! acknowledged is lost to a restart or a crash, and the chat path never
//! waits for a webhook. Here each node leases due rows (several nodes share
//! the work, each row goes to one), POSTs them signed with HMAC-SHA256, and
//! deletes a row on a 2xx answer; a failure is retried with exponential
//! backoff and recorded as failed after the last try.

use crate::app::App;
use crate::config::{Config, Secret, Webhook};
use crate::protocol::Timestamp;
use crate::store::{WebhookDelivery, WebhookRoutes};
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Deliveries leased per store round trip.
const BATCH: usize = 64;
/// Deliveries in flight at once per node.
const IN_FLIGHT: usize = 16;
/// How often a node looks for due deliveries when it found none.
const POLL: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";

/// A webhook's id in the outbox: from its URL, so that it stays the same
/// across restarts.
pub fn webhook_id(url: &str) -> String {
    hex::encode(&Sha256::digest(url.as_bytes())[..8])
}

/// Which webhooks want which rooms, for the store.
pub fn routes(webhooks: &[Webhook]) -> Arc<WebhookRoutes> {
    WebhookRoutes::new(
        webhooks
            .iter()
            .map(|hook| (webhook_id(&hook.url), hook.rooms.clone()))
            .collect(),
    )
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Counters for `/api/stats` and `/metrics` (this node's deliveries).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    /// Failed tries that will be tried again.
    pub retried: AtomicU64,
    /// Deliveries given up after the last try.
    pub failed: AtomicU64,
}

struct Hook {
    id: String,
    url: String,
    secret: Option<Secret>,
}

/// Delivers the outbox's rows.
pub struct Dispatcher {
    hooks: Vec<Hook>,
    client: reqwest::Client,
    timeout: Duration,
    max_attempts: u32,
    retry_base: Duration,
    pub stats: WebhookStats,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl Dispatcher {
    /// The dispatcher for the configured webhooks, if any.
    pub fn configured(config: &Config) -> Option<Arc<Dispatcher>> {
        if config.webhooks.is_empty() {
            return None;
        }
        Some(Arc::new(Dispatcher {
            hooks: config
                .webhooks
                .iter()
                .map(|hook| Hook {
                    id: webhook_id(&hook.url),
                    url: hook.url.clone(),
                    secret: hook.secret.clone(),
                })
                .collect(),
            client: reqwest::Client::new(),
            timeout: config.webhook_timeout,
            max_attempts: config.webhook_max_attempts,
            retry_base: config.webhook_retry_base,
            stats: WebhookStats::default(),
        }))
    }

    /// When the try after `attempts` failed ones is due.
    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1));
        self.retry_base.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// Gives back the deliveries this node leased but has not settled, for
    /// a node that stops: another node (or this one, started again) takes
    /// them at once instead of after the lease.
    pub async fn release(&self, app: &App) {
        if let Err(err) = app.store.release_webhooks(app.hub.node_id()).await {
            tracing::warn!(error = %err, "could not give back leased webhook deliveries");
        }
    }

    async fn deliver(&self, app: &App, delivery: WebhookDelivery) {
        let Some(hook) = self.hooks.iter().find(|hook| hook.id == delivery.webhook) else {
            return;
        };
        let mut request = self
            .client
            .post(&hook.url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("x-roomcast-event", &delivery.kind)
            .header("x-roomcast-delivery", delivery.id.to_string());
        if let Some(secret) = &hook.secret {
            let now = Timestamp::now().as_millis() / 1000;
            request = request.header(SIGNATURE_HEADER, signature(&secret.0, now, &delivery.body));
        }
        let outcome = match request.body(delivery.body).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("answered {}", response.status())),
            // Without the URL: it may hold credentials.
            Err(err) => Err(err.without_url().to_string()),
        };
        let stored = match outcome {
            Ok(()) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                app.store.webhook_delivered(delivery.id).await
            }
            Err(error) => {
                let attempts = u32::try_from(delivery.attempts)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let retry_at = (attempts < self.max_attempts).then(|| {
                    let wait =
                        i64::try_from(self.backoff(attempts).as_millis()).unwrap_or(i64::MAX);
                    Timestamp(Timestamp::now().as_millis().saturating_add(wait))
                });
                let url = crate::config::without_password(&hook.url);
                if retry_at.is_some() {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(webhook = %url, delivery = delivery.id, attempts, %error, "webhook delivery failed; will retry");
                } else {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(webhook = %url, delivery = delivery.id, attempts, %error, "webhook delivery failed for good");
                }
                app.store.webhook_failed(delivery.id, retry_at, error).await
            }
        };
        if let Err(err) = stored {
            tracing::warn!(error = %err, "could not record a webhook delivery's outcome");
        }
    }
}

/// Delivers due webhook rows forever.
pub async fn run(app: Arc<App>) {
    let Some(dispatcher) = app.webhooks.clone() else {
        return;
    };
    let ids: Vec<String> = dispatcher
        .hooks
        .iter()
        .map(|hook| hook.id.clone())
        .collect();
    // A lease outlasts a batch's tries, so that no other node takes a row
    // this one is still delivering; a node that stops gives its leases back
    // (`Dispatcher::release`), one that dies leaves them to expire.
    let lease = dispatcher.timeout * 4 + Duration::from_secs(5);
    let mut failing = false;
    loop {
        let now = Timestamp::now();
        let until = Timestamp(
            now.as_millis()
                .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
        );
        match app
            .store
            .lease_webhooks(app.hub.node_id(), ids.clone(), now, until, BATCH)
            .await
        {
            Ok(batch) if !batch.is_empty() => {
                failing = false;
                let full = batch.len() == BATCH;
                futures_util::stream::iter(batch)
                    .for_each_concurrent(IN_FLIGHT, |delivery| dispatcher.deliver(&app, delivery))
                    .await;
                if !full {
                    tokio::time::sleep(POLL).await;
                }
            }
            Ok(_) => {
                failing = false;
                tokio::time::sleep(POLL).await;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, "cannot read the webhook outbox; trying again");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // From Python: hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("s3cret", 1_700_000_000, "{}"),
            "t=1700000000,v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }
}
