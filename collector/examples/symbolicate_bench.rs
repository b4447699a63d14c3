//! Symbolication benchmark: cost per event (20 frames) with a warm cache and for the first
//! event after a debug file appears (cold: the SymCache is built), the peak RSS while that
//! happens, and the ingest rate of stripped events against the same events
//! pre-symbolicated, interleaved in one run against one in-process collector.
//!
//! ```text
//! cargo run --release -p errscope-collector --example symbolicate_bench -- [rounds] [events-per-round]
//! ```
//!
//! The debug file is this benchmark's own executable split with `objcopy --only-keep-debug`
//! (so its size follows the profile's `debug` setting; `CARGO_PROFILE_RELEASE_DEBUG=full`
//! makes it larger). Frames are 20 function addresses spread over it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use errscope_collector::symbolicate::{DirectoryLookup, Limits, Symbolicator};
use errscope_collector::{Config, app, start};
use serde_json::{Value, json};
use symbolic_debuginfo::Object;

const TOKEN: &str = "bench-token";
const BASE: u64 = 0x5555_0000_0000;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A stripped event in the `sentry` crate's shape: addresses only.
fn stripped_event(n: usize, debug_id: &str, code_id: Option<&str>, addrs: &[u64]) -> Value {
    let frames: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"function": "<unknown>", "instruction_addr": format!("{:#x}", BASE + a)}))
        .collect();
    json!({
        "event_id": format!("{n:032x}"),
        "platform": "native",
        "level": "error",
        "release": "bench@1.0",
        "exception": {"values": [{
            "type": "std::io::Error",
            "value": format!("connection reset by peer (os error 104), call {}", n % 50),
            "stacktrace": {"frames": frames}
        }]},
        "debug_meta": {"images": [{
            "type": "elf", "debug_id": debug_id, "code_id": code_id,
            "code_file": "/srv/bench/symbolicate_bench", "image_addr": format!("{BASE:#x}"),
            "image_size": 1u64 << 32
        }]}
    })
}

