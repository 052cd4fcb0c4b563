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

mod pending;

pub use pending::PendingWrites;

use crate::app::App;
use crate::handlers::{self, announce_departures, announce_offline, send_error};
use crate::hub::{Connection, ConnectionState, Identity, OutFrame};
use crate::limits::TokenBucket;
use crate::protocol::{
    CloseReason, Envelope, ErrorCode, GLOBAL_ROOM, Limits, MessageType, Rejection, ServerInfo,
    ServerMessage, Timestamp, WelcomeLimits,
};
use crate::store::Page;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

/// Frames written to the socket with one flush, at most.
const MAX_WRITE_BATCH: usize = 256;

/// Consecutive failed authentications after which the connection is closed.
const MAX_FAILED_AUTHENTICATIONS: u32 = 5;

/// How long to wait for the client's answer to our close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// A deadline that never comes (for timers with nothing to wait for).
const FAR_FUTURE: Duration = Duration::from_secs(365 * 86_400);

/// The `Instant` of a wall-clock time (far away for `None`).
fn instant_of(at: Option<Timestamp>) -> Instant {
    match at {
        Some(at) => {
            let from_now = at.as_millis().saturating_sub(Timestamp::now().as_millis());
            Instant::now() + Duration::from_millis(u64::try_from(from_now).unwrap_or(0))
        }
        None => Instant::now() + FAR_FUTURE,
    }
}

/// Per-connection state that only the session task touches (the shared part
/// is the [`Connection`]).
pub struct Session {
    pub connection: Arc<Connection>,
    /// Chat messages handed to the store and not yet acknowledged.
    pub pending_writes: Arc<PendingWrites>,
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
    /// The client closed the socket or the socket failed.
    Gone,
}

/// Runs a connection from upgrade to close.
pub async fn run(
    app: Arc<App>,
    mut socket: WebSocket,
    client_addr: SocketAddr,
    user_agent: Option<String>,
    identity: Option<Identity>,
    refusal: Option<CloseReason>,
) {
    let (connection, mut outbox) = app.hub.register(client_addr, user_agent);
    if let Some(reason) = refusal {
        connection.close(reason);
    }
    let over_ip_limit = app
        .config
        .max_connections_per_ip
        .is_some_and(|limit| app.hub.connections_from(client_addr.ip()) > limit);
    if over_ip_limit {
        connection.close(CloseReason::CONNECTION_LIMIT);
    } else if let Some(identity) = identity.filter(|_| connection.close_requested().is_none()) {
        // Over the per-user limit, this closes the connection with 4004.
        handlers::log_in(&app, &connection, identity);
    }
    let mut session = Session {
        connection: connection.clone(),
        pending_writes: Arc::new(PendingWrites::default()),
        failed_authentications: 0,
        rate: app
            .config
            .rate_limit
            .map(|(rate, burst)| TokenBucket::new(f64::from(rate), burst)),
    };
    // A connection refused at the door gets its close code and nothing else.
    let ending = if connection.close_requested().is_some() {
        Ending::Close
    } else {
        match send_welcome(&app, &mut socket, &connection).await {
            Ok(()) => session.serve(&app, &mut socket, &mut outbox).await,
            Err(_) => Ending::Gone,
        }
    };
    finish(&app, socket, &connection, outbox, ending).await;
}

