//! [`SqliteStore`]: the SQLite backend behind the [`Store`] seam, over the writer thread
//! (every write, group-committed) and the read pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::writer::Writer;
use super::{ReadPool, alerts as q, difs, health, minidumps, queries, symbolication as sym};
use crate::alerts::Alerts;
use crate::alerts::rules::{Rule, RuleSpec};
use crate::metrics::Metrics;
use crate::store::{
    Assigned, AuditRow, CommentRow, InviteRow, NewUser, SessionRow, ThrottleFn, ThrottleRow,
    TokenRow, UserChanged, UserRow, UserUpdate,
};
use crate::store::{
    Class, Cursor, DeliveryRow, DifInsert, DifRow, Due, EventSummary, IngestJob, Issue,
    IssueDetail, IssueFilter, MinidumpRow, Outcome, ProjectRow, Retention, Rewrite, Sort, Stats,
    Store, StoreError, TagValue, Waiting, WaitingEvent,
};
use crate::store::{NewIssue, SessionAggregate, SessionBucket, SessionQuery, SessionUpdate};

/// The embedded SQLite database under `--data`.
pub struct SqliteStore {
    pub(super) reads: ReadPool,
    pub(super) writer: Writer,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    /// Per project: the rate-limit window and the events granted in it.
    quota: Mutex<HashMap<i64, (i64, u64)>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) the database of a data directory and starts its
    /// writer thread, which decides `alerts` in each ingest transaction.
    pub fn open(
        data_dir: &Path,
        queue_capacity: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<Alerts>>,
    ) -> Result<SqliteStore, StoreError> {
        let conn = super::open_and_migrate(data_dir)?;
        let (writer, thread) =
            Writer::start_with_alerts(conn, queue_capacity, retention, metrics.clone(), alerts)
                .map_err(|e| StoreError::Io(data_dir.to_owned(), e))?;
        Ok(SqliteStore {
            reads: ReadPool::new(super::db_path(data_dir)),
            writer,
            writer_thread: Mutex::new(Some(thread)),
            metrics,
            quota: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` on a read connection (for this backend's own tests and tools).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.reads.run(f).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let n = name.to_owned();
        self.reads.run(move |c| super::get_setting(c, &n)).await
    }

    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let (n, v) = (name.to_owned(), value.to_owned());
        self.writer
            .exec(move |tx| super::set_setting(tx, &n, &v))
            .await
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let (n, v) = (name.to_owned(), value.to_owned());
        self.writer
            .exec(move |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)",
                    params![n, v],
                )?;
                Ok(super::get_setting(tx, &n)?.unwrap_or(v))
            })
            .await
    }

    async fn list_projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        self.reads.run(super::list_projects).await
    }

    async fn create_project(&self, name: &str) -> Result<Option<ProjectRow>, StoreError> {
        let n = name.to_owned();
        self.writer
            .exec(move |tx| {
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM projects WHERE name = ?1)",
                    [&n],
                    |r| r.get(0),
                )?;
                if exists {
                    Ok(None)
                } else {
                    super::create_project(tx, &n).map(Some)
                }
            })
            .await
    }

    async fn project_of_key(&self, key: &str) -> Result<Option<i64>, StoreError> {
        let k = key.to_owned();
        self.reads.run(move |c| super::project_of_key(c, &k)).await
    }

    async fn take_quota(
        &self,
        project_id: i64,
        window: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        // One collector owns a SQLite database: its memory is the shared count.
        let mut quota = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        let used = quota.entry(project_id).or_insert((window, 0));
        if used.0 != window {
            *used = (window, 0);
        }
        let granted = want.min(limit.saturating_sub(used.1));
        used.1 += granted;
        Ok(granted)
    }

    async fn ingest(&self, job: IngestJob) -> Result<(), StoreError> {
        self.writer.ingest(job).await
    }

    fn queue_depth(&self) -> i64 {
        self.metrics.queue_depth.load(Relaxed)
    }

    async fn stats(&self, project_id: i64) -> Result<Option<Stats>, StoreError> {
        self.reads.run(move |c| queries::stats(c, project_id)).await
    }

    async fn classes(
        &self,
        project_id: i64,
        status: Option<String>,
        now: i64,
    ) -> Result<Vec<Class>, StoreError> {
        self.reads
            .run(move |c| queries::classes(c, project_id, status.as_deref(), now))
            .await
    }

    async fn issues(
        &self,
        project_id: i64,
        filter: IssueFilter,
        sort: Sort,
        cursor: Option<Cursor>,
        limit: i64,
        now: i64,
    ) -> Result<(Vec<Issue>, Option<String>), StoreError> {
        self.reads
            .run(move |c| queries::issues(c, project_id, &filter, sort, cursor, limit, now))
            .await
    }

    async fn issue(&self, id: i64, now: i64) -> Result<Option<Issue>, StoreError> {
        self.reads.run(move |c| queries::issue(c, id, now)).await
    }

    async fn issue_detail(&self, id: i64, hours: i64, now: i64) -> Result<IssueDetail, StoreError> {
        self.reads
            .run(move |c| {
                Ok(IssueDetail {
                    hourly: queries::issue_hourly(c, id, hours, now)?,
                    tags: queries::issue_tags(c, id)?,
                    latest_event_id: queries::latest_event_id(c, id)?,
                })
            })
            .await
    }

    async fn issue_events(
        &self,
        issue_id: i64,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<EventSummary>, Option<String>), StoreError> {
        self.reads
            .run(move |c| queries::issue_events(c, issue_id, cursor, limit))
            .await
    }

    async fn event(&self, project_id: i64, event_id: &str) -> Result<Option<Value>, StoreError> {
        let e = event_id.to_owned();
        self.reads
            .run(move |c| queries::event(c, project_id, &e))
            .await
    }

    async fn project_tag_values(
        &self,
        project_id: i64,
        key: &str,
    ) -> Result<Vec<TagValue>, StoreError> {
        let k = key.to_owned();
        self.reads
            .run(move |c| queries::project_tag_values(c, project_id, &k))
            .await
    }

    async fn set_issue_status(
        &self,
        id: i64,
        status: &str,
        alerts: &Arc<Alerts>,
    ) -> Result<Option<usize>, StoreError> {
        let alerts = alerts.clone();
        let status = status.to_owned();
        self.writer
            .exec(move |tx| {
                let was: Option<String> = tx
                    .query_row("SELECT status FROM issues WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if was.is_none() {
                    return Ok(None);
                }
                tx.execute(
                    "UPDATE issues SET status = ?2, is_regression = CASE WHEN ?2 = 'resolved' THEN 0 ELSE is_regression END WHERE id = ?1",
                    params![id, status],
                )?;
                let unmuted = if was.as_deref() == Some("muted") && status == "unresolved" {
                    q::on_unmute(tx, &alerts, id)?
                } else {
                    0
                };
                Ok(Some(unmuted))
            })
            .await
    }

    async fn alert_rules(&self, project_id: i64) -> Result<Vec<Rule>, StoreError> {
        self.reads.run(move |c| q::rules(c, project_id)).await
    }

    async fn alert_rule(&self, id: i64) -> Result<Option<Rule>, StoreError> {
        self.reads.run(move |c| q::rule(c, id)).await
    }

    async fn insert_alert_rule(
        &self,
        project_id: i64,
        spec: &RuleSpec,
        max: i64,
        now: i64,
    ) -> Result<Option<Rule>, StoreError> {
        let spec = spec.clone();
        self.writer
            .exec(move |tx| {
                let n: i64 = tx.query_row(
                    "SELECT count(*) FROM alert_rules WHERE project_id = ?1",
                    [project_id],
                    |r| r.get(0),
                )?;
                if n >= max {
                    return Ok(None);
                }
                q::insert_rule(tx, project_id, &spec, now).map(Some)
            })
            .await
    }

    async fn update_alert_rule(&self, id: i64, spec: &RuleSpec) -> Result<bool, StoreError> {
        let spec = spec.clone();
        self.writer
            .exec(move |tx| q::update_rule(tx, id, &spec))
            .await
    }

    async fn delete_alert_rule(&self, id: i64) -> Result<bool, StoreError> {
        self.writer.exec(move |tx| q::delete_rule(tx, id)).await
    }

    async fn alert_deliveries(
        &self,
        rule_id: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.reads
            .run(move |c| q::deliveries(c, rule_id, limit))
            .await
    }

    async fn alerts_due(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<(Vec<Due>, Option<i64>), StoreError> {
        self.reads.run(move |c| q::due(c, now, limit)).await
    }

    async fn record_alert_attempt(
        &self,
        row: i64,
        outcome: &Outcome,
        now: i64,
    ) -> Result<(), StoreError> {
        let o = outcome.clone();
        self.writer
            .exec(move |tx| q::record_attempt(tx, row, &o, now))
            .await
    }

    async fn record_test_delivery(
        &self,
        rule_id: i64,
        delivery_id: &str,
        payload: &str,
        outcome: &Outcome,
        now: i64,
    ) -> Result<Option<DeliveryRow>, StoreError> {
        let (id, payload, outcome) = (delivery_id.to_owned(), payload.to_owned(), outcome.clone());
        self.writer
            .exec(move |tx| {
                let (row, _) = q::enqueue(tx, rule_id, None, "test", &payload, "queued", now)?
                    .ok_or(StoreError::QueueFull)?;
                tx.execute(
                    "UPDATE alert_deliveries SET delivery_id = ?2 WHERE id = ?1",
                    params![row, id],
                )?;
                q::record_attempt(tx, row, &outcome, now)?;
                Ok(q::deliveries(tx, rule_id, 1)?.into_iter().next())
            })
            .await
    }

    async fn prune_alerts(&self, now: i64) -> Result<(), StoreError> {
        self.writer.exec(move |tx| q::prune(tx, now)).await
    }

    async fn note_waiting(
        &self,
        project_id: i64,
        waiting: Vec<(String, Vec<String>)>,
        now: i64,
        prune_before: Option<i64>,
    ) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                for (event_id, ids) in &waiting {
                    sym::insert_unsymbolicated(tx, project_id, event_id, ids, now)?;
                }
                if let Some(cutoff) = prune_before {
                    sym::prune_unsymbolicated(tx, cutoff)?;
                }
                Ok(())
            })
            .await
    }

    async fn waiting_for_image(
        &self,
        debug_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Waiting>, StoreError> {
        let id = debug_id.to_owned();
        self.reads
            .run(move |c| sym::waiting_for_image(c, &id, after, limit))
            .await
    }

    async fn waiting_event(
        &self,
        project_id: i64,
        event_id: &str,
    ) -> Result<Option<WaitingEvent>, StoreError> {
        let e = event_id.to_owned();
        self.reads
            .run(move |c| sym::waiting_event(c, project_id, &e))
            .await
    }

    async fn rewrite_events(&self, done: Vec<Rewrite>) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| {
                for (project_id, event_id, data, still) in &done {
                    let data = data.as_ref().map(|(e, d)| (*e, d.as_slice()));
                    sym::rewrite_event(tx, *project_id, event_id, data, still)?;
                }
                Ok(())
            })
            .await
    }

    async fn difs_version(&self) -> Result<i64, StoreError> {
        self.reads.run(difs::version).await
    }

    async fn all_difs(&self) -> Result<Vec<DifRow>, StoreError> {
        self.reads.run(difs::all).await
    }

    async fn dif(&self, id: i64) -> Result<Option<DifRow>, StoreError> {
        self.reads.run(move |c| difs::by_id(c, id)).await
    }

    async fn dif_by_checksum(
        &self,
        project_id: i64,
        checksum: &str,
    ) -> Result<Option<DifRow>, StoreError> {
        let c = checksum.to_owned();
        self.reads
            .run(move |conn| difs::by_checksum(conn, project_id, &c))
            .await
    }

    async fn insert_dif(
        &self,
        row: DifRow,
        max_bytes: u64,
        _bytes: Option<&Path>,
    ) -> Result<DifInsert, StoreError> {
        self.writer
            .exec(move |tx| {
                if let Some(existing) = difs::by_checksum(tx, row.project_id, &row.checksum)? {
                    return Ok(DifInsert {
                        row: existing,
                        existed: true,
                        evicted: Vec::new(),
                    });
                }
                let mut row = row;
                row.id = difs::insert(tx, &row)?;
                let mut evicted = Vec::new();
                let mut total = difs::total_size(tx)? as u64;
                while total > max_bytes {
                    let Some(old) = difs::least_recently_used(tx, row.id)? else {
                        break;
                    };
                    difs::delete(tx, old.id)?;
                    total = total.saturating_sub(old.size as u64);
                    evicted.push(old);
                }
                difs::bump_version(tx)?;
                Ok(DifInsert {
                    row,
                    existed: false,
                    evicted,
                })
            })
            .await
    }

    fn shares_dif_bytes(&self) -> bool {
        false
    }

    async fn dif_bytes(&self, _id: i64, _dest: &Path) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn delete_dif(&self, id: i64) -> Result<Option<DifRow>, StoreError> {
        self.writer
            .exec(move |tx| {
                let Some(row) = difs::by_id(tx, id)? else {
                    return Ok(None);
                };
                difs::delete(tx, id)?;
                difs::bump_version(tx)?;
                Ok(Some(row))
            })
            .await
    }

    async fn touch_difs(&self, used: Vec<(i64, i64)>) -> Result<(), StoreError> {
        self.writer
            .exec(move |tx| difs::set_last_used(tx, &used))
            .await
    }

    async fn insert_minidump(
        &self,
        row: MinidumpRow,
        max_bytes: u64,
    ) -> Result<Vec<MinidumpRow>, StoreError> {
        self.writer
            .exec(move |tx| minidumps::insert(tx, &row, max_bytes))
            .await
    }

    async fn minidump(
        &self,
        project_id: i64,
        event_id: &str,
    ) -> Result<Option<MinidumpRow>, StoreError> {
        let e = event_id.to_owned();
        self.reads
            .run(move |c| minidumps::get(c, project_id, &e))
            .await
    }

    async fn take_orphan_minidumps(&self, limit: i64) -> Result<Vec<MinidumpRow>, StoreError> {
        self.writer
            .exec(move |tx| minidumps::take_orphans(tx, limit))
            .await
    }

    async fn event_copies(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.reads
            .run(|conn| {
                let mut stmt =
                    conn.prepare("SELECT event_id, count(*) FROM events GROUP BY event_id")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?)))?;
                let mut copies = HashMap::new();
                for row in rows {
                    let (id, n) = row?;
                    copies.insert(id, n.unsigned_abs());
                }
                Ok(copies)
            })
            .await
    }

    async fn close(&self) {
        self.writer.shutdown();
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    // --- teams and access (store/sqlite/access.rs) ---

    async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.a_users().await
    }

    async fn user(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        self.a_user(id).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        self.a_user_by_name(username).await
    }

    async fn insert_user(&self, user: NewUser) -> Result<Option<UserRow>, StoreError> {
        self.a_insert_user(user).await
    }

    async fn update_user(&self, id: i64, update: UserUpdate) -> Result<UserChanged, StoreError> {
        self.a_update_user(id, update).await
    }

    async fn memberships(&self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        self.a_memberships(user_id).await
    }

    async fn set_memberships(&self, user_id: i64, projects: Vec<i64>) -> Result<(), StoreError> {
        self.a_set_memberships(user_id, projects).await
    }

    async fn insert_token(&self, token: TokenRow) -> Result<TokenRow, StoreError> {
        self.a_insert_token(token).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        self.a_token_by_hash(hash).await
    }

    async fn user_tokens(&self, user_id: i64) -> Result<Vec<TokenRow>, StoreError> {
        self.a_user_tokens(user_id).await
    }

    async fn delete_token(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        self.a_delete_token(user_id, id).await
    }

    async fn touch_token(&self, id: i64, now: i64) -> Result<(), StoreError> {
        self.a_touch_token(id, now).await
    }

    async fn insert_user_session(&self, session: SessionRow) -> Result<(), StoreError> {
        self.a_insert_user_session(session).await
    }

    async fn user_session(&self, hash: &str, now: i64) -> Result<Option<SessionRow>, StoreError> {
        self.a_user_session(hash, now).await
    }

    async fn touch_user_session(
        &self,
        id: i64,
        last_seen: i64,
        expires: i64,
    ) -> Result<(), StoreError> {
        self.a_touch_user_session(id, last_seen, expires).await
    }

    async fn user_sessions(&self, user_id: i64, now: i64) -> Result<Vec<SessionRow>, StoreError> {
        self.a_user_sessions(user_id, now).await
    }

    async fn delete_user_session(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        self.a_delete_user_session(user_id, id).await
    }

    async fn delete_user_session_by_hash(&self, hash: &str) -> Result<(), StoreError> {
        self.a_delete_user_session_by_hash(hash).await
    }

    async fn insert_invite(&self, invite: InviteRow) -> Result<(), StoreError> {
        self.a_insert_invite(invite).await
    }

    async fn invite(&self, hash: &str, now: i64) -> Result<Option<InviteRow>, StoreError> {
        self.a_invite(hash, now).await
    }

    async fn accept_invite(
        &self,
        hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<InviteRow>, StoreError> {
        self.a_accept_invite(hash, password_hash, now).await
    }

    async fn throttle(&self, key: &str, f: ThrottleFn) -> Result<Option<ThrottleRow>, StoreError> {
        self.a_throttle(key, f).await
    }

    async fn insert_audit(&self, entry: AuditRow, keep: i64) -> Result<(), StoreError> {
        self.a_insert_audit(entry, keep).await
    }

    async fn audit(&self, before: Option<i64>, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.a_audit(before, limit).await
    }

    async fn ingest_sessions(
        &self,
        project_id: i64,
        updates: Vec<SessionUpdate>,
        aggregates: Vec<SessionAggregate>,
    ) -> Result<(), StoreError> {
        let now = crate::time::now_ms();
        self.writer
            .exec(move |tx| health::ingest(tx, project_id, &updates, &aggregates, now))
            .await
    }

    async fn session_buckets(
        &self,
        project_id: i64,
        query: SessionQuery,
    ) -> Result<Vec<SessionBucket>, StoreError> {
        self.reads
            .run(move |c| health::buckets(c, project_id, &query))
            .await
    }

    async fn release_users(
        &self,
        project_id: i64,
        query: SessionQuery,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.reads
            .run(move |c| health::users(c, project_id, &query))
            .await
    }

    async fn new_issues(&self, project_id: i64, limit: i64) -> Result<Vec<NewIssue>, StoreError> {
        self.reads
            .run(move |c| health::new_issues(c, project_id, limit))
            .await
    }

    async fn first_release(&self, issue_id: i64) -> Result<Option<String>, StoreError> {
        self.reads
            .run(move |c| health::first_release(c, issue_id))
            .await
    }

    // --- the issue workflow (store/sqlite/workflow.rs) ---

    async fn assign_issue(
        &self,
        issue_id: i64,
        user_id: Option<i64>,
        now: i64,
    ) -> Result<Assigned, StoreError> {
        self.w_assign_issue(issue_id, user_id, now).await
    }

    async fn comments(&self, issue_id: i64, limit: i64) -> Result<Vec<CommentRow>, StoreError> {
        self.w_comments(issue_id, limit).await
    }

    async fn insert_comment(
        &self,
        issue_id: i64,
        user_id: i64,
        body: &str,
        now: i64,
    ) -> Result<Option<CommentRow>, StoreError> {
        self.w_insert_comment(issue_id, user_id, body, now).await
    }

    async fn comment(&self, issue_id: i64, id: i64) -> Result<Option<CommentRow>, StoreError> {
        self.w_comment(issue_id, id).await
    }

    async fn delete_comment(&self, issue_id: i64, id: i64) -> Result<bool, StoreError> {
        self.w_delete_comment(issue_id, id).await
    }
}
