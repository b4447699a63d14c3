//! The PostgreSQL writer of one collector: group commit over a bounded queue, exact
//! counts when the same event reaches several nodes, retried deadlocks and conflicts.
//!
//! Requests hand a job to a bounded queue (`try_send`: a full queue is a 503) and wait for
//! the answer. A task takes one job, drains up to [`MAX_BATCH_JOBS`] more, runs them in one
//! transaction (`ingest/apply.rs`), and answers each only after the commit, so an answered
//! event survives a killed collector. Every node does this against one database:
//!
//! - An event id is stored once: `event_ids` takes it with `ON CONFLICT DO NOTHING`, so of
//!   two nodes racing on it, the second waits for the first to commit and sees a duplicate.
//! - A fingerprint makes one issue: `INSERT ... ON CONFLICT DO NOTHING`, then a read.
//! - Rows are locked in one order (new issues, dedup ids, then the touched issues by id,
//!   then hours, tags, the project's counter slot), one UPDATE per issue per batch; the
//!   project's counters are spread over `schema::COUNTER_SLOTS` rows, one picked per batch.
//! - Deadlocks (`40P01`) and serialization failures (`40001`) are retried here; a
//!   database that cannot be reached is [`StoreError::Unavailable`] (a 503), and the pool
//!   reconnects when it is back.
//!
//! The bounds are the SQLite writer's (`sqlite/writer.rs`): samples per issue, retention,
//! dedup ids by age and count (pruned by one node at a time), tag caps with `(other)` and
//! tag counts lagging their events by up to [`TAG_DELAY`] under load (on the node that
//! stored the events; a killed node loses that last second of tag counts). Aggregate
//! counts racing their event on another node are applied by the next sweep (5 s).

mod apply;
mod hook;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::error::SqlState;

use self::apply::{Batch, IssueIds, TagCounts};
use super::PgStore;
use crate::alerts::Alerts;
use crate::metrics::Metrics;
use crate::store::{
    DEDUP_WINDOW_MS, DiscardRow, IngestJob, MAX_BATCH_EVENTS, MAX_BATCH_JOBS, Retention, Stats,
    StoreError, TAG_DELAY,
};
use crate::time::{HOUR_MS, hour_of, now_ms, rfc3339};

/// Event bytes in one transaction at most (a batch closes early when it reaches this).
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Attempts of a transaction that deadlocked or lost a serialization conflict.
const MAX_ATTEMPTS: u32 = 30;

/// How often expired rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often pending aggregate counts are matched with events other nodes stored.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// `pg_try_advisory_lock` key of the pruning node ("errprune").
const PRUNE_LOCK: i64 = 0x65_72_72_70_72_75_6e_65;

type Ack = oneshot::Sender<Result<(), StoreError>>;

enum Msg {
    Job(IngestJob, Ack),
    Shutdown,
}

