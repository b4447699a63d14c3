//! The access routes of `/api/0/`: who am I, users (owners), my password, my tokens, my
//! sessions, the audit log (owners).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::policy::{Routes, delete, get, post, put};
use super::users::{self, UserError};
use super::{AuthError, Caller, Scope, Scopes, TOKEN_PREFIX, Via, audit, new_secret, secret_hash};
use super::{Need, Scope::OrgAdmin};
use crate::state::AppState;
use crate::store::{TokenRow, UserRow, UserUpdate};
use crate::time::now_ms;

impl From<UserError> for AuthError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(m) => AuthError::BadRequest(m),
            UserError::Conflict(m) => AuthError::Conflict(m),
            UserError::NotFound(m) => AuthError::NotFound(m),
            UserError::Store(e) => e.into(),
        }
    }
}

/// Adds the access routes to the `/api/0/` ones: users and the audit log for owners
/// (`org:admin`); the caller's own password, tokens and sessions for anyone signed in.
pub fn routes(routes: Routes) -> Routes {
    routes
        .route(
            "/api/0/users/",
            get(Need::org(OrgAdmin), list_users).post(Need::org(OrgAdmin), create_user),
        )
        .route("/api/0/users/{id}/", put(Need::org(OrgAdmin), update_user))
        .route(
            "/api/0/users/{id}/invite/",
            post(Need::org(OrgAdmin), reinvite),
        )
        .route("/api/0/audit/", get(Need::org(OrgAdmin), audit_log))
        .route("/api/0/user/", get(Need::SELF, whoami))
        .route("/api/0/user/password/", put(Need::SELF, change_password))
        .route(
            "/api/0/tokens/",
            get(Need::SELF, list_tokens).post(Need::SELF, create_token),
        )
        .route("/api/0/tokens/{id}/", delete(Need::SELF, revoke_token))
        .route("/api/0/sessions/", get(Need::SELF, list_sessions))
        .route("/api/0/sessions/{id}/", delete(Need::SELF, revoke_session))
}

fn body<T: DeserializeOwned>(b: &Bytes, shape: &str) -> Result<T, AuthError> {
    serde_json::from_slice(b).map_err(|e| AuthError::BadRequest(format!("expected {shape}: {e}")))
}

fn id_of(raw: &str, what: &str) -> Result<i64, AuthError> {
    raw.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| AuthError::NotFound(format!("no such {what}")))
}

fn invite_url(state: &AppState, secret: &str) -> String {
    format!(
        "{}/invite/{secret}",
        state.config.public_url.trim_end_matches('/')
    )
}

/// `GET /api/0/session/`: who is asking, `{"username"}`.
pub async fn session_info(Extension(c): Extension<Caller>) -> Response {
    Json(json!({ "username": c.user.username })).into_response()
}

/// `GET /api/0/user/`: who is asking, their role, scopes and projects.
pub async fn whoami(Extension(c): Extension<Caller>) -> Response {
    let projects = c.projects.as_ref().map(|p| {
        let mut v: Vec<i64> = p.iter().copied().collect();
        v.sort_unstable();
        v
    });
    Json(json!({
        "id": c.user.id,
        "username": c.user.username,
        "display_name": c.user.display_name,
        "role": c.role.as_str(),
        "scopes": c.scopes.names(),
        "projects": projects,
        "via": match c.via { Via::Session(_) => "session", _ => "token" },
    }))
    .into_response()
}

async fn user_json(state: &AppState, u: &UserRow) -> Result<Value, AuthError> {
    let mut v = serde_json::to_value(u).map_err(|e| AuthError::Internal(e.to_string()))?;
    if let Value::Object(m) = &mut v {
        m.insert(
            "projects".into(),
            json!(state.store.memberships(u.id).await?),
        );
        m.insert("has_password".into(), json!(u.password_hash.is_some()));
    }
    Ok(v)
}

