//! `idle`: open many authenticated connections, wait for every welcome, and
//! hold them.

use super::client::{Endpoint, Socket, TokenBook, rss_kib, sockets_in_time_wait};
use super::{Report, Target, interrupted};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

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
    let endpoint = match Endpoint::parse(&target.url) {
        Ok(endpoint) => Arc::new(endpoint),
        Err(err) => {
            report.add("error", err, "");
            return report;
        }
    };
    // A previous run's sockets linger in TIME_WAIT for a minute and make
    // the kernel's search for a free local port slow: the connect rate
    // would measure that.
    if let Some(lingering) = sockets_in_time_wait().filter(|&n| n > 1000) {
        eprintln!(
            "idle: warning: {lingering} TCP sockets in TIME_WAIT (from an earlier run?) \
             slow down new connections; wait a minute for them to clear"
        );
        report.add("sockets_in_time_wait_at_start", lingering, "");
    }
    let tokens = Arc::new(TokenBook::mint(target, "idle-", users));
    let rss_before = server_pid.and_then(rss_kib);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut held: Vec<JoinHandle<()>> = Vec::with_capacity(connections);
    let mut latencies = Vec::with_capacity(connections);
    let mut failures = Vec::new();
    let started = Instant::now();
    let opening = async {
        let mut tasks = Vec::with_capacity(connections);
        for index in 0..connections {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (target, tokens, endpoint) = (target.clone(), tokens.clone(), endpoint.clone());
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                let socket = Socket::connect(&endpoint, &target, index, tokens.get(index)).await;
                drop(permit);
                let Socket { mut reader, writer } = socket?;
                let latency = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                // Read (and drop) whatever arrives — announcements of the
                // other connections — as a live client would, so that
                // nothing piles up on the server; answer its pings.
                let holder = tokio::spawn(async move {
                    let _writer = writer;
                    while reader.next_text().await.is_some() {}
                });
                Ok::<_, String>((latency, holder))
            }));
            if index % 1000 == 999 {
                eprintln!("idle: {} connections opening or open", index + 1);
            }
        }
        for task in tasks {
            match task.await {
                Ok(Ok((latency, holder))) => {
                    latencies.push(latency);
                    held.push(holder);
                }
                Ok(Err(err)) => failures.push(err),
                Err(err) => failures.push(err.to_string()),
            }
        }
    };
    tokio::select! {
        () = opening => {}
        () = interrupted() => report.partial = true,
    }
    let elapsed = started.elapsed();
    let open = held.len();
    report.add("connections_open", open as u64, "");
    report.add(
        "connect_rate",
        (open as f64 / elapsed.as_secs_f64()).round(),
        "connections/s",
    );
    report.add_latency("connect_latency", &mut latencies);
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
    for connection in held {
        connection.abort();
    }
    report
}
