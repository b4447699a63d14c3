//! The PostgreSQL test server against real PostgreSQL: databases, restarts, the shared
//! server, and the `errscope-pg` binary, killed among other ways.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use errscope_testkit::pg::{Cluster, Error};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn databases_are_created_empty_and_apart() {
    let cluster = Cluster::shared();
    let port = cluster.port();
    assert_eq!(
        cluster.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );

    let a = cluster.fresh_database().unwrap();
    let b = cluster.create_database("other_db").unwrap();
    assert_ne!(a, b);
    assert_eq!(b, format!("postgres://postgres@127.0.0.1:{port}/other_db"));

    let a_url = a.clone();
    let a = connect(&a).await;
    let b = connect(&b).await;
    a.batch_execute("CREATE TABLE issue (id bigserial PRIMARY KEY, title text NOT NULL)")
        .await
        .unwrap();
    a.execute(
        "INSERT INTO issue (title) VALUES ($1), ($2)",
        &[&"panic: ünïcödé", &"ConnectionReset"],
    )
    .await
    .unwrap();
    assert_eq!(count(&a, "issue").await, 2);
    // The server is UTF-8 under C.UTF-8: non-ASCII text round-trips and case-folds.
    let upper: String = a
        .query_one("SELECT upper(title) FROM issue WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(upper, "PANIC: ÜNÏCÖDÉ");

    let missing = b
        .query_one("SELECT count(*) FROM issue", &[])
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE),
        "{missing}"
    );
    b.batch_execute("CREATE TABLE issue (id int)")
        .await
        .unwrap();
    assert_eq!(count(&b, "issue").await, 0);

    // Fresh names never repeat; taken and invalid names are errors that say so.
    let (again, more) = (
        cluster.fresh_database().unwrap(),
        cluster.fresh_database().unwrap(),
    );
    assert_ne!(again, a_url);
    assert_ne!(again, more);
    let taken = cluster.create_database("other_db").unwrap_err();
    assert!(
        matches!(taken, Error::Sql { .. }) && taken.to_string().contains("already exists"),
        "{taken}"
    );
    let bad = cluster
        .create_database("x\"; DROP DATABASE postgres; --")
        .unwrap_err();
    assert!(matches!(bad, Error::DatabaseName(_)), "{bad}");

    // Dropping disconnects its clients.
    cluster.drop_database("other_db").unwrap();
    assert!(b.query_one("SELECT 1", &[]).await.is_err());
    let gone = tokio_postgres::connect(&cluster.database_url("other_db"), NoTls)
        .await
        .err()
        .unwrap();
    let gone = gone.as_db_error().unwrap();
    assert_eq!(
        gone.code(),
        &tokio_postgres::error::SqlState::INVALID_CATALOG_NAME,
        "{gone}"
    );
}

#[tokio::test]
async fn restart_keeps_the_data_and_the_port() {
    let cluster = Cluster::start().unwrap();
    let port = cluster.port();
    let url = cluster.fresh_database().unwrap();
    let before = connect(&url).await;
    before
        .batch_execute("CREATE TABLE event (id int); INSERT INTO event VALUES (1), (2), (3)")
        .await
        .unwrap();

    cluster.restart().unwrap();
    assert_eq!(cluster.port(), port);
    // Clients of the old server are disconnected; a new connection sees the committed rows.
    let old = before.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(old.is_closed() || old.as_db_error().is_some(), "{old}");
    let after = connect(&url).await;
    assert_eq!(count(&after, "event").await, 3);

    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a stopped server still listens"
    );
    assert!(matches!(cluster.fresh_database(), Err(Error::Stopped)));
    cluster.stop().unwrap();

    cluster.restart().unwrap();
    assert!(cluster.is_running());
    let again = connect(&url).await;
    assert_eq!(count(&again, "event").await, 3);
}

#[tokio::test]
async fn the_shared_server_is_one_per_process() {
    let first = Cluster::shared();
    let second = Cluster::shared();
    assert!(std::ptr::eq(first, second));
    // Called from inside a tokio runtime, as the collector's tests do.
    let (a, b) = (
        first.fresh_database().unwrap(),
        second.fresh_database().unwrap(),
    );
    assert_ne!(a, b);
    let client = connect(&a).await;
    let name: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(a.ends_with(&format!("/{name}")), "{a} vs {name}");
}

#[test]
fn many_databases_at_once() {
    let cluster = Cluster::shared();
    let urls: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| cluster.fresh_database().unwrap()))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut unique = urls.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{urls:?}");
}

