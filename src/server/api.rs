//! The JSON HTTP API: statistics for administrators, and room history for
//! users.

use super::ApiError;
use super::ws::bearer_token;
use crate::app::App;
use crate::hub::{Connection, Role};
use crate::protocol::{GLOBAL_ROOM, Timestamp, validate_room_name};
use crate::store::Page;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Largest `limit` of a history page over HTTP, as over the WebSocket.
const MAX_HISTORY_LIMIT: usize = 200;
const DEFAULT_HISTORY_LIMIT: usize = 50;

/// Lets the request through if it carries the admin key, or a token with the
/// `admin` role.
fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(presented) = bearer_token(headers) else {
        return Err(ApiError::unauthorized(
            "admin key required (Authorization: Bearer <key>)",
        ));
    };
    if let Some(key) = &app.config.admin_key
        && constant_time_eq(presented.as_bytes(), key.as_bytes())
    {
        return Ok(());
    }
    match app.tokens.verify(presented) {
        Ok(identity) if identity.role == Role::Admin => Ok(()),
        _ => Err(ApiError::unauthorized("invalid admin key")),
    }
}

/// Compares secrets in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /api/stats`.
pub async fn stats(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let stats = app.hub.stats();
    let open: Vec<Arc<Connection>> = app
        .hub
        .connections()
        .into_iter()
        .filter(|connection| connection.close_requested().is_none())
        .collect();
    let authenticated_users: HashSet<Arc<str>> = open
        .iter()
        .filter(|connection| connection.is_authenticated())
        .filter_map(|connection| connection.user().map(|user| user.id))
        .collect();
    let counts = |values: &mut dyn Iterator<Item = (&'static str, u64)>| {
        values
            .map(|(name, value)| (name.to_owned(), Value::from(value)))
            .collect::<serde_json::Map<_, _>>()
    };
    Ok(Json(json!({
        "active_connections": stats.active(),
        "peak_connections": stats.peak(),
        "total_connections": stats.total(),
        "authenticated_users": authenticated_users.len(),
        "online_users": app.hub.online_users(),
        "rooms": app.hub.room_count(),
        "messages_by_type": counts(&mut stats.messages_in()),
        "messages_out_by_type": counts(&mut stats.messages_out()),
        "errors": counts(&mut stats.errors()),
        "slow_consumer_disconnects": stats.slow_consumer_disconnects(),
        "connections": open.iter().map(|c| connection_entry(c)).collect::<Vec<_>>(),
    })))
}

fn connection_entry(connection: &Connection) -> Value {
    let user = connection.user();
    json!({
        "connection_id": &*connection.id,
        "state": connection.state().as_str(),
        "kind": connection.kind().as_str(),
        "username": user.as_ref().map(|u| &*u.username),
        "user_id": user.as_ref().map(|u| &*u.id),
        "rooms": connection.room_count(),
        "connected_at": connection.connected_at,
        "last_activity": connection.last_activity(),
        "client_addr": connection.client_addr.to_string(),
        "user_agent": connection.user_agent,
        "message_count": connection.message_count(),
    })
}

/// `GET /api/rooms/{room}/stats`.
pub async fn room_stats(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let record = known_room(&app, &room).await?;
    let (users, _) = app.hub.room_members(&room, 0, usize::MAX);
    Ok(Json(json!({
        "room": room,
        "users": users,
        "connection_count": app.hub.room_connection_count(&room),
        "created_at": record,
    })))
}

/// The room's creation time, or 404 if no such room exists.
async fn known_room(app: &App, room: &str) -> Result<Timestamp, ApiError> {
    if !validate_room_name(room) {
        return Err(ApiError::not_found(format!("no room `{room}`")));
    }
    match app.store.room(room).await.map_err(ApiError::internal)? {
        Some(record) => Ok(record.created_at),
        None => Err(ApiError::not_found(format!("no room `{room}`"))),
    }
}

/// `GET /api/rooms/{room}/messages?before_id&after_id&limit`: a page of
/// history for an authenticated user who may join the room.
pub async fn room_messages(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = bearer_token(&headers)
        .ok_or_else(|| ApiError::unauthorized("token required (Authorization: Bearer <token>)"))?;
    app.tokens
        .verify(token)
        .map_err(|err| ApiError::unauthorized(err.to_string()))?;
    if room != GLOBAL_ROOM {
        known_room(&app, &room).await?;
    } else if !validate_room_name(&room) {
        return Err(ApiError::not_found(format!("no room `{room}`")));
    }
    let id = |name: &str| -> Result<Option<i64>, ApiError> {
        query
            .get(name)
            .map(|text| {
                text.parse::<i64>()
                    .ok()
                    .filter(|id| *id >= 0)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("`{name}` must be a non-negative integer"))
                    })
            })
            .transpose()
    };
    let page = match (id("before_id")?, id("after_id")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "`before_id` and `after_id` cannot be combined",
            ));
        }
        (Some(before), None) => Page::Before(before),
        (None, Some(after)) => Page::After(after),
        (None, None) => Page::Newest,
    };
    let limit = match query.get("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_HISTORY_LIMIT).contains(limit))
            .ok_or_else(|| ApiError::bad_request("`limit` must be 1..200"))?,
    };
    let found = app
        .store
        .history(&room, page, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "room": room,
        "messages": found.messages,
        "has_more": found.has_more,
    })))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_secrets() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
