//! The errscope agent's stripped host, its debug file uploaded with the real `sentry-cli`,
//! symbolicated by the real collector: uploaded first, and uploaded after the events came.

use crate::child_builds;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use errscope_e2e::{Collector, TOKEN, outbox};
use serde_json::Value;

/// The real sentry-cli from npm (`scripts/setup` installs it in collector/tests/tools).
fn sentry_cli() -> PathBuf {
    if let Ok(p) = std::env::var("SENTRY_CLI") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../collector/tests/tools/node_modules/.bin/sentry-cli");
    assert!(
        p.exists(),
        "sentry-cli is not installed at {}: run scripts/setup (npm ci in collector/tests/tools)",
        p.display()
    );
    p
}

/// `sentry-cli debug-files upload` of `file` to the collector's default project, as a user
/// configured by `SENTRY_URL` and `SENTRY_AUTH_TOKEN` runs it.
fn upload(collector: &Collector, file: &Path) {
    let out = Command::new(sentry_cli())
        .args([
            "debug-files",
            "upload",
            "--org",
            "errscope",
            "--project",
            "default",
        ])
        .arg(file)
        .env("SENTRY_URL", format!("http://{}", collector.addr))
        .env("SENTRY_AUTH_TOKEN", TOKEN)
        .env("SENTRY_DISABLE_UPDATE_CHECK", "true")
        .env("SENTRY_LOAD_DOTENV", "0")
        .env("HOME", std::env::temp_dir())
        .env_remove("SENTRY_ORG")
        .env_remove("SENTRY_PROJECT")
        .output()
        .expect("run sentry-cli");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sentry-cli failed:\n{stdout}\n{stderr}"
    );
}

/// Runs the stripped child's `async-errors` (an error captured in a `Domain::run` by
/// `load_order`, one in an `errscope::spawn`ed task by `charge_card`), shipping to the
/// collector; waits until both are stored.
fn run_host(collector: &Collector, dir: &Path, stripped: &Path) {
    let out = Command::new(stripped)
        .arg("async-errors")
        .arg(outbox(dir, "host"))
        .env("ERRSCOPE_CHILD_DSN", collector.dsn())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the stripped child");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "flushed=true",
        "{out:?}"
    );
    assert_eq!(collector.wait_for_events(2, Duration::from_secs(30)), 2);
}

fn get(collector: &Collector, path: &str) -> Value {
    let (status, body) = collector.get(path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The issues of the default project, each with its latest event (viewed through the API).
fn issues_and_events(collector: &Collector) -> Vec<(Value, Value)> {
    let issues = get(collector, "/api/0/projects/1/issues/?status=all");
    let issues = issues["data"].as_array().expect("issues").clone();
    assert_eq!(issues.len(), 2, "{issues:#?}");
    issues
        .into_iter()
        .map(|issue| {
            let detail = get(collector, &format!("/api/0/issues/{}/", issue["id"]));
            let id = detail["latest_event_id"].as_str().expect("latest event");
            let event = get(collector, &format!("/api/0/projects/1/events/{id}/"));
            (issue, event)
        })
        .collect()
}

/// The event of a domain.
fn of_domain<'a>(pairs: &'a [(Value, Value)], domain: &str) -> &'a (Value, Value) {
    pairs
        .iter()
        .find(|(_, e)| e["tags"]["domain"] == domain)
        .unwrap_or_else(|| panic!("no event of {domain}: {pairs:#?}"))
}

fn frames(event: &Value) -> &Vec<Value> {
    let values = event["exception"]["values"].as_array().expect("exception");
    values.last().expect("an exception")["stacktrace"]["frames"]
        .as_array()
        .expect("frames")
}

fn name(frame: &Value) -> &str {
    frame["function"].as_str().unwrap_or("")
}

/// The 1-based line of the first line containing `text` after the line containing `after`
/// in the child's main.rs.
fn line_of(after: &str, text: &str) -> u64 {
    let src = std::fs::read_to_string(child_builds::fixture_dir().join("src/main.rs"))
        .expect("the child's source");
    let lines: Vec<&str> = src.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(after))
        .unwrap_or_else(|| panic!("no {after:?}"));
    let at = lines[start..]
        .iter()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no {text:?} after {after:?}"));
    (start + at + 1) as u64
}

