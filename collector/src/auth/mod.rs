//! Teams and access: who is asking (a session cookie or a bearer token → a user, a role,
//! scopes, projects), the permission check of every `/api/0/` route, login throttling.
//!
//! `policy.rs` records each API route with what it needs and checks it before the
//! handler runs; `throttle.rs` counts login attempts; `login.rs` is the dashboard login,
//! logout and invites; `api.rs` the users, tokens, sessions and audit routes; `users.rs`
//! what those and the command line share.

pub mod api;
pub mod login;
pub mod policy;
pub mod throttle;
pub mod users;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::{ADMIN_USER, AppState};
use crate::store::{AuditRow, NewUser, Store, StoreError, UserRow, UserUpdate};
use crate::time::now_ms;

pub use policy::{Need, RouteRule, Routes, Target};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "errscope_session";
/// How the secret of a user's API token starts.
pub const TOKEN_PREFIX: &str = "esc_";
/// Audit entries kept (the oldest go first).
pub const AUDIT_KEEP: i64 = 100_000;

/// Teams and access settings.
#[derive(Debug, Clone, Copy)]
pub struct AccessConfig {
    /// A dashboard session ends after this long without a request.
    pub session_idle: Duration,
    /// Login failures are counted over this window (per username and per address).
    pub login_window: Duration,
    /// Failures in a window after which every attempt gets 429.
    pub login_max_failures: i64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            session_idle: Duration::from_secs(24 * 3600),
            login_window: Duration::from_secs(15 * 60),
            login_max_failures: 5,
        }
    }
}

/// A permission a token (or a role) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read projects, issues, events, tags, stats, rules, debug files.
    ProjectRead,
    /// Resolve and mute issues, manage alert rules.
    ProjectWrite,
    /// Delete debug files.
    ProjectAdmin,
    /// Upload debug files (what `sentry-cli debug-files upload` needs).
    DebugFilesWrite,
    /// Create projects; manage users; read the audit log.
    OrgAdmin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::ProjectRead,
        Scope::ProjectWrite,
        Scope::ProjectAdmin,
        Scope::DebugFilesWrite,
        Scope::OrgAdmin,
    ];

    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ProjectRead => "project:read",
            Scope::ProjectWrite => "project:write",
            Scope::ProjectAdmin => "project:admin",
            Scope::DebugFilesWrite => "debugfiles:write",
            Scope::OrgAdmin => "org:admin",
        }
    }

    /// The scope of a name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope.
    pub fn all() -> Scopes {
        Scopes(Scope::ALL.iter().fold(0, |a, s| a | s.bit()))
    }
    /// Whether `s` is in.
    pub fn has(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }
    /// Both sets.
    pub fn and(self, o: Scopes) -> Scopes {
        Scopes(self.0 & o.0)
    }
    /// The names, in [`Scope::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.has(*s))
            .map(Scope::as_str)
            .collect()
    }
    /// From space-separated names (unknown ones are ignored).
    pub fn parse(s: &str) -> Scopes {
        s.split_whitespace()
            .filter_map(Scope::parse)
            .collect::<Vec<_>>()
            .into()
    }
}

impl From<Vec<Scope>> for Scopes {
    fn from(v: Vec<Scope>) -> Self {
        Scopes(v.iter().fold(0, |a, s| a | s.bit()))
    }
}

/// A user's role in the installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, on every project; manages users.
    Owner,
    /// The projects they belong to: read, resolve/mute, alert rules, debug file uploads.
    Member,
    /// The projects they belong to, read only.
    Viewer,
}

impl Role {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
    /// The role of a name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
    /// What the role may do at most (a token narrows it further).
    pub fn scopes(self) -> Scopes {
        match self {
            Role::Owner => Scopes::all(),
            Role::Member => vec![
                Scope::ProjectRead,
                Scope::ProjectWrite,
                Scope::DebugFilesWrite,
            ]
            .into(),
            Role::Viewer => vec![Scope::ProjectRead].into(),
        }
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A dashboard session (its id).
    Session(i64),
    /// A user's API token (its id).
    Token(i64),
    /// The admin token of `ERRSCOPE_ADMIN_TOKEN` (or generated on the first start).
    AdminToken,
}

/// Who is asking, as the permission check and the handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: UserRow,
    /// Their role.
    pub role: Role,
    /// What this request may do.
    pub scopes: Scopes,
    /// The projects they see; `None`: all (owners).
    pub projects: Option<HashSet<i64>>,
    /// Session or token.
    pub via: Via,
    /// The client's address.
    pub address: String,
}

impl Caller {
    /// Whether the caller sees a project.
    pub fn sees(&self, project_id: i64) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|p| p.contains(&project_id))
    }
}

/// Why an access request failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 429 with `Retry-After` (seconds).
    #[error("too many failed logins; retry after {0} s")]
    Throttled(u64),
    /// 503.
    #[error("the collector is busy; retry after 1 s")]
    Busy,
    /// 500.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        if e.is_busy() {
            AuthError::Busy
        } else {
            AuthError::Internal(e.to_string())
        }
    }
}

