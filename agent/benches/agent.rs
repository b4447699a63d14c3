//! `cargo bench -p errscope`: the agent's costs, each against a peer measured in the same
//! run where the issue names one. Prints medians and p99s; figures go to BENCHMARKS.md.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

const FLUSH: Duration = Duration::from_secs(60);

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
/// as a quick smoke test with tiny counts.
static QUICK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn scale(full: usize, quick: usize) -> usize {
    if *QUICK.get_or_init(|| !std::env::args().any(|a| a == "--bench")) {
        quick
    } else {
        full
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    let median = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:<58} median {:>9.2} us   p99 {:>9.2} us   (n={})",
        us(median),
        us(p99),
        samples.len()
    );
    (median, p99)
}

/// Calls `f` at the bottom of `depth` extra frames.
#[inline(never)]
fn at_depth<R>(depth: u32, f: &mut dyn FnMut() -> R) -> R {
    if depth == 0 {
        f()
    } else {
        let r = at_depth(depth - 1, f);
        black_box(&r);
        r
    }
}

fn econnreset() -> io::Error {
    io::Error::from_raw_os_error(104)
}

/// errscope's caller-thread cost of `capture_error`, about 20 frames deep.
fn errscope_capture(dir: &Path) -> Duration {
    let guard = errscope::init(
        errscope::Options::new()
            .database(dir.join("capture.db"))
            // Every capture is a full one here; storms are measured separately.
            .storm(u32::MAX, Duration::from_secs(3600)),
    );
    let err = econnreset();
    let mut samples = Vec::new();
    for round in 0..scale(25, 2) {
        for _ in 0..scale(200, 10) {
            let t = at_depth(18, &mut || {
                let start = Instant::now();
                black_box(errscope::capture_error(&err));
                start.elapsed()
            });
            if round > 0 {
                samples.push(t);
            }
        }
        // Outside the timed region: let the agent's thread drain the queue.
        assert!(guard.flush(FLUSH));
    }
    let stats = errscope::stats();
    assert_eq!(stats.dropped_queue_full, 0);
    drop(guard);
    report(
        "capture_error, caller thread, ~20 frames (errscope)",
        &mut samples,
    )
    .0
}

struct DropEvents;

impl sentry::Transport for DropEvents {
    fn send_envelope(&self, envelope: sentry::Envelope) {
        black_box(envelope);
    }
}

/// sentry 0.49 `capture_error` with `attach_stacktrace: true`, events dropped.
fn sentry_capture() -> Duration {
    let mut options = sentry::ClientOptions::default();
    options.dsn = "https://public@sentry.invalid/1".parse().ok();
    options.attach_stacktrace = true;
    options.transport = Some(Arc::new(Arc::new(DropEvents)));
    let _sentry = sentry::init(options);
    let err = econnreset();
    let mut samples = Vec::new();
    for i in 0..scale(420, 21) {
        let t = at_depth(18, &mut || {
            let start = Instant::now();
            black_box(sentry::capture_error(&err));
            start.elapsed()
        });
        // The first calls load symbols; keep the steady state.
        if i >= 20 {
            samples.push(t);
        }
    }
    report(
        "sentry::capture_error, attach_stacktrace, ~20 frames",
        &mut samples,
    )
    .0
}

#[inline(never)]
fn panicking() {
    panic!("benchmark panic");
}

/// The cost of a panic caught by `Domain::run_sync`, including the hook's wait for the
/// commit, against the same panic without errscope.
fn panic_cost(dir: &Path, sync_full: bool) -> Duration {
    let domain = errscope::Domain::new("bench").tag("k", "v");
    let mut baseline = Vec::new();
    for _ in 0..scale(200, 3) {
        let start = Instant::now();
        black_box(domain.run_sync(panicking).is_err());
        baseline.push(start.elapsed());
    }
    let guard = errscope::init(
        errscope::Options::new()
            .database(dir.join(format!("panic-{sync_full}.db")))
            .sync_full(sync_full),
    );
    // Warm the symbol cache (the first resolution loads debug info).
    let _ = domain.run_sync(panicking);
    let mut samples = Vec::new();
    for _ in 0..scale(300, 3) {
        let start = Instant::now();
        let r = domain.run_sync(panicking);
        samples.push(start.elapsed());
        assert!(!r.expect_err("panicked").event_id.is_nil());
    }
    drop(guard);
    let label = if sync_full {
        "panic + hook + commit (synchronous=FULL, fsync)"
    } else {
        "panic + hook + commit (synchronous=NORMAL)"
    };
    if !sync_full {
        report(
            "panic caught by run_sync, no errscope (baseline)",
            &mut baseline,
        );
    }
    report(label, &mut samples).0
}

