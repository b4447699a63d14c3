//! Parsed Breakpad symbol files kept between dumps: least-recently-used, bounded by the
//! bytes of the `.sym` files they were parsed from, dropped when the file is deleted.
//!
//! Dumps of one build name the same modules: the second parses nothing. An entry is keyed
//! by debug id and valid for one path (an upload under the same debug id is a new file,
//! so a new path); [`SymbolFiles::forget`] drops a deleted one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use breakpad_symbols::{SymbolError, SymbolFile};

struct Entry {
    path: PathBuf,
    symbols: Arc<SymbolFile>,
    /// The `.sym` file's size: what the entry counts against the bound.
    size: u64,
    used: u64,
}

#[derive(Default)]
struct Map {
    entries: HashMap<String, Entry>,
    bytes: u64,
    tick: u64,
    /// Counts forgets: a parse that started before one is not kept.
    forgotten: u64,
}

/// The cache (one per collector, shared by every processing).
pub struct SymbolFiles {
    map: Mutex<Map>,
    max_bytes: u64,
    parses: AtomicU64,
}

impl std::fmt::Debug for SymbolFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, bytes) = self.usage();
        f.debug_struct("SymbolFiles")
            .field("entries", &n)
            .field("bytes", &bytes)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl SymbolFiles {
    /// A cache keeping parsed files of up to `max_bytes` of `.sym` text (parsed, they take
    /// a few times that).
    pub fn new(max_bytes: u64) -> Self {
        SymbolFiles {
            map: Mutex::new(Map::default()),
            max_bytes,
            parses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The parsed symbol file of `debug_id` at `path` (of `size` bytes): from memory, or
    /// parsed now and kept (unless larger than the whole bound). Two dumps wanting a file
    /// not yet kept may both parse it.
    pub fn get(
        &self,
        debug_id: &str,
        path: &Path,
        size: u64,
    ) -> Result<Arc<SymbolFile>, SymbolError> {
        let epoch = {
            let mut m = self.lock();
            m.tick += 1;
            let tick = m.tick;
            if let Some(e) = m.entries.get_mut(debug_id)
                && e.path == path
            {
                e.used = tick;
                return Ok(e.symbols.clone());
            }
            m.forgotten
        };
        self.parses.fetch_add(1, Ordering::Relaxed);
        let symbols = Arc::new(SymbolFile::from_file(path)?);
        let mut m = self.lock();
        if m.forgotten != epoch || size > self.max_bytes {
            return Ok(symbols);
        }
        m.tick += 1;
        let used = m.tick;
        let entry = Entry {
            path: path.to_owned(),
            symbols: symbols.clone(),
            size,
            used,
        };
        if let Some(old) = m.entries.insert(debug_id.to_owned(), entry) {
            m.bytes -= old.size;
        }
        m.bytes += size;
        while m.bytes > self.max_bytes {
            let Some(victim) = m
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != debug_id)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = m.entries.remove(&victim) {
                m.bytes -= e.size;
            }
        }
        Ok(symbols)
    }

    /// Drops the parsed file of an image (its `.sym` file was deleted or replaced).
    pub fn forget(&self, debug_id: &str) {
        let mut m = self.lock();
        m.forgotten += 1;
        if let Some(e) = m.entries.remove(debug_id) {
            m.bytes -= e.size;
        }
    }

    /// Files parsed so far (hits do not count).
    pub fn parses(&self) -> u64 {
        self.parses.load(Ordering::Relaxed)
    }

    /// Parsed files kept, and the bytes of `.sym` text they count.
    pub fn usage(&self) -> (usize, u64) {
        let m = self.lock();
        (m.entries.len(), m.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYM: &str = "MODULE Linux x86_64 0123456789ABCDEF0123456789ABCDEF0 app\n\
        FILE 0 src/main.rs\n\
        FUNC 1000 20 0 app::main\n\
        1000 20 7 0\n\
        PUBLIC 2000 0 app::helper\n";

    fn write(dir: &Path, name: &str) -> (PathBuf, u64) {
        let p = dir.join(name);
        std::fs::write(&p, SYM).unwrap();
        (p, SYM.len() as u64)
    }

    #[test]
    fn a_second_use_parses_nothing_and_a_forgotten_file_is_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (a, size) = write(dir.path(), "a.sym");
        let c = SymbolFiles::new(1 << 20);
        let first = c.get("id-a", &a, size).unwrap();
        assert_eq!(first.publics.len(), 1);
        let again = c.get("id-a", &a, size).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(c.parses(), 1);
        assert_eq!(c.usage(), (1, size));

        c.forget("id-a");
        assert_eq!(c.usage(), (0, 0));
        // Deleted: the parsed copy is not served from memory any more.
        std::fs::remove_file(&a).unwrap();
        assert!(c.get("id-a", &a, size).is_err());
        assert_eq!(c.parses(), 2);

        // Another file under the same debug id (a new upload) is a new entry.
        let (b, size) = write(dir.path(), "b.sym");
        c.get("id-a", &b, size).unwrap();
        c.get("id-a", &b, size).unwrap();
        assert_eq!(c.parses(), 3);
    }

    #[test]
    fn the_least_recently_used_go_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (a, size) = write(dir.path(), "a.sym");
        let (b, _) = write(dir.path(), "b.sym");
        let (x, _) = write(dir.path(), "x.sym");
        let c = SymbolFiles::new(2 * size);
        c.get("a", &a, size).unwrap();
        c.get("b", &b, size).unwrap();
        c.get("a", &a, size).unwrap();
        c.get("x", &x, size).unwrap();
        assert_eq!(c.usage(), (2, 2 * size));
        // `b` was the least recently used: parsed again; `a` was kept.
        let parsed = c.parses();
        c.get("a", &a, size).unwrap();
        assert_eq!(c.parses(), parsed);
        c.get("b", &b, size).unwrap();
        assert_eq!(c.parses(), parsed + 1);
        // Larger than the whole bound: parsed, never kept.
        let big = SymbolFiles::new(size - 1);
        big.get("a", &a, size).unwrap();
        assert_eq!(big.usage(), (0, 0));
    }
}
