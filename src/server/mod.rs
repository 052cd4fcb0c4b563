//! The HTTP side: the router, the WebSocket upgrade, and the HTTP API.
//!
//! Handlers here are thin: they check who is asking, call the hub or the
//! store, and shape the answer. Errors become `{"error_code","message"}`
//! bodies through [`ApiError`], in one place.

mod accept;
mod accounts;
mod api;
mod files;
mod metrics;
mod publish;
mod rooms;
pub mod tls;
mod web;
mod ws;

use crate::app::App;
use crate::hub::{Identity, Role};
use crate::protocol::ErrorCode;
pub use accept::{Replay, connection_capacity, serve_http, serve_plain};
use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
pub use rooms::carry_out_evictions;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
pub use web::available as web_pages_built;
use ws::bearer_token;

/// Builds the router for a server.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.max_http_body_bytes;
    let pages = if app.config.web_ui {
        Router::new()
            .route("/", get(web::chat_page))
            .route("/admin", get(web::admin_page))
            .route("/assets/{name}", get(web::assets))
    } else {
        Router::new()
    };
    pages
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics::render))
        .route("/api/stats", get(api::stats))
        .route("/api/rooms/{room}/stats", get(api::room_stats))
        .route("/api/rooms/{room}/messages", get(api::room_messages))
        .route("/api/connections/{id}/kick", post(api::kick))
        .route("/api/users", post(accounts::register))
        .route("/api/login", post(accounts::login))
        .route("/api/rooms", post(rooms::create).get(api::rooms))
        .route("/api/info", get(api::info))
        .route("/api/publish", post(publish::publish))
        .route(
            "/api/uploads/{upload_id}",
            put(files::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/files/{file_id}", get(files::download))
        .route("/api/rooms/{room}/members", post(rooms::add_member))
        .route(
            "/api/rooms/{room}/members/{user_id}",
            delete(rooms::remove_member),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(cors(&app.config.allowed_origins))
        .with_state(app)
}

/// CORS for the HTTP API, so that a web app on another origin can log in,
/// read history, upload and download: the origins of `--allowed-origins`
/// (any when none are set: the API takes bearer tokens, never cookies).
fn cors(allowed: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origin = if allowed.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::ETAG,
            header::CONTENT_DISPOSITION,
            header::CONTENT_RANGE,
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

/// Paths the server does not serve: the same JSON error as everywhere.
async fn no_route() -> ApiError {
    ApiError::not_found("no such path")
}

async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        crate::protocol::ErrorCode::MethodNotAllowed,
        "this path does not take that method",
    )
}

/// The client's address, for `ConnectInfo`, over plain TCP or TLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Pending connections the kernel may queue before `accept` (it caps this
/// at `net.core.somaxconn`). The standard library's 128 overflows when
/// thousands of clients connect at once, and a dropped SYN costs the client
/// a one-second retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with a backlog fit for connection storms.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Turns Nagle's algorithm off on an accepted socket: the welcome frame
/// follows the upgrade response at once, and with Nagle it would wait for
/// the client's (delayed) acknowledgement of the response.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
}

/// A JSON request body whose errors are answered in the API's own format
/// (400 with the field named, 413 when too large).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::ValidationError,
                        "request body is too large",
                    )
                } else {
                    ApiError::bad_request(rejection.body_text())
                }
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut deserializer)
            .map(JsonBody)
            .map_err(|err| ApiError::bad_request(format!("invalid JSON body: {err}")))
    }
}

/// The identity of a request's `Authorization: Bearer <token>`.
pub fn require_user(app: &App, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let token = bearer_token(headers)
        .ok_or_else(|| ApiError::unauthorized("token required (Authorization: Bearer <token>)"))?;
    app.tokens
        .verify(token)
        .map_err(|err| ApiError::unauthorized(err.to_string()))
}

/// Lets the request through if it carries the admin key, or a token with the
/// `admin` role.
pub fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
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

async fn health() -> &'static str {
    "ok\n"
}

/// An HTTP error answer: a status and the protocol's error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
    /// A header the answer carries besides (name in lower case, value).
    header: Option<(&'static str, &'static str)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
            header: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.header = Some((name, value));
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::AuthFailed, message)
    }

    pub fn rate_limited(wait: Duration) -> Self {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many attempts: wait before trying again",
        );
        error.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        error
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

impl ApiError {
    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "error_code": self.code.as_str(),
            "message": self.message,
        });
        if let Some(wait) = self.retry_after_ms {
            body["retry_after_ms"] = wait.into();
        }
        body
    }

    /// The whole HTTP answer, for refusals written before any HTTP server
    /// is involved (a WebSocket handshake read straight off the socket).
    pub fn to_http_bytes(&self) -> Vec<u8> {
        let mut headers = String::new();
        if let Some((name, value)) = self.header {
            headers = format!("{name}: {value}\r\n");
        }
        if let Some(wait) = self.retry_after_ms {
            headers.push_str(&format!("retry-after: {}\r\n", wait.div_ceil(1000)));
        }
        raw_http_response_with(self.status, &headers, &self.body().to_string())
    }
}

/// An HTTP/1.1 answer with a JSON body that closes the connection.
pub fn raw_http_response(status: StatusCode, body: &str) -> Vec<u8> {
    raw_http_response_with(status, "", body)
}

/// [`raw_http_response`] with more header lines (each ending in CRLF).
fn raw_http_response_with(status: StatusCode, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{headers}\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
    .into_bytes()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = match self.retry_after_ms {
            Some(wait) => {
                let seconds = wait.div_ceil(1000).to_string();
                (
                    self.status,
                    [(axum::http::header::RETRY_AFTER, seconds)],
                    Json(body),
                )
                    .into_response()
            }
            None => (self.status, Json(body)).into_response(),
        };
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(
                axum::http::HeaderName::from_static(name),
                axum::http::HeaderValue::from_static(value),
            );
        }
        response.extensions_mut().insert(self.code);
        response
    }
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
