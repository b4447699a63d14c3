//! The storage seam: the one trait ingest, the API, alerts and symbolication call, and
//! the backends behind it (`sqlite/`, embedded, the default; `postgres/`, for many nodes).
//!
//! Callers hold an `Arc<dyn Store>` and never see SQL. Each backend keeps the same
//! bounds (`model.rs`): samples per issue, the dedup window, tag values, the alert queue.

pub mod accounts;
pub mod health;
pub mod model;
pub mod postgres;
pub mod sqlite;
pub mod workflow;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

pub use accounts::*;
pub use health::*;
pub use model::*;
pub use workflow::*;

use crate::alerts::Alerts;
use crate::alerts::rules::{Rule, RuleSpec};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread is gone (shutting down).
    #[error("the writer has stopped")]
    WriterGone,
    /// The writer's queue is full.
    #[error("the writer queue is full")]
    QueueFull,
    /// A blocking task panicked or was cancelled.
    #[error("a database task failed: {0}")]
    Task(String),
    /// The database was written by a newer collector.
    #[error("database schema version {0} is newer than this collector knows ({1})")]
    TooNew(i64, i64),
    /// A data directory problem.
    #[error("data directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The database cannot be reached now (clients get a 503 and retry).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database cannot be used as configured (bad URL, TLS set-up).
    #[error("{0}")]
    Config(String),
}

impl StoreError {
    /// Whether the store is busy or unreachable for now: a 503 with `Retry-After`, never a
    /// 500, so clients retry (elsewhere, behind a load balancer).
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::QueueFull | StoreError::Unavailable(_) => true,
            StoreError::Postgres(e) => pg_unreachable(e),
            _ => false,
        }
    }
}

/// Whether a PostgreSQL error means the server cannot be used now rather than that the
/// query was wrong: not reachable, closed, or closed on us (connection exceptions, class
/// 08), the server shutting down or starting (57P01-57P03), no connection slot left.
pub(crate) fn pg_unreachable(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_none_or(|c| {
            let c = c.code();
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        })
}

/// A rewritten event of [`Store::rewrite_events`]: `(project, event id, new stored
/// JSON, debug ids still missing)`; no JSON when the event is gone or unchanged.
pub type Rewrite = (i64, String, Option<Stored>, Vec<String>);

/// What [`Store::insert_dif`] did.
#[derive(Debug, Clone)]
pub struct DifInsert {
    /// The row stored (or the one already there with the same checksum).
    pub row: DifRow,
    /// Whether a row with that checksum existed, so nothing was added.
    pub existed: bool,
    /// Rows removed to stay within the budget, least recently used first.
    pub evicted: Vec<DifRow>,
}

/// The issue page's extras.
#[derive(Debug, Clone)]
pub struct IssueDetail {
    /// Hourly counts, oldest first.
    pub hourly: Vec<i64>,
    /// Tag values by key.
    pub tags: HashMap<String, Vec<TagValue>>,
    /// The newest event stored.
    pub latest_event_id: Option<String>,
}

