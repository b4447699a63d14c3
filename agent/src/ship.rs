//! The shipper: the `errscope-shipper` thread with its own current-thread tokio runtime
//! and connection to the outbox. It wakes when the writer commits (or every
//! [`IDLE_POLL`]), reads events in rowid order, sends them as Sentry envelopes and deletes
//! them only after a 2xx.
//!
//! - An errscope collector (it answers with `X-Errscope-Collector`) gets up to
//!   [`MAX_BATCH`] events per envelope, [`PIPELINE`] envelopes in flight; other servers
//!   one event per envelope, [`SENTRY_CONCURRENCY`] in flight. The first envelope of a
//!   run holds one event.
//! - Storm counts go after the events they refer to (once those left the outbox), the
//!   discard counters as a `client_report`; both are deleted or lowered after a 2xx.
//! - Network failures, timeouts, 5xx, 401/403/404/408: everything stays, exponential
//!   backoff with full jitter up to [`MAX_BACKOFF`] (at least the server's
//!   `Retry-After`). 429: nothing is sent until `X-Sentry-Rate-Limits`/`Retry-After`
//!   (60 s by default) has passed.
//! - Another 4xx for a batch: it is split in halves and each half resent, down to the one
//!   event the server refuses, which is deleted and counted as a `send_error` discard
//!   (shipped as a client report), with one stderr line naming it.
//! - One stderr line when delivery starts failing and one when it recovers.
//!
//! The host's capture path never waits for any of this: the shipper only reads the
//! file the writer commits to.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::envelope::{self, Answer};
use crate::options::Dsn;
use crate::shared::{Counters, Shared};
use crate::store::{Bounds, Pending, SqliteStore};
use crate::warn;

/// Events per envelope to an errscope collector.
pub(crate) const MAX_BATCH: usize = 1000;
/// Bytes of event JSON per envelope (the collector takes 100 MiB decompressed).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Envelopes in flight to an errscope collector.
const PIPELINE: usize = 3;
/// Single-event envelopes in flight to other Sentry-compatible servers.
const SENTRY_CONCURRENCY: usize = 4;
/// Storm counts per envelope.
const MAX_COUNTS: usize = 1000;
/// Session updates per envelope (Sentry takes up to 100 items in one).
const MAX_SESSIONS: usize = 50;
/// The shipper looks at the outbox this often even without being woken (events written
/// by another process sharing the file, or by the panic hook's own connection).
const IDLE_POLL: Duration = Duration::from_secs(2);
/// Backoff after the first failure (the range of the full jitter), doubling per failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Backoff cap.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long to wait for a server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The discard reason for events a server refused for good.
const SEND_ERROR: &str = "send_error";

/// What the host's side holds: commands and a way to stop.
pub(crate) struct Handle {
    cmds: UnboundedSender<Cmd>,
    stop: Arc<Notify>,
}

enum Cmd {
    /// Answer `true` once nothing is left in the outbox; cuts a backoff short.
    Flush(Sender<bool>),
    /// Stop and answer.
    Stop(Sender<()>),
}

impl Handle {
    /// Waits until the outbox is empty (everything delivered or dropped with a reason),
    /// at most until `deadline`. Returns whether it emptied.
    pub(crate) fn flush(&self, deadline: Instant) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.cmds.send(Cmd::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_deadline(deadline).unwrap_or(false)
    }

    /// Stops the shipper, waiting at most until `deadline`: a request in flight is
    /// abandoned and its events stay in the outbox.
    pub(crate) fn stop(&self, deadline: Instant) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.stop.notify_one();
        if self.cmds.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.recv_deadline(deadline);
        }
    }
}

