//! The outbox: a SQLite file (WAL, numbered migrations, one writer) holding events, storm
//! counts and discard counters until a shipper sends them. If the file cannot be opened
//! or written, the outbox degrades to a bounded in-memory buffer with one stderr line.
//!
//! The schema (version 2) is documented in the crate docs ("The outbox").

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::storm::CountRecord;

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bytes committed to the WAL before the writer asks for a checkpoint (SQLite's own
/// automatic checkpoint comes after 1000 pages, about as much).
const CHECKPOINT_AFTER: u64 = 4 << 20;
/// Bytes the WAL may hold beyond the last complete checkpoint before the writer
/// checkpoints itself: the WAL stays bounded when the checkpointer falls behind.
const CHECKPOINT_INLINE_AFTER: u64 = 64 << 20;

/// Numbered migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE TABLE counts (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL,
        count INTEGER NOT NULL,
        start REAL NOT NULL,
        \"end\" REAL NOT NULL
    );
    CREATE INDEX counts_event_id ON counts (event_id);
    CREATE TABLE discards (
        reason TEXT NOT NULL,
        category TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        PRIMARY KEY (reason, category)
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        events INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    INSERT INTO totals (id, events, bytes) VALUES (1, 0, 0);",
    // 2: release health (session.rs): the sessions of runs not yet ended, and the session
    // updates waiting to be shipped.
    "CREATE TABLE open_sessions (
        sid TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        started REAL NOT NULL,
        errors INTEGER NOT NULL,
        panicked INTEGER NOT NULL,
        release TEXT NOT NULL,
        environment TEXT
    );
    CREATE TABLE session_updates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        payload BLOB NOT NULL
    );",
];

/// Why the outbox could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StoreError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot migrate {path} to schema {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: usize,
        source: rusqlite::Error,
    },
    #[error("{path} has schema version {found}, newer than this agent's {known}")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("cannot write to {path}: {source}")]
    Write {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot encode an event: {0}")]
    Encode(serde_json::Error),
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
}

/// A PASSIVE checkpoint: it never waits for the writer or readers, and what it cannot
/// copy now, the next one does. Returns whether the whole WAL is in the file.
fn checkpoint(conn: &Connection) -> bool {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(r.get::<_, i64>(1)? == r.get::<_, i64>(2)?)
    })
    .unwrap_or(false)
}

/// `n` off a byte count that another thread may have lowered meanwhile.
fn subtract(count: &AtomicU64, n: u64) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
        Some(c.saturating_sub(n))
    });
}

/// Maps the SQLite errors of a write to the outbox at `path`.
fn write_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Write {
        path: path.to_owned(),
        source,
    }
}

/// One serialized event ready to store.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) event_id: String,
    pub(crate) created_at: f64,
    pub(crate) payload: Vec<u8>,
}

/// Discard counters: `(reason, category) -> quantity`.
pub(crate) type Discards = BTreeMap<(&'static str, &'static str), u64>;

/// What one write did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct WriteOutcome {
    /// Events newly stored (duplicates of stored ids are ignored).
    pub(crate) stored: u64,
    /// Old events evicted to stay within bounds.
    pub(crate) evicted: u64,
}

/// Bounds of the outbox.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub(crate) max_events: u64,
    pub(crate) max_bytes: u64,
}

/// The SQLite outbox.
pub(crate) struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    bounds: Bounds,
    checkpointer: Option<Checkpointer>,
}

