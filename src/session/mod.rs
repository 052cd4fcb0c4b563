//! One task per WebSocket: reads frames, runs them through the handlers in
//! order, writes the connection's outbox to the socket, sends heartbeats, and
//! closes idle or misbehaving connections.
//!
//! Frames are processed in the order received. Chat messages are the one
//! exception to "finish one before reading the next": a chat message is
//! handed to the store and the next frame is read at once, so that a client
//! sending a burst has many messages in one group commit. Any other frame
//! waits until the chat messages before it are acknowledged, so replies still
//! come out in the order of the frames that caused them.

use crate::app::App;
use crate::handlers::{self, announce_departures, announce_offline, send_error};
use crate::hub::{Connection, ConnectionState, Flush, Identity, Outbox};
use crate::limits::TokenBucket;
use crate::protocol::{
    CloseReason, Envelope, ErrorCode, Limits, MessageType, Rejection, Timestamp,
};
use crate::wire::{FrameError, Incoming, ReadError, Stream, frame};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Consecutive failed authentications after which the connection is closed.
const MAX_FAILED_AUTHENTICATIONS: u32 = 5;

/// How long the frames before a close frame (and the close frame itself) may
/// take to reach a slow client.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the client's answer to our close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `Instant` of a wall-clock time.
fn instant_of(at: Timestamp) -> Instant {
    let from_now = at.as_millis().saturating_sub(Timestamp::now().as_millis());
    later(
        Instant::now(),
        Duration::from_millis(u64::try_from(from_now).unwrap_or(0)),
    )
}

/// `from + wait`, or a time that never comes when the sum overflows.
fn later(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait)
        .unwrap_or_else(|| from + Duration::from_secs(30 * 365 * 86_400))
}

/// Per-connection state that only the session task touches (the shared part
/// is the [`Connection`]).
pub struct Session {
    pub connection: Arc<Connection>,
    /// `auth_failed` errors in a row; reset by a successful authentication.
    failed_authentications: u32,
    /// Frames this connection may still send (`None`: no limit).
    rate: Option<TokenBucket>,
}

/// A frame read from the socket, parsed as far as its envelope.
type Inbound = Result<Envelope, Rejection>;

/// Why the read loop ended.
enum Ending {
    /// The server closes the socket (the reason is on the connection).
    Close,
    /// The client sent a close frame.
    ClientClosed,
    /// The client dropped the connection or the socket failed.
    Gone,
}

/// A socket whose WebSocket handshake is done, and what the handshake
/// decided about it.
pub struct Accepted {
    pub stream: Stream,
    /// The handshake's answer, still to be written: it goes out with the
    /// welcome, in one write.
    pub answer: Option<Bytes>,
    /// Bytes the client sent after its request head.
    pub early: Vec<u8>,
    pub client_addr: SocketAddr,
    pub user_agent: Option<String>,
    /// Who the token says this is (`None`: not authenticated yet).
    pub identity: Option<Identity>,
    /// Set when the socket is to be closed right after the upgrade.
    pub refusal: Option<CloseReason>,
}

/// Registers a connection whose handshake is done, and returns the future
/// that runs it to close. The setup happens here, outside the future, so the
/// future (which lives as long as the connection) holds only what the
/// session needs.
pub fn run(app: Arc<App>, accepted: Accepted) -> impl Future<Output = ()> + Send + 'static {
    let Accepted {
        stream,
        answer,
        early,
        client_addr,
        user_agent,
        identity,
        refusal,
    } = accepted;
    let connection = app.hub.register(client_addr, user_agent, Some(stream));
    tracing::debug!(connection = %connection.id, client = %client_addr, "connection opened");
    if let Some(answer) = answer {
        connection.outbox.preface(answer);
    }
    if let Some(reason) = refusal {
        connection.close(reason);
    }
    let over_ip_limit = app
        .config
        .max_connections_per_ip
        .is_some_and(|limit| app.hub.connections_from(client_addr.ip()) > limit);
    if over_ip_limit {
        connection.close(CloseReason::CONNECTION_LIMIT);
    }
    let identity = identity.filter(|_| connection.close_requested().is_none());
    let mut session = Session {
        connection: connection.clone(),
        failed_authentications: 0,
        rate: app
            .config
            .rate_limit
            .map(|(rate, burst)| TokenBucket::new(f64::from(rate), burst)),
    };
    let mut reader =
        SocketReader::new(connection.outbox.clone(), early, app.config.max_frame_bytes);
    async move {
        if let Some(identity) = identity {
            let elsewhere = handlers::connections_elsewhere(&app, &identity.user.id).await;
            // Over the per-user limit, this closes the connection with 4004.
            handlers::log_in(&app, &connection, identity, elsewhere);
        }
        // A connection refused at the door gets its close code and nothing else.
        let ending = if connection.close_requested().is_some() {
            Ending::Close
        } else {
            // Boxed: the welcome's history read is large and only needed once.
            Box::pin(send_welcome(&app, &connection)).await;
            session.serve(&app, &mut reader).await
        };
        Box::pin(finish(&app, &mut reader, &connection, ending)).await;
    }
}