/// The ingest writer of one collector.
pub(super) struct Ingestor {
    tx: mpsc::Sender<Msg>,
    depth: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    closed: AtomicBool,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Ingestor {
    /// Starts the writer on `pool` (a task that restarts it should a batch panic).
    pub(super) fn start(
        pool: Pool,
        queue_capacity: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<Alerts>>,
    ) -> Ingestor {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let depth = Arc::new(AtomicI64::new(0));
        let rx = Arc::new(Mutex::new(rx));
        let (d, m) = (depth.clone(), metrics.clone());
        let task = tokio::spawn(async move {
            loop {
                let w = Writer::new(pool.clone(), retention, m.clone(), d.clone(), alerts.clone());
                match tokio::spawn(w.run(rx.clone())).await {
                    Err(e) if e.is_panic() => {
                        tracing::error!("the PostgreSQL writer panicked on a batch; restarting it");
                    }
                    _ => break,
                }
            }
        });
        Ingestor {
            tx,
            depth,
            metrics,
            closed: AtomicBool::new(false),
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Jobs waiting.
    pub(super) fn queue_depth(&self) -> i64 {
        self.depth.load(Relaxed).max(0)
    }

    async fn submit(&self, job: IngestJob) -> Result<(), StoreError> {
        if self.closed.load(Relaxed) {
            return Err(StoreError::WriterGone);
        }
        let (ack, rx) = oneshot::channel();
        self.depth.fetch_add(1, Relaxed);
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        if let Err(e) = self.tx.try_send(Msg::Job(job, ack)) {
            self.depth.fetch_sub(1, Relaxed);
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => StoreError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => StoreError::WriterGone,
            });
        }
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Finishes the queued jobs and stops.
    pub(super) async fn close(&self) {
        self.closed.store(true, Relaxed);
        let _ = self.tx.send(Msg::Shutdown).await;
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// What a committed transaction did.
struct Done {
    batch: Batch,
    wrote_tags: bool,
    alerts_queued: usize,
}

struct Writer {
    pool: Pool,
    retention: Retention,
    metrics: Arc<Metrics>,
    depth: Arc<AtomicI64>,
    issue_ids: IssueIds,
    tags: (TagCounts, TagCounts),
    tags_since: Instant,
    hook: hook::Hook,
    last_prune: Instant,
    last_hourly_prune: Instant,
    last_sweep: Instant,
    /// Events stored since the dedup ids were last pruned.
    ids_since_prune: i64,
}

impl Writer {
    fn new(
        pool: Pool,
        retention: Retention,
        metrics: Arc<Metrics>,
        depth: Arc<AtomicI64>,
        alerts: Option<Arc<Alerts>>,
    ) -> Self {
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(7200))
            .unwrap_or_else(Instant::now);
        Writer {
            pool,
            retention,
            metrics,
            depth,
            issue_ids: IssueIds::new(),
            tags: Default::default(),
            tags_since: Instant::now(),
            hook: hook::Hook::new(alerts),
            last_prune: long_ago,
            last_hourly_prune: long_ago,
            last_sweep: long_ago,
            ids_since_prune: 0,
        }
    }

    async fn run(mut self, rx: Arc<Mutex<mpsc::Receiver<Msg>>>) {
        let mut rx = rx.lock().await;
        self.maybe_prune().await;
        loop {
            let first = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    if !self.tags.0.is_empty()
                        || !self.tags.1.is_empty()
                        || self.last_sweep.elapsed() >= SWEEP_EVERY
                    {
                        self.process(Vec::new()).await;
                    }
                    self.maybe_prune().await;
                    continue;
                }
            };
            let mut jobs = Vec::new();
            let (mut events, mut bytes, mut shutdown, mut taken) = (0, 0, false, 0i64);
            let mut next = Some(first);
            while let Some(m) = next.take() {
                taken += 1;
                match m {
                    Msg::Shutdown => shutdown = true,
                    Msg::Job(job, ack) => {
                        events += job.events.len();
                        bytes += job.events.iter().map(|e| e.data.len()).sum::<usize>();
                        jobs.push((job, ack));
                    }
                }
                if !shutdown
                    && jobs.len() < MAX_BATCH_JOBS
                    && events < MAX_BATCH_EVENTS
                    && bytes < MAX_BATCH_BYTES
                {
                    next = rx.try_recv().ok();
                }
            }
            let jobs_taken = taken - i64::from(shutdown);
            self.depth.fetch_sub(jobs_taken, Relaxed);
            self.metrics.queue_depth.fetch_sub(jobs_taken, Relaxed);
            if !jobs.is_empty() {
                self.process(jobs).await;
            }
            if shutdown {
                // Everything queued before the shutdown request has been answered.
                break;
            }
            self.maybe_prune().await;
        }
        if !self.tags.0.is_empty() || !self.tags.1.is_empty() {
            self.process(Vec::new()).await;
        }
        tracing::debug!("PostgreSQL writer stopped");
    }

    /// Commits `jobs` and answers them. When the batch fails for a reason other than the
    /// database being unreachable, each job is tried alone, so one bad job fails alone.
    async fn process(&mut self, jobs: Vec<(IngestJob, Ack)>) {
        let (jobs, acks): (Vec<IngestJob>, Vec<Ack>) = jobs.into_iter().unzip();
        let refs: Vec<&IngestJob> = jobs.iter().collect();
        match self.commit(&refs).await {
            Ok(()) => {
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) if refs.len() > 1 && !e.is_busy() => {
                for (job, ack) in refs.iter().zip(acks) {
                    let r = self.commit(&[job]).await;
                    let _ = ack.send(r.map_err(|e| for_client(&e)));
                }
            }
            Err(e) => {
                for ack in acks {
                    let _ = ack.send(Err(for_client(&e)));
                }
            }
        }
    }

    /// Runs `jobs` in one transaction until it commits, retrying deadlocks, serialization
    /// failures and a stale pooled connection.
    async fn commit(&mut self, jobs: &[&IngestJob]) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match self.attempt(jobs).await {
                Ok(done) => {
                    self.committed(done, started.elapsed());
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    let busy = e.is_busy();
                    if (retryable(&e) && attempt < MAX_ATTEMPTS) || (busy && attempt < 2) {
                        tracing::debug!("retrying a writer transaction ({e})");
                        let jitter = rand::random_range(0..=attempt.min(10) * 5);
                        tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
                        continue;
                    }
                    if busy {
                        tracing::warn!("PostgreSQL is unavailable: {e}");
                    } else {
                        tracing::error!("writer transaction failed: {e}");
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn attempt(&mut self, jobs: &[&IngestJob]) -> Result<Done, StoreError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let tx = conn.transaction().await?;
        let mut batch = Batch::default();
        let sweep = self.last_sweep.elapsed() >= SWEEP_EVERY;
        apply::stage(&tx, jobs, &self.issue_ids, &mut batch, sweep).await?;
        let facts = apply::lock_issues(&tx, &batch).await?;
        let mut alerts_queued = 0;
        if !batch.issues.is_empty() && self.hook.active(&tx).await? {
            alerts_queued = self.hook.decide(&tx, &facts, &batch, jobs).await?;
        }
        apply::flush(&tx, jobs, &batch, &self.retention).await?;
        // Light load (one or two requests per batch): tag counts go out with their events.
        let wrote_tags = jobs.len() <= 2
            || self.tags_since.elapsed() >= TAG_DELAY
            || self.tags.0.len() + self.tags.1.len() > 50_000;
        if wrote_tags {
            let (mut issue, mut project) = self.tags.clone();
            add_tags(&mut issue, &batch.issue_tags);
            add_tags(&mut project, &batch.project_tags);
            apply::write_tags(&tx, &issue, &project).await?;
        }
        tx.commit().await?;
        if sweep {
            self.last_sweep = Instant::now();
        }
        Ok(Done {
            batch,
            wrote_tags,
            alerts_queued,
        })
    }

    fn committed(&mut self, done: Done, took: Duration) {
        let Done {
            batch,
            wrote_tags,
            alerts_queued,
        } = done;
        if self.issue_ids.len() > 100_000 {
            self.issue_ids.clear();
        }
        self.issue_ids.extend(batch.learned.iter().cloned());
        if wrote_tags {
            self.tags.0.clear();
            self.tags.1.clear();
            self.tags_since = Instant::now();
        } else {
            if self.tags.0.is_empty() && self.tags.1.is_empty() {
                self.tags_since = Instant::now();
            }
            add_tags(&mut self.tags.0, &batch.issue_tags);
            add_tags(&mut self.tags.1, &batch.project_tags);
        }
        self.metrics.commit(took);
        self.metrics
            .events_accepted
            .fetch_add(batch.events_stored, Relaxed);
        self.metrics
            .events_duplicate
            .fetch_add(batch.duplicates, Relaxed);
        self.ids_since_prune += batch.events_stored as i64;
        if alerts_queued > 0 {
            self.hook.wake();
        }
    }

    async fn maybe_prune(&mut self) {
        let due = self.last_prune.elapsed() >= PRUNE_EVERY;
        let cap_due = self.ids_since_prune >= (self.retention.dedup_max_ids / 10).max(1);
        if !due && !cap_due {
            return;
        }
        if let Err(e) = self.prune(due).await {
            tracing::error!("pruning failed: {e}");
        }
    }

    /// Deletes the dedup ids past the cap and, with `all`, expired samples, dedup ids,
    /// counts and buckets; one node at a time (the others skip their turn).
    async fn prune(&mut self, all: bool) -> Result<(), StoreError> {
        self.ids_since_prune = 0;
        if all {
            self.last_prune = Instant::now();
        }
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let locked: bool = conn
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNE_LOCK])
            .await?
            .get(0);
        if !locked {
            return Ok(());
        }
        let r = async {
            conn.execute(
                "DELETE FROM event_ids WHERE received < (SELECT received FROM event_ids ORDER BY received DESC OFFSET $1 LIMIT 1)",
                &[&self.retention.dedup_max_ids],
            )
            .await?;
            if !all {
                return Ok(());
            }
            let now = now_ms();
            let cutoff = apply::retention_cutoff(&self.retention, now);
            // Rows arrive in id order, so the oldest samples have the lowest ids.
            while conn
                .execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT 5000) AND received < $1",
                    &[&cutoff],
                )
                .await?
                == 5000
            {}
            conn.execute(
                "DELETE FROM event_ids WHERE received < $1",
                &[&(now - DEDUP_WINDOW_MS)],
            )
            .await?;
            conn.execute(
                "DELETE FROM applied_counts WHERE received < $1",
                &[&(now - 7 * 24 * HOUR_MS)],
            )
            .await?;
            conn.execute(
                "DELETE FROM pending_counts WHERE received < $1",
                &[&(now - DEDUP_WINDOW_MS)],
            )
            .await?;
            if self.last_hourly_prune.elapsed() >= Duration::from_secs(3600) {
                self.last_hourly_prune = Instant::now();
                conn.execute(
                    "DELETE FROM issue_hourly WHERE hour < $1",
                    &[&(hour_of(now) - apply::hourly_keep_hours(&self.retention))],
                )
                .await?;
            }
            if let Some(minute_ms) = self.hook.minute_ms() {
                conn.execute(
                    "DELETE FROM issue_minutes WHERE minute < $1",
                    &[&(now / minute_ms - crate::alerts::rules::MAX_MINUTES)],
                )
                .await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        let unlocked = conn
            .execute("SELECT pg_advisory_unlock($1)", &[&PRUNE_LOCK])
            .await;
        r?;
        unlocked?;
        Ok(())
    }
}

fn add_tags(into: &mut TagCounts, from: &TagCounts) {
    for (k, n) in from {
        *into.entry(k.clone()).or_default() += n;
    }
}

/// Whether a transaction failed only because it lost a race with another one.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(e) => e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }),
        _ => false,
    }
}

