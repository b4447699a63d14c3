//! The writer thread: the only connection that writes, with group commit.
//!
//! Requests hand a job to a bounded queue with `try_send` (a full queue is a 503,
//! never a silent drop) and wait on a oneshot for the answer. The thread takes one job,
//! drains up to [`MAX_BATCH_JOBS`] more that are already waiting, runs them all in one
//! transaction, commits, and only then answers each of them. Under load one commit (one
//! append to the WAL; `synchronous = NORMAL` syncs at checkpoints) covers many requests.
//! The SQL of a transaction is in `store/apply.rs`.
//!
//! # Bounds
//!
//! - Samples: at most `max_events_per_issue` full events per issue (the first one and
//!   the newest ones); counts stay exact because they live on the issue and its hourly
//!   buckets, not in the samples. Events older than `retention_days` are deleted.
//! - Idempotency: an event id is remembered (in `event_ids`) for [`DEDUP_WINDOW_MS`]
//!   (24 h) or the newest [`Retention::dedup_max_ids`] (default [`DEDUP_MAX_IDS`],
//!   1,000,000) events, whichever is shorter; a retry inside that window is answered 200
//!   and not counted again. The oldest ids go first, pruned every minute and whenever a
//!   tenth of the cap has been added since, so the table holds at most 1.1 × the cap plus
//!   one batch. A retry of an event whose sample is still stored is recognised for as long
//!   as the sample is kept.
//! - The WAL: checkpointed every ~64 MiB; after a second without writes a WAL past
//!   [`WAL_IDLE_LIMIT`] is checkpointed and truncated to zero, and `journal_size_limit`
//!   cuts it back to 64 MiB whenever a checkpoint resets it under load.
//! - Tags: at most [`MAX_TAG_VALUES_PER_ISSUE`] distinct values per issue and key and
//!   [`MAX_TAG_VALUES_PER_PROJECT`] per project and key; later values count as `(other)`.
//! - Tag-value counts lag their events by up to [`TAG_DELAY`] under load; a crash can
//!   lose that last second of tag counts (never events or issue counts).
//! - Aggregate counts whose event never arrives are dropped after 24 h; applied count ids
//!   are remembered for 7 days.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction};
use tokio::sync::oneshot;

use super::alerts::AlertHook;
use super::apply::{Batch, SampleIds, TagBacklog, apply_ingest, flush, write_tags_of};
use crate::metrics::Metrics;
use crate::store::{
    DEDUP_WINDOW_MS, IngestJob, MAX_BATCH_EVENTS, MAX_BATCH_JOBS, Retention, StoreError,
    WAL_IDLE_LIMIT,
};
use crate::time::{HOUR_MS, hour_of, now_ms};

/// What `journal_size_limit` trims the WAL back to when a checkpoint resets it.
const WAL_LIMIT: i64 = 64 * 1024 * 1024;

