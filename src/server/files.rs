//! `PUT /api/uploads/{upload_id}` (the bytes of an authorized upload) and
//! `GET /api/files/{file_id}` (a shared file, for those who may read its
//! room). The work is in [`crate::files`]; here requests are read and
//! [`FileError`]s become HTTP answers, in one place.

use super::{ApiError, require_user};
use crate::app::App;
use crate::files::{FileError, Files, content_disposition};
use crate::handlers::may_enter;
use crate::protocol::{ErrorCode, GLOBAL_ROOM};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use std::sync::Arc;

impl From<FileError> for ApiError {
    fn from(err: FileError) -> Self {
        let (status, code) = match &err {
            FileError::NotFound | FileError::Blob(crate::files::BlobError::NotFound) => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound)
            }
            FileError::TokenRefused => (StatusCode::UNAUTHORIZED, ErrorCode::AuthFailed),
            FileError::Busy => (StatusCode::CONFLICT, ErrorCode::Conflict),
            FileError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::FileTooLarge),
            FileError::Short { .. } | FileError::Body(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::ValidationError)
            }
            FileError::TypeMismatch { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::FileTypeNotAllowed,
            ),
            FileError::Timeout => (StatusCode::REQUEST_TIMEOUT, ErrorCode::ValidationError),
            FileError::Blob(_) => {
                tracing::error!(error = %err, "the file store failed");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the file store is not available; try again later",
                );
            }
            FileError::Store(_) => return ApiError::internal(err),
        };
        ApiError::new(status, code, err.to_string())
    }
}

fn sharing(app: &App) -> Result<&Arc<Files>, ApiError> {
    app.files
        .as_ref()
        .ok_or_else(|| ApiError::not_found("file sharing is turned off on this server"))
}

/// Ids are lower-case hex made by the server; anything else names nothing.
fn plausible_id(id: &str) -> bool {
    (16..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `PUT /api/uploads/{upload_id}` with `Authorization: Bearer <upload_token>`.
pub async fn upload(
    State(app): State<Arc<App>>,
    Path(upload_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let files = sharing(&app)?.clone();
    let token = super::bearer_token(request.headers())
        .ok_or_else(|| {
            ApiError::unauthorized("upload token required (Authorization: Bearer <upload_token>)")
        })?
        .to_owned();
    if !plausible_id(&upload_id) {
        return Err(ApiError::not_found(format!("no upload `{upload_id}`")));
    }
    let announced = match request.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?,
        ),
    };
    let body = request
        .into_body()
        .into_data_stream()
        .map_err(|err| err.to_string())
        .boxed();
    let received = files
        .receive(&app, &upload_id, &token, announced, body)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "file": received.file.info(), "message": received.message })),
    )
        .into_response())
}

/// `GET /api/files/{file_id}`: the bytes, for a user who may read the room.
pub async fn download(
    State(app): State<Arc<App>>,
    Path(file_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let files = sharing(&app)?.clone();
    let identity = require_user(&app, &headers)?;
    let missing = || ApiError::not_found(format!("no file `{file_id}`"));
    if !plausible_id(&file_id) {
        return Err(missing());
    }
    let file = app
        .store
        .file(&file_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(missing)?;
    if &*file.room != GLOBAL_ROOM {
        let room = app
            .store
            .room(&file.room)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(missing)?;
        if !may_enter(&app, &room, &identity.user.id, identity.role)
            .await
            .map_err(ApiError::internal)?
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("the file's room `{}` is private", file.room),
            ));
        }
    }
    let etag = format!("\"{}\"", file.sha256);
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        )
        .header(header::CONTENT_DISPOSITION, content_disposition(&file.name));
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if not_modified {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(ApiError::internal);
    }
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(value) => match parse_range(value, file.size) {
            Range::Whole => None,
            Range::Part(range) => Some(range),
            Range::Unsatisfiable => {
                return response
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{}", file.size))
                    .body(Body::empty())
                    .map_err(ApiError::internal);
            }
        },
    };
    let stream = files
        .blobs
        .read(&file.id, range.clone())
        .await
        .map_err(FileError::from)?;
    response = response.header(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&file.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    let response = match range {
        Some(range) => response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_LENGTH, range.end - range.start)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", range.start, range.end - 1, file.size),
            ),
        None => response
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, file.size),
    };
    response
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No range we serve (several ranges, another unit, or unreadable):
    /// the whole file, as RFC 9110 allows.
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

fn parse_range(value: &HeaderValue, size: u64) -> Range {
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().strip_prefix("bytes="))
    else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    let range = match (first.trim().is_empty(), last.trim().is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => return Range::Unsatisfiable,
            Some(n) => size.saturating_sub(n)..size,
            None => return Range::Whole,
        },
        (false, true) => match number(first) {
            Some(start) => start..size,
            None => return Range::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => start..end.saturating_add(1).min(size),
            _ => return Range::Whole,
        },
        (true, true) => return Range::Whole,
    };
    if range.start >= size || range.is_empty() {
        Range::Unsatisfiable
    } else {
        Range::Part(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str, size: u64) -> Range {
        parse_range(&HeaderValue::from_str(text).expect("header"), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Range::Part(0..10));
        assert_eq!(range("bytes=90-", 100), Range::Part(90..100));
        assert_eq!(range("bytes=-5", 100), Range::Part(95..100));
        assert_eq!(range("bytes=-500", 100), Range::Part(0..100));
        assert_eq!(range("bytes=50-5000", 100), Range::Part(50..100));
        assert_eq!(range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(range("items=0-1", 100), Range::Whole);
        assert_eq!(range("bytes=9-1", 100), Range::Whole);
        assert_eq!(range("bytes=0-0", 0), Range::Unsatisfiable);
    }
}
