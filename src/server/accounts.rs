//! `POST /api/users` (registration) and `POST /api/login`.

use super::{ApiError, ClientAddr, JsonBody};
use crate::app::App;
use crate::auth::{LoginError, RegisterError, account_user};
use crate::protocol::ErrorCode;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

/// `POST /api/users {username, password}` → 201 `{user}`.
pub async fn register(
    State(app): State<Arc<App>>,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !app.config.open_registration {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "registration is closed on this server",
        ));
    }
    let account = app
        .accounts
        .register(&body.username, &body.password, "user")
        .await
        .map_err(|err| match err {
            RegisterError::Taken => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::UsernameTaken,
                "username is taken",
            ),
            RegisterError::InvalidUsername
            | RegisterError::InvalidPassword
            | RegisterError::InvalidRole => ApiError::bad_request(err.to_string()),
            RegisterError::Hash | RegisterError::Random | RegisterError::Store(_) => {
                ApiError::internal(err)
            }
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user": account_user(&account) })),
    ))
}

/// `POST /api/login {username, password}` → `{token, user, expires_at}`.
pub async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<Value>, ApiError> {
    let login = app
        .accounts
        .login(client.ip(), &body.username, &body.password)
        .await
        .map_err(|err| match err {
            LoginError::BadCredentials => {
                // Never the password.
                tracing::info!(client = %client.ip(), username = %body.username, "failed login");
                ApiError::unauthorized("invalid username or password")
            }
            LoginError::RateLimited(wait) => ApiError::rate_limited(wait),
            LoginError::Store(err) => ApiError::internal(err),
        })?;
    Ok(Json(json!({
        "token": login.token,
        "user": login.identity.user,
        "expires_at": login.expires_at,
    })))
}