type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;
type Exec = Box<dyn FnOnce(&Transaction<'_>) -> Deliver + Send>;

enum Job {
    Ingest(IngestJob, oneshot::Sender<Result<(), StoreError>>),
    Exec(Exec),
    Shutdown,
}

/// A handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Starts the writer thread on `conn` with a queue of `capacity` jobs.
    pub fn start(
        conn: Connection,
        capacity: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Writer, JoinHandle<()>)> {
        Writer::start_with_alerts(conn, capacity, retention, metrics, None)
    }

    /// [`Writer::start`], deciding alerts in each ingest transaction (`store/alerts.rs`).
    pub fn start_with_alerts(
        conn: Connection,
        capacity: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
        alerts: Option<Arc<crate::alerts::Alerts>>,
    ) -> std::io::Result<(Writer, JoinHandle<()>)> {
        let (tx, rx) = sync_channel(capacity);
        let m = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("errscope-writer".into())
            .spawn(move || {
                let mut w = WriterThread::new(conn, retention, m);
                w.alerts = AlertHook::new(alerts);
                w.run(rx)
            })?;
        Ok((Writer { tx, metrics }, handle))
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                Err(match e {
                    TrySendError::Full(_) => StoreError::QueueFull,
                    TrySendError::Disconnected(_) => StoreError::WriterGone,
                })
            }
        }
    }

    /// Stores an ingestion job; returns once it is committed.
    pub async fn ingest(&self, job: IngestJob) -> Result<(), StoreError> {
        let (ack, rx) = oneshot::channel();
        self.send(Job::Ingest(job, ack))?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `f` inside the writer's next transaction (in a savepoint, rolled back if `f`
    /// fails); returns its result once the transaction is committed.
    pub async fn exec<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (ack, rx) = oneshot::channel::<Result<T, StoreError>>();
        self.send(Job::Exec(Box::new(move |tx| {
            let r = (|| {
                tx.execute_batch("SAVEPOINT exec")?;
                let r = f(tx);
                let end = if r.is_ok() {
                    "RELEASE exec"
                } else {
                    "ROLLBACK TO exec; RELEASE exec"
                };
                tx.execute_batch(end)?;
                r
            })();
            Box::new(move |committed: Result<(), String>| {
                let _ = ack.send(match committed {
                    Ok(()) => r,
                    Err(e) => Err(StoreError::Task(e)),
                });
            })
        })))?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Asks the thread to finish the jobs queued so far and stop.
    pub fn shutdown(&self) {
        // A blocking send: shutdown must not be lost to a full queue.
        let _ = self.tx.send(Job::Shutdown);
    }
}