/// The writer's handle on the `errscope-checkpoint` thread, which copies the WAL into
/// the database file on a connection of its own. A checkpoint writes every page a second
/// time and waits for two fsyncs; done inline (SQLite's default), it stalls the commits
/// behind it.
struct Checkpointer {
    wake: crossbeam_channel::Sender<()>,
    /// Bytes committed since the last complete checkpoint (the checkpointer subtracts
    /// what it has copied).
    pending: Arc<AtomicU64>,
    /// Bytes committed since the checkpointer was last woken.
    since_wake: u64,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the file.
    pub(crate) fn open(path: &Path, bounds: Bounds, sync_full: bool) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // Shorter than a panic's wait for its commit (3 s by default), so a file locked by
        // another process degrades to memory before a panicking thread gives up.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // `journal_mode` answers with a row; this also fails early on a corrupt file.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        conn.execute_batch(if sync_full {
            "PRAGMA synchronous = FULL;"
        } else {
            "PRAGMA synchronous = NORMAL;"
        })
        .map_err(open_err)?;
        migrate(&mut conn, path)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('agent_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [env!("CARGO_PKG_VERSION")],
        )
        .map_err(open_err)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            bounds,
            checkpointer: None,
        })
    }

    /// Moves WAL checkpoints to a thread of their own. Without it (no thread, no second
    /// connection), SQLite's automatic checkpoints on commit stay on.
    pub(crate) fn checkpoint_in_background(&mut self) -> Result<(), StoreError> {
        let open_err = |source| StoreError::Open {
            path: self.path.clone(),
            source,
        };
        let conn = Connection::open(&self.path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        let pending = Arc::new(AtomicU64::new(0));
        let copied = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("errscope-checkpoint".to_owned())
            .spawn(move || {
                // Ends when the store, and with it `wake`, is dropped.
                while woken.recv().is_ok() {
                    let before = copied.load(Ordering::Relaxed);
                    if checkpoint(&conn) {
                        subtract(&copied, before);
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        self.conn
            .execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(open_err)?;
        self.checkpointer = Some(Checkpointer {
            wake,
            pending,
            since_wake: 0,
        });
        Ok(())
    }

    /// After a commit of about `bytes`: wakes the checkpointer when enough has piled up,
    /// or checkpoints here when it has fallen far behind.
    fn committed(&mut self, bytes: u64) {
        let Some(ckpt) = self.checkpointer.as_mut() else {
            return;
        };
        let pending = ckpt.pending.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if pending >= CHECKPOINT_INLINE_AFTER {
            if checkpoint(&self.conn) {
                subtract(&ckpt.pending, pending);
            }
            ckpt.since_wake = 0;
            return;
        }
        ckpt.since_wake += bytes;
        if ckpt.since_wake >= CHECKPOINT_AFTER {
            ckpt.since_wake = 0;
            let _ = ckpt.wake.try_send(());
        }
    }

    /// Writes events, counts and discard counters in one transaction, evicting the
    /// oldest events past the bounds (their loss goes into `discards` too).
    pub(crate) fn write(
        &mut self,
        rows: &[Row],
        counts: &[CountRecord],
        discards: &Discards,
    ) -> Result<WriteOutcome, StoreError> {
        let write_err = write_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(write_err)?;
        let mut outcome = WriteOutcome::default();
        let mut added_bytes = 0u64;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (event_id, created_at, payload, size)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(write_err)?;
            for row in rows {
                let size = row.payload.len() as u64;
                let n = insert
                    .execute(params![
                        row.event_id,
                        row.created_at,
                        row.payload,
                        i64::try_from(size).unwrap_or(i64::MAX)
                    ])
                    .map_err(write_err)?;
                if n > 0 {
                    outcome.stored += 1;
                    added_bytes += size;
                }
            }
            let mut insert_count = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO counts (id, event_id, count, start, \"end\")
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(write_err)?;
            for c in counts {
                insert_count
                    .execute(params![
                        c.id,
                        c.event_id.to_string(),
                        i64::try_from(c.count).unwrap_or(i64::MAX),
                        c.start,
                        c.end
                    ])
                    .map_err(write_err)?;
            }
        }
        let mut discards = discards.clone();
        // The totals live in the file, kept by every writer in its transaction: two
        // processes sharing one outbox (two instances of a service) stay within bounds.
        let (rows_before, bytes_before) = totals(&tx).map_err(write_err)?;
        let rows_after = rows_before + outcome.stored;
        let bytes_after = bytes_before + added_bytes;
        let (evicted, evicted_bytes, lost_counts) =
            evict(&tx, rows_after, bytes_after, self.bounds).map_err(write_err)?;
        if evicted > 0 {
            *discards.entry(("cache_overflow", "error")).or_default() += evicted + lost_counts;
        }
        add_discards(&tx, &discards).map_err(write_err)?;
        tx.execute(
            "UPDATE totals SET events = ?1, bytes = ?2 WHERE id = 1",
            params![
                i64::try_from(rows_after.saturating_sub(evicted)).unwrap_or(i64::MAX),
                i64::try_from(bytes_after.saturating_sub(evicted_bytes)).unwrap_or(i64::MAX)
            ],
        )
        .map_err(write_err)?;
        tx.commit().map_err(write_err)?;
        // A row's payload and its index entry; the page overhead is small beside them.
        self.committed(added_bytes + 64 * rows.len() as u64);
        outcome.evicted = evicted;
        Ok(outcome)
    }

    /// Makes the file unable to grow, as on a full disk.
    #[cfg(test)]
    pub(crate) fn limit_pages_for_test(&mut self) {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap_or(1);
        let _ = self
            .conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get::<_, i64>(0)
            });
    }
}

/// One stored event as the shipper reads it.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) rowid: i64,
    pub(crate) event_id: String,
    pub(crate) payload: Vec<u8>,
}

/// One discard counter as the shipper reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiscardRow {
    pub(crate) reason: String,
    pub(crate) category: String,
    pub(crate) quantity: u64,
}

