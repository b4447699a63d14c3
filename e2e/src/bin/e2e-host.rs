//! A host program for the end-to-end tests: a plain `fn main` without a tokio runtime
//! that links errscope and ships to a collector.
//!
//! ```text
//! e2e-host plain DSN DB N FLUSH_SECS   capture N messages, flush, print `sent=.. flushed=..`
//! e2e-host burst DSN DB                capture distinct messages until killed, one `id ..` line each
//! e2e-host drain DSN DB FLUSH_SECS     ship what the outbox holds, print `sent=.. flushed=..`
//! e2e-host storm DSN DB PAUSE_US       until killed (5 min at most): 4 threads capture distinct
//!                                      errors (a pause of PAUSE_US after each), a fifth panics
//!                                      over and over; one `panic ID` line per committed panic
//! e2e-host steady DSN DB N PAUSE_MS FLUSH_SECS
//!                                      capture N distinct errors PAUSE_MS apart, timing each
//!                                      call; flush; one `id ..` line each, then
//!                                      `capture_us p50=.. p99=.. max=..` and `sent=.. flushed=..`
//! ```
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn options(dsn: &str, db: &str) -> errscope::Options {
    errscope::Options::new()
        .dsn(dsn)
        .database(db)
        .attach_stacktrace(false)
        // Every capture a full event: the tests count events.
        .storm(u32::MAX, Duration::from_secs(1))
        .send_timeout(Duration::from_secs(5))
}

fn report(flushed: bool) -> ExitCode {
    let s = errscope::stats();
    println!(
        "sent={} retried={} dropped_send_error={} outbox_events={} flushed={flushed}",
        s.sent, s.retried, s.dropped_send_error, s.outbox_events
    );
    if flushed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How long a `storm` host runs if nobody kills it (a test that died before its kill).
const STORM_LIFETIME: Duration = Duration::from_secs(300);

/// Captures errors from four threads and panics in a fifth until the process is killed.
fn storm(dsn: &str, db: &str, pause: Duration) -> ExitCode {
    let until = Instant::now() + STORM_LIFETIME;
    // Installed before `init`, so errscope calls it after recording: it keeps thousands
    // of panic messages off stderr, which then holds only errscope's own lines.
    std::panic::set_hook(Box::new(|_| {}));
    // The outbox's bound is not what the storm tests: no event may be evicted.
    let _guard = errscope::init(options(dsn, db).max_events(1_000_000));
    for t in 0..4 {
        let spawned = std::thread::Builder::new()
            .name(format!("capture-{t}"))
            .spawn(move || {
                for i in (0u64..).take_while(|_| Instant::now() < until) {
                    let err = std::io::Error::other(format!("storm error {t}-{i}"));
                    let _ = errscope::capture_error(&err);
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
            });
        if spawned.is_err() {
            return ExitCode::FAILURE;
        }
    }
    let domain = errscope::Domain::new("crash storm");
    let mut out = std::io::stdout().lock();
    for i in (0u64..).take_while(|_| Instant::now() < until) {
        // `run_sync` hands the panic back once the hook has returned, and the hook
        // returns once the event is committed: the id printed is in the outbox.
        let Err(panic) = domain.run_sync(|| panic!("storm panic {i}"));
        if writeln!(out, "panic {}", panic.event_id)
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    ExitCode::SUCCESS
}

/// Captures `n` errors `pause` apart, timing each `capture_error` call.
fn steady(dsn: &str, db: &str, n: usize, pause: Duration, flush: Duration) -> ExitCode {
    let guard = errscope::init(options(dsn, db));
    let mut ids = Vec::with_capacity(n);
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let err = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("steady error {i}"),
        );
        let started = Instant::now();
        let id = errscope::capture_error(&err);
        took.push(started.elapsed());
        ids.push(id);
        std::thread::sleep(pause);
    }
    let flushed = guard.flush(flush);
    for id in &ids {
        println!("id {id}");
    }
    took.sort_unstable();
    let at = |q: f64| {
        let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len().max(1)) - 1;
        took.get(i).map_or(0, Duration::as_micros)
    };
    println!(
        "capture_us p50={} p99={} max={}",
        at(0.50),
        at(0.99),
        at(1.0)
    );
    report(flushed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let secs = |i: usize| Duration::from_secs(arg(i).parse().unwrap_or(10));
    match arg(1) {
        "plain" => {
            let guard = errscope::init(options(arg(2), arg(3)));
            let n: usize = arg(4).parse().unwrap_or(10);
            for i in 0..n {
                let id =
                    errscope::capture_message(&format!("plain host {i}"), errscope::Level::Error);
                println!("id {id}");
            }
            let flushed = guard.flush(secs(5));
            report(flushed)
        }
        "burst" => {
            let _guard = errscope::init(options(arg(2), arg(3)));
            let mut out = std::io::stdout().lock();
            for i in 0u64.. {
                let err = std::io::Error::other(format!("burst {i}"));
                let id = errscope::capture_error(&err);
                if writeln!(out, "id {id}").and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        "drain" => {
            let guard = errscope::init(options(arg(2), arg(3)));
            let flushed = guard.flush(secs(4));
            report(flushed)
        }
        "storm" => storm(
            arg(2),
            arg(3),
            Duration::from_micros(arg(4).parse().unwrap_or(1000)),
        ),
        "steady" => steady(
            arg(2),
            arg(3),
            arg(4).parse().unwrap_or(300),
            Duration::from_millis(arg(5).parse().unwrap_or(10)),
            secs(6),
        ),
        _ => {
            eprintln!("usage: e2e-host plain|burst|drain|storm|steady DSN DB [ARGS]");
            ExitCode::from(2)
        }
    }
}
