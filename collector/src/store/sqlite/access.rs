//! Teams and access on SQLite: users, memberships, tokens, sessions, invites, login
//! throttle windows and the audit log (reads on the pool, writes through the writer).

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::store::SqliteStore;
use crate::store::{
    AuditRow, InviteRow, NewUser, SessionRow, StoreError, ThrottleFn, ThrottleRow, TokenRow,
    UserChanged, UserRow, UserUpdate, stays_owner,
};

/// The migration that adds the tables (appended to `MIGRATIONS`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        email TEXT,
        role TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        password_hash TEXT,
        created INTEGER NOT NULL
    );
    CREATE TABLE memberships (
        user_id INTEGER NOT NULL REFERENCES users(id),
        project_id INTEGER NOT NULL REFERENCES projects(id),
        PRIMARY KEY (user_id, project_id)
    ) WITHOUT ROWID;
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created INTEGER NOT NULL,
        last_used INTEGER
    );
    CREATE INDEX api_tokens_user ON api_tokens (user_id, id);
    CREATE TABLE user_sessions (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        hash TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        client TEXT NOT NULL
    );
    CREATE INDEX user_sessions_user ON user_sessions (user_id, id);
    CREATE INDEX user_sessions_expires ON user_sessions (expires);
    CREATE TABLE invites (
        hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE TABLE login_throttle (
        key TEXT PRIMARY KEY,
        window_start INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        blocked_until INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        address TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    "#;

const USER_COLUMNS: &str =
    "id, username, display_name, email, role, disabled, password_hash, created";

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        username: r.get(1)?,
        display_name: r.get(2)?,
        email: r.get(3)?,
        role: r.get(4)?,
        disabled: r.get::<_, i64>(5)? != 0,
        password_hash: r.get(6)?,
        created: r.get(7)?,
    })
}

const TOKEN_COLUMNS: &str = "id, user_id, name, scopes, hash, prefix, created, last_used";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        name: r.get(2)?,
        scopes: r.get(3)?,
        hash: r.get(4)?,
        prefix: r.get(5)?,
        created: r.get(6)?,
        last_used: r.get(7)?,
    })
}

const SESSION_COLUMNS: &str = "id, user_id, hash, created, last_seen, expires, client";

fn session_row(r: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        hash: r.get(2)?,
        created: r.get(3)?,
        last_seen: r.get(4)?,
        expires: r.get(5)?,
        client: r.get(6)?,
    })
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        address: r.get(5)?,
        detail: r.get(6)?,
    })
}

fn user_where(
    c: &Connection,
    clause: &str,
    p: &dyn rusqlite::ToSql,
) -> Result<Option<UserRow>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE {clause}"),
        [p],
        user_row,
    )
    .optional()?)
}

