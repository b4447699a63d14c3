//! The PostgreSQL writer of one collector: group commit over a bounded queue, exact
//! counts when the same event reaches several nodes, retried deadlocks and conflicts.
//!
//! Requests hand a job to a bounded queue (`try_send`: a full queue is a 503) and wait for
//! the answer. A writer task takes one job, drains up to [`MAX_BATCH_JOBS`] more, runs them
//! in one transaction (`ingest/apply.rs`), and answers each only after the commit, so an
//! answered event survives a killed collector; [`DEFAULT_WRITERS`] of them (`--pg-writers`) share the queue, so one
//! fills and writes a batch while another waits for its commit. Every node does this
//! against one database:
//!
//! - An event id is stored once: `event_ids` takes it with `ON CONFLICT DO NOTHING`, so of
//!   two nodes racing on it, the second waits for the first to commit and sees a duplicate.
//! - A fingerprint makes one issue: `INSERT ... ON CONFLICT DO NOTHING`, then a read.
//! - A batch locks no row another batch of a storm needs across its commit's WAL flush:
//!   issue counts, hourly buckets and tag counts go out as insert-only deltas (`fold.rs`
//!   folds them, one node at a time); the project's counters are spread over
//!   `schema::COUNTER_SLOTS` rows, one picked per batch; a sample another writer is
//!   deleting is skipped. Only a resolved issue's row is locked (to reopen it once).
//! - Deadlocks (`40P01`) and serialization failures (`40001`) are retried here; a
//!   database that cannot be reached is [`StoreError::Unavailable`] (a 503), and the pool
//!   reconnects when it is back.
//!
//! The bounds are the SQLite writer's (`sqlite/writer.rs`): samples per issue, retention,
//! dedup ids by age and count (pruned by one node at a time), tag caps with `(other)`.
//! Unlike SQLite's writer, tag counts are written in their events' transaction (as
//! deltas): exact even when a node is killed. Aggregate counts racing their event on
//! another node are applied by the next sweep (5 s).

mod apply;
mod hook;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};

