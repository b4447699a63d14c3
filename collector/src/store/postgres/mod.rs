//! The PostgreSQL store: any number of collectors share one database. A node keeps only
//! caches it can rebuild; everything else (projects, keys, sessions, issues and their
//! counts, alerts, the debug files' index) lives here.
//!
//! `ingest.rs` writes events (exact under retries to several nodes), `reads.rs` answers
//! the API, `alerts.rs`, `difs.rs` and `symbolication.rs` the rest of the seam.

mod access;
mod alerts;
mod basics;
pub mod copy;
mod difs;
mod fold;
mod health;
mod ingest;
pub use ingest::DEFAULT_WRITERS;
mod minidumps;
mod reads;
pub mod schema;
mod symbolication;
#[cfg(test)]
pub(crate) mod testing;
mod workflow;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;

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
    Store, StoreError, TagValue, Waiting, WaitingEvent, redact_url,
};
use crate::store::{NewIssue, SessionAggregate, SessionBucket, SessionQuery, SessionUpdate};

/// Connections each collector keeps to the database at most.
pub const MAX_CONNECTIONS: usize = 16;

/// The PostgreSQL database of `--database postgres://...`.
pub struct PgStore {
    pool: Pool,
    ingest: ingest::Ingestor,
    folder: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.folder.abort();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl PgStore {
    /// Connects to `url` (TLS as its `sslmode` asks), migrates the schema (once, under an
    /// advisory lock, when many collectors start at once) and starts the writer.
    pub async fn open(
        url: &str,
        queue_capacity: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<Alerts>>,
    ) -> Result<PgStore, StoreError> {
        Self::open_with_writers(
            url,
            queue_capacity,
            retention,
            metrics,
            alerts,
            DEFAULT_WRITERS,
        )
        .await
    }

    /// [`open`](Self::open) with `writers` writer tasks (at least one), each with a
    /// transaction of its own in flight.
    pub async fn open_with_writers(
        url: &str,
        queue_capacity: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<Alerts>>,
        writers: usize,
    ) -> Result<PgStore, StoreError> {
        let pool = pool(url)?;
        migrate(&pool).await?;
        let ingest = ingest::Ingestor::start(
            pool.clone(),
            queue_capacity,
            retention,
            metrics,
            alerts,
            writers.max(1),
        );
        let folder = tokio::spawn(fold::run(pool.clone()));
        Ok(PgStore {
            pool,
            ingest,
            folder,
        })
    }

    /// A pooled connection; an unreachable database is [`StoreError::Unavailable`].
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// The connection pool of a URL, with TLS unless `sslmode=disable` (rustls, the system's
/// root certificates).
pub(super) fn pool(url: &str) -> Result<Pool, StoreError> {
    let bad = |e: &dyn std::fmt::Display| {
        StoreError::Config(format!("--database {}: {e}", redact_url(url)))
    };
    let config = tokio_postgres::Config::from_str(url).map_err(|e| bad(&e))?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => {
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        }
        _ => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            )
        }
    };
    Pool::builder(manager)
        .max_size(MAX_CONNECTIONS)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| bad(&e))
}

