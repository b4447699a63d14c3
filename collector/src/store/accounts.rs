//! The rows of teams and access, as every backend stores them: users, memberships, API
//! tokens, dashboard sessions, invites, login throttle windows and the audit log.

use serde::Serialize;

/// A user. Secrets are never serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    /// Id.
    pub id: i64,
    /// Login name (unique).
    pub username: String,
    /// A name for people.
    pub display_name: String,
    /// Optional email address.
    pub email: Option<String>,
    /// `owner`, `member` or `viewer`.
    pub role: String,
    /// Disabled users cannot log in, and their sessions and tokens stop working.
    pub disabled: bool,
    /// The argon2 hash of the password; `None` until an invite is accepted.
    #[serde(skip)]
    pub password_hash: Option<String>,
    /// When it was created (epoch ms).
    pub created: i64,
}

/// A new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// A name for people.
    pub display_name: String,
    /// Optional email address.
    pub email: Option<String>,
    /// `owner`, `member` or `viewer`.
    pub role: String,
    /// The argon2 hash of the password, if one is set now.
    pub password_hash: Option<String>,
    /// Epoch ms.
    pub created: i64,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// A name for people.
    pub display_name: Option<String>,
    /// Email (`Some(None)` clears it).
    pub email: Option<Option<String>>,
    /// `owner`, `member` or `viewer`.
    pub role: Option<String>,
    /// Disables (ending every session of the user at once) or enables.
    pub disabled: Option<bool>,
    /// A new argon2 password hash.
    pub password_hash: Option<String>,
}

/// What [`Store::update_user`](super::Store::update_user) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChanged {
    /// Changed.
    Done,
    /// There is no such user.
    NoUser,
    /// Refused: it would demote or disable the last enabled owner.
    LastOwner,
}

/// Whether a user, as `update` leaves them, is an enabled owner.
pub fn stays_owner(role: &str, disabled: bool, update: &UserUpdate) -> bool {
    update.role.as_deref().unwrap_or(role) == "owner" && !update.disabled.unwrap_or(disabled)
}

/// An API token (only the SHA-256 of the secret is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// Id.
    pub id: i64,
    /// Its user.
    pub user_id: i64,
    /// A label for people.
    pub name: String,
    /// Space-separated scopes.
    pub scopes: String,
    /// Hex SHA-256 of the secret.
    #[serde(skip)]
    pub hash: String,
    /// The secret's first characters, to recognize it.
    pub prefix: String,
    /// Epoch ms.
    pub created: i64,
    /// Epoch ms of the last request made with it (to a minute).
    pub last_used: Option<i64>,
}

/// A dashboard session (only a hash of the cookie's secret is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// Id (to list and revoke it).
    pub id: i64,
    /// Its user.
    pub user_id: i64,
    /// Hash of the cookie's secret.
    #[serde(skip)]
    pub hash: String,
    /// Epoch ms.
    pub created: i64,
    /// Epoch ms of the last request (to a minute).
    pub last_seen: i64,
    /// Epoch ms after which it is over unless used again.
    pub expires: i64,
    /// The client's address and user agent at login.
    pub client: String,
}

/// A one-time invite to set a user's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRow {
    /// Hash of the invite's secret.
    pub hash: String,
    /// The invited user.
    pub user_id: i64,
    /// Epoch ms.
    pub created: i64,
    /// Epoch ms.
    pub expires: i64,
}

/// A login throttle window of one key (`user:<name>` or `addr:<ip>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleRow {
    /// Epoch ms the window started.
    pub window_start: i64,
    /// Attempts counted in the window (each refused attempt counts too).
    pub failures: i64,
    /// Epoch ms until which every attempt is refused.
    pub blocked_until: i64,
}

/// How [`Store::throttle`](super::Store::throttle) changes a window: the old row (if any)
/// to the new one (`None` removes it). Runs inside the store's transaction.
pub type ThrottleFn = Box<dyn FnOnce(Option<ThrottleRow>) -> Option<ThrottleRow> + Send>;

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// Id (newest is highest).
    pub id: i64,
    /// Epoch ms.
    pub at: i64,
    /// Who did it (a username; `None` for an unknown or anonymous caller).
    pub actor: Option<String>,
    /// What: `login`, `login.failed`, `login.throttled`, `user.create`, ...
    pub action: String,
    /// What it was done to (a username, a path).
    pub target: String,
    /// The client's address.
    pub address: String,
    /// Anything else worth knowing.
    pub detail: String,
}
