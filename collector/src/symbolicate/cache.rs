//! "Cache it": each debug file is converted once into a SymCache (Sentry's compact lookup
//! format) with its column table ([`Columns`]), kept in memory in a least-recently-used
//! cache bounded in entries and bytes.
//!
//! A debug file is read (memory-mapped) only to build its SymCache, on the first event
//! that needs it; one build runs per file however many events wait for it, and at most
//! [`Limits::builds`] run at once. Images without a file are remembered for
//! [`MISS_TTL`], a file that fails to convert for [`FAILED_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use symbolic_common::ByteView;
use symbolic_debuginfo::{Object, ParseObjectOptions};
use symbolic_symcache::{SymCache, SymCacheConverter};

use super::SymbolicateError;
use super::columns::Columns;
use super::lookup::{DebugFileLookup, DifMatch};

/// How long "no debug file for this image" is believed before the lookup is asked again.
pub const MISS_TTL: Duration = Duration::from_secs(30);
/// How long a debug file that failed to convert is not tried again.
pub const FAILED_TTL: Duration = Duration::from_secs(600);
/// How often a cache hit is reported to [`DebugFileLookup::mark_used`].
const MARK_USED_EVERY: Duration = Duration::from_secs(60);
/// The largest section a compressed debug file may inflate to.
const MAX_SECTION: usize = 1 << 30;

/// Bounds of the symbolication caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// SymCaches kept in memory (and remembered misses).
    pub entries: usize,
    /// Bytes of SymCaches kept in memory.
    pub bytes: usize,
    /// Bytes of source files (from source bundles) kept in memory.
    pub source_bytes: usize,
    /// SymCache builds running at once (each takes one core while it runs).
    pub builds: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entries: 256,
            bytes: 512 << 20,
            source_bytes: 64 << 20,
            builds: 1,
        }
    }
}

/// A debug file converted to a SymCache.
#[derive(Debug)]
pub struct SymFile {
    /// The serialized SymCache.
    data: Vec<u8>,
    /// Whether the file had DWARF (else only symbol names come out of it).
    pub has_debug_info: bool,
    /// Its DWARF's columns.
    pub columns: Columns,
}

impl SymFile {
    /// Parses the SymCache (cheap: a header check and slices).
    pub fn symcache(&self) -> Option<SymCache<'_>> {
        SymCache::parse(&self.data).ok()
    }

    /// Its size in memory.
    pub fn size(&self) -> usize {
        self.data.len() + self.columns.size()
    }
}

type Cell = Arc<OnceLock<Result<Arc<SymFile>, String>>>;

enum Slot {
    Missing(Instant),
    File {
        cell: Cell,
        size: usize,
        created: Instant,
        last_marked: Instant,
    },
}

struct Entry {
    slot: Slot,
    used: u64,
}

#[derive(Default)]
struct Map {
    entries: HashMap<String, Entry>,
    bytes: usize,
    tick: u64,
    /// Counts [`SymCaches::forget`]s: a lookup answered before one is asked again, so
    /// that a file deleted meanwhile is not cached again.
    forgotten: u64,
}

/// The SymCache cache.
pub(crate) struct SymCaches {
    map: Mutex<Map>,
    limits: Limits,
    running: Mutex<usize>,
    freed: Condvar,
}

impl std::fmt::Debug for SymCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("SymCaches")
            .field("entries", &m.entries.len())
            .field("bytes", &m.bytes)
            .finish()
    }
}

/// Whether a cached miss may be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misses {
    /// Yes (ingest: an image without a file costs one hash lookup per event).
    Trust,
    /// No, ask the lookup again (a file may just have arrived).
    Recheck,
}