#[inline(never)]
fn capture_distinct(i: usize, padding: &str) {
    let err = io::Error::other(format!("order {i} failed: {padding}"));
    errscope::capture_error(&err);
}

/// Distinct events per second through errscope into SQLite, and a raw batched insert of
/// the same rows into the same schema with the same pragmas. The disk is shared with
/// other work, so the two alternate over several rounds and the medians are compared.
fn throughput(dir: &Path, label: &str, padding: usize, attach_stacktrace: bool) {
    let n = scale(10_000, 50);
    let rounds = scale(9, 1);
    let padding = "x".repeat(padding);
    let (mut ours, mut raw, mut ratios, mut sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let path = dir.join(format!("throughput-{label}-{round}.db"));
        let guard = errscope::init(
            errscope::Options::new()
                .database(&path)
                .attach_stacktrace(attach_stacktrace)
                .queue_size(n)
                .max_events(n as u64 * 2)
                .storm(u32::MAX, Duration::from_secs(3600)),
        );
        // Warm up the symbol cache outside the measurement.
        capture_distinct(0, "warm-up");
        assert!(guard.flush(FLUSH));
        let padding = padding.clone();
        let start = Instant::now();
        // From a shallow thread, so that the stored event stays small.
        std::thread::spawn(move || {
            for i in 1..=n {
                capture_distinct(i, &padding);
            }
        })
        .join()
        .unwrap();
        let captured = start.elapsed();
        assert!(guard.flush(FLUSH));
        let elapsed = start.elapsed();
        if std::env::var("ERRSCOPE_BENCH_DEBUG").is_ok() {
            println!("  {label}: capture phase {captured:?}, total {elapsed:?}");
        }
        let stats = errscope::stats();
        assert_eq!(stats.dropped_queue_full, 0);
        assert_eq!(stats.stored as usize, n + 1);
        drop(guard);
        let ours_rate = n as f64 / elapsed.as_secs_f64();

        let conn = Connection::open(&path).unwrap();
        let rows: Vec<(String, f64, Vec<u8>)> = conn
            .prepare(
                "SELECT event_id, created_at, payload FROM events ORDER BY id LIMIT -1 OFFSET 1",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        sizes.push(rows.iter().map(|r| r.2.len()).sum::<usize>() / rows.len());
        let raw_rate = raw_insert(&dir.join(format!("raw-{label}-{round}.db")), &rows);
        ours.push(ours_rate);
        raw.push(raw_rate);
        ratios.push(ours_rate / raw_rate);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{:<58} {:>9.0} events/s   raw batched rusqlite insert {:>9.0} rows/s   ratio {:.2}x   (median of {rounds} alternating rounds of {n}; per-round ratios {}; avg event {} bytes)",
        format!("sustained distinct events persisted, {label}"),
        median(&mut ours),
        median(&mut raw),
        median(&mut ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        sizes[0],
    );
}

fn throughputs(dir: &Path) {
    // Real captures with a 15-frame stack: about 5.9 KB stored.
    throughput(dir, "with stacks", 200, true);
    // The 2 KB events: no stack (`attach_stacktrace(false)`), a longer message.
    throughput(dir, "2 KB, no stack", 1_300, false);
}

/// The peer: the same rows into the agent's `events` schema, 1024 per transaction.
fn raw_insert(path: &Path, rows: &[(String, f64, Vec<u8>)]) -> f64 {
    let mut raw = Connection::open(path).unwrap();
    raw.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
           created_at REAL NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL);",
    )
    .unwrap();
    let start = Instant::now();
    for chunk in rows.chunks(1024) {
        let tx = raw.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO events (event_id, created_at, payload, size) VALUES (?1, ?2, ?3, ?4)",
                )
                .unwrap();
            for (id, at, payload) in chunk {
                stmt.execute(params![id, at, payload, payload.len() as i64])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    rows.len() as f64 / start.elapsed().as_secs_f64()
}

#[inline(never)]
fn storm_once() {
    errscope::capture_error(&econnreset());
}

/// Identical errors in a burst: captures per second and rows written.
fn storm(dir: &Path) {
    let n = scale(1_000_000, 1_000);
    let path = dir.join("storm.db");
    let guard = errscope::init(errscope::Options::new().database(&path));
    let start = Instant::now();
    for _ in 0..n {
        storm_once();
    }
    let elapsed = start.elapsed();
    assert!(guard.flush(FLUSH));
    drop(guard);
    let conn = Connection::open(&path).unwrap();
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let (count_rows, counted): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(count), 0) FROM counts",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(events + counted, n as i64);
    println!(
        "{:<58} {:>9.0} captures/s   ({:.0} ns each); rows written: {events} events + {count_rows} counts for {n} errors",
        "identical-error storm, one thread",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e9 / n as f64
    );
}