/// Frames read and waiting for storage at most, per connection; beyond,
/// the connection is not read until storage catches up.
const WAITING_MAX: usize = 32;

/// When a frame refused for a stalled store may be tried again.
const STALLED_RETRY_MS: u64 = 1000;

/// How long a stopping server waits for a connection's chat messages in
/// flight to be stored and acknowledged before closing it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the connection's socket, held by its outbox.
type SocketReader = crate::wire::Reader<Outbox>;

/// When the session's timer must next wake it.
struct Deadlines {
    /// The next ping.
    heartbeat: Instant,
    /// When the connection counts as idle (pushed back by every frame).
    idle: Instant,
    /// The token's expiry, or the end of the grace period after it.
    token: Option<Instant>,
    in_grace: bool,
    /// When the oldest frame waiting for storage (or one older) has waited
    /// `--store-timeout-ms`; moved on lazily, when it comes.
    store: Option<Instant>,
}

impl Deadlines {
    fn new(now: Instant, config: &crate::config::Config) -> Deadlines {
        Deadlines {
            heartbeat: later(now, config.heartbeat_interval),
            idle: later(now, config.idle_timeout),
            token: None,
            in_grace: false,
            store: None,
        }
    }

    /// A new token (or none) restarts the expiry watch.
    fn watch_token(&mut self, expiry: Option<Instant>) {
        self.token = expiry;
        self.in_grace = false;
    }

    fn next(&self) -> Instant {
        let first = self.heartbeat.min(self.idle);
        let first = self.token.map_or(first, |token| first.min(token));
        self.store.map_or(first, |store| first.min(store))
    }
}

