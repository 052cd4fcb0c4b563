//! `idle`: open many authenticated connections, wait for every welcome, and
//! hold them.

use super::client::{connect, next_json, rss_kib};
use super::{Report, Target, interrupted};
use crate::auth::Tokens;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

pub async fn run(
    target: &Target,
    connections: usize,
    concurrency: usize,
    server_pid: Option<u32>,
    hold: u64,
    users: usize,
) -> Report {
    let users = if users == 0 { connections } else { users };
    let mut report = Report::new(format!(
        "idle: {connections} authenticated connections of {users} users"
    ));
    let tokens = Tokens::new(&target.jwt_secret);
    let rss_before = server_pid.and_then(rss_kib);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let held = Arc::new(Mutex::new(Vec::with_capacity(connections)));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(connections)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    let opening = async {
        for index in 0..connections {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (target, tokens) = (target.clone(), tokens.clone());
            let (held, latencies, failures) = (held.clone(), latencies.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                match connect(&target, &tokens, index, &format!("idle-{}", index % users)).await {
                    Ok(mut socket) => {
                        latencies
                            .lock()
                            .await
                            .push(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
                        // Read (and drop) whatever arrives — announcements of
                        // the other connections — as a live client would, so
                        // that nothing piles up on the server.
                        held.lock().await.push(tokio::spawn(async move {
                            while next_json(&mut socket).await.is_some() {}
                        }));
                    }
                    Err(err) => failures.lock().await.push(err),
                }
                drop(permit);
            }));
            if index % 1000 == 999 {
                eprintln!("idle: {} connections opening or open", index + 1);
            }
        }
        for task in tasks {
            let _ = task.await;
        }
    };
    tokio::select! {
        () = opening => {}
        () = interrupted() => report.partial = true,
    }
    let elapsed = started.elapsed();
    let open = held.lock().await.len();
    report.add("connections_open", open as u64, "");
    report.add(
        "connect_rate",
        (open as f64 / elapsed.as_secs_f64()).round(),
        "connections/s",
    );
    report.add_latency("connect_latency", &mut latencies.lock().await);
    let failures = failures.lock().await;
    report.add("failures", failures.len() as u64, "");
    if let Some(first) = failures.first() {
        report.add("first_failure", first.clone(), "");
    }
    if let (Some(pid), Some(before)) = (server_pid, rss_before) {
        // Let the server settle before reading its memory.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(after) = rss_kib(pid) {
            report.add("server_rss_kib", after, "KiB");
            if open > 0 {
                let per = (after.saturating_sub(before)) as f64 / open as f64;
                report.add(
                    "server_rss_per_connection_kib",
                    super::report::round(per),
                    "KiB",
                );
            }
        }
    }
    if !report.partial {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(hold)) => {}
            () = interrupted() => {}
        }
    }
    for connection in held.lock().await.drain(..) {
        connection.abort();
    }
    report
}
