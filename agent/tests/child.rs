//! Tests that run a real child process linking errscope: built with `panic = "abort"`,
//! and built as production binaries are (as Cargo's default release profile makes them, no
//! debug info; the same binary stripped). The builds: `fixtures/child_builds.rs`.

#[path = "fixtures/child_builds.rs"]
mod child_builds;
mod util;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use util::{Outbox, read_events};

/// The dev build (`panic = "abort"`).
fn child_binary() -> &'static Path {
    child_builds::dev()
}

fn run_child(mode: &str, database: &Path) -> Output {
    run_binary(child_binary(), mode, database)
}

fn run_binary(binary: &Path, mode: &str, database: &Path) -> Output {
    Command::new(binary)
        .arg(mode)
        .arg(database)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run child")
}

/// The line of the fixture's `panic!`.
fn panic_line() -> u64 {
    let src =
        std::fs::read_to_string(child_builds::fixture_dir().join("src/main.rs")).expect("source");
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

// Deaths that are not panics: fatal signals, recorded by the handler, delivered by the
// next run.

fn run_child_as(mode: &str, database: &Path, agent: bool, address_space: Option<u64>) -> Output {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(child_binary());
    cmd.arg(mode).arg(database).env("RUST_BACKTRACE", "0");
    if !agent {
        cmd.env("ERRSCOPE_CHILD_NO_INIT", "1");
    }
    if let Some(limit) = address_space {
        // SAFETY: setrlimit(2) between fork and exec, as `ulimit -v` does; it allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    cmd.output().expect("run child")
}

/// Runs `mode` without the agent and with it and checks that it dies the same way both
/// times; then the next run of the program delivers the crash to the outbox. Returns the
/// dying run's output and the stored event.
fn dies_the_same_and_is_delivered(mode: &str, address_space: Option<u64>) -> (Output, Value) {
    let bare = Outbox::new();
    let without = run_child_as(mode, &bare.path, false, address_space);
    let outbox = Outbox::new();
    let with = run_child_as(mode, &outbox.path, true, address_space);
    assert!(without.status.signal().is_some(), "{without:?}");
    assert_eq!(
        with.status.signal(),
        without.status.signal(),
        "with the agent: {with:?}\nwithout: {without:?}"
    );
    assert_eq!(with.status.code(), without.status.code());
    assert_eq!(with.status.core_dumped(), without.status.core_dumped());
    let next = run_child("deliver", &outbox.path);
    assert!(next.status.success(), "{next:?}");
    assert_eq!(String::from_utf8_lossy(&next.stdout).trim(), "flushed=true");
    let events = read_events(&outbox.path);
    let crashes: Vec<&Value> = events
        .iter()
        .filter(|e| e["exception"]["values"][0]["mechanism"]["type"] == "signalhandler")
        .collect();
    assert_eq!(crashes.len(), 1, "{events:#?}");
    // The dead run's file is gone; the delivering run's own was removed at its start by
    // nobody (it was alive), and is the only one left.
    let runs = std::fs::read_dir(outbox.dir.path())
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains("-run-"))
        })
        .count();
    assert_eq!(runs, 1, "one run file: the delivering run's");
    (with, crashes[0].clone())
}

