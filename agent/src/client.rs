//! The running agent: [`init`], the [`Guard`], the capture entry points behind
//! `capture_error`/`capture_message`, and [`stats`].

use std::error::Error;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::capture::{first_io_kind, walk_chain};
use crate::domain;
use crate::event::{EventId, Level};
use crate::options::Options;
use crate::scrub::Scrubber;
use crate::storm::{Admission, Storm, StormKey};
use crate::trace::{InApp, RawTrace};
use crate::warn;
use crate::worker::{self, Msg, Payload, Record};

static CLIENT: RwLock<Option<Arc<Client>>> = RwLock::new(None);

/// Counters shared by the host's threads and the agent's thread.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) captured: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) storm_counted: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_sample_rate: AtomicU64,
    pub(crate) dropped_before_send: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) degraded: AtomicBool,
    /// Drops on the host's threads not yet written to the store's `discards`.
    pub(crate) pending_queue_full: AtomicU64,
    pub(crate) pending_sample_rate: AtomicU64,
    /// Shipper: events the server confirmed.
    pub(crate) sent: AtomicU64,
    /// Shipper: requests that failed and are retried (or split after a rejection).
    pub(crate) retried: AtomicU64,
    /// Shipper: events the server refused for good (`send_error` discards).
    pub(crate) dropped_send_error: AtomicU64,
    /// Shipper: events waiting in the outbox when it last looked.
    pub(crate) outbox_events: AtomicU64,
    /// Shipper: the last attempt failed.
    pub(crate) delivery_failing: AtomicBool,
    /// The writer committed something: wakes the shipper.
    pub(crate) outbox_changed: tokio::sync::Notify,
}

/// What the agent's thread needs of the configuration.
pub(crate) struct Shared {
    pub(crate) options: Options,
    pub(crate) in_app: InApp,
    pub(crate) counters: Counters,
    pub(crate) storm: Storm,
    pub(crate) server_name: Option<String>,
    pub(crate) scrubber: Scrubber,
}

pub(crate) struct Client {
    pub(crate) shared: Arc<Shared>,
    tx: Sender<Msg>,
    shipper: Option<crate::ship::Handle>,
}

thread_local! {
    static THREAD_NAME: Option<Arc<str>> = std::thread::current().name().map(Arc::from);
}

/// The calling thread's name, looked up once per thread.
fn thread_name() -> Option<Arc<str>> {
    THREAD_NAME.try_with(Clone::clone).ok().flatten()
}

/// Whether an event is kept at `rate`: a uniform draw from 53 random bits of its id.
fn keep_sample(id: EventId, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    // The lowest 53 bits: the UUID's version and variant bits sit above them.
    let draw = (id.low_bits() & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64;
    draw < rate
}

/// Counters of the running agent, since `init`. All zero when not initialized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `capture_error`/`capture_message` calls recorded, in full or counted.
    pub captured: u64,
    /// Panics recorded by the hook.
    pub panics: u64,
    /// Events committed to the outbox (or, when degraded, to memory).
    pub stored: u64,
    /// Occurrences counted against a stored event during error storms.
    pub storm_counted: u64,
    /// Captures dropped because the queue was full (stored as `queue_overflow` discards).
    pub dropped_queue_full: u64,
    /// Captures dropped by the sample rate.
    pub dropped_sample_rate: u64,
    /// Events dropped by `before_send`.
    pub dropped_before_send: u64,
    /// Old events evicted to keep the outbox within its bounds.
    pub evicted: u64,
    /// The outbox file could not be used and events are kept in memory.
    pub degraded: bool,
    /// Events the server confirmed (2xx).
    pub sent: u64,
    /// Deliveries that failed and are retried: network errors, timeouts, 5xx, 429, and
    /// batches resent in halves after a rejection.
    pub retried: u64,
    /// Events the server refused for good (a 4xx other than 429): dropped and reported
    /// as `send_error` in a client report.
    pub dropped_send_error: u64,
    /// Events waiting in the outbox, as the shipper last saw it (0 without a DSN).
    pub outbox_events: u64,
    /// The shipper's last attempt failed (it retries).
    pub delivery_failing: bool,
}

/// The agent's counters.
#[must_use]
pub fn stats() -> Stats {
    let Some(client) = current() else {
        return Stats::default();
    };
    let c = &client.shared.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Stats {
        captured: get(&c.captured),
        panics: get(&c.panics),
        stored: get(&c.stored),
        storm_counted: get(&c.storm_counted),
        dropped_queue_full: get(&c.dropped_queue_full),
        dropped_sample_rate: get(&c.dropped_sample_rate),
        dropped_before_send: get(&c.dropped_before_send),
        evicted: get(&c.evicted),
        degraded: c.degraded.load(Ordering::Relaxed),
        sent: get(&c.sent),
        retried: get(&c.retried),
        dropped_send_error: get(&c.dropped_send_error),
        outbox_events: get(&c.outbox_events),
        delivery_failing: c.delivery_failing.load(Ordering::Relaxed),
    }
}

