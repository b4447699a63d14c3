//! The store's ingest throughput on SQLite, on PostgreSQL, and on two PostgreSQL nodes
//! sharing one database, measured interleaved: 15 KB events from 16 concurrent senders.
//!
//! ```text
//! cargo run --release -p errscope-collector --example pgbench -- postgres://postgres@127.0.0.1:5433/postgres [seconds] [rounds]
//! ```
//!
//! The URL names a server whose user may create databases (each run gets a fresh one,
//! dropped afterwards). Each run is a child process of its own, so its peak RSS
//! (`VmHWM`) is its own; the PostgreSQL server's memory is not in it. The senders call
//! `Store::ingest` with events prepared as the HTTP handler prepares them (parse, group,
//! compress), so the figures are the store's, without HTTP; two nodes are two `PgStore`s in
//! one process, the senders split between them as a load balancer would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use errscope_collector::ingest::prepare_event;
use errscope_collector::metrics::Metrics;
use errscope_collector::store::postgres::PgStore;
use errscope_collector::store::sqlite::SqliteStore;
use errscope_collector::store::{IngestJob, Retention, Store, StoreError};

mod support;

const SENDERS: usize = 16;
const FINGERPRINTS: u64 = 50;
const MODES: [&str; 3] = ["sqlite", "postgres", "postgres-2-nodes"];

/// A 15 KB event of fingerprint `fp` (the load generator's).
fn event_json(id: u64, fp: u64) -> Vec<u8> {
    let envelope = support::event_template(fp as usize);
    let event = envelope.lines().nth(2).expect("the envelope's event");
    event
        .replace("EVENTIDEVENTIDEVENTIDEVENTIDEVEN", &format!("{id:032x}"))
        .into_bytes()
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(child(&args[2], &args[3], args[4].parse()?));
    }
    let url = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("ERRSCOPE_BENCH_PG_URL").ok())
        .ok_or_else(|| {
            anyhow::anyhow!("usage: pgbench <postgres-server-url> [seconds] [rounds]")
        })?;
    let seconds: u64 = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let exe = std::env::current_exe()?;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut peaks: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 1..=rounds {
        for (m, mode) in MODES.iter().enumerate() {
            let out = std::process::Command::new(&exe)
                .args(["child", mode, &url, &seconds.to_string()])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
                anyhow::bail!(
                    "{mode} run failed: {}{}",
                    text,
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let field = |k: &str| -> f64 {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let (rate, peak) = (field("events_per_s"), field("peak_rss_kib") / 1024.0);
            println!(
                "round {round} {mode:>17}: {rate:8.0} events/s, peak RSS {peak:6.1} MB ({} refused as queue full)",
                field("queue_full")
            );
            rates[m].push(rate);
            peaks[m].push(peak);
        }
    }
    let med: Vec<f64> = rates.iter_mut().map(|v| median(v)).collect();
    println!("medians over {rounds} rounds of {seconds} s, {SENDERS} senders, 15 KB events:");
    for (m, mode) in MODES.iter().enumerate() {
        println!(
            "  {mode:>17}: {:8.0} events/s ({:.2}x SQLite), peak RSS {:6.1} MB",
            med[m],
            med[m] / med[0],
            median(&mut peaks[m])
        );
    }
    Ok(())
}

/// One measured run: `mode` for `seconds`, printing a `RESULT` line.
async fn child(mode: &str, server: &str, seconds: u64) -> anyhow::Result<()> {
    let retention = Retention::default();
    let metrics = Arc::new(Metrics::default());
    let dir = tempfile::tempdir()?;
    let mut db = None;
    let stores: Vec<Arc<dyn Store>> = if mode == "sqlite" {
        let s = SqliteStore::open(dir.path(), 1024, retention, metrics, None)?;
        s.create_project("bench").await?;
        vec![Arc::new(s)]
    } else {
        let name = format!("errscope_bench_{}", std::process::id());
        let (admin, conn) = tokio_postgres::connect(server, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = format!("{}/{name}", server.rsplit_once('/').map_or(server, |p| p.0));
        let nodes = if mode == "postgres" { 1 } else { 2 };
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        for _ in 0..nodes {
            let s = PgStore::open(&url, 1024, retention, metrics.clone(), None).await?;
            stores.push(Arc::new(s));
        }
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.execute(
            "INSERT INTO projects (id, name, created) VALUES (1, 'bench', 0)",
            &[],
        )
        .await?;
        db = Some((admin, name));
        stores
    };
    let next_id = Arc::new(AtomicU64::new(1));
    let stored = Arc::new(AtomicU64::new(0));
    let full = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let store = stores[sender % stores.len()].clone();
        let (next_id, stored, full) = (next_id.clone(), stored.clone(), full.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let id = next_id.fetch_add(1, Relaxed);
                let json = event_json(id, id % FINGERPRINTS);
                let ev = prepare_event(&json, errscope_collector::time::now_ms(), None)
                    .expect("a valid event");
                let job = IngestJob {
                    project_id: 1,
                    events: vec![ev],
                    ..Default::default()
                };
                match store.ingest(job).await {
                    Ok(()) => {
                        stored.fetch_add(1, Relaxed);
                    }
                    Err(StoreError::QueueFull) => {
                        full.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("ingest failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = stored.load(Relaxed);
    let peak = vm_hwm_kib();
    for s in &stores {
        s.close().await;
    }
    // The store's own count agrees with what was answered.
    let counted = stores[0].stats(1).await?.map_or(0, |s| s.events);
    anyhow::ensure!(
        counted as u64 == n,
        "{mode}: {n} events answered, {counted} counted"
    );
    drop(stores);
    if let Some((admin, name)) = db {
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await?;
    }
    println!(
        "RESULT events_per_s={:.1} peak_rss_kib={peak} queue_full={}",
        n as f64 / elapsed,
        full.load(Relaxed)
    );
    Ok(())
}
