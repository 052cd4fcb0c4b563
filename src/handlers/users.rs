//! `user_join` (a guest names itself) and `user_leave` (a connection goes
//! offline without closing).

use super::{
    HandlerError, announce_departures, announce_offline, announce_online, announce_user_leave,
    speaker,
};
use crate::app::App;
use crate::auth::{GUEST_ID_PREFIX, skeleton, valid_username};
use crate::hub::Connection;
use crate::hub::{Identity, Role};
use crate::protocol::{ServerMessage, User, UserJoin, UserKind};
use std::sync::Arc;

/// Names nobody may take as a guest: they would impersonate the server
/// (account names may not take them either).
const RESERVED_NAMES: [&str; 5] = ["system", "assistant", "roomcast", "admin", "guest"];

fn reserved(name: &str) -> bool {
    let wanted = skeleton(name);
    RESERVED_NAMES.iter().any(|kept| skeleton(kept) == wanted)
}

pub async fn join(
    app: &App,
    connection: &Arc<Connection>,
    request: UserJoin,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    if connection.is_authenticated() {
        return Err(HandlerError::Forbidden(
            "user_join is for guests; this connection is authenticated".into(),
        ));
    }
    let wanted = request.username;
    // A guest's name follows the rules of account names: ASCII letters,
    // digits and `_.-` (no look-alike letters from other scripts, nothing
    // invisible), and none of the names kept for the server.
    if !valid_username(&wanted) && !reserved(&wanted) {
        return Err(HandlerError::Validation(
            "username must be 2 to 32 ASCII letters, digits, `_`, `.` or `-`, \
             starting with a letter or digit"
                .into(),
        ));
    }
    let reserved = reserved(&wanted);
    let current = connection.user();
    let renaming = current
        .as_ref()
        .is_some_and(|user| *user.username != *wanted);
    // Keeping one's own name needs no check; a new name must be free.
    let new_name = renaming || current.is_none();
    if reserved || (new_name && app.hub.name_in_use(&wanted)) {
        return Err(HandlerError::UsernameTaken(wanted));
    }
    // A guest never takes the name of a registered account, online or
    // not, nor one that looks like it.
    if app.accounts.is_registered_alike(&wanted).await? {
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

pub fn leave(
    app: &App,
    connection: &Arc<Connection>,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
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
