//! Ingest over HTTP on one collector with SQLite, one with PostgreSQL and two with
//! PostgreSQL, interleaved in rounds on the same machine (and the same PostgreSQL runs of
//! another build, `ERRSCOPE_BENCH_BASELINE=<its errscope-collector>`, to compare with).
//!
//! ```text
//! cargo run --release -p errscope-collector --example scalebench -- [seconds] [rounds] [connections]
//! ```
//!
//! Each configuration runs as release collector processes (a fresh data directory, and a
//! fresh database on one PostgreSQL server the example starts with errscope-testkit). The
//! connections (16 by default) are spread over the nodes and send envelopes of one 15 KB
//! event (the load generator's), each waiting for its 200. Every 100th accepted event is
//! then polled on *another* node (on the same one with one node) until the API returns it:
//! the time a dashboard on any node takes to see it. After the load, every node's
//! `/stats/` must count exactly the accepted events. Printed per run and as medians: events
//! accepted per second, request latency, time to visible, each node's peak RSS, and the
//! CPU seconds of the collectors, of PostgreSQL and of the load generator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use errscope_testkit::pg::Cluster;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

mod support;
use support::*;

const TOKEN: &str = "scalebench-token";

/// The configurations, in the order each round runs them: name, nodes (0 = SQLite),
/// `--pg-writers`, and whether it runs the binary of `ERRSCOPE_BENCH_BASELINE` (another
/// build to compare with, skipped without it).
const CONFIGS: [(&str, usize, u32, bool); 5] = [
    ("SQLite", 0, 2, false),
    ("PostgreSQL, 1 node", 1, 2, false),
    ("PostgreSQL, 2 nodes", 2, 2, false),
    ("PostgreSQL, 1 node, baseline", 1, 2, true),
    ("PostgreSQL, 2 nodes, baseline", 2, 2, true),
];

struct Node {
    base: String,
    pid: u32,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn start_node(bin: &Path, database: Option<&str>, writers: u32) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    match database {
        Some(url) => cmd.env("ERRSCOPE_DATABASE_URL", url),
        None => cmd.env_remove("ERRSCOPE_DATABASE_URL"),
    };
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("ERRSCOPE_PG_WRITERS", writers.to_string())
        .env("ERRSCOPE_ADMIN_TOKEN", TOKEN)
        .env("ERRSCOPE_ADMIN_PASSWORD", TOKEN)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the collector");
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut base = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(b) = line.strip_prefix("listening on ") {
            base = b.to_owned();
            break;
        }
    }
    assert!(!base.is_empty(), "the collector did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node {
        base,
        pid,
        child,
        _dir: dir,
    }
}

/// CPU seconds (user + system) of a process, all its threads.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
}

/// CPU seconds of the PostgreSQL server: the postmaster and every process it forked.
fn postgres_cpu(data_dir: &Path) -> f64 {
    let Some(master) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
    else {
        return 0.0;
    };
    let mut total = cpu_secs(master);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|c| stat[c + 2..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(master) {
            total += cpu_secs(pid);
        }
    }
    total
}

