//! The state the agent's threads share with the host's: the configuration, the in-app
//! rules, the storm table, the scrubber and the counters behind [`stats`](crate::stats).

use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::options::Options;
use crate::scrub::Scrubber;
use crate::storm::Storm;
use crate::trace::{InApp, RawTrace};

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
    /// Release health: errors (captures at level error or fatal, and panics) this run.
    pub(crate) session_errors: AtomicU64,
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
    /// The stack of the `init` call, resolved on the agent's thread to find the host crate.
    pub(crate) init_trace: RawTrace,
    /// This run's id: its crash run file's name and its session's owner.
    pub(crate) run_id: String,
}