/// Starts the shipper thread for `dsn`; `None` (with a stderr line) if it cannot start.
pub(crate) fn start(shared: Arc<Shared>, dsn: &Dsn) -> Option<Handle> {
    let endpoint = endpoint(dsn);
    let auth = format!(
        "Sentry sentry_version=7, sentry_key={}, sentry_client=errscope/{}",
        dsn.public_key,
        env!("CARGO_PKG_VERSION")
    );
    let (cmds, mut rx) = unbounded_channel();
    let stop = Arc::new(Notify::new());
    let stopping = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("errscope-shipper".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn(format_args!(
                        "cannot start the shipper's runtime: {e}; events stay in the outbox"
                    ));
                    return;
                }
            };
            // A bug here must not take the host down: say so, wait, start over with
            // fresh state (nothing is lost, the outbox is the state).
            loop {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    rt.block_on(run(&shared, &endpoint, &auth, &mut rx, &stopping))
                }));
                match run {
                    Ok(()) => return,
                    Err(_) => {
                        warn(format_args!("internal error in the shipper; restarting it"));
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Some(Handle { cmds, stop }),
        Err(e) => {
            warn(format_args!(
                "cannot start the shipper thread: {e}; events stay in the outbox"
            ));
            None
        }
    }
}

/// `{scheme}://{host}[:port]/[{path}/]api/{project}/envelope/`
fn endpoint(dsn: &Dsn) -> String {
    let port = dsn.port.map(|p| format!(":{p}")).unwrap_or_default();
    let prefix = if dsn.path.is_empty() {
        String::new()
    } else {
        format!("{}/", dsn.path)
    };
    format!(
        "{}://{}{port}/{prefix}api/{}/envelope/",
        dsn.scheme, dsn.host, dsn.project_id
    )
}

/// Why a round stopped early.
#[derive(Debug)]
enum Failure {
    /// Back off (at least `at_least`) and retry.
    Retry {
        reason: String,
        at_least: Option<Duration>,
    },
    /// The server asked for a pause.
    RateLimited(Duration),
}

/// One failure-or-recovery state, so stderr gets one line per change.
struct Health {
    failing: bool,
    failures: u64,
}

/// The HTTP side, cheap to clone into concurrent requests.
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
    endpoint: Arc<str>,
    auth: Arc<str>,
}

impl Transport {
    async fn post(&self, body: Vec<u8>) -> Answer {
        let body = match envelope::gzip(&body) {
            Ok(b) => b,
            Err(e) => {
                return Answer::Retry {
                    reason: format!("cannot compress: {e}"),
                    at_least: None,
                };
            }
        };
        let sent = self
            .http
            .post(&*self.endpoint)
            .header("content-type", "application/x-sentry-envelope")
            .header("content-encoding", "gzip")
            .header("x-sentry-auth", &*self.auth)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Answer::Retry {
                    reason: describe(&e),
                    at_least: None,
                };
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // The body of a 2xx is not needed; reading it keeps the connection reusable.
        match response.bytes().await {
            Ok(body) => envelope::classify(status, &headers, &body),
            Err(e) if (200..300).contains(&status) => {
                // The server committed before it answered; the body is a courtesy.
                let _ = e;
                envelope::classify(status, &headers, b"")
            }
            Err(e) => Answer::Retry {
                reason: describe(&e),
                at_least: None,
            },
        }
    }

    /// Sends `events` (split into halves on a rejection, down to the one event refused)
    /// and reports what happened to each.
    async fn deliver(self, events: Vec<Pending>) -> Delivery {
        let mut out = Delivery::default();
        let mut stack = vec![events];
        while let Some(part) = stack.pop() {
            match self.post(envelope::build(&part, &[], &[])).await {
                Answer::Accepted { collector, pause } => {
                    out.collector |= collector;
                    out.delivered.extend(part.iter().map(|e| e.rowid));
                    if let Some(pause) = pause {
                        out.failure = Some(Failure::RateLimited(pause));
                        break;
                    }
                }
                Answer::Rejected { status, detail } => {
                    out.rejections += 1;
                    if let [one] = part.as_slice() {
                        out.rejected
                            .push((one.rowid, one.event_id.clone(), status, detail));
                    } else {
                        let mut left = part;
                        let right = left.split_off(left.len() / 2);
                        stack.push(right);
                        stack.push(left);
                    }
                }
                Answer::RateLimited(wait) => {
                    out.failure = Some(Failure::RateLimited(wait));
                    break;
                }
                Answer::Retry { reason, at_least } => {
                    out.failure = Some(Failure::Retry { reason, at_least });
                    break;
                }
            }
        }
        out
    }
}

