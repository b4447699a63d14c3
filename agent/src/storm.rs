//! The storm limiter: per fingerprint and time window, the first few events are stored in
//! full and the rest are only counted, exactly.
//!
//! The check runs on the caller's thread before anything is captured, so a suppressed
//! error costs a hash-map lookup under a sharded lock and never touches the queue. The
//! agent's thread sweeps finished windows into count records, which reference the id
//! of a stored event of the same fingerprint.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::panic::Location;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::event::EventId;
use crate::time::now_epoch;

const SHARDS: usize = 16;

/// What identifies "the same error": its type, where it was captured, and its I/O kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct StormKey {
    pub(crate) ty: &'static str,
    /// A hash of the name the error's `Debug` output starts with: the concrete type of a
    /// `dyn Error`, the variant of an enum (`Db(..)` vs `Parse(..)`).
    pub(crate) debug_name: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) io_kind: Option<io::ErrorKind>,
}

#[derive(Debug)]
struct Slot {
    window_start: Instant,
    /// Full events admitted in this window.
    admitted: u32,
    /// A stored (queued) event of this fingerprint, which counts refer to.
    representative: Option<EventId>,
    /// Occurrences counted, not stored, since `counted_since`.
    counted: u64,
    /// An event `before_send` dropped before it became the representative.
    forgotten: Option<EventId>,
    counted_since: f64,
    last_seen: f64,
}

/// One count record: `count` occurrences like `event_id` between `start` and `end`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CountRecord {
    pub(crate) id: String,
    pub(crate) event_id: EventId,
    pub(crate) count: u64,
    pub(crate) start: f64,
    pub(crate) end: f64,
}

/// What the caller should do with an occurrence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Capture it in full.
    Full,
    /// Already counted against this stored event; capture nothing.
    Counted(EventId),
}

pub(crate) struct Storm {
    burst: u32,
    window: Duration,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<StormKey, Slot>>>,
    /// Counts of windows that ended while the storm went on, for the next sweep.
    ready: Mutex<Vec<CountRecord>>,
}

impl Storm {
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst: burst.max(1),
            window,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ready: Mutex::new(Vec::new()),
        }
    }

    fn shard(&self, key: &StormKey) -> &Mutex<HashMap<StormKey, Slot>> {
        let idx = (self.hasher.hash_one(key) as usize) % SHARDS;
        // `idx < SHARDS == self.shards.len()`.
        &self.shards[idx]
    }

    /// Decides whether an occurrence is captured in full or only counted.
    pub(crate) fn admit(&self, key: StormKey, now: Instant) -> Admission {
        let mut map = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = map.entry(key).or_insert_with(|| {
            let epoch = now_epoch();
            Slot {
                window_start: now,
                admitted: 0,
                representative: None,
                forgotten: None,
                counted: 0,
                counted_since: epoch,
                last_seen: epoch,
            }
        });
        if now.saturating_duration_since(slot.window_start) >= self.window {
            // A new window: the old one's count is ready for the next sweep, so a storm
            // that never pauses still reports once per window.
            if let Some(record) = take_count(slot) {
                self.ready
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(record);
            }
            slot.window_start = now;
            slot.admitted = 0;
        }
        if slot.admitted < self.burst || slot.representative.is_none() {
            slot.admitted += 1;
            return Admission::Full;
        }
        match slot.representative {
            Some(rep) => {
                if slot.counted == 0 {
                    slot.counted_since = now_epoch();
                }
                slot.counted += 1;
                slot.last_seen = now_epoch();
                Admission::Counted(rep)
            }
            None => Admission::Full,
        }
    }

    /// Records the id of a fully captured event that made it into the queue.
    pub(crate) fn queued(&self, key: StormKey, id: EventId) {
        let mut map = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = map.get_mut(&key)
            && slot.forgotten != Some(id)
        {
            slot.representative = Some(id);
        }
    }

    /// `before_send` dropped event `id`: it cannot anchor counts. Returns the occurrences
    /// already counted against it, which are lost with it.
    pub(crate) fn forget(&self, key: StormKey, id: EventId) -> u64 {
        let mut map = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = map.get_mut(&key) else {
            return 0;
        };
        if slot.representative == Some(id) {
            slot.representative = None;
            std::mem::take(&mut slot.counted)
        } else {
            // Dropped before the capturing thread made it the representative.
            slot.forgotten = Some(id);
            0
        }
    }

    /// The queue was full: count the occurrence against a stored event if there is one.
    pub(crate) fn fold(&self, key: StormKey) -> Option<EventId> {
        let mut map = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = map.get_mut(&key)?;
        let rep = slot.representative?;
        let now = now_epoch();
        if slot.counted == 0 {
            slot.counted_since = now;
        }
        slot.counted += 1;
        slot.last_seen = now;
        Some(rep)
    }

    /// Takes the counts of finished windows (all counts when `all`), and forgets idle
    /// fingerprints so the map stays small.
    pub(crate) fn sweep(&self, now: Instant, all: bool) -> Vec<CountRecord> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, slot| {
                let finished = now.saturating_duration_since(slot.window_start) >= self.window;
                if (all || finished)
                    && let Some(record) = take_count(slot)
                {
                    out.push(record);
                }
                // Idle for two windows: forget it.
                slot.counted > 0
                    || now.saturating_duration_since(slot.window_start) < self.window * 2
            });
        }
        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        out.append(&mut ready);
        out
    }
}