/// `errscope-pg`, started and past its URL line.
struct Pg {
    child: Child,
    url: String,
    _stdout: BufReader<ChildStdout>,
    /// The server's data directory and its postmaster's pid, asked of the server itself.
    data: PathBuf,
    postmaster: u32,
}

impl Pg {
    async fn start(args: &[&str]) -> Pg {
        let mut child = Command::new(env!("CARGO_BIN_EXE_errscope-pg"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut url = String::new();
        stdout.read_line(&mut url).unwrap();
        let url = url.trim().to_owned();
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url:?}");
        let client = connect(&url).await;
        let data: String = client
            .query_one("SHOW data_directory", &[])
            .await
            .unwrap()
            .get(0);
        let data = PathBuf::from(data);
        let pid_file = fs::read_to_string(data.join("postmaster.pid")).unwrap();
        let postmaster = pid_file.lines().next().unwrap().parse().unwrap();
        assert!(alive(postmaster));
        Pg {
            child,
            url,
            _stdout: stdout,
            data,
            postmaster,
        }
    }

    fn port(&self) -> u16 {
        let rest = self
            .url
            .strip_prefix("postgres://postgres@127.0.0.1:")
            .unwrap();
        rest.split('/').next().unwrap().parse().unwrap()
    }

    /// Within 20 s: the postmaster and every process in its data directory are gone, the
    /// port refuses, and the temporary directory is removed.
    fn assert_gone(&self) {
        let dir = self.data.parent().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = processes_in(dir);
            let postmaster = alive(self.postmaster);
            let listening = TcpStream::connect(("127.0.0.1", self.port())).is_ok();
            if !postmaster && left.is_empty() && !listening && !dir.exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after 20 s: postmaster alive {postmaster}, processes {left:?}, listening {listening}, {} exists {}",
                dir.display(),
                dir.exists()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether `pid` runs (a zombie does not: nothing may reap it here).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Live processes whose working directory is under `dir`: postgres and its backends work in
/// their data directory, so this finds any left over even once reparented.
fn processes_in(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cwd) = fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(dir)
            && alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_killed_owner_takes_its_server_with_it() {
    let mut pg = Pg::start(&[]).await;
    let client = connect(&pg.url).await;
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    assert!(!processes_in(pg.data.parent().unwrap()).is_empty());
    pg.child.kill().unwrap();
    pg.child.wait().unwrap();
    pg.assert_gone();
}

#[tokio::test]
async fn what_a_killed_watchdog_left_is_swept_by_the_next_start() {
    let mut pg = Pg::start(&[]).await;
    let me = pg.child.id();
    // The watchdog is errscope-pg's `sh` child: kill it first, then errscope-pg, so
    // nobody is left to stop the server.
    let watchdog = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_owned));
            stat.contains("(sh)") && ppid == Some(me.to_string())
        })
        .expect("errscope-pg's watchdog");
    assert!(
        Command::new("kill")
            .args(["-KILL", &watchdog.to_string()])
            .status()
            .unwrap()
            .success()
    );
    pg.child.kill().unwrap();
    pg.child.wait().unwrap();
    let cluster = Cluster::start().unwrap();
    pg.assert_gone();
    assert!(cluster.is_running());
}

#[tokio::test]
async fn errscope_pg_stops_when_stdin_closes() {
    let mut pg = Pg::start(&["--database", "dashboard"]).await;
    assert!(pg.url.ends_with("/dashboard"), "{}", pg.url);
    let client = connect(&pg.url).await;
    let name: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "dashboard");
    drop(pg.child.stdin.take());
    assert!(pg.child.wait().unwrap().success());
    pg.assert_gone();
}

#[tokio::test]
async fn errscope_pg_stops_on_sigterm() {
    let mut pg = Pg::start(&["--ignore-stdin"]).await;
    drop(pg.child.stdin.take());
    // Closing stdin does not stop it with --ignore-stdin...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pg.child.try_wait().unwrap().is_none());
    assert!(alive(pg.postmaster));
    // ...SIGTERM does.
    let status = Command::new("kill")
        .args(["-TERM", &pg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(pg.child.wait().unwrap().success());
    pg.assert_gone();
}

#[test]
fn without_binaries_errscope_pg_says_to_install_postgresql() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_errscope-pg"))
        .env("ERRSCOPE_PG_BIN", empty.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&empty.path().display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("install Debian's `postgresql` package"),
        "{stderr}"
    );
}
