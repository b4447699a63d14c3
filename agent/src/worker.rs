//! The agent's threads: `errscope-worker` drains the queue and turns each batch of
//! records into rows (events assembled, `before_send` applied, scrubbed, serialized);
//! `errscope-writer` commits each batch in one transaction (group commit) and then
//! answers the panics and flushes that wait for it. Also the panic hook's fallback that
//! writes an event directly.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

pub(crate) use crate::assemble::{Payload, Record};
use crate::assemble::{build_event, os_context};
use crate::session::{SessionOp, Tracker};
use crate::shared::Shared;
use crate::store::{Bounds, Discards, MemoryStore, Row, SqliteStore, StoreError};
use crate::storm::CountRecord;
use crate::trace::Resolver;
use crate::warn;

/// How often the worker wakes up to sweep finished storm windows.
const TICK: Duration = Duration::from_millis(500);
/// How long a lone capture waits for company before its batch is built (captures are
/// asynchronous; panics and flushes never wait).
const LINGER: Duration = Duration::from_millis(1);
/// At most this many records per transaction.
const MAX_BATCH: usize = 1024;

thread_local! {
    static IS_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is the agent's own.
pub(crate) fn is_worker_thread() -> bool {
    IS_WORKER.try_with(Cell::get).unwrap_or(false)
}

/// What the host's threads send.
pub(crate) enum Msg {
    /// A capture; panics carry a sender to be told when it is committed.
    Record(Box<Record>, Option<Sender<()>>),
    /// Commit everything before this and sweep all storm counts, then answer.
    Flush(Sender<()>),
    /// Like `Flush`, then close the outbox and stop.
    Shutdown(Sender<()>),
    /// End this run's session with this status, then answer once it is committed.
    EndSession(&'static str, Sender<()>),
}

/// Starts the agent's thread; `None` (with a warning) if the OS refuses a thread.
pub(crate) fn start(shared: Arc<Shared>) -> Option<Sender<Msg>> {
    let (tx, rx) = crossbeam_channel::bounded(shared.options.queue_size);
    match std::thread::Builder::new()
        .name("errscope-worker".to_owned())
        .spawn(move || run(&shared, &rx))
    {
        Ok(_) => Some(tx),
        Err(e) => {
            warn(format_args!(
                "cannot start the agent's thread: {e}; nothing will be recorded"
            ));
            None
        }
    }
}

enum Outbox {
    Sqlite(SqliteStore),
    Memory(MemoryStore),
}

/// The panic hook's fallback when the agent's threads cannot commit its record in time
/// (or the hook runs on one of them): build the event on the calling thread and write it
/// through a connection of its own. `before_send` is skipped: it may be what is stuck or
/// what panicked. A record the agent commits later too is ignored as a duplicate id.
pub(crate) fn write_directly(shared: &Shared, record: Record) -> Result<(), StoreError> {
    let mut resolver = Resolver::new(shared.in_app.clone(), shared.init_trace.clone());
    let mut event = build_event(record, shared, &mut resolver, &os_context());
    if shared.options.scrub {
        crate::scrub::scrub_event(&mut event, &shared.scrubber);
    }
    let payload = serde_json::to_vec(&event).map_err(StoreError::Encode)?;
    let row = Row {
        event_id: event.event_id.to_string(),
        created_at: event.timestamp,
        payload,
    };
    let path = shared.options.database_path();
    let mut store = SqliteStore::open(&path, bounds(shared), shared.options.sync_full)?;
    let outcome = store.write(&[row], &[], &Discards::new())?;
    shared
        .counters
        .stored
        .fetch_add(outcome.stored, Ordering::Relaxed);
    shared
        .counters
        .evicted
        .fetch_add(outcome.evicted, Ordering::Relaxed);
    Ok(())
}

impl Outbox {
    fn open(shared: &Shared) -> Self {
        let path = shared.options.database_path();
        match SqliteStore::open(&path, bounds(shared), shared.options.sync_full) {
            Ok(mut store) => {
                if let Err(e) = store.checkpoint_in_background() {
                    warn(format_args!("{e}; checkpointing on commit instead"));
                }
                Self::Sqlite(store)
            }
            Err(e) => {
                warn(format_args!(
                    "{e}; keeping events in memory instead (they are lost at exit)"
                ));
                shared.counters.degraded.store(true, Ordering::Relaxed);
                Self::Memory(MemoryStore::default())
            }
        }
    }
}

fn bounds(shared: &Shared) -> Bounds {
    Bounds {
        max_events: shared.options.max_events,
        max_bytes: shared.options.max_bytes,
    }
}

#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    acks: Vec<Sender<()>>,
    flushes: Vec<Sender<()>>,
    shutdown: Option<Sender<()>>,
    session: Option<SessionOp>,
}

impl Batch {
    /// Adds a message; returns whether to stop draining (a flush or shutdown waits).
    fn push(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record(rec, ack) => {
                self.records.push(*rec);
                self.acks.extend(ack);
                self.records.len() >= MAX_BATCH
            }
            Msg::Flush(ack) => {
                self.flushes.push(ack);
                true
            }
            Msg::Shutdown(ack) => {
                self.shutdown = Some(ack);
                true
            }
            Msg::EndSession(status, ack) => {
                self.session = Some(SessionOp::End(status));
                self.flushes.push(ack);
                true
            }
        }
    }
}

