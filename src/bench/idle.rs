//! `idle`: open many authenticated connections (one user each unless told
//! otherwise), wait for every welcome, and hold them. Optionally some of them
//! subscribe to everyone's online announcements first (`--subscribers`),
//! every connection joins one room after its welcome (`--room`), and the
//! connections survive a server restart by reconnecting and rejoining with
//! `since_id` (`--reconnect`).

use super::client::{Endpoint, Reader, Socket, TokenBook, Writer, rss_kib, sockets_in_time_wait};
use super::{Report, Target, interrupted};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;

/// Prefix of the bench users' ids: connection `n` is user `idle-n`.
const USER_PREFIX: &str = "idle-";
/// How an announcement starts (the server writes `type` first); checked
/// without parsing, since a subscriber reads one per connection of the run.
const USER_JOIN_START: &[u8] = br#"{"type":"user_join","#;
/// How `room_joined` starts.
const ROOM_JOINED_START: &[u8] = br#"{"type":"room_joined","#;
/// How presence events and counts start.
const PRESENCE_START: &[u8] = br#"{"type":"presence","#;
const PRESENCE_COUNT_START: &[u8] = br#"{"type":"presence_count","#;
/// Where the user's id starts in an announcement of a bench user.
const BENCH_USER_ID: &[u8] = br#""id":"idle-"#;

/// What an idle run does besides connecting.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub connections: usize,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    pub hold: u64,
    /// Distinct users (0: one per connection).
    pub users: usize,
    /// Connections that subscribe to every user before the others connect.
    pub subscribers: usize,
    /// A room every connection joins after its welcome.
    pub room: Option<String>,
    /// Reconnect (and rejoin with `since_id`) when the server goes away.
    pub reconnect: bool,
}

/// Counts shared by every connection of a run.
#[derive(Default)]
struct Tally {
    /// `user_join` frames about non-subscriber users, over all subscribers.
    announced: AtomicU64,
    presence_events: AtomicU64,
    presence_counts: AtomicU64,
    /// Connections whose socket ended while held.
    dropped: AtomicUsize,
    /// Connections back (welcomed, and rejoined) after a drop.
    recovered: AtomicUsize,
    reconnect_failures: AtomicUsize,
    first_reconnect_failure: Mutex<Option<String>>,
    /// Times of the first drop and the last recovery.
    storm: Mutex<(Option<Instant>, Option<Instant>)>,
    /// Subscribers whose socket closed before the run ended.
    subscribers_cut: AtomicUsize,
}

/// One connection's identity in the run.
#[derive(Clone)]
struct Seat {
    index: usize,
    target: Target,
    endpoint: Arc<Endpoint>,
    tokens: Arc<TokenBook>,
    options: Arc<Options>,
    tally: Arc<Tally>,
}

impl Seat {
    fn subscriber(&self) -> bool {
        self.index < self.options.subscribers
    }

