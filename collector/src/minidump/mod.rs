//! Minidumps (Breakpad, Crashpad, sentry-native, Electron): processed into native events
//! with rust-minidump under global bounds, and the raw dumps kept within a disk budget.
//!
//! [`Minidumps`] is the handle (`state.minidumps`): [`Minidumps::process`] turns a dump
//! into event fields ([`process`]) on at most [`MinidumpConfig::workers`] blocking threads
//! at once, each under a deadline; [`Minidumps::keep`] writes the dump under
//! `<data>/minidumps/<project>/<event id>.dmp` and indexes it through the store, dropping
//! the oldest dumps past [`MinidumpConfig::disk_bytes`]; [`Minidumps::sweep`] (every
//! minute, [`spawn_sweeper`]) removes the dumps whose event the store no longer has
//! (retention, the per-issue sample cap). Ingestion (`ingest::minidump`) calls these; the
//! API serves the kept dump ([`api`]).

pub mod api;
pub mod process;
pub mod symbols;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use sha1::Digest as _;

use crate::store::{MinidumpRow, Store, StoreError};
use crate::symbolicate::DebugFileLookup;
use process::Bounds;
use symbols::SymbolFiles;

/// How minidumps are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinidumpConfig {
    /// The largest dump accepted, in bytes (`--minidump-max-mb`).
    pub max_bytes: usize,
    /// Bytes of kept dumps on disk; the oldest go first (`--minidumps-disk-mb`).
    pub disk_bytes: u64,
    /// Dumps processed at once, over all requests (`--minidump-workers`).
    pub workers: usize,
    /// Wall time one processing may take (`--minidump-timeout-secs`).
    pub timeout: Duration,
    /// How long a dump waits for a free worker before its upload is answered 503 with
    /// `Retry-After` (10 s).
    pub queue_wait: Duration,
    /// Threads kept in an event.
    pub threads: usize,
    /// Frames kept per thread.
    pub frames: usize,
    /// Bytes of Breakpad `.sym` files whose parsed form is kept between dumps (parsed,
    /// a file takes a few times its size); the least recently used go first.
    pub symbol_cache_bytes: u64,
}

impl Default for MinidumpConfig {
    fn default() -> Self {
        MinidumpConfig {
            max_bytes: 16 << 20,
            disk_bytes: 1 << 30,
            workers: 2,
            timeout: Duration::from_secs(20),
            queue_wait: Duration::from_secs(10),
            threads: 64,
            frames: 256,
            symbol_cache_bytes: 256 << 20,
        }
    }
}

/// The largest Breakpad symbol file parsed for a stackwalk (parsed, it takes a few times
/// its size in memory, per processing).
const SYM_BYTES: u64 = 64 << 20;

/// Why a dump could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum MinidumpError {
    /// Zero bytes (400).
    #[error("the minidump is empty (0 bytes)")]
    Empty,
    /// Not a minidump at all (400).
    #[error(
        "not a minidump: the file does not start with the `MDMP` signature ({0} bytes received)"
    )]
    NotMinidump(usize),
    /// Over the size cap (413).
    #[error("the minidump has more than {0} bytes (--minidump-max-mb)")]
    TooLarge(usize),
    /// Every processing slot stayed taken (503).
    #[error("too many minidumps are being processed; retry in a moment")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be written or read.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The processing thread failed.
    #[error("minidump processing failed: {0}")]
    Task(String),
}

/// What processing made of a dump.
#[derive(Debug)]
pub enum Outcome {
    /// Event fields (`exception`, `threads`, `debug_meta`, `contexts`, ...).
    Processed(Map<String, Value>),
    /// The dump could not be processed; the reason, for an "unprocessable minidump" event.
    Unprocessable(String),
}

/// The minidumps' handle. Cheap to clone.
#[derive(Clone)]
pub struct Minidumps(Arc<Shared>);