impl Session {
    async fn serve(&mut self, app: &Arc<App>, reader: &mut SocketReader) -> Ending {
        let connection = self.connection.clone();
        let outbox = connection.outbox.clone();
        let config = &app.config;
        // One timer serves the heartbeat, the idle limit and the token's
        // expiry: it is set to the earliest of them, and moved later lazily
        // (a frame that pushes the idle limit back does not touch it).
        let mut deadlines = Deadlines::new(Instant::now(), config);
        let clock = tokio::time::sleep_until(deadlines.next());
        tokio::pin!(clock);
        // Frames that must wait for earlier chat messages to be stored, in
        // order, with when they began to wait. Reading goes on meanwhile
        // (pings are answered, activity counts) until WAITING_MAX wait.
        let mut waiting: VecDeque<(Instant, Box<Inbound>)> = VecDeque::new();
        // Set when the server started stopping: until when this connection
        // waits for its chat messages in flight.
        let mut draining: Option<tokio::time::Instant> = None;
        let mut watched_expiry: Option<Timestamp> = None;
        // Frames are waiting for the socket to take them.
        let mut blocked = false;
        loop {
            let expiry = connection.expires_at();
            if expiry != watched_expiry {
                watched_expiry = expiry;
                deadlines.watch_token(expiry.map(instant_of));
            }
            let due = deadlines.next();
            if due < clock.deadline() {
                clock.as_mut().reset(due);
            }
            // What the bell may have rung for: a close, frames left for the
            // socket, a stored chat message letting a waiting frame through.
            if connection.close_requested().is_some() {
                return Ending::Close;
            }
            // Shutdown: nothing more is read; once the chat messages in
            // flight are stored and acknowledged (or the time is up), the
            // connection closes with 1001.
            if connection.is_draining() {
                let deadline =
                    *draining.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_TIMEOUT);
                let settled = waiting.is_empty() && self.connection.pending_writes.count() == 0;
                if settled || tokio::time::Instant::now() >= deadline {
                    connection.close(CloseReason::SHUTTING_DOWN);
                    return Ending::Close;
                }
                self.connection.pending_writes.watch(true);
                if deadline < clock.deadline() {
                    clock.as_mut().reset(deadline);
                }
            }
            if outbox.take_backlog() {
                blocked = true;
            }
            if waiting.front().is_some_and(|(_, inbound)| {
                self.connection.pending_writes.count() < self.write_limit(app, inbound)
            }) && let Some((_, inbound)) = waiting.pop_front()
            {
                if waiting.is_empty() {
                    self.connection.pending_writes.watch(false);
                }
                Box::pin(self.process(app, *inbound)).await;
                continue;
            }
            tokio::select! {
                biased;
                () = outbox.rung() => {}
                ready = outbox.writable(), if blocked => {
                    if ready.is_err() {
                        return Ending::Gone;
                    }
                    match outbox.flush() {
                        Flush::Done => blocked = false,
                        Flush::Blocked => {}
                        Flush::Failed => return Ending::Gone,
                    }
                }
                incoming = reader.next_message(), if waiting.len() < WAITING_MAX && draining.is_none() => {
                    let message = match incoming {
                        Ok(Some(message)) => message,
                        Ok(None) | Err(ReadError::Io) => return Ending::Gone,
                        Err(ReadError::Frame(err)) => {
                            connection.close(match err {
                                FrameError::TooBig => CloseReason::FRAME_TOO_BIG,
                                FrameError::InvalidUtf8 => CloseReason::INVALID_PAYLOAD,
                                FrameError::Protocol(_) => CloseReason::PROTOCOL_ERROR,
                            });
                            return Ending::Close;
                        }
                    };
                    connection.touch();
                    deadlines.idle = later(Instant::now(), config.idle_timeout);
                    let inbound = match message {
                        Incoming::Text(text) => Envelope::parse(&text),
                        Incoming::Binary(_) => Err(Rejection::new(
                            ErrorCode::UnsupportedFrame,
                            "binary frames are not supported: send JSON in text frames",
                        )),
                        Incoming::Ping(payload) => {
                            connection.deliver(&frame::pong(&payload));
                            continue;
                        }
                        Incoming::Pong => continue,
                        Incoming::Close(_) => return Ending::ClientClosed,
                    };
                    connection.count_message();
                    if waiting.is_empty()
                        && self.connection.pending_writes.count() < self.write_limit(app, &inbound)
                    {
                        Box::pin(self.process(app, inbound)).await;
                    } else {
                        // Watch before the count is read again at the top.
                        self.connection.pending_writes.watch(true);
                        let now = Instant::now();
                        if deadlines.store.is_none() {
                            deadlines.store = Some(later(now, config.store_timeout));
                        }
                        waiting.push_back((now, Box::new(inbound)));
                    }
                }
                () = &mut clock => {
                    let now = Instant::now();
                    // Storage is stalled: frames that waited too long are
                    // answered with `unavailable` (a chat message already in
                    // flight keeps its ack, sent whenever it is stored).
                    if deadlines.store.is_some_and(|at| at <= now) {
                        deadlines.store = None;
                        while let Some((since, _)) = waiting.front() {
                            if later(*since, config.store_timeout) > now {
                                deadlines.store = Some(later(*since, config.store_timeout));
                                break;
                            }
                            if let Some((_, inbound)) = waiting.pop_front() {
                                self.time_out(app, *inbound);
                            }
                        }
                    }
                    match deadlines.token {
                        Some(at) if at <= now && deadlines.in_grace => {
                            connection.close(CloseReason::TOKEN_EXPIRED);
                            return Ending::Close;
                        }
                        Some(at) if at <= now => {
                            deadlines.token = Some(later(now, config.token_grace));
                            deadlines.in_grace = true;
                            send_error(
                                app,
                                &connection,
                                ErrorCode::TokenExpired,
                                &format!(
                                    "your token has expired: send `authentication` with a new one within {} ms",
                                    config.token_grace.as_millis()
                                ),
                                None,
                                None,
                            );
                        }
                        _ => {}
                    }
                    if deadlines.idle <= now {
                        connection.set_state(ConnectionState::Inactive);
                        connection.close(CloseReason::IDLE);
                        return Ending::Close;
                    }
                    if deadlines.heartbeat <= now {
                        connection.deliver(&frame::ping());
                        connection.outbox.trim();
                        deadlines.heartbeat = later(now, config.heartbeat_interval);
                    }
                    clock.as_mut().reset(deadlines.next());
                }
            }
        }
    }

    /// Answers a frame that waited for storage longer than
    /// `--store-timeout-ms`: `unavailable`, to retry later (a frame that was
    /// refused already gets its own error).
    fn time_out(&mut self, app: &Arc<App>, inbound: Inbound) {
        let (reference, code, message, retry) = match inbound {
            Err(rejection) => (
                rejection.reference,
                rejection.code,
                rejection.message,
                rejection.retry_after_ms,
            ),
            Ok(envelope) => (
                envelope.reference,
                ErrorCode::Unavailable,
                format!(
                    "storage did not answer within {} ms: `{}` was not carried out, send it again",
                    app.config.store_timeout.as_millis(),
                    envelope.kind.as_str()
                ),
                Some(STALLED_RETRY_MS),
            ),
        };
        send_error(
            app,
            &self.connection,
            code,
            &message,
            retry,
            reference.as_deref(),
        );
    }

    /// How many chat messages may still be waiting for storage when this
    /// frame is processed: a chat message may join the ones in flight (up to
    /// the configured bound), anything else waits for all of them.
    fn write_limit(&self, app: &App, inbound: &Inbound) -> usize {
        match inbound {
            Ok(envelope) => handlers::writes_in_flight_allowed(app, envelope.kind),
            Err(_) => 1,
        }
    }

    /// Checks and runs one frame; any failure becomes an `error` frame.
    async fn process(&mut self, app: &Arc<App>, inbound: Inbound) {
        let (reference, result) = match inbound {
            Err(rejection) => (rejection.reference.clone(), Err(rejection)),
            Ok(envelope) => {
                app.hub.stats().count_in(envelope.kind);
                let reference = envelope.reference.clone();
                let result = match self.within_rate(envelope.kind) {
                    Ok(()) => self.check_and_dispatch(app, envelope).await,
                    Err(wait) => Err(Rejection::new(
                        ErrorCode::RateLimited,
                        format!("too many frames: slow down (retry in {wait} ms)"),
                    )
                    .with_reference(reference.clone())
                    .with_retry_after(Some(wait))),
                };
                (reference, result)
            }
        };
        let Err(rejection) = result else {
            return;
        };
        send_error(
            app,
            &self.connection,
            rejection.code,
            &rejection.message,
            rejection.retry_after_ms,
            reference.as_deref(),
        );
        if rejection.code == ErrorCode::AuthFailed {
            // Who failed, from where and why; never the token or password.
            tracing::info!(
                connection = %self.connection.id,
                client = %self.connection.client_addr.ip(),
                reason = %rejection.message,
                "failed authentication"
            );
            self.failed_authentications += 1;
            if self.failed_authentications >= MAX_FAILED_AUTHENTICATIONS {
                self.connection.close(CloseReason::POLICY);
            }
        }
    }

    /// Takes a token from the connection's rate limit; `ping` is free, so
    /// that a limited client can still keep its connection alive.
    fn within_rate(&mut self, kind: MessageType) -> Result<(), u64> {
        match &mut self.rate {
            Some(bucket) if kind != MessageType::Ping => bucket
                .take(std::time::Instant::now())
                .map_err(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
            _ => Ok(()),
        }
    }

    async fn check_and_dispatch(
        &mut self,
        app: &Arc<App>,
        envelope: Envelope,
    ) -> Result<(), Rejection> {
        let reference = envelope.reference.clone();
        if !self.connection.is_announced()
            && !envelope.kind.allowed_before_login(app.config.guest_chat)
        {
            let hint = if envelope.kind == MessageType::UserJoin {
                "guest chat is disabled on this server: authenticate first"
            } else {
                "authenticate first (or name yourself with user_join where guest chat is enabled)"
            };
            return Err(Rejection::new(ErrorCode::NotAuthenticated, hint).with_reference(reference));
        }
        let kind = envelope.kind;
        let message = envelope.into_message(Limits {
            max_message_chars: app.config.max_message_chars,
        })?;
        match handlers::dispatch(app, &self.connection, message, reference.as_deref()).await {
            Ok(()) => {
                if kind == MessageType::Authentication {
                    self.failed_authentications = 0;
                }
                Ok(())
            }
            Err(err) => Err(Rejection::new(err.code(), err.client_message())
                .with_reference(reference)
                .with_retry_after(err.retry_after_ms())),
        }
    }
}

