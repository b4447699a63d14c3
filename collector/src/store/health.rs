//! The rows of release health: session updates and aggregates as ingest hands them to
//! the store, and the hourly buckets, users and new issues the releases API reads back.

use serde::Serialize;

/// A session's status as stored (`ok`, `errored`, `exited`, `crashed`, `abnormal`).
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "exited" | "crashed" | "abnormal")
}

/// One `session` item, validated. The store keeps one row per `(project, sid)`: a later
/// update replaces an earlier one, ordered by (terminal status, `seq`, `timestamp`), so
/// a repeated or late update never undoes the final status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUpdate {
    /// The session id.
    pub sid: String,
    /// The distinct (user or device) id.
    pub did: Option<String>,
    /// The release (required).
    pub release: String,
    /// The environment; empty for none.
    pub environment: String,
    /// When the session started (epoch ms).
    pub started: i64,
    /// When this update was made (epoch ms).
    pub timestamp: i64,
    /// `ok`, `errored`, `exited`, `crashed` or `abnormal`.
    pub status: String,
    /// Errors the session saw so far.
    pub errors: i64,
    /// The update's sequence number (0 when the SDK sends none).
    pub seq: i64,
}

/// One entry of a `sessions` item's `aggregates`, with the key that makes its delivery
/// idempotent (see `releases::aggregate_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAggregate {
    /// Unique per delivered entry; the same envelope delivered again has the same keys.
    pub key: String,
    /// The release.
    pub release: String,
    /// The environment; empty for none.
    pub environment: String,
    /// The bucket's start (epoch ms).
    pub started: i64,
    /// The distinct id the bucket is for, if any.
    pub did: Option<String>,
    /// Sessions that ended healthy.
    pub exited: i64,
    /// Sessions that ended with errors.
    pub errored: i64,
    /// Sessions that ended without a status (the process vanished).
    pub abnormal: i64,
    /// Sessions that crashed.
    pub crashed: i64,
}

/// Which sessions a read covers.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Sessions started at or after this (epoch ms).
    pub since: i64,
    /// Only this environment (`Some("")`: none set).
    pub environment: Option<String>,
    /// Only this release.
    pub release: Option<String>,
}

/// Sessions of one release and environment that started in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionBucket {
    /// The release.
    pub release: String,
    /// The environment; empty for none.
    pub environment: String,
    /// The hour (epoch ms of its start).
    pub hour: i64,
    /// Sessions, whatever their status.
    pub sessions: i64,
    /// Sessions that crashed.
    pub crashed: i64,
    /// Sessions that ended abnormally.
    pub abnormal: i64,
    /// Sessions that saw errors but neither crashed nor ended abnormally.
    pub errored: i64,
    /// The earliest session start.
    pub first_seen: i64,
    /// The latest session update.
    pub last_seen: i64,
}

/// An issue whose first stored event came with a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewIssue {
    /// The release of the issue's first event.
    pub release: String,
    /// The issue.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// When it was first seen (epoch ms).
    pub first_seen: i64,
}
