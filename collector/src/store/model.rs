//! What the store keeps and answers, independent of the database behind it: the rows the
//! API shows, the events ingest hands over, and the bounds both backends keep.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde::Serialize;

use super::{StoreError, UserRef};
use crate::alerts::rules::Channel;
use crate::difs::{DifKind, Features};
use crate::time::{HOUR_MS, hour_of};

/// A project and its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    /// Numeric id, the last part of the DSN.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// The DSN's public key.
    pub key: String,
}

/// A new random public key: 32 hex digits.
pub fn new_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Issue statuses.
pub const STATUSES: [&str; 3] = ["unresolved", "resolved", "muted"];

/// An issue as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    /// Id.
    pub id: i64,
    /// Project.
    pub project_id: i64,
    /// One-line title.
    pub title: String,
    /// The error class.
    pub class: String,
    /// `programmer` or `operational`.
    pub kind: String,
    /// Top in-app frame.
    pub culprit: String,
    /// Level of the latest event.
    pub level: String,
    /// `unresolved`, `resolved`, `muted`.
    pub status: String,
    /// Exact occurrence count.
    pub count: i64,
    /// RFC 3339.
    pub first_seen: String,
    /// RFC 3339.
    pub last_seen: String,
    /// Reopened by a new event after being resolved.
    pub is_regression: bool,
    /// 24 hourly counts, oldest first, last = current hour.
    pub hourly: Vec<i64>,
    /// Who the issue is assigned to, if anyone.
    pub assignee: Option<UserRef>,
    #[serde(skip)]
    /// The value the list is sorted on (for its cursor).
    pub sort_value: i64,
}

/// The issue list's sort orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Newest activity first.
    LastSeen,
    /// Newest issues first.
    FirstSeen,
    /// Most frequent first.
    Count,
}

impl Sort {
    /// Parses the `sort` parameter.
    pub fn parse(s: &str) -> Option<Sort> {
        match s {
            "last_seen" => Some(Sort::LastSeen),
            "first_seen" => Some(Sort::FirstSeen),
            "count" => Some(Sort::Count),
            _ => None,
        }
    }

    /// The issues column it sorts on.
    pub fn column(self) -> &'static str {
        match self {
            Sort::LastSeen => "last_seen",
            Sort::FirstSeen => "first_seen",
            Sort::Count => "count",
        }
    }
}

/// Issue list filters.
#[derive(Debug, Clone, Default)]
pub struct IssueFilter {
    /// `None` = all statuses.
    pub status: Option<String>,
    /// Exact class.
    pub class: Option<String>,
    /// Exact level.
    pub level: Option<String>,
    /// Has events in this environment.
    pub environment: Option<String>,
    /// Has events in this release.
    pub release: Option<String>,
    /// Case-insensitive substring of title, culprit or class.
    pub query: Option<String>,
    /// Assigned to this user.
    pub assigned_to: Option<i64>,
}

/// A keyset cursor: the sort value and id of the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Sort column value.
    pub value: i64,
    /// Row id.
    pub id: i64,
}

impl Cursor {
    /// The opaque string form.
    pub fn encode(self) -> String {
        format!("{}:{}", self.value, self.id)
    }

    /// Parses the opaque string form.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (v, id) = s.split_once(':')?;
        Some(Cursor {
            value: v.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

/// A tag value and how many events carried it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TagValue {
    /// The value.
    pub value: String,
    /// Events.
    pub count: i64,
}

/// An event line in an issue's event list.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// 32 hex.
    pub event_id: String,
    /// When it happened.
    pub timestamp: String,
    /// When it arrived.
    pub received: String,
    /// Level.
    pub level: String,
    /// Message line.
    pub message: String,
    /// Environment.
    pub environment: Option<String>,
    /// Release.
    pub release: Option<String>,
}

/// Decodes a stored event body.
pub fn decode_event(encoding: u8, data: &[u8]) -> Result<Vec<u8>, StoreError> {
    match encoding {
        1 => {
            let mut out = Vec::with_capacity(data.len() * 4);
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| StoreError::Task(format!("stored event does not inflate: {e}")))?;
            Ok(out)
        }
        _ => Ok(data.to_vec()),
    }
}

/// A class row.
#[derive(Debug, Clone, Serialize)]
pub struct Class {
    /// The class.
    pub class: String,
    /// `programmer` if any issue of the class is.
    pub kind: String,
    /// Issues of the class.
    pub issues: i64,
    /// Events of those issues.
    pub events: i64,
    /// RFC 3339.
    pub last_seen: String,
    /// 24 hourly counts, oldest first.
    pub hourly: Vec<i64>,
}

