//! Source context from source bundles: the lines around a frame's line, read from the
//! zip `sentry-cli debug-files bundle-sources` / `upload --include-sources` makes.
//!
//! Every read is bounded (a hostile zip may claim small sizes and inflate to gigabytes):
//! the manifest to [`MAX_MANIFEST`], each source file to [`MAX_SOURCE`], read through a
//! `take` of its declared size; a bundle that breaks a bound gives no context and an error.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use symbolic_common::ByteView;
use symbolic_debuginfo::ParseObjectOptions;
use symbolic_debuginfo::sourcebundle::SourceBundle;

use super::SymbolicateError;

/// The largest manifest read.
pub const MAX_MANIFEST: u64 = 16 << 20;
/// The largest source file read.
pub const MAX_SOURCE: usize = 4 << 20;
/// Lines of context on each side of the line.
pub const CONTEXT_LINES: usize = 5;
/// Longest context line kept, in bytes (longer ones are cut).
const MAX_LINE: usize = 400;

/// A source file's lines (`None`: not in the bundle, or refused).
type Lines = Option<Arc<Vec<String>>>;

/// The lines around one line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Up to [`CONTEXT_LINES`] lines before.
    pub pre: Vec<String>,
    /// The line itself.
    pub line: String,
    /// Up to [`CONTEXT_LINES`] lines after.
    pub post: Vec<String>,
}

#[derive(Default)]
struct Files {
    map: HashMap<(String, String), (Lines, usize, u64)>,
    bytes: usize,
    tick: u64,
}

/// Source files read from bundles, least recently used evicted past a byte budget.
pub(crate) struct SourceCache {
    files: Mutex<Files>,
    budget: usize,
}

impl std::fmt::Debug for SourceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCache")
            .field("budget", &self.budget)
            .finish()
    }
}