async fn dsn_key(http: &reqwest::Client, base: &str) -> String {
    let projects: Value = http
        .get(format!("{base}/api/0/projects/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dsn = projects[0]["dsn"].as_str().unwrap();
    dsn.split("//")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned()
}

async fn stats_events(http: &reqwest::Client, base: &str) -> u64 {
    let stats: Value = http
        .get(format!("{base}/api/0/projects/1/stats/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["events"].as_u64().unwrap_or(0)
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    visible_p50_ms: f64,
    visible_p99_ms: f64,
    peak_rss_mb: f64,
    collector_cpu: f64,
    postgres_cpu: f64,
    bench_cpu: f64,
}

async fn run_once(
    bin: &Path,
    cluster: &Cluster,
    (nodes, writers): (usize, u32),
    secs: u64,
    conns: usize,
) -> Run {
    let database = (nodes > 0).then(|| cluster.fresh_database().expect("a database"));
    let mut started = Vec::new();
    for _ in 0..nodes.max(1) {
        started.push(start_node(bin, database.as_deref(), writers).await);
    }
    let http = reqwest::Client::new();
    let key = dsn_key(&http, &started[0].base).await;
    let bases: Arc<Vec<String>> = Arc::new(started.iter().map(|n| n.base.clone()).collect());
    let templates: Arc<Vec<String>> = Arc::new((0..FINGERPRINTS).map(event_template).collect());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu0: f64 = started.iter().map(|n| cpu_secs(n.pid)).sum();
    let pg0 = postgres_cpu(cluster.data_dir());
    let me0 = cpu_secs(std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let begun = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (bases, templates, stop, counter, accepted, probes, key) = (
            bases.clone(),
            templates.clone(),
            stop.clone(),
            counter.clone(),
            accepted.clone(),
            probes.clone(),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let node = c % bases.len();
            let url = format!("{}/api/1/envelope/?sentry_key={key}", bases[node]);
            let other = bases[(node + 1) % bases.len()].clone();
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
                match http.post(&url).body(body).send().await {
                    Ok(r) if r.status() == 200 => {
                        accepted.fetch_add(1, Relaxed);
                        latencies.push(sent.elapsed().as_secs_f64());
                    }
                    Ok(r) => {
                        eprintln!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                }
                if n % 100 == 0 {
                    let (probes, other, http) = (probes.clone(), other.clone(), http.clone());
                    tokio::spawn(async move {
                        let u = format!("{other}/api/0/projects/1/events/{id}/");
                        while sent.elapsed() < Duration::from_secs(30) {
                            if let Ok(r) = http.get(&u).bearer_auth(TOKEN).send().await
                                && r.status() == 200
                            {
                                probes.lock().unwrap().push(sent.elapsed().as_secs_f64());
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    });
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = begun.elapsed().as_secs_f64();
    let total = accepted.load(Relaxed);
    for b in bases.iter() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats_events(&http, b).await != total {
            assert!(
                Instant::now() < deadline,
                "{b} never counted {total} events"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let collector_cpu = started.iter().map(|n| cpu_secs(n.pid)).sum::<f64>() - cpu0;
    let pg = postgres_cpu(cluster.data_dir()) - pg0;
    let me = cpu_secs(std::process::id()) - me0;
    let peak = started
        .iter()
        .map(|n| rss_kib(n.pid, "VmHWM"))
        .max()
        .unwrap_or(0);
    let mut probes = probes.lock().unwrap().clone();
    for mut n in started {
        let _ = n.child.start_kill();
        let _ = n.child.wait().await;
    }
    Run {
        rate: total as f64 / elapsed,
        p50_ms: percentile(&mut latencies, 0.5) * 1e3,
        p99_ms: percentile(&mut latencies, 0.99) * 1e3,
        visible_p50_ms: percentile(&mut probes, 0.5) * 1e3,
        visible_p99_ms: percentile(&mut probes, 0.99) * 1e3,
        peak_rss_mb: peak as f64 / 1024.0,
        collector_cpu,
        postgres_cpu: if nodes > 0 { pg } else { 0.0 },
        bench_cpu: me,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(15);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let conns: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(16);
    let bin: PathBuf = server_binary();
    let baseline: Option<PathBuf> = std::env::var_os("ERRSCOPE_BENCH_BASELINE").map(Into::into);
    let cluster = Cluster::start().expect("start PostgreSQL");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{} byte events, {FINGERPRINTS} fingerprints, {conns} connections, {secs} s per run, {rounds} rounds",
        event_template(0).len()
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); CONFIGS.len()];
    for round in 1..=rounds {
        for (i, (name, nodes, writers, before)) in CONFIGS.iter().enumerate() {
            let bin = match (before, &baseline) {
                (false, _) => &bin,
                (true, Some(b)) => b,
                (true, None) => continue,
            };
            let r = rt.block_on(run_once(bin, &cluster, (*nodes, *writers), secs, conns));
            println!(
                "round {round} {name:>28}: {:6.0} events/s, latency p50 {:5.1} / p99 {:6.1} ms, visible on {} p50 {:5.1} / p99 {:6.1} ms, peak RSS {:5.1} MB, CPU s: collectors {:5.1}, PostgreSQL {:5.1}, load generator {:4.1}",
                r.rate,
                r.p50_ms,
                r.p99_ms,
                if *nodes > 1 {
                    "the other node"
                } else {
                    "the node"
                },
                r.visible_p50_ms,
                r.visible_p99_ms,
                r.peak_rss_mb,
                r.collector_cpu,
                r.postgres_cpu,
                r.bench_cpu
            );
            runs[i].push(r);
        }
    }
    let base = median(runs[0].iter().map(|r| r.rate).collect());
    println!();
    println!(
        "| configuration | events/s (median) | vs SQLite | latency p50 / p99 | visible p50 / p99 | peak RSS per node | CPU s per 1,000 events: collectors / PostgreSQL |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, (name, _, _, _)) in CONFIGS.iter().enumerate() {
        if runs[i].is_empty() {
            continue;
        }
        let m = |f: fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
        let rate = m(|r| r.rate);
        let per_k = |cpu: f64| cpu / (rate * secs as f64 / 1000.0);
        println!(
            "| {name} | {rate:.0} | {:.2}× | {:.1} / {:.1} ms | {:.0} / {:.0} ms | {:.1} MB | {:.2} / {:.2} |",
            rate / base,
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            m(|r| r.visible_p50_ms),
            m(|r| r.visible_p99_ms),
            m(|r| r.peak_rss_mb),
            per_k(m(|r| r.collector_cpu)),
            per_k(m(|r| r.postgres_cpu)),
        );
    }
    drop(cluster);
}
