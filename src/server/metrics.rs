//! `GET /metrics`: the node's counters in the Prometheus text format
//! (version 0.0.4), encoded by `prometheus-client` from a collector that
//! reads them at scrape time (names, label values and numbers escaped and
//! formatted by the crate).

use crate::app::App;
use crate::hub::Histogram;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub async fn render(State(app): State<Arc<App>>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(app)));
    let mut out = String::with_capacity(8192);
    match prometheus_text::encode(&mut out, &registry) {
        Ok(()) => ([(CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], out).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Reads the node's counters when scraped.
struct Scrape(Arc<App>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Result = std::result::Result<(), std::fmt::Error>;

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result {
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// A counter; its samples are named `<name>_total`.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A family of counters with one label.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'static str, u64)>,
) -> Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (label_value, value) in values {
        family
            .encode_family(&[(label, label_value)])?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &Histogram,
) -> Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(
            histogram.sum_seconds(),
            histogram.count(),
            &histogram.buckets(),
            None,
        )
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
        let app = &self.0;
        let stats = app.hub.stats();
        let out = &mut encoder;
        gauge(
            out,
            "roomcast_connections_active",
            "Open WebSocket connections.",
            stats.active(),
        )?;
        gauge(
            out,
            "roomcast_connections_peak",
            "Most open connections at once since start.",
            stats.peak(),
        )?;
        counter(
            out,
            "roomcast_connections",
            "Connections accepted since start.",
            stats.total(),
        )?;
        let mut by_kind = out.encode_descriptor(
            "roomcast_connections_by_kind",
            "Open connections by kind (user, guest, assistant, system).",
            None,
            MetricType::Gauge,
        )?;
        for (kind, count) in app.hub.connections_by_kind() {
            by_kind
                .encode_family(&[("kind", kind.as_str())])?
                .encode_gauge(&i64::try_from(count).unwrap_or(i64::MAX))?;
        }
        gauge(
            out,
            "roomcast_rooms_active",
            "Rooms with at least one connection.",
            app.hub.room_count() as u64,
        )?;
        if let Some(webhooks) = &app.webhooks {
            counters(
                out,
                "roomcast_webhook_deliveries",
                "Webhook delivery tries by outcome: delivered, retried (failed, tried again later), failed (given up).",
                "outcome",
                [
                    ("delivered", load(&webhooks.stats.delivered)),
                    ("retried", load(&webhooks.stats.retried)),
                    ("failed", load(&webhooks.stats.failed)),
                ]
                .into_iter(),
            )?;
        }
        counter(
            out,
            "roomcast_slow_consumer_disconnects",
            "Connections closed with 4002 because their outbox overflowed.",
            stats.slow_consumer_disconnects(),
        )?;
        counters(
            out,
            "roomcast_messages_in",
            "Client frames received, by type.",
            "type",
            stats.messages_in(),
        )?;
        counters(
            out,
            "roomcast_messages_out",
            "Server frames queued to connections, by type (one per recipient).",
            "type",
            stats.messages_out(),
        )?;
        counters(
            out,
            "roomcast_errors",
            "Error frames sent, by error code.",
            "code",
            stats.errors(),
        )?;
        histogram(
            out,
            "roomcast_broadcast_duration_seconds",
            "Time to queue one broadcast to every recipient on this node.",
            stats.broadcast_latency(),
        )?;
        let ai = &app.ai_control.stats;
        counters(
            out,
            "roomcast_ai_requests",
            "AI requests, by outcome.",
            "outcome",
            ai.outcomes().into_iter(),
        )?;
        counters(
            out,
            "roomcast_ai_tokens",
            "Tokens the AI provider reported, by kind.",
            "kind",
            [
                ("prompt", load(&ai.prompt_tokens)),
                ("completion", load(&ai.completion_tokens)),
            ]
            .into_iter(),
        )?;
        histogram(
            out,
            "roomcast_ai_first_token_seconds",
            "Time from an AI request to its first streamed token.",
            &ai.first_token,
        )?;
        histogram(
            out,
            "roomcast_ai_duration_seconds",
            "Time from an AI request to its complete answer.",
            &ai.total,
        )
    }
}
