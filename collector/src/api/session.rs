//! Dashboard login, logout, and the authentication middleware of `/api/0/`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::state::{ADMIN_USER, AppState};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "errscope_session";

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Principal {
    /// The admin bearer token.
    Token,
    /// The dashboard session cookie.
    Session,
}

async fn principal(state: &AppState, headers: &HeaderMap) -> Option<Principal> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = auth.strip_prefix("Bearer ").map(str::trim)
        && !token.is_empty()
        && state.check_token(token).await
    {
        return Some(Principal::Token);
    }
    let session = cookie(headers, SESSION_COOKIE)?;
    state
        .session_valid(&session)
        .await
        .then_some(Principal::Session)
}

/// Middleware: 401 without a valid token or session, 403 for a cookie-authenticated
/// state-changing request without `X-Errscope-Request: 1`.
pub async fn require_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match principal(&state, req.headers()).await {
        None => {
            ApiError::Unauthorized("authentication required: a bearer token or a dashboard session")
                .into_response()
        }
        Some(Principal::Session)
            if !matches!(*req.method(), Method::GET | Method::HEAD)
                && req
                    .headers()
                    .get("x-errscope-request")
                    .map(|v| v.as_bytes())
                    != Some(b"1") =>
        {
            ApiError::Forbidden(
                "requests authenticated by cookie must carry the header X-Errscope-Request: 1",
            )
            .into_response()
        }
        Some(_) => next.run(req).await,
    }
}

/// Login body.
#[derive(Debug, Deserialize)]
pub(super) struct Login {
    username: String,
    password: String,
}

/// `POST /auth/login`.
pub async fn login(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let login: Login = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("expected {{\"username\", \"password\"}}: {e}"))
    })?;
    if login.username != ADMIN_USER || !state.check_password(&login.password).await {
        return Err(ApiError::Unauthorized("wrong username or password"));
    }
    let id = state.new_session().await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    // `Secure` when the collector is reached over https (it cannot be set for plain http,
    // which the default 127.0.0.1 setup uses).
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let c =
        format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=604800{secure}");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&c).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

/// `POST /auth/logout`.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE)
        && let Err(e) = state.end_session(&id).await
    {
        return ApiError::from(e).into_response();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("errscope_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    resp
}

/// `GET /api/0/session/` (behind [`require_auth`]).
pub async fn session_info() -> Response {
    axum::Json(json!({ "username": ADMIN_USER })).into_response()
}
