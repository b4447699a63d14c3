//! Tests that run a real child process linking errscope, built with `panic = "abort"`.

mod util;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use util::{Outbox, read_events};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/child")
}

/// Builds the child once per test run, into a target directory of its own (the outer
/// `cargo test` holds the lock of its target directory).
fn child_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("child-target");
        let out = Command::new(env!("CARGO"))
            .arg("build")
            .arg("--quiet")
            .arg("--manifest-path")
            .arg(fixture_dir().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building the child failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug").join("errscope-child")
    })
}

fn run_child(mode: &str, database: &Path) -> Output {
    Command::new(child_binary())
        .arg(mode)
        .arg(database)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run child")
}

/// The line of the fixture's `panic!`.
fn panic_line() -> u64 {
    let src = std::fs::read_to_string(fixture_dir().join("src/main.rs")).expect("source");
    let idx = src
        .lines()
        .position(|l| l.contains("panic!(\"cart total overflow"))
        .expect("panic line");
    idx as u64 + 1
}

fn assert_recorded_panic(event: &serde_json::Value) {
    assert_eq!(event["level"], "fatal");
    assert_eq!(event["release"], "child@1");
    let exc = &event["exception"]["values"][0];
    assert_eq!(exc["type"], "panic");
    assert!(
        exc["value"]
            .as_str()
            .is_some_and(|v| v.starts_with("cart total overflow: "))
    );
    assert_eq!(exc["mechanism"]["type"], "panic");
    assert_eq!(exc["mechanism"]["handled"], false);
    assert_eq!(exc["mechanism"]["data"]["file"], "src/main.rs");
    assert_eq!(exc["mechanism"]["data"]["line"], panic_line());
    let frames = exc["stacktrace"]["frames"].as_array().expect("frames");
    let top = frames.last().expect("frames");
    assert_eq!(top["function"], "errscope_child::checkout", "{frames:#?}");
    assert_eq!(top["in_app"], true);
    assert_eq!(top["lineno"], panic_line());
    assert!(
        frames
            .iter()
            .any(|f| f["function"] == "errscope_child::main" && f["in_app"] == true),
        "{frames:#?}"
    );
    assert!(
        frames
            .iter()
            .filter(|f| f["function"]
                .as_str()
                .is_some_and(|n| n.starts_with("std::")))
            .all(|f| f["in_app"] == false)
    );
}

#[test]
fn an_aborting_panic_in_a_domain_is_committed_before_the_process_dies() {
    let outbox = Outbox::new();
    let out = run_child("abort-panic", &outbox.path);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cart total overflow: 3 items"),
        "the previous hook ran: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not reached"));
    let events = read_events(&outbox.path);
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_recorded_panic(event);
    assert_eq!(
        event["exception"]["values"][0]["value"],
        "cart total overflow: 3 items"
    );
    assert_eq!(event["tags"]["job_id"], "j-1");
    assert_eq!(event["tags"]["domain"], "job: checkout");
    assert_eq!(event["contexts"]["thread"]["name"], "main");
}

#[test]
fn an_aborting_panic_on_the_main_thread_is_committed() {
    let outbox = Outbox::new();
    let out = run_child("main-panic", &outbox.path);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
    let events = read_events(&outbox.path);
    assert_eq!(events.len(), 1);
    assert_recorded_panic(&events[0]);
    assert_eq!(
        events[0]["exception"]["values"][0]["value"],
        "cart total overflow: 5 items"
    );
    assert!(events[0].get("tags").is_none(), "no domain, no tags");
}

#[test]
fn an_aborting_panic_takes_the_storm_counts_along() {
    let outbox = Outbox::new();
    let out = run_child("storm-then-abort", &outbox.path);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
    let events = read_events(&outbox.path);
    let panics = events.iter().filter(|e| e["level"] == "fatal").count();
    let errors = events.iter().filter(|e| e["level"] == "error").count();
    assert_eq!(panics, 1);
    let conn = rusqlite::Connection::open(&outbox.path).expect("open");
    let counted: i64 = conn
        .query_row("SELECT coalesce(sum(count), 0) FROM counts", [], |r| {
            r.get(0)
        })
        .expect("counts");
    // Nothing of the storm was lost to the abort: stored or counted, all 100.
    assert_eq!(
        errors as i64 + counted,
        100,
        "{errors} stored, {counted} counted"
    );
}

/// One `errscope:` line on stderr, naming the cause; the host carries on.
fn assert_degrades_once(database: &Path, why: &str) {
    let out = run_child("degrade", database);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "flushed=true stored=3 degraded=true");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("errscope:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(why), "{stderr}");
    assert!(lines[0].contains("memory"), "{stderr}");
}

#[test]
fn an_unwritable_path_warns_once_and_keeps_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").expect("write");
    assert_degrades_once(&file.join("outbox.db"), "cannot create directory");
}

#[test]
fn a_corrupt_file_warns_once_and_keeps_running() {
    let outbox = Outbox::new();
    std::fs::write(&outbox.path, vec![0x42; 16 * 1024]).expect("write");
    assert_degrades_once(&outbox.path, "not a database");
    assert_eq!(
        std::fs::read(&outbox.path).expect("read").len(),
        16 * 1024,
        "left as it was"
    );
}