/// Waits until every event captured before this call is committed and, with a DSN,
/// delivered (see [`Guard::flush`]).
/// Returns `false` when errscope is not initialized or the time ran out.
pub fn flush(timeout: Duration) -> bool {
    current().is_some_and(|c| c.flush(timeout))
}

pub(crate) fn current() -> Option<Arc<Client>> {
    CLIENT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(Arc::clone)
}

/// Runs `f` with the running client. The lock is not held while `f` runs: `f` calls the
/// host's `Display` and `source()` impls, and a panic there re-enters through the hook.
fn with_client<R>(f: impl FnOnce(&Client) -> R) -> Option<R> {
    current().map(|client| f(&client))
}

/// Starts the agent: installs the panic hook and the fatal-signal handlers (once per
/// process) and starts the agent's thread, which opens the outbox. Cheap: no symbols are
/// loaded; the one file the calling thread writes is the small run file of the handlers.
///
/// A second call while a [`Guard`] is alive warns on stderr and returns an inert guard;
/// the first configuration stays in force. After the first guard is dropped, `init` may
/// be called again.
pub fn init(options: Options) -> Guard {
    let mut slot = CLIENT.write().unwrap_or_else(PoisonError::into_inner);
    if slot.is_some() {
        warn(format_args!(
            "init called while already initialized; keeping the first configuration"
        ));
        return Guard { client: None };
    }
    let server_name = options.server_name.clone().or_else(|| {
        hostname::get()
            .ok()
            .map(|h| h.to_string_lossy().into_owned())
    });
    let shared = Arc::new(Shared {
        in_app: InApp::new(&options.in_app_include, &options.in_app_exclude),
        storm: Storm::new(options.storm_burst, options.storm_window),
        counters: Counters::default(),
        server_name,
        scrubber: Scrubber::new(&options.scrub_keys),
        options,
    });
    let Some(tx) = worker::start(Arc::clone(&shared)) else {
        return Guard { client: None };
    };
    // The shipper reads what the writer commits; without a DSN events just stay.
    let shipper = shared
        .options
        .dsn
        .as_ref()
        .and_then(|dsn| crate::ship::start(Arc::clone(&shared), dsn));
    let client = Arc::new(Client {
        shared,
        tx,
        shipper,
    });
    *slot = Some(Arc::clone(&client));
    drop(slot);
    crate::hook::install();
    crate::crash::install(&client.shared);
    Guard {
        client: Some(client),
    }
}

/// Keeps the agent running; dropping it flushes pending events (waiting at most
/// [`Options::shutdown_timeout`]) and stops the agent's thread.
#[must_use = "dropping the guard stops errscope; keep it alive for the whole program"]
#[derive(Debug)]
pub struct Guard {
    client: Option<Arc<Client>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Guard {
    /// Waits until every event captured before this call is committed, with storm counts
    /// swept, and, with a DSN, until the outbox is empty (everything delivered, or refused
    /// and reported), or until `timeout` passes. Returns whether all of it happened; what
    /// is not delivered stays in the outbox for later (or the next start).
    /// An inert guard (from a second `init`) flushes the running agent.
    pub fn flush(&self, timeout: Duration) -> bool {
        match &self.client {
            Some(client) => client.flush(timeout),
            None => current().is_some_and(|c| c.flush(timeout)),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let timeout = client.shared.options.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        client.flush(timeout);
        {
            let mut slot = CLIENT.write().unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                *slot = None;
            }
        }
        // Let the agent's thread close the file; bounded, never hangs the host.
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if client
            .tx
            .send_deadline(Msg::Shutdown(ack_tx), deadline)
            .is_ok()
        {
            let _ = ack_rx.recv_deadline(deadline.max(Instant::now() + Duration::from_millis(100)));
        }
        // A request in flight is abandoned; its events stay in the outbox.
        if let Some(shipper) = &client.shipper {
            shipper.stop(Instant::now() + Duration::from_millis(100));
        }
    }
}

impl Client {
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        if worker::is_worker_thread() {
            // Waiting for ourselves would only time out.
            return false;
        }
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self.tx.send_deadline(Msg::Flush(ack_tx), deadline).is_err() {
            return false;
        }
        if ack_rx.recv_deadline(deadline).is_err() {
            return false;
        }
        match &self.shipper {
            Some(shipper) => shipper.flush(deadline),
            None => true,
        }
    }

