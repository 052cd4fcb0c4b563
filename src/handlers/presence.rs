//! `presence`: a page of the distinct users online in a joined room.

use super::{HandlerError, require_joined};
use crate::app::App;
use crate::protocol::{Presence, ServerMessage};
use crate::session::Session;

pub fn state(
    app: &App,
    session: &Session,
    request: Presence,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    require_joined(&session.connection, &request.room)?;
    let offset = usize::try_from(request.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let limit = usize::try_from(request.limit.unwrap_or(Presence::DEFAULT_LIMIT)).unwrap_or(0);
    let (members, member_count) = app.hub.room_members(&request.room, offset, limit);
    app.send(
        &session.connection,
        &ServerMessage::PresenceState {
            room: &request.room,
            members: &members,
            member_count,
        },
        reference,
    );
    Ok(())
}
