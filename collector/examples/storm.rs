//! Memory and rate under hostile load, for `BENCHMARKS.md`: runs collector binaries as child
//! processes, interleaved round by round, and prints what each did.
//!
//! ```text
//! cargo build --release -p errscope-collector --bin errscope-collector --example storm
//! target/release/examples/storm [rounds] [rate-seconds] [before-binary] [after-binary]
//! ```
//!
//! `after-binary` defaults to the `errscope-collector` beside the example's own directory.
//!
//! - Bomb storm: 64 gzip, 64 deflate and 64 brotli bombs (200 MiB each inflated) and 64
//!   envelopes announcing a 1 GB item, all at once, then the issue's repro (32 gzip bombs of
//!   zeros and 300 idle connections): the peak RSS (`VmHWM`) and the answers.
//! - Ingest rate: 16 connections sending 15 KB events for `rate-seconds`, with the default
//!   budget and with a budget too large to ever wait, and the `before` binary if given.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "storm-token";

struct Child {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    pid: u32,
    addr: String,
    key: String,
}

async fn start(bin: &str, extra: &[&str]) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .args(extra)
        .env("ERRSCOPE_ADMIN_TOKEN", TOKEN)
        .env("ERRSCOPE_ADMIN_PASSWORD", "storm")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the collector");
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut key) = (String::new(), String::new());
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(b) = line.strip_prefix("listening on http://") {
            addr = b.to_owned();
        }
        if let Some(dsn) = line.split("DSN: ").nth(1) {
            key = dsn["http://".len()..].split('@').next().unwrap().to_owned();
        }
        if line.starts_with("admin login") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Child {
        _child: child,
        _dir: dir,
        pid,
        addr,
        key,
    }
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn request(addr: &str, key: &str, path: &str, encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Sentry-Auth: Sentry sentry_key={key}\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if let Some(e) = encoding {
        out.extend_from_slice(format!("Content-Encoding: {e}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends `bytes`, retrying 503s after a second (up to 10 times); the final status.
async fn send(addr: &str, bytes: &[u8]) -> u16 {
    for _ in 0..10 {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            return 0;
        };
        let _ = s.write_all(bytes).await;
        let mut resp = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut resp)).await;
        let status = std::str::from_utf8(resp.get(9..12).unwrap_or(b"000"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 503 {
            return status;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    503
}

fn compress<W: std::io::Write>(mut w: W, prefix: &[u8], fill: u8, n: usize, suffix: &[u8]) -> W {
    w.write_all(prefix).unwrap();
    let chunk = vec![fill; 1 << 20];
    for _ in 0..n >> 20 {
        w.write_all(&chunk).unwrap();
    }
    w.write_all(suffix).unwrap();
    w
}

struct Bombs {
    gzip: Vec<u8>,
    zlib: Vec<u8>,
    brotli: Vec<u8>,
    zeros: Vec<u8>,
}

fn bombs() -> Bombs {
    let prefix = b"{}\n{\"type\":\"event\"}\n{\"message\":\"";
    let best = flate2::Compression::best();
    let gzip = compress(
        flate2::write::GzEncoder::new(Vec::new(), best),
        prefix,
        b'a',
        200 << 20,
        b"\"}\n",
    )
    .finish()
    .unwrap();
    let zlib = compress(
        flate2::write::ZlibEncoder::new(Vec::new(), best),
        prefix,
        b'a',
        200 << 20,
        b"\"}\n",
    )
    .finish()
    .unwrap();
    let zeros = compress(
        flate2::write::GzEncoder::new(Vec::new(), best),
        b"",
        0,
        200 << 20,
        b"",
    )
    .finish()
    .unwrap();
    // 200 MiB of zeros, brotli quality 11 (the same bytes as tests/abuse.rs).
    let hex = concat!(
        "cbffff3ff82700e2b14020f7fe8fffff7ff04f00c4611180eefd1fffffffe09f0088c30200ddfb3ffeffffc1",
        "3f0110870500baf77ffcffff837f02200e0b0074effff8ffff07ff04401c1600e8defff1ffff0ffe0980382c",
        "00d0bdffe3ffff1ffc1300715800a07bffc7ffff3ff82700e2b00040f7fe8fffff7ff04f00c4610180eefd1f",
        "ffffffe09f0088c30200ddfb3ffeffffc13f0110870500baf77ffcffff837f02200e0b0074effff8ffff07ff",
        "04401c1600e8defff1ffff0ffe0980382c00d0bdffe3ffff1ffc1300715800a07bffc7ffff3ff82700e2b000",
        "40f7fe8fffff7ff04f00c4610180eefd1fffffffe09f0088c30200ddfb3ffeffffc13f0110870500baf77ffc",
        "ffff837f02200e0b0074effff8ffff07ff04401c1600e8defff1ffff0ffe0980382c00d0bdffe3ffff1ffc13",
        "00715800a07bff97ffff7ff82700e2b00040f7fe0f",
    );
    let brotli = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Bombs {
        gzip,
        zlib,
        brotli,
        zeros,
    }
}

/// The bomb storm against `c`: the peak RSS and the answers by status.
async fn storm(c: &Child, b: &Bombs) -> (u64, std::collections::BTreeMap<u16, u32>) {
    let (a, k) = (&c.addr, &c.key);
    let announce = {
        let env = b"{}\n{\"type\":\"event\",\"length\":1000000000}\n{\"message\":\"";
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(env).unwrap();
        e.finish().unwrap()
    };
    let mut reqs = Vec::new();
    for _ in 0..64 {
        reqs.push(request(a, k, "/api/1/envelope/", Some("gzip"), &b.gzip));
        reqs.push(request(a, k, "/api/1/envelope/", Some("deflate"), &b.zlib));
        reqs.push(request(a, k, "/api/1/store/", Some("br"), &b.brotli));
        reqs.push(request(a, k, "/api/1/envelope/", Some("gzip"), &announce));
    }
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let a = a.clone();
            tokio::spawn(async move { send(&a, &r).await })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    (hwm_kib(c.pid), by_status)
}

/// The issue's repro: 32 gzip bombs of zeros with 300 idle connections open.
async fn repro(c: &Child, b: &Bombs) -> (u64, std::collections::BTreeMap<u16, u32>) {
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(&c.addr).await {
            idle.push(s);
        }
    }
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let a = c.addr.clone();
            let r = request(&a, &c.key, "/api/1/envelope/", Some("gzip"), &b.zeros);
            tokio::spawn(async move { send(&a, &r).await })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    drop(idle);
    (hwm_kib(c.pid), by_status)
}

/// Events accepted per second from 16 connections over `secs`.
async fn rate(c: &Child, secs: u64) -> f64 {
    let pad = "p".repeat(15_000);
    let url = format!("http://{}/api/1/envelope/?sentry_key={}", c.addr, c.key);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (url, stop, accepted, next, pad) =
                (url.clone(), stop.clone(), accepted.clone(), next.clone(), pad.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(Relaxed) {
                    let n = next.fetch_add(1, Relaxed);
                    let body = format!(
                        "{{}}\n{{\"type\":\"event\"}}\n{{\"event_id\":\"{:032x}\",\"message\":\"storm {}\",\"extra\":{{\"pad\":\"{pad}\"}}}}\n",
                        n + 1,
                        n % 50
                    );
                    if let Ok(r) = http.post(&url).body(body).send().await
                        && r.status() == 200
                    {
                        accepted.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    accepted.load(Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let before = args.get(3).cloned();
    let exe = std::env::current_exe().unwrap();
    let after = args.get(4).cloned().unwrap_or_else(|| {
        exe.parent()
            .and_then(|p| p.parent())
            .unwrap()
            .join("errscope-collector")
            .to_string_lossy()
            .into_owned()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let b = bombs();
        println!(
            "bombs: gzip {} B, zlib {} B, brotli {} B, gzip zeros {} B (each 200 MiB inflated)",
            b.gzip.len(),
            b.zlib.len(),
            b.brotli.len(),
            b.zeros.len()
        );
        let mut peers: Vec<(&str, String, Vec<&str>)> = Vec::new();
        if let Some(bin) = &before {
            peers.push(("before", bin.clone(), vec![]));
        }
        peers.push(("after", after.clone(), vec![]));
        let mut rates: Vec<(String, Vec<f64>)> = Vec::new();
        for round in 1..=rounds {
            for (name, bin, extra) in &peers {
                let c = start(bin, extra).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let idle = hwm_kib(c.pid);
                let (peak, answers) = storm(&c, &b).await;
                drop(c);
                let c = start(bin, extra).await;
                let (peak2, answers2) = repro(&c, &b).await;
                drop(c);
                println!(
                    "round {round} {name}: idle VmHWM {idle} KiB; storm peak {peak} KiB, answers {answers:?}; repro peak {peak2} KiB, answers {answers2:?}"
                );
            }
            let mut rate_peers: Vec<(String, String, Vec<&str>)> = Vec::new();
            if let Some(bin) = &before {
                rate_peers.push(("before".into(), bin.clone(), vec![]));
            }
            rate_peers.push(("budget on (256 MiB)".into(), after.clone(), vec![]));
            rate_peers.push((
                "budget off (1 TiB, never waits)".into(),
                after.clone(),
                vec!["--max-inflight-mb", "1048576"],
            ));
            for (name, bin, extra) in &rate_peers {
                let c = start(bin, extra).await;
                let r = rate(&c, secs).await;
                drop(c);
                println!("round {round} rate {name}: {r:.0} events/s");
                match rates.iter_mut().find(|(n, _)| n == name) {
                    Some((_, v)) => v.push(r),
                    None => rates.push((name.clone(), vec![r])),
                }
            }
        }
        let off = rates
            .iter()
            .find(|(n, _)| n.starts_with("budget off"))
            .map(|(_, v)| median(&mut v.clone()))
            .unwrap_or(f64::NAN);
        for (name, v) in &rates {
            let m = median(&mut v.clone());
            println!(
                "median rate {name}: {m:.0} events/s ({:.3}x of budget off)",
                m / off
            );
        }
    });
}
