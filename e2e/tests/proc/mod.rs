//! Helpers for the tests that run the collector and the agents as processes of their own:
//! `e2e-collector` (killed, restarted, its memory read) and `e2e-load` (agents at a steady
//! rate), what they print, `/proc` figures, the collector's database, a seeded generator.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The admin token the collector processes are started with.
pub(crate) const TOKEN: &str = "e2e-admin-token";

/// A number from the environment, if it is set and parses.
pub(crate) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Everything a child wrote to a pipe, collected by a thread.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<String>>);

impl Captured {
    /// Starts collecting `pipe` on a thread of its own.
    fn collect(pipe: impl std::io::Read + Send + 'static) -> (Self, JoinHandle<()>) {
        let captured = Captured::default();
        let sink = captured.clone();
        let handle = std::thread::spawn(move || {
            let mut lines = BufReader::new(pipe).lines();
            while let Some(Ok(line)) = lines.next() {
                let mut text = sink.0.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
            }
        });
        (captured, handle)
    }

    /// What was collected so far.
    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The resident set of a process now (`VmRSS`), in KiB; `None` once it is gone.
pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// A process's peak resident set (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A collector process (`e2e-collector`).
pub(crate) struct CollectorProc {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The default project's public key.
    pub(crate) key: String,
    /// Its data directory.
    pub(crate) data: PathBuf,
    child: Child,
    /// Held open: the collector stops cleanly when it closes.
    stdin: Option<ChildStdin>,
    stderr: Captured,
}

/// How a collector process is started.
#[derive(Clone, Debug)]
pub(crate) struct CollectorArgs {
    /// Its data directory.
    pub(crate) data: PathBuf,
    /// Full events kept per issue.
    pub(crate) max_events_per_issue: i64,
}

impl CollectorProc {
    /// Starts a collector on `listen` (port 0 for a fresh one), waiting at most `timeout`
    /// for it to listen. `None` if it exited first (its port still taken, say).
    pub(crate) fn start(
        args: &CollectorArgs,
        listen: SocketAddr,
        timeout: Duration,
    ) -> Option<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-collector"));
        match errscope_testkit::store::database_for(&args.data) {
            Some(url) => child.env("ERRSCOPE_DATABASE_URL", url),
            None => child.env_remove("ERRSCOPE_DATABASE_URL"),
        };
        let mut child = child
            .arg("--data")
            .arg(&args.data)
            .args(["--listen", &listen.to_string()])
            .args([
                "--max-events-per-issue",
                &args.max_events_per_issue.to_string(),
            ])
            .args(["--admin-token", TOKEN])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn e2e-collector");
        let stdin = child.stdin.take();
        let (stderr, _) = Captured::collect(child.stderr.take().expect("stderr"));
        // The two lines it prints once it listens, read on a thread: the wait is bounded.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut addr = None;
            let mut key = None;
            while let Some(Ok(line)) = lines.next() {
                if let Some(a) = line.strip_prefix("addr ") {
                    addr = a.parse::<SocketAddr>().ok();
                } else if let Some(k) = line.strip_prefix("key ") {
                    key = Some(k.to_owned());
                }
                if addr.is_some() && key.is_some() {
                    break;
                }
            }
            let _ = tx.send(addr.zip(key));
            // Keep draining, so the collector never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(timeout) {
            Ok(Some((addr, key))) => Some(CollectorProc {
                addr,
                key,
                data: args.data.clone(),
                child,
                stdin,
                stderr,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// Starts a collector on `addr` again, retrying for up to `timeout` while the port is
    /// not free yet.
    pub(crate) fn restart(args: &CollectorArgs, addr: SocketAddr, timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(c) = Self::start(args, addr, left.max(Duration::from_secs(1))) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "the collector did not start again on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The default project's DSN.
    pub(crate) fn dsn(&self) -> String {
        format!("http://{}@{}/1", self.key, self.addr)
    }

    /// What it wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// SIGKILL, and wait for it to be gone.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin, so it stops cleanly, and waits at most `timeout` (then SIGKILL).
    /// Returns whether it exited by itself with success.
    pub(crate) fn stop(mut self, timeout: Duration) -> bool {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }

    /// `GET path` with the admin token: status and body.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// A Prometheus counter or gauge from `/metrics` (the line that starts with `name`).
    pub(crate) fn metric(&self, name: &str) -> u64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in {body}"))
    }

    /// The `errscope_requests_rejected_total` lines that are not zero.
    pub(crate) fn rejections(&self) -> Vec<String> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with("errscope_requests_rejected_total{"))
            .filter(|l| !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for CollectorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 `GET` with the admin token and `connection: close`.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, body.to_owned()))
}

/// An agent host process (`e2e-load`).
pub(crate) struct LoadProc {
    /// Its outbox.
    pub(crate) db: PathBuf,
    child: Child,
    stdout: Captured,
    stdout_done: Option<JoinHandle<()>>,
    stderr: Captured,
    stderr_done: Option<JoinHandle<()>>,
}

/// What an agent process reported when it exited.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    /// The ids it printed (`--ids`).
    pub(crate) ids: Vec<String>,
    /// The `summary` line's figures.
    pub(crate) summary: Vec<(String, String)>,
    /// Everything it wrote to stderr.
    pub(crate) stderr: String,
    /// Whether it exited with success (its outbox emptied).
    pub(crate) success: bool,
}

