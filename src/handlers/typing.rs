//! `user_typing`: relays a typing indicator to the room's other connections.

use super::{HandlerError, require_joined, speaker};
use crate::app::App;
use crate::hub::Audience;
use crate::hub::Connection;
use crate::protocol::{GLOBAL_ROOM, ServerMessage, UserTyping};
use std::sync::Arc;

pub fn typing(
    app: &App,
    connection: &Arc<Connection>,
    request: UserTyping,
) -> Result<(), HandlerError> {
    let user = speaker(connection)?;
    let room = request.room.as_deref().unwrap_or(GLOBAL_ROOM);
    let audience = if room == GLOBAL_ROOM {
        Audience::Everyone
    } else {
        require_joined(connection, room)?;
        Audience::Room(room.into())
    };
    app.publish(
        audience,
        &ServerMessage::UserTyping {
            room,
            user: &user,
            is_typing: request.is_typing,
        },
        Some(&connection.id),
    );
    Ok(())
}
