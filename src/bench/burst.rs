//! `burst`: one connection sends as fast as a window of unacknowledged
//! messages allows; reports acknowledged (durably stored) messages per second.

use super::client::{Endpoint, Socket, TokenBook};
use super::{Report, Target, interrupted};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

pub async fn run(target: &Target, messages: u64, window: usize) -> Report {
    let mut report = Report::new(format!(
        "burst: {messages} messages from one connection, {window} in flight"
    ));
    let tokens = TokenBook::mint(target, "burst-sender-", 1);
    let connected = match Endpoint::parse(&target.url) {
        Ok(endpoint) => Socket::connect(&endpoint, target, 0, tokens.get(0)).await,
        Err(err) => Err(err),
    };
    let mut socket = match connected {
        Ok(socket) => socket,
        Err(err) => {
            report.add("error", err, "");
            return report;
        }
    };
    let room = "bench-burst";
    let join = format!(r#"{{"type":"room_join","room":"{room}"}}"#);
    if let Err(err) = socket.request(&join, "room_joined").await {
        report.add("error", format!("cannot join: {err}"), "");
        return report;
    }
    let Socket { mut reader, writer } = socket;
    let window = Arc::new(Semaphore::new(window.max(1)));
    let started = Instant::now();
    let sending = {
        let window = window.clone();
        tokio::spawn(async move {
            for n in 0..messages {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                let frame =
                    format!(r#"{{"type":"chat_message","room":"{room}","content":"burst {n}"}}"#);
                if writer.send_text(&frame).await.is_err() {
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
            let Some(head) = reader.next_head().await else {
                break;
            };
            match head.kind {
                "message_ack" => {
                    acked += 1;
                    window.add_permits(1);
                }
                "error" => {
                    *errors
                        .entry(head.error_code.unwrap_or("?").to_owned())
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
