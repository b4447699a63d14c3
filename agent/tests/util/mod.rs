//! Helpers shared by the integration tests: a fresh outbox per test, readers of the
//! stored rows, and a lock because the agent is process-global.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests that call `errscope::init` run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A temp dir with the path of an outbox file in it (not created yet).
pub struct Outbox {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Outbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        Self { dir, path }
    }

    fn conn(&self) -> Connection {
        Connection::open(&self.path).expect("open outbox")
    }

    /// Every stored event's JSON, oldest first.
    pub fn events(&self) -> Vec<Value> {
        read_events(&self.path)
    }

    pub fn event(&self, id: &str) -> Option<Value> {
        self.events()
            .into_iter()
            .find(|e| e["event_id"].as_str() == Some(id))
    }

    /// `(id, event_id, count, start, end)` of every count row.
    pub fn counts(&self) -> Vec<(String, String, i64, f64, f64)> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, event_id, count, start, \"end\" FROM counts")
            .expect("prepare");
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    pub fn discards(&self, reason: &str) -> i64 {
        self.conn()
            .query_row(
                "SELECT coalesce(sum(quantity), 0) FROM discards WHERE reason = ?1",
                [reason],
                |r| r.get(0),
            )
            .expect("discards")
    }

    /// The raw bytes of the database and its WAL, to prove a secret never reached disk.
    pub fn raw_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let p = PathBuf::from(format!("{}{suffix}", self.path.display()));
            if let Ok(bytes) = std::fs::read(p) {
                all.extend(bytes);
            }
        }
        all
    }
}

pub fn read_events(path: &Path) -> Vec<Value> {
    let conn = Connection::open(path).expect("open outbox");
    let mut stmt = conn
        .prepare("SELECT payload FROM events ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("query")
        .map(|p| serde_json::from_slice(&p.expect("row")).expect("event json"))
        .collect()
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Function names of an exception's frames, oldest first.
pub fn functions(exception: &Value) -> Vec<String> {
    exception["stacktrace"]["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter_map(|f| f["function"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Options for a test outbox: a short shutdown so a failing test does not hang.
pub fn options(outbox: &Outbox) -> errscope::Options {
    errscope::Options::new()
        .database(&outbox.path)
        .release("shop@1.4.0")
        .environment("test")
}
