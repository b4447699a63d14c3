//! `errscope-demo`: errscope end to end, in one process and one command.
//!
//! ```text
//! cargo run --release -p errscope-demo
//! ```
//!
//! It starts, all on 127.0.0.1:
//!
//! 1. the collector with its dashboard (the `errscope_collector` library, data in
//!    `--data`, default `./errscope-demo-data`, kept between runs);
//! 2. the errscope agent, shipping to the collector's default project;
//! 3. a directory upstream that misbehaves in turns ([`directory`]);
//! 4. the demo service, an axum app behind `errscope::tower::ErrorLayer` ([`service`]);
//! 5. a traffic driver calling the service ([`traffic`]).
//!
//! Ctrl-C (or `--duration`) stops the traffic, then the service, flushes the agent (at
//! most 5 s) and shuts the collector down after committing what it accepted.

mod directory;
mod service;
mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use errscope_collector::{Config, state};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::prelude::*;

#[derive(Parser)]
#[command(
    name = "errscope-demo",
    version,
    about = "errscope end to end: the collector and dashboard, a misbehaving demo service with the agent, and traffic"
)]
struct Cli {
    /// Where the collector (ingestion, API, dashboard) listens.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Data directory: the collector's database and the agent's outbox (kept between runs).
    #[arg(long, default_value = "./errscope-demo-data")]
    data: PathBuf,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Requests per second the traffic driver sends.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    rate: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent sees the demo's own `info!`/`warn!` (breadcrumbs) and nothing of the
    // collector's logs, which would otherwise be shipped to the collector itself. The
    // terminal shows errors only (`ERRSCOPE_LOG` to change), so the banner stays readable.
    let fmt_filter = tracing_subscriber::EnvFilter::try_from_env("ERRSCOPE_LOG")
        .unwrap_or_else(|_| "error".into());
    tracing_subscriber::registry()
        .with(
            errscope::tracing::ErrscopeLayer::new().with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("errscope_demo", tracing::Level::INFO),
            ),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(fmt_filter),
        )
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // 1. The collector, as `errscope-collector serve` runs it.
    let listener = TcpListener::bind(cli.listen).await.with_context(|| {
        format!(
            "binding {} (another collector running? try --listen 127.0.0.1:0)",
            cli.listen
        )
    })?;
    let collector_addr = listener.local_addr()?;
    let password = env_secret("ERRSCOPE_ADMIN_PASSWORD");
    let mut config = Config::new(&cli.data);
    config.public_url = format!("http://{collector_addr}");
    config.admin_token = env_secret("ERRSCOPE_ADMIN_TOKEN");
    // A fresh password on every run unless one is given: the login is always printed.
    let login = password.clone().unwrap_or_else(state::random_secret);
    config.admin_password = Some(login.clone());
    let started = errscope_collector::start(config)
        .await
        .with_context(|| format!("opening the collector's database in {}", cli.data.display()))?;
    let collector_state = started.state.clone();
    errscope_collector::spawn_background(&collector_state)?;
    let project = collector_state
        .store
        .list_projects()
        .await?
        .into_iter()
        .next()
        .context("the collector has no project")?;
    let dsn = collector_state.dsn(&project);
    let (collector_stop, mut collector_stopped) = watch::channel(false);
    let collector = tokio::spawn(errscope_collector::serve::serve(
        listener,
        errscope_collector::app(collector_state.clone()),
        collector_state.config.header_timeout,
        async move {
            let _ = collector_stopped.wait_for(|stopped| *stopped).await;
        },
    ));

    // 2. The agent: what a service adds to its `main`.
    quiet_demo_panics();
    let guard = errscope::init(
        errscope::Options::new()
            .dsn(&dsn)
            .database(cli.data.join("demo-outbox.db"))
            .release(concat!("errscope-demo@", env!("CARGO_PKG_VERSION")))
            .environment("demo"),
    );

    // 3. and 4. The directory upstream and the demo service.
    let (stop, stopped) = watch::channel(false);
    let directory_listener = TcpListener::bind("127.0.0.1:0").await?;
    let directory_addr = directory_listener.local_addr()?;
    let directory = tokio::spawn(directory::serve(directory_listener, stopped.clone()));
    let service_listener = TcpListener::bind("127.0.0.1:0").await?;
    let service_addr = service_listener.local_addr()?;
    let mut service_stopped = stopped.clone();
    let service = tokio::spawn(
        axum::serve(service_listener, service::router(directory_addr))
            .with_graceful_shutdown(async move {
                let _ = service_stopped.wait_for(|stopped| *stopped).await;
            })
            .into_future(),
    );

    println!("errscope demo");
    println!("dashboard: http://{collector_addr}/");
    match password {
        Some(_) => println!("login: admin, password from ERRSCOPE_ADMIN_PASSWORD"),
        None => println!("login: {} / {login}", state::ADMIN_USER),
    }
    if let Some(token) = &started.generated.token {
        println!("API token: {token} (shown once; or set ERRSCOPE_ADMIN_TOKEN)");
    }
    println!("DSN: {dsn}");
    println!("data: {}", cli.data.display());
    println!(
        "demo service: http://{service_addr} (POST /auth, GET /profile/{{id}}, POST /reports/{{month}}, 404 elsewhere)"
    );
    println!(
        "directory upstream: {directory_addr}: {}",
        directory::describe_turns()
    );
    match cli.duration {
        Some(s) => println!("sending {} requests/s for {s} s", cli.rate),
        None => println!("sending {} requests/s until Ctrl-C", cli.rate),
    }

    // 5. Traffic, until Ctrl-C or the end of `--duration`.
    let (traffic_stop, traffic_stopped) = watch::channel(false);
    let traffic = tokio::spawn(traffic::drive(service_addr, cli.rate, traffic_stopped));
    let until = async {
        match cli.duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("stopping (Ctrl-C)"),
        _ = until => println!("stopping (--duration elapsed)"),
    }

    // Shutdown, in dependency order.
    let _ = traffic_stop.send(true);
    traffic.await?;
    let _ = stop.send(true);
    service.await??;
    directory.await?;
    let delivered = tokio::task::spawn_blocking(move || {
        let delivered = guard.flush(Duration::from_secs(5));
        drop(guard);
        delivered
    })
    .await?;
    if !delivered {
        println!("agent: not everything was delivered in 5 s; the rest stays in the outbox");
    }
    let _ = collector_stop.send(true);
    collector.await?;
    collector_state.store.close().await;
    println!("stopped cleanly");
    Ok(())
}

fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// The demo's panics are on purpose and recorded on the dashboard: keep their
/// "thread panicked at" lines out of the terminal. Any other panic prints as usual.
/// (errscope calls the hook it finds at `init`, so this goes before `init`.)
fn quiet_demo_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.location().is_none_or(|l| l.file() != service::SOURCE) {
            default(info);
        }
    }));
}