impl SqliteStore {
    pub(super) async fn a_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.reads
            .run(|c| {
                let mut st =
                    c.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
                Ok(st.query_map([], user_row)?.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    pub(super) async fn a_user(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        self.reads.run(move |c| user_where(c, "id = ?1", &id)).await
    }

    pub(super) async fn a_user_by_name(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        let n = name.to_owned();
        self.reads
            .run(move |c| user_where(c, "username = ?1", &n))
            .await
    }

    pub(super) async fn a_insert_user(&self, u: NewUser) -> Result<Option<UserRow>, StoreError> {
        self.writer
            .exec(move |tx| {
                let n = tx.execute(
                    "INSERT OR IGNORE INTO users (username, display_name, email, role, password_hash, created)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![u.username, u.display_name, u.email, u.role, u.password_hash, u.created],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                user_where(tx, "id = ?1", &tx.last_insert_rowid())
            })
            .await
    }

    pub(super) async fn a_update_user(
        &self,
        id: i64,
        u: UserUpdate,
    ) -> Result<UserChanged, StoreError> {
        self.writer
            .exec(move |tx| {
                // One writer: the check and the change are in one transaction, which no
                // other change to users can interleave with (another process's waits
                // for the write lock, or fails with a busy snapshot and retries).
                let Some(was) = user_where(tx, "id = ?1", &id)? else {
                    return Ok(UserChanged::NoUser);
                };
                if was.role == "owner" && !was.disabled && !stays_owner(&was.role, was.disabled, &u) {
                    let others: i64 = tx.query_row(
                        "SELECT count(*) FROM users WHERE role = 'owner' AND disabled = 0 AND id <> ?1",
                        [id],
                        |r| r.get(0),
                    )?;
                    if others == 0 {
                        return Ok(UserChanged::LastOwner);
                    }
                }
                let n = tx.execute(
                    "UPDATE users SET
                        display_name = COALESCE(?2, display_name),
                        email = CASE WHEN ?3 THEN ?4 ELSE email END,
                        role = COALESCE(?5, role),
                        disabled = COALESCE(?6, disabled),
                        password_hash = COALESCE(?7, password_hash)
                     WHERE id = ?1",
                    params![
                        id,
                        u.display_name,
                        u.email.is_some(),
                        u.email.clone().flatten(),
                        u.role,
                        u.disabled.map(i64::from),
                        u.password_hash
                    ],
                )?;
                if u.disabled == Some(true) {
                    tx.execute("DELETE FROM user_sessions WHERE user_id = ?1", [id])?;
                    tx.execute("DELETE FROM invites WHERE user_id = ?1", [id])?;
                }
                Ok(if n > 0 {
                    UserChanged::Done
                } else {
                    UserChanged::NoUser
                })
            })
            .await
    }

    pub(super) async fn a_memberships(&self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        self.reads
            .run(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT project_id FROM memberships WHERE user_id = ?1 ORDER BY project_id",
                )?;
                Ok(st
                    .query_map([user_id], |r| r.get(0))?
                    .collect::<Result<Vec<i64>, _>>()?)
            })
            .await
    }

    pub(super) async fn a_set_memberships(
        &self,
        user_id: i64,
        projects: Vec<i64>,
    ) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                tx.execute("DELETE FROM memberships WHERE user_id = ?1", [user_id])?;
                for p in projects {
                    tx.execute(
                        "INSERT OR IGNORE INTO memberships (user_id, project_id) VALUES (?1, ?2)",
                        [user_id, p],
                    )?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn a_insert_token(&self, t: TokenRow) -> Result<TokenRow, StoreError> {
        self.writer
            .exec(move |tx| {
                tx.execute(
                    "INSERT INTO api_tokens (user_id, name, scopes, hash, prefix, created, last_used)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![t.user_id, t.name, t.scopes, t.hash, t.prefix, t.created, t.last_used],
                )?;
                Ok(TokenRow {
                    id: tx.last_insert_rowid(),
                    ..t
                })
            })
            .await
    }

    pub(super) async fn a_token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let h = hash.to_owned();
        self.reads
            .run(move |c| {
                Ok(c.query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = ?1"),
                    [h],
                    token_row,
                )
                .optional()?)
            })
            .await
    }

    pub(super) async fn a_user_tokens(&self, user_id: i64) -> Result<Vec<TokenRow>, StoreError> {
        self.reads
            .run(move |c| {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = ?1 ORDER BY id"
                ))?;
                Ok(st
                    .query_map([user_id], token_row)?
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    pub(super) async fn a_delete_token(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        self.writer
            .exec(move |tx| {
                Ok(tx.execute(
                    "DELETE FROM api_tokens WHERE id = ?1 AND user_id = ?2",
                    [id, user_id],
                )? > 0)
            })
            .await
    }

    pub(super) async fn a_touch_token(&self, id: i64, now: i64) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                tx.execute(
                    "UPDATE api_tokens SET last_used = ?2 WHERE id = ?1",
                    [id, now],
                )?;
                Ok(())
            })
            .await
    }