impl LoadResult {
    /// A figure of the summary line (0 if absent).
    pub(crate) fn num(&self, key: &str) -> u64 {
        self.value(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// A figure of the summary line.
    pub(crate) fn value(&self, key: &str) -> Option<&str> {
        self.summary
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl LoadProc {
    /// Starts `e2e-load` shipping to `dsn` with outbox `db` and the other `args`.
    pub(crate) fn start(dsn: &str, db: &Path, args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-load"))
            .args(["--dsn", dsn])
            .arg("--db")
            .arg(db)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn e2e-load");
        let (stdout, stdout_done) = Captured::collect(child.stdout.take().expect("stdout"));
        let (stderr, stderr_done) = Captured::collect(child.stderr.take().expect("stderr"));
        LoadProc {
            db: db.to_owned(),
            child,
            stdout,
            stdout_done: Some(stdout_done),
            stderr,
            stderr_done: Some(stderr_done),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits at most until `deadline` for it to exit (then SIGKILLs it) and returns what it
    /// printed.
    pub(crate) fn finish(mut self, deadline: Instant) -> LoadResult {
        let mut success = false;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    success = status.success();
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        for done in [self.stdout_done.take(), self.stderr_done.take()]
            .into_iter()
            .flatten()
        {
            let _ = done.join();
        }
        let stdout = self.stdout.text();
        let mut result = LoadResult {
            stderr: self.stderr.text(),
            success,
            ..LoadResult::default()
        };
        for line in stdout.lines() {
            if let Some(id) = line.strip_prefix("id ") {
                result.ids.push(id.to_owned());
            } else if let Some(summary) = line.strip_prefix("summary ") {
                result.summary = summary
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
            }
        }
        result
    }
}

impl Drop for LoadProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A read-only look at the collector's database (it may be running: WAL lets a reader in),
/// on whichever store the run uses (`ERRSCOPE_TEST_STORE`).
pub(crate) enum Db {
    /// `errscope.sqlite3` in the data directory.
    Sqlite(rusqlite::Connection),
    /// The data directory's PostgreSQL database.
    Postgres(String),
}

impl Db {
    /// Opens the database of a data directory.
    pub(crate) fn open(data: &Path) -> Self {
        if let Some(url) = errscope_testkit::store::database_for(data) {
            return Db::Postgres(url);
        }
        let conn = rusqlite::Connection::open_with_flags(
            data.join("errscope.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the collector's database");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        Db::Sqlite(conn)
    }

    /// A single integer.
    pub(crate) fn int(&self, sql: &str) -> i64 {
        match self {
            Db::Sqlite(c) => c
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Db::Postgres(url) => {
                let rows = errscope_testkit::pg::query(url, &format!("SELECT ({sql})::BIGINT"))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows[0].get::<_, Option<i64>>(0).unwrap_or(0)
            }
        }
    }

    /// The events the project counts (SQLite keeps them on the project row, PostgreSQL in
    /// its counter slots).
    pub(crate) fn project_events(&self) -> i64 {
        match self {
            Db::Sqlite(_) => self.int("SELECT events FROM projects WHERE id = 1"),
            Db::Postgres(_) => {
                self.int("SELECT sum(events) FROM project_counters WHERE project_id = 1")
            }
        }
    }

    /// The event ids of a table (`events` or `event_ids`) of project 1.
    pub(crate) fn event_ids(&self, table: &str) -> HashSet<String> {
        // `table` is one of the two names above, never input.
        let sql = format!("SELECT event_id FROM {table} WHERE project_id = 1");
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare(&sql).expect("prepare");
                stmt.query_map([], |r| r.get::<_, String>(0))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows")
            }
            Db::Postgres(url) => errscope_testkit::pg::query(url, &sql)
                .expect("query")
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }
    }

    /// Bytes of the pages each table and index uses (`dbstat`), by name (SQLite only).
    pub(crate) fn bytes_by_name(&self) -> Vec<(String, i64)> {
        let Db::Sqlite(c) = self else {
            panic!("dbstat is SQLite's");
        };
        let mut stmt = c
            .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
            .expect("prepare dbstat");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query dbstat")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

/// The size of the collector's database file and of its WAL, in bytes.
pub(crate) fn db_file_bytes(data: &Path) -> (u64, u64) {
    let size = |name: &str| {
        std::fs::metadata(data.join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    (size("errscope.sqlite3"), size("errscope.sqlite3-wal"))
}

/// Lines of `text` that are not empty.
pub(crate) fn lines_of(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}