/// `GET /api/0/users/` (org:admin).
pub async fn list_users(State(state): State<AppState>) -> Result<Response, AuthError> {
    let mut out = Vec::new();
    for u in state.store.users().await? {
        out.push(user_json(&state, &u).await?);
    }
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct NewUserBody {
    username: String,
    role: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    projects: Vec<Value>,
}

fn refs(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|p| match p {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// `POST /api/0/users/` (org:admin): adds a user and an invite to set their password;
/// 201 `{user, invite: {token, url, expires}}` (the token is shown once).
pub async fn create_user(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    b: Bytes,
) -> Result<Response, AuthError> {
    let n: NewUserBody = body(
        &b,
        "{\"username\", \"role\": \"owner\"|\"member\"|\"viewer\", \"projects\": [...]}",
    )?;
    let role = users::check_role(&n.role)?;
    let store = &*state.store;
    let projects = users::project_ids(store, &refs(&n.projects)).await?;
    let u = users::add(
        store,
        &n.username,
        n.display_name.as_deref(),
        n.email.as_deref(),
        role,
        &projects,
        None,
    )
    .await?;
    let (secret, expires) = users::invite(store, u.id).await?;
    audit(
        store,
        Some(&c.user.username),
        "user.create",
        &u.username,
        &c.address,
        &format!("role {}", u.role),
    )
    .await;
    let user = user_json(&state, &u).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "user": user,
            "invite": { "token": secret, "url": invite_url(&state, &secret), "expires": expires },
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    projects: Option<Vec<Value>>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email: Option<Option<String>>,
}

async fn user_or_404(state: &AppState, raw: &str) -> Result<UserRow, AuthError> {
    state
        .store
        .user(id_of(raw, "user")?)
        .await?
        .ok_or_else(|| AuthError::NotFound("no such user".into()))
}

/// `PUT /api/0/users/{id}/` (org:admin): `{role?, projects?, disabled?, display_name?,
/// email?}`. Disabling ends the user's sessions at once.
pub async fn update_user(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, AuthError> {
    let u: UpdateBody = body(
        &b,
        "{\"role\"?, \"projects\"?: [...], \"disabled\"?, \"display_name\"?, \"email\"?}",
    )?;
    let user = user_or_404(&state, &id).await?;
    let store = &*state.store;
    let projects = match &u.projects {
        Some(p) => Some(users::project_ids(store, &refs(p)).await?),
        None => None,
    };
    let update = UserUpdate {
        display_name: u.display_name.map(|d| d.trim().chars().take(128).collect()),
        email: u.email,
        role: u.role.clone(),
        disabled: u.disabled,
        password_hash: None,
    };
    users::update(store, &user, update).await?;
    if let Some(p) = projects {
        store.set_memberships(user.id, p).await?;
    }
    let mut what = Vec::new();
    if let Some(r) = &u.role {
        what.push(format!("role {r}"));
    }
    if let Some(d) = u.disabled {
        what.push(if d { "disabled" } else { "enabled" }.to_owned());
    }
    if u.projects.is_some() {
        what.push("projects".into());
    }
    let action = if u.disabled == Some(true) {
        "user.disable"
    } else {
        "user.update"
    };
    audit(
        store,
        Some(&c.user.username),
        action,
        &user.username,
        &c.address,
        &what.join(", "),
    )
    .await;
    let fresh = user_or_404(&state, &id).await?;
    Ok(Json(user_json(&state, &fresh).await?).into_response())
}

/// `POST /api/0/users/{id}/invite/` (org:admin): a new invite (the old one stops working).
pub async fn reinvite(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, AuthError> {
    let user = user_or_404(&state, &id).await?;
    if user.disabled {
        return Err(AuthError::Conflict(format!(
            "`{}` is disabled; enable them first",
            user.username
        )));
    }
    let (secret, expires) = users::invite(&*state.store, user.id).await?;
    audit(
        &*state.store,
        Some(&c.user.username),
        "user.invite",
        &user.username,
        &c.address,
        "",
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": secret, "url": invite_url(&state, &secret), "expires": expires })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

/// `PUT /api/0/user/password/`: `{current_password, new_password}`; 204.
pub async fn change_password(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    b: Bytes,
) -> Result<Response, AuthError> {
    let p: PasswordBody = body(&b, "{\"current_password\", \"new_password\"}")?;
    users::check_password(&p.new_password)?;
    let current = c.user.password_hash.clone().unwrap_or_default();
    let ok = state
        .argon2_verify(&p.current_password, &current)
        .await
        .ok_or(AuthError::Busy)?;
    if !ok {
        return Err(AuthError::Forbidden(
            "the current password is not right".into(),
        ));
    }
    let hash = state.argon2_hash(&p.new_password).await?;
    state
        .store
        .update_user(
            c.user.id,
            UserUpdate {
                password_hash: Some(hash),
                ..Default::default()
            },
        )
        .await?;
    audit(
        &*state.store,
        Some(&c.user.username),
        "password.change",
        &c.user.username,
        &c.address,
        "",
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn token_json(t: &TokenRow) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "scopes": Scopes::parse(&t.scopes).names(),
        "prefix": t.prefix,
        "created": t.created,
        "last_used": t.last_used,
    })
}

/// `GET /api/0/tokens/`: the caller's tokens (never their secrets).
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
) -> Result<Response, AuthError> {
    let rows = state.store.user_tokens(c.user.id).await?;
    Ok(Json(rows.iter().map(token_json).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize)]
struct NewTokenBody {
    #[serde(default)]
    name: String,
    scopes: Vec<String>,
}

/// `POST /api/0/tokens/` `{name, scopes}`: 201 with the token's secret (shown once). A
/// caller can give a token only scopes it has itself.
pub async fn create_token(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    b: Bytes,
) -> Result<Response, AuthError> {
    let n: NewTokenBody = body(&b, "{\"name\", \"scopes\": [\"project:read\", ...]}")?;
    let mut scopes = Vec::new();
    for s in &n.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            AuthError::BadRequest(format!(
                "unknown scope `{s}`; scopes are {}",
                Scopes::all().names().join(", ")
            ))
        })?;
        if !c.scopes.has(scope) {
            return Err(AuthError::missing(scope));
        }
        scopes.push(scope);
    }
    if scopes.is_empty() {
        return Err(AuthError::BadRequest(
            "give a token at least one scope".into(),
        ));
    }
    let name: String = n.name.trim().chars().take(128).collect();
    let secret = format!("{TOKEN_PREFIX}{}", new_secret());
    let row = state
        .store
        .insert_token(TokenRow {
            id: 0,
            user_id: c.user.id,
            name: if name.is_empty() {
                "token".into()
            } else {
                name
            },
            scopes: Scopes::from(scopes).names().join(" "),
            hash: secret_hash(&secret),
            prefix: secret.chars().take(TOKEN_PREFIX.len() + 6).collect(),
            created: now_ms(),
            last_used: None,
        })
        .await?;
    audit(
        &*state.store,
        Some(&c.user.username),
        "token.create",
        &row.name,
        &c.address,
        &row.scopes,
    )
    .await;
    let mut v = token_json(&row);
    if let Value::Object(m) = &mut v {
        m.insert("token".into(), json!(secret));
    }
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `DELETE /api/0/tokens/{id}/`: revokes one of the caller's tokens; 204.
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, AuthError> {
    let id = id_of(&id, "token")?;
    if !state.store.delete_token(c.user.id, id).await? {
        return Err(AuthError::NotFound("no such token".into()));
    }
    audit(
        &*state.store,
        Some(&c.user.username),
        "token.revoke",
        &id.to_string(),
        &c.address,
        "",
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/0/sessions/`: the caller's live sessions (`current` marks this one).
pub async fn list_sessions(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
) -> Result<Response, AuthError> {
    let rows = state.store.user_sessions(c.user.id, now_ms()).await?;
    let out: Vec<Value> = rows
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "created": s.created,
                "last_seen": s.last_seen,
                "expires": s.expires,
                "client": s.client,
                "current": c.via == Via::Session(s.id),
            })
        })
        .collect();
    Ok(Json(out).into_response())
}

/// `DELETE /api/0/sessions/{id}/`: ends one of the caller's sessions; 204.
pub async fn revoke_session(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, AuthError> {
    let id = id_of(&id, "session")?;
    if !state.store.delete_user_session(c.user.id, id).await? {
        return Err(AuthError::NotFound("no such session".into()));
    }
    audit(
        &*state.store,
        Some(&c.user.username),
        "session.revoke",
        &id.to_string(),
        &c.address,
        "",
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/0/audit/?before=<id>&limit=<n>` (org:admin): newest first.
pub async fn audit_log(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AuthError> {
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| *l >= 1)
            .map(|l| l.min(500))
            .ok_or_else(|| AuthError::BadRequest("limit must be a positive integer".into()))?,
    };
    let before = match q.get("before").filter(|s| !s.is_empty()) {
        None => None,
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| AuthError::BadRequest("before must be an entry id".into()))?,
        ),
    };
    let rows = state.store.audit(before, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(json!({ "data": rows, "next_cursor": next })).into_response())
}
