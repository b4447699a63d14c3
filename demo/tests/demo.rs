//! The demo run as a user runs it, and the anyhow grouping check at a real collector.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

const TOKEN: &str = "demo-test-token";

/// The demo child process, killed if the test fails before it exits.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `GET` an API path of the collector at `base` with the admin token.
fn api(rt: &tokio::runtime::Runtime, base: &str, path: &str) -> Value {
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", base.trim_end_matches('/')))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("API request");
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.json().await.expect("JSON body")
    })
}

fn classes(rt: &tokio::runtime::Runtime, base: &str) -> Vec<String> {
    api(rt, base, "/api/0/projects/1/classes/")
        .as_array()
        .expect("a list of classes")
        .iter()
        .filter_map(|c| c["class"].as_str().map(str::to_owned))
        .collect()
}

/// The next line of the demo's stdout, waiting until `deadline`.
fn next_line(lines: &mpsc::Receiver<String>, deadline: Instant) -> Option<String> {
    lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}

#[test]
fn the_demo_fills_the_dashboard_with_grouped_classes_and_no_404_issue() {
    const WANTED: [&str; 3] = [
        "std::io::Error: ConnectionReset",
        "std::io::Error: TimedOut",
        "panic",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_errscope-demo"))
            .args(["--duration", "20", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .env("ERRSCOPE_ADMIN_TOKEN", TOKEN)
            .env_remove("ERRSCOPE_ADMIN_PASSWORD")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start errscope-demo"),
    );
    let stdout = demo.0.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The banner: the dashboard's URL and a login.
    let banner_deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = Vec::new();
    let dashboard = loop {
        let line = next_line(&lines, banner_deadline).expect("the demo printed its dashboard URL");
        banner.push(line.clone());
        if let Some(url) = line.strip_prefix("dashboard: ") {
            break url.to_owned();
        }
    };
    let running_since = Instant::now();
    assert!(dashboard.starts_with("http://127.0.0.1:"), "{dashboard}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // While it runs, the classes show up within seconds (one turn of the directory's
    // moods takes 10 s).
    let mut seen = Vec::new();
    while running_since.elapsed() < Duration::from_secs(17) {
        seen = classes(&rt, &dashboard);
        if WANTED.iter().all(|w| seen.iter().any(|c| c == w)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for wanted in WANTED {
        assert!(
            seen.iter().any(|c| c == wanted),
            "class {wanted} after {:?}; seen: {seen:?}",
            running_since.elapsed()
        );
    }
    let filled_in = running_since.elapsed();

    // Near the end of the run (the driver has asked for missing pages all along): no
    // class or issue for a 404.
    std::thread::sleep(Duration::from_secs(17).saturating_sub(running_since.elapsed()));
    let seen = classes(&rt, &dashboard);
    assert!(
        seen.iter().all(|c| !c.starts_with("HTTP 4")),
        "no 4xx class: {seen:?}"
    );
    let issues = api(
        &rt,
        &dashboard,
        "/api/0/projects/1/issues/?status=all&limit=100",
    );
    let titles: Vec<&str> = issues["data"]
        .as_array()
        .expect("issues")
        .iter()
        .filter_map(|i| i["title"].as_str())
        .collect();
    assert!(
        titles.iter().all(|t| !t.contains("404")),
        "no 404 issue: {titles:?}"
    );

    // It stops by itself at the end of --duration, cleanly, having sent 404s.
    let exit_deadline = Instant::now() + Duration::from_secs(40);
    let mut rest = Vec::new();
    while let Some(line) = next_line(&lines, exit_deadline) {
        rest.push(line);
    }
    let status = demo.0.wait().expect("wait for the demo");
    assert!(status.success(), "{status}; output: {banner:?} {rest:?}");
    assert!(rest.iter().any(|l| l == "stopped cleanly"), "{rest:?}");
    let done = rest
        .iter()
        .find(|l| l.starts_with("traffic: done: "))
        .expect("a final tally");
    assert!(done.contains(", 404 ×"), "the driver got 404s: {done}");
    eprintln!("classes after {filled_in:?}: {seen:?}; {done}");
}

#[test]
fn anyhow_errors_with_the_same_context_and_different_root_causes_are_different_issues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = errscope_e2e::Collector::start(&dir.path().join("collector"));
    let guard = errscope::init(
        errscope::Options::new()
            .dsn(&collector.dsn())
            .database(dir.path().join("outbox.db")),
    );
    let errors: [anyhow::Result<()>; 3] = [
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into()),
        Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        "eighty".parse::<u16>().map(drop).map_err(Into::into),
    ];
    // One call site and one context message: only the root cause differs.
    let ids: Vec<String> = errors
        .into_iter()
        .map(|result| {
            let err = result.context("loading the profile").unwrap_err();
            errscope::capture_anyhow(&err).to_string()
        })
        .collect();
    assert!(guard.flush(Duration::from_secs(30)), "delivered");
    drop(guard);

    let mut issues = HashSet::new();
    let mut classes = Vec::new();
    for id in &ids {
        let (status, event) = collector.get(&format!("/api/0/projects/1/events/{id}/"));
        assert_eq!(status, 200, "event {id}: {event}");
        let values = event["exception"]["values"].as_array().expect("exceptions");
        assert_eq!(
            values.last().expect("the outermost link")["value"],
            "loading the profile"
        );
        let issue_id = event["issue_id"].as_i64().expect("issue_id");
        let (status, issue) = collector.get(&format!("/api/0/issues/{issue_id}/"));
        assert_eq!(status, 200, "{issue}");
        issues.insert(issue_id);
        classes.push(issue["class"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        classes,
        [
            "std::io::Error: ConnectionReset",
            "std::io::Error: TimedOut",
            "core::num::error::ParseIntError",
        ]
    );
    assert_eq!(issues.len(), 3, "three issues: {issues:?}");
}