/// A reqwest error in words, with its causes (`connection reset by peer`, ...).
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(err);
    let mut last = String::new();
    while let Some(cause) = source {
        let s = cause.to_string();
        if s != last {
            text.push_str(": ");
            text.push_str(&s);
            last = s;
        }
        source = cause.source();
    }
    text
}

/// What happened to one batch.
#[derive(Debug, Default)]
struct Delivery {
    delivered: Vec<i64>,
    /// (rowid, event_id, status, detail) of events refused for good.
    rejected: Vec<(i64, String, u16, String)>,
    rejections: u64,
    collector: bool,
    failure: Option<Failure>,
}

struct Shipper<'a> {
    shared: &'a Shared,
    transport: Transport,
    store: Option<SqliteStore>,
    /// The server accepts multi-event envelopes.
    batching: bool,
    health: Health,
    backoff_step: u32,
}

async fn run(
    shared: &Shared,
    endpoint: &str,
    auth: &str,
    cmds: &mut UnboundedReceiver<Cmd>,
    stop: &Notify,
) {
    let counters = &shared.counters;
    let http = reqwest::Client::builder()
        .user_agent(concat!("errscope/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(shared.options.send_timeout)
        // Below common server idle timeouts; a connection the server closed anyway
        // fails the request, which is retried.
        .pool_idle_timeout(Duration::from_secs(20))
        .build();
    let http = match http {
        Ok(h) => h,
        Err(e) => {
            warn(format_args!(
                "cannot build the HTTP client: {e}; events stay in the outbox"
            ));
            return;
        }
    };
    let mut shipper = Shipper {
        shared,
        transport: Transport {
            http,
            endpoint: Arc::from(endpoint),
            auth: Arc::from(auth),
        },
        store: None,
        batching: false,
        health: Health {
            failing: false,
            failures: 0,
        },
        backoff_step: 0,
    };
    let mut flushes: Vec<Sender<bool>> = Vec::new();
    // Nothing is sent before these instants.
    let mut backoff_until: Option<Instant> = None;
    let mut limited_until: Option<Instant> = None;
    let mut last_attempt = Instant::now();
    loop {
        let now = Instant::now();
        let paused =
            backoff_until.is_some_and(|t| t > now) || limited_until.is_some_and(|t| t > now);
        let mut more = false;
        if !paused {
            last_attempt = now;
            let round = tokio::select! {
                biased;
                () = stop.notified() => return,
                r = shipper.round() => r,
            };
            match round {
                Ok(progress) => {
                    backoff_until = None;
                    shipper.recovered();
                    more = progress;
                }
                Err(Failure::RateLimited(wait)) => {
                    limited_until = Some(Instant::now() + wait);
                    shipper.failed(&format!("rate limited for {} s", wait.as_secs()), false);
                }
                Err(Failure::Retry { reason, at_least }) => {
                    let wait = shipper.next_backoff().max(at_least.unwrap_or_default());
                    backoff_until = Some(Instant::now() + wait);
                    shipper.failed(&reason, true);
                }
            }
        }
        // Also keeps `stats().outbox_events` current.
        let depth = shipper.depth();
        if !flushes.is_empty() && depth.is_some_and(|d| d.is_empty()) {
            for f in flushes.drain(..) {
                let _ = f.try_send(true);
            }
        }
        // Waiters whose flush timed out are not told apart from live ones: keep a few.
        if flushes.len() > 64 {
            let extra = flushes.len() - 64;
            for f in flushes.drain(..extra) {
                let _ = f.try_send(false);
            }
        }
        if more {
            // Keep going while there is work, but let commands in between rounds.
            match cmds.try_recv() {
                Ok(Cmd::Stop(ack)) => {
                    let _ = ack.try_send(());
                    return;
                }
                Ok(Cmd::Flush(ack)) => flushes.push(ack),
                Err(_) => {}
            }
            continue;
        }
        let wake_at = [backoff_until, limited_until]
            .into_iter()
            .flatten()
            .filter(|t| *t > Instant::now())
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_POLL);
        tokio::select! {
            biased;
            () = stop.notified() => return,
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Stop(ack)) => {
                    let _ = ack.try_send(());
                    return;
                }
                Some(Cmd::Flush(ack)) => {
                    flushes.push(ack);
                    // A flush tries soon rather than after the whole backoff (at most
                    // once a second: a host flushing in a loop must not hammer a server
                    // that is down); a rate limit holds.
                    let soon = last_attempt + Duration::from_secs(1);
                    backoff_until = backoff_until.map(|t| t.min(soon));
                }
                None => return,
            },
            () = counters.outbox_changed.notified() => {}
            () = tokio::time::sleep_until(wake_at.into()) => {}
        }
    }
}

