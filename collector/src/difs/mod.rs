//! Debug information files: upload (sentry-cli's chunked protocol, multipart, the CLI),
//! storage under `<data>/difs/` with an index in SQLite, LRU eviction, and lookup.
//!
//! [`Difs`] is the handle the rest of the collector uses (`state.difs`): symbolication
//! asks it for the file of an image ([`Difs::find`], [`Difs::find_sources`]) from an
//! in-memory index, never from SQLite or the disk on the hot path, and hears about new
//! files with [`Difs::subscribe`]. Uploads made by another process on the same data dir
//! (`errscope-collector debug-files upload`) are seen within a second.

pub mod api;
pub mod chunks;
pub mod inspect;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use sha1::Digest as _;

use self::chunks::Chunks;
use crate::store::{DifRow, Store, StoreError};
use crate::time::now_ms;

/// The container format of a debug file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DifKind {
    /// An ELF executable, library or debug companion (`objcopy --only-keep-debug`).
    Elf,
    /// Breakpad text symbols (`dump_syms`).
    Breakpad,
    /// A source bundle (`sentry-cli debug-files upload --include-sources`).
    SourceBundle,
}

impl DifKind {
    /// The name stored and shown: `elf`, `breakpad`, `sourcebundle`.
    pub fn as_str(self) -> &'static str {
        match self {
            DifKind::Elf => "elf",
            DifKind::Breakpad => "breakpad",
            DifKind::SourceBundle => "sourcebundle",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<DifKind> {
        Some(match s {
            "elf" => DifKind::Elf,
            "breakpad" => DifKind::Breakpad,
            "sourcebundle" => DifKind::SourceBundle,
            _ => return None,
        })
    }
}

impl fmt::Display for DifKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DifKind::Elf => "ELF",
            DifKind::Breakpad => "Breakpad",
            DifKind::SourceBundle => "source bundle",
        })
    }
}

/// What a debug file can be used for (Sentry's feature names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Features {
    /// A symbol table: function names.
    pub symtab: bool,
    /// Debug information: files, lines, inlined functions.
    pub debug: bool,
    /// Unwind information.
    pub unwind: bool,
    /// Source code.
    pub sources: bool,
}

impl Features {
    /// The names of the features present, in Sentry's order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.symtab, "symtab"),
            (self.debug, "debug"),
            (self.unwind, "unwind"),
            (self.sources, "sources"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect()
    }

