//! `file_upload_request`: checks the request and answers with a token for
//! one upload (`file_upload_authorized`); the bytes then come over HTTP
//! (`PUT /api/uploads/{upload_id}`, in `server::files`).

use super::{HandlerError, require_joined, speaker};
use crate::app::App;
use crate::hub::Connection;
use crate::protocol::{FileUploadRequest, GLOBAL_ROOM, ServerMessage};
use std::sync::Arc;

pub async fn upload_request(
    app: &App,
    connection: &Arc<Connection>,
    request: FileUploadRequest,
    reference: Option<&str>,
) -> Result<(), HandlerError> {
    let user = speaker(connection)?;
    let room = request.room.as_deref().unwrap_or(GLOBAL_ROOM);
    if room != GLOBAL_ROOM {
        require_joined(connection, room)?;
    }
    let Some(files) = &app.files else {
        return Err(HandlerError::FileTypeNotAllowed(
            "file sharing is turned off on this server".into(),
        ));
    };
    if request.size > files.max_bytes {
        return Err(HandlerError::FileTooLarge(format!(
            "size {} is over this server's limit of {} bytes",
            request.size, files.max_bytes
        )));
    }
    if !files.allows(&request.content_type) {
        return Err(HandlerError::FileTypeNotAllowed(format!(
            "`{}` may not be uploaded here; allowed: {}",
            crate::files::essence(&request.content_type),
            files.types.join(", ")
        )));
    }
    files
        .requests
        .take(&user.id)
        .map_err(HandlerError::RateLimited)?;
    let authorization = files
        .authorize(
            app,
            &user,
            room,
            &request.filename,
            request.size,
            &request.content_type,
        )
        .await
        .map_err(|err| match err {
            crate::files::FileError::Store(err) => HandlerError::Store(err),
            other => HandlerError::Internal(other.to_string()),
        })?;
    app.send(
        connection,
        &ServerMessage::FileUploadAuthorized {
            upload_id: &authorization.upload_id,
            upload_url: &authorization.upload_url,
            method: "PUT",
            upload_token: &authorization.upload_token,
            expires_at: authorization.expires_at,
            max_size: authorization.max_size,
        },
        reference,
    );
    Ok(())
}