/// A fatal `signalhandler` event of class `ty` for `signal`, with `function` (of the
/// child) in its stack and the crashing thread's name.
fn assert_signal_event(
    event: &Value,
    ty: &str,
    signal: i32,
    signal_name: &str,
    function: &str,
    thread: &str,
) {
    assert_eq!(event["level"], "fatal", "{event:#}");
    assert_eq!(event["release"], "child@1");
    let exc = &event["exception"]["values"][0];
    assert_eq!(exc["type"], ty, "{event:#}");
    assert_eq!(exc["mechanism"]["handled"], false);
    assert_eq!(exc["mechanism"]["meta"]["signal"]["number"], signal);
    assert_eq!(exc["mechanism"]["meta"]["signal"]["name"], signal_name);
    assert!(exc["mechanism"]["meta"]["signal"]["code"].is_i64());
    assert_eq!(exc["mechanism"]["data"]["symbolicated"], true);
    let frames = exc["stacktrace"]["frames"].as_array().expect("frames");
    let want = format!("errscope_child::{function}");
    assert!(
        frames.iter().any(|f| f["function"] == want.as_str()
            && f["in_app"] == true
            && f["filename"]
                .as_str()
                .is_some_and(|p| p.ends_with("src/main.rs"))),
        "{want} in {frames:#?}"
    );
    assert!(frames.iter().all(|f| {
        f["instruction_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("0x"))
    }));
    assert!(
        !frames.iter().any(|f| f["function"]
            .as_str()
            .is_some_and(|n| n.starts_with("errscope::crash"))),
        "the handler's own frames are dropped: {frames:#?}"
    );
    assert_eq!(event["contexts"]["thread"]["name"], thread);
    assert_eq!(event["threads"]["values"][0]["name"], thread);
    assert_eq!(event["threads"]["values"][0]["crashed"], true);
}

#[test]
fn a_segfault_on_the_main_thread_dies_as_before_and_is_delivered_by_the_next_run() {
    let (out, event) = dies_the_same_and_is_delivered("segv-main", None);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV));
    assert_signal_event(
        &event,
        "SIGSEGV",
        libc::SIGSEGV,
        "SIGSEGV",
        "write_through_null",
        "main",
    );
    let exc = &event["exception"]["values"][0];
    assert_eq!(
        exc["mechanism"]["meta"]["signal"]["code_name"],
        "SEGV_MAPERR"
    );
    assert_eq!(exc["mechanism"]["data"]["fault_address"], "0x0");
    assert_eq!(
        exc["value"],
        "invalid memory access at 0x0 on thread 'main' (SIGSEGV (SEGV_MAPERR))"
    );
    // The crashing function is the newest frame of the program's own.
    let frames = exc["stacktrace"]["frames"].as_array().expect("frames");
    let newest_in_app = frames
        .iter()
        .rev()
        .find(|f| f["in_app"] == true)
        .expect("in-app");
    assert_eq!(
        newest_in_app["function"],
        "errscope_child::write_through_null"
    );
    assert!(
        event["contexts"].get("domain").is_none(),
        "outside any domain"
    );
    assert!(event.get("tags").is_none_or(|t| t.get("domain").is_none()));
}

#[test]
fn a_segfault_inside_a_domain_names_the_domain() {
    let (out, event) = dies_the_same_and_is_delivered("segv-domain", None);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV));
    assert_signal_event(
        &event,
        "SIGSEGV",
        libc::SIGSEGV,
        "SIGSEGV",
        "write_through_null",
        "main",
    );
    // The domain of the poll that crashed, not the inner one it had left.
    assert_eq!(event["tags"]["domain"], "job: reprice", "{event:#}");
    let domain = &event["contexts"]["domain"];
    assert_eq!(domain["type"], "domain");
    assert_eq!(domain["name"], "job: reprice");
    assert!(domain["id"].as_u64().is_some_and(|id| id > 0), "{domain}");
}

#[test]
fn a_segfault_on_a_named_thread_names_the_thread() {
    let (out, event) = dies_the_same_and_is_delivered("segv-thread", None);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV));
    assert_signal_event(
        &event,
        "SIGSEGV",
        libc::SIGSEGV,
        "SIGSEGV",
        "write_through_null",
        "pricing",
    );
}

#[test]
fn a_stack_overflow_still_prints_rusts_message_and_is_classed() {
    let (out, event) = dies_the_same_and_is_delivered("overflow", None);
    // Rust's own handler ran after ours: it prints and aborts.
    assert_eq!(out.status.signal(), Some(libc::SIGABRT));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `thread 'deep-walker' (<tid>) has overflowed its stack` (older Rust: no tid).
    assert!(
        stderr.contains("thread 'deep-walker'") && stderr.contains("has overflowed its stack"),
        "{stderr}"
    );
    assert_signal_event(
        &event,
        "stack overflow",
        libc::SIGSEGV,
        "SIGSEGV",
        "descend",
        "deep-walker",
    );
}

#[test]
fn an_abort_is_delivered_as_abort() {
    let (out, event) = dies_the_same_and_is_delivered("abort", None);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT));
    assert_signal_event(&event, "abort", libc::SIGABRT, "SIGABRT", "give_up", "main");
}

#[test]
fn running_out_of_memory_under_an_address_space_limit_is_classed() {
    let (out, event) = dies_the_same_and_is_delivered("oom", Some(2 << 30));
    assert_eq!(out.status.signal(), Some(libc::SIGABRT));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("memory allocation of 17179869184 bytes failed"),
        "{stderr}"
    );
    assert_signal_event(
        &event,
        "out of memory",
        libc::SIGABRT,
        "SIGABRT",
        "load_catalog",
        "main",
    );
}