struct WriterThread {
    conn: Connection,
    retention: Retention,
    metrics: Arc<Metrics>,
    issue_ids: HashMap<(i64, String), i64>,
    samples: SampleIds,
    tags: TagBacklog,
    pending_possible: bool,
    last_prune: Instant,
    last_hourly_prune: Instant,
    /// Events stored since the dedup ids were last pruned.
    ids_since_prune: i64,
    alerts: AlertHook,
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl WriterThread {
    fn new(conn: Connection, retention: Retention, metrics: Arc<Metrics>) -> Self {
        let pending_possible = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM pending_counts)", [], |r| {
                r.get(0)
            })
            .unwrap_or(true);
        let long_ago = Instant::now()
            .checked_sub(PRUNE_EVERY * 2)
            .unwrap_or_else(Instant::now);
        WriterThread {
            conn,
            retention,
            metrics,
            issue_ids: HashMap::new(),
            samples: SampleIds::default(),
            tags: TagBacklog::new(),
            pending_possible,
            last_prune: long_ago,
            last_hourly_prune: long_ago,
            ids_since_prune: 0,
            alerts: AlertHook::new(None),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        // Checkpoint every 16,000 pages (~64 MiB of WAL with 4 KiB pages) instead of 1,000
        // (4 MiB): hot pages (issue rows, index roots) are copied back once per checkpoint,
        // not once per 1000 pages written. The WAL file keeps that size between checkpoints.
        let _ = self.conn.pragma_update(None, "wal_autocheckpoint", 16_000);
        let _ = self
            .conn
            .pragma_update(None, "journal_size_limit", WAL_LIMIT);
        self.prune();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if !self.tags.is_empty() {
                        self.process(Vec::new());
                    }
                    self.maybe_prune();
                    self.truncate_idle_wal();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs = Vec::new();
            let mut shutdown = false;
            let mut events = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Shutdown => shutdown = true,
                    Job::Ingest(ref j, _) => {
                        events += j.events.len();
                        jobs.push(job);
                    }
                    job => jobs.push(job),
                }
                if !shutdown && jobs.len() < MAX_BATCH_JOBS && events < MAX_BATCH_EVENTS {
                    next = rx.try_recv().ok();
                }
            }
            let n = jobs.len() as i64 + i64::from(shutdown);
            self.metrics.queue_depth.fetch_sub(n, Relaxed);
            // A panic fails this batch (its requests get an error), not the writer.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process(jobs)));
            if outcome.is_err() {
                tracing::error!("the writer panicked on a batch; it was rolled back");
                self.issue_ids.clear();
                self.samples.clear();
            }
            if shutdown {
                // Everything queued before the shutdown request has been committed.
                break;
            }
            self.maybe_prune();
        }
        if !self.tags.is_empty() {
            self.process(Vec::new());
        }
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        tracing::debug!("writer stopped");
    }

    fn process(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        // Light load (one or two requests per batch): tag counts go out with their events.
        let light = jobs.len() <= 2;
        let mut acks = Vec::new();
        let mut execs = Vec::new();
        let mut alerts_queued = 0;
        let result = (|| -> Result<(Batch, bool), StoreError> {
            let tx = self.conn.transaction()?;
            let mut batch = Batch::default();
            let mut ingests = Vec::new();
            for job in jobs {
                match job {
                    Job::Ingest(job, ack) => {
                        apply_ingest(
                            &tx,
                            &mut batch,
                            &mut self.issue_ids,
                            &mut self.pending_possible,
                            &job,
                            ingests.len(),
                        )?;
                        acks.push(ack);
                        ingests.push(job);
                    }
                    Job::Exec(f) => execs.push(f(&tx)),
                    Job::Shutdown => {}
                }
            }
            // Before `flush`: the hook reads each issue as it was before this batch.
            if !ingests.is_empty() && self.alerts.active(&tx)? {
                alerts_queued = self.alerts.decide(&tx, batch.touched(), &ingests)?;
            }
            flush(&tx, &batch, &self.retention, &mut self.samples)?;
            let write_tags = light || self.tags.due();
            if write_tags {
                write_tags_of(&tx, &self.tags.issue, &self.tags.project)?;
                write_tags_of(&tx, &batch.issue_tags, &batch.project_tags)?;
            }
            tx.commit()?;
            Ok((batch, write_tags))
        })();
        match result {
            Ok((batch, wrote_tags)) => {
                if wrote_tags {
                    self.tags.clear();
                } else {
                    self.tags
                        .absorb(batch.issue_tags.clone(), batch.project_tags.clone());
                }
                self.metrics.commit(started.elapsed());
                self.metrics
                    .events_accepted
                    .fetch_add(batch.events_stored, Relaxed);
                self.ids_since_prune += batch.events_stored as i64;
                self.metrics
                    .events_duplicate
                    .fetch_add(batch.duplicates, Relaxed);
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
                for deliver in execs {
                    deliver(Ok(()));
                }
                if alerts_queued > 0 {
                    self.alerts.wake();
                }
            }
            Err(e) => {
                tracing::error!("writer transaction failed: {e}");
                // Cached issue ids may refer to rows that were rolled back.
                self.issue_ids.clear();
                self.samples.clear();
                self.alerts.rolled_back();
                for ack in acks {
                    let _ = ack.send(Err(StoreError::Task(e.to_string())));
                }
                for deliver in execs {
                    deliver(Err(e.to_string()));
                }
            }
        }
    }

    fn maybe_prune(&mut self) {
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.prune();
        } else if self.ids_since_prune >= (self.retention.dedup_max_ids / 10).max(1)
            && let Err(e) = self.prune_dedup_cap()
        {
            tracing::error!("pruning dedup ids failed: {e}");
        }
    }

    /// Deletes the oldest dedup ids past the cap.
    fn prune_dedup_cap(&mut self) -> Result<(), StoreError> {
        self.ids_since_prune = 0;
        self.conn.execute(
            "DELETE FROM event_ids WHERE rowid <= (SELECT max(rowid) FROM event_ids) - ?1",
            [self.retention.dedup_max_ids],
        )?;
        Ok(())
    }

    /// Checkpoints and truncates a WAL past [`WAL_IDLE_LIMIT`]; a reader that holds it
    /// back only delays this to the next idle second.
    fn truncate_idle_wal(&mut self) {
        let Some(path) = self.conn.path().map(|p| format!("{p}-wal")) else {
            return;
        };
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        if size <= WAL_IDLE_LIMIT {
            return;
        }
        let _ = self.conn.busy_timeout(Duration::from_millis(100));
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::debug!("WAL truncation deferred: {e}");
        }
        let _ = self.conn.busy_timeout(Duration::from_secs(5));
    }

    /// Deletes expired samples, dedup ids and counts, each in short transactions.
    fn prune(&mut self) {
        self.last_prune = Instant::now();
        self.samples.clear();
        let now = now_ms();
        let cutoff = now - self.retention.retention_days * 24 * HOUR_MS;
        let hourly = self.last_hourly_prune.elapsed() >= Duration::from_secs(3600);
        let r = (|| -> Result<(), StoreError> {
            // Rows arrive in id order, so the oldest samples have the lowest ids: delete
            // from the front until a young one shows up (no index on `received` needed).
            loop {
                let n = self.conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT 5000) AND received < ?1",
                    [cutoff],
                )?;
                if n < 5000 {
                    break;
                }
            }
            self.prune_dedup_cap()?;
            let first_young: Option<i64> = self
                .conn
                .query_row(
                    "SELECT rowid FROM event_ids WHERE received >= ?1 ORDER BY rowid LIMIT 1",
                    [now - DEDUP_WINDOW_MS],
                    |r| r.get(0),
                )
                .optional()?;
            match first_young {
                Some(rowid) => self
                    .conn
                    .execute("DELETE FROM event_ids WHERE rowid < ?1", [rowid])?,
                None => self.conn.execute(
                    "DELETE FROM event_ids WHERE received < ?1",
                    [now - DEDUP_WINDOW_MS],
                )?,
            };
            self.conn.execute(
                "DELETE FROM applied_counts WHERE received < ?1",
                [now - 7 * 24 * HOUR_MS],
            )?;
            self.conn.execute(
                "DELETE FROM pending_counts WHERE received < ?1",
                [now - DEDUP_WINDOW_MS],
            )?;
            self.pending_possible =
                self.conn
                    .query_row("SELECT EXISTS (SELECT 1 FROM pending_counts)", [], |r| {
                        r.get(0)
                    })?;
            if hourly {
                let keep_hours = (self.retention.retention_days * 24).max(14 * 24 + 1);
                self.conn.execute(
                    "DELETE FROM issue_hourly WHERE hour < ?1",
                    [hour_of(now) - keep_hours],
                )?;
            }
            Ok(())
        })();
        if hourly {
            self.last_hourly_prune = Instant::now();
        }
        if let Err(e) = r {
            tracing::error!("pruning failed: {e}");
        }
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::ingest::prepare_event;
    use crate::store::sqlite::{queries, test_db};
    use crate::store::{MAX_TAG_VALUES_PER_ISSUE, PreparedEvent};

    fn writer(
        db: test_db::TestDb,
        retention: Retention,
        capacity: usize,
    ) -> (Writer, JoinHandle<()>, tempfile::TempDir) {
        let test_db::TestDb { dir, conn } = db;
        crate::store::sqlite::create_project(&conn, "default").unwrap();
        let (w, h) =
            Writer::start(conn, capacity, retention, Arc::new(Metrics::default())).unwrap();
        (w, h, dir)
    }

    fn ev(n: u64, received: i64) -> PreparedEvent {
        let json = format!(
            r#"{{"event_id":"{n:032x}","message":"same message","timestamp":{}}}"#,
            received / 1000
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

    #[tokio::test]
    async fn keeps_the_first_and_newest_samples_and_exact_counts() {
        let (w, h, dir) = writer(
            test_db::fresh(),
            Retention {
                max_events_per_issue: 5,
                ..Retention::default()
            },
            64,
        );
        let now = now_ms();
        for n in 1..=20 {
            w.ingest(job(vec![ev(n, now)])).await.unwrap();
        }
        w.shutdown();
        h.join().unwrap();
        let conn =
            crate::store::sqlite::open_connection(&crate::store::sqlite::db_path(dir.path()), true)
                .unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT event_id FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<String> = [1, 17, 18, 19, 20]
            .iter()
            .map(|n| format!("{n:032x}"))
            .collect();
        assert_eq!(ids, want);
        let issue = queries::issue(&conn, 1, now).unwrap().unwrap();
        assert_eq!(issue.count, 20);
        assert_eq!(*issue.hourly.last().unwrap(), 20);
        assert_eq!(queries::stats(&conn, 1).unwrap().unwrap().events, 20);
    }

    #[tokio::test]
    async fn prunes_old_samples_and_dedup_ids_on_start() {
        let db = test_db::fresh();
        let dir_path = db.dir.path().to_owned();
        let (w, h, _dir) = writer(
            db,
            Retention {
                max_events_per_issue: 100,
                ..Retention::default()
            },
            64,
        );
        let now = now_ms();
        let old = now - 31 * 24 * HOUR_MS;
        w.ingest(job(vec![ev(1, old), ev(2, old), ev(3, now)]))
            .await
            .unwrap();
        w.shutdown();
        h.join().unwrap();
        // A restart prunes right away.
        let conn = crate::store::sqlite::open_and_migrate(&dir_path).unwrap();
        let (w, h) =
            Writer::start(conn, 8, Retention::default(), Arc::new(Metrics::default())).unwrap();
        w.exec(|_| Ok(())).await.unwrap();
        w.shutdown();
        h.join().unwrap();
        let conn =
            crate::store::sqlite::open_connection(&crate::store::sqlite::db_path(&dir_path), true)
                .unwrap();
        let left: Vec<String> = conn
            .prepare("SELECT event_id FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![format!("{:032x}", 3)]);
        let ids: i64 = conn
            .query_row("SELECT count(*) FROM event_ids", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ids, 1, "dedup ids older than the window are dropped");
        // Counts stay exact after the samples are gone.
        assert_eq!(queries::issue(&conn, 1, now).unwrap().unwrap().count, 3);
    }

    #[tokio::test]
    async fn tag_values_are_capped_per_issue_and_project() {
        let (w, h, dir) = writer(test_db::fresh(), Retention::default(), 64);
        let now = now_ms();
        let events: Vec<PreparedEvent> = (0..MAX_TAG_VALUES_PER_ISSUE + 20)
            .map(|n| {
                let json = format!(
                    r#"{{"event_id":"{n:032x}","message":"m","tags":{{"request_id":"r{n}"}}}}"#
                );
                prepare_event(json.as_bytes(), now, None).unwrap()
            })
            .collect();
        w.ingest(job(events)).await.unwrap();
        w.shutdown();
        h.join().unwrap();
        let conn =
            crate::store::sqlite::open_connection(&crate::store::sqlite::db_path(dir.path()), true)
                .unwrap();
        let distinct: i64 = conn
            .query_row(
                "SELECT count(*) FROM issue_tags WHERE key = 'request_id'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(distinct, MAX_TAG_VALUES_PER_ISSUE + 1);
        let other: i64 = conn
            .query_row(
                "SELECT count FROM issue_tags WHERE key = 'request_id' AND value = '(other)'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(other, 20);
        let tags = queries::issue_tags(&conn, 1).unwrap();
        assert_eq!(tags["request_id"].len(), 10, "top 10 per key");
        assert_eq!(
            tags["request_id"][0],
            crate::store::TagValue {
                value: "(other)".into(),
                count: 20
            }
        );
    }

    #[tokio::test]
    async fn dedup_ids_stay_under_their_cap_and_retries_inside_it_are_recognised() {
        let cap = 100;
        let (w, h, dir) = writer(
            test_db::fresh(),
            Retention {
                max_events_per_issue: 10,
                dedup_max_ids: cap,
                ..Retention::default()
            },
            64,
        );
        let now = now_ms();
        let path = crate::store::sqlite::db_path(dir.path());
        let mut peak = 0;
        for j in 0..50u64 {
            w.ingest(job((0..20).map(|i| ev(j * 20 + i + 1, now)).collect()))
                .await
                .unwrap();
            let conn = crate::store::sqlite::open_connection(&path, true).unwrap();
            let n: i64 = conn
                .query_row("SELECT count(*) FROM event_ids", [], |r| r.get(0))
                .unwrap();
            peak = peak.max(n);
        }
        // The cap, a tenth of it added before the next prune, and one batch.
        assert!(peak <= cap + cap / 10 + 20, "peak {peak}");
        // A retry of one of the newest events is still recognised.
        w.ingest(job(vec![ev(1000, now)])).await.unwrap();
        w.shutdown();
        h.join().unwrap();
        let conn = crate::store::sqlite::open_connection(&path, true).unwrap();
        assert_eq!(queries::stats(&conn, 1).unwrap().unwrap().events, 1000);
    }

    #[tokio::test]
    async fn an_idle_writer_truncates_a_grown_wal() {
        let (w, h, dir) = writer(test_db::fresh(), Retention::default(), 64);
        let now = now_ms();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| -> String {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'a' + (seed % 26) as u8)
                })
                .collect()
        };
        // About 8 MiB of incompressible events.
        for n in 0..160u64 {
            let json = format!(
                r#"{{"event_id":"{:032x}","message":"m","extra":{{"x":"{}"}}}}"#,
                n + 1,
                noise(50_000)
            );
            w.ingest(job(vec![
                prepare_event(json.as_bytes(), now, None).unwrap(),
            ]))
            .await
            .unwrap();
        }
        let wal = dir.path().join("errscope.sqlite3-wal");
        let grown = std::fs::metadata(&wal).unwrap().len();
        assert!(grown > WAL_IDLE_LIMIT, "the WAL grew to {grown}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert!(after <= WAL_IDLE_LIMIT, "WAL {grown} -> {after} bytes");
        w.shutdown();
        h.join().unwrap();
    }

    /// Holds the writer thread in a job until the returned sender is sent to.
    async fn occupy(
        w: &Writer,
    ) -> (
        tokio::task::JoinHandle<Result<(), StoreError>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let w = w.clone();
            tokio::spawn(async move {
                w.exec(move |_| {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok(())
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        (busy, release_tx)
    }

    #[tokio::test]
    async fn tag_counts_of_busy_batches_follow_within_a_second() {
        let (w, h, dir) = writer(test_db::fresh(), Retention::default(), 64);
        let (busy, release_tx) = occupy(&w).await;
        // Three requests queue up behind the busy writer and go out as one batch.
        let jobs: Vec<_> = (1..=3)
            .map(|n| {
                let w = w.clone();
                tokio::spawn(async move { w.ingest(job(vec![ev(n, now_ms())])).await })
            })
            .collect();
        while w.metrics.queue_depth.load(Relaxed) < 3 {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        let conn =
            crate::store::sqlite::open_connection(&crate::store::sqlite::db_path(dir.path()), true)
                .unwrap();
        let level_count = |c: &Connection| -> i64 {
            c.query_row(
                "SELECT coalesce(sum(count), 0) FROM issue_tags WHERE key = 'level'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        // The events and the issue count are committed; the tag counts come later.
        assert_eq!(
            queries::issue(&conn, 1, now_ms()).unwrap().unwrap().count,
            3
        );
        assert_eq!(level_count(&conn), 0);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(level_count(&conn), 3);
        w.shutdown();
        h.join().unwrap();
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let (w, h, _dir) = writer(test_db::fresh(), Retention::default(), 8);
        let r = w.exec::<(), _>(|_| panic!("boom")).await;
        assert!(matches!(r, Err(StoreError::WriterGone)));
        w.ingest(job(vec![ev(1, now_ms())])).await.unwrap();
        w.shutdown();
        h.join().unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_not_dropped() {
        let (w, h, _dir) = writer(test_db::fresh(), Retention::default(), 1);
        // Occupy the writer thread.
        let (busy, release_tx) = occupy(&w).await;
        // One job fits in the queue, the next is refused.
        let queued = {
            let w = w.clone();
            tokio::spawn(async move { w.ingest(job(vec![ev(1, now_ms())])).await })
        };
        while w.metrics.queue_depth.load(Relaxed) < 1 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            w.ingest(job(vec![ev(2, now_ms())])).await,
            Err(StoreError::QueueFull)
        ));
        release_tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        w.shutdown();
        h.join().unwrap();
    }
}
