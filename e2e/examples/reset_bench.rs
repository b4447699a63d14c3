//! What connection resets and stalls cost the host (run with `--release`; prints figures):
//! the host's `capture_error` on the caller's thread while the agent ships through a
//! clean proxy and through one that resets 20 % of the requests (half before forwarding,
//! half after, the answer lost) and stalls 5 % for 10 s. Alternating runs in one
//! process, the same collector; the summary is the median over the runs of each run's
//! p50, p99 and max.
//!
//! ```text
//! cargo run --release -p errscope-e2e --example reset_bench -- [RUNS] [CAPTURES]
//! ```
//!
//! `ERRSCOPE_SEED` replays the faults of a run.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use errscope::Options;
use errscope_e2e::{Collector, FaultProxy, RandomFaults, outbox};

/// Captures per burst; a pause between bursts lets the shipper send while the host
/// keeps capturing.
const BURST: usize = 50;
const PAUSE: Duration = Duration::from_millis(20);

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (runs, captures) = (arg(1, 5), arg(2, 10_000));
    let seed = errscope_e2e::seed();
    println!("reset_bench: seed={seed}, {runs} runs of {captures} captures per proxy");
    let dir = bench_dir();
    let collector = Collector::start(&dir.join("collector"));
    let mut clean = Vec::new();
    let mut faulty = Vec::new();
    for run in 0..runs {
        let run_seed = seed.wrapping_add(run as u64);
        for (name, faults, figures) in [
            ("clean", RandomFaults::none(run_seed), &mut clean),
            ("faulty", RandomFaults::new(run_seed), &mut faulty),
        ] {
            let proxy = FaultProxy::random(collector.addr, faults);
            let db = outbox(&dir, &format!("{name}-{run}"));
            let guard = errscope::init(
                Options::new()
                    .database(&db)
                    .dsn(&collector.dsn_via(proxy.addr))
                    // Every call a full capture, with its stack.
                    .storm(u32::MAX, Duration::from_secs(1))
                    // A stalled shipper must not make room by evicting: all are delivered.
                    .max_events(1_000_000)
                    .send_timeout(Duration::from_secs(5))
                    .shutdown_timeout(Duration::from_millis(500)),
            );
            // Warm the symbol cache and the connection.
            let _ = time_captures(BURST * 4);
            let mut times = time_captures(captures);
            let flushed = guard.flush(Duration::from_secs(120));
            let stats = errscope::stats();
            drop(guard);
            let tally = proxy.tally();
            proxy.stop();
            times.sort_unstable();
            let f = [
                quantile(&times, 0.5),
                quantile(&times, 0.99),
                quantile(&times, 1.0),
            ];
            println!(
                "  run {run} {name:>6}: capture p50 {:>5.1} us  p99 {:>6.1} us  max {:>7.1} us   \
                 requests {} reset {} answer lost {} stalled {}  sent {} retried {} evicted {} \
                 flushed {flushed}",
                us(f[0]),
                us(f[1]),
                us(f[2]),
                tally.requests,
                tally.reset_mid_request,
                tally.accepted_then_reset + tally.refused_then_reset,
                tally.stalled,
                stats.sent,
                stats.retried,
                stats.evicted,
            );
            figures.push(f);
        }
    }
    for (name, figures) in [("clean", &clean), ("faulty", &faulty)] {
        let median = |i: usize| {
            let mut v: Vec<Duration> = figures.iter().map(|f| f[i]).collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        println!(
            "reset_bench {name:>6}: capture p50 {:.1} us, p99 {:.1} us, max {:.1} us \
             (medians of {runs} runs)",
            us(median(0)),
            us(median(1)),
            us(median(2)),
        );
    }
    collector.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_dir() -> std::path::PathBuf {
    let base = std::env::var_os("TMPDIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("errscope-reset-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// Times `n` captures of distinct errors, in bursts with pauses between them.
fn time_captures(n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let err = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("bench error {i}"),
        );
        let started = Instant::now();
        let id = errscope::capture_error(&err);
        times.push(started.elapsed());
        assert!(!id.is_nil(), "capture {i} dropped");
        if i % BURST == BURST - 1 {
            std::thread::sleep(PAUSE);
        }
    }
    times
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
