//! Alert benchmark: the ingest rate of a release collector with five alert rules against
//! one with none, measured in interleaved rounds, and the time from sending an event of a
//! new issue to its webhook arriving.
//!
//! ```text
//! cargo run --release -p errscope-collector --example alertbench -- [rounds] [seconds] [connections]
//! ```
//!
//! Both collectors run side by side (each idle while the other is loaded), on fresh data
//! directories, with 50 fingerprints of a 2 KB event; the receiver is in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const TOKEN: &str = "alertbench-token";
const FINGERPRINTS: u64 = 50;

fn envelope(id: &str, fingerprint: u64) -> String {
    let frames: Vec<Value> = (0..12)
        .map(|i| {
            json!({"function": format!("shop::handlers::step_{i}"), "module": "shop::handlers",
            "filename": "src/handlers.rs", "lineno": 100 + i, "in_app": i > 3})
        })
        .chain(std::iter::once(
            json!({"function": format!("shop::ldap::bind_{fingerprint}"),
            "module": "shop::ldap", "lineno": 42, "in_app": true}),
        ))
        .collect();
    let ev = json!({
        "event_id": id, "platform": "native", "level": "error", "environment": "production",
        "release": "shop@2.3.1", "server_name": "web-3", "tags": {"domain": "ldap"},
        "exception": {"values": [{"type": "std::io::Error", "value": "connection reset by peer (os error 104)",
            "stacktrace": {"frames": frames}}]},
        "extra": {"padding": "p".repeat(600)},
    });
    format!("{{}}\n{{\"type\":\"event\"}}\n{ev}\n")
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Collector {
    _child: tokio::process::Child,
    base: String,
    key: String,
    _dir: tempfile::TempDir,
}

async fn start(bin: &std::path::Path) -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            "4096",
            "--data",
        ])
        .arg(dir.path())
        .env("ERRSCOPE_ADMIN_TOKEN", TOKEN)
        .env("ERRSCOPE_ADMIN_PASSWORD", "alertbench-password")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the collector");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut key) = (None, None);
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(b) = line.strip_prefix("listening on ") {
            base = Some(b.to_owned());
        }
        if let Some(d) = line.split("DSN: ").nth(1) {
            key = d
                .split("://")
                .nth(1)
                .and_then(|r| r.split('@').next())
                .map(str::to_owned);
        }
        if line.starts_with("admin login") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Collector {
        _child: child,
        base: base.expect("listening line"),
        key: key.expect("DSN line"),
        _dir: dir,
    }
}

/// Sends events from `conns` connections for `secs`; returns accepted events per second.
async fn load(c: &Collector, secs: f64, conns: usize, seq: Arc<AtomicU64>) -> f64 {
    let http = reqwest::Client::new();
    let accepted = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (http, url, accepted, seq) = (
            http.clone(),
            format!("{}/api/1/envelope/?sentry_key={}", c.base, c.key),
            accepted.clone(),
            seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let n = seq.fetch_add(1, Relaxed);
                let body = envelope(&format!("{n:032x}"), n % FINGERPRINTS);
                if let Ok(r) = http.post(&url).body(body).send().await
                    && r.status() == 200
                {
                    accepted.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    accepted.load(Relaxed) as f64 / started.elapsed().as_secs_f64()
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver() -> (String, Arrivals, Arc<AtomicU64>) {
    let arrivals: Arrivals = Default::default();
    let total = Arc::new(AtomicU64::new(0));
    let (a, t) = (arrivals.clone(), total.clone());
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (a, t) = (a.clone(), t.clone());
        async move {
            let now = Instant::now();
            t.fetch_add(1, Relaxed);
            if let Ok(v) = serde_json::from_slice::<Value>(&body)
                && let Some(id) = v["event"]["event_id"].as_str()
            {
                a.lock().unwrap().entry(id.to_owned()).or_insert(now);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, arrivals, total)
}

/// The release collector, built now; `ERRSCOPE_COLLECTOR_BIN` names another binary.
fn server_binary() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("ERRSCOPE_COLLECTOR_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "errscope-collector", "--bins"])
        .status()
        .expect("cargo build");
    assert!(st.success(), "building the collector failed");
    dir.join("errscope-collector")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let secs: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let conns: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);
    let bin = server_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (hook, arrivals, delivered) = receiver().await;
        let none = start(&bin).await;
        let five = start(&bin).await;
        let http = reqwest::Client::new();
        let rules = [
            json!({"name": "new", "trigger": "new_issue", "channel": {"type": "webhook", "url": format!("{hook}/new"), "secret": "s"}}),
            json!({"name": "new prod errors", "trigger": "new_issue", "filter": {"level": "error", "environment": "production"},
                   "channel": {"type": "slack", "url": format!("{hook}/slack")}}),
            json!({"name": "regression", "trigger": "regression", "channel": {"type": "webhook", "url": format!("{hook}/regress")}}),
            json!({"name": "storm", "trigger": "frequency", "count": 100, "minutes": 1, "channel": {"type": "webhook", "url": format!("{hook}/storm")}}),
            json!({"name": "big storm", "trigger": "frequency", "count": 1_000_000, "minutes": 60, "filter": {"kind": "operational"},
                   "channel": {"type": "webhook", "url": format!("{hook}/big")}}),
        ];
        for r in &rules {
            let resp = http
                .post(format!("{}/api/0/projects/1/alerts/", five.base))
                .bearer_auth(TOKEN)
                .json(r)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        }
        let seq = Arc::new(AtomicU64::new(1));
        // Warm-up: every fingerprint's issue exists on both before measuring.
        load(&none, 1.0, conns, seq.clone()).await;
        load(&five, 1.0, conns, seq.clone()).await;
        let (mut r_none, mut r_five, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                let a = load(&none, secs, conns, seq.clone()).await;
                (a, load(&five, secs, conns, seq.clone()).await)
            } else {
                let b = load(&five, secs, conns, seq.clone()).await;
                (load(&none, secs, conns, seq.clone()).await, b)
            };
            println!("round {round}: no rules {a:.0} events/s, five rules {b:.0} events/s, ratio {:.3}", b / a);
            r_none.push(a);
            r_five.push(b);
            ratios.push(b / a);
        }
        let (m_none, m_five, m_ratio) = (
            percentile(&mut r_none, 0.5),
            percentile(&mut r_five, 0.5),
            percentile(&mut ratios, 0.5),
        );
        println!(
            "ingest, {conns} connections, {secs} s x {rounds} rounds: median no rules {m_none:.0} events/s, five rules {m_five:.0} events/s; median ratio {m_ratio:.3}"
        );
        println!("webhooks received during the load: {}", delivered.load(Relaxed));

        // Latency: one event of a new issue at a time; two rules fire for each.
        let mut lat = Vec::new();
        let url = format!("{}/api/1/envelope/?sentry_key={}", five.base, five.key);
        for i in 0..200u64 {
            let id = format!("{:032x}", 0xfeed_0000_0000u64 + i);
            let t0 = Instant::now();
            let r = http.post(&url).body(envelope(&id, 1_000_000 + i)).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let deadline = t0 + Duration::from_secs(10);
            loop {
                if let Some(at) = arrivals.lock().unwrap().get(&id) {
                    lat.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                    break;
                }
                assert!(Instant::now() < deadline, "webhook for {id} never arrived");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        println!(
            "ingest to webhook received, 200 new issues one at a time: median {:.1} ms, p99 {:.1} ms",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99)
        );
    });
}
