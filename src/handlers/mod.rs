//! What each client message does. One file per message type (or per small
//! family of them); [`dispatch`] is the routing table.
//!
//! A handler gets a validated message, the shared [`App`] and the
//! [`Connection`] it came on, sends its direct reply and any broadcasts itself,
//! and returns a [`HandlerError`] for anything the client should hear about as
//! an `error` frame. The session turns that error into the frame, so no
//! handler builds error frames by hand. Handlers do not know the session;
//! the session asks them for the rules of the conversation (the welcome,
//! [`writes_in_flight_allowed`]).

mod ai;
mod auth;
mod chat;
mod files;
mod history;
mod ping;
mod presence;
mod projects;
mod rooms;
mod typing;
mod users;
mod welcome;

pub use ai::auto_reply;
pub use auth::{connections_elsewhere, log_in};
pub use presence::tell_counts;
pub use projects::{ProjectEvent, record_and_tell};
pub use rooms::{evict, may_enter};
pub use welcome::welcome;

use crate::app::App;
use crate::auth::AuthError;
use crate::hub::{Audience, Connection, RoomDeparture};
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage, User};
use crate::store::StoreError;
use std::sync::Arc;

/// A failure a client is told about with an `error` frame.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("{0}")]
    NotAuthenticated(&'static str),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("username `{0}` is already taken")]
    UsernameTaken(String),
    #[error("authentication failed: {0}")]
    AuthFailed(#[source] AuthError),
    #[error("{0}")]
    FileTypeNotAllowed(String),
    #[error("{0}")]
    FileTooLarge(String),
    /// A failure of ours that is not the store's.
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    AiUnavailable(&'static str),
    #[error("too many requests: retry in {} ms", .0.as_millis())]
    RateLimited(std::time::Duration),
    #[error("storage failed: {0}")]
    Store(StoreError),
}

impl From<StoreError> for HandlerError {
    /// A missing reply target is the client's mistake, said in its own
    /// words; every other store error is a failure of ours.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::ReplyToNotFound => HandlerError::NotFound(err.to_string()),
            err => HandlerError::Store(err),
        }
    }
}

impl HandlerError {
    /// The protocol error code: the one place where errors meet codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            HandlerError::NotAuthenticated(_) => ErrorCode::NotAuthenticated,
            HandlerError::Validation(_) => ErrorCode::ValidationError,
            HandlerError::Forbidden(_) => ErrorCode::Forbidden,
            HandlerError::NotFound(_) => ErrorCode::NotFound,
            HandlerError::UsernameTaken(_) => ErrorCode::UsernameTaken,
            HandlerError::AuthFailed(_) => ErrorCode::AuthFailed,
            HandlerError::FileTypeNotAllowed(_) => ErrorCode::FileTypeNotAllowed,
            HandlerError::FileTooLarge(_) => ErrorCode::FileTooLarge,
            HandlerError::Internal(_) => ErrorCode::InternalError,
            HandlerError::AiUnavailable(_) => ErrorCode::AiUnavailable,
            HandlerError::RateLimited(_) => ErrorCode::RateLimited,
            HandlerError::Store(_) => ErrorCode::InternalError,
        }
    }

    /// `retry_after_ms` of a `rate_limited` error.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            HandlerError::RateLimited(wait) => {
                Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
            }
            _ => None,
        }
    }

    /// The text the client sees. Internal failures say only that they
    /// happened; the details go to the log.
    pub fn client_message(&self) -> String {
        match self.code() {
            ErrorCode::InternalError => {
                tracing::error!(error = %self, "internal error while handling a frame");
                "internal error".to_owned()
            }
            _ => self.to_string(),
        }
    }
}

/// How many of a connection's chat messages may still wait for storage when
/// a frame of `kind` is handled: a chat message joins those in flight (up
/// to `--max-pending-writes`, so that a burst shares a commit); any other
/// frame waits for all of them, so that replies come out in the order of
/// the frames that caused them.
pub fn writes_in_flight_allowed(app: &App, kind: crate::protocol::MessageType) -> usize {
    if kind == crate::protocol::MessageType::ChatMessage {
        app.config.max_pending_writes
    } else {
        1
    }
}

/// Runs the handler for one validated message.
pub async fn dispatch(
    app: &Arc<App>,
    connection: &Arc<Connection>,
    message: ClientMessage,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    match message {
        ClientMessage::Authentication(request) => {
            auth::authenticate(app, connection, request, reference).await
        }
        ClientMessage::ChatMessage(request) => chat::send(app, connection, request, reference),
        ClientMessage::UserTyping(request) => typing::typing(app, connection, request),
        ClientMessage::UserJoin(request) => users::join(app, connection, request, reference).await,
        ClientMessage::UserLeave => users::leave(app, connection, reference),
        ClientMessage::PresenceSubscribe(request) => {
            presence::subscribe(app, connection, request, reference).await
        }
        ClientMessage::PresenceUnsubscribe => presence::unsubscribe(app, connection, reference),
        ClientMessage::RoomJoin(request) => rooms::join(app, connection, request, reference).await,
        ClientMessage::RoomLeave(request) => rooms::leave(app, connection, request, reference),
        ClientMessage::History(request) => history::page(app, connection, request, reference).await,
        ClientMessage::Presence(request) => presence::state(app, connection, request, reference),
        ClientMessage::AiRequest(request) => ai::request(app, connection, request, reference),
        ClientMessage::FileUploadRequest(request) => {
            files::upload_request(app, connection, request, reference).await
        }
        ClientMessage::ProjectUpdate(request) => {
            projects::project_update(app, connection, request, reference).await
        }
        ClientMessage::TicketUpdate(request) => {
            projects::ticket_update(app, connection, request, reference).await
        }
        ClientMessage::Ping => ping::ping(app, connection, reference),
        ClientMessage::AiCancel(request) => ai::cancel(app, connection, request, reference),
    }
}

