//! A host program for the end-to-end tests: a plain `fn main` without a tokio runtime
//! that links errscope and ships to a collector.
//!
//! ```text
//! e2e-host plain DSN DB N FLUSH_SECS   capture N messages, flush, print `sent=.. flushed=..`
//! e2e-host burst DSN DB                capture distinct messages until killed, one `id ..` line each
//! e2e-host drain DSN DB FLUSH_SECS     ship what the outbox holds, print `sent=.. flushed=..`
//! ```
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

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
        _ => {
            eprintln!("usage: e2e-host plain|burst|drain DSN DB [N] [FLUSH_SECS]");
            ExitCode::from(2)
        }
    }
}
