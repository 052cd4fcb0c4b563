//! `authentication`: log a connection in with a token.
//!
//! Also home of [`log_in`], which a token given at upgrade uses too, so that
//! both ways of logging in announce the user in the same way.

use super::{HandlerError, announce_departures, announce_offline, announce_online};
use crate::app::App;
use crate::auth::{AuthError, LoginError};
use crate::hub::{Connection, ConnectionState, Identity};
use crate::protocol::{Authentication, CloseReason, ServerMessage};
use std::sync::Arc;

pub async fn authenticate(
    app: &App,
    connection: &Arc<Connection>,
    request: Authentication,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let identity = match (request.token, request.username, request.password) {
        (Some(token), _, _) => app
            .tokens
            .verify(&token)
            .map_err(HandlerError::AuthFailed)?,
        (None, Some(username), Some(password)) => {
            let client = connection.client_addr.ip();
            match app.accounts.login(client, &username, &password).await {
                Ok(login) => login.identity,
                Err(LoginError::RateLimited(wait)) => return Err(HandlerError::RateLimited(wait)),
                Err(LoginError::BadCredentials) => {
                    return Err(HandlerError::AuthFailed(AuthError::BadCredentials));
                }
                Err(LoginError::Store(err)) => return Err(HandlerError::from(err)),
            }
        }
        _ => return Err(HandlerError::AuthFailed(AuthError::BadCredentials)),
    };
    let user = identity.user.clone();
    let elsewhere = connections_elsewhere(app, &user.id).await;
    if !log_in(app, connection, identity, elsewhere) {
        return Ok(());
    }
    app.send(
        connection,
        &ServerMessage::AuthSuccess {
            user: &user,
            connection_id: &connection.id,
        },
        reference,
    );
    Ok(())
}

/// The user's connections on other nodes, where a per-user limit needs
/// them (0 on one node).
pub async fn connections_elsewhere(app: &App, user_id: &str) -> usize {
    match (
        app.config.max_connections_per_user,
        app.broker.connections_elsewhere(user_id),
    ) {
        (Some(_), Some(reading)) => reading.await,
        _ => 0,
    }
}

/// Makes `identity` the connection's user and announces the change: a new
/// user's first connection gets `user_join`, a replaced user's last one
/// `user_leave`. A connection that changes user leaves its rooms first.
///
/// Returns false (and closes the connection with 4004) when the user already
/// has as many connections as allowed, here and on other nodes
/// (`elsewhere`, see [`connections_elsewhere`]).
pub fn log_in(app: &App, connection: &Connection, identity: Identity, elsewhere: usize) -> bool {
    let same_user = connection
        .user()
        .is_some_and(|user| user.id == identity.user.id);
    if let Some(limit) = app.config.max_connections_per_user
        && !same_user
        && app.hub.user_connections(&identity.user.id) + elsewhere >= limit
    {
        connection.close(CloseReason::CONNECTION_LIMIT);
        return false;
    }
    if connection.user().as_ref() != Some(&identity.user) {
        let departures = app.hub.leave_all_rooms(connection);
        announce_departures(app, &departures);
    }
    let change = app.hub.set_identity(connection, identity);
    connection.set_state(ConnectionState::Authenticated);
    if let Some(user) = change.left {
        announce_offline(app, &user, Some(&connection.id));
    }
    if let Some(user) = change.joined {
        announce_online(app, &user, &connection.id);
    }
    true
}