/// The connection's user; every handler past the authentication check has one.
fn speaker(connection: &Connection) -> Result<User, HandlerError> {
    connection
        .user()
        .ok_or(HandlerError::NotAuthenticated("authenticate first"))
}

/// Refuses to act in a room this connection has not joined.
fn require_joined(connection: &Connection, room: &str) -> Result<(), HandlerError> {
    if connection.in_room(room) {
        Ok(())
    } else {
        Err(HandlerError::Forbidden(format!(
            "join room `{room}` first (room_join)"
        )))
    }
}

/// Tells each room a user left (for good) that they are gone; a large room
/// learns it from its next `presence_count` instead.
pub fn announce_departures(app: &App, departures: &[RoomDeparture]) {
    for departure in departures {
        if departure.emptied {
            // A room a join created and nobody used leaves no row behind.
            let (store, room) = (app.store.clone(), departure.room.clone());
            app.runtime.spawn(async move {
                if let Err(err) = store.forget_unused_room(&room).await {
                    tracing::debug!(error = %err, room = %room, "cannot forget an unused room");
                }
            });
        }
        if departure.last_here {
            app.broker
                .membership(&departure.room, &departure.user, false);
        }
        if departure.last_of_user && !departure.quiet {
            app.tell_here(
                &Audience::Room(departure.room.clone()),
                &ServerMessage::Presence {
                    room: &departure.room,
                    event: crate::protocol::PresenceEvent::Leave,
                    user: &departure.user,
                },
                None,
            );
        }
    }
}

/// Tells the user's online subscribers that the user came online, except
/// the connection that did. Dropped if the user went offline meanwhile.
fn announce_online(app: &App, user: &User, except: &str) {
    let message = ServerMessage::UserJoin { user };
    tell_watchers(app, user, &message, Some(true), Some(except));
}

/// Tells the user's online subscribers that the user went offline (their
/// last connection closed or changed user), except `except`. Dropped if the
/// user came back meanwhile.
pub fn announce_offline(app: &App, user: &User, except: Option<&str>) {
    let message = ServerMessage::UserLeave { user };
    tell_watchers(app, user, &message, Some(false), except);
}

/// Tells the user's online subscribers that a connection of the user sent
/// `user_leave`, whether or not the user has other connections.
fn announce_user_leave(app: &App, user: &User, except: &str) {
    let message = ServerMessage::UserLeave { user };
    tell_watchers(app, user, &message, None, Some(except));
}

/// Publishes an online announcement to the connections watching `user`
/// (see [`Audience::Watchers`] for `if_online`).
fn tell_watchers(
    app: &App,
    user: &User,
    message: &ServerMessage<'_>,
    if_online: Option<bool>,
    except: Option<&str>,
) {
    if app.broker.spans_nodes() {
        // The deployment decides whether the user came or went (they may
        // be online on another node); every node's watchers hear it.
        let frame = crate::hub::OutFrame::from(message.encode(None));
        match if_online {
            Some(arrived) => app.broker.announce(user, arrived, frame, except),
            None => app.broker.publish(
                Audience::Watchers {
                    user: user.clone(),
                    if_online,
                },
                frame,
                except,
            ),
        }
        return;
    }
    // A crowd mostly has no watchers: then there is nothing to encode.
    if !app.hub.is_watched(&user.id) {
        return;
    }
    let audience = Audience::Watchers {
        user: user.clone(),
        if_online,
    };
    app.publish(audience, message, except);
}

/// Sends an `error` frame and counts it.
pub fn send_error(
    app: &App,
    connection: &Connection,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
    reference: Option<&str>,
) {
    app.hub.stats().count_error(code);
    app.send(
        connection,
        &ServerMessage::Error {
            error_code: code,
            message,
            retry_after_ms,
        },
        reference,
    );
}

/// Like [`send_error`] for an error that ends a long request and must not be
/// dropped: waits up to `patience` for room in the outbox.
pub async fn send_error_patiently(
    app: &App,
    connection: &Connection,
    code: ErrorCode,
    message: &str,
    reference: Option<&str>,
    patience: std::time::Duration,
) {
    app.hub.stats().count_error(code);
    let error = ServerMessage::Error {
        error_code: code,
        message,
        retry_after_ms: None,
    };
    app.send_patiently(connection, &error, reference, patience)
        .await;
}

/// Sends the `error` frame for a handler failure.
pub fn report(app: &App, connection: &Connection, error: &HandlerError, reference: Option<&str>) {
    send_error(
        app,
        connection,
        error.code(),
        &error.client_message(),
        error.retry_after_ms(),
        reference,
    );
}