/// The 1-based column where `text` starts on line `line` of the child's main.rs.
fn column_of(line: u64, text: &str) -> u64 {
    let src = std::fs::read_to_string(child_builds::fixture_dir().join("src/main.rs"))
        .expect("the child's source");
    let l = src.lines().nth(line as usize - 1).expect("the line");
    1 + l
        .find(text)
        .unwrap_or_else(|| panic!("no {text:?} on line {line}")) as u64
}

/// The executable's entry in `debug_meta.images`.
fn executable_image<'e>(event: &'e Value, stripped: &Path) -> &'e Value {
    let images = event["debug_meta"]["images"].as_array().expect("images");
    images
        .iter()
        .find(|i| i["code_file"] == stripped.display().to_string())
        .unwrap_or_else(|| panic!("the executable is not among {images:#?}"))
}

/// The images the event lists as missing a debug file.
fn missing(event: &Value) -> Vec<Value> {
    event["errscope"]["missing_debug_files"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// An event symbolicated with the child's debug file: the host's frames named, with file
/// and line, in-app; the agent's, tokio's and std's frames named and not in-app; the
/// executable not missing; the frame that captured is the newest in-app one.
fn assert_symbolicated(event: &Value, stripped: &Path, function: &str, capture_line: u64) {
    let frames = frames(event);
    let want = format!("errscope_child::{function}");
    let captured = frames
        .iter()
        .rev()
        .find(|f| name(f).starts_with(&want))
        .unwrap_or_else(|| panic!("no {want} frame in {frames:#?}"));
    assert_eq!(captured["lineno"], capture_line, "{captured:#}");
    // The column of the call that captured, from the DWARF line table or inlined call.
    assert_eq!(
        captured["colno"],
        column_of(capture_line, "errscope::capture_error"),
        "{captured:#}"
    );
    assert_eq!(captured["filename"], "src/main.rs", "{captured:#}");
    assert!(
        captured["abs_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("agent/tests/fixtures/child/src/main.rs")),
        "{captured:#}"
    );
    assert_eq!(captured["data"]["symbolicator_status"], "symbolicated");
    let in_app: Vec<&str> = frames
        .iter()
        .filter(|f| f["in_app"] == true)
        .map(name)
        .collect();
    assert!(
        in_app.last().is_some_and(|f| f.starts_with(&want)),
        "the newest in-app frame is {want}: {in_app:#?}"
    );
    assert!(
        in_app.iter().all(|f| f.starts_with("errscope_child::")),
        "{in_app:#?}"
    );
    // The callers in the host: each with its file and line.
    for caller in ["errscope_child::async_errors", "errscope_child::main"] {
        let f = frames
            .iter()
            .find(|f| name(f).starts_with(caller))
            .unwrap_or_else(|| panic!("no {caller} in {frames:#?}"));
        assert_eq!(f["in_app"], true, "{f:#}");
        assert_eq!(f["filename"], "src/main.rs", "{f:#}");
        assert!(f["lineno"].as_u64().is_some_and(|l| l > 0), "{f:#}");
    }
    let mut others = 0;
    for f in frames {
        let n = name(f);
        if [
            "errscope::",
            "<errscope::",
            "std::",
            "core::",
            "tokio::",
            "<tokio::",
        ]
        .iter()
        .any(|p| n.starts_with(p))
        {
            assert_eq!(f["in_app"], false, "{f:#}");
            others += 1;
        }
    }
    assert!(others >= 3, "{frames:#?}");
    assert!(
        frames
            .iter()
            .any(|f| name(f).contains("errscope::domain::")),
        "the domain's poll is on the stack, named, not in-app: {frames:#?}"
    );
    // Nothing of the executable is left unresolved.
    let exe = executable_image(event, stripped);
    let start = u64::from_str_radix(
        exe["image_addr"]
            .as_str()
            .expect("image_addr")
            .trim_start_matches("0x"),
        16,
    )
    .expect("hex");
    let end = start + exe["image_size"].as_u64().expect("image_size");
    let in_exe: Vec<&Value> = frames
        .iter()
        .filter(|f| {
            f["instruction_addr"]
                .as_str()
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .is_some_and(|a| (start..end).contains(&a))
        })
        .collect();
    assert!(in_exe.len() >= 8, "{frames:#?}");
    assert!(
        in_exe.iter().all(
            |f| f["function"].is_string() && f["data"]["symbolicator_status"] == "symbolicated"
        ),
        "{in_exe:#?}"
    );
    assert!(
        !missing(event)
            .iter()
            .any(|m| m["debug_id"] == exe["debug_id"] || m["code_file"] == exe["code_file"]),
        "the executable is not missing: {:#}",
        event["errscope"]
    );
}

/// The debug id the collector lists for the uploaded file equals the executable's.
fn assert_uploaded(collector: &Collector, debug_id: &str) {
    let files = get(collector, "/api/0/projects/errscope/default/files/dsyms/");
    let files = files.as_array().expect("files");
    assert!(
        files
            .iter()
            .any(|f| f["debugId"] == debug_id && f["objectName"] == "errscope-child.debug"),
        "{debug_id} in {files:#?}"
    );
}

#[test]
fn a_stripped_agent_host_is_symbolicated_with_the_debug_file_sentry_cli_uploaded() {
    let builds = child_builds::release();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    upload(&collector, &builds.debug_file);
    run_host(&collector, dir.path(), &builds.stripped);

    let events = issues_and_events(&collector);
    for (domain, function, line) in [
        (
            "GET /orders/:id",
            "load_order",
            line_of("async fn load_order", "errscope::capture_error"),
        ),
        (
            "job: charge",
            "charge_card",
            line_of("async fn charge_card", "errscope::capture_error"),
        ),
    ] {
        let (issue, event) = of_domain(&events, domain);
        let debug_id = executable_image(event, &builds.stripped)["debug_id"]
            .as_str()
            .expect("debug_id");
        assert_uploaded(&collector, debug_id);
        assert_symbolicated(event, &builds.stripped, function, line);
        // Symbolicated before grouping: the culprit is the host's function.
        let culprit = issue["culprit"].as_str().expect("culprit");
        assert!(
            culprit.starts_with(&format!("errscope_child::{function}")),
            "{culprit}"
        );
        assert!(event["errscope"].get("symbolicated_after_ingest").is_none());
    }
}

#[test]
fn a_stripped_agent_hosts_events_wait_for_its_debug_file_and_are_rewritten_on_upload() {
    let builds = child_builds::release();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    run_host(&collector, dir.path(), &builds.stripped);

    let before = issues_and_events(&collector);
    let (_, event) = of_domain(&before, "GET /orders/:id");
    let exe = executable_image(event, &builds.stripped).clone();
    let debug_id = exe["debug_id"].as_str().expect("debug_id").to_owned();
    // No debug file: the executable is listed as missing one, its frames are addresses.
    for (_, event) in &before {
        let missing = missing(event);
        let listed = missing
            .iter()
            .find(|m| m["debug_id"] == debug_id.as_str())
            .unwrap_or_else(|| panic!("the executable is not missing: {missing:#?}"));
        assert_eq!(listed["code_file"], exe["code_file"]);
        assert_eq!(listed["code_id"], exe["code_id"]);
        assert!(
            !frames(event)
                .iter()
                .any(|f| name(f).starts_with("errscope_child::")),
            "{event:#}"
        );
    }
    assert_eq!(collector.waiting_for_debug_file(&debug_id), 2);

    // The upload rewrites both in the background, without anyone viewing them.
    upload(&collector, &builds.debug_file);
    assert_uploaded(&collector, &debug_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    while collector.waiting_for_debug_file(&debug_id) > 0 {
        assert!(Instant::now() < deadline, "the events were not reprocessed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = issues_and_events(&collector);
    for (domain, function, line) in [
        (
            "GET /orders/:id",
            "load_order",
            line_of("async fn load_order", "errscope::capture_error"),
        ),
        (
            "job: charge",
            "charge_card",
            line_of("async fn charge_card", "errscope::capture_error"),
        ),
    ] {
        let (issue, event) = of_domain(&after, domain);
        assert_symbolicated(event, &builds.stripped, function, line);
        assert_eq!(event["errscope"]["symbolicated_after_ingest"], true);
        // Still in the issue it was filed under.
        let (old_issue, old_event) = of_domain(&before, domain);
        assert_eq!(event["event_id"], old_event["event_id"]);
        assert_eq!(issue["id"], old_issue["id"]);
    }
}