#[test]
fn a_host_handler_installed_after_init_still_works() {
    let outbox = Outbox::new();
    let out = run_child("own-handler", &outbox.path);
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("host handler ran"));
    let next = run_child("deliver", &outbox.path);
    assert!(next.status.success(), "{next:?}");
    let events = read_events(&outbox.path);
    assert!(events.is_empty(), "ours never ran: {events:#?}");
}

#[test]
fn an_aborting_panic_is_one_event_not_two() {
    let outbox = Outbox::new();
    let out = run_child("main-panic", &outbox.path);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
    let next = run_child("deliver", &outbox.path);
    assert!(next.status.success(), "{next:?}");
    let events = read_events(&outbox.path);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_recorded_panic(&events[0]);
}

#[test]
fn with_catch_signals_off_a_segfault_leaves_nothing() {
    let outbox = Outbox::new();
    let out = Command::new(child_binary())
        .arg("segv-main")
        .arg(&outbox.path)
        .env("ERRSCOPE_CHILD_NO_SIGNALS", "1")
        .output()
        .expect("run child");
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{out:?}");
    let next = run_child("deliver", &outbox.path);
    assert!(next.status.success(), "{next:?}");
    assert!(read_events(&outbox.path).is_empty());
}

/// The GNU build id of an ELF file as `readelf -n` prints it.
fn readelf_build_id(file: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(file)
        .output()
        .expect("run readelf (binutils)");
    assert!(out.status.success(), "readelf: {out:?}");
    let notes = String::from_utf8_lossy(&out.stdout);
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build id in:\n{notes}"))
        .trim()
        .to_owned()
}

/// Sentry's debug id of a build id, written out independently of the agent's code: the
/// first 16 bytes as a little-endian GUID.
fn sentry_debug_id(build_id: &str) -> String {
    let b = |i: usize| &build_id[2 * i..2 * i + 2];
    let field = |range: std::ops::Range<usize>, swap: bool| {
        let mut bytes: Vec<&str> = range.map(b).collect();
        if swap {
            bytes.reverse();
        }
        bytes.concat()
    };
    format!(
        "{}-{}-{}-{}-{}",
        field(0..4, true),
        field(4..6, true),
        field(6..8, true),
        field(8..10, false),
        field(10..16, false)
    )
}

/// Runs `async-errors` and returns the events of the domain and of the spawned task.
fn async_events(binary: &Path) -> (serde_json::Value, serde_json::Value) {
    let outbox = Outbox::new();
    let out = run_binary(binary, "async-errors", &outbox.path);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "flushed=true");
    let events = read_events(&outbox.path);
    assert_eq!(events.len(), 2, "{events:#?}");
    let by_domain = |name: &str| {
        events
            .iter()
            .find(|e| e["tags"]["domain"] == name)
            .unwrap_or_else(|| panic!("no event in {name}: {events:#?}"))
            .clone()
    };
    (by_domain("GET /orders/:id"), by_domain("job: charge"))
}

fn stack(event: &serde_json::Value) -> &Vec<serde_json::Value> {
    let values = event["exception"]["values"].as_array().expect("exception");
    values.last().expect("an exception")["stacktrace"]["frames"]
        .as_array()
        .expect("frames")
}

fn executable_image<'e>(event: &'e serde_json::Value, binary: &Path) -> &'e serde_json::Value {
    let images = event["debug_meta"]["images"]
        .as_array()
        .expect("debug_meta.images");
    images
        .iter()
        .find(|i| i["code_file"] == binary.display().to_string())
        .unwrap_or_else(|| panic!("the executable is not among {images:#?}"))
}

fn assert_image_of(event: &serde_json::Value, binary: &Path) {
    let build_id = readelf_build_id(binary);
    let image = executable_image(event, binary);
    assert_eq!(image["type"], "elf");
    assert_eq!(image["code_id"], build_id);
    assert_eq!(image["debug_id"], sentry_debug_id(&build_id));
    assert_eq!(
        image["arch"],
        "x86_64".replace("x86_64", std::env::consts::ARCH)
    );
    assert!(image["image_size"].as_u64().is_some_and(|s| s > 0));
    // libc is loaded too, with a build id of its own.
    let images = event["debug_meta"]["images"].as_array().expect("images");
    assert!(
        images.iter().any(|i| i["code_file"]
            .as_str()
            .is_some_and(|f| f.contains("libc.so"))),
        "{images:#?}"
    );
}