impl Shipper<'_> {
    fn store(&mut self) -> Option<&mut SqliteStore> {
        if self.store.is_none() {
            let options = &self.shared.options;
            let path = self.shared.options.database_path();
            let bounds = Bounds {
                max_events: options.max_events,
                max_bytes: options.max_bytes,
            };
            match SqliteStore::open(&path, bounds, options.sync_full) {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    self.failed(&format!("cannot open the outbox: {e}"), true);
                    return None;
                }
            }
        }
        self.store.as_mut()
    }

    fn depth(&mut self) -> Option<crate::store::Depth> {
        let depth = self.store()?.depth().ok()?;
        self.shared
            .counters
            .outbox_events
            .store(depth.events, Ordering::Relaxed);
        Some(depth)
    }

    /// One round: up to a pipeline's worth of event batches, then counts and discards.
    /// `Ok(true)` when there may be more to send right away.
    async fn round(&mut self) -> Result<bool, Failure> {
        let batching = self.batching;
        let (per_batch, in_flight) = if batching {
            (MAX_BATCH, PIPELINE)
        } else {
            (1, SENTRY_CONCURRENCY)
        };
        // Until a server answered 2xx (and so said whether it is an errscope collector),
        // one envelope of one event.
        let in_flight = if batching || self.sent_any() {
            in_flight
        } else {
            1
        };
        let Some(store) = self.store() else {
            return Err(Failure::Retry {
                reason: "the outbox is not available".into(),
                at_least: None,
            });
        };
        let mut batches = Vec::new();
        let mut after = 0;
        for _ in 0..in_flight {
            let events = store
                .pending_events(after, per_batch, MAX_BATCH_BYTES)
                .map_err(store_failure)?;
            let Some(last) = events.last() else { break };
            after = last.rowid;
            batches.push(events);
        }
        let full =
            batches.len() == in_flight && batches.last().is_some_and(|b| b.len() == per_batch);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, batch) in batches.into_iter().enumerate() {
            let transport = self.transport.clone();
            tasks.spawn(async move { (i, transport.deliver(batch).await) });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok(r) = joined {
                results.push(r);
            }
        }
        results.sort_by_key(|(i, _)| *i);
        let mut failure = None;
        let mut progress = false;
        for (_, delivery) in results {
            progress |= self.apply(delivery.delivered, delivery.rejected, delivery.rejections)?;
            self.batching |= delivery.collector;
            if failure.is_none() {
                failure = delivery.failure;
            }
        }
        if progress {
            self.recovered();
        }
        if let Some(f) = failure {
            return Err(f);
        }
        self.ship_counts_and_discards().await?;
        Ok(full || (self.batching && !batching))
    }

    fn sent_any(&self) -> bool {
        self.shared.counters.sent.load(Ordering::Relaxed) > 0
    }

    /// Deletes what was delivered, drops what was refused; whether anything left.
    fn apply(
        &mut self,
        delivered: Vec<i64>,
        rejected: Vec<(i64, String, u16, String)>,
        rejections: u64,
    ) -> Result<bool, Failure> {
        let counters = &self.shared.counters;
        let Some(store) = self.store.as_mut() else {
            return Ok(false);
        };
        counters.retried.fetch_add(rejections, Ordering::Relaxed);
        let n = store.delete_events(&delivered).map_err(store_failure)?;
        counters
            .sent
            .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        let _ = n;
        for (rowid, event_id, status, detail) in &rejected {
            warn(format_args!(
                "the server refused event {event_id} with HTTP {status} ({}); dropped it, \
                 counted as a {SEND_ERROR} discard",
                detail.trim()
            ));
            store
                .drop_events(&[*rowid], SEND_ERROR)
                .map_err(store_failure)?;
            counters.dropped_send_error.fetch_add(1, Ordering::Relaxed);
        }
        Ok(!delivered.is_empty() || !rejected.is_empty())
    }

    /// Counts whose events are delivered, and the discard counters as a client report.
    async fn ship_counts_and_discards(&mut self) -> Result<(), Failure> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let counts = store.ready_counts(MAX_COUNTS).map_err(store_failure)?;
        let report = store.discards().map_err(store_failure)?;
        let sessions = store
            .pending_session_updates(MAX_SESSIONS)
            .map_err(store_failure)?;
        if counts.is_empty() && report.is_empty() && sessions.is_empty() {
            return Ok(());
        }
        let mut body = envelope::build(&[], &counts, &report);
        envelope::push_sessions(&mut body, &sessions);
        let answer = self.transport.post(body).await;
        let session_ids: Vec<i64> = sessions.iter().map(|(id, _)| *id).collect();
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        match answer {
            Answer::Accepted { collector, pause } => {
                self.batching |= collector;
                store.delete_counts(&counts, None).map_err(store_failure)?;
                store.subtract_discards(&report).map_err(store_failure)?;
                store
                    .delete_session_updates(&session_ids)
                    .map_err(store_failure)?;
                match pause {
                    Some(p) => Err(Failure::RateLimited(p)),
                    None => Ok(()),
                }
            }
            Answer::Rejected { status, detail } => {
                warn(format_args!(
                    "the server refused storm counts, discard counters and session updates \
                     with HTTP {status} ({}); dropped them",
                    detail.trim()
                ));
                store.subtract_discards(&report).map_err(store_failure)?;
                store
                    .delete_counts(&counts, Some(SEND_ERROR))
                    .map_err(store_failure)?;
                store
                    .delete_session_updates(&session_ids)
                    .map_err(store_failure)?;
                Ok(())
            }
            Answer::RateLimited(wait) => Err(Failure::RateLimited(wait)),
            Answer::Retry { reason, at_least } => Err(Failure::Retry { reason, at_least }),
        }
    }

    /// Full jitter: uniform in `[0, min(cap, first * 2^n))`, at least 10 ms.
    fn next_backoff(&mut self) -> Duration {
        let range = FIRST_BACKOFF
            .saturating_mul(1u32 << self.backoff_step.min(16))
            .min(MAX_BACKOFF);
        self.backoff_step = self.backoff_step.saturating_add(1);
        let draw = (crate::rand::uuid_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64;
        range.mul_f64(draw).max(Duration::from_millis(10))
    }

    fn failed(&mut self, reason: &str, retried: bool) {
        let counters: &Counters = &self.shared.counters;
        if retried {
            counters.retried.fetch_add(1, Ordering::Relaxed);
        }
        self.health.failures += 1;
        if !self.health.failing {
            self.health.failing = true;
            counters.delivery_failing.store(true, Ordering::Relaxed);
            warn(format_args!(
                "delivery to {} is failing ({reason}); events stay in the outbox and are retried",
                self.transport.endpoint
            ));
        }
    }

    fn recovered(&mut self) {
        self.backoff_step = 0;
        if self.health.failing {
            self.health.failing = false;
            self.shared
                .counters
                .delivery_failing
                .store(false, Ordering::Relaxed);
            warn(format_args!(
                "delivery to {} recovered after {} failed attempts",
                self.transport.endpoint, self.health.failures
            ));
            self.health.failures = 0;
        }
    }
}

