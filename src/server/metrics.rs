//! `GET /metrics`: the hub's counters in the Prometheus text format.

use crate::app::App;
use crate::hub::Histogram;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::Arc;

pub async fn render(State(app): State<Arc<App>>) -> impl IntoResponse {
    let stats = app.hub.stats();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "roomcast_connections_active",
        "gauge",
        "Open WebSocket connections.",
        &[(String::new(), stats.active())],
    );
    metric(
        "roomcast_connections_peak",
        "gauge",
        "Most open connections at once since start.",
        &[(String::new(), stats.peak())],
    );
    metric(
        "roomcast_connections_total",
        "counter",
        "Connections accepted since start.",
        &[(String::new(), stats.total())],
    );
    metric(
        "roomcast_connections_by_kind",
        "gauge",
        "Open connections by kind (user, guest, assistant, system).",
        &app.hub
            .connections_by_kind()
            .iter()
            .map(|(kind, count)| (format!("{{kind=\"{}\"}}", kind.as_str()), *count))
            .collect::<Vec<_>>(),
    );
    metric(
        "roomcast_rooms_active",
        "gauge",
        "Rooms with at least one connection.",
        &[(String::new(), app.hub.room_count() as u64)],
    );
    if let Some(webhooks) = &app.webhooks {
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        metric(
            "roomcast_webhook_deliveries_total",
            "counter",
            "Webhook delivery tries by outcome: delivered, retried (failed, tried again later), failed (given up).",
            &[
                (
                    "{outcome=\"delivered\"}".to_owned(),
                    load(&webhooks.stats.delivered),
                ),
                (
                    "{outcome=\"retried\"}".to_owned(),
                    load(&webhooks.stats.retried),
                ),
                (
                    "{outcome=\"failed\"}".to_owned(),
                    load(&webhooks.stats.failed),
                ),
            ],
        );
    }
    metric(
        "roomcast_slow_consumer_disconnects_total",
        "counter",
        "Connections closed with 4002 because their outbox overflowed.",
        &[(String::new(), stats.slow_consumer_disconnects())],
    );
    let labelled = |label: &str, values: &mut dyn Iterator<Item = (&'static str, u64)>| {
        values
            .map(|(name, value)| (format!("{{{label}=\"{name}\"}}"), value))
            .collect::<Vec<_>>()
    };
    metric(
        "roomcast_messages_in_total",
        "counter",
        "Client frames received, by type.",
        &labelled("type", &mut stats.messages_in()),
    );
    metric(
        "roomcast_messages_out_total",
        "counter",
        "Server frames queued to connections, by type (one per recipient).",
        &labelled("type", &mut stats.messages_out()),
    );
    metric(
        "roomcast_errors_total",
        "counter",
        "Error frames sent, by error code.",
        &labelled("code", &mut stats.errors()),
    );
    histogram(
        &mut out,
        "roomcast_broadcast_duration_seconds",
        "Time to queue one broadcast to every recipient on this node.",
        stats.broadcast_latency(),
    );
    let ai = &app.ai_control.stats;
    let outcomes: Vec<(String, u64)> = ai
        .outcomes()
        .iter()
        .map(|(outcome, count)| (format!("{{outcome=\"{outcome}\"}}"), *count))
        .collect();
    let tokens = [
        (
            "{kind=\"prompt\"}".to_owned(),
            ai.prompt_tokens.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "{kind=\"completion\"}".to_owned(),
            ai.completion_tokens
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    ];
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "roomcast_ai_requests_total",
        "counter",
        "AI requests, by outcome.",
        &outcomes,
    );
    metric(
        "roomcast_ai_tokens_total",
        "counter",
        "Tokens the AI provider reported, by kind.",
        &tokens,
    );
    histogram(
        &mut out,
        "roomcast_ai_first_token_seconds",
        "Time from an AI request to its first streamed token.",
        &ai.first_token,
    );
    histogram(
        &mut out,
        "roomcast_ai_duration_seconds",
        "Time from an AI request to its complete answer.",
        &ai.total,
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Writes a histogram in the Prometheus text format.
fn histogram(out: &mut String, name: &str, help: &str, histogram: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound_us, count) in histogram.cumulative() {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {count}",
            bound_us as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
        histogram.count(),
        histogram.sum_seconds(),
        histogram.count()
    );
}
