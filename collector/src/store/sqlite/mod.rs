//! The embedded SQLite store: schema and migrations, the writer thread, the read pool and
//! queries; [`SqliteStore`] puts them behind the [`Store`](super::Store) seam.
//!
//! One connection writes (owned by the [`writer`] thread, which batches many requests into
//! one transaction; `apply.rs` holds that transaction's SQL); reads run on a small pool of
//! other connections, which WAL mode lets proceed while the writer commits.

mod access;
pub mod alerts;
mod apply;
pub mod difs;
pub mod health;
mod minidumps;
pub mod queries;
mod store;
pub mod symbolication;
mod workflow;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

pub use store::SqliteStore;

use super::{ProjectRow, StoreError, new_key};

/// Numbered migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL,
        events INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL DEFAULT 0,
        last_seen INTEGER
    );
    CREATE TABLE keys (
        public_key TEXT PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        created INTEGER NOT NULL
    );
    CREATE TABLE issues (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        fingerprint TEXT NOT NULL,
        class TEXT NOT NULL,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        culprit TEXT NOT NULL,
        level TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'unresolved',
        is_regression INTEGER NOT NULL DEFAULT 0,
        count INTEGER NOT NULL DEFAULT 0,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        latest_event_id TEXT,
        UNIQUE (project_id, fingerprint)
    );
    CREATE INDEX issues_status_last_seen ON issues (project_id, status, last_seen DESC, id DESC);
    CREATE INDEX issues_status_first_seen ON issues (project_id, status, first_seen DESC, id DESC);
    CREATE INDEX issues_status_count ON issues (project_id, status, count DESC, id DESC);
    -- No status-less twins of these: every event rewrites `count` and `last_seen`, and
    -- each index on them costs the writer; `status=all` lists sort instead.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        issue_id INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        received INTEGER NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        environment TEXT,
        release TEXT,
        encoding INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE UNIQUE INDEX events_event_id ON events (project_id, event_id);
    CREATE INDEX events_issue ON events (issue_id, id);
    CREATE TABLE event_ids (
        project_id INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        issue_id INTEGER NOT NULL,
        received INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX event_ids_key ON event_ids (project_id, event_id);
    CREATE TABLE issue_hourly (
        issue_id INTEGER NOT NULL,
        hour INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (issue_id, hour)
    ) WITHOUT ROWID;
    CREATE TABLE issue_tags (
        issue_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (issue_id, key, value)
    ) WITHOUT ROWID;
    CREATE TABLE project_tags (
        project_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (project_id, key, value)
    ) WITHOUT ROWID;
    CREATE TABLE discards (
        project_id INTEGER NOT NULL,
        reason TEXT NOT NULL,
        category TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        PRIMARY KEY (project_id, reason, category)
    ) WITHOUT ROWID;
    CREATE TABLE applied_counts (
        id TEXT PRIMARY KEY,
        received INTEGER NOT NULL
    );
    CREATE TABLE pending_counts (
        id TEXT PRIMARY KEY,
        project_id INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        count INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        received INTEGER NOT NULL
    );
    CREATE INDEX pending_counts_event ON pending_counts (project_id, event_id);
    "#,
    // 2: dashboard sessions survive restarts; only a hash of each session id is stored.
    r#"
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        expires INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 3: uploaded debug files (collector/src/difs/): the files live under <data>/difs/.
    r#"
    CREATE TABLE difs (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        checksum TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_kind TEXT NOT NULL,
        arch TEXT NOT NULL,
        debug_id TEXT NOT NULL,
        code_id TEXT,
        features TEXT NOT NULL,
        size INTEGER NOT NULL,
        uploaded INTEGER NOT NULL,
        last_used INTEGER,
        UNIQUE (project_id, checksum)
    );
    CREATE INDEX difs_debug_id ON difs (debug_id);
    CREATE INDEX difs_code_id ON difs (code_id);
    "#,
    // 4: alerts: rules, the action-interval marks, and the durable delivery queue and log.
    r#"
    CREATE TABLE alert_rules (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        trigger_kind TEXT NOT NULL,
        count INTEGER NOT NULL,
        minutes INTEGER NOT NULL,
        filter TEXT NOT NULL,
        interval_minutes INTEGER NOT NULL,
        channel TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX alert_rules_project ON alert_rules (project_id, id);
    CREATE TABLE alert_fired (
        rule_id INTEGER NOT NULL,
        issue_id INTEGER NOT NULL,
        fired_at INTEGER NOT NULL,
        PRIMARY KEY (rule_id, issue_id)
    ) WITHOUT ROWID;
    CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY,
        delivery_id TEXT NOT NULL UNIQUE,
        rule_id INTEGER NOT NULL,
        issue_id INTEGER,
        trigger_kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt INTEGER NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        response_status INTEGER,
        last_error TEXT
    );
    CREATE INDEX alert_deliveries_due ON alert_deliveries (status, next_attempt);
    CREATE INDEX alert_deliveries_rule ON alert_deliveries (rule_id, id);
    "#,
    // 5: retained events whose frames wait for an image's debug file (symbolicate/).
    r#"
    CREATE TABLE unsymbolicated (
        id INTEGER PRIMARY KEY,
        debug_id TEXT NOT NULL,
        project_id INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        received INTEGER NOT NULL,
        UNIQUE (project_id, event_id, debug_id)
    );
    CREATE INDEX unsymbolicated_image ON unsymbolicated (debug_id, id);
    "#,
    // 6: teams and access: users, memberships, API tokens, user sessions, invites, login
    // throttle windows, the audit log (store/sqlite/access.rs).
    access::MIGRATION,
    // 7: the sessions of the single admin login, replaced by user_sessions in 6.
    "DROP TABLE sessions;",
    // 8: kept minidumps (collector/src/minidump/): the dumps live under <data>/minidumps/.
    minidumps::MIGRATION,
    // 9: release health: sessions and session aggregates (store/sqlite/health.rs).
    health::MIGRATION,
    // 10: the issue workflow: assignees and comments (store/sqlite/workflow.rs).
    workflow::MIGRATION,
];