/// Sends the welcome as the connection's first frame, ahead of anything
/// broadcast to it meanwhile, and starts its outbox.
async fn send_welcome(app: &App, connection: &Connection) {
    let frame = handlers::welcome(app, connection).await;
    app.hub.stats().count_out(frame.kind, 1);
    connection.outbox.release(frame.bytes);
}

/// Closes the socket as the ending requires and takes the connection out of
/// the hub, announcing departures unless the server is shutting down.
async fn finish(app: &App, reader: &mut SocketReader, connection: &Connection, ending: Ending) {
    let reason = match ending {
        Ending::Close => connection.close_reason().unwrap_or(CloseReason::NORMAL),
        Ending::Gone | Ending::ClientClosed => {
            connection.close(CloseReason::NORMAL);
            CloseReason::NORMAL
        }
    };
    tracing::debug!(
        connection = %connection.id,
        client = %connection.client_addr,
        code = reason.code,
        reason = reason.reason,
        "connection closed"
    );
    if connection.state() != ConnectionState::Inactive {
        connection.set_state(ConnectionState::Disconnected);
    }
    match ending {
        Ending::Close => close_socket(reader, connection, reason, true).await,
        // Answer the client's close frame with ours, and go.
        Ending::ClientClosed => close_socket(reader, connection, reason, false).await,
        Ending::Gone => {}
    }
    let (departures, offline) = app.hub.unregister(connection);
    // Shutdown closes every connection; announcing each one to the others
    // would only flood sockets that are closing anyway.
    if reason != CloseReason::SHUTTING_DOWN {
        announce_departures(app, &departures);
        if let Some(user) = offline {
            announce_offline(app, &user, None);
        }
    }
}