fn store_failure(e: crate::store::StoreError) -> Failure {
    Failure::Retry {
        reason: format!("outbox: {e}"),
        at_least: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DiscardRow, Discards, Row};
    use crate::storm::CountRecord;

    fn row(i: usize) -> Row {
        Row {
            event_id: format!("{i:032x}"),
            created_at: i as f64,
            payload: vec![b'x'; 100],
        }
    }

    fn count(id: char, event: usize, n: u64) -> CountRecord {
        CountRecord {
            id: id.to_string().repeat(32),
            event_id: format!("{event:032x}").parse().expect("id"),
            count: n,
            start: 1.0,
            end: 2.0,
        }
    }

    #[test]
    fn the_outbox_gives_up_rows_only_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bounds = Bounds {
            max_events: 100,
            max_bytes: 1_000_000,
        };
        let path = dir.path().join("outbox.db");
        let mut writer = SqliteStore::open(&path, bounds, false).expect("open");
        let mut discards = Discards::new();
        discards.insert(("queue_overflow", "error"), 3);
        let rows: Vec<_> = (1..=10).map(row).collect();
        writer
            .write(&rows, &[count('a', 1, 7), count('b', 2, 5)], &discards)
            .expect("write");
        let mut shipper = SqliteStore::open(&path, bounds, false).expect("open shipper");

        // Rowid order, capped by count and by bytes (at least one event).
        let first = shipper.pending_events(0, 4, 1_000_000).expect("read");
        assert_eq!(first.len(), 4);
        assert_eq!(first[0].event_id, format!("{:032x}", 1));
        let next = shipper
            .pending_events(first[3].rowid, 100, 250)
            .expect("read");
        assert_eq!(next.len(), 2, "250 bytes hold two 100-byte events");
        assert_eq!(shipper.pending_events(0, 5, 10).expect("read").len(), 1);

        // Counts wait for their event to leave the outbox.
        assert!(shipper.ready_counts(10).expect("counts").is_empty());
        let rowids: Vec<i64> = first.iter().map(|e| e.rowid).collect();
        assert_eq!(shipper.delete_events(&rowids[..1]).expect("delete"), 1);
        let ready = shipper.ready_counts(10).expect("counts");
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].count, 7);
        shipper.delete_counts(&ready, None).expect("delete counts");

        // A refused event goes with its counts, both recorded as discards.
        assert_eq!(
            shipper
                .drop_events(&rowids[1..2], "send_error")
                .expect("drop"),
            1
        );
        // Deleting what is already gone changes nothing.
        assert_eq!(shipper.delete_events(&rowids[..2]).expect("delete"), 0);
        let depth = shipper.depth().expect("depth");
        assert_eq!(
            depth,
            crate::store::Depth {
                sessions: 0,
                events: 8,
                counts: 0,
                discards: 2
            }
        );
        let report = shipper.discards().expect("discards");
        assert_eq!(
            report,
            vec![
                DiscardRow {
                    reason: "queue_overflow".into(),
                    category: "error".into(),
                    quantity: 3
                },
                DiscardRow {
                    reason: "send_error".into(),
                    category: "error".into(),
                    quantity: 1 + 5
                },
            ]
        );
        // The writer adds more while the report is in flight: only what was sent goes.
        let mut more = Discards::new();
        more.insert(("queue_overflow", "error"), 2);
        writer.write(&[], &[], &more).expect("write");
        shipper.subtract_discards(&report).expect("subtract");
        let left = shipper.discards().expect("discards");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].quantity, 2);

        // The totals the writers bound the outbox by went down with the deletes.
        let rest: Vec<i64> = shipper
            .pending_events(0, 100, usize::MAX)
            .expect("read")
            .iter()
            .map(|e| e.rowid)
            .collect();
        assert_eq!(shipper.delete_events(&rest).expect("delete"), 8);
        assert_eq!(shipper.depth().expect("depth").events, 0);
        let out = writer
            .write(&[row(50)], &[], &Discards::new())
            .expect("write");
        assert_eq!(out.evicted, 0);
    }

    #[test]
    fn endpoints_follow_the_dsn() {
        let dsn: Dsn = "http://k@127.0.0.1:9/7".parse().expect("dsn");
        assert_eq!(endpoint(&dsn), "http://127.0.0.1:9/api/7/envelope/");
        let dsn: Dsn = "https://k@errors.example.com/sentry/42"
            .parse()
            .expect("dsn");
        assert_eq!(
            endpoint(&dsn),
            "https://errors.example.com/sentry/api/42/envelope/"
        );
    }
}
