//! `GET /metrics`: the hub's counters in the Prometheus text format.

use crate::app::App;
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
        "roomcast_rooms_active",
        "gauge",
        "Rooms with at least one connection.",
        &[(String::new(), app.hub.room_count() as u64)],
    );
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
    let histogram = stats.broadcast_latency();
    let _ = writeln!(
        out,
        "# HELP roomcast_broadcast_duration_seconds Time to queue one broadcast to every recipient on this node.\n\
         # TYPE roomcast_broadcast_duration_seconds histogram"
    );
    for (bound_us, count) in histogram.cumulative() {
        let _ = writeln!(
            out,
            "roomcast_broadcast_duration_seconds_bucket{{le=\"{}\"}} {count}",
            bound_us as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "roomcast_broadcast_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
         roomcast_broadcast_duration_seconds_sum {}\n\
         roomcast_broadcast_duration_seconds_count {}",
        histogram.count(),
        histogram.sum_seconds(),
        histogram.count()
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
