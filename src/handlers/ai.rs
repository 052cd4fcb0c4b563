//! `ai_request`: the assistant. This build has no AI provider, so a valid
//! request is answered with `ai_unavailable` after the usual checks.

use super::{HandlerError, require_joined};
use crate::app::App;
use crate::protocol::{AiRequest, GLOBAL_ROOM};
use crate::session::Session;

pub fn request(_app: &App, session: &Session, request: AiRequest) -> Result<(), HandlerError> {
    if let Some(room) = request.room.as_deref().filter(|room| *room != GLOBAL_ROOM) {
        require_joined(&session.connection, room)?;
    }
    Err(HandlerError::AiUnavailable(
        "no AI provider is configured on this server",
    ))
}
