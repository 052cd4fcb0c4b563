//! `authentication`: log a connection in with a token.
//!
//! Also home of [`log_in`], which a token given at upgrade uses too, so that
//! both ways of logging in announce the user in the same way.

use super::{HandlerError, announce_departures, announce_offline, announce_online};
use crate::app::App;
use crate::auth::AuthError;
use crate::hub::{Connection, ConnectionState, Identity};
use crate::protocol::{Authentication, ServerMessage};
use crate::session::Session;

pub async fn authenticate(
    app: &App,
    session: &mut Session,
    request: Authentication,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let identity = match request.token {
        Some(token) => app.tokens.verify(&token),
        // Accounts with passwords are not stored by this build, so no
        // username and password can match.
        None => Err(AuthError::BadCredentials),
    }
    .map_err(HandlerError::AuthFailed)?;
    let user = identity.user.clone();
    log_in(app, &session.connection, identity);
    app.send(
        &session.connection,
        &ServerMessage::AuthSuccess {
            user: &user,
            connection_id: &session.connection.id,
        },
        reference,
    );
    Ok(())
}

/// Makes `identity` the connection's user and announces the change: a new
/// user's first connection gets `user_join`, a replaced user's last one
/// `user_leave`. A connection that changes user leaves its rooms first.
pub fn log_in(app: &App, connection: &Connection, identity: Identity) {
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
}