/// What waits in the outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Depth {
    pub(crate) events: u64,
    pub(crate) counts: u64,
    pub(crate) discards: u64,
    pub(crate) sessions: u64,
}

impl Depth {
    pub(crate) fn is_empty(self) -> bool {
        self.events == 0 && self.counts == 0 && self.discards == 0 && self.sessions == 0
    }
}

/// The shipper's side: read in rowid order, delete only what the server confirmed.
impl SqliteStore {
    fn write_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Up to `max` events with a rowid above `after`, oldest first, stopping before
    /// `max_bytes` of payload (at least one event).
    pub(crate) fn pending_events(
        &self,
        after: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, event_id, payload FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.write_error(e))?;
        let mut rows = stmt
            .query(params![after, i64::try_from(max).unwrap_or(i64::MAX)])
            .map_err(|e| self.write_error(e))?;
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next().map_err(|e| self.write_error(e))? {
            let payload: Vec<u8> = row.get(2).map_err(|e| self.write_error(e))?;
            if !out.is_empty() && bytes + payload.len() > max_bytes {
                break;
            }
            bytes += payload.len();
            out.push(Pending {
                rowid: row.get(0).map_err(|e| self.write_error(e))?,
                event_id: row.get(1).map_err(|e| self.write_error(e))?,
                payload,
            });
        }
        Ok(out)
    }

    /// Deletes events the server confirmed and lowers the totals by what was actually
    /// deleted (the writer may have evicted some meanwhile).
    pub(crate) fn delete_events(&mut self, rowids: &[i64]) -> Result<u64, StoreError> {
        self.delete_events_with(rowids, None)
    }

    /// Deletes events the server rejected for good, with the counts that refer to them,
    /// and records them as discards with `reason` (sent later as a client report).
    pub(crate) fn drop_events(
        &mut self,
        rowids: &[i64],
        reason: &'static str,
    ) -> Result<u64, StoreError> {
        self.delete_events_with(rowids, Some(reason))
    }

    fn delete_events_with(
        &mut self,
        rowids: &[i64],
        dropped: Option<&'static str>,
    ) -> Result<u64, StoreError> {
        if rowids.is_empty() {
            return Ok(0);
        }
        let err = write_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let (mut n, mut bytes, mut lost) = (0u64, 0u64, 0u64);
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM events WHERE id = ?1 RETURNING size, event_id")
                .map_err(err)?;
            let mut counted = tx
                .prepare_cached("DELETE FROM counts WHERE event_id = ?1 RETURNING count")
                .map_err(err)?;
            for id in rowids {
                let gone: Option<(i64, String)> = delete
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(err)?;
                let Some((size, event_id)) = gone else {
                    continue;
                };
                n += 1;
                bytes += u64::try_from(size).unwrap_or(0);
                if dropped.is_some() {
                    let counts = counted
                        .query_map([&event_id], |r| r.get::<_, i64>(0))
                        .map_err(err)?;
                    for c in counts {
                        lost += u64::try_from(c.map_err(err)?).unwrap_or(0);
                    }
                }
            }
        }
        if let Some(reason) = dropped
            && n > 0
        {
            let mut d = Discards::new();
            d.insert((reason, "error"), n + lost);
            add_discards(&tx, &d).map_err(err)?;
        }
        tx.execute(
            "UPDATE totals SET events = max(events - ?1, 0), bytes = max(bytes - ?2, 0)
             WHERE id = 1",
            params![
                i64::try_from(n).unwrap_or(i64::MAX),
                i64::try_from(bytes).unwrap_or(i64::MAX)
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n)
    }

    /// Up to `max` storm counts whose event is no longer waiting in the outbox (it was
    /// delivered before them, as the collector expects).
    pub(crate) fn ready_counts(&self, max: usize) -> Result<Vec<CountRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, event_id, count, start, \"end\" FROM counts
                 WHERE event_id NOT IN (SELECT event_id FROM events) LIMIT ?1",
            )
            .map_err(|e| self.write_error(e))?;
        let rows = stmt
            .query_map([i64::try_from(max).unwrap_or(i64::MAX)], |r| {
                let event_id: String = r.get(1)?;
                let count: i64 = r.get(2)?;
                Ok((
                    r.get::<_, String>(0)?,
                    event_id,
                    count,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .map_err(|e| self.write_error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, event_id, count, start, end) = row.map_err(|e| self.write_error(e))?;
            // A row this agent did not write (another version) is skipped, not fatal.
            let Ok(event_id) = event_id.parse() else {
                continue;
            };
            out.push(CountRecord {
                id,
                event_id,
                count: u64::try_from(count).unwrap_or(0),
                start,
                end,
            });
        }
        Ok(out)
    }

    /// Deletes counts the server confirmed; with `dropped`, records their occurrences
    /// as discards with that reason.
    pub(crate) fn delete_counts(
        &mut self,
        counts: &[CountRecord],
        dropped: Option<&'static str>,
    ) -> Result<(), StoreError> {
        let err = write_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut lost = 0;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM counts WHERE id = ?1")
                .map_err(err)?;
            for c in counts {
                if delete.execute([&c.id]).map_err(err)? > 0 {
                    lost += c.count;
                }
            }
        }
        if let Some(reason) = dropped
            && lost > 0
        {
            let mut d = Discards::new();
            d.insert((reason, "error"), lost);
            add_discards(&tx, &d).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// The discard counters, to send as a client report.
    pub(crate) fn discards(&self) -> Result<Vec<DiscardRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT reason, category, quantity FROM discards WHERE quantity > 0
                 ORDER BY reason, category",
            )
            .map_err(|e| self.write_error(e))?;
        let rows = stmt
            .query_map([], |r| {
                let q: i64 = r.get(2)?;
                Ok(DiscardRow {
                    reason: r.get(0)?,
                    category: r.get(1)?,
                    quantity: u64::try_from(q).unwrap_or(0),
                })
            })
            .map_err(|e| self.write_error(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.write_error(e))
    }

    /// Lowers the discard counters by what a confirmed client report carried (writers
    /// may have added more meanwhile); rows that reach zero go.
    pub(crate) fn subtract_discards(&mut self, sent: &[DiscardRow]) -> Result<(), StoreError> {
        let err = write_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE discards SET quantity = max(quantity - ?3, 0)
                     WHERE reason = ?1 AND category = ?2",
                )
                .map_err(err)?;
            for d in sent {
                update
                    .execute(params![
                        d.reason,
                        d.category,
                        i64::try_from(d.quantity).unwrap_or(i64::MAX)
                    ])
                    .map_err(err)?;
            }
        }
        tx.execute("DELETE FROM discards WHERE quantity <= 0", [])
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// What waits to be shipped: events (from the totals), counts, discard rows.
    pub(crate) fn depth(&self) -> Result<Depth, StoreError> {
        let (events, _) = totals(&self.conn).map_err(|e| self.write_error(e))?;
        let (counts, discards, sessions): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM counts),
                        (SELECT count(*) FROM discards WHERE quantity > 0),
                        (SELECT count(*) FROM session_updates)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.write_error(e))?;
        Ok(Depth {
            events,
            counts: u64::try_from(counts).unwrap_or(0),
            discards: u64::try_from(discards).unwrap_or(0),
            sessions: u64::try_from(sessions).unwrap_or(0),
        })
    }
}