/// What the builder hands the writer: one transaction's worth, and who waits for it.
#[derive(Default)]
struct Job {
    rows: Vec<Row>,
    counts: Vec<CountRecord>,
    discards: Discards,
    acks: Vec<Sender<()>>,
    shutdown: Option<Sender<()>>,
    /// Written after the job's rows.
    session: Option<SessionOp>,
}

/// The builder: drains the queue, turns records into rows, hands them to the writer.
fn run(shared: &Arc<Shared>, rx: &Receiver<Msg>) {
    IS_WORKER.with(|w| w.set(true));
    // Two jobs in flight: the builder prepares the next batch while the writer commits.
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(2);
    let writer = {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("errscope-writer".to_owned())
            .spawn(move || write_loop(&shared, &jobs_rx))
    };
    if let Err(e) = writer {
        warn(format_args!(
            "cannot start the agent's writer thread: {e}; nothing will be recorded"
        ));
        return;
    }
    let mut resolver = Resolver::new(shared.in_app.clone(), shared.init_trace.clone());
    let os = os_context();
    // What a fatal signal left in an earlier run, committed before anything of this one.
    let crashed_runs = crate::crash_report::deliver(shared, &mut resolver, &os, |rows| {
        let (ack, done) = crossbeam_channel::bounded(1);
        let job = Job {
            rows,
            acks: vec![ack],
            ..Job::default()
        };
        jobs_tx.send(job).is_ok() && done.recv().is_ok()
    });
    // Then the sessions earlier runs left open, and this run's.
    let start = Job {
        session: Some(SessionOp::Start { crashed_runs }),
        ..Job::default()
    };
    if jobs_tx.send(start).is_err() {
        return;
    }
    loop {
        let mut batch = Batch::default();
        let disconnected = match rx.recv_timeout(TICK) {
            Ok(msg) => {
                let waited_for = matches!(msg, Msg::Record(_, Some(_)));
                if !batch.push(msg) {
                    // Group commit under a steady flow of captures: linger a moment so the
                    // batch (one transaction) grows, unless someone waits for a commit.
                    // While this thread sleeps, senders do not have to wake it.
                    if !waited_for && rx.is_empty() {
                        std::thread::sleep(LINGER);
                    }
                    while let Ok(msg) = rx.try_recv() {
                        if batch.push(msg) {
                            break;
                        }
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // A panic may be the last thing this process does (`panic = "abort"`): its commit
        // takes every storm count along, like a flush.
        let sweep_all = disconnected
            || !batch.flushes.is_empty()
            || !batch.acks.is_empty()
            || batch.shutdown.is_some();
        // Nothing the agent does may take the host down: a bug here loses a batch, says
        // so, and the thread goes on.
        let built = catch_unwind(AssertUnwindSafe(|| {
            build_job(shared, &mut resolver, &os, &mut batch, sweep_all)
        }));
        let mut job = built.unwrap_or_else(|_| {
            warn(format_args!(
                "internal error while preparing a batch of events"
            ));
            Job::default()
        });
        job.acks.append(&mut batch.acks);
        job.acks.append(&mut batch.flushes);
        job.shutdown = batch.shutdown.take();
        job.session = batch.session.take();
        let stop = job.shutdown.is_some() || disconnected;
        let idle = job.rows.is_empty()
            && job.counts.is_empty()
            && job.discards.is_empty()
            && job.acks.is_empty()
            && job.shutdown.is_none()
            && job.session.is_none();
        if !idle && jobs_tx.send(job).is_err() {
            // The writer is gone (it only stops on shutdown): nothing left to do.
            return;
        }
        if stop {
            return;
        }
    }
}

/// The writer: commits each job in one transaction, then answers whoever waits.
fn write_loop(shared: &Shared, jobs: &Receiver<Job>) {
    IS_WORKER.with(|w| w.set(true));
    let mut outbox = Outbox::open(shared);
    let mut session = Tracker::default();
    while let Ok(mut job) = jobs.recv() {
        let written = catch_unwind(AssertUnwindSafe(|| {
            write_job(shared, &mut outbox, &mut job);
            // Sessions need the file: a degraded outbox keeps none.
            if let Outbox::Sqlite(store) = &mut outbox {
                if let Some(op) = job.session.take() {
                    session.apply(shared, store, op);
                }
                session.note(shared, store);
            }
        }));
        if written.is_err() {
            warn(format_args!(
                "internal error while writing a batch of events"
            ));
        }
        shared.counters.outbox_changed.notify_one();
        for ack in job.acks.drain(..) {
            let _ = ack.try_send(());
        }
        if let Some(ack) = job.shutdown.take() {
            drop(outbox);
            let _ = ack.try_send(());
            return;
        }
    }
}

fn build_job(
    shared: &Shared,
    resolver: &mut Resolver,
    os: &Value,
    batch: &mut Batch,
    sweep_all: bool,
) -> Job {
    let counters = &shared.counters;
    let mut discards = Discards::new();
    let mut rows = Vec::with_capacity(batch.records.len());
    let mut size_hint = 4096;
    for record in std::mem::take(&mut batch.records) {
        let (storm_key, event_id) = (record.storm_key, record.event_id);
        let event = build_event(record, shared, resolver, os);
        let Some(mut event) = crate::assemble::apply_before_send(shared, event) else {
            // Storm counts cannot refer to a dropped event: they go with it.
            let lost = 1 + storm_key.map_or(0, |key| shared.storm.forget(key, event_id));
            counters
                .dropped_before_send
                .fetch_add(lost, Ordering::Relaxed);
            *discards.entry(("before_send", "error")).or_default() += lost;
            continue;
        };
        if shared.options.scrub {
            crate::scrub::scrub_event(&mut event, &shared.scrubber);
        }
        // Sized like the previous event: the rows of a batch live until it is committed,
        // and oversized buffers cost page faults.
        let mut payload = Vec::with_capacity(size_hint);
        match serde_json::to_writer(&mut payload, &event) {
            Ok(()) => {
                size_hint = payload.len() + payload.len() / 8;
                rows.push(Row {
                    event_id: event.event_id.to_string(),
                    created_at: event.timestamp,
                    payload,
                });
            }
            Err(e) => warn(format_args!(
                "cannot serialize event {}: {e}",
                event.event_id
            )),
        }
    }
    let counts = shared.storm.sweep(Instant::now(), sweep_all);
    let queue_full = counters.pending_queue_full.swap(0, Ordering::Relaxed);
    if queue_full > 0 {
        *discards.entry(("queue_overflow", "error")).or_default() += queue_full;
    }
    let sampled = counters.pending_sample_rate.swap(0, Ordering::Relaxed);
    if sampled > 0 {
        *discards.entry(("sample_rate", "error")).or_default() += sampled;
    }
    Job {
        rows,
        counts,
        discards,
        ..Job::default()
    }
}

fn write_job(shared: &Shared, outbox: &mut Outbox, job: &mut Job) {
    let counters = &shared.counters;
    if job.rows.is_empty() && job.counts.is_empty() && job.discards.is_empty() {
        return;
    }
    let rows = std::mem::take(&mut job.rows);
    let counts = std::mem::take(&mut job.counts);
    let outcome = match outbox {
        Outbox::Sqlite(store) => match store.write(&rows, &counts, &job.discards) {
            Ok(outcome) => outcome,
            Err(e) => {
                warn(format_args!(
                    "{e}; keeping events in memory from now on (they are lost at exit)"
                ));
                counters.degraded.store(true, Ordering::Relaxed);
                let mut memory = MemoryStore::default();
                let outcome = memory.write(rows, counts, &job.discards, bounds(shared));
                *outbox = Outbox::Memory(memory);
                outcome
            }
        },
        Outbox::Memory(memory) => memory.write(rows, counts, &job.discards, bounds(shared)),
    };
    counters.stored.fetch_add(outcome.stored, Ordering::Relaxed);
    counters
        .evicted
        .fetch_add(outcome.evicted, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, Level};
    use crate::options::Options;
    use crate::storm::Storm;
    use crate::trace::{InApp, RawTrace};

    fn shared(options: Options) -> Shared {
        Shared {
            in_app: InApp::default(),
            storm: Storm::new(5, Duration::from_secs(10)),
            counters: crate::shared::Counters::default(),
            server_name: Some("host-1".to_owned()),
            scrubber: crate::scrub::Scrubber::new(&options.scrub_keys),
            init_trace: RawTrace::default(),
            run_id: "run".to_owned(),
            options,
        }
    }

    fn record(text: &str) -> Record {
        Record {
            event_id: EventId::new(),
            timestamp: crate::time::now_epoch(),
            level: Level::Info,
            payload: Payload::Message {
                text: text.to_owned(),
                location: std::panic::Location::caller(),
            },
            trace: None,
            domain: None,
            thread: Some("t".into()),
            storm_key: None,
        }
    }

    #[test]
    fn a_full_disk_degrades_to_memory_without_losing_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("full.db");
        let shared = shared(Options::new().database(&path));
        let mut outbox = Outbox::open(&shared);
        let Outbox::Sqlite(store) = &mut outbox else {
            panic!("the file opens");
        };
        // Simulate a full disk: the file may not grow past its current size.
        store.limit_pages_for_test();
        let big = "y".repeat(64 * 1024);
        let mut batch = Batch::default();
        for _ in 0..4 {
            batch.records.push(record(&big));
        }
        let mut resolver = Resolver::new(InApp::default(), RawTrace::default());
        let mut job = build_job(&shared, &mut resolver, &os_context(), &mut batch, true);
        write_job(&shared, &mut outbox, &mut job);
        assert!(matches!(outbox, Outbox::Memory(_)));
        assert!(shared.counters.degraded.load(Ordering::Relaxed));
        assert_eq!(shared.counters.stored.load(Ordering::Relaxed), 4);
        // And later batches keep going to memory.
        batch.records.push(record("after"));
        let mut job = build_job(&shared, &mut resolver, &os_context(), &mut batch, true);
        write_job(&shared, &mut outbox, &mut job);
        assert_eq!(shared.counters.stored.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn events_carry_the_loaded_images_and_the_in_app_crates() {
        let plain = shared(Options::new().in_app_exclude("shop_gen"));
        let mut resolver = Resolver::new(
            InApp::new(&[], &["shop_gen".to_owned()]),
            RawTrace::capture(),
        );
        let mut rec = record("with a stack");
        rec.trace = Some(RawTrace::capture());
        let event = build_event(rec, &plain, &mut resolver, &os_context());
        let json = serde_json::to_value(&event).expect("json");
        let exe = std::env::current_exe().expect("exe").display().to_string();
        let images = json["debug_meta"]["images"].as_array().expect("images");
        let main = images
            .iter()
            .find(|i| i["code_file"] == exe)
            .expect("the test binary is listed");
        assert_eq!(main["type"], "elf");
        assert!(
            main["code_id"].as_str().is_some_and(|c| c.len() >= 16),
            "{main}"
        );
        assert!(
            main["debug_id"].as_str().is_some_and(|d| d.len() == 36),
            "{main}"
        );
        // The frames of this test's own code fall in the test binary's image.
        let frames = json["threads"]["values"][0]["stacktrace"]["frames"]
            .as_array()
            .expect("frames");
        assert!(
            frames
                .iter()
                .any(|f| f["package"] == exe && f["image_addr"] == main["image_addr"]),
            "{frames:#?}"
        );
        assert!(frames.iter().all(|f| {
            f["instruction_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("0x"))
        }));
        // The host of this test binary would be the agent itself, which is never in-app.
        assert_eq!(
            json["contexts"]["errscope"],
            serde_json::json!({"type": "errscope", "in_app_include": [], "in_app_exclude": ["shop_gen"]})
        );
        // Typed for a `before_send` hook, the same images.
        let typed = shared(Options::new().before_send(Some));
        let mut rec = record("typed");
        rec.trace = Some(RawTrace::capture());
        let event = build_event(rec, &typed, &mut resolver, &os_context());
        let meta = event.debug_meta.as_ref().expect("debug_meta");
        assert_eq!(meta.images.len(), images.len());
        assert_eq!(
            serde_json::to_value(meta).expect("json")["images"],
            json["debug_meta"]["images"]
        );
    }

    #[test]
    fn events_carry_release_server_and_message() {
        let shared = shared(Options::new().release("r@1").environment("e"));
        let mut resolver = Resolver::new(InApp::default(), RawTrace::default());
        let event = build_event(record("hello"), &shared, &mut resolver, &os_context());
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["message"], "hello");
        assert_eq!(json["release"], "r@1");
        assert_eq!(json["environment"], "e");
        assert_eq!(json["server_name"], "host-1");
        assert_eq!(json["platform"], "native");
        assert_eq!(json["contexts"]["thread"]["name"], "t");
        assert_eq!(json["contexts"]["runtime"]["name"], "rustc");
        assert!(json.get("exception").is_none());
    }
}
