//! `GET /ws`: checks an optional token and the origin, completes the
//! WebSocket handshake, and hands the socket to a session.
//!
//! Plain TCP connections are upgraded straight off the socket (see
//! [`super::accept`]), so that broadcasts can write into it directly. An
//! upgrade that arrives through the HTTP server instead (over TLS, or on a
//! kept-alive HTTP connection) is bridged to a local socket pair, and the
//! session sees the same kind of stream either way.

use super::{ApiError, ClientAddr};
use crate::app::App;
use crate::hub::Identity;
use crate::protocol::CloseReason;
use crate::protocol::ErrorCode;
use crate::session::{self, Accepted};
use crate::wire::Stream;
use crate::wire::handshake::{self, Refusal, Upgrade};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

/// Who is connecting, decided before the upgrade.
pub struct Admission {
    pub identity: Option<Identity>,
    /// Set when the socket is to be closed right after the upgrade.
    pub refusal: Option<CloseReason>,
    pub user_agent: Option<String>,
}

/// Checks the token (an invalid one is refused with 401, before any upgrade)
/// and the origin (a page from an origin not on the allow-list gets a
/// WebSocket that is closed at once with 1008, and nothing else).
pub fn admit(app: &App, upgrade: &Upgrade, client: SocketAddr) -> Result<Admission, ApiError> {
    let token = upgrade
        .authorization
        .as_deref()
        .and_then(bearer_value)
        .or(upgrade.query_token.as_deref());
    let identity = match token.map(|token| app.tokens.verify(token)) {
        None => None,
        Some(Ok(identity)) => Some(identity),
        Some(Err(err)) => {
            // Who failed and why; never the token.
            tracing::info!(client = %client.ip(), reason = %err, "failed authentication at the upgrade");
            return Err(ApiError::unauthorized(err.to_string()));
        }
    };
    let origin_refused = !app.config.allowed_origins.is_empty()
        && upgrade.origin.as_deref().is_some_and(|origin| {
            !app.config
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin.trim_end_matches('/')))
        });
    if origin_refused {
        tracing::debug!(
            client = %client,
            origin = upgrade.origin.as_deref().unwrap_or_default(),
            "origin not allowed: closing with 1008"
        );
    }
    Ok(Admission {
        identity,
        refusal: origin_refused.then_some(CloseReason::ORIGIN_REFUSED),
        user_agent: upgrade
            .user_agent
            .as_deref()
            .map(|value| value.chars().take(256).collect()),
    })
}

/// Completes an upgrade read straight off a TCP socket and starts the
/// session in a task of its own, so that nothing of the handshake stays in
/// memory for the connection's lifetime. The `101` answer is left to the
/// session, which writes it together with the welcome. `early` holds bytes
/// the client sent after its request head.
pub async fn accept_raw(
    app: Arc<App>,
    mut stream: TcpStream,
    client_addr: SocketAddr,
    upgrade: Upgrade,
    early: Vec<u8>,
) {
    let admission = match admit(&app, &upgrade, client_addr) {
        Ok(admission) => admission,
        Err(err) => {
            let _ = stream.write_all(&err.to_http_bytes()).await;
            return;
        }
    };
    let answer = handshake::accept_response(&upgrade.key);
    tokio::spawn(session::run(
        app,
        Accepted {
            stream: Stream::Tcp(stream),
            answer: Some(answer.into()),
            early,
            client_addr,
            user_agent: admission.user_agent,
            identity: admission.identity,
            refusal: admission.refusal,
        },
    ));
}

/// The answer to a refused upgrade request.
pub fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Version => ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::ValidationError,
            refusal.reason(),
        )
        .with_header("sec-websocket-version", "13"),
        Refusal::Malformed(reason) => ApiError::bad_request(reason),
    }
}

/// `GET /ws` through the HTTP server.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(client_addr)): ConnectInfo<ClientAddr>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let upgrade = match Upgrade::from_headers(header, request.uri().query()) {
        Ok(Some(upgrade)) => upgrade,
        Ok(None) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::ValidationError,
                "this endpoint speaks WebSocket (RFC 6455, version 13)",
            )
            .with_header("upgrade", "websocket")
            .into_response();
        }
        Err(reason) => return refusal(reason).into_response(),
    };
    let admission = match admit(&app, &upgrade, client_addr) {
        Ok(admission) => admission,
        Err(err) => return err.into_response(),
    };
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return ApiError::bad_request("this connection cannot be upgraded").into_response();
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let Ok((inner, mut outer)) = UnixStream::pair() else {
            tracing::warn!("cannot create a socket pair for an upgraded connection");
            return;
        };
        // The bridge ends when either side closes.
        tokio::spawn(async move {
            let mut upgraded = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut upgraded, &mut outer).await;
        });
        session::run(
            app,
            Accepted {
                stream: Stream::Unix(inner),
                answer: None,
                early: Vec::new(),
                client_addr,
                user_agent: admission.user_agent,
                identity: admission.identity,
                refusal: admission.refusal,
            },
        )
        .await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (UPGRADE, "websocket".to_owned()),
            (CONNECTION, "Upgrade".to_owned()),
            (SEC_WEBSOCKET_ACCEPT, handshake::accept_key(&upgrade.key)),
        ],
    )
        .into_response()
}

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    bearer_value(headers.get(AUTHORIZATION)?.to_str().ok()?)
}

fn bearer_value(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}
