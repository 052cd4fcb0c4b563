//! The JSON HTTP API: statistics for administrators, and room history for
//! users.

use super::{ApiError, require_admin, require_user};
use crate::app::App;
use crate::handlers::may_enter;
use crate::hub::{Connection, count_by_kind};
use crate::protocol::{ErrorCode, GLOBAL_ROOM, validate_room_name};
use crate::store::{Page, RoomRecord};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Largest `limit` of a history page over HTTP, as over the WebSocket.
const MAX_HISTORY_LIMIT: usize = 200;
const DEFAULT_HISTORY_LIMIT: usize = 50;

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
    let cluster = match app.broker.cluster() {
        Some(totals) => Some(totals.await),
        None => None,
    };
    Ok(Json(json!({
        "node": app.hub.node_id(),
        "cluster": cluster,
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
        "assistant_connections": count_by_kind(&open)
            .iter()
            .find(|(kind, _)| *kind == crate::protocol::UserKind::Assistant)
            .map_or(0, |(_, count)| *count),
        "ai": ai_stats(&app),
        "webhooks": webhook_stats(&app),
        "connections": open.iter().map(|c| connection_entry(c)).collect::<Vec<_>>(),
    })))
}

/// This node's webhook deliveries since start.
fn webhook_stats(app: &App) -> Value {
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    match &app.webhooks {
        None => json!({ "configured": 0, "delivered": 0, "retried": 0, "failed": 0 }),
        Some(webhooks) => json!({
            "configured": app.config.webhooks.len(),
            "delivered": load(&webhooks.stats.delivered),
            "retried": load(&webhooks.stats.retried),
            "failed": load(&webhooks.stats.failed),
        }),
    }
}

fn ai_stats(app: &App) -> Value {
    let ai = &app.ai_control.stats;
    let mut entry: serde_json::Map<String, Value> = ai
        .outcomes()
        .iter()
        .map(|(outcome, count)| ((*outcome).to_owned(), Value::from(*count)))
        .collect();
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    entry.insert("requests".into(), load(&ai.requests).into());
    entry.insert("prompt_tokens".into(), load(&ai.prompt_tokens).into());
    entry.insert(
        "completion_tokens".into(),
        load(&ai.completion_tokens).into(),
    );
    let mean = |histogram: &crate::hub::Histogram| {
        (histogram.count() > 0).then(|| histogram.sum_seconds() / histogram.count() as f64 * 1000.0)
    };
    entry.insert("mean_first_token_ms".into(), mean(&ai.first_token).into());
    entry.insert("mean_duration_ms".into(), mean(&ai.total).into());
    entry.insert("configured".into(), app.ai.is_some().into());
    Value::Object(entry)
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

/// `GET /api/info`: what this server offers, for a client deciding what to
/// show (no secrets, no figures).
pub async fn info(State(app): State<Arc<App>>) -> Json<Value> {
    let config = &app.config;
    Json(json!({
        "server": crate::protocol::ServerInfo::THIS,
        "features": {
            "registration": config.open_registration,
            "guest_chat": config.guest_chat,
            "ai": app.ai.is_some(),
            "files": app.files.is_some(),
        },
        "limits": {
            "max_message_chars": config.max_message_chars,
            "max_frame_bytes": config.max_frame_bytes,
            "max_upload_bytes": app.files.as_ref().map(|files| files.max_bytes),
            "upload_types": app.files.as_ref().map(|files| files.types.clone()).unwrap_or_default(),
        },
    }))
}

/// `GET /api/rooms` (admin): the rooms with connections on this node, by
/// name, with their members (on every node) and this node's connections.
pub async fn rooms(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let mut names = app.hub.room_names();
    names.sort_unstable();
    let rooms: Vec<Value> = names
        .iter()
        .map(|room| {
            let (_, members) = app.hub.room_members(room, 0, 0);
            json!({
                "name": &**room,
                "member_count": members,
                "connection_count": app.hub.room_connection_count(room),
            })
        })
        .collect();
    Ok(Json(json!({ "rooms": rooms })))
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
        "created_at": record.created_at,
        "private": record.private,
        "owner_id": record.owner_id,
    })))
}

/// The room's record, or 404 if no such room exists.
async fn known_room(app: &App, room: &str) -> Result<RoomRecord, ApiError> {
    if !validate_room_name(room) {
        return Err(ApiError::not_found(format!("no room `{room}`")));
    }
    app.store
        .room(room)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no room `{room}`")))
}

/// `POST /api/connections/{id}/kick` (admin): closes the connection with 4003.
pub async fn kick(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    // On whichever node holds it (with several nodes, the node that holds
    // it answers within a second or it counts as not found).
    if !app.broker.kick(&id).await {
        return Err(ApiError::not_found(format!("no connection `{id}`")));
    }
    Ok(Json(json!({ "kicked": id })))
}

/// `GET /api/rooms/{room}/messages?before_id&after_id&limit`: a page of
/// history for an authenticated user who may join the room.
pub async fn room_messages(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let identity = require_user(&app, &headers)?;
    if room != GLOBAL_ROOM {
        let record = known_room(&app, &room).await?;
        if !may_enter(&app, &record, &identity.user.id, identity.role)
            .await
            .map_err(ApiError::internal)?
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("room `{room}` is private"),
            ));
        }
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