impl AuthError {
    /// 403 naming the missing scope.
    pub fn missing(scope: Scope) -> AuthError {
        AuthError::Forbidden(format!(
            "this needs the scope `{}`, which this token or role does not have",
            scope.as_str()
        ))
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = match &self {
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::Conflict(_) => StatusCode::CONFLICT,
            AuthError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            AuthError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let AuthError::Internal(detail) = &self {
            tracing::error!("access request failed: {detail}");
        } else {
            tracing::debug!("access request rejected ({status}): {self}");
        }
        let mut resp = (status, axum::Json(json!({ "detail": self.to_string() }))).into_response();
        let retry = match &self {
            AuthError::Throttled(s) => Some(*s),
            AuthError::Busy => Some(1),
            _ => None,
        };
        if let Some(s) = retry
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Hex SHA-256: what is stored of a token, session or invite secret (they are 32 random
/// bytes, so a fast hash is enough; passwords get argon2).
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 32 random bytes, hex.
pub fn new_secret() -> String {
    format!(
        "{}{}",
        crate::state::random_secret(),
        crate::state::random_secret()
    )
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
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

/// Records an audit entry; a failure to is logged, never fails the request.
pub async fn audit(
    store: &dyn Store,
    actor: Option<&str>,
    action: &str,
    target: &str,
    address: &str,
    detail: &str,
) {
    let entry = AuditRow {
        id: 0,
        at: now_ms(),
        actor: actor.map(str::to_owned),
        action: action.to_owned(),
        target: target.to_owned(),
        address: address.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(e) = store.insert_audit(entry, AUDIT_KEEP).await {
        tracing::warn!("writing the audit log: {e}");
    }
}

const TOUCH_EVERY_MS: i64 = 60_000;

async fn caller_of(
    store: &dyn Store,
    user: UserRow,
    scopes: Scopes,
    via: Via,
    address: &str,
) -> Result<Option<Caller>, StoreError> {
    if user.disabled {
        return Ok(None);
    }
    let Some(role) = Role::parse(&user.role) else {
        return Ok(None);
    };
    let projects = match role {
        Role::Owner => None,
        _ => Some(store.memberships(user.id).await?.into_iter().collect()),
    };
    Ok(Some(Caller {
        scopes: scopes.and(role.scopes()),
        user,
        role,
        projects,
        via,
        address: address.to_owned(),
    }))
}

/// Who a request comes from: a bearer token (a user's, or the admin token) or the
/// session cookie. `None`: nobody known (or a disabled user).
pub async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    address: &str,
) -> Result<Option<Caller>, StoreError> {
    let store = &*state.store;
    let now = now_ms();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if token.starts_with(TOKEN_PREFIX) {
            let Some(t) = store.token_by_hash(&secret_hash(token)).await? else {
                return Ok(None);
            };
            let Some(user) = store.user(t.user_id).await? else {
                return Ok(None);
            };
            if t.last_used.is_none_or(|l| now - l >= TOUCH_EVERY_MS) {
                store.touch_token(t.id, now).await?;
            }
            return caller_of(
                store,
                user,
                Scopes::parse(&t.scopes),
                Via::Token(t.id),
                address,
            )
            .await;
        }
        if state.check_token(token).await
            && let Some(user) = store.user_by_name(ADMIN_USER).await?
        {
            return caller_of(store, user, Scopes::all(), Via::AdminToken, address).await;
        }
        return Ok(None);
    }
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(s) = store.user_session(&secret_hash(&id), now).await? else {
        return Ok(None);
    };
    let Some(user) = store.user(s.user_id).await? else {
        return Ok(None);
    };
    if now - s.last_seen >= TOUCH_EVERY_MS {
        let idle = state.config.access.session_idle.as_millis() as i64;
        store.touch_user_session(s.id, now, now + idle).await?;
    }
    caller_of(store, user, Scopes::all(), Via::Session(s.id), address).await
}

/// Makes the admin login the first owner: on a database without users (a fresh start or
/// an upgrade), a user `admin` with the admin password's hash; with
/// `ERRSCOPE_ADMIN_PASSWORD` set (`from_env`), that password is admin's on every start.
pub async fn bootstrap_owner(
    store: &dyn Store,
    password_hash: &str,
    from_env: bool,
) -> Result<(), StoreError> {
    if let Some(admin) = store.user_by_name(ADMIN_USER).await? {
        if from_env && admin.password_hash.as_deref() != Some(password_hash) {
            store
                .update_user(
                    admin.id,
                    UserUpdate {
                        password_hash: Some(password_hash.to_owned()),
                        ..Default::default()
                    },
                )
                .await?;
        }
        return Ok(());
    }
    if !from_env && !store.users().await?.is_empty() {
        return Ok(());
    }
    store
        .insert_user(NewUser {
            username: ADMIN_USER.into(),
            display_name: "Administrator".into(),
            email: None,
            role: Role::Owner.as_str().into(),
            password_hash: Some(password_hash.to_owned()),
            created: now_ms(),
        })
        .await?;
    Ok(())
}
