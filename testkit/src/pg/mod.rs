//! A throwaway PostgreSQL server for tests: Debian's binaries, a temporary data directory,
//! 127.0.0.1 on a free port, durability off for speed, gone with its test process.
//!
//! [`Cluster::start`] runs `initdb` and `postgres` with `trust` authentication for the
//! superuser `postgres`, UTF-8 under `C.UTF-8`, `fsync`, `synchronous_commit` and
//! `full_page_writes` off and 200 connections. Both refuse root, so a root caller runs them
//! as the `postgres` user (set in the child before exec, like `runuser` without the extra
//! process, so the postmaster is the caller's own child). The data directory is a copy of a
//! template that the first `initdb` of these binaries leaves beside the clusters (a thousand
//! files copied in a fraction of a second, where initdb takes seconds). The Unix socket and the log
//! (`server.log`) sit in the cluster's temporary directory beside `data/`: under `/dev/shm`
//! when it has room, else `$TMPDIR` ([`TMPDIR_ENV`] chooses). [`Cluster::shared`] is one
//! such server per test process.
//!
//! Dropping a cluster stops it (fast shutdown, SIGKILL after 10 s) and removes its directory.
//! A watchdog `sh` does the same when the process that started it ends without dropping it:
//! a static ([`Cluster::shared`]), a panic, SIGKILL. A start also sweeps away clusters whose
//! process and watchdog were both killed.

mod server;

use std::ffi::OsString;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tempfile::TempDir;
use tokio_postgres::NoTls;

use server::{Layout, StartFailure};

/// The environment variable naming the directory with `initdb` and `postgres`, instead of
/// the highest version under `/usr/lib/postgresql/*/bin`.
pub const BIN_ENV: &str = "ERRSCOPE_PG_BIN";

/// The environment variable naming the directory the clusters' temporary directories (and
/// the initdb template) go in, instead of `$TMPDIR` or `/tmp`: `/dev/shm` makes them faster
/// and costs memory.
pub const TMPDIR_ENV: &str = "ERRSCOPE_PG_TMPDIR";

/// How many free ports a start tries when another process takes the one picked first.
const PORT_ATTEMPTS: usize = 8;
/// How long a restart waits for its port to be free again.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// What went wrong starting, stopping or using a test server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `initdb` and `postgres` where they were looked for.
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) in {searched}: install Debian's \
         `postgresql` package (`apt-get install postgresql`; scripts/setup does), or set \
         ERRSCOPE_PG_BIN to the directory holding them"
    )]
    NotInstalled {
        /// The directories searched.
        searched: String,
    },
    /// Running as root, but there is no `postgres` account to run the server as.
    #[error(
        "running as root, and initdb refuses root, but there is no `postgres` user to run \
         the server as ({detail}); Debian's `postgresql` package creates it"
    )]
    NoServerUser {
        /// What `id postgres` said.
        detail: String,
    },
    /// The temporary directory could not be made.
    #[error("could not create the test server's temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// A system call or a process around the server failed.
    #[error("could not {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb failed ({status}):\n{output}")]
    Initdb {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed.
        output: String,
    },
    /// The server did not come up.
    #[error(
        "PostgreSQL did not start on 127.0.0.1:{port}: {reason}\n\
         last lines of {}:\n{log}", log_path.display()
    )]
    Start {
        /// The port it was given.
        port: u16,
        /// What happened (exit status, timeout).
        reason: String,
        /// The server's log file.
        log_path: PathBuf,
        /// Its last lines from this start.
        log: String,
    },
    /// The server is stopped ([`Cluster::stop`]) or died; [`Cluster::restart`] starts it again.
    #[error("the PostgreSQL test server is not running (stopped, or it died: see its server.log)")]
    Stopped,
    /// A database name that is not a plain lower-case identifier.
    #[error(
        "invalid database name {0:?}: use 1 to 63 characters of a-z, 0-9 and _, \
         not starting with a digit"
    )]
    DatabaseName(String),
    /// A statement the test kit ran failed.
    #[error("{sql} on {url}: {detail}")]
    Sql {
        /// The statement.
        sql: String,
        /// The database it ran in.
        url: String,
        /// The server's message (`database "x" already exists`), else the client's.
        detail: String,
        /// The server's or the client's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A running PostgreSQL server of its own, in a temporary directory; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    layout: Layout,
    port: u16,
    /// The server's major version (`PG_VERSION`).
    major: u32,
    postmaster: Mutex<Option<Child>>,
    watchdog: Option<(Child, ChildStdin)>,
    next_database: AtomicU64,
    // Last: removed after the server has stopped.
    _dir: TempDir,
}

impl Cluster {
    /// Creates a cluster in a new temporary directory and starts its server on a free
    /// 127.0.0.1 port, returning once it accepts connections (at most 30 s).
    ///
    /// The binaries come from [`BIN_ENV`] if set, else the highest version under
    /// `/usr/lib/postgresql/*/bin`; without them this is [`Error::NotInstalled`], which says
    /// to install Debian's `postgresql` package.
    pub fn start() -> Result<Cluster, Error> {
        Self::start_with(std::env::var_os(BIN_ENV))
    }

