//! The rows of the issue workflow, as every backend stores them: who an issue is assigned
//! to, and the comments people leave on it.

use serde::Serialize;

/// A user as an issue shows them: assignee, comment author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRef {
    /// The user's id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// A name for people.
    pub display_name: String,
}

/// A comment on an issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommentRow {
    /// Id (newer is higher).
    pub id: i64,
    /// The issue it is on.
    pub issue_id: i64,
    /// Who wrote it.
    pub author: UserRef,
    /// The text as written (Markdown; the dashboard renders it without any HTML).
    pub body: String,
    /// RFC 3339.
    pub created: String,
}

/// What [`Store::assign_issue`](super::Store::assign_issue) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// Done (or it was already so).
    Done,
    /// There is no such issue.
    NoIssue,
    /// There is no such user, or they are disabled.
    NoUser,
}
