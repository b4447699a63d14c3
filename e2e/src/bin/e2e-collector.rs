//! The collector as a process of its own, for tests that SIGKILL it, restart it on the
//! same port and data directory, and read its memory from `/proc`. It serves the way
//! `errscope-collector serve` does, from the `errscope_collector` library.
//!
//! ```text
//! e2e-collector --data DIR [--listen ADDR] [--max-events-per-issue N] [--retention-days D]
//!               [--admin-token TOKEN]
//! ```
//!
//! Once it listens it prints `addr <ip:port>` and `key <default project's public key>` on
//! stdout. It stops cleanly (commits what it accepted) when its stdin reaches end of file,
//! so it never outlives the test that started it; anything else is a SIGKILL.
#![allow(clippy::print_stdout)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use errscope_collector::serve::serve;
use errscope_collector::store::Retention;
use errscope_collector::{Config, app, start};

/// The command line.
struct Args {
    data: PathBuf,
    listen: SocketAddr,
    retention: Retention,
    admin_token: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut data = None;
    let mut listen: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let mut retention = Retention::default();
    let mut admin_token = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(&value)),
            "--listen" => listen = value.parse().map_err(|e| bad(&e))?,
            "--max-events-per-issue" => {
                retention.max_events_per_issue = value.parse().map_err(|e| bad(&e))?;
            }
            "--retention-days" => retention.retention_days = value.parse().map_err(|e| bad(&e))?,
            "--admin-token" => admin_token = Some(value),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(Args {
        data: data.ok_or("--data is required")?,
        listen,
        retention,
        admin_token,
    })
}

fn main() -> ExitCode {
    // Warnings and errors on stderr, as `errscope-collector serve` logs them: the tests
    // read stderr for them.
    errscope_collector::log_to_stderr();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "usage: e2e-collector --data DIR [--listen ADDR] [--max-events-per-issue N] [--retention-days D] [--admin-token T]: {e}"
            );
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-collector: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Few blocking threads, as `errscope-collector serve` has.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        let mut config = Config::new(args.data);
        config.public_url = format!("http://{addr}");
        config.retention = args.retention;
        config.admin_token = args.admin_token;
        // The PostgreSQL runs of the suite name their database here.
        config.database = std::env::var("ERRSCOPE_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty());
        let started = start(config).await?;
        errscope_collector::spawn_background(&started.state)?;
        let key = started
            .state
            .store
            .list_projects()
            .await?
            .first()
            .map(|p| p.key.clone())
            .ok_or("the database has no project")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "addr {addr}")?;
        writeln!(out, "key {key}")?;
        out.flush()?;
        drop(out);
        let header_timeout = started.state.config.header_timeout;
        serve(
            listener,
            app(started.state.clone()),
            header_timeout,
            stdin_closed(),
        )
        .await;
        started.state.store.close().await;
        Ok(())
    })
}

/// Resolves when stdin reaches end of file (or fails). The reading thread is detached, so
/// it never holds the process up.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.await;
    } else {
        std::future::pending::<()>().await;
    }
}