    pub(super) async fn a_insert_user_session(&self, s: SessionRow) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                tx.execute("DELETE FROM user_sessions WHERE expires <= ?1", [s.created])?;
                tx.execute(
                    "INSERT INTO user_sessions (user_id, hash, created, last_seen, expires, client)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        s.user_id,
                        s.hash,
                        s.created,
                        s.last_seen,
                        s.expires,
                        s.client
                    ],
                )?;
                Ok(())
            })
            .await
    }

    pub(super) async fn a_user_session(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let h = hash.to_owned();
        self.reads
            .run(move |c| {
                Ok(c.query_row(
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE hash = ?1 AND expires > ?2"
                    ),
                    params![h, now],
                    session_row,
                )
                .optional()?)
            })
            .await
    }

    pub(super) async fn a_touch_user_session(
        &self,
        id: i64,
        last_seen: i64,
        expires: i64,
    ) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                tx.execute(
                    "UPDATE user_sessions SET last_seen = ?2, expires = MAX(expires, ?3) WHERE id = ?1",
                    [id, last_seen, expires],
                )?;
                Ok(())
            })
            .await
    }

    pub(super) async fn a_user_sessions(
        &self,
        user_id: i64,
        now: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        self.reads
            .run(move |c| {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE user_id = ?1 AND expires > ?2 ORDER BY id"
                ))?;
                Ok(st
                    .query_map([user_id, now], session_row)?
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    pub(super) async fn a_delete_user_session(
        &self,
        user_id: i64,
        id: i64,
    ) -> Result<bool, StoreError> {
        self.writer
            .exec(move |tx| {
                Ok(tx.execute(
                    "DELETE FROM user_sessions WHERE id = ?1 AND user_id = ?2",
                    [id, user_id],
                )? > 0)
            })
            .await
    }

    pub(super) async fn a_delete_user_session_by_hash(&self, hash: &str) -> Result<(), StoreError> {
        let h = hash.to_owned();
        self.writer
            .exec(move |tx| {
                tx.execute("DELETE FROM user_sessions WHERE hash = ?1", [h])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn a_insert_invite(&self, i: InviteRow) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                tx.execute(
                    "DELETE FROM invites WHERE user_id = ?1 OR expires <= ?2",
                    [i.user_id, i.created],
                )?;
                tx.execute(
                    "INSERT INTO invites (hash, user_id, created, expires) VALUES (?1, ?2, ?3, ?4)",
                    params![i.hash, i.user_id, i.created, i.expires],
                )?;
                Ok(())
            })
            .await
    }

    pub(super) async fn a_invite(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<InviteRow>, StoreError> {
        let h = hash.to_owned();
        self.reads
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT hash, user_id, created, expires FROM invites WHERE hash = ?1 AND expires > ?2",
                    params![h, now],
                    |r| {
                        Ok(InviteRow {
                            hash: r.get(0)?,
                            user_id: r.get(1)?,
                            created: r.get(2)?,
                            expires: r.get(3)?,
                        })
                    },
                )
                .optional()?)
            })
            .await
    }

    pub(super) async fn a_accept_invite(
        &self,
        hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<InviteRow>, StoreError> {
        let (h, p) = (hash.to_owned(), password_hash.to_owned());
        self.writer
            .exec(move |tx| {
                let found = tx
                    .query_row(
                        "DELETE FROM invites WHERE hash = ?1 RETURNING hash, user_id, created, expires",
                        [&h],
                        |r| {
                            Ok(InviteRow {
                                hash: r.get(0)?,
                                user_id: r.get(1)?,
                                created: r.get(2)?,
                                expires: r.get(3)?,
                            })
                        },
                    )
                    .optional()?;
                let Some(inv) = found.filter(|i| i.expires > now) else {
                    return Ok(None);
                };
                tx.execute(
                    "UPDATE users SET password_hash = ?2 WHERE id = ?1 AND disabled = 0",
                    params![inv.user_id, p],
                )?;
                Ok(Some(inv))
            })
            .await
    }

    pub(super) async fn a_throttle(
        &self,
        key: &str,
        f: ThrottleFn,
    ) -> Result<Option<ThrottleRow>, StoreError> {
        let k = key.to_owned();
        self.writer
            .exec(move |tx| {
                let old = tx
                    .query_row(
                        "SELECT window_start, failures, blocked_until FROM login_throttle WHERE key = ?1",
                        [&k],
                        |r| {
                            Ok(ThrottleRow {
                                window_start: r.get(0)?,
                                failures: r.get(1)?,
                                blocked_until: r.get(2)?,
                            })
                        },
                    )
                    .optional()?;
                let new = f(old);
                match new {
                    None => {
                        tx.execute("DELETE FROM login_throttle WHERE key = ?1", [&k])?;
                    }
                    Some(t) => {
                        tx.execute(
                            "INSERT INTO login_throttle (key, window_start, failures, blocked_until)
                             VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (key) DO UPDATE SET window_start = excluded.window_start,
                                failures = excluded.failures, blocked_until = excluded.blocked_until",
                            params![k, t.window_start, t.failures, t.blocked_until],
                        )?;
                    }
                }
                Ok(new)
            })
            .await
    }

    pub(super) async fn a_insert_audit(&self, e: AuditRow, keep: i64) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                tx.execute(
                    "INSERT INTO audit_log (at, actor, action, target, address, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![e.at, e.actor, e.action, e.target, e.address, e.detail],
                )?;
                let id = tx.last_insert_rowid();
                if id % 64 == 0 {
                    tx.execute("DELETE FROM audit_log WHERE id <= ?1", [id - keep])?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn a_audit(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.reads
            .run(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT id, at, actor, action, target, address, detail FROM audit_log
                     WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                Ok(st
                    .query_map([before.unwrap_or(i64::MAX), limit], audit_row)?
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}
