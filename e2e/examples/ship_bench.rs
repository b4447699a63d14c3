//! Shipper benchmark (run with `--release`; prints figures):
//!
//! 1. events delivered per second from one agent to a local collector: an outbox
//!    pre-filled with N events of ~2 KB (no stack, a 1.3 KB message), then the agent
//!    starts with the collector's DSN and is timed until the outbox is empty and the
//!    collector has committed every event;
//! 2. the host's `capture_error` on the caller's thread (20-frame stacks, default
//!    options) with the collector up, down (connection refused) and hanging (accepts,
//!    never answers), alternating rounds.
//!
//! ```text
//! cargo run --release -p errscope-e2e --example ship_bench -- [N]
//! ```
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use errscope::{Level, Options};
use errscope_e2e::{Collector, outbox};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30_000);
    let dir = tempfile_dir();
    let collector = Collector::start(&dir.join("collector"));
    throughput(&collector, &dir, n);
    capture_cost(&collector, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let base = std::env::var_os("TMPDIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("errscope-ship-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

fn throughput(collector: &Collector, dir: &std::path::Path, n: u64) {
    let db = outbox(dir, "throughput");
    let base = Options::new()
        .database(&db)
        .attach_stacktrace(false)
        .storm(u32::MAX, Duration::from_secs(1))
        .max_events(n * 2)
        .max_bytes(1 << 34)
        .queue_size(1 << 16);
    // Fill the outbox without a DSN.
    let filler = "x".repeat(1300);
    let guard = errscope::init(base.clone());
    for i in 0..n {
        let id = errscope::capture_message(&format!("bench event {i} {filler}"), Level::Error);
        assert!(!id.is_nil(), "capture {i} dropped");
        if i % 4096 == 4095 {
            assert!(guard.flush(Duration::from_secs(60)));
        }
    }
    assert!(guard.flush(Duration::from_secs(60)));
    drop(guard);
    let stored = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let before = collector.event_count();
    let started = Instant::now();
    let guard = errscope::init(base.dsn(&collector.dsn()));
    let flushed = guard.flush(Duration::from_secs(600));
    let shipped = started.elapsed();
    let stats = errscope::stats();
    drop(guard);
    let arrived = collector.wait_for_events(before + n, Duration::from_secs(60)) - before;
    println!(
        "throughput: {n} events of ~{} bytes each: outbox empty after {:.2} s: {:.0} events/s \
         (flushed={flushed}, sent={}, retried={}, collector holds {arrived})",
        stored / n.max(1),
        shipped.as_secs_f64(),
        n as f64 / shipped.as_secs_f64(),
        stats.sent,
        stats.retried,
    );
}

#[inline(never)]
fn nest(depth: u32, f: &mut dyn FnMut()) {
    if depth == 0 {
        f();
    } else {
        nest(depth - 1, f);
    }
    std::hint::black_box(depth);
}

/// Times `rounds` × 200 captures; the queue drains between rounds (a 30 ms pause).
fn time_captures(rounds: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(rounds * 200);
    for _ in 0..rounds {
        for _ in 0..200 {
            nest(18, &mut || {
                let err = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                let t = Instant::now();
                let id = errscope::capture_error(&err);
                times.push(t.elapsed());
                assert!(!id.is_nil(), "a capture was dropped");
            });
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    times
}

fn capture_cost(collector: &Collector, dir: &std::path::Path) {
    // Nothing listens here (reserved, then released).
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    // Accepts connections and never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_addr = hanging.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hanging.incoming().take(10_000).flatten() {
            held.push(conn);
        }
    });
    let targets = [
        ("up", collector.dsn()),
        ("down", collector.dsn_via(down)),
        ("hanging", collector.dsn_via(hang_addr)),
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    for round in 0..3 {
        for (i, (name, dsn)) in targets.iter().enumerate() {
            let db = outbox(dir, &format!("capture-{name}-{round}"));
            let guard = errscope::init(
                Options::new()
                    .database(&db)
                    .dsn(dsn)
                    // Every call a full capture, as in the agent's own benchmark.
                    .storm(u32::MAX, Duration::from_secs(1))
                    .shutdown_timeout(Duration::from_millis(200)),
            );
            // Warm the symbol cache and let the shipper start failing (down, hanging).
            let _ = time_captures(2);
            samples[i].extend(time_captures(8));
            let stats = errscope::stats();
            drop(guard);
            if round == 2 {
                println!(
                    "  {name}: stored {} sent {} retried {} delivery_failing {}",
                    stats.stored, stats.sent, stats.retried, stats.delivery_failing
                );
            }
        }
    }
    let mut medians = Vec::new();
    for ((name, _), mut s) in targets.iter().zip(samples) {
        s.sort();
        let median = s[s.len() / 2];
        let p99 = s[s.len() * 99 / 100];
        medians.push(median);
        println!(
            "capture_error with the collector {name}: median {:.2} µs, p99 {:.2} µs (n={})",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            s.len()
        );
    }
    println!(
        "ratio down/up {:.2}, hanging/up {:.2}",
        medians[1].as_secs_f64() / medians[0].as_secs_f64(),
        medians[2].as_secs_f64() / medians[0].as_secs_f64()
    );
}