#[test]
fn a_default_release_build_gets_in_app_and_culprits_right_without_debug_info() {
    let release = &child_builds::release().default_release;
    let (in_domain, in_task) = async_events(release);
    for (event, culprit) in [
        (&in_domain, "errscope_child::load_order"),
        (&in_task, "errscope_child::charge_card"),
    ] {
        let frames = stack(event);
        // Built without debug info: names from the symbol table, no source paths (the
        // system's libc may have some).
        let exe = release.display().to_string();
        assert!(
            frames
                .iter()
                .filter(|f| f["package"] == exe.as_str())
                .all(|f| f.get("abs_path").is_none() && f["function"].is_string()),
            "{frames:#?}"
        );
        let name = |f: &serde_json::Value| f["function"].as_str().unwrap_or("").to_owned();
        let in_app: Vec<String> = frames
            .iter()
            .filter(|f| f["in_app"] == true)
            .map(name)
            .collect();
        // The collector's culprit is the newest in-app frame: the host's function that
        // captured, not the agent's `DomainRun`/`TaskPanics` poll.
        assert!(
            in_app.last().is_some_and(|f| f.starts_with(culprit)),
            "{culprit}: {in_app:#?}\n{frames:#?}"
        );
        assert!(
            in_app.iter().all(|f| f.starts_with("errscope_child::")),
            "{in_app:#?}"
        );
        assert!(in_app.len() >= 2, "the host's callers too: {frames:#?}");
        for f in frames {
            let n = name(f);
            if n.starts_with("errscope::")
                || n.starts_with("<errscope::")
                || n.starts_with("std::")
                || n.starts_with("tokio::")
                || n.starts_with("<tokio::")
                || n.starts_with("core::")
            {
                assert_eq!(f["in_app"], false, "{n}");
            }
        }
        assert!(
            frames
                .iter()
                .any(|f| name(f).contains("errscope::domain::")),
            "the domain's poll is on the stack, just not in-app: {frames:#?}"
        );
        assert_eq!(
            event["contexts"]["errscope"],
            serde_json::json!({
                "type": "errscope",
                "in_app_include": ["errscope_child"],
                "in_app_exclude": [],
            })
        );
        assert_image_of(event, release);
    }
}

#[test]
fn a_stripped_release_build_sends_addresses_and_its_build_id() {
    let stripped = &child_builds::release().stripped;
    let (in_domain, in_task) = async_events(stripped);
    for event in [&in_domain, &in_task] {
        assert_image_of(event, stripped);
        let exe = executable_image(event, stripped);
        let start = u64::from_str_radix(
            exe["image_addr"]
                .as_str()
                .expect("addr")
                .trim_start_matches("0x"),
            16,
        )
        .expect("hex");
        let end = start + exe["image_size"].as_u64().expect("size");
        let frames = stack(event);
        let in_exe: Vec<&serde_json::Value> = frames
            .iter()
            .filter(|f| {
                let addr = f["instruction_addr"]
                    .as_str()
                    .expect("every frame has an address");
                let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).expect("hex");
                (start..end).contains(&addr)
            })
            .collect();
        // No names to resolve in-process: the frames are kept with their address, the
        // image they fall in, and nothing made up.
        assert!(in_exe.len() >= 8, "{frames:#?}");
        for f in &in_exe {
            assert!(f.get("function").is_none(), "{f}");
            assert_eq!(f["in_app"], false);
            assert_eq!(f["image_addr"], exe["image_addr"]);
            assert_eq!(f["package"], exe["code_file"]);
        }
        // The host crate, from the executable's name, for the server to mark frames it
        // symbolicates.
        assert_eq!(
            event["contexts"]["errscope"]["in_app_include"],
            serde_json::json!(["errscope_child"])
        );
    }
}

#[test]
fn a_build_without_tls_ignores_an_https_dsn_with_one_warning() {
    // The child links errscope without its `tls` feature.
    let outbox = Outbox::new();
    let out = Command::new(child_binary())
        .arg("deliver")
        .arg(&outbox.path)
        .env("ERRSCOPE_CHILD_DSN", "https://key@127.0.0.1:9/1")
        .output()
        .expect("run child");
    assert!(out.status.success(), "{out:?}");
    // No DSN taken: nothing to deliver, the flush is done at once.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "flushed=true");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "errscope: ignoring DSN: \"https://key@127.0.0.1:9/1\" is https, and errscope was built without its `tls` feature"
        ],
        "{stderr}"
    );
}
