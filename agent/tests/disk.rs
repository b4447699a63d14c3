//! Disk trouble under a running host: the outbox's file system turns read-only while the
//! host captures, or fills up. The host must keep running, the agent must say so once on
//! stderr, everything committed before the failure must stay on disk, and every capture
//! must be stored (on disk or, degraded, in memory) or counted as dropped.
//!
//! The agent is process-global, so each case runs in a child: this test binary run again
//! with the test's name and `ERRSCOPE_DISK_CHILD` naming the role. The parent sets the disk
//! up, tells the child when it has failed, and reads the child's stdout, stderr and exit
//! status.
//!
//! How the disk fails, as root (as in CI):
//! - read-only: an ext4 image on a loop device mounted `errors=remount-ro`; an error is
//!   injected through `/sys/fs/ext4/<dev>/trigger_fs_error` and the kernel turns the file
//!   system read-only under the open outbox, as it does on a real disk error.
//!   (`mount -o remount,ro` is refused with EBUSY while SQLite holds the outbox open for
//!   writing, so a plain remount cannot do this.)
//! - full: a tmpfs of 256 KiB.
//!
//! Where that is not possible (no root, no loop device), the child limits its own file
//! sizes with `RLIMIT_FSIZE`, so writes fail with EFBIG: to zero at the moment the disk
//! "turns read-only", to 256 KiB from the start for "full". The summary line says which
//! ran (`method=`); `ERRSCOPE_DISK_METHOD=rlimit` forces the fallback.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Selects the child role; unset in the parent.
const CHILD: &str = "ERRSCOPE_DISK_CHILD";
/// Prefix of the child's report lines on stdout.
const MARK: &str = "disk-child:";
/// The agent's bound on stored events, on disk and in memory alike.
const MAX_EVENTS: u64 = 100;
/// Size of the full disk, or of the file-size limit that stands in for it.
const FULL_BYTES: u64 = 256 * 1024;
/// How long the child may take for everything, on a loaded machine.
const CHILD_DEADLINE: Duration = Duration::from_secs(600);

/// Whether `ERRSCOPE_LONG=1` asks for the long run.
fn long() -> bool {
    static LONG: OnceLock<bool> = OnceLock::new();
    *LONG.get_or_init(|| std::env::var("ERRSCOPE_LONG").is_ok_and(|v| v == "1"))
}

// ---------------------------------------------------------------------------------------
// Parent: disks.

/// Runs a command, returning the first line of its stderr as the error.
fn run(cmd: &mut Command) -> Result<(), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().next().unwrap_or_default().trim();
    Err(format!("{program} ({}): {line}", out.status))
}

/// A file system mounted for one case, unmounted when dropped (also when the test fails;
/// the child is gone by then, see [`Watched`]).
struct Mount {
    point: PathBuf,
}

impl Mount {
    fn new(point: &Path, args: &[&str]) -> Result<Self, String> {
        std::fs::create_dir_all(point).map_err(|e| e.to_string())?;
        // As `/proc/self/mountinfo` will name it.
        let point = point.canonicalize().map_err(|e| e.to_string())?;
        run(Command::new("mount").args(args).arg(&point))?;
        Ok(Self { point })
    }

    /// The mounted device (`/dev/loop3`), from `/proc/self/mountinfo`.
    fn source(&self) -> Option<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let point = self.point.to_str()?;
        info.lines().rev().find_map(|line| {
            let mut fields = line.split(' ');
            if fields.nth(4)? != point {
                return None;
            }
            let (_, after) = line.split_once(" - ")?;
            after.split(' ').nth(1).map(str::to_owned)
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A loop device set up by `mount -o loop` goes with the unmount.
        if run(Command::new("umount").arg(&self.point)).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.point));
        }
    }
}