/// Discarded-event counters of a project.
#[derive(Debug, Clone, Serialize)]
pub struct DiscardRow {
    /// Why.
    pub reason: String,
    /// What.
    pub category: String,
    /// How many.
    pub quantity: i64,
}

/// The cheap polling summary of a project.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Events, including aggregate counts.
    pub events: i64,
    /// Issues.
    pub issues: i64,
    /// RFC 3339 or null.
    pub last_seen: Option<String>,
    /// Grows whenever anything is stored.
    pub seq: i64,
    /// Client-reported discards.
    pub discarded: Vec<DiscardRow>,
}

/// Under load (batches of three or more requests), tag-value counts are written at most this
/// long after their events, in a later batch: six fewer statements per event. Events,
/// issue counts and hourly buckets are always in the event's own transaction.
pub const TAG_DELAY: Duration = Duration::from_secs(1);

/// Jobs drained into one transaction at most.
pub const MAX_BATCH_JOBS: usize = 512;

/// Events in one transaction at most (a batch closes early when it reaches this).
pub const MAX_BATCH_EVENTS: usize = 4096;

/// How long an event id is remembered for idempotency.
pub const DEDUP_WINDOW_MS: i64 = 24 * HOUR_MS;

/// How many event ids are remembered at most.
pub const DEDUP_MAX_IDS: i64 = 1_000_000;

/// A WAL larger than this is truncated once the writer has been idle a second.
pub const WAL_IDLE_LIMIT: u64 = 4 * 1024 * 1024;

/// Distinct tag values kept per issue and key.
pub const MAX_TAG_VALUES_PER_ISSUE: i64 = 100;

/// Distinct tag values kept per project and key.
pub const MAX_TAG_VALUES_PER_PROJECT: i64 = 1000;

/// Splits `count` over the hour buckets of `[start, end]` in proportion to overlap.
/// The parts always sum to `count`.
pub fn spread(count: i64, start: i64, end: i64) -> Vec<(i64, i64)> {
    let end = end.max(start);
    let (h0, h1) = (hour_of(start), hour_of(end));
    if h0 == h1 || h1 - h0 > 24 * 400 {
        return vec![(h1, count)];
    }
    let total = (end - start).max(1) as i128;
    let mut out = Vec::new();
    let mut given = 0i64;
    for h in h0..=h1 {
        let lo = (h * HOUR_MS).max(start);
        let hi = ((h + 1) * HOUR_MS).min(end);
        let share = if h == h1 {
            count - given
        } else {
            ((hi - lo).max(0) as i128 * count as i128 / total) as i64
        };
        given += share;
        if share > 0 {
            out.push((h, share));
        }
    }
    out
}

/// Retention settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Full events kept per issue.
    pub max_events_per_issue: i64,
    /// Days full events are kept.
    pub retention_days: i64,
    /// Event ids remembered for idempotency at most (the oldest go first).
    pub dedup_max_ids: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events_per_issue: 100,
            retention_days: 30,
            dedup_max_ids: DEDUP_MAX_IDS,
        }
    }
}

/// An event ready to store: validated, grouped and (maybe) compressed.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    /// 32 lowercase hex digits.
    pub event_id: String,
    /// Grouping result.
    pub grouping: crate::grouping::Grouping,
    /// `error`, `warning`, ...
    pub level: String,
    /// Environment, if any.
    pub environment: Option<String>,
    /// Release, if any.
    pub release: Option<String>,
    /// When it happened (epoch ms).
    pub timestamp: i64,
    /// When it arrived (epoch ms).
    pub received: i64,
    /// Tags to index, `(key, value)`.
    pub tags: Vec<(String, String)>,
    /// 0 = JSON, 1 = zlib-compressed JSON.
    pub encoding: u8,
    /// The event JSON as received.
    pub data: Vec<u8>,
}

/// A client report line: events an SDK discarded.
#[derive(Debug, Clone)]
pub struct Discard {
    /// `queue_overflow`, `ratelimit_backoff`, ...
    pub reason: String,
    /// `error`, `transaction`, ...
    pub category: String,
    /// How many.
    pub quantity: i64,
}

/// An `errscope.counts` record.
#[derive(Debug, Clone)]
pub struct CountRecord {
    /// Unique id, applied at most once.
    pub id: String,
    /// An event of the same fingerprint.
    pub event_id: String,
    /// Occurrences to add.
    pub count: i64,
    /// Start of the counted interval (epoch ms).
    pub start: i64,
    /// End of the counted interval (epoch ms).
    pub end: i64,
}

/// Everything one ingestion request stores.
#[derive(Debug, Default)]
pub struct IngestJob {
    /// The project.
    pub project_id: i64,
    /// Events, in request order.
    pub events: Vec<PreparedEvent>,
    /// Client report discards.
    pub discards: Vec<Discard>,
    /// Aggregate counts.
    pub counts: Vec<CountRecord>,
}

