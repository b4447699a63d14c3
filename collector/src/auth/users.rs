//! Users as the API and the command line change them: names and passwords checked,
//! invites made, memberships set, the last owner kept.

use crate::store::{InviteRow, NewUser, Store, StoreError, UserChanged, UserRow, UserUpdate};
use crate::time::now_ms;

use super::{Role, new_secret, secret_hash};

/// How long an invite is good for.
pub const INVITE_TTL_MS: i64 = 7 * 24 * 3_600_000;

/// Why a change to users was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The name is taken, or the change would leave no owner.
    #[error("{0}")]
    Conflict(String),
    /// No such user or project.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a login name: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(name: &str) -> Result<String, UserError> {
    let n = name.trim();
    if n.is_empty()
        || n.chars().count() > 64
        || !n.chars().all(|c| c.is_alphanumeric() || "._-@".contains(c))
    {
        return Err(UserError::Invalid(
            "username must be 1 to 64 letters, digits, `.`, `_`, `-` or `@`".into(),
        ));
    }
    Ok(n.to_owned())
}

/// Checks a new password: 8 to 1024 characters.
pub fn check_password(p: &str) -> Result<(), UserError> {
    let n = p.chars().count();
    if !(8..=1024).contains(&n) {
        return Err(UserError::Invalid(
            "a password must be 8 to 1024 characters".into(),
        ));
    }
    Ok(())
}

/// Checks a role name.
pub fn check_role(r: &str) -> Result<Role, UserError> {
    Role::parse(r).ok_or_else(|| {
        UserError::Invalid(format!("role must be owner, member or viewer, not `{r}`"))
    })
}

/// The project ids of ids or names, each checked to exist.
pub async fn project_ids(store: &dyn Store, refs: &[String]) -> Result<Vec<i64>, UserError> {
    let all = store.list_projects().await?;
    refs.iter()
        .map(|r| {
            all.iter()
                .find(|p| p.id.to_string() == *r)
                .or_else(|| all.iter().find(|p| p.name == *r))
                .map(|p| p.id)
                .ok_or_else(|| UserError::NotFound(format!("no project with the id or name `{r}`")))
        })
        .collect()
}

/// Adds a user with their projects. `password_hash`: `None` for an invited user.
pub async fn add(
    store: &dyn Store,
    username: &str,
    display_name: Option<&str>,
    email: Option<&str>,
    role: Role,
    projects: &[i64],
    password_hash: Option<String>,
) -> Result<UserRow, UserError> {
    let username = check_username(username)?;
    let display_name = display_name
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(&username)
        .chars()
        .take(128)
        .collect();
    let email = email.map(str::trim).filter(|e| !e.is_empty());
    if let Some(e) = email
        && (!e.contains('@') || e.len() > 254)
    {
        return Err(UserError::Invalid(format!("`{e}` is not an email address")));
    }
    let user = store
        .insert_user(NewUser {
            username: username.clone(),
            display_name,
            email: email.map(str::to_owned),
            role: role.as_str().into(),
            password_hash,
            created: now_ms(),
        })
        .await?
        .ok_or_else(|| UserError::Conflict(format!("a user named `{username}` exists")))?;
    if !projects.is_empty() {
        store.set_memberships(user.id, projects.to_vec()).await?;
    }
    Ok(user)
}

/// A new invite for a user: its secret (shown once) and when it expires.
pub async fn invite(store: &dyn Store, user_id: i64) -> Result<(String, i64), StoreError> {
    let secret = new_secret();
    let now = now_ms();
    let expires = now + INVITE_TTL_MS;
    store
        .insert_invite(InviteRow {
            hash: secret_hash(&secret),
            user_id,
            created: now,
            expires,
        })
        .await?;
    Ok((secret, expires))
}

/// Changes a user (disabling ends their sessions at once), keeping an owner.
pub async fn update(
    store: &dyn Store,
    user: &UserRow,
    update: UserUpdate,
) -> Result<(), UserError> {
    if let Some(r) = &update.role {
        check_role(r)?;
    }
    // The store checks for the last owner inside the change's transaction.
    match store.update_user(user.id, update).await? {
        UserChanged::Done => Ok(()),
        UserChanged::NoUser => Err(UserError::NotFound(format!("no user `{}`", user.username))),
        UserChanged::LastOwner => Err(UserError::Conflict(format!(
            "`{}` is the last enabled owner; make another owner first",
            user.username
        ))),
    }
}
