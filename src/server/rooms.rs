//! Room administration over HTTP: creating rooms (public or private) and
//! managing the member lists of private ones.

use super::{ApiError, JsonBody, require_admin, require_user};
use crate::app::App;
use crate::handlers::evict;
use crate::protocol::{ErrorCode, GLOBAL_ROOM, validate_room_name};
use crate::store::{NewRoom, RoomRecord, StoreError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct CreateRoom {
    name: String,
    #[serde(default)]
    private: bool,
}

fn room_json(record: &RoomRecord) -> Value {
    json!({
        "name": record.name,
        "private": record.private,
        "owner_id": record.owner_id,
        "created_at": record.created_at,
    })
}

/// `POST /api/rooms {name, private}` → 201 `{room}`; the caller owns it.
pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateRoom>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let identity = require_user(&app, &headers)?;
    if !validate_room_name(&body.name) || body.name == GLOBAL_ROOM {
        return Err(ApiError::bad_request(
            "`name` must match ^[A-Za-z0-9_.:-]{1,64}$ and not be `global`",
        ));
    }
    let record = app
        .store
        .create_room(NewRoom {
            name: body.name,
            private: body.private,
            owner_id: identity.user.id.to_string(),
        })
        .await
        .map_err(|err| match err {
            StoreError::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "a room with this name exists",
            ),
            err => ApiError::internal(err),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "room": room_json(&record) })),
    ))
}

#[derive(Debug, Deserialize)]
pub struct AddMember {
    user_id: Option<String>,
    username: Option<String>,
}

/// The room, if the caller may manage its members: its owner, or an
/// administrator (an admin-role token or the admin key).
async fn managed_room(app: &App, headers: &HeaderMap, room: &str) -> Result<RoomRecord, ApiError> {
    let admin = require_admin(app, headers).is_ok();
    let identity = if admin {
        None
    } else {
        Some(require_user(app, headers)?)
    };
    let record = app
        .store
        .room(room)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no room `{room}`")))?;
    let owner = identity
        .as_ref()
        .is_some_and(|identity| record.owner_id.as_deref() == Some(&*identity.user.id));
    if !owner && !admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "only the room's owner or an administrator manages its members",
        ));
    }
    Ok(record)
}

/// `POST /api/rooms/{room}/members {user_id | username}`.
pub async fn add_member(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AddMember>,
) -> Result<Json<Value>, ApiError> {
    let record = managed_room(&app, &headers, &room).await?;
    let user_id = match (body.user_id, body.username) {
        (Some(user_id), _) if !user_id.is_empty() => user_id,
        (_, Some(username)) => app
            .store
            .find_account(&username)
            .await
            .map_err(ApiError::internal)?
            .map(|account| account.id)
            .ok_or_else(|| ApiError::not_found(format!("no account `{username}`")))?,
        _ => return Err(ApiError::bad_request("`user_id` or `username` is required")),
    };
    let added = app
        .store
        .set_member(&record.name, &user_id, true)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "room": record.name, "user_id": user_id, "added": added }),
    ))
}

/// `DELETE /api/rooms/{room}/members/{user_id}`: also takes the user's
/// connections out of the room at once.
pub async fn remove_member(
    State(app): State<Arc<App>>,
    Path((room, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let record = managed_room(&app, &headers, &room).await?;
    let removed = app
        .store
        .set_member(&record.name, &user_id, false)
        .await
        .map_err(ApiError::internal)?;
    if record.private && record.owner_id.as_deref() != Some(&*user_id) {
        evict(&app, &room, &user_id);
        app.broker.evict(&room, &user_id);
    }
    Ok(Json(
        json!({ "room": record.name, "user_id": user_id, "removed": removed }),
    ))
}

/// Carries out removals from private rooms made on other nodes, for as long
/// as the server runs.
pub async fn carry_out_evictions(
    app: Arc<App>,
    mut evictions: tokio::sync::mpsc::UnboundedReceiver<crate::broker::Eviction>,
) {
    while let Some(eviction) = evictions.recv().await {
        evict(&app, &eviction.room, &eviction.user_id);
    }
}