impl Session {
    async fn serve(
        &mut self,
        app: &Arc<App>,
        socket: &mut WebSocket,
        outbox: &mut mpsc::Receiver<Utf8Bytes>,
    ) -> Ending {
        let connection = self.connection.clone();
        let config = &app.config;
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + config.heartbeat_interval,
            config.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let idle = tokio::time::sleep(config.idle_timeout);
        tokio::pin!(idle);
        // A frame that must wait for earlier chat messages to be stored.
        let mut waiting: Option<Inbound> = None;
        // The token's expiry, then the end of the grace period after it.
        let token_clock = tokio::time::sleep(FAR_FUTURE);
        tokio::pin!(token_clock);
        let mut watched_expiry: Option<Timestamp> = None;
        let mut in_grace = false;
        loop {
            let expiry = connection.expires_at();
            if expiry != watched_expiry {
                watched_expiry = expiry;
                in_grace = false;
                token_clock.as_mut().reset(instant_of(expiry));
            }
            let wait_limit = waiting
                .as_ref()
                .map_or(0, |inbound| self.write_limit(app, inbound));
            tokio::select! {
                biased;
                () = connection.closed() => return Ending::Close,
                Some(first) = outbox.recv() => {
                    if write_batch(socket, first, outbox).await.is_err() {
                        return Ending::Gone;
                    }
                }
                () = self.pending_writes.below(wait_limit), if waiting.is_some() => {
                    if let Some(inbound) = waiting.take() {
                        self.process(app, inbound).await;
                    }
                }
                incoming = socket.recv(), if waiting.is_none() => {
                    let Some(Ok(frame)) = incoming else {
                        if let Some(Err(err)) = incoming
                            && is_capacity_error(err)
                        {
                            connection.close(CloseReason::FRAME_TOO_BIG);
                            return Ending::Close;
                        }
                        return Ending::Gone;
                    };
                    connection.touch();
                    idle.as_mut().reset(Instant::now() + config.idle_timeout);
                    let inbound = match frame {
                        Message::Text(text) => Envelope::parse(&text),
                        Message::Binary(_) => Err(Rejection::new(
                            ErrorCode::UnsupportedFrame,
                            "binary frames are not supported: send JSON in text frames",
                        )),
                        Message::Ping(_) | Message::Pong(_) => continue,
                        Message::Close(_) => return Ending::Gone,
                    };
                    connection.count_message();
                    if self.pending_writes.count() < self.write_limit(app, &inbound) {
                        self.process(app, inbound).await;
                    } else {
                        waiting = Some(inbound);
                    }
                }
                () = &mut token_clock, if watched_expiry.is_some() => {
                    if in_grace {
                        connection.close(CloseReason::TOKEN_EXPIRED);
                        return Ending::Close;
                    }
                    in_grace = true;
                    token_clock.as_mut().reset(Instant::now() + config.token_grace);
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
                _ = heartbeat.tick() => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return Ending::Gone;
                    }
                }
                () = &mut idle => {
                    connection.set_state(ConnectionState::Inactive);
                    connection.close(CloseReason::IDLE);
                    return Ending::Close;
                }
            }
        }
    }

    /// How many chat messages may still be waiting for storage when this
    /// frame is processed: a chat message may join the ones in flight (up to
    /// the configured bound), anything else waits for all of them.
    fn write_limit(&self, app: &App, inbound: &Inbound) -> usize {
        match inbound {
            Ok(envelope) if envelope.kind == MessageType::ChatMessage => {
                app.config.max_pending_writes
            }
            _ => 1,
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
        match handlers::dispatch(app, self, message, reference.as_deref()).await {
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

/// Sends the welcome frame straight to the socket, before anything queued.
async fn send_welcome(
    app: &App,
    socket: &mut WebSocket,
    connection: &Connection,
) -> Result<(), axum::Error> {
    let recent = if connection.is_announced() {
        match app
            .store
            .history(GLOBAL_ROOM, Page::Newest, app.config.welcome_history)
            .await
        {
            Ok(page) => page.messages,
            Err(err) => {
                tracing::error!(error = %err, "cannot read recent messages for a welcome");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let user = connection.user();
    let frame = OutFrame::from(
        ServerMessage::Welcome {
            connection_id: &connection.id,
            server: ServerInfo {
                name: "roomcast",
                version: env!("CARGO_PKG_VERSION"),
            },
            heartbeat_interval_ms: u64::try_from(app.config.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            authenticated: connection.is_authenticated(),
            user: user.as_ref(),
            recent_messages: &recent,
            limits: WelcomeLimits {
                max_frame_bytes: app.config.max_frame_bytes,
                max_message_chars: app.config.max_message_chars,
            },
        }
        .encode(None),
    );
    app.hub.stats().count_out(frame.kind, 1);
    socket.send(Message::Text(frame.text)).await
}

/// Writes `first` and whatever else is queued, then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    first: Utf8Bytes,
    outbox: &mut mpsc::Receiver<Utf8Bytes>,
) -> Result<(), axum::Error> {
    socket.feed(Message::Text(first)).await?;
    for _ in 1..MAX_WRITE_BATCH {
        match outbox.try_recv() {
            Ok(text) => socket.feed(Message::Text(text)).await?,
            Err(_) => break,
        }
    }
    socket.flush().await
}

/// Whether a read failed because the frame was larger than allowed.
fn is_capacity_error(err: axum::Error) -> bool {
    matches!(
        err.into_inner()
            .downcast::<tungstenite::Error>()
            .map(|e| *e),
        Ok(tungstenite::Error::Capacity(_))
    )
}

/// Closes the socket as the ending requires and takes the connection out of
/// the hub, announcing departures unless the server is shutting down.
async fn finish(
    app: &App,
    mut socket: WebSocket,
    connection: &Connection,
    mut outbox: mpsc::Receiver<Utf8Bytes>,
    ending: Ending,
) {
    let reason = match ending {
        Ending::Close => connection
            .close_requested()
            .map_or(CloseReason::NORMAL, CloseReason::from_code),
        Ending::Gone => {
            connection.close(CloseReason::NORMAL);
            CloseReason::NORMAL
        }
    };
    if connection.state() != ConnectionState::Inactive {
        connection.set_state(ConnectionState::Disconnected);
    }
    if matches!(ending, Ending::Close) {
        close_socket(&mut socket, &mut outbox, reason).await;
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

/// Sends what is still queued (unless the queue is what overflowed), then the
/// close frame, and waits briefly for the client to answer it.
async fn close_socket(
    socket: &mut WebSocket,
    outbox: &mut mpsc::Receiver<Utf8Bytes>,
    reason: CloseReason,
) {
    let deliver_queued = reason != CloseReason::SLOW_CONSUMER;
    let close = CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from_static(reason.reason),
    };
    let closing = async {
        if deliver_queued {
            while let Ok(text) = outbox.try_recv() {
                socket.feed(Message::Text(text)).await?;
            }
        }
        socket.send(Message::Close(Some(close))).await?;
        // Read until the client's close frame (or anything that ends the
        // stream), so the socket is not reset under unread data.
        while let Some(Ok(_)) = socket.recv().await {}
        Ok::<(), axum::Error>(())
    };
    // The client may be gone or stuck; the close is best effort either way.
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, closing).await;
}
