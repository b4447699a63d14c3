//! Server-side symbolication: frames of stripped or symbol-table-only binaries get
//! functions, files, lines and inlined frames from uploaded debug files, and source context.
//!
//! The seams are Symbolicator's: [`lookup`] finds the debug file of an image (the upload
//! store implements [`DebugFileLookup`]), [`cache`] converts it once into a SymCache and
//! keeps it with the DWARF's [`columns`], [`resolve`] looks an address up; [`event`] and
//! [`rewrite`] read and rewrite the event, [`sources`] reads source bundles, [`inapp`]
//! marks the application's frames.
//! Ingestion calls [`process`] per event; events that arrived before their debug file are
//! rewritten by [`reprocess_image`] or when viewed ([`on_view`]).

mod arrivals;
pub mod cache;
pub mod columns;
pub mod event;
pub mod inapp;
pub mod lookup;
mod reprocess;
pub mod resolve;
pub mod rewrite;
pub mod sources;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use arrivals::spawn_reprocessing;
pub use cache::{Limits, Misses};
pub use lookup::{DebugFileLookup, DifMatch, DirectoryLookup, canonical_debug_id};
pub use reprocess::{on_view, remember_missing, reprocess_image};
pub use rewrite::Outcome;

use cache::{MISS_TTL, SymCaches};
use sources::SourceCache;

/// What can go wrong while symbolicating. Ingestion never fails because of it: an event
/// that cannot be symbolicated is stored as it came.
#[derive(Debug, thiserror::Error)]
pub enum SymbolicateError {
    /// A debug file or bundle could not be read.
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// A debug file or bundle is not what it claims to be.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// Not a debug id.
    #[error("`{0}` is not a debug id")]
    BadDebugId(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A stored event could not be read or written back.
    #[error("stored event: {0}")]
    Event(String),
}

/// The symbolicator: a debug file lookup and the caches in front of it.
pub struct Symbolicator {
    lookup: Arc<dyn DebugFileLookup>,
    caches: SymCaches,
    sources: SourceCache,
    bundles: Mutex<HashMap<String, (Option<PathBuf>, Instant)>>,
    /// Symbolication off the ingest path (reprocessing, viewing) runs on at most this many
    /// blocking threads at once.
    pool: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Symbolicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolicator")
            .field("lookup", &self.lookup)
            .field("caches", &self.caches)
            .finish()
    }
}

/// An event after [`process`].
#[derive(Debug)]
pub struct Processed<'a> {
    /// The event JSON to store (the input when nothing changed).
    pub bytes: Cow<'a, [u8]>,
    /// Debug ids of images whose frames wait for a debug file.
    pub missing: Vec<String>,
}

impl Symbolicator {
    /// A symbolicator over `lookup`.
    pub fn new(lookup: Arc<dyn DebugFileLookup>, limits: Limits) -> Self {
        Symbolicator {
            lookup,
            caches: SymCaches::new(limits),
            sources: SourceCache::new(limits.source_bytes),
            bundles: Mutex::new(HashMap::new()),
            pool: tokio::sync::Semaphore::new(limits.builds.max(1) + 1),
        }
    }

    /// The lookup it asks.
    pub fn lookup(&self) -> &Arc<dyn DebugFileLookup> {
        &self.lookup
    }

    /// Forgets what is cached about an image: call when its debug file or source bundle
    /// was uploaded, replaced or deleted.
    pub fn forget(&self, debug_id: &str) {
        self.caches.forget(debug_id);
        self.sources.forget(debug_id);
        self.bundles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(debug_id);
    }

    /// Forgets only the source files read from an image's bundle (a bundle was uploaded
    /// or deleted; the SymCache stays).
    pub fn forget_sources(&self, debug_id: &str) {
        self.sources.forget(debug_id);
        self.bundles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(debug_id);
    }

    /// SymCaches in memory and their bytes.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.caches.usage()
    }

    /// The source bundle of an image (misses remembered for a while).
    fn bundle_of(&self, debug_id: &str) -> Option<PathBuf> {
        {
            let b = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((found, at)) = b.get(debug_id)
                && (found.is_some() || at.elapsed() < MISS_TTL)
            {
                return found.clone();
            }
        }
        let found = self.lookup.find_sources(debug_id);
        let mut b = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= 10_000 {
            b.clear();
        }
        b.insert(debug_id.to_owned(), (found.clone(), Instant::now()));
        found
    }

    /// Whether the raw event has anything this symbolicator can improve or must note:
    /// frames wanting symbols in an image (with a file, or to be listed as missing one),
    /// or frames wanting context in an image with a source bundle.
    fn worth_parsing(&self, bytes: &[u8]) -> bool {
        let Some(wanted) = event::probe(bytes) else {
            return true;
        };
        wanted.images.iter().any(|w| {
            // A system library's named frames are left alone unless its file is known.
            let symbols =
                w.symbols && (w.unnamed || !w.system || !self.caches.known_missing(&w.debug_id));
            symbols || (w.context && self.bundle_of(&w.debug_id).is_some())
        })
    }

    /// Symbolicates one raw event. Returns the input unchanged when there is nothing to
    /// do (found by a probe that parses only `debug_meta` and the frames), when the event
    /// is not valid JSON (ingestion rejects it next) or when the result would exceed
    /// `max_len` bytes.
    pub fn process<'a>(&self, bytes: &'a [u8], max_len: usize) -> Processed<'a> {
        let unchanged = Processed {
            bytes: Cow::Borrowed(bytes),
            missing: Vec::new(),
        };
        if !self.worth_parsing(bytes) {
            return unchanged;
        }
        let Ok(mut ev) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return unchanged;
        };
        let outcome = self.symbolicate_value(&mut ev, Misses::Trust);
        if !outcome.changed {
            return Processed {
                bytes: Cow::Borrowed(bytes),
                missing: outcome.missing,
            };
        }
        match serde_json::to_vec(&ev) {
            Ok(out) if out.len() <= max_len => Processed {
                bytes: Cow::Owned(out),
                missing: outcome.missing,
            },
            _ => Processed {
                bytes: Cow::Borrowed(bytes),
                missing: outcome.missing,
            },
        }
    }
}

/// Makes what is cached about an image go when a debug file of it enters or leaves
/// `difs`' index (here, or on another node sharing the store, seen at its next refresh):
/// the symbolicator's SymCache, columns and remembered miss, minidump processing's parsed
/// Breakpad symbols.
pub fn forget_on_change(
    difs: &crate::difs::Difs,
    sym: &Arc<Symbolicator>,
    minidumps: &crate::minidump::Minidumps,
) {
    // Weak: the symbolicator's lookup may be `difs` itself.
    let sym = Arc::downgrade(sym);
    let symbols = minidumps.symbol_files();
    difs.on_change(Box::new(move |debug_id| {
        if let Some(sym) = sym.upgrade() {
            sym.forget(debug_id);
        }
        symbols.forget(debug_id);
    }));
}

/// Whether a raw event may need symbolication at all (it has `debug_meta`): a substring
/// search, for deciding to leave the async thread before [`process`].
pub fn may_need(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b"\"debug_meta\"").is_some()
}

/// What ingestion calls for each event: symbolicates it when a symbolicator is
/// configured (see [`Symbolicator::process`]), else returns it unchanged.
pub fn process<'a>(sym: Option<&Symbolicator>, bytes: &'a [u8], max_len: usize) -> Processed<'a> {
    match sym {
        Some(s) => s.process(bytes, max_len),
        None => Processed {
            bytes: Cow::Borrowed(bytes),
            missing: Vec::new(),
        },
    }
}
