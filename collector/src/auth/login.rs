//! The dashboard login (throttled per username and per address), logout, and invites
//! (`/auth/...`, outside `/api/0/`: no session yet).

use std::sync::OnceLock;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::policy::ClientAddr;
use super::throttle::{self, Policy};
use super::{AuthError, SESSION_COOKIE, audit, cookie, new_secret, secret_hash, users};
use crate::state::{AppState, hash_secret};
use crate::store::SessionRow;
use crate::time::now_ms;

/// Longest a session lasts however busy (the cookie's `Max-Age`).
const SESSION_MAX_AGE_S: i64 = 30 * 24 * 3600;

#[derive(Debug, Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// A hash to verify against when the user does not exist, so that takes as long.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_secret("errscope-no-such-user").unwrap_or_default())
}

/// The `Set-Cookie` of a new session: `Secure` when the collector is reached over https
/// (it cannot be set for plain http, which the default 127.0.0.1 setup uses).
fn session_cookie(state: &AppState, secret: &str) -> Result<HeaderValue, AuthError> {
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let c = format!(
        "{SESSION_COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_MAX_AGE_S}{secure}"
    );
    HeaderValue::from_str(&c).map_err(|e| AuthError::Internal(e.to_string()))
}

/// Starts a session for a user; the response carrying its cookie.
pub async fn start_session(
    state: &AppState,
    user_id: i64,
    client: String,
) -> Result<Response, AuthError> {
    let secret = new_secret();
    let now = now_ms();
    let idle = state.config.access.session_idle.as_millis() as i64;
    state
        .store
        .insert_user_session(SessionRow {
            id: 0,
            user_id,
            hash: secret_hash(&secret),
            created: now,
            last_seen: now,
            expires: now + idle.min(SESSION_MAX_AGE_S * 1000),
            client,
        })
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(state, &secret)?);
    Ok(resp)
}

/// `POST /auth/login` `{"username", "password"}`: 204 with the session cookie; 401 for a
/// wrong name or password; 429 with `Retry-After` after too many failures (per username
/// and per address), whatever the password.
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AuthError> {
    let login: Login = serde_json::from_slice(&body).map_err(|e| {
        AuthError::BadRequest(format!("expected {{\"username\", \"password\"}}: {e}"))
    })?;
    let store = &*state.store;
    let policy = Policy::of(&state.config.access);
    let keys = throttle::keys(&login.username, &address);
    if let Some(wait) = throttle::attempt(store, policy, &keys, now_ms()).await? {
        tracing::warn!(
            "login throttled: user {:?} from {address}, retry after {wait} s",
            login.username
        );
        audit(
            store,
            None,
            "login.throttled",
            &login.username,
            &address,
            &format!("retry after {wait} s"),
        )
        .await;
        return Err(AuthError::Throttled(wait));
    }
    let user = store.user_by_name(login.username.trim()).await?;
    let hash = user
        .as_ref()
        .filter(|u| !u.disabled)
        .and_then(|u| u.password_hash.clone());
    let ok = state
        .argon2_verify(
            &login.password,
            hash.as_deref().unwrap_or_else(|| dummy_hash()),
        )
        .await
        .ok_or(AuthError::Busy)?;
    let user = match user {
        Some(u) if ok && hash.is_some() => u,
        _ => {
            throttle::failed(store, policy, &keys).await?;
            audit(store, None, "login.failed", &login.username, &address, "").await;
            return Err(AuthError::Unauthorized("wrong username or password"));
        }
    };
    throttle::reset(store, &keys).await?;
    audit(
        store,
        Some(&user.username),
        "login",
        &user.username,
        &address,
        "",
    )
    .await;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    start_session(
        &state,
        user.id,
        format!("{address} {agent}").trim().to_owned(),
    )
    .await
}

/// `POST /auth/logout`: ends the session of the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE)
        && let Err(e) = state
            .store
            .delete_user_session_by_hash(&secret_hash(&id))
            .await
    {
        return AuthError::from(e).into_response();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("errscope_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    resp
}

/// `GET /auth/invite/{token}`: whom an invite is for (to show before the password form).
pub async fn invite_info(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, AuthError> {
    let gone = || AuthError::NotFound("no such invite, or it has expired or been used".into());
    let inv = state
        .store
        .invite(&secret_hash(&token), now_ms())
        .await?
        .ok_or_else(gone)?;
    let user = state.store.user(inv.user_id).await?.ok_or_else(gone)?;
    Ok(Json(json!({
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "expires": inv.expires,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct Accept {
    token: String,
    password: String,
}

/// `POST /auth/invite/` `{"token", "password"}`: sets the invited user's password (once)
/// and starts a session: 204 with the cookie.
pub async fn accept_invite(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    body: Bytes,
) -> Result<Response, AuthError> {
    let a: Accept = serde_json::from_slice(&body)
        .map_err(|e| AuthError::BadRequest(format!("expected {{\"token\", \"password\"}}: {e}")))?;
    users::check_password(&a.password).map_err(|e| AuthError::BadRequest(e.to_string()))?;
    let hash = state.argon2_hash(&a.password).await?;
    let now = now_ms();
    let inv = state
        .store
        .accept_invite(&secret_hash(&a.token), &hash, now)
        .await?
        .ok_or_else(|| {
            AuthError::NotFound("no such invite, or it has expired or been used".into())
        })?;
    let user = state
        .store
        .user(inv.user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(|| AuthError::NotFound("the invited user is disabled".into()))?;
    audit(
        &*state.store,
        Some(&user.username),
        "invite.accept",
        &user.username,
        &address,
        "",
    )
    .await;
    start_session(&state, user.id, address).await
}