use self::apply::{Batch, IssueIds};
use super::PgStore;
use super::basics::is_conflict;
use crate::alerts::Alerts;
use crate::metrics::Metrics;
use crate::store::{
    DEDUP_WINDOW_MS, DiscardRow, IngestJob, MAX_BATCH_EVENTS, MAX_BATCH_JOBS, Retention, Stats,
    StoreError,
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

/// Writer tasks per collector unless `--pg-writers` says otherwise, each with a
/// transaction of its own in flight. One writer spends most of its time waiting for its
/// commit's WAL flush; a second fills a batch and writes it meanwhile. They take rows in
/// the same order as other nodes' writers do, so two writers of one node are no
/// different from two nodes.
pub const DEFAULT_WRITERS: usize = 2;

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
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Ingestor {
    /// Starts `writers` writers on `pool` (each under a task that restarts it should a
    /// batch panic).
    pub(super) fn start(
        pool: Pool,
        queue_capacity: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<Alerts>>,
        writers: usize,
    ) -> Ingestor {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let depth = Arc::new(AtomicI64::new(0));
        let rx = Arc::new(Mutex::new(rx));
        let tasks = (0..writers)
            .map(|_| {
                let (pool, rx, alerts) = (pool.clone(), rx.clone(), alerts.clone());
                let (d, m) = (depth.clone(), metrics.clone());
                tokio::spawn(async move {
                    loop {
                        let w = Writer::new(
                            pool.clone(),
                            retention,
                            m.clone(),
                            d.clone(),
                            alerts.clone(),
                        );
                        match tokio::spawn(w.run(rx.clone())).await {
                            Err(e) if e.is_panic() => {
                                tracing::error!(
                                    "a PostgreSQL writer panicked on a batch; restarting it"
                                );
                            }
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        Ingestor {
            tx,
            depth,
            metrics,
            closed: AtomicBool::new(false),
            tasks: std::sync::Mutex::new(tasks),
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

    /// Finishes the queued jobs and stops: one `Shutdown` per writer, behind every job
    /// queued before it (a writer takes no job after its `Shutdown`).
    pub(super) async fn close(&self) {
        self.closed.store(true, Relaxed);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for _ in 0..tasks.len() {
            let _ = self.tx.send(Msg::Shutdown).await;
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// What a committed transaction did.
struct Done {
    batch: Batch,
    alerts_queued: usize,
}

struct Writer {
    pool: Pool,
    retention: Retention,
    metrics: Arc<Metrics>,
    depth: Arc<AtomicI64>,
    issue_ids: IssueIds,
    hook: hook::Hook,
    last_prune: Instant,
    last_hourly_prune: Instant,
    last_sweep: Instant,
    /// The highest dedup-id number a committed batch of this writer took.
    id_seq: i64,
    /// [`Self::id_seq`] when this writer last pruned the dedup ids past their cap.
    id_mark: i64,
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
            hook: hook::Hook::new(alerts),
            last_prune: long_ago,
            last_hourly_prune: long_ago,
            last_sweep: long_ago,
            id_seq: 0,
            id_mark: 0,
        }
    }

    /// Takes a batch from the queue (holding it only while it fills the batch, so the
    /// other writers take the next while this one commits), commits it, and again.
    async fn run(mut self, rx: Arc<Mutex<mpsc::Receiver<Msg>>>) {
        self.maybe_prune().await;
        loop {
            let mut rx = rx.lock().await;
            let first = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    drop(rx);
                    if self.last_sweep.elapsed() >= SWEEP_EVERY {
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
            drop(rx);
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
                    if (is_conflict(&e) && attempt < MAX_ATTEMPTS) || (busy && attempt < 2) {
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
        let hook = !batch.issues.is_empty() && self.hook.active(&tx).await?;
        let facts = if hook {
            apply::issue_facts(&tx, &batch).await?
        } else {
            Default::default()
        };
        // Counts go out with their events (as deltas): a node killed after answering 200
        // has lost none of them.
        let regressed = apply::flush(&tx, jobs, &batch, &self.retention).await?;
        let mut alerts_queued = 0;
        if hook {
            alerts_queued = self
                .hook
                .decide(&tx, &facts, &regressed, &batch, jobs)
                .await?;
        }
        tx.commit().await?;
        if sweep {
            self.last_sweep = Instant::now();
        }
        Ok(Done {
            batch,
            alerts_queued,
        })
    }

    fn committed(&mut self, done: Done, took: Duration) {
        let Done {
            batch,
            alerts_queued,
        } = done;
        if self.issue_ids.len() > 100_000 {
            self.issue_ids.clear();
        }
        self.issue_ids.extend(batch.learned.iter().cloned());
        self.metrics.commit(took);
        self.metrics
            .events_accepted
            .fetch_add(batch.events_stored, Relaxed);
        self.metrics
            .events_duplicate
            .fetch_add(batch.duplicates, Relaxed);
        self.id_seq = self.id_seq.max(batch.id_seq);
        if alerts_queued > 0 {
            self.hook.wake();
        }
    }

    async fn maybe_prune(&mut self) {
        let due = self.last_prune.elapsed() >= PRUNE_EVERY;
        // Numbered by all nodes' inserts: whichever writer sees a tenth of the cap added
        // since it last pruned prunes, so the ids exceed the cap by at most a tenth of it
        // and the batches in flight, however many writers there are.
        let cap_due = self.id_seq - self.id_mark >= (self.retention.dedup_max_ids / 10).max(1);
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
            // Another writer is pruning; this one tries again after its next batch.
            return Ok(());
        }
        self.id_mark = self.id_seq;
        let r = async {
            // The newest `dedup_max_ids` by insertion, whichever node inserted them.
            conn.execute(
                "DELETE FROM event_ids WHERE seq <= (SELECT max(seq) FROM event_ids) - $1",
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
            conn.execute(
                "DELETE FROM rate_windows WHERE window_start < $1",
                &[&(now / 60_000 - 1)],
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alerts::AlertConfig;
    use crate::ingest::prepare_event;
    use crate::store::postgres::testing;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{CountRecord, Discard, PreparedEvent, Sort, Store};

    const WORDS: [&str; 6] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];

    async fn node(url: &str, retention: Retention, capacity: usize) -> PgStore {
        PgStore::open(url, capacity, retention, Arc::new(Metrics::default()), None)
            .await
            .expect("open the store")
    }

    /// Two nodes on one fresh database with project 1.
    async fn two_nodes() -> (PgStore, PgStore) {
        let url = testing::fresh_database().await;
        let a = node(&url, Retention::default(), 1024).await;
        add_project(&a).await;
        let b = node(&url, Retention::default(), 1024).await;
        (a, b)
    }

    async fn add_project(s: &PgStore) {
        s.conn()
            .await
            .unwrap()
            .execute(
                "INSERT INTO projects (id, name, created) VALUES (1, 'default', 0)",
                &[],
            )
            .await
            .unwrap();
    }

    /// Event `n` of fingerprint `fp` (a distinct message per fingerprint), with tags.
    fn ev(n: u64, fp: usize, received: i64) -> PreparedEvent {
        let json = format!(
            r#"{{"event_id":"{n:032x}","message":"failure in {} service","timestamp":{},"tags":{{"region":"{}"}}}}"#,
            WORDS[fp % WORDS.len()],
            received / 1000,
            WORDS[(n % 3) as usize],
        );
        prepare_event(json.as_bytes(), received, None).unwrap()
    }

    fn job(events: Vec<PreparedEvent>) -> IngestJob {
        IngestJob {
            project_id: 1,
            events,
            ..Default::default()
        }
    }

    /// One value, read after folding the deltas (as the API reads do).
    async fn i64_of(s: &PgStore, sql: &str) -> i64 {
        crate::store::postgres::fold::folded(s)
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Sessions of the test database waiting for a lock (read without folding, which
    /// could wait for the locks the test holds).
    async fn lock_waiters(s: &PgStore) -> i64 {
        s.conn()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `title -> count` of every issue, and `(key, value) -> count` of the project's tags.
    async fn pg_counts(s: &PgStore) -> (BTreeMap<String, i64>, BTreeMap<(String, String), i64>) {
        let c = crate::store::postgres::fold::folded(s).await.unwrap();
        let issues = c
            .query("SELECT title, count FROM issues", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let tags = c
            .query("SELECT key, value, count FROM project_tags", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        (issues, tags)
    }

    /// The same jobs through SQLite: issue counts by title and the project's tag counts.
    async fn sqlite_counts(
        jobs: Vec<IngestJob>,
        keys: &[&str],
    ) -> (
        BTreeMap<String, i64>,
        BTreeMap<(String, String), i64>,
        Stats,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(
            dir.path(),
            1024,
            Retention::default(),
            Arc::new(Metrics::default()),
            None,
        )
        .unwrap();
        s.create_project("default").await.unwrap();
        for j in jobs {
            s.ingest(j).await.unwrap();
        }
        s.close().await;
        let now = now_ms();
        let (issues, _) = s
            .issues(1, Default::default(), Sort::Count, None, 100, now)
            .await
            .unwrap();
        let mut tags = BTreeMap::new();
        for k in keys {
            for t in s.project_tag_values(1, k).await.unwrap() {
                tags.insert((k.to_string(), t.value), t.count);
            }
        }
        let stats = s.stats(1).await.unwrap().unwrap();
        (
            issues.into_iter().map(|i| (i.title, i.count)).collect(),
            tags,
            stats,
        )
    }

    /// 305 events of 6 fingerprints, in jobs of 10 that overlap by half, each sent to
    /// both nodes at once (and every job once more to the other node afterwards).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_store_and_count_each_event_once() {
        let (a, b) = two_nodes().await;
        let now = now_ms();
        let jobs_of = || -> Vec<IngestJob> {
            (0..60u64)
                .map(|j| {
                    job((j * 5..j * 5 + 10)
                        .map(|n| ev(n + 1, n as usize % 6, now))
                        .collect())
                })
                .collect()
        };
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut tasks = Vec::new();
        for (ja, jb) in jobs_of().into_iter().zip(jobs_of()) {
            let (a, b) = (a.clone(), b.clone());
            tasks.push(tokio::spawn(async move { a.ingest(ja).await }));
            tasks.push(tokio::spawn(async move { b.ingest(jb).await }));
        }
        // Then again, node B walking backwards while node A walks forwards.
        for (ja, jb) in jobs_of().into_iter().rev().zip(jobs_of()) {
            let (a, b) = (a.clone(), b.clone());
            tasks.push(tokio::spawn(async move { b.ingest(ja).await }));
            tasks.push(tokio::spawn(async move { a.ingest(jb).await }));
        }
        for t in tasks {
            t.await.unwrap().expect("every valid job is accepted");
        }
        a.close().await;
        b.close().await;
        let copies = a.event_copies().await.unwrap();
        assert_eq!(copies.len(), 305, "ids 1..=305");
        assert!(copies.values().all(|n| *n == 1));
        let stats = a.stats(1).await.unwrap().unwrap();
        assert_eq!(stats.events, 305);
        assert_eq!(stats.issues, 6);
        assert_eq!(i64_of(&a, "SELECT sum(count)::int8 FROM issues").await, 305);
        assert_eq!(
            i64_of(&a, "SELECT sum(count)::int8 FROM issue_hourly").await,
            305
        );
        assert_eq!(
            i64_of(
                &a,
                "SELECT sum(count)::int8 FROM issue_tags WHERE key = 'region'"
            )
            .await,
            305
        );
        assert_eq!(i64_of(&a, "SELECT count(*) FROM event_ids").await, 305);
        // The same as SQLite gets from one copy of the jobs.
        let (issues, tags) = pg_counts(&a).await;
        let (want_issues, want_tags, want_stats) =
            sqlite_counts(jobs_of(), &["region", "level"]).await;
        assert_eq!(issues, want_issues);
        assert_eq!(
            tags.into_iter()
                .filter(|((k, _), _)| k == "region" || k == "level")
                .collect::<BTreeMap<_, _>>(),
            want_tags
        );
        assert_eq!(stats.events, want_stats.events);
        assert_eq!(stats.issues, want_stats.issues);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_racing_on_a_new_fingerprint_make_one_issue() {
        let (a, b) = two_nodes().await;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let now = now_ms();
        let mut tasks = Vec::new();
        for n in 0..16u64 {
            let s = if n % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                s.ingest(job(vec![ev(n + 1, 0, now)])).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(i64_of(&a, "SELECT count(*) FROM issues").await, 1);
        assert_eq!(i64_of(&a, "SELECT count FROM issues").await, 16);
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn keeps_the_first_and_newest_samples_and_exact_counts() {
        let url = testing::fresh_database().await;
        let s = node(
            &url,
            Retention {
                max_events_per_issue: 5,
                ..Retention::default()
            },
            64,
        )
        .await;
        add_project(&s).await;
        let now = now_ms();
        for n in 1..=20 {
            s.ingest(job(vec![ev(n, 0, now)])).await.unwrap();
        }
        // And a batch larger than the cap at once.
        s.ingest(job((21..=30).map(|n| ev(n, 0, now)).collect()))
            .await
            .unwrap();
        let ids: Vec<String> = s
            .conn()
            .await
            .unwrap()
            .query("SELECT event_id FROM events ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<String> = [1, 27, 28, 29, 30]
            .iter()
            .map(|n| format!("{n:032x}"))
            .collect();
        assert_eq!(ids, want);
        assert_eq!(i64_of(&s, "SELECT count FROM issues").await, 30);
        assert_eq!(
            i64_of(&s, "SELECT sum(count)::int8 FROM issue_hourly").await,
            30
        );
        assert_eq!(s.stats(1).await.unwrap().unwrap().events, 30);
        s.close().await;
    }

    /// Four writers (two nodes of two) storing one event at a time: whichever writer sees
    /// a tenth of the cap added since it last pruned prunes, so the dedup ids never pass
    /// the cap by more than a tenth of it and the batch in flight (with each writer
    /// counting only its own events, it was about a tenth per writer).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dedup_ids_stay_under_their_cap_across_writers() {
        let cap = 100;
        let url = testing::fresh_database().await;
        let retention = Retention {
            dedup_max_ids: cap,
            ..Retention::default()
        };
        let a = node(&url, retention, 64).await;
        add_project(&a).await;
        let b = node(&url, retention, 64).await;
        let now = now_ms();
        let mut peak = 0;
        for n in 1..=400u64 {
            let s = if n % 2 == 0 { &a } else { &b };
            s.ingest(job(vec![ev(n, 0, now)])).await.unwrap();
            peak = peak.max(i64_of(&a, "SELECT count(*) FROM event_ids").await);
        }
        // The cap, a tenth of it, and the event just stored and the one before it (the
        // writer that stored it prunes after answering).
        assert!(peak <= cap + cap / 10 + 2, "peak {peak}");
        assert!(peak > cap, "the ids reached the cap: {peak}");
        // A retry of the newest event is still recognised, through either node.
        a.ingest(job(vec![ev(400, 0, now)])).await.unwrap();
        b.ingest(job(vec![ev(399, 0, now)])).await.unwrap();
        assert_eq!(a.stats(1).await.unwrap().unwrap().events, 400);
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn tag_values_are_capped_with_other() {
        let s = testing::fresh_store().await;
        add_project(&s).await;
        let now = now_ms();
        let events: Vec<PreparedEvent> = (0..crate::store::MAX_TAG_VALUES_PER_ISSUE + 20)
            .map(|n| {
                let json = format!(
                    r#"{{"event_id":"{n:032x}","message":"m","tags":{{"request_id":"r{n}"}}}}"#
                );
                prepare_event(json.as_bytes(), now, None).unwrap()
            })
            .collect();
        s.ingest(job(events)).await.unwrap();
        assert_eq!(
            i64_of(
                &s,
                "SELECT count(*) FROM issue_tags WHERE key = 'request_id'"
            )
            .await,
            crate::store::MAX_TAG_VALUES_PER_ISSUE + 1
        );
        assert_eq!(
            i64_of(
                &s,
                "SELECT count FROM issue_tags WHERE key = 'request_id' AND value = '(other)'"
            )
            .await,
            20
        );
        s.close().await;
    }

    #[tokio::test]
    async fn discards_and_aggregate_counts_match_sqlite() {
        let (a, b) = two_nodes().await;
        let now = now_ms();
        let count = |id: &str, event: u64, n: i64| CountRecord {
            id: id.into(),
            event_id: format!("{event:032x}"),
            count: n,
            start: now - 1000,
            end: now,
        };
        let jobs = || {
            vec![
                job(vec![ev(1, 0, now)]),
                IngestJob {
                    project_id: 1,
                    events: vec![],
                    discards: vec![Discard {
                        reason: "queue_overflow".into(),
                        category: "error".into(),
                        quantity: 3,
                    }],
                    // One for a stored event, one whose event comes later.
                    counts: vec![count("c1", 1, 10), count("c2", 2, 5)],
                },
                job(vec![ev(2, 1, now)]),
            ]
        };
        for j in jobs() {
            a.ingest(j).await.unwrap();
        }
        // Retries of all of it through the other node change nothing.
        for j in jobs() {
            b.ingest(j).await.unwrap();
        }
        let stats = a.stats(1).await.unwrap().unwrap();
        let (_, _, want) = sqlite_counts(jobs(), &[]).await;
        assert_eq!(stats.events, 17);
        assert_eq!(stats.events, want.events);
        assert_eq!(stats.issues, want.issues);
        assert!(stats.last_seen.is_some());
        assert!(stats.seq > 0);
        assert_eq!(stats.discarded.len(), 1);
        // Discards carry no id: a resent report counts again, as on SQLite.
        assert_eq!(want.discarded[0].quantity, 3);
        assert_eq!(stats.discarded[0].quantity, 2 * want.discarded[0].quantity);
        assert_eq!(i64_of(&a, "SELECT count(*) FROM pending_counts").await, 0);
        let (issues, _) = pg_counts(&a).await;
        assert_eq!(
            issues
                .values()
                .copied()
                .collect::<Vec<_>>()
                .iter()
                .sum::<i64>(),
            17
        );
        assert!(a.stats(99).await.unwrap().is_none());
        a.close().await;
        b.close().await;
    }

    /// Locks the project counters from another connection (every batch writes a slot)
    /// until the returned sender fires.
    async fn hold_counter_lock(s: &PgStore) -> oneshot::Sender<()> {
        let mut conn = s.conn().await.unwrap();
        let (release, wait) = oneshot::channel::<()>();
        let (locked_tx, locked) = oneshot::channel();
        tokio::spawn(async move {
            let tx = conn.transaction().await.unwrap();
            tx.batch_execute("LOCK TABLE project_counters IN EXCLUSIVE MODE")
                .await
                .unwrap();
            let _ = locked_tx.send(());
            let _ = wait.await;
            tx.commit().await.unwrap();
        });
        locked.await.unwrap();
        release
    }

    #[tokio::test]
    async fn a_job_is_answered_after_its_commit_and_a_full_queue_is_refused() {
        let url = testing::fresh_database().await;
        // One writer: it takes the first job and waits for the lock, and the next job then
        // stays in the queue (with more writers, each would take one).
        let s = Arc::new(
            PgStore::open_with_writers(
                &url,
                1,
                Retention::default(),
                Arc::new(Metrics::default()),
                None,
                1,
            )
            .await
            .expect("open the store"),
        );
        add_project(&s).await;
        let now = now_ms();
        s.ingest(job(vec![ev(1, 0, now)])).await.unwrap();
        let release = hold_counter_lock(&s).await;
        // The writer takes this job and waits for the lock; the next one fills the queue.
        let first = {
            let s = s.clone();
            tokio::spawn(async move { s.ingest(job(vec![ev(2, 0, now)])).await })
        };
        while lock_waiters(&s).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let second = {
            let s = s.clone();
            tokio::spawn(async move { s.ingest(job(vec![ev(3, 0, now)])).await })
        };
        while s.queue_depth() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(matches!(
            s.ingest(job(vec![ev(4, 0, now)])).await,
            Err(StoreError::QueueFull)
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!first.is_finished(), "not answered before it commits");
        assert_eq!(i64_of(&s, "SELECT count(*) FROM events").await, 1);
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        // Answered means committed: another connection sees it.
        assert!(i64_of(&s, "SELECT count(*) FROM events").await >= 2);
        second.await.unwrap().unwrap();
        assert_eq!(i64_of(&s, "SELECT count FROM issues").await, 3);
        s.close().await;
        assert!(matches!(
            s.ingest(job(vec![ev(5, 0, now)])).await,
            Err(StoreError::WriterGone)
        ));
    }

    /// Another session and the writer lock two resolved issues (which a batch reopens) in
    /// opposite orders; PostgreSQL aborts the writer's transaction (its deadlock check
    /// runs first), which retries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_is_retried_not_surfaced() {
        let s = Arc::new(testing::fresh_store().await);
        add_project(&s).await;
        let now = now_ms();
        s.ingest(job(vec![ev(1, 0, now), ev(2, 1, now)]))
            .await
            .unwrap();
        // Folded now, so that no fold waits for the locks below.
        let mut conn = crate::store::postgres::fold::folded(&s).await.unwrap();
        conn.execute("UPDATE issues SET status = 'resolved'", &[])
            .await
            .unwrap();
        let tx = conn.transaction().await.unwrap();
        tx.batch_execute(
            "SET LOCAL deadlock_timeout = '10s'; SELECT 1 FROM issues WHERE id = 2 FOR UPDATE",
        )
        .await
        .unwrap();
        let writer = {
            let s = s.clone();
            tokio::spawn(async move { s.ingest(job(vec![ev(3, 0, now), ev(4, 1, now)])).await })
        };
        while lock_waiters(&s).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Waits until the writer's transaction is rolled back (PostgreSQL checks for
        // deadlocks after `deadlock_timeout`, 1 s).
        let waited = Instant::now();
        tx.batch_execute("SELECT 1 FROM issues WHERE id = 1 FOR UPDATE")
            .await
            .expect("the writer, not this session, is the deadlock's victim");
        assert!(
            waited.elapsed() >= Duration::from_millis(500),
            "the writer held issue 1"
        );
        tx.commit().await.unwrap();
        writer
            .await
            .unwrap()
            .expect("the deadlock is not the client's problem");
        assert_eq!(
            i64_of(
                &s,
                "SELECT count(*) FROM issues WHERE count = 2 AND status = 'unresolved' AND is_regression"
            )
            .await,
            2
        );
        assert_eq!(s.event_copies().await.unwrap().len(), 4);
        s.close().await;
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable_and_the_writer_recovers() {
        let url = testing::fresh_database().await;
        let s = node(&url, Retention::default(), 64).await;
        add_project(&s).await;
        let now = now_ms();
        s.ingest(job(vec![ev(1, 0, now)])).await.unwrap();
        let db = url.rsplit('/').next().unwrap().to_owned();
        let (admin, conn) = tokio_postgres::connect(&testing::server_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
            ))
            .await
            .unwrap();
        let e = s.ingest(job(vec![ev(2, 0, now)])).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(e.is_busy());
        admin
            .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
            .await
            .unwrap();
        // The client's retry goes through on a new connection.
        s.ingest(job(vec![ev(2, 0, now)])).await.unwrap();
        assert_eq!(s.stats(1).await.unwrap().unwrap().events, 2);
        s.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_new_issue_alert_when_nodes_race_and_regressions_alert() {
        let url = testing::fresh_database().await;
        let alerts = Arc::new(Alerts::new(AlertConfig::default(), "http://x".into()));
        let open = || {
            PgStore::open(
                &url,
                64,
                Retention::default(),
                Arc::new(Metrics::default()),
                Some(alerts.clone()),
            )
        };
        let a = Arc::new(open().await.unwrap());
        add_project(&a).await;
        let b = Arc::new(open().await.unwrap());
        let channel = crate::alerts::rules::Channel::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret: None,
        };
        let c = a.conn().await.unwrap();
        for trigger in ["new_issue", "regression"] {
            c.execute(
                "INSERT INTO alert_rules (project_id, name, trigger_kind, count, minutes, filter, interval_minutes, channel, enabled, created)
                 VALUES (1, $1, $1, 0, 0, '{}', 0, $2, TRUE, 0)",
                &[&trigger, &channel.to_stored().to_string()],
            )
            .await
            .unwrap();
        }
        alerts.rules_changed();
        let now = now_ms();
        let mut tasks = Vec::new();
        for n in 0..8u64 {
            let s = if n % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                s.ingest(job(vec![ev(n + 1, 0, now)])).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let queued = |trigger: &'static str| {
            let c = &c;
            async move {
                c.query_one(
                    "SELECT count(*) FROM alert_deliveries WHERE trigger_kind = $1 AND status = 'queued'",
                    &[&trigger],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
            }
        };
        assert_eq!(queued("new_issue").await, 1);
        assert_eq!(queued("regression").await, 0);
        c.execute("UPDATE issues SET status = 'resolved'", &[])
            .await
            .unwrap();
        b.ingest(job(vec![ev(100, 0, now)])).await.unwrap();
        assert_eq!(queued("regression").await, 1);
        assert_eq!(
            i64_of(
                &a,
                "SELECT count(*) FROM issues WHERE status = 'unresolved' AND is_regression"
            )
            .await,
            1
        );
        a.close().await;
        b.close().await;
    }
}
