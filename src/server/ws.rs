//! `GET /ws`: checks an optional token, then upgrades to a WebSocket and
//! hands the socket to a session.

use super::{ApiError, ClientAddr};
use crate::app::App;
use crate::protocol::CloseReason;
use crate::session;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, ORIGIN, USER_AGENT};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

/// Read buffer per connection. Small, since most frames are small; a large
/// frame is read in several steps.
const READ_BUFFER_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
pub struct UpgradeQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(client_addr)): ConnectInfo<ClientAddr>,
    Query(query): Query<UpgradeQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = bearer_token(&headers).or(query.token.as_deref());
    let identity = match token.map(|token| app.tokens.verify(token)) {
        None => None,
        Some(Ok(identity)) => Some(identity),
        Some(Err(err)) => return ApiError::unauthorized(err.to_string()).into_response(),
    };
    // A browser page from an origin not on the allow-list gets a WebSocket
    // that is closed at once with 1008, and nothing else.
    let origin_refused = !app.config.allowed_origins.is_empty()
        && headers
            .get(ORIGIN)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|origin| {
                !app.config
                    .allowed_origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin.trim_end_matches('/')))
            });
    let refusal = origin_refused.then_some(CloseReason::ORIGIN_REFUSED);
    let user_agent = headers
        .get(USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(256).collect());
    let max_frame = app.config.max_frame_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            session::run(app, socket, client_addr, user_agent, identity, refusal)
        })
}

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}