/// The slot's count so far as a record, leaving it at zero.
fn take_count(slot: &mut Slot) -> Option<CountRecord> {
    if slot.counted == 0 {
        return None;
    }
    // Counting requires a representative; `forget` takes the count when it clears one.
    let rep = slot.representative?;
    let record = CountRecord {
        id: crate::rand::hex_id(),
        event_id: rep,
        count: slot.counted,
        start: slot.counted_since,
        end: slot.last_seen.max(slot.counted_since),
    };
    slot.counted = 0;
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn key() -> StormKey {
        StormKey {
            ty: "x",
            debug_name: 0,
            location: Location::caller(),
            io_kind: None,
        }
    }

    #[test]
    fn bursts_are_admitted_then_counted_exactly() {
        let storm = Storm::new(3, Duration::from_secs(10));
        let k = key();
        let t0 = Instant::now();
        let mut full = 0;
        let mut counted = 0;
        for i in 0..1000u32 {
            match storm.admit(k, t0) {
                Admission::Full => {
                    full += 1;
                    storm.queued(k, EventId::new());
                }
                Admission::Counted(_) => counted += 1,
            }
            let _ = i;
        }
        assert_eq!(full, 3);
        assert_eq!(counted, 997);
        assert!(storm.sweep(t0, false).is_empty(), "window not finished");
        let records = storm.sweep(t0, true);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].count, 997);
        assert!(storm.sweep(t0, true).is_empty(), "taken once");
        // A new window admits a new burst.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(storm.admit(k, later), Admission::Full);
    }

    #[test]
    fn a_dropped_representative_takes_its_counts_with_it() {
        let storm = Storm::new(1, Duration::from_secs(10));
        let k = key();
        let t0 = Instant::now();
        let first = EventId::new();
        assert_eq!(storm.admit(k, t0), Admission::Full);
        storm.queued(k, first);
        assert_eq!(storm.admit(k, t0), Admission::Counted(first));
        assert_eq!(storm.forget(k, first), 1);
        // No representative: the next occurrence is captured in full again.
        assert_eq!(storm.admit(k, t0), Admission::Full);
        // Dropped before it was queued (the race the other way round).
        let second = EventId::new();
        assert_eq!(storm.forget(k, second), 0);
        storm.queued(k, second);
        assert_eq!(storm.admit(k, t0), Admission::Full);
        assert!(storm.sweep(t0, true).is_empty());
    }

    #[test]
    fn a_storm_that_never_pauses_reports_once_per_window() {
        let window = Duration::from_secs(10);
        let storm = Storm::new(1, window);
        let k = key();
        let t0 = Instant::now();
        let mut counted = 0;
        // 35 seconds of one error every 100 ms.
        let mut records = Vec::new();
        for step in 0..350u32 {
            let now = t0 + Duration::from_millis(u64::from(step) * 100);
            match storm.admit(k, now) {
                Admission::Full => storm.queued(k, EventId::new()),
                Admission::Counted(_) => counted += 1,
            }
            // The agent's sweep, every 500 ms, never sees a finished window.
            if step % 5 == 4 {
                records.extend(storm.sweep(now, false));
            }
        }
        assert_eq!(records.len(), 3, "one per completed window: {records:?}");
        records.extend(storm.sweep(t0 + Duration::from_secs(35), true));
        assert_eq!(records.len(), 4);
        assert_eq!(records.iter().map(|r| r.count).sum::<u64>(), counted);
    }

    #[test]
    fn nothing_is_counted_without_a_representative() {
        let storm = Storm::new(1, Duration::from_secs(10));
        let k = key();
        let t0 = Instant::now();
        assert_eq!(storm.admit(k, t0), Admission::Full);
        // Never queued (queue full): the next one is captured in full too.
        assert_eq!(storm.admit(k, t0), Admission::Full);
        assert_eq!(storm.fold(k), None);
        storm.queued(k, EventId::new());
        assert!(matches!(storm.admit(k, t0), Admission::Counted(_)));
        assert!(storm.fold(k).is_some());
        assert_eq!(storm.sweep(t0, true).first().map(|r| r.count), Some(2));
    }
}
