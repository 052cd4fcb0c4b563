//! The chat page (`/`), the admin page (`/admin`) and their files
//! (`/assets/{name}`), built ahead from `web/` and embedded in the binary
//! by `build.rs`; `--web-ui false` leaves them out.

use super::ApiError;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// What the pages may load and reach: only this server (its API and its
/// WebSocket), and files they fetched themselves (`blob:`).
const PAGE_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; script-src 'self'; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Whether the pages were built into this binary.
pub fn available() -> bool {
    ASSETS.iter().any(|(name, _)| *name == "index.html")
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn asset(name: &str) -> Result<Response, ApiError> {
    let (_, bytes) = ASSETS
        .iter()
        .find(|(file, _)| *file == name)
        .ok_or_else(|| ApiError::not_found("no such path"))?;
    let mut response = (*bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if name.ends_with(".html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    Ok(response)
}

/// `GET /`.
pub async fn chat_page() -> Result<Response, ApiError> {
    asset("index.html")
}

/// `GET /admin`.
pub async fn admin_page() -> Result<Response, ApiError> {
    asset("admin.html")
}

/// `GET /assets/{name}`.
pub async fn assets(Path(name): Path<String>) -> Result<Response, ApiError> {
    asset(&name)
}
