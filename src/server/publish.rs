//! `POST /api/publish`: a backend posts into a room as the `system` user —
//! a chat message (`{room, content}`), stored and broadcast like any other,
//! or a project or ticket event (`{room, event}`), recorded and broadcast.
//! An `Idempotency-Key` header makes a retry find what the first call
//! stored instead of storing it again.

use super::{ApiError, JsonBody, require_admin};
use crate::app::App;
use crate::handlers::{ProjectEvent, record_and_tell};
use crate::protocol::{GLOBAL_ROOM, Timestamp, User, UserKind, validate_room_name};
use crate::store::NewMessage;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    room: String,
    content: Option<String>,
    /// A `project_update` or `ticket_update`, as the WebSocket messages
    /// have them, with their `type`.
    event: Option<ProjectEvent>,
}

/// Longest `Idempotency-Key` taken, in characters.
const MAX_KEY_CHARS: usize = 64;

/// Who publishes: the server itself.
fn system() -> User {
    User {
        id: "system".into(),
        username: "system".into(),
        kind: UserKind::System,
    }
}

pub async fn publish(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Publish>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let key = idempotency_key(&headers)?;
    if !validate_room_name(&body.room) {
        return Err(ApiError::bad_request(
            "`room` must match ^[A-Za-z0-9_.:-]{1,64}$",
        ));
    }
    if body.room != GLOBAL_ROOM {
        let known = app
            .store
            .room(&body.room)
            .await
            .map_err(ApiError::internal)?;
        if known.is_none() {
            if !app.config.room_auto_create {
                return Err(ApiError::not_found(format!("no room `{}`", body.room)));
            }
            app.store
                .ensure_room(&body.room)
                .await
                .map_err(ApiError::internal)?;
        }
    }
    match (body.content, body.event) {
        (Some(content), None) => publish_message(&app, body.room, content, key).await,
        (None, Some(_)) if body.room == GLOBAL_ROOM => Err(ApiError::bad_request(
            "events go to a room, not to `global`",
        )),
        (None, Some(event)) => publish_event(&app, body.room, event, key).await,
        _ => Err(ApiError::bad_request(
            "give either `content` (a chat message) or `event` (a project or ticket event)",
        )),
    }
}

/// The `Idempotency-Key` header, if any: 1–64 visible characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.chars().count() <= MAX_KEY_CHARS
                && key.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "`Idempotency-Key` must be 1 to 64 visible ASCII characters",
        )),
    }
}

async fn publish_message(
    app: &Arc<App>,
    room: String,
    content: String,
    key: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let chars = content.chars().count();
    if chars == 0 || chars > app.config.max_message_chars {
        return Err(ApiError::bad_request(format!(
            "`content` must be 1 to {} characters",
            app.config.max_message_chars
        )));
    }
    let appended = app
        .store_and_publish(NewMessage {
            room: room.into(),
            user: system(),
            content,
            created_at: Timestamp::now(),
            client_msg_id: key,
            reply_to: None,
            attachment: None,
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "message": appended.message })))
}

async fn publish_event(
    app: &Arc<App>,
    room: String,
    event: ProjectEvent,
    key: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let event = event
        .validated()
        .map_err(|rejection| ApiError::bad_request(format!("event: {}", rejection.message)))?;
    let recorded = record_and_tell(app, room.into(), &system(), &event, key, None)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "event_id": recorded.id })))
}
