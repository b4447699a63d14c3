//! The running client: the caller-thread half of every capture (sampling, storm check,
//! the record to the agent's queue), panics waiting for their commit, flush and [`stats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::domain;
use crate::event::{EventId, Level};
use crate::shared::Shared;
use crate::storm::{Admission, StormKey};
use crate::trace::RawTrace;
use crate::warn;
use crate::worker::{self, Msg, Payload, Record};

static CLIENT: RwLock<Option<Arc<Client>>> = RwLock::new(None);

pub(crate) struct Client {
    pub(crate) shared: Arc<Shared>,
    tx: Sender<Msg>,
    shipper: Option<crate::ship::Handle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
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
pub(crate) fn with_client<R>(f: impl FnOnce(&Client) -> R) -> Option<R> {
    current().map(|client| f(&client))
}

/// Runs `start` and makes the client it builds the running one, unless one is running
/// already: then `start` is not called and `Err(())` is returned. The slot stays locked
/// while `start` runs, so concurrent `init` calls start one agent.
pub(crate) fn install_with(
    start: impl FnOnce() -> Option<Arc<Client>>,
) -> Result<Option<Arc<Client>>, ()> {
    let mut slot = CLIENT.write().unwrap_or_else(PoisonError::into_inner);
    if slot.is_some() {
        return Err(());
    }
    let client = start();
    slot.clone_from(&client);
    Ok(client)
}

/// Stops `client` being the running one (if it still is).
pub(crate) fn uninstall(client: &Arc<Client>) {
    let mut slot = CLIENT.write().unwrap_or_else(PoisonError::into_inner);
    if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
        *slot = None;
    }
}

impl Client {
    pub(crate) fn new(
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        shipper: Option<crate::ship::Handle>,
    ) -> Self {
        Self {
            shared,
            tx,
            shipper,
        }
    }

    /// Lets the agent's thread close the file and stops the shipper; bounded by
    /// `deadline`, never hangs the host.
    pub(crate) fn shut_down(&self, deadline: Instant) {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self
            .tx
            .send_deadline(Msg::Shutdown(ack_tx), deadline)
            .is_ok()
        {
            let _ = ack_rx.recv_deadline(deadline.max(Instant::now() + Duration::from_millis(100)));
        }
        // A request in flight is abandoned; its events stay in the outbox.
        if let Some(shipper) = &self.shipper {
            shipper.stop(Instant::now() + Duration::from_millis(100));
        }
    }

    /// Ends this run's session (committed before this returns, or `deadline` passes).
    pub(crate) fn end_session(&self, status: &'static str, deadline: Instant) {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self
            .tx
            .send_deadline(Msg::EndSession(status, ack_tx), deadline)
            .is_ok()
        {
            let _ = ack_rx.recv_deadline(deadline);
        }
    }

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
        if matches!(level, Level::Error | Level::Fatal) {
            // Release health counts every error recorded, sampled or not.
            let c = &self.shared.counters;
            c.session_errors.fetch_add(1, Ordering::Relaxed);
        }
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
        self.shared
            .counters
            .session_errors
            .fetch_add(1, Ordering::Relaxed);
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
