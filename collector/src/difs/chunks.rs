//! Staged chunks of sentry-cli's chunked uploads, one file per SHA-1 under
//! `<data>/difs/chunks/`, bounded in total size and swept when stale.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::DifError;

/// How long a chunk waits for the assemble call that uses it.
pub const CHUNK_TTL: Duration = Duration::from_secs(3600);

/// The chunk staging directory.
#[derive(Debug)]
pub struct Chunks {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes staged now (what the directory holds, give or take a sweep).
    used: Mutex<u64>,
}

/// Whether `s` is a SHA-1 in lower-case hex.
pub fn is_sha1(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Chunks {
    /// Opens (creating) the directory; at most `max_bytes` may be staged at once.
    pub fn open(dir: PathBuf, max_bytes: u64) -> Result<Chunks, DifError> {
        std::fs::create_dir_all(&dir).map_err(|e| DifError::Io(dir.clone(), e))?;
        let c = Chunks {
            dir,
            max_bytes,
            used: Mutex::new(0),
        };
        c.sweep(CHUNK_TTL);
        Ok(c)
    }

    fn path(&self, checksum: &str) -> PathBuf {
        self.dir.join(checksum)
    }

    /// Whether a chunk is staged.
    pub fn has(&self, checksum: &str) -> bool {
        is_sha1(checksum) && self.path(checksum).is_file()
    }

    /// Stages chunks whose checksums were verified by the caller. All or none: when the
    /// staging area cannot take them all, nothing is written.
    pub fn put_all(&self, chunks: &[(String, Vec<u8>)]) -> Result<(), DifError> {
        let new: Vec<&(String, Vec<u8>)> = chunks.iter().filter(|(c, _)| !self.has(c)).collect();
        let bytes: u64 = new.iter().map(|(_, d)| d.len() as u64).sum();
        {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            if *used + bytes > self.max_bytes {
                return Err(DifError::StagingFull(self.max_bytes));
            }
            *used += bytes;
        }
        for (i, (checksum, data)) in new.iter().enumerate() {
            let tmp = self.dir.join(format!(".{checksum}.{}", std::process::id()));
            let written = std::fs::write(&tmp, data)
                .and_then(|()| std::fs::rename(&tmp, self.path(checksum)));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                for (c, _) in &new[..i] {
                    let _ = std::fs::remove_file(self.path(c));
                }
                self.release(bytes);
                return Err(DifError::Io(self.dir.clone(), e));
            }
        }
        Ok(())
    }

    fn release(&self, bytes: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(bytes);
    }

    /// The path of a staged chunk.
    pub fn staged(&self, checksum: &str) -> Option<PathBuf> {
        self.has(checksum).then(|| self.path(checksum))
    }

    /// Removes chunks (once their file is assembled, or failed to).
    pub fn remove(&self, checksums: &[String]) {
        let mut freed = 0;
        for c in checksums {
            if !is_sha1(c) {
                continue;
            }
            let p = self.path(c);
            if let Ok(m) = std::fs::metadata(&p)
                && std::fs::remove_file(&p).is_ok()
            {
                freed += m.len();
            }
        }
        self.release(freed);
    }

    /// Deletes chunks older than `ttl` and recounts what is staged.
    pub fn sweep(&self, ttl: Duration) {
        let now = SystemTime::now();
        let mut total = 0;
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for entry in dir.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age > ttl);
                if old {
                    let _ = std::fs::remove_file(entry.path());
                } else {
                    total += meta.len();
                }
            }
        }
        *self.used.lock().unwrap_or_else(|e| e.into_inner()) = total;
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
