//! The HTTP side: the router, the WebSocket upgrade, and the HTTP API.
//!
//! Handlers here are thin: they check who is asking, call the hub or the
//! store, and shape the answer. Errors become `{"error_code","message"}`
//! bodies through [`ApiError`], in one place.

mod api;
mod metrics;
mod ws;

use crate::app::App;
use crate::protocol::ErrorCode;
use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

/// Builds the router for a server.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics::render))
        .route("/api/stats", get(api::stats))
        .route("/api/rooms/{room}/stats", get(api::room_stats))
        .route("/api/rooms/{room}/messages", get(api::room_messages))
        .with_state(app)
}

async fn health() -> &'static str {
    "ok\n"
}

/// An HTTP error answer: a status and the protocol's error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::AuthFailed, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationError, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error in the HTTP API");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error_code": self.code.as_str(),
            "message": self.message,
        });
        (self.status, Json(body)).into_response()
    }
}
