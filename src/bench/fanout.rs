//! `fanout`: rooms × members, some members sending at a fixed rate; every
//! member measures the latency of each message from the send timestamp it
//! carries, and the run counts what was expected against what arrived.

use super::client::{
    Endpoint, Head, Reader, Socket, TokenBook, Writer, cpu_seconds, now_micros, sent_micros,
};
use super::{Report, Target, interrupted};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore, watch};

/// The size of a fan-out run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    pub rate: u64,
    pub duration: Duration,
    pub window: usize,
}

#[derive(Default)]
struct Counters {
    /// Every frame read, to see when the joins' announcements have settled.
    frames: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

pub async fn run(target: &Target, also: &[String], shape: Shape, server_pids: &[u32]) -> Report {
    let mut report = Report::new(format!(
        "fanout: {} rooms x {} members, {} sender(s) per room at {} msg/s for {:?}",
        shape.rooms, shape.members, shape.senders, shape.rate, shape.duration
    ));
    let sockets = match join_all(target, also, shape).await {
        Ok(sockets) => sockets,
        Err(err) => {
            report.add("error", err, "");
            return report;
        }
    };
    eprintln!("fanout: {} members joined", sockets.len());

    let counters = Arc::new(Counters::default());
    let (stop_readers, readers_stopped) = watch::channel(false);
    let (stop_senders, senders_stopped) = watch::channel(false);
    let (stop_senders_ready, senders_may_start) = watch::channel(false);
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let sender_count = shape.rooms * shape.senders.min(shape.members);
    for (index, (room, socket)) in sockets.into_iter().enumerate() {
        let Socket { reader, writer } = socket;
        let window = Arc::new(Semaphore::new(shape.window.max(1)));
        readers.push(tokio::spawn(read(
            reader,
            counters.clone(),
            window.clone(),
            readers_stopped.clone(),
        )));
        if index % shape.members < shape.senders {
            // Senders are spread evenly over the period, as independent
            // clients would be: started together, every room would send in
            // the same instant, and latency would measure that burst.
            let phase = senders.len() as f64 / sender_count.max(1) as f64;
            senders.push(tokio::spawn(send(
                writer,
                room,
                shape.rate,
                phase,
                window,
                senders_may_start.clone(),
                senders_stopped.clone(),
            )));
        }
    }

    // Joining announces every member to the room (presence) and every user
    // to everyone (user_join); let that traffic drain before measuring.
    settle(&counters.frames).await;
    let _ = stop_senders_ready.send(true);
    let cpu_before = cpu_of(server_pids);
    let started = Instant::now();
    let progress = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!(
                "fanout: {:>5.1}s  {} acknowledged, {} delivered",
                started.elapsed().as_secs_f64(),
                counters.acked.load(Ordering::Relaxed),
                counters.delivered.load(Ordering::Relaxed)
            );
        }
    };
    tokio::select! {
        () = tokio::time::sleep(shape.duration) => {}
        () = progress => {}
        () = interrupted() => report.partial = true,
    }
    let _ = stop_senders.send(true);
    for sender in senders {
        let _ = sender.await;
    }
    let sending_time = started.elapsed();
    // Drain: wait until every acknowledged message reached every member and
    // the counts have held still for a moment (an acknowledgement may be read
    // a little after other members got the message), or until nothing has
    // arrived for two seconds.
    let expected = || counters.acked.load(Ordering::Relaxed) * shape.members as u64;
    let counts = || {
        (
            counters.acked.load(Ordering::Relaxed),
            counters.delivered.load(Ordering::Relaxed),
        )
    };
    let mut last = counts();
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counts();
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        let settled = now.1 == expected() && still_since.elapsed() >= Duration::from_millis(200);
        if settled || still_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
    }
    let cpu_after = cpu_of(server_pids);
    let _ = stop_readers.send(true);
    let mut samples = Vec::new();
    for reader in readers {
        if let Ok(mut part) = reader.await {
            samples.append(&mut part);
        }
    }

    let acked = counters.acked.load(Ordering::Relaxed);
    let delivered = counters.delivered.load(Ordering::Relaxed);
    report.add("messages_acknowledged", acked, "");
    report.add("deliveries", delivered, "");
    report.add(
        "deliveries_per_second",
        (delivered as f64 / sending_time.as_secs_f64()).round(),
        "deliveries/s",
    );
    report.add(
        "lost",
        expected().saturating_sub(delivered),
        "expected - delivered",
    );
    report.add_latency("latency", &mut samples);
    if let (Some(before), Some(after)) = (cpu_before, cpu_after)
        && delivered > 0
    {
        report.add("server_cpu_s", super::report::round(after - before), "s");
        report.add(
            "server_cpu_per_delivery_us",
            super::report::round((after - before) * 1e6 / delivered as f64),
            "µs",
        );
    }
    for (code, count) in counters.errors.lock().await.iter() {
        report.add(&format!("errors_{code}"), *count, "");
    }
    report
}

