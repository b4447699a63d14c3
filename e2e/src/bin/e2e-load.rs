//! A host program that captures distinct events at a steady rate, for load, restart and
//! soak tests: a plain `fn main` without a tokio runtime that links errscope.
//!
//! ```text
//! e2e-load --dsn DSN --db PATH [--rate PER_SEC] [--secs S] [--count N] [--kinds K]
//!          [--name NAME] [--ids] [--flush-secs F]
//! ```
//!
//! It captures `capture_message("<name> <kind> failed on item <i>")` at `--rate` events a
//! second (0: as fast as it can) until `--secs` have passed or `--count` events are
//! captured, whichever comes first. The kind cycles through `--kinds` words, and the
//! collector files each kind as one issue (the item number is a variable part of the
//! message). With `--ids` it prints `id <event id>` for each capture. Then it flushes (at
//! most `--flush-secs`) and prints one line:
//!
//! ```text
//! summary captured=.. nil=.. stored=.. storm_counted=.. sent=.. retried=.. evicted=..
//!         dropped_queue_full=.. dropped_send_error=.. outbox_events=.. degraded=.. flushed=..
//!         load_secs=.. peak_rss_kb=..
//! ```
//!
//! The exit status is success when the outbox emptied.
#![allow(clippy::print_stdout)]

use std::io::{BufWriter, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The words the kinds of events are named by.
const KINDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

/// The command line.
struct Args {
    dsn: String,
    db: String,
    rate: f64,
    secs: Option<f64>,
    count: Option<u64>,
    kinds: usize,
    name: String,
    ids: bool,
    flush: Duration,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        dsn: String::new(),
        db: String::new(),
        rate: 0.0,
        secs: None,
        count: None,
        kinds: 4,
        name: "load".into(),
        ids: false,
        flush: Duration::from_secs(60),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--ids" {
            a.ids = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--dsn" => a.dsn = value,
            "--db" => a.db = value,
            "--rate" => a.rate = value.parse().map_err(|e| bad(&e))?,
            "--secs" => a.secs = Some(value.parse().map_err(|e| bad(&e))?),
            "--count" => a.count = Some(value.parse().map_err(|e| bad(&e))?),
            "--kinds" => {
                a.kinds = value
                    .parse::<usize>()
                    .map_err(|e| bad(&e))?
                    .clamp(1, KINDS.len());
            }
            "--name" => a.name = value,
            "--flush-secs" => {
                a.flush = Duration::from_secs_f64(value.parse().map_err(|e| bad(&e))?);
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.dsn.is_empty() || a.db.is_empty() {
        return Err("--dsn and --db are required".into());
    }
    if a.secs.is_none() && a.count.is_none() {
        return Err("--secs or --count is required".into());
    }
    Ok(a)
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "usage: e2e-load --dsn DSN --db PATH [--rate R] [--secs S] [--count N] [--kinds K] [--name NAME] [--ids] [--flush-secs F]: {e}"
            );
            return ExitCode::from(2);
        }
    };
    let guard = errscope::init(
        errscope::Options::new()
            .dsn(&args.dsn)
            .database(&args.db)
            .attach_stacktrace(false)
            // Every capture a full event: the tests count events.
            .storm(u32::MAX, Duration::from_secs(1)),
    );
    let mut out = BufWriter::new(std::io::stdout().lock());
    let started = Instant::now();
    let end = args.secs.map(|s| started + Duration::from_secs_f64(s));
    let count = args.count.unwrap_or(u64::MAX);
    let mut nil = 0u64;
    let mut i = 0u64;
    while i < count && end.is_none_or(|end| Instant::now() < end) {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let kind = KINDS[i as usize % args.kinds];
        let id = errscope::capture_message(
            &format!("{} {kind} failed on item {i}", args.name),
            errscope::Level::Error,
        );
        if id.is_nil() {
            nil += 1;
        }
        if args.ids {
            let _ = writeln!(out, "id {id}");
        }
        i += 1;
    }
    let load_secs = started.elapsed().as_secs_f64();
    let flushed = guard.flush(args.flush);
    let s = errscope::stats();
    let _ = writeln!(
        out,
        "summary captured={i} nil={nil} stored={} storm_counted={} sent={} retried={} \
         evicted={} dropped_queue_full={} dropped_send_error={} outbox_events={} \
         degraded={} flushed={flushed} load_secs={load_secs:.1} peak_rss_kb={}",
        s.stored,
        s.storm_counted,
        s.sent,
        s.retried,
        s.evicted,
        s.dropped_queue_full,
        s.dropped_send_error,
        s.outbox_events,
        s.degraded,
        peak_rss_kb()
    );
    let _ = out.flush();
    drop(guard);
    if flushed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