struct Shared {
    config: MinidumpConfig,
    dir: PathBuf,
    store: Arc<dyn Store>,
    lookup: Arc<dyn DebugFileLookup>,
    symbols: Arc<SymbolFiles>,
    workers: Arc<tokio::sync::Semaphore>,
    /// Dumps being processed now, and the most there ever were at once.
    busy: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// Counts one processing in `busy` (and `peak`) while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn start(busy: &Arc<AtomicUsize>, peak: &AtomicUsize) -> Busy {
        let now = busy.fetch_add(1, Ordering::AcqRel) + 1;
        peak.fetch_max(now, Ordering::AcqRel);
        Busy(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often [`spawn_sweeper`] removes the dumps of events that are gone.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Index rows one sweep step removes.
const SWEEP_BATCH: i64 = 500;

/// Every [`SWEEP_EVERY`], removes the dumps whose event is gone (see [`Minidumps::sweep`]).
pub fn spawn_sweeper(minidumps: &Minidumps) {
    let m = minidumps.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = m.sweep().await {
                tracing::warn!("minidumps: cannot remove the dumps of pruned events: {e}");
            }
        }
    });
}

impl std::fmt::Debug for Minidumps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minidumps")
            .field("dir", &self.0.dir)
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

/// Whether `bytes` start like a minidump (`MDMP`, either byte order).
pub fn has_signature(bytes: &[u8]) -> bool {
    bytes.starts_with(b"MDMP") || bytes.starts_with(b"PMDM")
}

impl Minidumps {
    /// The handle over `<data_dir>/minidumps/`, finding `.sym` files through `lookup`.
    pub fn open(
        data_dir: &Path,
        config: MinidumpConfig,
        store: Arc<dyn Store>,
        lookup: Arc<dyn DebugFileLookup>,
    ) -> Result<Minidumps, MinidumpError> {
        let dir = data_dir.join("minidumps");
        std::fs::create_dir_all(&dir).map_err(|e| MinidumpError::Io(dir.clone(), e))?;
        Ok(Minidumps(Arc::new(Shared {
            workers: Arc::new(tokio::sync::Semaphore::new(config.workers.max(1))),
            busy: Arc::default(),
            peak: Arc::default(),
            symbols: Arc::new(SymbolFiles::new(config.symbol_cache_bytes)),
            config,
            dir,
            store,
            lookup,
        })))
    }

    /// The parsed Breakpad symbol files kept between dumps.
    pub fn symbol_files(&self) -> Arc<SymbolFiles> {
        self.0.symbols.clone()
    }

    /// The configured bounds.
    pub fn config(&self) -> &MinidumpConfig {
        &self.0.config
    }

    /// Checks a dump before it is processed: empty, not a minidump, over the cap.
    pub fn check(&self, bytes: &[u8]) -> Result<(), MinidumpError> {
        if bytes.is_empty() {
            return Err(MinidumpError::Empty);
        }
        if bytes.len() > self.0.config.max_bytes {
            return Err(MinidumpError::TooLarge(self.0.config.max_bytes));
        }
        if !has_signature(bytes) {
            return Err(MinidumpError::NotMinidump(bytes.len()));
        }
        Ok(())
    }

    /// The most dumps that were ever processed at once (at most
    /// [`MinidumpConfig::workers`]).
    pub fn peak_processing(&self) -> usize {
        self.0.peak.load(Ordering::Acquire)
    }

    /// Processes a checked dump on a blocking thread, one of at most
    /// [`MinidumpConfig::workers`] at once (waiting up to
    /// [`MinidumpConfig::queue_wait`] for one, else [`MinidumpError::Busy`]), under the
    /// deadline. A dump the processor cannot read is [`Outcome::Unprocessable`].
    pub async fn process(&self, bytes: Arc<Vec<u8>>) -> Result<Outcome, MinidumpError> {
        let permit = tokio::time::timeout(
            self.0.config.queue_wait,
            self.0.workers.clone().acquire_owned(),
        )
        .await
        .map_err(|_| MinidumpError::Busy)?
        .map_err(|_| MinidumpError::Busy)?;
        let c = self.0.config;
        let bounds = Bounds {
            timeout: c.timeout,
            threads: c.threads,
            frames: c.frames,
            sym_bytes: SYM_BYTES,
        };
        let lookup = self.0.lookup.clone();
        let symbols = self.0.symbols.clone();
        let rt = tokio::runtime::Handle::current();
        let busy = Busy::start(&self.0.busy, &self.0.peak);
        let done = tokio::task::spawn_blocking(move || {
            // The permit is held until the processing has really ended.
            let _permit = permit;
            let _busy = busy;
            process::process(&bytes, lookup, symbols, bounds, &rt)
        })
        .await
        .map_err(|e| MinidumpError::Task(e.to_string()))?;
        Ok(match done {
            Ok(fields) => Outcome::Processed(fields),
            Err(e) => Outcome::Unprocessable(e.to_string()),
        })
    }