/// How the disk is made to fail.
enum Method {
    /// ext4 on a loop device; writing to `trigger` makes it read-only.
    Ext4 { _mount: Mount, trigger: PathBuf },
    /// A tiny tmpfs.
    Tmpfs { _mount: Mount },
    /// The child limits its own file sizes (`RLIMIT_FSIZE`).
    Rlimit { reason: String },
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Ext4 { .. } => "ext4-errors-remount-ro",
            Method::Tmpfs { .. } => "tmpfs",
            Method::Rlimit { .. } => "rlimit",
        }
    }

    fn forced_fallback() -> Option<Method> {
        (std::env::var("ERRSCOPE_DISK_METHOD").as_deref() == Ok("rlimit")).then(|| Method::Rlimit {
            reason: "ERRSCOPE_DISK_METHOD=rlimit".to_owned(),
        })
    }

    fn read_only(dir: &Path) -> Method {
        if let Some(m) = Self::forced_fallback() {
            return m;
        }
        let setup = || -> Result<Method, String> {
            let image = dir.join("ext4.img");
            let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
            file.set_len(16 << 20).map_err(|e| e.to_string())?;
            run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
            let image = image.to_str().ok_or("non-UTF-8 temp dir")?;
            let mount = Mount::new(&dir.join("mnt"), &["-o", "loop,errors=remount-ro", image])?;
            let device = mount.source().ok_or("no source in /proc/self/mountinfo")?;
            let name = Path::new(&device).file_name().ok_or("odd device name")?;
            let trigger = Path::new("/sys/fs/ext4")
                .join(name)
                .join("trigger_fs_error");
            if !trigger.exists() {
                return Err(format!("{} does not exist", trigger.display()));
            }
            Ok(Method::Ext4 {
                _mount: mount,
                trigger,
            })
        };
        setup().unwrap_or_else(|reason| Method::Rlimit { reason })
    }

    fn full(dir: &Path) -> Method {
        if let Some(m) = Self::forced_fallback() {
            return m;
        }
        let size = format!("size={FULL_BYTES}");
        match Mount::new(&dir.join("mnt"), &["-t", "tmpfs", "-o", &size, "tmpfs"]) {
            Ok(mount) => Method::Tmpfs { _mount: mount },
            Err(reason) => Method::Rlimit { reason },
        }
    }

    /// Where the outbox goes.
    fn database(&self, dir: &Path) -> PathBuf {
        match self {
            Method::Rlimit { .. } => dir.join("outbox.db"),
            _ => dir.join("mnt").join("outbox.db"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parent: the child.

/// A running child, killed when dropped so a failing test never leaves it behind (or
/// keeps a mount busy).
struct Watched {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Watched {
    fn spawn(test: &str, role: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, role)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The next report line of the child whose first word is `what`.
    fn expect(&self, what: &str, deadline: Instant) -> Report {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    // libtest's `test <name> ... ` may precede it on the line.
                    if let Some((_, rest)) = line.split_once(MARK) {
                        let report = Report::parse(rest);
                        assert_eq!(report.what, what, "child said: {line}");
                        return report;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no `{what}` from the child in time"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the child closed its stdout before `{what}`")
                }
            }
        }
    }

    fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the child");
        stdin.flush().expect("flush the child's stdin");
    }

    /// Waits for the child to exit; returns whether it succeeded, and its stderr.
    fn finish(mut self, deadline: Instant) -> (bool, String) {
        self.stdin.take();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                break status;
            }
            assert!(Instant::now() < deadline, "the child did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status.success(), stderr)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `disk-child: <what> key=value ...` line.
#[derive(Debug)]
struct Report {
    what: String,
    fields: Vec<(String, String)>,
}

impl Report {
    fn parse(line: &str) -> Self {
        let mut words = line.split_whitespace();
        let what = words.next().unwrap_or_default().to_owned();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { what, fields }
    }

    fn get(&self, key: &str) -> u64 {
        let v = self
            .fields
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no `{key}` in {self:?}"));
        v.1.parse()
            .unwrap_or_else(|_| panic!("`{key}` is not a number in {self:?}"))
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key) == 1
    }
}

/// Rows in the outbox the child left, read from a copy (the file system may be read-only
/// or full, and SQLite wants to write its shared-memory file even to read).
fn rows_on_disk(database: &Path) -> u64 {
    let copy = tempfile::tempdir().expect("tempdir");
    let target = copy.path().join("outbox.db");
    std::fs::copy(database, &target).expect("copy the outbox");
    let wal = PathBuf::from(format!("{}-wal", database.display()));
    if wal.exists() {
        std::fs::copy(&wal, copy.path().join("outbox.db-wal")).expect("copy the WAL");
    }
    let conn = rusqlite::Connection::open(&target).expect("open the copy");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count events");
    u64::try_from(n).expect("a count")
}

/// How a child ended: its last report, whether it exited successfully, its stderr.
struct Ended {
    done: Report,
    ok: bool,
    stderr: String,
}

/// The figures of one case, summed over its rounds.
#[derive(Default)]
struct Figures {
    /// How the disk failed, and why the fallback ran if it did.
    method: String,
    rounds: u64,
    captured: u64,
    stored: u64,
    on_disk: u64,
    dropped: u64,
    lost_at_exit: u64,
    warnings: u64,
}

impl Figures {
    fn print(&self, scenario: &str, start: Instant) {
        eprintln!(
            "reliability: scenario={scenario} method={} rounds={} captured={} stored={} \
             on_disk={} dropped={} lost_at_exit={} warnings={} secs={:.1}",
            self.method,
            self.rounds,
            self.captured,
            self.stored,
            self.on_disk,
            self.dropped,
            self.lost_at_exit,
            self.warnings,
            start.elapsed().as_secs_f64()
        );
    }
}

/// What both cases check once the child has exited; adds the round to `figures`.
fn check_outcome(
    method: &Method,
    database: &Path,
    captures: u64,
    end: &Ended,
    figures: &mut Figures,
) {
    let Ended { done, ok, stderr } = end;
    assert!(*ok, "the host must keep running; its stderr:\n{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("errscope:"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one line on stderr, not one per event:\n{stderr}"
    );
    assert!(
        warnings[0].contains("keeping events in memory"),
        "{}",
        warnings[0]
    );
    let (captured, panics, stored) = (done.get("captured"), done.get("panics"), done.get("stored"));
    let (queue_full, evicted) = (done.get("dropped_queue_full"), done.get("evicted"));
    assert_eq!(captured, captures, "{done:?}");
    assert_eq!(
        panics, 1,
        "the panic after the failure is recorded: {done:?}"
    );
    assert!(done.flag("degraded"), "{done:?}");
    assert!(
        done.flag("flushed"),
        "commits to memory are prompt: {done:?}"
    );
    assert_eq!(done.get("storm_counted"), 0, "{done:?}");
    // Every capture is stored (on disk or in memory) or counted as dropped.
    assert_eq!(stored + queue_full, captured + panics, "{done:?}");
    // What was committed before the failure is still there.
    let on_disk = rows_on_disk(database);
    assert_eq!(on_disk, done.get("disk_stored"), "{done:?}");
    assert!(on_disk > 0, "some events reached the disk first: {done:?}");
    // The rest went to memory, within the same bound; what did not fit was counted.
    let after = stored - on_disk;
    assert_eq!(evicted, after.saturating_sub(MAX_EVENTS), "{done:?}");
    figures.method = match method {
        Method::Rlimit { reason } => format!("rlimit fallback_reason={reason:?}"),
        m => m.name().to_owned(),
    };
    figures.rounds += 1;
    figures.captured += captured + panics;
    figures.stored += stored;
    figures.on_disk += on_disk;
    figures.dropped += evicted + queue_full;
    figures.lost_at_exit += after - evicted;
    figures.warnings += warnings.len() as u64;
}

// ---------------------------------------------------------------------------------------
// The cases.

#[test]
fn outbox_turning_read_only_while_capturing() {
    if let Ok(role) = std::env::var(CHILD) {
        child(&role);
        return;
    }
    let start = Instant::now();
    let rounds = if long() { 5 } else { 1 };
    let (before, after) = if long() { (60, 2000) } else { (40, 300) };
    let mut figures = Figures::default();
    for _ in 0..rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let method = Method::read_only(dir.path());
        let database = method.database(dir.path());
        let mut env = vec![
            ("ERRSCOPE_DISK_DB", database.display().to_string()),
            ("ERRSCOPE_DISK_BEFORE", before.to_string()),
            ("ERRSCOPE_DISK_AFTER", after.to_string()),
        ];
        if let Method::Rlimit { .. } = method {
            env.push(("ERRSCOPE_DISK_RLIMIT", "0".to_owned()));
        }
        let deadline = Instant::now() + CHILD_DEADLINE;
        let mut child = Watched::spawn(
            "outbox_turning_read_only_while_capturing",
            "read-only",
            &env,
        );
        let ready = child.expect("ready", deadline);
        assert_eq!(ready.get("stored"), before, "{ready:?}");
        if let Method::Ext4 { trigger, .. } = &method {
            std::fs::write(trigger, "errscope disk test").expect("inject an ext4 error");
            let probe = database.with_file_name("probe");
            let refused = std::fs::write(&probe, b"x").expect_err("the file system is read-only");
            assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
        }
        child.tell("go");
        let done = child.expect("done", deadline);
        let (ok, stderr) = child.finish(deadline);
        let end = Ended { done, ok, stderr };
        check_outcome(&method, &database, before + after, &end, &mut figures);
        // Unmounts before the temp dir goes.
        drop(method);
    }
    figures.print("disk-read-only", start);
}

