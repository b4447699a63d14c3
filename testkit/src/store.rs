//! Which store the collector under test uses: SQLite in its data directory (the default),
//! or with `ERRSCOPE_TEST_STORE=postgres` a PostgreSQL database of its own per data
//! directory, on this process's [`Cluster::shared`] server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::pg::Cluster;

/// The environment variable that picks the store: `postgres`, or unset (SQLite).
pub const STORE_ENV: &str = "ERRSCOPE_TEST_STORE";

/// Whether this run tests the PostgreSQL store.
pub fn postgres() -> bool {
    std::env::var(STORE_ENV).is_ok_and(|v| v == "postgres")
}

/// The `--database` URL for a collector over `data_dir`: `None` on SQLite; on PostgreSQL a
/// fresh database the first time a data directory is named, the same one after (so a
/// restarted collector finds its data, and a command-line tool the server's).
///
/// # Panics
///
/// When the PostgreSQL server or the database cannot be created; the message says why.
pub fn database_for(data_dir: &Path) -> Option<String> {
    if !postgres() {
        return None;
    }
    static DATABASES: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let key = data_dir.to_owned();
    let mut known = DATABASES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(url) = known.get(&key) {
        return Some(url.clone());
    }
    let url = Cluster::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("a PostgreSQL database for {}: {e}", data_dir.display()));
    known.insert(key, url.clone());
    Some(url)
}