impl SymCaches {
    pub(crate) fn new(limits: Limits) -> Self {
        SymCaches {
            map: Mutex::new(Map::default()),
            limits,
            running: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the image is known to have no debug file (a fresh cached miss).
    pub(crate) fn known_missing(&self, debug_id: &str) -> bool {
        matches!(
            self.lock().entries.get(debug_id).map(|e| &e.slot),
            Some(Slot::Missing(at)) if at.elapsed() < MISS_TTL
        )
    }

    /// Forgets what is known about an image (its file was uploaded, replaced or deleted).
    pub(crate) fn forget(&self, debug_id: &str) {
        let mut m = self.lock();
        m.forgotten += 1;
        if let Some(e) = m.entries.remove(debug_id)
            && let Slot::File { size, .. } = e.slot
        {
            m.bytes -= size;
        }
    }

    /// The SymCache of an image: from memory, or built from the file the lookup finds.
    /// `None` when there is no file or it cannot be converted.
    pub(crate) fn get(
        &self,
        lookup: &dyn DebugFileLookup,
        debug_id: &str,
        code_id: Option<&str>,
        misses: Misses,
    ) -> Option<Arc<SymFile>> {
        enum Next {
            Wait(Cell, bool),
            Ask(u64),
        }
        let next = {
            let mut m = self.lock();
            m.tick += 1;
            let tick = m.tick;
            let epoch = m.forgotten;
            match m.entries.get_mut(debug_id) {
                None => Next::Ask(epoch),
                Some(e) => {
                    e.used = tick;
                    match &mut e.slot {
                        Slot::Missing(at) => {
                            if misses == Misses::Trust && at.elapsed() < MISS_TTL {
                                return None;
                            }
                            Next::Ask(epoch)
                        }
                        Slot::File {
                            cell,
                            created,
                            last_marked,
                            ..
                        } => match cell.get() {
                            Some(Err(_)) if created.elapsed() < FAILED_TTL => return None,
                            Some(Err(_)) => Next::Ask(epoch),
                            _ => {
                                let mark = last_marked.elapsed() >= MARK_USED_EVERY;
                                if mark {
                                    *last_marked = Instant::now();
                                }
                                Next::Wait(cell.clone(), mark)
                            }
                        },
                    }
                }
            }
        };
        let cell = match next {
            Next::Wait(cell, mark) => {
                if mark {
                    lookup.mark_used(debug_id);
                }
                cell
            }
            Next::Ask(mut epoch) => {
                let (found, mut m) = loop {
                    let found = lookup.find(debug_id, code_id);
                    let m = self.lock();
                    if m.forgotten == epoch {
                        break (found, m);
                    }
                    epoch = m.forgotten;
                };
                m.tick += 1;
                let used = m.tick;
                let Some(found) = found else {
                    let old = m.entries.insert(
                        debug_id.to_owned(),
                        Entry {
                            slot: Slot::Missing(Instant::now()),
                            used,
                        },
                    );
                    if let Some(Entry {
                        slot: Slot::File { size, .. },
                        ..
                    }) = old
                    {
                        m.bytes -= size;
                    }
                    self.evict(&mut m, debug_id);
                    return None;
                };
                // Another thread may have started a build meanwhile: share it.
                if let Some(Entry {
                    slot: Slot::File { cell, .. },
                    ..
                }) = m.entries.get(debug_id)
                    && !matches!(cell.get(), Some(Err(_)))
                {
                    let cell = cell.clone();
                    drop(m);
                    return cell.wait().as_ref().ok().cloned();
                }
                let cell: Cell = Arc::new(OnceLock::new());
                let now = Instant::now();
                let old = m.entries.insert(
                    debug_id.to_owned(),
                    Entry {
                        slot: Slot::File {
                            cell: cell.clone(),
                            size: 0,
                            created: now,
                            last_marked: now,
                        },
                        used,
                    },
                );
                if let Some(Entry {
                    slot: Slot::File { size, .. },
                    ..
                }) = old
                {
                    m.bytes -= size;
                }
                drop(m);
                lookup.mark_used(debug_id);
                self.build_into(&cell, debug_id, &found);
                cell
            }
        };
        cell.wait().as_ref().ok().cloned()
    }

    fn build_into(&self, cell: &Cell, debug_id: &str, found: &DifMatch) {
        let result = cell.get_or_init(|| {
            let _slot = self.build_slot();
            build(found).map(Arc::new).map_err(|e| {
                tracing::warn!("debug file {} of {debug_id}: {e}", found.path.display());
                e.to_string()
            })
        });
        let size = result.as_ref().map(|f| f.size()).unwrap_or(0);
        let mut m = self.lock();
        if let Some(Entry {
            slot: Slot::File {
                cell: c, size: s, ..
            },
            ..
        }) = m.entries.get_mut(debug_id)
            && Arc::ptr_eq(c, cell)
        {
            *s = size;
            m.bytes += size;
        }
        self.evict(&mut m, debug_id);
    }

    /// Drops least-recently-used entries (never `keep`) until within the limits.
    fn evict(&self, m: &mut Map, keep: &str) {
        while m.entries.len() > self.limits.entries.max(1) || m.bytes > self.limits.bytes {
            let victim = m
                .entries
                .iter()
                .filter(|(k, e)| {
                    k.as_str() != keep
                        && !matches!(&e.slot, Slot::File { cell, .. } if cell.get().is_none())
                })
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(Entry {
                slot: Slot::File { size, .. },
                ..
            }) = m.entries.remove(&victim)
            {
                m.bytes -= size;
            }
        }
    }

    /// One of [`Limits::builds`] build slots, waited for.
    fn build_slot(&self) -> BuildSlot<'_> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.limits.builds.max(1) {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        BuildSlot(self)
    }

    /// SymCaches in memory and their bytes.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let m = self.lock();
        let files = m
            .entries
            .values()
            .filter(|e| matches!(e.slot, Slot::File { .. }))
            .count();
        (files, m.bytes)
    }
}

struct BuildSlot<'a>(&'a SymCaches);

impl Drop for BuildSlot<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.0.freed.notify_one();
    }
}

/// Converts a debug file into a SymCache.
pub fn build(found: &DifMatch) -> Result<SymFile, SymbolicateError> {
    let view =
        ByteView::open(&found.path).map_err(|e| SymbolicateError::Read(found.path.clone(), e))?;
    let mut opts = ParseObjectOptions::default();
    opts.max_decompressed_section_size = Some(MAX_SECTION);
    let object = Object::parse_with_opts(&view, opts)
        .map_err(|e| SymbolicateError::Parse(found.path.clone(), e.to_string()))?;
    let mut converter = SymCacheConverter::new();
    converter
        .process_object(&object)
        .map_err(|e| SymbolicateError::Parse(found.path.clone(), e.to_string()))?;
    let mut data = Vec::new();
    converter
        .serialize(&mut std::io::Cursor::new(&mut data))
        .map_err(|e| SymbolicateError::Parse(found.path.clone(), e.to_string()))?;
    data.shrink_to_fit();
    Ok(SymFile {
        data,
        has_debug_info: object.has_debug_info(),
        columns: Columns::of(&object),
    })
}