/// Opens a connection with the collector's pragmas.
pub fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Durable across a process crash; with WAL, `NORMAL` can lose the last commits
        // only on a power cut, and the writer's group commit keeps fsyncs rare either way.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -8_000)?;
    } else {
        conn.pragma_update(None, "cache_size", -2_000)?;
    }
    Ok(conn)
}

/// The database file inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("errscope.sqlite3")
}

/// Creates the data directory and database if needed and runs pending migrations.
pub fn open_and_migrate(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Io(data_dir.to_owned(), e))?;
    let mut conn = open_connection(&db_path(data_dir), false)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Runs the migrations not yet applied.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew(version, known));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// A small pool of read-only connections.
#[derive(Debug)]
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

const MAX_IDLE_READERS: usize = 4;

impl ReadPool {
    /// A pool over the database at `path`.
    pub fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled connection, off the async threads.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let path = self.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => match open_connection(&path, true) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&conn);
            (Some(conn), result)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        if let Some(conn) = conn {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        result
    }
}

/// Reads a setting.
pub fn get_setting(conn: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Writes a setting.
pub fn set_setting(conn: &Connection, name: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

/// Creates a project with a fresh key. Fails on a duplicate name.
pub fn create_project(conn: &Connection, name: &str) -> Result<ProjectRow, StoreError> {
    let now = crate::time::now_ms();
    conn.execute(
        "INSERT INTO projects (name, created) VALUES (?1, ?2)",
        params![name, now],
    )?;
    let id = conn.last_insert_rowid();
    let key = new_key();
    conn.execute(
        "INSERT INTO keys (public_key, project_id, created) VALUES (?1, ?2, ?3)",
        params![key, id, now],
    )?;
    Ok(ProjectRow {
        id,
        name: name.to_owned(),
        key,
    })
}

/// Every project with its first key, by id.
pub fn list_projects(conn: &Connection) -> Result<Vec<ProjectRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.id, p.name, (SELECT public_key FROM keys k WHERE k.project_id = p.id ORDER BY created, public_key LIMIT 1)
         FROM projects p ORDER BY p.id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ProjectRow {
                id: r.get(0)?,
                name: r.get(1)?,
                key: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The project a public key belongs to.
pub fn project_of_key(conn: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT project_id FROM keys WHERE public_key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

#[cfg(test)]
pub(crate) mod test_db {
    //! A fresh, migrated database in a temp dir per test.
    use super::*;

    /// Keeps the temp dir alive as long as the connection.
    pub(crate) struct TestDb {
        pub(crate) dir: tempfile::TempDir,
        pub(crate) conn: Connection,
    }

    pub(crate) fn fresh() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = open_and_migrate(dir.path()).expect("migrate");
        TestDb { dir, conn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_projects_round_trip() {
        let mut db = test_db::fresh();
        migrate(&mut db.conn).unwrap();
        let v: i64 = db
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let p = create_project(&db.conn, "shop").unwrap();
        assert_eq!(project_of_key(&db.conn, &p.key).unwrap(), Some(p.id));
        assert!(create_project(&db.conn, "shop").is_err());
        assert_eq!(list_projects(&db.conn).unwrap(), vec![p]);
        assert!(db.dir.path().join("errscope.sqlite3").exists());
    }
}