    /// Parses a comma-separated list of feature names.
    pub fn parse(s: &str) -> Features {
        let mut f = Features::default();
        for n in s.split(',') {
            match n.trim() {
                "symtab" => f.symtab = true,
                "debug" => f.debug = true,
                "unwind" => f.unwind = true,
                "sources" => f.sources = true,
                _ => {}
            }
        }
        f
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// What can go wrong storing or reading debug files.
#[derive(Debug, thiserror::Error)]
pub enum DifError {
    /// The file is not a usable debug file (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The file is larger than the whole budget.
    #[error(
        "the file has {size} bytes, more than the debug files' budget of {budget} bytes (--difs-max-mb)"
    )]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The budget.
        budget: u64,
    },
    /// The chunk staging area is full.
    #[error("the chunk staging area is full ({0} bytes); retry once pending uploads are assembled")]
    StagingFull(u64),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The best debug file for an image, from [`Difs::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifMatch {
    /// The file's row id (for [`Difs::mark_used`]).
    pub id: i64,
    /// Where the file is.
    pub path: PathBuf,
    /// Its format.
    pub kind: DifKind,
    /// Whether it has debug information (files and lines), not only a symbol table.
    pub has_debug_info: bool,
    /// Whether it embeds source code.
    pub has_sources: bool,
}

/// Sent by [`Difs::subscribe`] when a debug file arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDif {
    /// The new file's debug id.
    pub debug_id: String,
    /// Its code id, if it has one.
    pub code_id: Option<String>,
}

/// Called with the debug id of each file that entered or left the index (uploaded,
/// deleted or evicted, on this node or on another one sharing the store), once the index
/// says so.
pub type OnChange = Box<dyn Fn(&str) + Send + Sync>;

/// An entry of the in-memory index.
#[derive(Debug)]
struct Entry {
    row: DifRow,
    last_used: AtomicI64,
}

#[derive(Debug, Default)]
struct Index {
    version: i64,
    by_id: HashMap<i64, Arc<Entry>>,
    by_debug_id: HashMap<String, Vec<Arc<Entry>>>,
    by_code_id: HashMap<String, Vec<Arc<Entry>>>,
}

impl Index {
    fn build(rows: Vec<DifRow>, version: i64, old: &Index) -> Index {
        let mut ix = Index {
            version,
            ..Index::default()
        };
        for row in rows {
            let used = old
                .by_id
                .get(&row.id)
                .map_or(0, |e| e.last_used.load(Relaxed))
                .max(row.last_used.unwrap_or(0));
            let e = Arc::new(Entry {
                row,
                last_used: AtomicI64::new(used),
            });
            ix.by_debug_id
                .entry(e.row.debug_id.clone())
                .or_default()
                .push(e.clone());
            if let Some(c) = &e.row.code_id {
                ix.by_code_id.entry(c.clone()).or_default().push(e.clone());
            }
            ix.by_id.insert(e.row.id, e);
        }
        ix
    }
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    store: Arc<dyn Store>,
    /// Runs the store's futures for the blocking methods (called off the async threads).
    rt: tokio::runtime::Handle,
    index: RwLock<Index>,
    dirty: Mutex<HashSet<i64>>,
    chunks: Chunks,
    news: tokio::sync::broadcast::Sender<NewDif>,
    /// Told of files that entered or left the index (the caches built from them).
    changed: RwLock<Vec<OnChange>>,
    /// Uploads in flight at once (each holds a request body or an assembled file).
    uploads: tokio::sync::Semaphore,
    /// Checksums being assembled now.
    assembling: Mutex<HashSet<String>>,
    /// The index version this node's copies of the files match, when the store shares
    /// the bytes (-1: not yet compared).
    copied: AtomicI64,
    /// Held from a file's arrival under `<data>/difs/` to its row's in the index.
    files: Mutex<()>,
}

/// The debug files' store: the files under `<data>/difs/`, their index in SQLite and in
/// memory. Cheap to clone.
#[derive(Clone)]
pub struct Difs(Arc<Shared>);

impl fmt::Debug for Difs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Difs")
            .field("dir", &self.0.dir)
            .field("max_bytes", &self.0.max_bytes)
            .finish_non_exhaustive()
    }
}

/// How many uploads (chunk requests, multipart uploads, assemblies) run at once.
pub const CONCURRENT_UPLOADS: usize = 4;

/// Normalizes a debug id as the index keeps it (`uuid` or `uuid-age`, lower case);
/// accepts the Breakpad spelling too.
pub fn normalize_debug_id(s: &str) -> Option<String> {
    let id: symbolic_common::DebugId = s.trim().parse().ok()?;
    Some(id.to_string().to_ascii_lowercase())
}

impl Difs {
    /// Opens the store of a data directory whose database is migrated. At most
    /// `max_bytes` of debug files are kept; the least recently used go first.
    pub async fn open(
        data_dir: &Path,
        max_bytes: u64,
        store: Arc<dyn Store>,
    ) -> Result<Difs, DifError> {
        let dir = data_dir.join("difs");
        for d in [dir.clone(), dir.join("tmp")] {
            std::fs::create_dir_all(&d).map_err(|e| DifError::Io(d.clone(), e))?;
        }
        let version = store.difs_version().await?;
        let index = Index::build(store.all_difs().await?, version, &Index::default());
        // Staged chunks may take as much room as a few of the largest uploads.
        let staging = (max_bytes / 2).clamp(64 << 20, 4 << 30);
        let chunks = Chunks::open(dir.join("chunks"), staging)?;
        clear_stale(&dir.join("tmp"));
        let (news, _) = tokio::sync::broadcast::channel(256);
        Ok(Difs(Arc::new(Shared {
            dir,
            max_bytes,
            store,
            rt: tokio::runtime::Handle::current(),
            index: RwLock::new(index),
            dirty: Mutex::new(HashSet::new()),
            chunks,
            news,
            changed: RwLock::new(Vec::new()),
            uploads: tokio::sync::Semaphore::new(CONCURRENT_UPLOADS),
            assembling: Mutex::new(HashSet::new()),
            copied: AtomicI64::new(-1),
            files: Mutex::new(()),
        })))
    }

    /// Starts the thread that picks up changes made by other processes (every second),
    /// writes `last_used` times (every 10 s) and sweeps stale chunks. It ends when the
    /// last handle is dropped.
    pub fn start_maintenance(&self) {
        let weak: Weak<Shared> = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(shared) = weak.upgrade() else { return };
                let difs = Difs(shared);
                tick += 1;
                let ran = tokio::task::spawn_blocking(move || {
                    if let Err(e) = difs.refresh() {
                        tracing::warn!("debug files: reloading the index failed: {e}");
                    }
                    if tick.is_multiple_of(10)
                        && let Err(e) = difs.flush_used()
                    {
                        tracing::warn!("debug files: recording last use failed: {e}");
                    }
                    if tick.is_multiple_of(300) {
                        difs.0.chunks.sweep(chunks::CHUNK_TTL);
                    }
                })
                .await;
                if ran.is_err() {
                    return;
                }
            }
        });
    }

    /// Runs a store call from a blocking method.
    fn db<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, DifError> {
        Ok(self.0.rt.block_on(f)?)
    }

    /// The best object file for an image: matching debug id (or code id), with debug
    /// information over a symbol table only, the newest first. Source bundles are not
    /// object files: see [`Difs::find_sources`].
    pub fn find(&self, debug_id: &str, code_id: Option<&str>) -> Option<DifMatch> {
        self.best(
            debug_id,
            code_id,
            |r| r.kind != DifKind::SourceBundle,
            |r| (r.features.debug, r.features.symtab, r.uploaded, r.id),
        )
    }

    /// The newest file of one kind for an image (by debug id, or code id).
    pub fn find_kind(
        &self,
        debug_id: &str,
        code_id: Option<&str>,
        kind: DifKind,
    ) -> Option<DifMatch> {
        self.best(
            debug_id,
            code_id,
            |r| r.kind == kind,
            |r| (r.uploaded, r.id),
        )
    }

    /// Of the files matching the debug id or the code id that `keep` takes, the one
    /// `rank` puts highest.
    fn best<K: Ord>(
        &self,
        debug_id: &str,
        code_id: Option<&str>,
        keep: impl Fn(&DifRow) -> bool,
        rank: impl Fn(&DifRow) -> K,
    ) -> Option<DifMatch> {
        let ix = self.0.index.read().unwrap_or_else(|e| e.into_inner());
        let by_debug = normalize_debug_id(debug_id)
            .and_then(|d| ix.by_debug_id.get(&d))
            .into_iter()
            .flatten();
        let code = code_id.map(|c| c.trim().to_ascii_lowercase());
        let by_code = code
            .as_ref()
            .and_then(|c| ix.by_code_id.get(c))
            .into_iter()
            .flatten();
        let best = by_debug
            .chain(by_code)
            .filter(|e| keep(&e.row))
            .max_by_key(|e| rank(&e.row))?;
        Some(self.matched(&best.row))
    }

    /// The source bundle of a debug id, if one was uploaded.
    pub fn find_sources(&self, debug_id: &str) -> Option<PathBuf> {
        let d = normalize_debug_id(debug_id)?;
        let ix = self.0.index.read().unwrap_or_else(|e| e.into_inner());
        ix.by_debug_id
            .get(&d)?
            .iter()
            .filter(|e| e.row.kind == DifKind::SourceBundle)
            .max_by_key(|e| (e.row.uploaded, e.row.id))
            .map(|e| self.path_of(&e.row))
    }

    /// Records that a file was used now. Cheap: memory only; the times reach the
    /// database every 10 seconds, for eviction and the list.
    pub fn mark_used(&self, id: i64) {
        let now = now_ms();
        let ix = self.0.index.read().unwrap_or_else(|e| e.into_inner());
        let Some(e) = ix.by_id.get(&id) else { return };
        // At most one dirty mark per file and second.
        if now - e.last_used.load(Relaxed) >= 1000 {
            e.last_used.store(now, Relaxed);
            self.0
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id);
        }
    }

    /// Calls `f` with the debug id of every file that enters or leaves the index from now
    /// on (uploaded, deleted or evicted, by this process or another one on the same
    /// store), before the upload or delete returns (another node's: at the refresh that
    /// sees it): for dropping what was cached about the image.
    pub fn on_change(&self, f: OnChange) {
        self.0
            .changed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    /// A receiver of every debug file stored from now on (by this process or another
    /// one on the same data dir).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<NewDif> {
        self.0.news.subscribe()
    }

    fn matched(&self, row: &DifRow) -> DifMatch {
        DifMatch {
            id: row.id,
            path: self.path_of(row),
            kind: row.kind,
            has_debug_info: row.features.debug,
            has_sources: row.features.sources,
        }
    }

    fn path_of(&self, row: &DifRow) -> PathBuf {
        self.0
            .dir
            .join(row.project_id.to_string())
            .join(&row.checksum)
    }

    /// The configured budget, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.0.max_bytes
    }

    /// The staged chunks of chunked uploads.
    pub fn chunks(&self) -> &Chunks {
        &self.0.chunks
    }

    /// Every stored file (of one project, or all), newest first, with the last-use
    /// times known in memory.
    pub fn list(&self, project_id: Option<i64>) -> Vec<DifRow> {
        let ix = self.0.index.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<DifRow> = ix
            .by_id
            .values()
            .filter(|e| project_id.is_none_or(|p| e.row.project_id == p))
            .map(|e| {
                let mut r = e.row.clone();
                let used = e.last_used.load(Relaxed);
                r.last_used = (used > 0).then_some(used);
                r
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.id));
        rows
    }

    /// One stored file.
    pub fn get(&self, id: i64) -> Option<DifRow> {
        self.list(None).into_iter().find(|r| r.id == id)
    }

    /// The file of a project with this checksum, if stored.
    pub fn by_checksum(&self, project_id: i64, checksum: &str) -> Option<DifRow> {
        let ix = self.0.index.read().unwrap_or_else(|e| e.into_inner());
        ix.by_id
            .values()
            .find(|e| e.row.project_id == project_id && e.row.checksum == checksum)
            .map(|e| e.row.clone())
    }

    /// A new temporary file under `<data>/difs/tmp/`, removed when dropped.
    pub fn temp_file(&self) -> Result<TempFile, DifError> {
        let path = self.0.dir.join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            crate::state::random_secret()
        ));
        let file = std::fs::File::create(&path).map_err(|e| DifError::Io(path.clone(), e))?;
        Ok(TempFile {
            path,
            file: Some(file),
            kept: false,
        })
    }

    /// Stores `data` as a debug file of a project (blocking; call off the async threads).
    pub fn add_bytes(&self, project_id: i64, name: &str, data: &[u8]) -> Result<DifRow, DifError> {
        let mut tmp = self.temp_file()?;
        tmp.write_all(data)?;
        let checksum = hex(&sha1::Sha1::digest(data));
        self.add_file(project_id, name, tmp, &checksum)
    }

    /// Stores a copy of the file at `path` (streamed, never held in memory whole).
    /// Blocking.
    pub fn add_path(&self, project_id: i64, name: &str, path: &Path) -> Result<DifRow, DifError> {
        let mut src = std::fs::File::open(path).map_err(|e| DifError::Io(path.to_owned(), e))?;
        let mut tmp = self.temp_file()?;
        let mut hasher = sha1::Sha1::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut src, &mut buf)
                .map_err(|e| DifError::Io(path.to_owned(), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])?;
        }
        let checksum = hex(&hasher.finalize());
        self.add_file(project_id, name, tmp, &checksum)
    }

    /// Stores a file already written to a [`TempFile`] whose SHA-1 is `checksum`:
    /// inspects it, moves it under `<data>/difs/<project>/`, indexes it and evicts the
    /// least recently used files beyond the budget. The same content uploaded twice to a
    /// project is stored once. Blocking.
    pub fn add_file(
        &self,
        project_id: i64,
        name: &str,
        mut tmp: TempFile,
        checksum: &str,
    ) -> Result<DifRow, DifError> {
        tmp.finish()?;
        if let Some(existing) = self.by_checksum(project_id, checksum) {
            return Ok(existing);
        }
        let size = std::fs::metadata(&tmp.path)
            .map_err(|e| DifError::Io(tmp.path.clone(), e))?
            .len();
        if size > self.0.max_bytes {
            return Err(DifError::TooLarge {
                size,
                budget: self.0.max_bytes,
            });
        }
        let view = symbolic_common::ByteView::open(&tmp.path)
            .map_err(|e| DifError::Io(tmp.path.clone(), e))?;
        let found = inspect::inspect(&view)?;
        drop(view);
        let mut row = DifRow {
            id: 0,
            project_id,
            checksum: checksum.to_owned(),
            name: clean_name(name),
            kind: found.kind,
            object_kind: found.object_kind,
            arch: found.arch,
            debug_id: found.debug_id,
            code_id: found.code_id,
            features: found.features,
            size: size as i64,
            uploaded: now_ms(),
            last_used: None,
        };
        let files = self.0.files.lock().unwrap_or_else(|e| e.into_inner());
        let dest_dir = self.0.dir.join(project_id.to_string());
        std::fs::create_dir_all(&dest_dir).map_err(|e| DifError::Io(dest_dir.clone(), e))?;
        let dest = dest_dir.join(checksum);
        std::fs::rename(&tmp.path, &dest).map_err(|e| DifError::Io(dest.clone(), e))?;
        tmp.kept = true;
        self.flush_used()?;
        let evicted = match self.db(self.0.store.insert_dif(row, self.0.max_bytes, Some(&dest))) {
            Ok(inserted) => {
                row = inserted.row;
                inserted.evicted
            }
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                return Err(e);
            }
        };
        drop(files);
        for old in &evicted {
            tracing::info!(
                "debug files: evicted {} ({}, {} bytes, least recently used) to stay within {} bytes",
                old.name,
                old.debug_id,
                old.size,
                self.0.max_bytes
            );
            let _ = std::fs::remove_file(self.path_of(old));
        }
        self.refresh()?;
        Ok(row)
    }

    /// Deletes a file of a project (any project with `None`); whether it existed.
    pub fn delete(&self, project_id: Option<i64>, id: i64) -> Result<bool, DifError> {
        let Some(row) = self.db(self.0.store.dif(id))? else {
            return Ok(false);
        };
        if project_id.is_some_and(|p| p != row.project_id) {
            return Ok(false);
        }
        let Some(removed) = self.db(self.0.store.delete_dif(id))? else {
            return Ok(false);
        };
        let _ = std::fs::remove_file(self.path_of(&removed));
        self.refresh()?;
        Ok(true)
    }

    /// Reloads the index if the database changed; announces the files that are new. With
    /// a store that shares the files' bytes, first brings this node's copies in line:
    /// fetches the files it lacks, removes those no longer indexed.
    pub fn refresh(&self) -> Result<(), DifError> {
        let shared = self.0.store.shares_dif_bytes();
        let (version, rows) = {
            // Read under the lock an upload holds from its file's arrival to its row's,
            // so that a file on disk is never taken for one no longer indexed.
            let _files = shared.then(|| self.0.files.lock().unwrap_or_else(|e| e.into_inner()));
            let version = self.db(self.0.store.difs_version())?;
            let indexed = self
                .0
                .index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .version;
            if version == indexed && (!shared || self.0.copied.load(Relaxed) == version) {
                return Ok(());
            }
            let rows = self.db(self.0.store.all_difs())?;
            if shared {
                self.copy_files(&rows)?;
                self.0.copied.store(version, Relaxed);
            }
            (version, rows)
        };
        let mut ix = self.0.index.write().unwrap_or_else(|e| e.into_inner());
        if ix.version == version {
            return Ok(());
        }
        let new: Vec<NewDif> = rows
            .iter()
            .filter(|r| !ix.by_id.contains_key(&r.id))
            .map(|r| NewDif {
                debug_id: r.debug_id.clone(),
                code_id: r.code_id.clone(),
            })
            .collect();
        let kept: HashSet<i64> = rows.iter().map(|r| r.id).collect();
        let mut changed: Vec<String> = ix
            .by_id
            .values()
            .filter(|e| !kept.contains(&e.row.id))
            .map(|e| e.row.debug_id.clone())
            .chain(new.iter().map(|n| n.debug_id.clone()))
            .collect();
        changed.sort();
        changed.dedup();
        *ix = Index::build(rows, version, &ix);
        drop(ix);
        if !changed.is_empty() {
            let listeners = self.0.changed.read().unwrap_or_else(|e| e.into_inner());
            for debug_id in &changed {
                for f in listeners.iter() {
                    f(debug_id);
                }
            }
        }
        for n in new {
            let _ = self.0.news.send(n);
        }
        Ok(())
    }

    /// Makes `<data>/difs/` hold a copy of each file in `rows` and nothing else (but the
    /// staging directories). Called with `files` held.
    fn copy_files(&self, rows: &[DifRow]) -> Result<(), DifError> {
        let mut kept = HashSet::new();
        for row in rows {
            let path = self.path_of(row);
            kept.insert(path.clone());
            if path.exists() {
                continue;
            }
            let mut tmp = self.temp_file()?;
            match self.db(self.0.store.dif_bytes(row.id, &tmp.path)) {
                Ok(true) => {
                    let dir = self.0.dir.join(row.project_id.to_string());
                    std::fs::create_dir_all(&dir).map_err(|e| DifError::Io(dir.clone(), e))?;
                    std::fs::rename(&tmp.path, &path).map_err(|e| DifError::Io(path.clone(), e))?;
                    tmp.kept = true;
                }
                // Deleted since the list was read.
                Ok(false) => {}
                Err(e) => tracing::warn!("debug files: fetching {} failed: {e}", row.name),
            }
        }
        let projects =
            std::fs::read_dir(&self.0.dir).map_err(|e| DifError::Io(self.0.dir.clone(), e))?;
        for project in projects.flatten() {
            let is_project = project
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<i64>().is_ok());
            if !is_project {
                continue;
            }
            for f in std::fs::read_dir(project.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if !kept.contains(&f.path()) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    /// Writes the last-use times marked since the last flush.
    pub fn flush_used(&self) -> Result<(), DifError> {
        let ids: Vec<i64> =
            std::mem::take(&mut *self.0.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let used: Vec<(i64, i64)> = {
            let ix = self.0.index.read().unwrap_or_else(|e| e.into_inner());
            ids.iter()
                .filter_map(|id| ix.by_id.get(id).map(|e| (*id, e.last_used.load(Relaxed))))
                .collect()
        };
        self.db(self.0.store.touch_difs(used))?;
        Ok(())
    }

    /// Waits (up to 30 s) for one of the [`CONCURRENT_UPLOADS`] upload slots.
    pub async fn upload_permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(Duration::from_secs(30), self.0.uploads.acquire())
            .await
            .ok()?
            .ok()
    }

    /// Claims a checksum for assembly; `false` if another request is assembling it.
    pub fn claim(&self, checksum: &str) -> bool {
        self.0
            .assembling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(checksum.to_owned())
    }

    /// Releases a checksum claimed with [`Difs::claim`].
    pub fn release(&self, checksum: &str) {
        self.0
            .assembling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(checksum);
    }
}

/// A file under `<data>/difs/tmp/`, removed on drop unless it was moved into place.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    kept: bool,
}

impl TempFile {
    /// Appends bytes.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), DifError> {
        match &mut self.file {
            Some(f) => f
                .write_all(data)
                .map_err(|e| DifError::Io(self.path.clone(), e)),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), DifError> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| DifError::Io(self.path.clone(), e))?;
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the files of `dir` older than an hour: what a crashed upload left (another
/// process, a CLI run or a collector, may be writing the newer ones).
fn clear_stale(dir: &Path) {
    let now = std::time::SystemTime::now();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > chunks::CHUNK_TTL);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file name part of an uploaded name, printable and at most 200 characters.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let s: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    if s.is_empty() { "unnamed".into() } else { s }
}

/// Symbolication finds its debug files and source bundles among the uploaded ones.
impl crate::symbolicate::DebugFileLookup for Difs {
    fn find(&self, debug_id: &str, code_id: Option<&str>) -> Option<crate::symbolicate::DifMatch> {
        let m = Difs::find(self, debug_id, code_id)?;
        Some(crate::symbolicate::DifMatch {
            path: m.path,
            has_debug_info: m.has_debug_info,
        })
    }

    fn find_sources(&self, debug_id: &str) -> Option<PathBuf> {
        Difs::find_sources(self, debug_id)
    }

    fn find_breakpad(&self, debug_id: &str, code_id: Option<&str>) -> Option<PathBuf> {
        Difs::find_kind(self, debug_id, code_id, DifKind::Breakpad).map(|m| m.path)
    }

    fn mark_used(&self, debug_id: &str) {
        if let Some(m) = Difs::find(self, debug_id, None) {
            Difs::mark_used(self, m.id);
        }
    }
}
