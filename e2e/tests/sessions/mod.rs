//! Release health end to end: the agent's child fixture (`panic = "abort"`) shipping its
//! session to the real collector; a run that panicked or was SIGKILLed has its session
//! ended (`crashed`, `abnormal`) by the next run; a running one counts errored from its
//! first error; each outbox is one user (`did`), however often it restarts.

use crate::child_builds;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use errscope_e2e::{Collector, outbox};
use serde_json::Value;

/// What an aborting panic dies of (Linux).
const SIGABRT: i32 = 6;

fn child(mode: &str, db: &Path, collector: &Collector) -> Command {
    let mut cmd = Command::new(child_builds::dev());
    cmd.arg(mode)
        .arg(db)
        .env("ERRSCOPE_CHILD_DSN", collector.dsn())
        .env("RUST_BACKTRACE", "0");
    cmd
}

fn run(mode: &str, db: &Path, collector: &Collector) -> Output {
    child(mode, db, collector).output().expect("run the child")
}

/// The release `child@1` as the releases API lists it, once `ready` says it is as expected
/// (sessions arrive asynchronously from a host that already exited), or after 30 s.
fn release(collector: &Collector, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = collector.get("/api/0/projects/1/releases/");
        assert_eq!(status, 200, "{body}");
        let r = body
            .as_array()
            .and_then(|a| a.iter().find(|r| r["version"] == "child@1"))
            .cloned()
            .unwrap_or(Value::Null);
        if ready(&r) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sessions_end_exited_crashed_or_abnormal_and_count_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));

    // A normal exit: the session ends `exited` with its two errors (the message is no
    // error), which makes it an errored session.
    let a = outbox(dir.path(), "a");
    let out = run("session-errors", &a, &collector);
    assert!(out.status.success(), "{out:?}");
    let r = release(&collector, |r| r["errored"] == 1);
    assert_eq!(
        (&r["sessions"], &r["errored"], &r["crashed"], &r["abnormal"]),
        (&1.into(), &1.into(), &0.into(), &0.into()),
        "{r}"
    );
    assert_eq!(r["crash_free_rate"], 1.0);
    assert_eq!(r["users"], 1, "{r}");

    // A panic aborts the process: its session can only be ended by the next run.
    let b = outbox(dir.path(), "b");
    let out = run("main-panic", &b, &collector);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(SIGABRT),
        "{out:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = release(&collector, |_| true);
    assert_eq!(
        r["crashed"], 0,
        "nothing says crashed before the next run: {r}"
    );
    let out = run("deliver", &b, &collector);
    assert!(out.status.success(), "{out:?}");
    // The crashed run's session, and the delivering run's own, ended `exited`.
    let r = release(&collector, |r| r["crashed"] == 1 && r["sessions"] == 3);
    assert_eq!(
        (&r["sessions"], &r["crashed"]),
        (&3.into(), &1.into()),
        "{r}"
    );
    assert_eq!(
        r["users"], 2,
        "the restart of outbox b is the same user: {r}"
    );

    // SIGKILL: nothing runs at all; the next run finds the session open and not its own.
    let c = outbox(dir.path(), "c");
    let mut hang = child("hang", &c, &collector)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = hang.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("flushed=true")
    );
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    // Still running, its session already counts errored (the first error's update).
    let r = release(&collector, |r| r["errored"] == 2 && r["sessions"] == 4);
    assert_eq!(
        (&r["sessions"], &r["errored"], &r["users"]),
        (&4.into(), &2.into(), &3.into()),
        "while the run is alive: {r}"
    );
    assert!(hang.try_wait().expect("wait").is_none(), "still running");
    hang.kill().expect("SIGKILL");
    let _ = hang.wait();
    let out = run("deliver", &c, &collector);
    assert!(out.status.success(), "{out:?}");
    let r = release(&collector, |r| r["abnormal"] == 1 && r["sessions"] == 5);
    assert_eq!(
        (&r["sessions"], &r["crashed"], &r["abnormal"], &r["errored"]),
        (&5.into(), &1.into(), &1.into(), &1.into()),
        "{r}"
    );
    assert_eq!(r["crash_free_rate"], 0.8, "{r}");
    assert_eq!(r["users"], 3, "five sessions of three installations: {r}");
    // Each outbox is empty: every update was shipped.
    for db in [&a, &b, &c] {
        assert_eq!(errscope_e2e::count_rows(db, "session_updates"), Some(0));
    }
}