/// Waits until no frame has arrived for half a second (at most 60 s).
async fn settle(frames: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = frames.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_millis(500) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = frames.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
}

/// The CPU seconds of all these processes; `None` without any.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// Connects every member and joins it to its room, spreading each room's
/// members over the nodes in turn.
async fn join_all(
    target: &Target,
    also: &[String],
    shape: Shape,
) -> Result<Vec<(String, Socket)>, String> {
    let mut endpoints = vec![Arc::new(Endpoint::parse(&target.url)?)];
    for url in also {
        endpoints.push(Arc::new(Endpoint::parse(url)?));
    }
    let members = shape.rooms * shape.members;
    let tokens = Arc::new(TokenBook::mint(target, "fan-", members));
    let permits = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(members);
    for room in 0..shape.rooms {
        for member in 0..shape.members {
            let index = room * shape.members + member;
            let endpoint = endpoints[member % endpoints.len()].clone();
            let (target, tokens) = (target.clone(), tokens.clone());
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                let name = format!("bench-{room}");
                let mut socket =
                    Socket::connect(&endpoint, &target, index, tokens.get(index)).await?;
                let join = json!({"type": "room_join", "room": name}).to_string();
                socket
                    .request(&join, "room_joined")
                    .await
                    .map_err(|err| format!("room_join failed: {err}"))?;
                Ok::<_, String>((name, socket))
            }));
        }
    }
    let mut sockets = Vec::with_capacity(tasks.len());
    for task in tasks {
        sockets.push(task.await.map_err(|e| e.to_string())??);
    }
    Ok(sockets)
}

/// Reads one member's frames until told to stop; returns latency samples (µs).
async fn read(
    mut reader: Reader,
    counters: Arc<Counters>,
    window: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Vec<u64> {
    let mut samples = Vec::new();
    loop {
        counters.frames.fetch_add(1, Ordering::Relaxed);
        let text = tokio::select! {
            text = reader.next_text() => text,
            _ = stop.changed() => return samples,
        };
        let Some(text) = text else {
            return samples;
        };
        let head = Head::of(text);
        match head.kind {
            "chat_message" => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = sent_micros(text) {
                    samples.push(now_micros().saturating_sub(sent));
                }
            }
            "message_ack" => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
                window.add_permits(1);
            }
            "error" => {
                let code = head.error_code.unwrap_or("?").to_owned();
                *counters.errors.lock().await.entry(code).or_default() += 1;
                window.add_permits(1);
            }
            _ => {}
        }
    }
}

/// Sends timestamped messages at `rate` per second (0: as fast as the window
/// allows) until told to stop, the first after `phase` of a period.
async fn send(
    writer: Writer,
    room: String,
    rate: u64,
    phase: f64,
    window: Arc<Semaphore>,
    mut start: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    if start.wait_for(|go| *go).await.is_err() {
        return;
    }
    let mut ticker = (rate > 0).then(|| {
        let period = Duration::from_micros(1_000_000 / rate);
        let first = tokio::time::Instant::now() + period.mul_f64(phase);
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticker
    });
    let room = serde_json::to_string(&room).unwrap_or_default();
    loop {
        if let Some(ticker) = &mut ticker {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
        }
        let permit = tokio::select! {
            permit = window.acquire() => permit,
            _ = stop.changed() => return,
        };
        let Ok(permit) = permit else { return };
        permit.forget();
        let frame = format!(
            r#"{{"type":"chat_message","room":{room},"content":"t:{}"}}"#,
            now_micros()
        );
        if writer.send_text(&frame).await.is_err() {
            return;
        }
        if *stop.borrow() {
            return;
        }
    }
}