    fn path_of(&self, project_id: i64, event_id: &str) -> PathBuf {
        self.0
            .dir
            .join(project_id.to_string())
            .join(format!("{event_id}.dmp"))
    }

    /// Keeps a dump of an event: writes the file, indexes it, removes the dumps dropped
    /// past the disk budget. A dump larger than the whole budget is not kept.
    pub async fn keep(
        &self,
        project_id: i64,
        event_id: &str,
        name: &str,
        bytes: Arc<Vec<u8>>,
        received: i64,
    ) -> Result<bool, MinidumpError> {
        let budget = self.0.config.disk_bytes;
        if bytes.len() as u64 > budget {
            return Ok(false);
        }
        let path = self.path_of(project_id, event_id);
        let p = path.clone();
        let data = bytes.clone();
        let checksum = tokio::task::spawn_blocking(move || -> Result<String, MinidumpError> {
            let dir = p.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| MinidumpError::Io(dir.to_owned(), e))?;
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, &*data).map_err(|e| MinidumpError::Io(tmp.clone(), e))?;
            std::fs::rename(&tmp, &p).map_err(|e| MinidumpError::Io(p.clone(), e))?;
            Ok(crate::difs::hex(&sha1::Sha1::digest(&*data)))
        })
        .await
        .map_err(|e| MinidumpError::Task(e.to_string()))??;
        let row = MinidumpRow {
            project_id,
            event_id: event_id.to_owned(),
            size: bytes.len() as i64,
            checksum,
            name: clean_name(name),
            received,
        };
        let dropped = match self.0.store.insert_minidump(row, budget).await {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        };
        for old in dropped {
            tracing::info!(
                "minidumps: dropped the dump of event {} ({} bytes, the oldest) to stay within {budget} bytes",
                old.event_id,
                old.size
            );
            let _ = std::fs::remove_file(self.path_of(old.project_id, &old.event_id));
        }
        Ok(true)
    }

    /// Removes the dumps whose event the store no longer has (past retention, dropped by
    /// the per-issue sample cap): their index rows, then their files. Returns how many.
    pub async fn sweep(&self) -> Result<usize, MinidumpError> {
        let mut removed = 0;
        loop {
            let rows = self.0.store.take_orphan_minidumps(SWEEP_BATCH).await?;
            let n = rows.len();
            let paths: Vec<PathBuf> = rows
                .iter()
                .map(|r| self.path_of(r.project_id, &r.event_id))
                .collect();
            tokio::task::spawn_blocking(move || {
                for p in paths {
                    let _ = std::fs::remove_file(p);
                }
            })
            .await
            .map_err(|e| MinidumpError::Task(e.to_string()))?;
            removed += n;
            if (n as i64) < SWEEP_BATCH {
                break;
            }
        }
        if removed > 0 {
            tracing::info!("minidumps: removed {removed} dumps whose events were pruned");
        }
        Ok(removed)
    }

    /// The kept dump of an event: its index row and bytes.
    pub async fn get(
        &self,
        project_id: i64,
        event_id: &str,
    ) -> Result<Option<(MinidumpRow, Vec<u8>)>, MinidumpError> {
        let Some(row) = self.0.store.minidump(project_id, event_id).await? else {
            return Ok(None);
        };
        let path = self.path_of(project_id, &row.event_id);
        let read = tokio::task::spawn_blocking(move || (std::fs::read(&path), path))
            .await
            .map_err(|e| MinidumpError::Task(e.to_string()))?;
        match read {
            (Ok(bytes), _) => Ok(Some((row, bytes))),
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            (Err(e), path) => Err(MinidumpError::Io(path, e)),
        }
    }
}

/// A file name fit for a header: the base name, printable ASCII, at most 100 characters.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let s: String = base
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != ';')
        .take(100)
        .collect();
    if s.is_empty() {
        "minidump.dmp".into()
    } else {
        s
    }
}