/// The error a waiting request gets: a 503 when the database is unreachable.
fn for_client(e: &StoreError) -> StoreError {
    if e.is_busy() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Task(e.to_string())
    }
}

pub(super) async fn ingest(s: &PgStore, job: IngestJob) -> Result<(), StoreError> {
    s.ingest.submit(job).await
}

pub(super) async fn stats(s: &PgStore, project_id: i64) -> Result<Option<Stats>, StoreError> {
    let conn = s.conn().await?;
    let row = conn
        .query_opt(
            "SELECT coalesce(sum(c.events), 0)::int8, coalesce(sum(c.seq), 0)::int8, max(c.last_seen)
             FROM projects p LEFT JOIN project_counters c ON c.project_id = p.id
             WHERE p.id = $1 GROUP BY p.id",
            &[&project_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let issues: i64 = conn
        .query_one(
            "SELECT count(*) FROM issues WHERE project_id = $1",
            &[&project_id],
        )
        .await?
        .get(0);
    let discarded = conn
        .query(
            "SELECT reason, category, quantity FROM discards WHERE project_id = $1 ORDER BY reason, category",
            &[&project_id],
        )
        .await?
        .iter()
        .map(|r| DiscardRow {
            reason: r.get(0),
            category: r.get(1),
            quantity: r.get(2),
        })
        .collect();
    Ok(Some(Stats {
        events: row.get(0),
        issues,
        last_seen: row.get::<_, Option<i64>>(2).map(rfc3339),
        seq: row.get(1),
        discarded,
    }))
}

pub(super) async fn event_copies(s: &PgStore) -> Result<HashMap<String, u64>, StoreError> {
    let conn = s.conn().await?;
    let rows = conn
        .query(
            "SELECT event_id, count(*) FROM events GROUP BY event_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1).unsigned_abs()))
        .collect())
}