    fn sampled_out(&self, id: EventId) -> bool {
        if keep_sample(id, self.shared.options.sample_rate) {
            return false;
        }
        let c = &self.shared.counters;
        c.dropped_sample_rate.fetch_add(1, Ordering::Relaxed);
        c.pending_sample_rate.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The caller-thread half of a capture: storm check, then the record to the queue.
    pub(crate) fn capture(
        &self,
        key: StormKey,
        level: Level,
        payload: impl FnOnce() -> Payload,
    ) -> EventId {
        let event_id = EventId::new();
        if self.sampled_out(event_id) {
            return EventId::nil();
        }
        let counters = &self.shared.counters;
        let storm = &self.shared.storm;
        if let Admission::Counted(rep) = storm.admit(key, Instant::now()) {
            counters.captured.fetch_add(1, Ordering::Relaxed);
            counters.storm_counted.fetch_add(1, Ordering::Relaxed);
            return rep;
        }
        let record = Record {
            event_id,
            timestamp: crate::time::now_epoch(),
            level,
            payload: payload(),
            trace: self
                .shared
                .options
                .attach_stacktrace
                .then(RawTrace::capture),
            domain: domain::current().map(|d| d.snapshot()),
            thread: thread_name(),
            storm_key: Some(key),
        };
        match self.tx.try_send(Msg::Record(Box::new(record), None)) {
            Ok(()) => {
                storm.queued(key, event_id);
                counters.captured.fetch_add(1, Ordering::Relaxed);
                event_id
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if let Some(rep) = storm.fold(key) {
                    counters.captured.fetch_add(1, Ordering::Relaxed);
                    counters.storm_counted.fetch_add(1, Ordering::Relaxed);
                    return rep;
                }
                counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                counters.pending_queue_full.fetch_add(1, Ordering::Relaxed);
                EventId::nil()
            }
        }
    }

    /// Records a panic and waits (bounded) until it is committed.
    pub(crate) fn capture_panic(
        &self,
        message: String,
        location: Option<(String, u32, u32)>,
    ) -> Option<EventId> {
        let event_id = EventId::new();
        let record = Record {
            event_id,
            timestamp: crate::time::now_epoch(),
            level: Level::Fatal,
            payload: Payload::Panic { message, location },
            trace: Some(RawTrace::capture()),
            domain: domain::current().map(|d| d.snapshot()),
            thread: thread_name(),
            storm_key: None,
        };
        self.shared.counters.panics.fetch_add(1, Ordering::Relaxed);
        if worker::is_worker_thread() {
            // The agent's own thread cannot wait for itself.
            return self.write_directly(record, "it happened on the agent's own thread");
        }
        let fallback = record.clone();
        let deadline = Instant::now() + self.shared.options.panic_timeout;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self
            .tx
            .send_deadline(Msg::Record(Box::new(record), Some(ack_tx)), deadline)
            .is_err()
        {
            return self.write_directly(
                fallback,
                "the agent's queue stayed full or the agent stopped",
            );
        }
        if ack_rx.recv_deadline(deadline).is_err() {
            // Queued: the agent may still commit it, so the id stays valid either way.
            let _ = self.write_directly(fallback, "the agent did not commit it in time");
        }
        Some(event_id)
    }

    /// Writes a panic's record through a connection of the calling thread.
    fn write_directly(&self, record: Record, why: &str) -> Option<EventId> {
        let event_id = record.event_id;
        match worker::write_directly(&self.shared, record) {
            Ok(()) => Some(event_id),
            Err(e) => {
                warn(format_args!("could not record a panic ({why}): {e}"));
                None
            }
        }
    }
}

pub(crate) fn capture_error(
    err: &(dyn Error + 'static),
    ty: &'static str,
    location: &'static Location<'static>,
) -> EventId {
    with_client(|client| {
        let key = StormKey {
            ty,
            debug_name: debug_name_hash(err),
            location,
            io_kind: first_io_kind(err),
        };
        client.capture(key, Level::Error, || Payload::Error {
            chain: walk_chain(err, ty),
            location,
        })
    })
    .unwrap_or_else(EventId::nil)
}

/// Errors captured at one call site may be of many types (as `dyn Error`) or variants:
/// tell them apart by the name their `Debug` output starts with. Only that name is
/// formatted; a panicking `Debug` counts as zero.
fn debug_name_hash(err: &(dyn Error + 'static)) -> u64 {
    use std::hash::BuildHasher as _;
    // An `io::Error`'s `Debug` names its representation (`Os`, `Custom`), not anything the
    // I/O kind in the key does not already say, and it calls `strerror` to get there.
    if err.is::<std::io::Error>() {
        return 0;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Fixed keys: the same type gives the same hash on every thread.
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(crate::capture::type_from_debug(err))
    }))
    .unwrap_or(0)
}

pub(crate) fn capture_message(
    message: &str,
    level: Level,
    location: &'static Location<'static>,
) -> EventId {
    with_client(|client| {
        let key = StormKey {
            ty: "message",
            debug_name: 0,
            location,
            io_kind: None,
        };
        client.capture(key, level, || Payload::Message {
            text: crate::capture::truncate(message.to_owned()),
            location,
        })
    })
    .unwrap_or_else(EventId::nil)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_about_the_rate() {
        for rate in [0.1, 0.5, 0.9] {
            let kept = (0..20_000)
                .filter(|_| keep_sample(EventId::new(), rate))
                .count() as f64
                / 20_000.0;
            // 20,000 draws: the standard deviation is at most 0.0036.
            assert!((kept - rate).abs() < 0.03, "rate {rate}: kept {kept}");
        }
        assert!(keep_sample(EventId::new(), 1.0));
        assert!(!keep_sample(EventId::new(), 0.0));
    }
}