/// Deliveries waiting to be sent, at most; past this, new alerts are dropped (and logged).
pub const MAX_QUEUED: i64 = 10_000;

/// Delivery log entries kept per rule (the newest).
pub const LOG_PER_RULE: i64 = 200;

/// How long sent and failed deliveries stay in the log.
pub const LOG_DAYS: i64 = 7;

/// A delivery as the log shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRow {
    /// Row id.
    #[serde(skip)]
    pub row: i64,
    /// The `X-Errscope-Delivery` id.
    pub id: String,
    /// The rule.
    pub rule_id: i64,
    /// The issue (none for a test message).
    pub issue_id: Option<i64>,
    /// `new_issue`, `regression`, `frequency`, `unmute` or `test`.
    pub trigger: String,
    /// `queued`, `sent` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When it was queued (RFC 3339).
    pub created: String,
    /// When it last changed (RFC 3339).
    pub updated: String,
    /// The next attempt of a queued delivery (RFC 3339).
    pub next_attempt: Option<String>,
    /// The receiver's last HTTP status (or SMTP reply code).
    pub response_status: Option<i64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// The JSON message.
    #[serde(skip)]
    pub payload: String,
}

/// A queued delivery that is due, with the channel of its rule.
#[derive(Debug, Clone)]
pub struct Due {
    /// The delivery.
    pub delivery: DeliveryRow,
    /// Where it goes.
    pub channel: Channel,
    /// The rule's name.
    pub rule_name: String,
    /// When it was queued (epoch ms), for the give-up horizon.
    pub created_ms: i64,
}

/// The outcome of one attempt, as stored.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Delivered.
    Sent {
        /// The receiver's status.
        status: Option<i64>,
    },
    /// Try again at `at` (epoch ms).
    Retry {
        /// When.
        at: i64,
        /// The receiver's status, if it answered.
        status: Option<i64>,
        /// What went wrong.
        error: String,
    },
    /// Given up.
    Failed {
        /// The receiver's status, if it answered.
        status: Option<i64>,
        /// What went wrong.
        error: String,
    },
}

/// `(encoding, data)` of a stored event.
pub type Stored = (u8, Vec<u8>);

/// The debug ids an event waits for, and its stored JSON if it is still retained.
pub type WaitingEvent = (Vec<String>, Option<Stored>);

/// A retained event waiting for a debug file, with its stored JSON.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// The row.
    pub row: i64,
    /// Its project.
    pub project_id: i64,
    /// Its id.
    pub event_id: String,
    /// `(encoding, data)` of the stored event, `None` when it is gone.
    pub stored: Option<Stored>,
}

/// Encodes event JSON for storage as ingestion does: zlib at the fastest level when that
/// saves at least 10 %, else as is.
pub fn encode_event(json: &[u8]) -> (u8, Vec<u8>) {
    if json.len() >= 512 {
        let mut z = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(json.len() / 2),
            flate2::Compression::fast(),
        );
        if z.write_all(json).is_ok()
            && let Ok(out) = z.finish()
            && out.len() <= json.len() / 10 * 9
        {
            return (1, out);
        }
    }
    (0, json.to_vec())
}

/// One stored debug file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifRow {
    /// Row id.
    pub id: i64,
    /// The project it was uploaded to.
    pub project_id: i64,
    /// SHA-1 of the file, hex.
    pub checksum: String,
    /// The name it was uploaded under.
    pub name: String,
    /// Container format.
    pub kind: DifKind,
    /// Sentry's object kind (`dbg`, `exe`, `lib`, `src`).
    pub object_kind: String,
    /// CPU architecture.
    pub arch: String,
    /// Debug id, lower-case.
    pub debug_id: String,
    /// Code id (ELF build id), lower-case hex.
    pub code_id: Option<String>,
    /// What the file holds.
    pub features: Features,
    /// Size in bytes.
    pub size: i64,
    /// Upload time, ms since the epoch.
    pub uploaded: i64,
    /// Last time symbolication used it, ms since the epoch.
    pub last_used: Option<i64>,
}

/// One kept minidump: its index row (the bytes live under `<data>/minidumps/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinidumpRow {
    /// The project of the event.
    pub project_id: i64,
    /// The event made from the dump.
    pub event_id: String,
    /// The dump's size in bytes.
    pub size: i64,
    /// SHA-1 of the dump, hex.
    pub checksum: String,
    /// The name the client sent (`upload_file_minidump`'s file name).
    pub name: String,
    /// When it arrived (ms).
    pub received: i64,
}