impl SourceCache {
    pub(crate) fn new(budget: usize) -> Self {
        SourceCache {
            files: Mutex::new(Files::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the files of a bundle (it was replaced or deleted).
    pub(crate) fn forget(&self, debug_id: &str) {
        let mut f = self.lock();
        let mut freed = 0;
        f.map.retain(|(id, _), (_, size, _)| {
            let keep = id != debug_id;
            if !keep {
                freed += *size;
            }
            keep
        });
        f.bytes -= freed;
    }

    /// Context for each `(abs_path, lineno)` wanted, reading the bundle at `bundle` once
    /// for all the files not in memory yet.
    pub(crate) fn contexts(
        &self,
        debug_id: &str,
        bundle: &Path,
        wanted: &[(String, u64)],
    ) -> Vec<Option<Context>> {
        let mut have: HashMap<String, Lines> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        {
            let mut f = self.lock();
            for (path, _) in wanted {
                f.tick += 1;
                let tick = f.tick;
                match f.map.get_mut(&(debug_id.to_owned(), path.clone())) {
                    Some((lines, _, used)) => {
                        *used = tick;
                        have.insert(path.clone(), lines.clone());
                    }
                    None if !missing.contains(path) => missing.push(path.clone()),
                    None => {}
                }
            }
        }
        if !missing.is_empty() {
            let read = match read_files(bundle, &missing) {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!("source bundle {}: {e}", bundle.display());
                    missing.iter().map(|p| (p.clone(), None)).collect()
                }
            };
            let mut f = self.lock();
            for (path, lines) in read {
                let size = lines
                    .as_ref()
                    .map(|l| l.iter().map(|s| s.len() + 24).sum::<usize>())
                    .unwrap_or(0)
                    + path.len()
                    + 64;
                f.tick += 1;
                let tick = f.tick;
                if let Some((_, old, _)) = f.map.insert(
                    (debug_id.to_owned(), path.clone()),
                    (lines.clone(), size, tick),
                ) {
                    f.bytes -= old;
                }
                f.bytes += size;
                have.insert(path, lines);
            }
            while f.bytes > self.budget {
                let Some(victim) = f
                    .map
                    .iter()
                    .min_by_key(|(_, (_, _, used))| *used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some((_, size, _)) = f.map.remove(&victim) {
                    f.bytes -= size;
                }
            }
        }
        wanted
            .iter()
            .map(|(path, lineno)| {
                let lines = have.get(path)?.as_ref()?;
                context_of(lines, *lineno)
            })
            .collect()
    }
}

/// The lines around `lineno` (1-based).
fn context_of(lines: &[String], lineno: u64) -> Option<Context> {
    let idx = usize::try_from(lineno).ok()?.checked_sub(1)?;
    let line = lines.get(idx)?.clone();
    let pre = lines[idx.saturating_sub(CONTEXT_LINES)..idx].to_vec();
    let post = lines[idx + 1..(idx + 1 + CONTEXT_LINES).min(lines.len())].to_vec();
    Some(Context { pre, line, post })
}

/// Checks the bundle's bounds, then reads the wanted files out of it.
fn read_files(bundle: &Path, paths: &[String]) -> Result<Vec<(String, Lines)>, SymbolicateError> {
    let view = ByteView::open(bundle).map_err(|e| SymbolicateError::Read(bundle.to_owned(), e))?;
    check_manifest(&view).map_err(|e| SymbolicateError::Parse(bundle.to_owned(), e))?;
    let mut opts = ParseObjectOptions::default();
    opts.max_decompressed_embedded_source_size = Some(MAX_SOURCE);
    let parsed = SourceBundle::parse_with_opts(&view, opts)
        .map_err(|e| SymbolicateError::Parse(bundle.to_owned(), e.to_string()))?;
    let session = parsed
        .debug_session()
        .map_err(|e| SymbolicateError::Parse(bundle.to_owned(), e.to_string()))?;
    Ok(paths
        .iter()
        .map(|path| {
            let lines = match session.source_by_path(path) {
                Ok(Some(file)) => file.contents().map(|text| Arc::new(split_lines(text))),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!("source bundle {}: {path}: {e}", bundle.display());
                    None
                }
            };
            (path.clone(), lines)
        })
        .collect())
}

/// Refuses a bundle whose manifest is missing, larger than [`MAX_MANIFEST`] (declared
/// or actually inflated) or not JSON, before symbolic reads it without a bound.
pub fn check_manifest(data: &[u8]) -> Result<(), String> {
    if !SourceBundle::test(data) {
        return Err("not a source bundle (no SYSB header)".into());
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|e| format!("not a zip archive: {e}"))?;
    let manifest = zip
        .by_name("manifest.json")
        .map_err(|e| format!("no manifest.json: {e}"))?;
    if manifest.size() > MAX_MANIFEST {
        return Err(format!(
            "manifest.json inflates to {} bytes; the limit is {MAX_MANIFEST}",
            manifest.size()
        ));
    }
    let mut text = Vec::new();
    manifest
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("manifest.json does not inflate: {e}"))?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(format!("manifest.json inflates past {MAX_MANIFEST} bytes"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&text)
        .map_err(|e| format!("manifest.json is not JSON: {e}"))?;
    Ok(())
}

fn split_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            if l.len() <= MAX_LINE {
                return l.to_owned();
            }
            let mut end = MAX_LINE;
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &l[..end])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_clipped_at_both_ends() {
        let lines: Vec<String> = (1..=8).map(|n| format!("line {n}")).collect();
        let c = context_of(&lines, 2).unwrap();
        assert_eq!(c.pre, ["line 1"]);
        assert_eq!(c.line, "line 2");
        assert_eq!(c.post.len(), 5);
        let c = context_of(&lines, 8).unwrap();
        assert_eq!(c.pre.len(), 5);
        assert!(c.post.is_empty());
        assert_eq!(context_of(&lines, 9), None);
        assert_eq!(context_of(&lines, 0), None);
    }

    #[test]
    fn a_plain_zip_or_garbage_is_not_a_bundle() {
        assert!(check_manifest(b"PK\x03\x04 not really").is_err());
        assert!(check_manifest(b"SYSB\x02\x00\x00\x00 garbage").is_err());
    }
}