#[test]
fn outbox_on_a_disk_that_fills() {
    if let Ok(role) = std::env::var(CHILD) {
        child(&role);
        return;
    }
    let start = Instant::now();
    let rounds = if long() { 5 } else { 1 };
    let captures: u64 = if long() { 2000 } else { 300 };
    let mut figures = Figures::default();
    for _ in 0..rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let method = Method::full(dir.path());
        let database = method.database(dir.path());
        let mut env = vec![
            ("ERRSCOPE_DISK_DB", database.display().to_string()),
            ("ERRSCOPE_DISK_AFTER", captures.to_string()),
        ];
        if let Method::Rlimit { .. } = method {
            env.push(("ERRSCOPE_DISK_RLIMIT", FULL_BYTES.to_string()));
        }
        let deadline = Instant::now() + CHILD_DEADLINE;
        let child = Watched::spawn("outbox_on_a_disk_that_fills", "full", &env);
        let done = child.expect("done", deadline);
        let (ok, stderr) = child.finish(deadline);
        let end = Ended { done, ok, stderr };
        check_outcome(&method, &database, captures, &end, &mut figures);
        drop(method);
    }
    figures.print("disk-full", start);
}

// ---------------------------------------------------------------------------------------
// Child.

fn env_u64(key: &str) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not set"))
}