/// A session of a run that has not ended it (this run's, or one that died).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OpenSession {
    pub(crate) sid: String,
    pub(crate) run_id: String,
    pub(crate) started: f64,
    pub(crate) errors: u64,
    pub(crate) panicked: bool,
    pub(crate) release: String,
    pub(crate) environment: Option<String>,
}

/// Session updates kept at most; the oldest go first.
const MAX_SESSION_UPDATES: i64 = 1000;
/// Open sessions kept at most (many runs dying before any could close theirs).
const MAX_OPEN_SESSIONS: i64 = 100;

/// Release health (`session.rs`): open sessions and the updates waiting to ship.
impl SqliteStore {
    /// The sessions no run has ended, oldest first.
    pub(crate) fn open_sessions(&self) -> Result<Vec<OpenSession>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT sid, run_id, started, errors, panicked, release, environment
                 FROM open_sessions ORDER BY started",
            )
            .map_err(|e| self.write_error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OpenSession {
                    sid: r.get(0)?,
                    run_id: r.get(1)?,
                    started: r.get(2)?,
                    errors: r.get::<_, i64>(3)?.unsigned_abs(),
                    panicked: r.get::<_, i64>(4)? != 0,
                    release: r.get(5)?,
                    environment: r.get(6)?,
                })
            })
            .map_err(|e| self.write_error(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.write_error(e))?;
        Ok(rows)
    }

    /// In one transaction: ends the sessions `closed` (their final updates queued), and,
    /// with `open`, opens that one with its first update. Keeps both tables bounded.
    pub(crate) fn session_changes(
        &mut self,
        closed: &[(String, Vec<u8>)],
        open: Option<(&OpenSession, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let err = write_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut queue = tx
                .prepare_cached("INSERT INTO session_updates (payload) VALUES (?1)")
                .map_err(err)?;
            let mut close = tx
                .prepare_cached("DELETE FROM open_sessions WHERE sid = ?1")
                .map_err(err)?;
            for (sid, payload) in closed {
                close.execute([sid]).map_err(err)?;
                queue.execute([payload]).map_err(err)?;
            }
            if let Some((s, payload)) = open {
                tx.execute(
                    "INSERT OR REPLACE INTO open_sessions (sid, run_id, started, errors, panicked, release, environment)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        s.sid,
                        s.run_id,
                        s.started,
                        i64::try_from(s.errors).unwrap_or(i64::MAX),
                        i64::from(s.panicked),
                        s.release,
                        s.environment
                    ],
                )
                .map_err(err)?;
                queue.execute([payload]).map_err(err)?;
            }
        }
        tx.execute(
            "DELETE FROM session_updates WHERE id <= (SELECT max(id) FROM session_updates) - ?1",
            [MAX_SESSION_UPDATES],
        )
        .map_err(err)?;
        tx.execute(
            "DELETE FROM open_sessions WHERE sid NOT IN
                (SELECT sid FROM open_sessions ORDER BY started DESC LIMIT ?1)",
            [MAX_OPEN_SESSIONS],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Notes an open session's error count and whether a panic was recorded, and queues
    /// `update` (the first error's) in the same transaction.
    pub(crate) fn note_session(
        &mut self,
        sid: &str,
        errors: u64,
        panicked: bool,
        update: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let err = write_err(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "UPDATE open_sessions SET errors = ?2, panicked = ?3 WHERE sid = ?1",
            params![
                sid,
                i64::try_from(errors).unwrap_or(i64::MAX),
                i64::from(panicked)
            ],
        )
        .map_err(err)?;
        if let Some(payload) = update {
            tx.execute(
                "INSERT INTO session_updates (payload) VALUES (?1)",
                [payload],
            )
            .map_err(err)?;
            tx.execute(
                "DELETE FROM session_updates WHERE id <= (SELECT max(id) FROM session_updates) - ?1",
                [MAX_SESSION_UPDATES],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// This installation's distinct id for release health (`did`): 32 random hex digits
    /// made by the first run and kept in `meta`, so every run of one installation (every
    /// process sharing this outbox) reports the same one.
    pub(crate) fn install_id(&mut self) -> Result<String, StoreError> {
        let err = write_err(&self.path);
        let fresh = crate::rand::uuid_v4().simple().to_string();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('install_id', ?1)",
                [fresh],
            )
            .map_err(err)?;
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'install_id'", [], |r| {
                r.get(0)
            })
            .map_err(err)
    }

    /// Up to `max` session updates, oldest first: `(rowid, payload)`.
    pub(crate) fn pending_session_updates(
        &self,
        max: usize,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, payload FROM session_updates ORDER BY id LIMIT ?1")
            .map_err(|e| self.write_error(e))?;
        let rows = stmt
            .query_map([i64::try_from(max).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.write_error(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.write_error(e))?;
        Ok(rows)
    }

    /// Deletes shipped (or refused) session updates.
    pub(crate) fn delete_session_updates(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let err = write_err(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM session_updates WHERE id = ?1")
                .map_err(err)?;
            for id in ids {
                stmt.execute([id]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(())
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (idx, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let number = idx + 1;
        let err = |source| StoreError::Migrate {
            path: path.to_owned(),
            version: number,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if usize::try_from(now).unwrap_or(0) >= number {
            continue;
        }
        tx.execute_batch(sql).map_err(err)?;
        // PRAGMA takes no parameters; `number` is our own constant index.
        tx.execute_batch(&format!("PRAGMA user_version = {number}"))
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

/// The number of stored events and their bytes, as the writers keep them.
fn totals(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let (rows, bytes): (i64, i64) =
        conn.query_row("SELECT events, bytes FROM totals WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok((
        u64::try_from(rows).unwrap_or(0),
        u64::try_from(bytes).unwrap_or(0),
    ))
}

/// Deletes the oldest events until the bounds hold. Returns (events, bytes, occurrences
/// of counts that referenced them).
fn evict(
    tx: &rusqlite::Transaction<'_>,
    rows: u64,
    bytes: u64,
    bounds: Bounds,
) -> rusqlite::Result<(u64, u64, u64)> {
    if rows <= bounds.max_events && bytes <= bounds.max_bytes {
        return Ok((0, 0, 0));
    }
    let mut stmt = tx.prepare_cached("SELECT id, size FROM events ORDER BY id")?;
    let mut iter = stmt.query([])?;
    let (mut n, mut freed, mut last_id) = (0u64, 0u64, None::<i64>);
    while rows.saturating_sub(n) > bounds.max_events
        || bytes.saturating_sub(freed) > bounds.max_bytes
    {
        let Some(row) = iter.next()? else { break };
        let id: i64 = row.get(0)?;
        let size: i64 = row.get(1)?;
        n += 1;
        freed += u64::try_from(size).unwrap_or(0);
        last_id = Some(id);
    }
    drop(iter);
    let Some(last_id) = last_id else {
        return Ok((0, 0, 0));
    };
    let lost: i64 = tx
        .query_row(
            "SELECT coalesce(sum(count), 0) FROM counts WHERE event_id IN
             (SELECT event_id FROM events WHERE id <= ?1)",
            [last_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    tx.execute(
        "DELETE FROM counts WHERE event_id IN (SELECT event_id FROM events WHERE id <= ?1)",
        [last_id],
    )?;
    tx.execute("DELETE FROM events WHERE id <= ?1", [last_id])?;
    Ok((n, freed, u64::try_from(lost).unwrap_or(0)))
}

fn add_discards(tx: &rusqlite::Transaction<'_>, discards: &Discards) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO discards (reason, category, quantity) VALUES (?1, ?2, ?3)
         ON CONFLICT (reason, category) DO UPDATE SET quantity = quantity + excluded.quantity",
    )?;
    for ((reason, category), qty) in discards {
        if *qty > 0 {
            stmt.execute(params![
                reason,
                category,
                i64::try_from(*qty).unwrap_or(i64::MAX)
            ])?;
        }
    }
    Ok(())
}

/// The in-memory fallback: bounded like the file, lost at exit.
#[derive(Default)]
pub(crate) struct MemoryStore {
    events: VecDeque<Row>,
    bytes: u64,
    pub(crate) counts: Vec<CountRecord>,
    pub(crate) discards: Discards,
}

impl MemoryStore {
    pub(crate) fn write(
        &mut self,
        rows: Vec<Row>,
        counts: Vec<CountRecord>,
        discards: &Discards,
        bounds: Bounds,
    ) -> WriteOutcome {
        let mut outcome = WriteOutcome::default();
        for row in rows {
            self.bytes += row.payload.len() as u64;
            self.events.push_back(row);
            outcome.stored += 1;
        }
        self.counts.extend(counts);
        for (k, v) in discards {
            *self.discards.entry(*k).or_default() += v;
        }
        while self.events.len() as u64 > bounds.max_events || self.bytes > bounds.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(old.payload.len() as u64);
            let mut lost = 0;
            self.counts.retain(|c| {
                let keep = c.event_id.to_string() != old.event_id;
                if !keep {
                    lost += c.count;
                }
                keep
            });
            outcome.evicted += 1;
            *self
                .discards
                .entry(("cache_overflow", "error"))
                .or_default() += 1 + lost;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    fn row(i: usize, size: usize) -> Row {
        Row {
            event_id: format!("{i:032x}"),
            created_at: i as f64,
            payload: vec![b'x'; size],
        }
    }

    fn count_rows(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    }

    /// Polls `f` for up to 30 s.
    fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_checkpointer_moves_the_wal_into_the_file_and_keeps_it_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let wal = dir.path().join("outbox.db-wal");
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let bounds = Bounds {
            max_events: 1_000_000,
            max_bytes: 1 << 30,
        };
        let mut store = SqliteStore::open(&path, bounds, false).expect("open");
        store.checkpoint_in_background().expect("checkpointer");
        // Ten rounds of a little more than one checkpoint's worth: without checkpoints
        // the WAL would hold all 44 MB and the database file none of it.
        let per_round = (CHECKPOINT_AFTER / 2000 + 100) as usize;
        let mut next = 0;
        for round in 1..=10u64 {
            let rows: Vec<_> = (next..next + per_round).map(|i| row(i, 2000)).collect();
            next += per_round;
            store.write(&rows, &[], &Discards::new()).expect("write");
            let pending = Arc::clone(&store.checkpointer.as_ref().expect("on").pending);
            eventually("the checkpoint copies the whole WAL", || {
                pending.load(Ordering::Relaxed) == 0
            });
            let expected = round * CHECKPOINT_AFTER;
            assert!(
                size(&path) >= expected,
                "round {round}: file {}",
                size(&path)
            );
            assert!(
                size(&wal) <= 3 * CHECKPOINT_AFTER,
                "round {round}: WAL {} bytes",
                size(&wal)
            );
        }
        assert_eq!(count_rows(&store.conn, "events"), next as i64);
        // Every committed row is readable from a fresh connection too.
        drop(store);
        let conn = Connection::open(&path).expect("reopen");
        assert_eq!(count_rows(&conn, "events"), next as i64);
    }

    #[test]
    fn without_the_checkpointer_the_wal_grows_until_sqlite_checkpoints() {
        // The contrast to the test above: the file grows on commit here, not later.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let bounds = Bounds {
            max_events: 1_000_000,
            max_bytes: 1 << 30,
        };
        let mut store = SqliteStore::open(&path, bounds, false).expect("open");
        let rows: Vec<_> = (0..3000).map(|i| row(i, 2000)).collect();
        store.write(&rows, &[], &Discards::new()).expect("write");
        let file = std::fs::metadata(&path).expect("file").len();
        assert!(file >= 3000 * 2000, "the commit checkpointed: {file} bytes");
    }

    #[test]
    fn migrates_writes_and_evicts_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/outbox.db");
        let bounds = Bounds {
            max_events: 10,
            max_bytes: 1_000_000,
        };
        let mut store = SqliteStore::open(&path, bounds, false).expect("open");
        let rows: Vec<_> = (0..25).map(|i| row(i, 100)).collect();
        let counts = vec![CountRecord {
            id: "c".repeat(32),
            event_id: format!("{:032x}", 3).parse::<EventId>().expect("id"),
            count: 7,
            start: 1.0,
            end: 2.0,
        }];
        let out = store
            .write(&rows, &counts, &Discards::new())
            .expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                stored: 25,
                evicted: 15
            }
        );
        let conn = Connection::open(&path).expect("reopen");
        assert_eq!(count_rows(&conn, "events"), 10);
        assert_eq!(
            count_rows(&conn, "counts"),
            0,
            "count of an evicted event goes"
        );
        let oldest: String = conn
            .query_row("SELECT event_id FROM events ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .expect("oldest");
        assert_eq!(oldest, format!("{:032x}", 15));
        let lost: i64 = conn
            .query_row(
                "SELECT quantity FROM discards WHERE reason = 'cache_overflow'",
                [],
                |r| r.get(0),
            )
            .expect("discards");
        assert_eq!(lost, 15 + 7);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        let agent: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'agent_version'",
                [],
                |r| r.get(0),
            )
            .expect("meta");
        assert_eq!(agent, env!("CARGO_PKG_VERSION"));
        drop(store);
        // Reopening keeps the data and the running totals.
        let mut again = SqliteStore::open(
            &path,
            Bounds {
                max_events: 10,
                max_bytes: 1450,
            },
            false,
        )
        .expect("reopen store");
        assert_eq!(totals(&again.conn).expect("totals"), (10, 1000));
        let out = again
            .write(&[row(100, 600)], &[], &Discards::new())
            .expect("write");
        assert_eq!(
            out.evicted, 2,
            "bytes bound: 1600 > 1450 until two old rows go"
        );
    }

    #[test]
    fn two_writers_on_one_file_keep_its_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shared.db");
        let bounds = Bounds {
            max_events: 10,
            max_bytes: 1_000_000,
        };
        let mut a = SqliteStore::open(&path, bounds, false).expect("open a");
        let mut b = SqliteStore::open(&path, bounds, false).expect("open b");
        for i in 0..8 {
            a.write(&[row(i, 10)], &[], &Discards::new())
                .expect("write a");
            b.write(&[row(100 + i, 10)], &[], &Discards::new())
                .expect("write b");
        }
        let conn = Connection::open(&path).expect("reopen");
        assert_eq!(count_rows(&conn, "events"), 10);
    }

    #[test]
    fn the_memory_fallback_is_bounded_too() {
        let mut memory = MemoryStore::default();
        let bounds = Bounds {
            max_events: 3,
            max_bytes: 1_000_000,
        };
        let first = row(0, 10);
        let counts = vec![CountRecord {
            id: "c".repeat(32),
            event_id: first.event_id.parse::<EventId>().expect("id"),
            count: 4,
            start: 1.0,
            end: 2.0,
        }];
        let rows: Vec<_> = (0..5).map(|i| row(i, 10)).collect();
        let out = memory.write(rows, counts, &Discards::new(), bounds);
        assert_eq!(
            out,
            WriteOutcome {
                stored: 5,
                evicted: 2
            }
        );
        assert_eq!(memory.events.len(), 3);
        assert!(
            memory.counts.is_empty(),
            "the evicted event's count goes with it"
        );
        assert_eq!(
            memory.discards.get(&("cache_overflow", "error")),
            Some(&(2 + 4))
        );
    }

    #[test]
    fn corrupt_file_fails_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.db");
        std::fs::write(&path, vec![0x5a; 8192]).expect("write garbage");
        let err = SqliteStore::open(
            &path,
            Bounds {
                max_events: 1,
                max_bytes: 1,
            },
            false,
        );
        assert!(
            matches!(err, Err(StoreError::Open { .. })),
            "{:?}",
            err.err()
        );
    }
}
