//! `burst`: one connection sends as fast as a window of unacknowledged
//! messages allows; reports acknowledged (durably stored) messages per second.

use super::client::{connect, next_json, send_json};
use super::{Report, Target, interrupted};
use crate::auth::Tokens;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

pub async fn run(target: &Target, messages: u64, window: usize) -> Report {
    let mut report = Report::new(format!(
        "burst: {messages} messages from one connection, {window} in flight"
    ));
    let tokens = Tokens::new(&target.jwt_secret);
    let mut socket = match connect(target, &tokens, 0, "burst-sender").await {
        Ok(socket) => socket,
        Err(err) => {
            report.add("error", err, "");
            return report;
        }
    };
    let room = "bench-burst";
    if send_json(&mut socket, &json!({"type": "room_join", "room": room}))
        .await
        .is_err()
    {
        report.add("error", "cannot join", "");
        return report;
    }
    while let Some(frame) = next_json(&mut socket).await {
        if frame["type"] == "room_joined" {
            break;
        }
    }
    let (mut sink, mut stream) = socket.split();
    let window = Arc::new(Semaphore::new(window.max(1)));
    let started = Instant::now();
    let sending = {
        let window = window.clone();
        tokio::spawn(async move {
            use futures_util::SinkExt;
            for n in 0..messages {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                let frame =
                    json!({"type": "chat_message", "room": room, "content": format!("burst {n}")});
                let text = tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into());
                if sink.send(text).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut acked = 0u64;
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    let mut last_progress = Instant::now();
    let receiving = async {
        while acked + errors.values().sum::<u64>() < messages {
            let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = stream.next().await
            else {
                break;
            };
            let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            match frame["type"].as_str() {
                Some("message_ack") => {
                    acked += 1;
                    window.add_permits(1);
                }
                Some("error") => {
                    *errors
                        .entry(frame["error_code"].as_str().unwrap_or("?").to_owned())
                        .or_default() += 1;
                    window.add_permits(1);
                }
                _ => {}
            }
            if last_progress.elapsed().as_secs() >= 1 {
                eprintln!("burst: {acked} acknowledged");
                last_progress = Instant::now();
            }
        }
    };
    tokio::select! {
        () = receiving => {}
        () = interrupted() => report.partial = true,
    }
    let elapsed = started.elapsed();
    sending.abort();
    report.add("acknowledged", acked, "messages");
    report.add(
        "acknowledged_rate",
        (acked as f64 / elapsed.as_secs_f64()).round(),
        "messages/s",
    );
    report.add(
        "elapsed_s",
        super::report::round(elapsed.as_secs_f64()),
        "s",
    );
    for (code, count) in errors {
        report.add(&format!("errors_{code}"), count, "");
    }
    report
}