fn envelope(ev: &Value) -> Vec<u8> {
    let mut out = b"{}\n{\"type\":\"event\"}\n".to_vec();
    out.extend(serde_json::to_vec(ev).unwrap());
    out.push(b'\n');
    out
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let per_round: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);

    let dir = tempfile::tempdir().unwrap();
    let debug_dir = dir.path().join("debug");
    std::fs::create_dir_all(&debug_dir).unwrap();
    let debug_file = debug_dir.join("bench.debug");
    let exe = std::env::current_exe().unwrap();
    let ok = std::process::Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&debug_file)
        .status()
        .unwrap()
        .success();
    assert!(ok, "objcopy failed");
    let size = std::fs::metadata(&debug_file).unwrap().len();
    let (debug_id, code_id, addrs) = {
        let data = std::fs::read(&debug_file).unwrap();
        let obj = Object::parse(&data).unwrap();
        let mut syms: Vec<(u64, u64)> = obj
            .symbols()
            .filter(|s| s.size > 32 && s.name().is_some())
            .map(|s| (s.address, s.size))
            .collect();
        syms.sort();
        let step = (syms.len() / 20).max(1);
        let addrs: Vec<u64> = syms
            .iter()
            .step_by(step)
            .take(20)
            .map(|(a, s)| a + (s / 2).min(24) - obj.load_address())
            .collect();
        (
            obj.debug_id().to_string(),
            obj.code_id().map(|c| c.as_str().to_owned()),
            addrs,
        )
    };
    println!(
        "debug file: {} ({:.1} MB), {} frames per event, debug id {debug_id}",
        debug_file.display(),
        size as f64 / 1e6,
        addrs.len()
    );
    let lookup = Arc::new(DirectoryLookup::scan(&debug_dir).unwrap());
    let raw = |n: usize| {
        serde_json::to_vec(&stripped_event(n, &debug_id, code_id.as_deref(), &addrs)).unwrap()
    };

    // Cold: a fresh symbolicator each time, so the SymCache is built from the file.
    let rss_before = status_kib("VmRSS:");
    let mut cold = Vec::new();
    for i in 0..3 {
        let sym = Symbolicator::new(lookup.clone(), Limits::default());
        let ev = raw(i);
        let t = Instant::now();
        let out = sym.process(&ev, 1 << 20);
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(out.missing.is_empty());
        let symcache_bytes = sym.cache_usage().1;
        if i == 0 {
            println!(
                "peak RSS while building the SymCache: {:.1} MB (RSS before {:.1} MB; SymCache {:.1} MB)",
                status_kib("VmHWM:") as f64 / 1024.0,
                rss_before as f64 / 1024.0,
                symcache_bytes as f64 / 1e6
            );
        }
    }
    println!(
        "cold (first event after the file appears): median {:.1} ms of {:?}",
        median(&mut cold.clone()),
        cold.iter().map(|c| format!("{c:.0}")).collect::<Vec<_>>()
    );

    // Warm: the same symbolicator, distinct events.
    let sym = Symbolicator::new(lookup.clone(), Limits::default());
    let first = raw(0);
    let symbolicated = sym.process(&first, 1 << 20).bytes.into_owned();
    let check: Value = serde_json::from_slice(&symbolicated).unwrap();
    let named = check["exception"]["values"][0]["stacktrace"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["lineno"].is_u64())
        .count();
    println!("frames with a line after symbolication: {named} (inlined ones expanded)");
    let events: Vec<Vec<u8>> = (0..2000).map(raw).collect();
    let mut warm = Vec::new();
    for chunk in events.chunks(200) {
        let t = Instant::now();
        for ev in chunk {
            std::hint::black_box(sym.process(ev, 1 << 20));
        }
        warm.push(t.elapsed().as_secs_f64() * 1e6 / chunk.len() as f64);
    }
    // The probe alone: a pre-symbolicated event with debug_meta, nothing to do.
    let mut probe = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        for _ in 0..200 {
            std::hint::black_box(sym.process(&symbolicated, 1 << 20));
        }
        probe.push(t.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
    println!(
        "warm: median {:.1} µs per event (20 frames, parse + lookups + serialize); \
         pre-symbolicated event (probe only): {:.1} µs",
        median(&mut warm),
        median(&mut probe)
    );
    drop(sym);

    // Ingest: one collector, stripped events vs the same events pre-symbolicated.
    let data = dir.path().join("data");
    let mut config = Config::new(&data);
    config.admin_token = Some(TOKEN.into());
    config.admin_password = Some(TOKEN.into());
    config.debug_files = Some(lookup.clone());
    let started = start(config).await.unwrap();
    let state = started.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let key = state.store.list_projects().await.unwrap()[0].key.clone();
    let url = format!("http://{addr}/api/1/envelope/?sentry_key={key}");
    let http = reqwest::Client::new();
    let sym = state.symbolicator.clone();
    let presym = |n: usize| -> Vec<u8> {
        let ev = raw(n);
        let out = sym.process(&ev, 1 << 20).bytes.into_owned();
        envelope(&serde_json::from_slice(&out).unwrap())
    };
    let stripped_env = |n: usize| envelope(&serde_json::from_slice(&raw(n)).unwrap());
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut next = 1_000_000usize;
    for round in 0..rounds * 2 {
        let kind = round % 2;
        let bodies: Vec<Vec<u8>> = (0..per_round)
            .map(|_| {
                next += 1;
                if kind == 0 {
                    stripped_env(next)
                } else {
                    presym(next)
                }
            })
            .collect();
        let bodies = Arc::new(tokio::sync::Mutex::new(bodies));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let bodies = bodies.clone();
            let http = http.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(body) = bodies.lock().await.pop() else {
                        break;
                    };
                    let r = http.post(&url).body(body).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        rates[kind].push(per_round as f64 / t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = median(&mut rates[0].clone());
    let p = median(&mut rates[1].clone());
    println!(
        "ingest, 8 connections, {rounds} interleaved rounds of {per_round}: stripped (symbolicated at ingest) \
         median {s:.0} events/s, pre-symbolicated median {p:.0} events/s, ratio {:.2}x",
        s / p
    );
    println!(
        "  stripped rounds: {:?}",
        rates[0].iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "  pre-symbolicated rounds: {:?}",
        rates[1].iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    let (n, bytes) = sym.cache_usage();
    println!(
        "SymCaches in memory: {n} ({:.1} MB); debug file {}",
        bytes as f64 / 1e6,
        Path::new(&debug_file).display()
    );
    state.store.close().await;
}
