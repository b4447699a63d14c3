//! "Find the debug file": the seam between symbolication and wherever debug files live
//! (the upload store), plus a lookup over a plain directory of files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use symbolic_common::ByteView;
use symbolic_debuginfo::Object;
use symbolic_debuginfo::sourcebundle::SourceBundle;

/// A debug file found for an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifMatch {
    /// Where the file is (ELF with DWARF or with a symbol table only).
    pub path: PathBuf,
    /// Whether it has DWARF (lines, inlined frames), not only symbols.
    pub has_debug_info: bool,
}

/// Where symbolication finds debug files and source bundles.
///
/// `debug_id` is given in its canonical form, lowercase and hyphenated
/// (`c0bcc3f1-9827-fe65-3058-404b2831d9e6`, an `-a` appendix only when not 0), `code_id`
/// as lowercase hex (the GNU build id). Implementations are called from blocking threads
/// and may do I/O, but should be quick: the symbolicator caches what they return
/// (misses for 30 s).
pub trait DebugFileLookup: Send + Sync + std::fmt::Debug {
    /// The debug file of an image, if one was uploaded.
    fn find(&self, debug_id: &str, code_id: Option<&str>) -> Option<DifMatch>;
    /// The source bundle (a zip with a manifest, as `sentry-cli --include-sources` makes)
    /// of an image, if one was uploaded.
    fn find_sources(&self, debug_id: &str) -> Option<PathBuf>;
    /// The Breakpad symbol file (`.sym`) of an image, if one was uploaded: minidump
    /// processing reads its unwind information to walk stacks.
    fn find_breakpad(&self, debug_id: &str, code_id: Option<&str>) -> Option<PathBuf> {
        let _ = (debug_id, code_id);
        None
    }
    /// Called when a debug file was used to symbolicate (for least-recently-used eviction).
    fn mark_used(&self, debug_id: &str) {
        let _ = debug_id;
    }
}

/// The canonical form of a debug id (see [`DebugFileLookup`]), or `None` if it is not one.
pub fn canonical_debug_id(raw: &str) -> Option<String> {
    raw.parse::<symbolic_common::DebugId>()
        .ok()
        .filter(|id| !id.is_nil())
        .map(|id| id.to_string().to_ascii_lowercase())
}

/// Debug files and source bundles in one directory (not recursive), indexed by the debug
/// id read from each file when [`DirectoryLookup::scan`] runs. Files that are neither are
/// skipped.
#[derive(Debug, Default, Clone)]
pub struct DirectoryLookup {
    files: HashMap<String, DifMatch>,
    by_code_id: HashMap<String, String>,
    sources: HashMap<String, PathBuf>,
}

impl DirectoryLookup {
    /// Reads the ids of every file in `dir`.
    pub fn scan(dir: &Path) -> std::io::Result<Self> {
        let mut out = DirectoryLookup::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            out.add(&entry.path());
        }
        Ok(out)
    }

    /// Adds one file; returns whether it was a debug file or source bundle.
    pub fn add(&mut self, path: &Path) -> bool {
        let Ok(view) = ByteView::open(path) else {
            return false;
        };
        if SourceBundle::test(&view) {
            let Ok(bundle) = SourceBundle::parse(&view) else {
                return false;
            };
            let Some(id) = canonical_debug_id(&bundle.debug_id().to_string()) else {
                return false;
            };
            self.sources.insert(id, path.to_owned());
            return true;
        }
        let Ok(object) = Object::parse(&view) else {
            return false;
        };
        let Some(id) = canonical_debug_id(&object.debug_id().to_string()) else {
            return false;
        };
        let has_debug_info = object.has_debug_info();
        // Of a stripped binary and its debug companion (same id), keep the one with DWARF.
        if self
            .files
            .get(&id)
            .is_some_and(|f| f.has_debug_info && !has_debug_info)
        {
            return true;
        }
        if let Some(code_id) = object.code_id() {
            self.by_code_id
                .insert(code_id.as_str().to_ascii_lowercase(), id.clone());
        }
        self.files.insert(
            id,
            DifMatch {
                path: path.to_owned(),
                has_debug_info,
            },
        );
        true
    }

    /// How many debug files (not bundles) it knows.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether it knows no debug file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl DebugFileLookup for DirectoryLookup {
    fn find(&self, debug_id: &str, code_id: Option<&str>) -> Option<DifMatch> {
        self.files.get(debug_id).cloned().or_else(|| {
            let id = self.by_code_id.get(&code_id?.to_ascii_lowercase())?;
            self.files.get(id).cloned()
        })
    }

    fn find_sources(&self, debug_id: &str) -> Option<PathBuf> {
        self.sources.get(debug_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_ids_are_canonical() {
        assert_eq!(
            canonical_debug_id("C0BCC3F1-9827-FE65-3058-404B2831D9E6").as_deref(),
            Some("c0bcc3f1-9827-fe65-3058-404b2831d9e6")
        );
        assert_eq!(
            canonical_debug_id("c0bcc3f19827fe653058404b2831d9e6").as_deref(),
            Some("c0bcc3f1-9827-fe65-3058-404b2831d9e6")
        );
        assert_eq!(
            canonical_debug_id("00000000-0000-0000-0000-000000000000"),
            None
        );
        assert_eq!(canonical_debug_id("not an id"), None);
    }

    #[test]
    fn a_directory_of_other_files_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        std::fs::write(dir.path().join("truncated.debug"), b"\x7fELF\x02\x01\x01").unwrap();
        let l = DirectoryLookup::scan(dir.path()).unwrap();
        assert!(l.is_empty());
        assert_eq!(l.find("c0bcc3f1-9827-fe65-3058-404b2831d9e6", None), None);
    }
}