/// Runs the migrations not run yet, holding an advisory lock so that collectors starting
/// at once on one database run each once.
pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&schema::MIGRATION_LOCK])
        .await?;
    let result = async {
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await?;
        let version: i64 = client
            .query_opt("SELECT version FROM schema_version", &[])
            .await?
            .map_or(0, |r| r.get(0));
        let known = schema::MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew(version, known));
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await?;
            tx.execute("DELETE FROM schema_version", &[]).await?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&(i as i64 + 1)],
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }
    .await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&schema::MIGRATION_LOCK])
        .await;
    result?;
    unlocked?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn queue_depth(&self) -> i64 {
        self.ingest.queue_depth()
    }

    async fn close(&self) {
        self.ingest.close().await;
        self.folder.abort();
        // What this node's writers committed last, folded now rather than by the next
        // read or node.
        if let Ok(mut c) = self.conn().await
            && let Err(e) = fold::fold(&mut c, true).await
        {
            tracing::debug!("folding counts at shutdown failed: {e}");
        }
    }

    // --- teams and access (store/postgres/access.rs) ---

    async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        access::users(self).await
    }

    async fn user(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        access::user(self, id).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        access::user_by_name(self, username).await
    }

    async fn insert_user(&self, user: NewUser) -> Result<Option<UserRow>, StoreError> {
        access::insert_user(self, user).await
    }

    async fn update_user(&self, id: i64, update: UserUpdate) -> Result<UserChanged, StoreError> {
        access::update_user(self, id, update).await
    }

    async fn memberships(&self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        access::memberships(self, user_id).await
    }

    async fn set_memberships(&self, user_id: i64, projects: Vec<i64>) -> Result<(), StoreError> {
        access::set_memberships(self, user_id, projects).await
    }

    async fn insert_token(&self, token: TokenRow) -> Result<TokenRow, StoreError> {
        access::insert_token(self, token).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        access::token_by_hash(self, hash).await
    }

    async fn user_tokens(&self, user_id: i64) -> Result<Vec<TokenRow>, StoreError> {
        access::user_tokens(self, user_id).await
    }

    async fn delete_token(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        access::delete_token(self, user_id, id).await
    }

    async fn touch_token(&self, id: i64, now: i64) -> Result<(), StoreError> {
        access::touch_token(self, id, now).await
    }

    async fn insert_user_session(&self, session: SessionRow) -> Result<(), StoreError> {
        access::insert_user_session(self, session).await
    }

    async fn user_session(&self, hash: &str, now: i64) -> Result<Option<SessionRow>, StoreError> {
        access::user_session(self, hash, now).await
    }

    async fn touch_user_session(
        &self,
        id: i64,
        last_seen: i64,
        expires: i64,
    ) -> Result<(), StoreError> {
        access::touch_user_session(self, id, last_seen, expires).await
    }

    async fn user_sessions(&self, user_id: i64, now: i64) -> Result<Vec<SessionRow>, StoreError> {
        access::user_sessions(self, user_id, now).await
    }

    async fn delete_user_session(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        access::delete_user_session(self, user_id, id).await
    }

    async fn delete_user_session_by_hash(&self, hash: &str) -> Result<(), StoreError> {
        access::delete_user_session_by_hash(self, hash).await
    }

    async fn insert_invite(&self, invite: InviteRow) -> Result<(), StoreError> {
        access::insert_invite(self, invite).await
    }

    async fn invite(&self, hash: &str, now: i64) -> Result<Option<InviteRow>, StoreError> {
        access::invite(self, hash, now).await
    }

    async fn accept_invite(
        &self,
        hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<InviteRow>, StoreError> {
        access::accept_invite(self, hash, password_hash, now).await
    }

    async fn throttle(&self, key: &str, f: ThrottleFn) -> Result<Option<ThrottleRow>, StoreError> {
        access::throttle(self, key, f).await
    }

    async fn insert_audit(&self, entry: AuditRow, keep: i64) -> Result<(), StoreError> {
        access::insert_audit(self, entry, keep).await
    }

    async fn audit(&self, before: Option<i64>, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        access::audit(self, before, limit).await
    }

    async fn ingest_sessions(
        &self,
        project_id: i64,
        updates: Vec<SessionUpdate>,
        aggregates: Vec<SessionAggregate>,
    ) -> Result<(), StoreError> {
        health::ingest(self, project_id, updates, aggregates).await
    }

    async fn session_buckets(
        &self,
        project_id: i64,
        query: SessionQuery,
    ) -> Result<Vec<SessionBucket>, StoreError> {
        health::buckets(self, project_id, query).await
    }

    async fn release_users(
        &self,
        project_id: i64,
        query: SessionQuery,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        health::users(self, project_id, query).await
    }

    async fn new_issues(&self, project_id: i64, limit: i64) -> Result<Vec<NewIssue>, StoreError> {
        health::new_issues(self, project_id, limit).await
    }

    async fn first_release(&self, issue_id: i64) -> Result<Option<String>, StoreError> {
        health::first_release(self, issue_id).await
    }

    // --- the issue workflow (store/postgres/workflow.rs) ---

    async fn assign_issue(
        &self,
        issue_id: i64,
        user_id: Option<i64>,
        now: i64,
    ) -> Result<Assigned, StoreError> {
        workflow::assign_issue(self, issue_id, user_id, now).await
    }

    async fn comments(&self, issue_id: i64, limit: i64) -> Result<Vec<CommentRow>, StoreError> {
        workflow::comments(self, issue_id, limit).await
    }

    async fn insert_comment(
        &self,
        issue_id: i64,
        user_id: i64,
        body: &str,
        now: i64,
    ) -> Result<Option<CommentRow>, StoreError> {
        workflow::insert_comment(self, issue_id, user_id, body, now).await
    }

    async fn comment(&self, issue_id: i64, id: i64) -> Result<Option<CommentRow>, StoreError> {
        workflow::comment(self, issue_id, id).await
    }

    async fn delete_comment(&self, issue_id: i64, id: i64) -> Result<bool, StoreError> {
        workflow::delete_comment(self, issue_id, id).await
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        basics::get_setting(self, name).await
    }

    async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        basics::set_setting(self, name, value).await
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        basics::setting_or_insert(self, name, value).await
    }

    async fn list_projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        basics::list_projects(self).await
    }

    async fn create_project(&self, name: &str) -> Result<Option<ProjectRow>, StoreError> {
        basics::create_project(self, name).await
    }

    async fn project_of_key(&self, key: &str) -> Result<Option<i64>, StoreError> {
        basics::project_of_key(self, key).await
    }

    async fn take_quota(
        &self,
        project_id: i64,
        window: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        basics::take_quota(self, project_id, window, want, limit).await
    }

    async fn ingest(&self, job: IngestJob) -> Result<(), StoreError> {
        ingest::ingest(self, job).await
    }

    async fn stats(&self, project_id: i64) -> Result<Option<Stats>, StoreError> {
        ingest::stats(self, project_id).await
    }

    async fn classes(
        &self,
        project_id: i64,
        status: Option<String>,
        now: i64,
    ) -> Result<Vec<Class>, StoreError> {
        reads::classes(self, project_id, status, now).await
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
        reads::issues(self, project_id, filter, sort, cursor, limit, now).await
    }

    async fn issue(&self, id: i64, now: i64) -> Result<Option<Issue>, StoreError> {
        reads::issue(self, id, now).await
    }

    async fn issue_detail(&self, id: i64, hours: i64, now: i64) -> Result<IssueDetail, StoreError> {
        reads::issue_detail(self, id, hours, now).await
    }

    async fn issue_events(
        &self,
        issue_id: i64,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<EventSummary>, Option<String>), StoreError> {
        reads::issue_events(self, issue_id, cursor, limit).await
    }

    async fn event(&self, project_id: i64, event_id: &str) -> Result<Option<Value>, StoreError> {
        reads::event(self, project_id, event_id).await
    }

    async fn project_tag_values(
        &self,
        project_id: i64,
        key: &str,
    ) -> Result<Vec<TagValue>, StoreError> {
        reads::project_tag_values(self, project_id, key).await
    }

    async fn set_issue_status(
        &self,
        id: i64,
        status: &str,
        alerts: &Arc<Alerts>,
    ) -> Result<Option<usize>, StoreError> {
        alerts::set_issue_status(self, id, status, alerts).await
    }

    async fn alert_rules(&self, project_id: i64) -> Result<Vec<Rule>, StoreError> {
        alerts::alert_rules(self, project_id).await
    }

    async fn alert_rule(&self, id: i64) -> Result<Option<Rule>, StoreError> {
        alerts::alert_rule(self, id).await
    }

    async fn insert_alert_rule(
        &self,
        project_id: i64,
        spec: &RuleSpec,
        max: i64,
        now: i64,
    ) -> Result<Option<Rule>, StoreError> {
        alerts::insert_alert_rule(self, project_id, spec, max, now).await
    }

    async fn update_alert_rule(&self, id: i64, spec: &RuleSpec) -> Result<bool, StoreError> {
        alerts::update_alert_rule(self, id, spec).await
    }

    async fn delete_alert_rule(&self, id: i64) -> Result<bool, StoreError> {
        alerts::delete_alert_rule(self, id).await
    }

    async fn alert_deliveries(
        &self,
        rule_id: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        alerts::alert_deliveries(self, rule_id, limit).await
    }

    async fn alerts_due(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<(Vec<Due>, Option<i64>), StoreError> {
        alerts::alerts_due(self, now, limit).await
    }

    async fn record_alert_attempt(
        &self,
        row: i64,
        outcome: &Outcome,
        now: i64,
    ) -> Result<(), StoreError> {
        alerts::record_alert_attempt(self, row, outcome, now).await
    }

    async fn record_test_delivery(
        &self,
        rule_id: i64,
        delivery_id: &str,
        payload: &str,
        outcome: &Outcome,
        now: i64,
    ) -> Result<Option<DeliveryRow>, StoreError> {
        alerts::record_test_delivery(self, rule_id, delivery_id, payload, outcome, now).await
    }

    async fn prune_alerts(&self, now: i64) -> Result<(), StoreError> {
        alerts::prune_alerts(self, now).await
    }

    async fn note_waiting(
        &self,
        project_id: i64,
        waiting: Vec<(String, Vec<String>)>,
        now: i64,
        prune_before: Option<i64>,
    ) -> Result<(), StoreError> {
        symbolication::note_waiting(self, project_id, waiting, now, prune_before).await
    }

    async fn waiting_for_image(
        &self,
        debug_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Waiting>, StoreError> {
        symbolication::waiting_for_image(self, debug_id, after, limit).await
    }

    async fn waiting_event(
        &self,
        project_id: i64,
        event_id: &str,
    ) -> Result<Option<WaitingEvent>, StoreError> {
        symbolication::waiting_event(self, project_id, event_id).await
    }

    async fn rewrite_events(&self, done: Vec<Rewrite>) -> Result<(), StoreError> {
        symbolication::rewrite_events(self, done).await
    }

    async fn difs_version(&self) -> Result<i64, StoreError> {
        difs::difs_version(self).await
    }

    async fn all_difs(&self) -> Result<Vec<DifRow>, StoreError> {
        difs::all_difs(self).await
    }

    async fn dif(&self, id: i64) -> Result<Option<DifRow>, StoreError> {
        difs::dif(self, id).await
    }

    async fn dif_by_checksum(
        &self,
        project_id: i64,
        checksum: &str,
    ) -> Result<Option<DifRow>, StoreError> {
        difs::dif_by_checksum(self, project_id, checksum).await
    }

    async fn insert_dif(
        &self,
        row: DifRow,
        max_bytes: u64,
        bytes: Option<&Path>,
    ) -> Result<DifInsert, StoreError> {
        difs::insert_dif(self, row, max_bytes, bytes).await
    }

    fn shares_dif_bytes(&self) -> bool {
        true
    }

    async fn dif_bytes(&self, id: i64, dest: &Path) -> Result<bool, StoreError> {
        difs::dif_bytes(self, id, dest).await
    }

    async fn delete_dif(&self, id: i64) -> Result<Option<DifRow>, StoreError> {
        difs::delete_dif(self, id).await
    }

    async fn touch_difs(&self, used: Vec<(i64, i64)>) -> Result<(), StoreError> {
        difs::touch_difs(self, used).await
    }

    async fn insert_minidump(
        &self,
        row: MinidumpRow,
        max_bytes: u64,
    ) -> Result<Vec<MinidumpRow>, StoreError> {
        minidumps::insert_minidump(self, row, max_bytes).await
    }

    async fn minidump(
        &self,
        project_id: i64,
        event_id: &str,
    ) -> Result<Option<MinidumpRow>, StoreError> {
        minidumps::minidump(self, project_id, event_id).await
    }

    async fn take_orphan_minidumps(&self, limit: i64) -> Result<Vec<MinidumpRow>, StoreError> {
        minidumps::take_orphans(self, limit).await
    }

    async fn event_copies(&self) -> Result<HashMap<String, u64>, StoreError> {
        ingest::event_copies(self).await
    }
}
