//! The issue workflow on SQLite: assignments and comments (reads on the pool, writes
//! through the writer).

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::store::SqliteStore;
use crate::store::{Assigned, CommentRow, StoreError, UserRef};
use crate::time::rfc3339;

/// The migration that adds the tables (appended to `MIGRATIONS`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE issue_assignees (
        issue_id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        assigned INTEGER NOT NULL
    );
    CREATE INDEX issue_assignees_user ON issue_assignees (user_id, issue_id);
    CREATE TABLE issue_comments (
        id INTEGER PRIMARY KEY,
        issue_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id),
        body TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX issue_comments_issue ON issue_comments (issue_id, id);
    "#;

const COMMENT_SELECT: &str =
    "SELECT c.id, c.issue_id, u.id, u.username, u.display_name, c.body, c.created
     FROM issue_comments c JOIN users u ON u.id = c.user_id";

fn comment_row(r: &Row<'_>) -> rusqlite::Result<CommentRow> {
    Ok(CommentRow {
        id: r.get(0)?,
        issue_id: r.get(1)?,
        author: UserRef {
            id: r.get(2)?,
            username: r.get(3)?,
            display_name: r.get(4)?,
        },
        body: r.get(5)?,
        created: rfc3339(r.get(6)?),
    })
}

fn comment_where(c: &Connection, issue_id: i64, id: i64) -> Result<Option<CommentRow>, StoreError> {
    Ok(c.query_row(
        &format!("{COMMENT_SELECT} WHERE c.id = ?1 AND c.issue_id = ?2"),
        [id, issue_id],
        comment_row,
    )
    .optional()?)
}

fn issue_exists(c: &Connection, issue_id: i64) -> Result<bool, StoreError> {
    Ok(
        c.query_row("SELECT 1 FROM issues WHERE id = ?1", [issue_id], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

impl SqliteStore {
    pub(super) async fn w_assign_issue(
        &self,
        issue_id: i64,
        user_id: Option<i64>,
        now: i64,
    ) -> Result<Assigned, StoreError> {
        self.writer
            .exec(move |tx| {
                if !issue_exists(tx, issue_id)? {
                    return Ok(Assigned::NoIssue);
                }
                let Some(user) = user_id else {
                    tx.execute(
                        "DELETE FROM issue_assignees WHERE issue_id = ?1",
                        [issue_id],
                    )?;
                    return Ok(Assigned::Done);
                };
                let enabled = tx
                    .query_row(
                        "SELECT 1 FROM users WHERE id = ?1 AND disabled = 0",
                        [user],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !enabled {
                    return Ok(Assigned::NoUser);
                }
                tx.execute(
                    "INSERT INTO issue_assignees (issue_id, user_id, assigned) VALUES (?1, ?2, ?3)
                     ON CONFLICT (issue_id) DO UPDATE SET user_id = excluded.user_id,
                        assigned = excluded.assigned
                     WHERE issue_assignees.user_id <> excluded.user_id",
                    [issue_id, user, now],
                )?;
                Ok(Assigned::Done)
            })
            .await
    }

    pub(super) async fn w_comments(
        &self,
        issue_id: i64,
        limit: i64,
    ) -> Result<Vec<CommentRow>, StoreError> {
        self.reads
            .run(move |c| {
                let mut st = c.prepare_cached(&format!(
                    "SELECT * FROM ({COMMENT_SELECT} WHERE c.issue_id = ?1 ORDER BY c.id DESC LIMIT ?2)
                     ORDER BY 1"
                ))?;
                Ok(st
                    .query_map([issue_id, limit], comment_row)?
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    pub(super) async fn w_insert_comment(
        &self,
        issue_id: i64,
        user_id: i64,
        body: &str,
        now: i64,
    ) -> Result<Option<CommentRow>, StoreError> {
        let body = body.to_owned();
        self.writer
            .exec(move |tx| {
                if !issue_exists(tx, issue_id)? {
                    return Ok(None);
                }
                tx.execute(
                    "INSERT INTO issue_comments (issue_id, user_id, body, created) VALUES (?1, ?2, ?3, ?4)",
                    params![issue_id, user_id, body, now],
                )?;
                comment_where(tx, issue_id, tx.last_insert_rowid())
            })
            .await
    }

    pub(super) async fn w_comment(
        &self,
        issue_id: i64,
        id: i64,
    ) -> Result<Option<CommentRow>, StoreError> {
        self.reads
            .run(move |c| comment_where(c, issue_id, id))
            .await
    }

    pub(super) async fn w_delete_comment(
        &self,
        issue_id: i64,
        id: i64,
    ) -> Result<bool, StoreError> {
        self.writer
            .exec(move |tx| {
                Ok(tx.execute(
                    "DELETE FROM issue_comments WHERE id = ?1 AND issue_id = ?2",
                    [id, issue_id],
                )? > 0)
            })
            .await
    }
}