/// Lowers this process's `RLIMIT_FSIZE`; writes past it fail with EFBIG (SIGXFSZ, which
/// would kill the process, is ignored).
fn limit_file_size(bytes: u64) {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    assert_ne!(previous, libc::SIG_ERR, "ignore SIGXFSZ");
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) },
        0,
        "getrlimit"
    );
    limit.rlim_cur = bytes.min(limit.rlim_max);
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) },
        0,
        "setrlimit"
    );
}

/// A capture of about 4 KB: a disk of 256 KiB holds a few dozen.
fn capture(i: u64) {
    let text = format!("disk trouble {i}: {}", "x".repeat(4000));
    errscope::capture_message(&text, errscope::Level::Error);
}

fn say(what: &str, fields: &[(&str, u64)]) {
    let mut line = format!("{MARK} {what}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}

fn child(role: &str) {
    let database = PathBuf::from(std::env::var("ERRSCOPE_DISK_DB").expect("ERRSCOPE_DISK_DB"));
    let rlimit: Option<u64> = std::env::var("ERRSCOPE_DISK_RLIMIT")
        .ok()
        .map(|v| v.parse().expect("a number"));
    let patience = Duration::from_secs(60);
    if role == "full"
        && let Some(bytes) = rlimit
    {
        limit_file_size(bytes);
    }
    let guard = errscope::init(
        errscope::Options::new()
            .database(&database)
            .max_events(MAX_EVENTS)
            .attach_stacktrace(false)
            // Every capture is its own event: no storm counting.
            .storm(u32::MAX, Duration::from_secs(3600))
            .panic_timeout(patience)
            .shutdown_timeout(patience),
    );
    let mut flushed = true;
    let mut disk_stored = 0;
    let mut n = 0;
    if role == "read-only" {
        for _ in 0..env_u64("ERRSCOPE_DISK_BEFORE") {
            capture(n);
            n += 1;
        }
        assert!(guard.flush(patience), "the first events are committed");
        let s = errscope::stats();
        assert!(!s.degraded, "the disk is fine so far");
        disk_stored = s.stored;
        say("ready", &[("stored", s.stored)]);
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("stdin");
        if let Some(bytes) = rlimit {
            limit_file_size(bytes);
        }
    }
    for i in 0..env_u64("ERRSCOPE_DISK_AFTER") {
        capture(n);
        n += 1;
        // Commits one by one, so the failure comes in the middle of the run.
        if role == "full" || i % 10 == 9 {
            flushed &= guard.flush(patience);
            let s = errscope::stats();
            if !s.degraded {
                disk_stored = s.stored;
            }
        }
    }
    // A panic after the failure is still recorded, and the host goes on.
    let caught = std::panic::catch_unwind(|| panic!("a bug after the disk failed"));
    assert!(caught.is_err());
    flushed &= guard.flush(patience);
    let s = errscope::stats();
    say(
        "done",
        &[
            ("captured", s.captured),
            ("panics", s.panics),
            ("stored", s.stored),
            ("storm_counted", s.storm_counted),
            ("dropped_queue_full", s.dropped_queue_full),
            ("evicted", s.evicted),
            ("degraded", u64::from(s.degraded)),
            ("flushed", u64::from(flushed)),
            ("disk_stored", disk_stored),
        ],
    );
    drop(guard);
}