    fn start_with(bin_env: Option<OsString>) -> Result<Cluster, Error> {
        let bin = server::find_bin_dir(bin_env, Path::new(server::DEBIAN_ROOT))?;
        let owner = server::owner()?;
        let parent = server::parent_dir();
        server::sweep(&parent);
        let dir = tempfile::Builder::new()
            .prefix("errscope-pg-")
            .tempdir_in(&parent)
            .map_err(Error::TempDir)?;
        server::write_owner(dir.path())?;
        server::chown(dir.path(), owner)?;
        let watchdog = server::spawn_watchdog(dir.path())?;
        let layout = Layout {
            bin,
            owner,
            dir: dir.path().to_owned(),
            data: dir.path().join("data"),
            log: dir.path().join("server.log"),
        };
        // Built before anything can fail, so its Drop cleans up after every error below.
        let mut cluster = Cluster {
            layout,
            port: 0,
            major: 0,
            postmaster: Mutex::new(None),
            watchdog: Some(watchdog),
            next_database: AtomicU64::new(1),
            _dir: dir,
        };
        let layout = &cluster.layout;
        let mut from_template = server::init_data(layout)?;
        let major = server::major_version(&layout.data);
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = server::free_port()?;
            match layout.start(port, &|| accepts_connections(port)) {
                Ok(child) => {
                    cluster.port = port;
                    cluster.major = major;
                    *cluster
                        .postmaster
                        .get_mut()
                        .unwrap_or_else(PoisonError::into_inner) = Some(child);
                    return Ok(cluster);
                }
                Err(StartFailure::PortInUse) => last = Some(port),
                Err(StartFailure::Failed(_)) if from_template => {
                    // A template gone bad: never use it again, and start from initdb.
                    server::discard_template(layout);
                    fs::remove_dir_all(&layout.data).map_err(|source| Error::Io {
                        what: format!("remove {}", layout.data.display()),
                        source,
                    })?;
                    from_template = server::init_data(layout)?;
                }
                Err(StartFailure::Failed(error)) => return Err(error),
            }
        }
        Err(Error::Start {
            port: last.unwrap_or(0),
            reason: format!(
                "{PORT_ATTEMPTS} free ports were each taken before the server bound them"
            ),
            log_path: cluster.layout.log.clone(),
            log: String::new(),
        })
    }

    /// The one server of this test process, started on first use. It is never dropped: the
    /// watchdog stops it and removes its directory when the process ends, however it ends.
    ///
    /// # Panics
    ///
    /// When it cannot start (the message says why, e.g. that PostgreSQL is not installed);
    /// [`Cluster::try_shared`] returns the error instead.
    pub fn shared() -> &'static Cluster {
        match Self::try_shared() {
            Ok(cluster) => cluster,
            Err(error) => panic!("the shared PostgreSQL test server did not start: {error}"),
        }
    }

    /// [`Cluster::shared`], or the error its one start attempt ended with.
    pub fn try_shared() -> Result<&'static Cluster, &'static Error> {
        static SHARED: OnceLock<Result<Cluster, Error>> = OnceLock::new();
        SHARED.get_or_init(Cluster::start).as_ref()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the superuser on the default database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME` (whether or not that database exists).
    pub fn database_url(&self, name: &str) -> String {
        url(self.port, name)
    }

    /// The server's TCP port on 127.0.0.1; it keeps it across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.layout.data
    }

    /// The server's log file (what it printed to stderr, across restarts).
    pub fn log_path(&self) -> &Path {
        &self.layout.log
    }

    /// Creates the empty database `name` (1 to 63 characters of `a-z`, `0-9`, `_`) and
    /// returns its URL; [`Error::Sql`] if it exists.
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        check_name(name)?;
        // From 15 on the default copies template1 through the WAL: with 8 tests creating
        // databases at once, 2.5x slower than copying its files (BENCHMARKS.md).
        let strategy = if self.major >= 15 {
            " STRATEGY = FILE_COPY"
        } else {
            ""
        };
        self.execute("postgres", &format!("CREATE DATABASE \"{name}\"{strategy}"))?;
        Ok(self.database_url(name))
    }

    /// Creates an empty database with a name not used before in this cluster (`test_1`,
    /// `test_2`, …) and returns its URL: one per test keeps tests apart.
    pub fn fresh_database(&self) -> Result<String, Error> {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("test_{n}"))
    }

    /// Drops the database `name` if it exists, disconnecting its clients first.
    pub fn drop_database(&self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        self.execute(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        )
    }

    /// Runs `sql` (one or more statements, no results) in the database `name`.
    pub fn execute(&self, name: &str, sql: &str) -> Result<(), Error> {
        if !self.is_running() {
            return Err(Error::Stopped);
        }
        execute(&self.database_url(name), sql, Duration::from_secs(10))
    }

    /// Whether the server is up (not stopped, not dead).
    pub fn is_running(&self) -> bool {
        let mut postmaster = self.postmaster();
        match postmaster.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *postmaster = None;
                false
            }
            None => false,
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected, committed data kept) and
    /// starts it again on the same port and data directory, returning once it accepts
    /// connections. Also starts a stopped server.
    pub fn restart(&self) -> Result<(), Error> {
        let mut postmaster = self.postmaster();
        if let Some(mut child) = postmaster.take() {
            server::stop(&mut child)?;
        }
        let port = self.port;
        let deadline = std::time::Instant::now() + RESTART_PORT_WAIT;
        loop {
            match self.layout.start(port, &|| accepts_connections(port)) {
                Ok(child) => {
                    *postmaster = Some(child);
                    return Ok(());
                }
                Err(StartFailure::PortInUse) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(StartFailure::PortInUse) => {
                    return Err(Error::Start {
                        port,
                        reason: "its port is taken by another process".into(),
                        log_path: self.layout.log.clone(),
                        log: String::new(),
                    });
                }
                Err(StartFailure::Failed(error)) => return Err(error),
            }
        }
    }

    /// Stops the server (fast shutdown, SIGKILL after 10 s) and keeps its data directory;
    /// [`Cluster::restart`] starts it again. Stopping a stopped server does nothing.
    pub fn stop(&self) -> Result<(), Error> {
        if let Some(mut child) = self.postmaster().take() {
            server::stop(&mut child)?;
        }
        Ok(())
    }

    fn postmaster(&self) -> MutexGuard<'_, Option<Child>> {
        self.postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self
            .postmaster
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = server::stop(&mut child);
        }
        // The server is down: the watchdog has nothing left to do, and the directory goes
        // with `_dir` (removed after this).
        if let Some((mut watchdog, pipe)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(pipe);
        }
    }
}

fn url(port: u16, database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{database}")
}

fn check_name(name: &str) -> Result<(), Error> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let starts = name.bytes().next().is_some_and(|b| !b.is_ascii_digit());
    if plain && starts && name.len() <= 63 {
        Ok(())
    } else {
        Err(Error::DatabaseName(name.to_owned()))
    }
}

/// Whether a real client can connect and run a query (the readiness check).
fn accepts_connections(port: u16) -> bool {
    execute(&url(port, "postgres"), "SELECT 1", Duration::from_secs(2)).is_ok()
}

/// Runs `sql` in the database at `url` with a connection of its own.
fn execute(url: &str, sql: &str, connect_timeout: Duration) -> Result<(), Error> {
    let result = on_own_runtime(|| async {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.connect_timeout(connect_timeout);
        let (client, connection) = config.connect(NoTls).await?;
        let connection = tokio::spawn(connection);
        let result = client.batch_execute(sql).await;
        drop(client);
        let _ = connection.await;
        result
    });
    let sql_error = |source: tokio_postgres::Error| Error::Sql {
        sql: sql.to_owned(),
        url: url.to_owned(),
        detail: match source.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => std::iter::successors(Some(&source as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": "),
        },
        source,
    };
    result?.map_err(sql_error)
}

/// Runs one query in the database at `url` (any database, not only a [`Cluster`]'s) and
/// returns its rows: for tests that check what a collector stored.
pub fn query(url: &str, sql: &str) -> Result<Vec<tokio_postgres::Row>, Error> {
    let result = on_own_runtime(|| async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let connection = tokio::spawn(connection);
        let rows = client.query(sql, &[]).await;
        drop(client);
        let _ = connection.await;
        rows
    })?;
    result.map_err(|source| Error::Sql {
        sql: sql.to_owned(),
        url: url.to_owned(),
        detail: source
            .as_db_error()
            .map_or_else(|| source.to_string(), |db| db.message().to_owned()),
        source,
    })
}

/// Runs a future on a current-thread runtime in a thread of its own, so this works from
/// plain tests and from inside a caller's runtime (`#[tokio::test]`) alike.
fn on_own_runtime<T, F>(make: impl FnOnce() -> F + Send) -> Result<T, Error>
where
    F: Future<Output = T>,
    T: Send,
{
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Io {
                    what: "build a tokio runtime".into(),
                    source,
                })?;
            Ok(runtime.block_on(make()))
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_plain_identifiers() {
        for good in ["a", "test_1", "_x", &"a".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "A", "a-b", "a\"b", "a b", &"a".repeat(64)] {
            let err = check_name(bad).unwrap_err();
            assert!(matches!(err, Error::DatabaseName(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn no_binaries_is_an_error_saying_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let err = Cluster::start_with(Some(empty.path().into())).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::NotInstalled { .. }), "{text}");
        assert!(text.contains(&empty.path().display().to_string()), "{text}");
        assert!(text.contains("`postgresql` package"), "{text}");
    }
}