    /// Connects, reads the welcome, subscribes or joins as the run wants.
    /// Returns the socket and the newest message id seen in the room.
    async fn open(&self, since_id: Option<u64>) -> Result<(Socket, Option<u64>), String> {
        let mut socket = Socket::connect(
            &self.endpoint,
            &self.target,
            self.index,
            self.tokens.get(self.index),
        )
        .await?;
        if self.subscriber() {
            socket
                .request(r#"{"type":"presence_subscribe"}"#, "presence_state")
                .await?;
        }
        let mut newest = since_id;
        if let Some(room) = &self.options.room {
            let join = match since_id {
                Some(id) => format!(r#"{{"type":"room_join","room":"{room}","since_id":{id}}}"#),
                None => format!(r#"{{"type":"room_join","room":"{room}"}}"#),
            };
            socket.writer.send_text(&join).await?;
            loop {
                let text = socket.reader.next_text().await.ok_or("connection closed")?;
                // The reply lists up to 100 members: found by its start,
                // not by parsing it whole.
                if text.starts_with(ROOM_JOINED_START) {
                    newest = newest.max(last_message_id(text));
                    break;
                }
                let head = super::client::Head::of(text);
                match head.kind {
                    "room_joined" => {
                        newest = newest.max(last_message_id(text));
                        break;
                    }
                    "error" => {
                        return Err(format!("error {}", head.error_code.unwrap_or("?")));
                    }
                    _ => {}
                }
            }
        }
        Ok((socket, newest))
    }

    /// Reads until the socket ends, counting what the run looks at, and
    /// answering pings. Returns the newest room message id seen.
    async fn hold(
        &self,
        reader: &mut Reader,
        _writer: Writer,
        mut newest: Option<u64>,
    ) -> Option<u64> {
        let subscriber = self.subscriber();
        while let Some(text) = reader.next_text().await {
            if subscriber && text.starts_with(USER_JOIN_START) {
                if announced_index(text).is_some_and(|i| i >= self.options.subscribers) {
                    self.tally.announced.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if text.starts_with(PRESENCE_START) {
                self.tally.presence_events.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if text.starts_with(PRESENCE_COUNT_START) {
                self.tally.presence_counts.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if super::client::Head::of(text).kind == "chat_message" {
                newest = newest.max(last_message_id(text));
            }
        }
        newest
    }

    /// Holds the connection; with `--reconnect`, comes back after each drop
    /// with growing, jittered pauses, until the run ends.
    async fn live(self, socket: Socket, mut newest: Option<u64>) {
        let Socket { mut reader, writer } = socket;
        newest = self.hold(&mut reader, writer, newest).await;
        // The old socket goes before a new one is opened: 19,000 of each
        // would pass the file-descriptor limit.
        drop(reader);
        if self.subscriber() {
            self.tally.subscribers_cut.fetch_add(1, Ordering::Relaxed);
        }
        if !self.options.reconnect {
            return;
        }
        {
            let mut storm = self.tally.storm.lock().await;
            storm.0.get_or_insert_with(Instant::now);
        }
        self.tally.dropped.fetch_add(1, Ordering::Relaxed);
        // Spread the first attempts over 100 ms, as real clients' timers are.
        let mut pause = Duration::from_millis(20 + (self.index as u64 * 7919) % 100);
        loop {
            tokio::time::sleep(pause).await;
            match self.open(newest).await {
                Ok((socket, seen)) => {
                    self.tally.recovered.fetch_add(1, Ordering::Relaxed);
                    self.tally.storm.lock().await.1 = Some(Instant::now());
                    let Socket { mut reader, writer } = socket;
                    self.hold(&mut reader, writer, seen).await;
                    return;
                }
                Err(err) => {
                    if self
                        .tally
                        .reconnect_failures
                        .fetch_add(1, Ordering::Relaxed)
                        == 0
                    {
                        *self.tally.first_reconnect_failure.lock().await = Some(err);
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// The `N` of the first `"id":"idle-N"` in a frame, found without parsing
/// the JSON.
fn announced_index(text: &[u8]) -> Option<usize> {
    let key = BENCH_USER_ID;
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let mut index = None::<usize>;
    for digit in text[at..].iter().take_while(|b| b.is_ascii_digit()) {
        index = Some(
            index
                .unwrap_or(0)
                .checked_mul(10)?
                .checked_add(usize::from(digit - b'0'))?,
        );
    }
    index
}

/// The largest message `id` in a `room_joined` or `chat_message` frame.
fn last_message_id(text: &[u8]) -> Option<u64> {
    const NO_MESSAGES: &[u8] = br#""recent_messages":[]"#;
    // Near the end of a `room_joined`: look from there.
    if text
        .windows(NO_MESSAGES.len())
        .rev()
        .any(|w| w == NO_MESSAGES)
    {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(text).ok()?;
    let single = value["message"]["id"].as_u64();
    let recent = value["recent_messages"]
        .as_array()
        .and_then(|messages| messages.iter().filter_map(|m| m["id"].as_u64()).max());
    single.max(recent)
}

pub async fn run(target: &Target, options: Options) -> Report {
    let connections = options.connections;
    let users = if options.users == 0 {
        connections
    } else {
        options.users
    };
    let mut title = format!("idle: {connections} authenticated connections of {users} users");
    if options.subscribers > 0 {
        title += &format!(", {} subscribed to everyone", options.subscribers);
    }
    if let Some(room) = &options.room {
        title += &format!(", all in room `{room}`");
    }
    let mut report = Report::new(title);
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
    let tokens = Arc::new(TokenBook::mint(target, USER_PREFIX, users));
    let rss_before = options.server_pid.and_then(rss_kib);
    let options = Arc::new(options);
    let tally = Arc::new(Tally::default());
    let seat = |index| Seat {
        index,
        target: target.clone(),
        endpoint: endpoint.clone(),
        tokens: tokens.clone(),
        options: options.clone(),
        tally: tally.clone(),
    };

    // Subscribers first, one after another, outside the measured rate.
    let mut held: Vec<JoinHandle<()>> = Vec::with_capacity(connections);
    let mut failures = Vec::new();
    let subscribers = options.subscribers.min(connections);
    for index in 0..subscribers {
        let seat = seat(index);
        match seat.open(None).await {
            Ok((socket, newest)) => held.push(tokio::spawn(seat.live(socket, newest))),
            Err(err) => failures.push(err),
        }
    }

    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut latencies = Vec::with_capacity(connections);
    let started = Instant::now();
    let opening = async {
        let mut tasks = Vec::with_capacity(connections);
        for index in subscribers..connections {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let seat = seat(index);
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                let opened = seat.open(None).await;
                drop(permit);
                let (socket, newest) = opened?;
                let latency = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                Ok::<_, String>((latency, tokio::spawn(seat.live(socket, newest))))
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
    let measured = open.saturating_sub(subscribers);
    report.add("connections_open", open as u64, "");
    let rate_label = if options.room.is_some() {
        "connects+joins/s"
    } else {
        "connections/s"
    };
    report.add(
        "connect_rate",
        (measured as f64 / elapsed.as_secs_f64()).round(),
        rate_label,
    );
    report.add_latency("connect_latency", &mut latencies);
    report.add("failures", failures.len() as u64, "");
    if let Some(first) = failures.first() {
        report.add("first_failure", first.clone(), "");
    }
    if let (Some(pid), Some(before)) = (options.server_pid, rss_before) {
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
    if subscribers > 0 {
        // Every subscriber should hear of every other connection's user.
        let expected = (subscribers * measured) as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tally.announced.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.add("user_joins_expected", expected, "");
        report.add(
            "user_joins_received",
            tally.announced.load(Ordering::Relaxed),
            "",
        );
        report.add(
            "subscribers_cut",
            tally.subscribers_cut.load(Ordering::Relaxed) as u64,
            "",
        );
    }
    if !report.partial {
        if options.reconnect {
            if let Some(room) = &options.room {
                // A message the connections will recover from: each then
                // rejoins with its id as `since_id`.
                if let Err(err) = post_before_storm(&seat(0), room).await {
                    report.add("error", format!("posting before the storm: {err}"), "");
                }
            }
            eprintln!("idle: all open; restart the server, the connections will come back");
            hold_through_storm(&tally, open, options.hold).await;
            report_storm(&mut report, &tally, open).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(options.hold)) => {}
                () = interrupted() => {}
            }
        }
    }
    if options.room.is_some() {
        report.add(
            "presence_events_received",
            tally.presence_events.load(Ordering::Relaxed),
            "",
        );
        report.add(
            "presence_counts_received",
            tally.presence_counts.load(Ordering::Relaxed),
            "",
        );
    }
    for connection in held {
        connection.abort();
    }
    report
}

/// Sends one chat message to `room` on a connection of its own, and waits
/// until the held connections have read it.
async fn post_before_storm(seat: &Seat, room: &str) -> Result<(), String> {
    let (mut socket, _) = seat.open(None).await?;
    let message =
        serde_json::json!({"type": "chat_message", "room": room, "content": "before the storm"});
    socket.request(&message.to_string(), "message_ack").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Waits up to `hold` seconds for the connections to drop and all come back.
async fn hold_through_storm(tally: &Tally, open: usize, hold: u64) {
    let deadline = Instant::now() + Duration::from_secs(hold);
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let dropped = tally.dropped.load(Ordering::Relaxed);
        let recovered = tally.recovered.load(Ordering::Relaxed);
        if dropped >= open && recovered >= open {
            return;
        }
        if last_report.elapsed() >= Duration::from_secs(1) && dropped > 0 {
            eprintln!("idle: {dropped} dropped, {recovered} back");
            last_report = Instant::now();
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = interrupted() => return,
        }
    }
}

async fn report_storm(report: &mut Report, tally: &Tally, open: usize) {
    let dropped = tally.dropped.load(Ordering::Relaxed);
    let recovered = tally.recovered.load(Ordering::Relaxed);
    report.add("dropped", dropped as u64, "");
    report.add("recovered", recovered as u64, "");
    report.add(
        "reconnect_attempts_failed",
        tally.reconnect_failures.load(Ordering::Relaxed) as u64,
        "",
    );
    if let Some(first) = tally.first_reconnect_failure.lock().await.clone() {
        report.add("first_reconnect_failure", first, "");
    }
    let (first_drop, last_back) = *tally.storm.lock().await;
    if let (Some(first), Some(last)) = (first_drop, last_back)
        && recovered >= open
    {
        report.add(
            "recovery_time",
            super::report::round(last.duration_since(first).as_secs_f64()),
            "s from the first drop to the last rejoin",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_recognised_without_parsing() {
        let frame = br#"{"type":"user_join","user":{"id":"idle-1234","username":"idle-1234","kind":"user"},"timestamp":"2026-12-05T00:00:00.000Z"}"#;
        assert!(frame.starts_with(USER_JOIN_START));
        assert_eq!(announced_index(frame), Some(1234));
        assert_eq!(
            announced_index(br#"{"type":"user_join","user":{"id":"bob"}}"#),
            None
        );
        let joined =
            br#"{"type":"room_joined","recent_messages":[{"id":7},{"id":9}],"missed":false}"#;
        assert_eq!(last_message_id(joined), Some(9));
        assert_eq!(
            last_message_id(br#"{"type":"chat_message","message":{"id":12}}"#),
            Some(12)
        );
    }
}