/// `init` itself (thread start, hook install); the outbox opens on the agent's thread.
fn init_cost(dir: &Path) {
    let mut samples = Vec::new();
    for i in 0..scale(30, 2) {
        let options = errscope::Options::new().database(dir.join(format!("init-{i}.db")));
        let start = Instant::now();
        let guard = errscope::init(options);
        samples.push(start.elapsed());
        assert!(guard.flush(FLUSH));
        drop(guard);
    }
    report("init", &mut samples);
}

/// Nanoseconds per call of `op` over `n` calls, on this thread's CPU clock.
fn ns_per_call(n: u64, op: &mut dyn FnMut(u64)) -> f64 {
    let start = thread_cpu();
    for i in 0..n {
        op(i);
    }
    (thread_cpu() - start).as_secs_f64() * 1e9 / n as f64
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Entering a domain: `run_sync` of a trivial closure, and one `poll` of a `Domain::run`
/// future (a future that stays pending, so every poll enters and leaves the domain),
/// each against the bare call and against sentry's peer (`Hub::run`, a `bind_hub`
/// future), in interleaved rounds. CPU time of this thread per call.
fn domain_entry(dir: &Path) {
    use sentry::SentryFutureExt as _;
    use std::future::Future as _;
    use std::pin::pin;
    use std::task::{Context, Waker};

    let guard = errscope::init(errscope::Options::new().database(dir.join("domain.db")));
    let hub = Arc::new(sentry::Hub::new_from_top(sentry::Hub::current()));
    let domain = errscope::Domain::new("job: reindex").tag("shard", 3);
    let n = scale(2_000_000, 1_000) as u64;
    let rounds = scale(7, 1);
    let mut cx = Context::from_waker(Waker::noop());
    let mut bare_fut = pin!(std::future::pending::<()>());
    let mut ours_fut = pin!(domain.run(std::future::pending::<()>()));
    let mut sentry_fut = pin!(std::future::pending::<()>().bind_hub(Arc::clone(&hub)));
    let mut figures: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        figures[0].push(ns_per_call(n, &mut |i| {
            let call = || black_box(i);
            black_box(black_box(&call)());
        }));
        figures[1].push(ns_per_call(n, &mut |i| {
            black_box(domain.run_sync(|| black_box(i)).is_ok());
        }));
        figures[2].push(ns_per_call(n, &mut |i| {
            black_box(sentry::Hub::run(Arc::clone(&hub), || black_box(i)));
        }));
        figures[3].push(ns_per_call(n, &mut |_| {
            black_box(bare_fut.as_mut().poll(&mut cx).is_pending());
        }));
        figures[4].push(ns_per_call(n, &mut |_| {
            black_box(ours_fut.as_mut().poll(&mut cx).is_pending());
        }));
        figures[5].push(ns_per_call(n, &mut |_| {
            black_box(sentry_fut.as_mut().poll(&mut cx).is_pending());
        }));
    }
    let labels = [
        "bare closure call",
        "Domain::run_sync",
        "sentry Hub::run",
        "poll of a pending future",
        "poll of Domain::run(pending)",
        "poll of bind_hub(pending) (sentry)",
    ];
    for (k, label) in labels.iter().enumerate() {
        let m = median(figures[k].clone());
        let peer = median(figures[if k < 3 { 0 } else { 3 }].clone());
        let rounds: Vec<String> = figures[k].iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "{:<58} median {m:>7.1} ns  ({:.2}x bare; rounds {})",
            format!("domain entry: {label}"),
            m / peer,
            rounds.join(" ")
        );
    }
    drop(guard);
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    // A silent previous hook: the benchmark panics on purpose.
    std::panic::set_hook(Box::new(|_| {}));
    println!(
        "errscope agent benchmarks ({} cores){}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if scale(1, 0) == 0 {
            " -- quick smoke run without --bench: the figures mean nothing"
        } else {
            ""
        }
    );
    // `ERRSCOPE_BENCH=throughput` runs one part only; another value is a part of the
    // `integrations` benchmark.
    match std::env::var("ERRSCOPE_BENCH").as_deref() {
        Ok("throughput") => {
            throughputs(dir.path());
            return;
        }
        Ok("domain") => {
            domain_entry(dir.path());
            return;
        }
        Ok(_) => return,
        Err(_) => {}
    }
    init_cost(dir.path());
    let ours = errscope_capture(dir.path());
    let theirs = sentry_capture();
    println!(
        "{:<58} {:.0}x cheaper (median)",
        "capture_error: errscope vs sentry",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    panic_cost(dir.path(), false);
    panic_cost(dir.path(), true);
    throughputs(dir.path());
    storm(dir.path());
    domain_entry(dir.path());
}