/// Writes what is still queued (unless the queue is what overflowed), then
/// the close frame; with `await_answer`, waits briefly for the client's own
/// close frame, so that the socket is not reset under unread data.
async fn close_socket(
    reader: &mut SocketReader,
    connection: &Connection,
    reason: CloseReason,
    await_answer: bool,
) {
    let outbox = &connection.outbox;
    outbox.seal(
        frame::close(reason.code, reason.reason),
        reason == CloseReason::SLOW_CONSUMER,
    );
    let writing = async {
        loop {
            match outbox.flush() {
                Flush::Done => return true,
                Flush::Failed => return false,
                Flush::Blocked => {
                    if outbox.writable().await.is_err() {
                        return false;
                    }
                }
            }
        }
    };
    // A client that reads slowly still gets its close frame, within reason.
    let written = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, writing).await;
    if written != Ok(true) || !await_answer {
        return;
    }
    let answer = async {
        loop {
            match reader.next_message().await {
                Ok(Some(Incoming::Close(_)) | None) | Err(ReadError::Io) => break,
                Ok(Some(_)) => {}
                // Past a framing error no message is decoded any more, but
                // frames are still told apart by their headers: the
                // client's close frame ends the handshake, and the socket
                // is closed at once (RFC 6455 §7.1.7).
                Err(ReadError::Frame(_)) => {
                    reader.skip_to_close().await;
                    break;
                }
            }
        }
    };
    // The client may be gone or stuck; the close is best effort either way.
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, answer).await;
}
