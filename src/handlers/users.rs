//! `user_join` (a guest names itself) and `user_leave` (a connection goes
//! offline without closing).

use super::{
    HandlerError, announce_departures, announce_offline, announce_online, announce_user_leave,
    speaker,
};
use crate::app::App;
use crate::auth::GUEST_ID_PREFIX;
use crate::hub::{Identity, Role};
use crate::protocol::{ServerMessage, User, UserJoin, UserKind};
use crate::session::Session;

/// Names nobody may take as a guest: they would impersonate the server.
const RESERVED_NAMES: [&str; 3] = ["system", "assistant", "roomcast"];

pub async fn join(
    app: &App,
    session: &Session,
    request: UserJoin,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let connection = &session.connection;
    if connection.is_authenticated() {
        return Err(HandlerError::Forbidden(
            "user_join is for guests; this connection is authenticated".into(),
        ));
    }
    let wanted = request.username;
    let reserved = RESERVED_NAMES
        .iter()
        .any(|name| name.eq_ignore_ascii_case(&wanted));
    let current = connection.user();
    let renaming = current
        .as_ref()
        .is_some_and(|user| *user.username != *wanted);
    // Keeping one's own name needs no check; a new name must be free.
    let new_name = renaming || current.is_none();
    if reserved || (new_name && app.hub.name_in_use(&wanted)) {
        return Err(HandlerError::UsernameTaken(wanted));
    }
    // A guest never takes the name of a registered account, online or not.
    if app.accounts.is_registered(&wanted).await? {
        return Err(HandlerError::UsernameTaken(wanted));
    }
    let identity = Identity {
        user: User {
            // The same name is the same guest after a reconnect, so that a
            // retried `client_msg_id` is recognised (protocol rule 4).
            id: format!("{GUEST_ID_PREFIX}{}", wanted.to_lowercase()).into(),
            username: wanted.as_str().into(),
            kind: UserKind::Guest,
        },
        role: Role::User,
        expires_at: None,
    };
    if renaming {
        // Room membership is kept per user as others saw it: a renamed
        // guest leaves its rooms under the old name.
        let departures = app.hub.leave_all_rooms(connection);
        announce_departures(app, &departures);
    }
    let user = identity.user.clone();
    let change = app
        .hub
        .claim_guest_name(connection, identity)
        .map_err(|_| HandlerError::UsernameTaken(wanted))?;
    if let Some(previous) = change.left {
        announce_offline(app, &previous, Some(&connection.id));
    }
    app.send(
        connection,
        &ServerMessage::UserJoin { user: &user },
        reference,
    );
    if change.joined.is_some() {
        announce_online(app, &user, &connection.id);
    }
    Ok(())
}

pub fn leave(app: &App, session: &Session, reference: Option<&str>) -> Result<(), HandlerError> {
    let connection = &session.connection;
    let user = speaker(connection)?;
    let departures = app.hub.leave_all_rooms(connection);
    announce_departures(app, &departures);
    app.send(
        connection,
        &ServerMessage::UserLeave { user: &user },
        reference,
    );
    announce_user_leave(app, &user, &connection.id);
    Ok(())
}