/// Everything the collector stores, whatever database holds it.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    // --- settings and projects -------------------------------------------------------

    /// A setting.
    async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Sets a setting.
    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError>;
    /// Stores `value` unless the setting exists; returns what is stored now (so nodes
    /// starting at once agree on one generated secret).
    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError>;
    /// Every project, by id.
    async fn list_projects(&self) -> Result<Vec<ProjectRow>, StoreError>;
    /// Creates a project with a new key; `None` if the name is taken.
    async fn create_project(&self, name: &str) -> Result<Option<ProjectRow>, StoreError>;
    /// The project of a public key.
    async fn project_of_key(&self, key: &str) -> Result<Option<i64>, StoreError>;

    // --- rate limits -----------------------------------------------------------------

    /// Takes up to `want` of the `limit` events that `project_id` may send in `window`
    /// (a minute number), from the count every collector on the database shares; how
    /// many were granted (0 once the window is spent).
    async fn take_quota(
        &self,
        project_id: i64,
        window: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError>;

    // --- ingest ----------------------------------------------------------------------

    /// Stores one request's events, counts and discards; returns once they are durable.
    /// An event id seen before is stored and counted once.
    async fn ingest(&self, job: IngestJob) -> Result<(), StoreError>;
    /// Jobs waiting to be written (a gauge for `/metrics` and tests).
    fn queue_depth(&self) -> i64;

    // --- reads and issue workflow ----------------------------------------------------

    /// A project's counters; `None` if there is no such project.
    async fn stats(&self, project_id: i64) -> Result<Option<Stats>, StoreError>;
    /// Issue counts by class.
    async fn classes(
        &self,
        project_id: i64,
        status: Option<String>,
        now: i64,
    ) -> Result<Vec<Class>, StoreError>;
    /// A page of issues and the cursor of the next one.
    async fn issues(
        &self,
        project_id: i64,
        filter: IssueFilter,
        sort: Sort,
        cursor: Option<Cursor>,
        limit: i64,
        now: i64,
    ) -> Result<(Vec<Issue>, Option<String>), StoreError>;
    /// One issue, with its last 24 hourly counts.
    async fn issue(&self, id: i64, now: i64) -> Result<Option<Issue>, StoreError>;
    /// An issue's `hours` hourly counts, tag values and newest event.
    async fn issue_detail(&self, id: i64, hours: i64, now: i64) -> Result<IssueDetail, StoreError>;
    /// A page of an issue's stored events, newest first, and the next cursor.
    async fn issue_events(
        &self,
        issue_id: i64,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<EventSummary>, Option<String>), StoreError>;
    /// One stored event as the API shows it.
    async fn event(&self, project_id: i64, event_id: &str) -> Result<Option<Value>, StoreError>;
    /// A project's most frequent values of a tag.
    async fn project_tag_values(
        &self,
        project_id: i64,
        key: &str,
    ) -> Result<Vec<TagValue>, StoreError>;
    /// Sets an issue's status (queueing the unmute alerts of a muted issue reopened);
    /// `None` if there is no such issue, else how many alert deliveries were queued.
    async fn set_issue_status(
        &self,
        id: i64,
        status: &str,
        alerts: &Arc<Alerts>,
    ) -> Result<Option<usize>, StoreError>;

    // --- alert rules and deliveries --------------------------------------------------

    /// A project's rules.
    async fn alert_rules(&self, project_id: i64) -> Result<Vec<Rule>, StoreError>;
    /// One rule.
    async fn alert_rule(&self, id: i64) -> Result<Option<Rule>, StoreError>;
    /// Adds a rule unless the project has `max` already (`None` then).
    async fn insert_alert_rule(
        &self,
        project_id: i64,
        spec: &RuleSpec,
        max: i64,
        now: i64,
    ) -> Result<Option<Rule>, StoreError>;
    /// Replaces a rule's spec; whether it existed.
    async fn update_alert_rule(&self, id: i64, spec: &RuleSpec) -> Result<bool, StoreError>;
    /// Deletes a rule and its log; whether it existed.
    async fn delete_alert_rule(&self, id: i64) -> Result<bool, StoreError>;
    /// A rule's newest deliveries.
    async fn alert_deliveries(
        &self,
        rule_id: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError>;
    /// Up to `limit` queued deliveries due at `now`, and when the next one is due.
    async fn alerts_due(&self, now: i64, limit: i64)
    -> Result<(Vec<Due>, Option<i64>), StoreError>;
    /// Records an attempt's outcome on a queued delivery.
    async fn record_alert_attempt(
        &self,
        row: i64,
        outcome: &Outcome,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Stores a test message's delivery (already attempted) and returns it.
    async fn record_test_delivery(
        &self,
        rule_id: i64,
        delivery_id: &str,
        payload: &str,
        outcome: &Outcome,
        now: i64,
    ) -> Result<Option<DeliveryRow>, StoreError>;
    /// Drops old deliveries and marks beyond the log's bounds.
    async fn prune_alerts(&self, now: i64) -> Result<(), StoreError>;

    // --- symbolication ---------------------------------------------------------------

    /// Notes which stored events wait for which images' debug files `(event id, debug
    /// ids)`; with `prune_before`, drops the notes older than it.
    async fn note_waiting(
        &self,
        project_id: i64,
        waiting: Vec<(String, Vec<String>)>,
        now: i64,
        prune_before: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Retained events waiting for an image's debug file, after row `after`.
    async fn waiting_for_image(
        &self,
        debug_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Waiting>, StoreError>;
    /// The debug ids one event waits for, and its stored JSON; `None` if it waits for
    /// nothing.
    async fn waiting_event(
        &self,
        project_id: i64,
        event_id: &str,
    ) -> Result<Option<WaitingEvent>, StoreError>;
    /// Stores re-symbolicated events and what they still wait for.
    async fn rewrite_events(&self, done: Vec<Rewrite>) -> Result<(), StoreError>;

    // --- the debug files' index (the files live beside the database) -----------------

    /// A counter bumped by every change to the index (by any process).
    async fn difs_version(&self) -> Result<i64, StoreError>;
    /// Every indexed file, by id.
    async fn all_difs(&self) -> Result<Vec<DifRow>, StoreError>;
    /// One file.
    async fn dif(&self, id: i64) -> Result<Option<DifRow>, StoreError>;
    /// A project's file with this checksum.
    async fn dif_by_checksum(
        &self,
        project_id: i64,
        checksum: &str,
    ) -> Result<Option<DifRow>, StoreError>;
    /// Indexes a file (unless its checksum is there) and evicts the least recently used
    /// others until all fit in `max_bytes`, in one transaction. A store that
    /// [shares the files' bytes](Store::shares_dif_bytes) takes them from `bytes` in the
    /// same transaction.
    async fn insert_dif(
        &self,
        row: DifRow,
        max_bytes: u64,
        bytes: Option<&Path>,
    ) -> Result<DifInsert, StoreError>;
    /// Whether the files' bytes live in the database, for every collector on it
    /// (PostgreSQL), rather than only beside it, under `<data>/difs/` (SQLite, one node).
    fn shares_dif_bytes(&self) -> bool;
    /// Writes a file's bytes from the database to `dest`; false if it holds none (the
    /// file was deleted, or the store does not share them).
    async fn dif_bytes(&self, id: i64, dest: &Path) -> Result<bool, StoreError>;
    /// Removes a file from the index; the row if it existed.
    async fn delete_dif(&self, id: i64) -> Result<Option<DifRow>, StoreError>;
    /// Writes last-use times `(id, ms)`.
    async fn touch_difs(&self, used: Vec<(i64, i64)>) -> Result<(), StoreError>;

    // --- kept minidumps' index (the dumps live beside the database) ------------------

    /// Indexes a kept dump (replacing the row of the same event), then drops the oldest
    /// others until all fit in `max_bytes`, in one transaction; returns the dropped rows.
    async fn insert_minidump(
        &self,
        row: MinidumpRow,
        max_bytes: u64,
    ) -> Result<Vec<MinidumpRow>, StoreError>;
    /// The kept dump of an event.
    async fn minidump(
        &self,
        project_id: i64,
        event_id: &str,
    ) -> Result<Option<MinidumpRow>, StoreError>;
    /// Removes from the index up to `limit` dumps whose event is no longer stored (past
    /// retention, dropped by the per-issue sample cap, deleted) and returns them, so that
    /// their files go too.
    async fn take_orphan_minidumps(&self, limit: i64) -> Result<Vec<MinidumpRow>, StoreError>;

    // --- checks ----------------------------------------------------------------------

    /// How many stored rows each event id has (exactly one each in a sound store): the
    /// reliability tests' check that nothing was stored twice.
    async fn event_copies(&self) -> Result<HashMap<String, u64>, StoreError>;

    // --- lifecycle -------------------------------------------------------------------

    /// Finishes the writes queued so far and stops; later writes fail.
    async fn close(&self);

    // --- teams and access (issue 16): users, memberships, tokens, sessions, invites, ----
    // --- login throttling, the audit log ---------------------------------------------

    /// Every user, by id.
    async fn users(&self) -> Result<Vec<UserRow>, StoreError>;
    /// One user by id.
    async fn user(&self, id: i64) -> Result<Option<UserRow>, StoreError>;
    /// One user by login name.
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError>;
    /// Adds a user; `None` if the name is taken.
    async fn insert_user(&self, user: NewUser) -> Result<Option<UserRow>, StoreError>;
    /// Changes a user; disabling ends their sessions in the same transaction. A change
    /// that would leave no enabled owner is refused, checked in that transaction too (two
    /// owners demoting each other at once leave one).
    async fn update_user(&self, id: i64, update: UserUpdate) -> Result<UserChanged, StoreError>;
    /// The projects a user belongs to.
    async fn memberships(&self, user_id: i64) -> Result<Vec<i64>, StoreError>;
    /// Replaces the projects a user belongs to.
    async fn set_memberships(&self, user_id: i64, projects: Vec<i64>) -> Result<(), StoreError>;
    /// Stores a token (its `id` is assigned) and returns it.
    async fn insert_token(&self, token: TokenRow) -> Result<TokenRow, StoreError>;
    /// The token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError>;
    /// A user's tokens, by id.
    async fn user_tokens(&self, user_id: i64) -> Result<Vec<TokenRow>, StoreError>;
    /// Revokes one of a user's tokens; whether it existed.
    async fn delete_token(&self, user_id: i64, id: i64) -> Result<bool, StoreError>;
    /// Notes a token's last use.
    async fn touch_token(&self, id: i64, now: i64) -> Result<(), StoreError>;
    /// Stores a session (its `id` is assigned), dropping expired ones.
    async fn insert_user_session(&self, session: SessionRow) -> Result<(), StoreError>;
    /// The session with this hash, if it has not expired at `now`.
    async fn user_session(&self, hash: &str, now: i64) -> Result<Option<SessionRow>, StoreError>;
    /// Notes a session's use and pushes its expiry.
    async fn touch_user_session(
        &self,
        id: i64,
        last_seen: i64,
        expires: i64,
    ) -> Result<(), StoreError>;
    /// A user's live sessions, by id.
    async fn user_sessions(&self, user_id: i64, now: i64) -> Result<Vec<SessionRow>, StoreError>;
    /// Ends one of a user's sessions; whether it existed.
    async fn delete_user_session(&self, user_id: i64, id: i64) -> Result<bool, StoreError>;
    /// Ends the session with this hash (logout).
    async fn delete_user_session_by_hash(&self, hash: &str) -> Result<(), StoreError>;
    /// Stores an invite, replacing the user's earlier ones.
    async fn insert_invite(&self, invite: InviteRow) -> Result<(), StoreError>;
    /// The invite with this hash if it has not expired at `now`.
    async fn invite(&self, hash: &str, now: i64) -> Result<Option<InviteRow>, StoreError>;
    /// Uses an invite up: removes it and, if it had not expired, sets its user's password
    /// (one transaction). The invite if it was used now.
    async fn accept_invite(
        &self,
        hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<InviteRow>, StoreError>;
    /// Changes the throttle window of `key` with `f`, atomically (among all collectors
    /// on the database); the new row.
    async fn throttle(&self, key: &str, f: ThrottleFn) -> Result<Option<ThrottleRow>, StoreError>;
    /// Appends to the audit log, dropping entries beyond the newest `keep`.
    async fn insert_audit(&self, entry: AuditRow, keep: i64) -> Result<(), StoreError>;
    /// The newest audit entries with an id below `before`.
    async fn audit(&self, before: Option<i64>, limit: i64) -> Result<Vec<AuditRow>, StoreError>;

    // --- release health (issue 15): sessions, releases ---------------------------------

    /// Stores session updates (one row per sid, the final status wins) and aggregates
    /// (one row per key; a key seen before is ignored) in one transaction.
    async fn ingest_sessions(
        &self,
        project_id: i64,
        updates: Vec<SessionUpdate>,
        aggregates: Vec<SessionAggregate>,
    ) -> Result<(), StoreError>;
    /// Sessions by release, environment and hour of their start.
    async fn session_buckets(
        &self,
        project_id: i64,
        query: SessionQuery,
    ) -> Result<Vec<SessionBucket>, StoreError>;
    /// Distinct ids (`did`) per release among the sessions the query covers.
    async fn release_users(
        &self,
        project_id: i64,
        query: SessionQuery,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    /// The issues whose first stored event carries a release, newest first, at most
    /// `limit`.
    async fn new_issues(&self, project_id: i64, limit: i64) -> Result<Vec<NewIssue>, StoreError>;
    /// The release of an issue's first stored event.
    async fn first_release(&self, issue_id: i64) -> Result<Option<String>, StoreError>;

    // --- the issue workflow (store/workflow.rs): assignees and comments --------------

    /// Assigns an issue to an enabled user (`None`: unassigns it), checking both in the
    /// same transaction.
    async fn assign_issue(
        &self,
        issue_id: i64,
        user_id: Option<i64>,
        now: i64,
    ) -> Result<Assigned, StoreError>;
    /// An issue's newest `limit` comments, oldest first.
    async fn comments(&self, issue_id: i64, limit: i64) -> Result<Vec<CommentRow>, StoreError>;
    /// Adds a comment; `None` if there is no such issue.
    async fn insert_comment(
        &self,
        issue_id: i64,
        user_id: i64,
        body: &str,
        now: i64,
    ) -> Result<Option<CommentRow>, StoreError>;
    /// One comment of an issue.
    async fn comment(&self, issue_id: i64, id: i64) -> Result<Option<CommentRow>, StoreError>;
    /// Deletes a comment of an issue; whether it existed.
    async fn delete_comment(&self, issue_id: i64, id: i64) -> Result<bool, StoreError>;
}

/// A database URL fit for messages and logs: its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(split) => split,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact_url("postgres://errscope:s3cret@db:5432/errscope"),
            "postgres://errscope:***@db:5432/errscope"
        );
        assert_eq!(
            redact_url("postgres://db/errscope"),
            "postgres://db/errscope"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
    }
}
