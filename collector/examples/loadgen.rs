//! Load generator: starts the release collector as a child process and sends 15 KB events
//! from 16 concurrent connections.
//!
//! ```text
//! cargo run --release -p errscope-collector --example loadgen -- [seconds] [connections]
//! ```
//!
//! Reports accepted/s, stored-and-visible/s (the API's event count catching up with what
//! was accepted), p50/p99 of the request latency and of the time from sending an event
//! to reading it back through the API, the server's peak and idle RSS, and the latency of
//! the issue list at 10,000 issues.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

mod support;
use support::*;

const TOKEN: &str = "loadgen-token";
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let bin = server_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(bin, seconds, conns));
}

async fn run(bin: std::path::PathBuf, seconds: u64, conns: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("ERRSCOPE_ADMIN_TOKEN", TOKEN)
        .env("ERRSCOPE_ADMIN_PASSWORD", "loadgen")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the collector");
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut key) = (String::new(), String::new());
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(b) = line.strip_prefix("listening on ") {
            base = b.to_owned();
        }
        if let Some(dsn) = line.split("DSN: ").nth(1) {
            key = dsn
                .split("//")
                .nth(1)
                .unwrap()
                .split('@')
                .next()
                .unwrap()
                .to_owned();
        }
        if line.starts_with("admin login") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_start = rss_kib(pid, "VmRSS");

    let templates: Arc<Vec<String>> = Arc::new((0..FINGERPRINTS).map(event_template).collect());
    let event_bytes = templates[0].len();
    let url = format!("{base}/api/1/envelope/?sentry_key={key}");
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let probe_http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let probe_http = probe_http.clone();
        let (templates, url, stop, counter, accepted, rejected, probes, base) = (
            templates.clone(),
            url.clone(),
            stop.clone(),
            counter.clone(),
            accepted.clone(),
            rejected.clone(),
            probes.clone(),
            base.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::new();
            while !stop.load(Relaxed) {
                let n = counter.fetch_add(1, Relaxed);
                let id = format!("{:032x}", n + 1);
                let body = templates[n as usize % FINGERPRINTS]
                    .replace("EVENTIDEVENTIDEVENTIDEVENTIDEVEN", &id);
                let sent = Instant::now();
                // Every 200th event: poll the API until it is readable.
                if n % 200 == 0 {
                    let (probes, base, id, http) =
                        (probes.clone(), base.clone(), id.clone(), probe_http.clone());
                    tokio::spawn(async move {
                        let u = format!("{base}/api/0/projects/1/events/{id}/");
                        loop {
                            if let Ok(r) = http.get(&u).bearer_auth(TOKEN).send().await
                                && r.status() == 200
                            {
                                probes.lock().unwrap().push(sent.elapsed().as_secs_f64());
                                return;
                            }
                            if sent.elapsed() > Duration::from_secs(30) {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    });
                }
                match http.post(&url).body(body).send().await {
                    Ok(r) if r.status() == 200 => {
                        accepted.fetch_add(1, Relaxed);
                        latencies.push(sent.elapsed().as_secs_f64());
                    }
                    Ok(r) => {
                        rejected.fetch_add(1, Relaxed);
                        if r.status() == 503 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    Err(_) => {
                        rejected.fetch_add(1, Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut peak_rss = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS"));
    }
    stop.store(true, Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let send_secs = started.elapsed().as_secs_f64();
    let total = accepted.load(Relaxed);
    // Wait until the API shows every accepted event.
    let http = reqwest::Client::new();
    let visible_secs = loop {
        let stats: Value = http
            .get(format!("{base}/api/0/projects/1/stats/"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["events"].as_u64().unwrap_or(0) >= total {
            break started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hwm = rss_kib(pid, "VmHWM");
    let cpu = thread_cpu(pid);
    let own_cpu = thread_cpu(std::process::id());
    let mut probes = probes.lock().unwrap().clone();

    // Issue list latency at 10,000 issues.
    let mut batch = String::from("{}\n");
    let mut sent_issues = 0;
    let http2 = reqwest::Client::new();
    for i in 0..10_000 {
        let ev = json!({"event_id": format!("{:032x}", 1u128 << 100 | i as u128), "message": "m", "fingerprint": [format!("issue-{i}")]});
        batch.push_str("{\"type\":\"event\"}\n");
        batch.push_str(&ev.to_string());
        batch.push('\n');
        if i % 500 == 499 {
            let r = http2
                .post(&url)
                .body(std::mem::replace(&mut batch, String::from("{}\n")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            sent_issues += 500;
        }
    }
    let mut page_ms = Vec::new();
    let mut deep_ms = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..100 {
        let q = match &cursor {
            Some(c) => format!("{base}/api/0/projects/1/issues/?limit=100&cursor={c}"),
            None => format!("{base}/api/0/projects/1/issues/?limit=100"),
        };
        let t = Instant::now();
        let v: Value = http2
            .get(&q)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if page == 0 {
            page_ms.push(ms)
        } else {
            deep_ms.push(ms)
        }
        cursor = v["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    // `status=all` has no index of its own (see the schema): it sorts.
    let t = Instant::now();
    let all: Value = http2
        .get(format!(
            "{base}/api/0/projects/1/issues/?status=all&sort=count&limit=100"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(all["data"].as_array().map(Vec::len), Some(100));
    let t = Instant::now();
    let _: Value = http2
        .get(format!("{base}/api/0/projects/1/classes/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let classes_ms = t.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_after = rss_kib(pid, "VmRSS");
    let db_bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    println!(
        "events: {event_bytes} bytes each, {FINGERPRINTS} fingerprints, {conns} connections, {seconds} s"
    );
    println!(
        "accepted: {total} ({:.0}/s), rejected: {}",
        total as f64 / send_secs,
        rejected.load(Relaxed)
    );
    println!(
        "stored and visible through the API: {:.0}/s (all {total} visible after {visible_secs:.2} s)",
        total as f64 / visible_secs
    );
    println!(
        "request latency: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&mut latencies, 0.5) * 1000.0,
        percentile(&mut latencies, 0.99) * 1000.0
    );
    println!(
        "time to visible ({} probes): p50 {:.1} ms, p99 {:.1} ms",
        probes.len(),
        percentile(&mut probes, 0.5) * 1000.0,
        percentile(&mut probes, 0.99) * 1000.0
    );
    println!(
        "server RSS: idle at start {:.1} MB, peak under load {:.1} MB (VmHWM {:.1} MB), idle after load {:.1} MB",
        idle_start as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        idle_after as f64 / 1024.0
    );
    println!(
        "issue list at {} issues: first page {:.1} ms, later pages p50 {:.1} ms / max {:.1} ms ({} pages); classes {:.1} ms",
        sent_issues + FINGERPRINTS,
        page_ms.first().copied().unwrap_or(f64::NAN),
        percentile(&mut deep_ms.clone(), 0.5),
        deep_ms.iter().cloned().fold(0.0, f64::max),
        deep_ms.len() + 1,
        classes_ms
    );
    println!("issue list, status=all&sort=count, first page: {all_ms:.1} ms");
    println!("server CPU during the load phase: {cpu}");
    println!("load generator CPU: {own_cpu}");
    println!("data directory: {:.1} MB", db_bytes as f64 / 1e6);
    let _ = child.start_kill();
    let _ = child.wait().await;
}
