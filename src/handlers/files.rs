//! `file_upload_request`. File sharing is not enabled in this build: its
//! allow-list of content types is empty, so a valid request is answered with
//! `file_type_not_allowed` after the usual checks.

use super::{HandlerError, require_joined};
use crate::app::App;
use crate::protocol::{FileUploadRequest, GLOBAL_ROOM};
use crate::session::Session;

pub fn upload_request(
    _app: &App,
    session: &Session,
    request: FileUploadRequest,
) -> Result<(), HandlerError> {
    if let Some(room) = request.room.as_deref().filter(|room| *room != GLOBAL_ROOM) {
        require_joined(&session.connection, room)?;
    }
    Err(HandlerError::FileTypeNotAllowed(
        "file sharing is not enabled on this server",
    ))
}
