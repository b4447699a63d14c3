//! The `errscope-collector` binary: `serve`, `project create`, `user` and `debug-files`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use errscope_collector::store::Retention;
use errscope_collector::{Config, app, serve, start, state};

mod difs_cli;
mod users_cli;

#[derive(Parser)]
#[command(
    name = "errscope-collector",
    version,
    about = "errscope's collector: ingestion, grouping, storage, API and dashboard"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ingestion, the API and the dashboard.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "ERRSCOPE_LISTEN", default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Data directory (holds the SQLite database).
        #[arg(long, env = "ERRSCOPE_DATA", default_value = "./errscope-data")]
        data: PathBuf,
        /// A PostgreSQL URL (`postgres://user:pass@host:port/db`, `?sslmode=require` for
        /// TLS) shared by any number of collectors; without it, SQLite under `--data`.
        #[arg(long, env = "ERRSCOPE_DATABASE_URL")]
        database: Option<String>,
        /// Base URL SDKs use to reach this collector (for DSNs); default: the listen address.
        #[arg(long, env = "ERRSCOPE_PUBLIC_URL")]
        public_url: Option<String>,
        /// Per-project limit in events per minute (off when absent).
        #[arg(long, env = "ERRSCOPE_RATE_LIMIT")]
        rate_limit: Option<u64>,
        /// Full events kept per issue.
        #[arg(long, env = "ERRSCOPE_MAX_EVENTS_PER_ISSUE", default_value_t = 100)]
        max_events_per_issue: i64,
        /// Days full events are kept.
        #[arg(long, env = "ERRSCOPE_RETENTION_DAYS", default_value_t = 30)]
        retention_days: i64,
        /// Requests the writer queue holds before answering 503.
        #[arg(long, env = "ERRSCOPE_QUEUE", default_value_t = 1024)]
        queue: usize,
        /// With --database: writer tasks, each with a transaction in flight (1-8).
        #[arg(long, env = "ERRSCOPE_PG_WRITERS", default_value_t = 2,
              value_parser = clap::value_parser!(u64).range(1..=8))]
        pg_writers: u64,
        /// Seconds a client has to send a request head; also the longest a keep-alive
        /// connection may stay idle. Slower connections are closed.
        #[arg(long, env = "ERRSCOPE_HEADER_TIMEOUT_SECS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..))]
        header_timeout_secs: u64,
        /// Seconds a client has to send a request body once its head arrived; slower
        /// requests are answered 408.
        #[arg(long, env = "ERRSCOPE_BODY_TIMEOUT_SECS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(1..))]
        body_timeout_secs: u64,
        #[command(flatten)]
        alerts: AlertFlags,
        /// MiB that all ingestion requests in flight may hold together (compressed and
        /// inflated); a request that would pass it waits up to 2 s, then gets 503.
        #[arg(long, env = "ERRSCOPE_MAX_INFLIGHT_MB", default_value_t = 256,
              value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        max_inflight_mb: u64,
        /// Connections open at once; at the cap the longest idle one is closed first.
        #[arg(long, env = "ERRSCOPE_MAX_CONNECTIONS", default_value_t = 1024,
              value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        max_connections: u64,
        /// Event ids remembered for retries (24 h at most); the oldest go first.
        #[arg(long, env = "ERRSCOPE_DEDUP_MAX_IDS", default_value_t = 1_000_000,
              value_parser = clap::value_parser!(i64).range(1..))]
        dedup_max_ids: i64,
        /// Megabytes of debug files kept; beyond it the least recently used are deleted.
        #[arg(long, env = "ERRSCOPE_DIFS_MAX_MB", default_value_t = 2048,
              value_parser = clap::value_parser!(u64).range(1..))]
        difs_max_mb: u64,
        #[command(flatten)]
        minidumps: MinidumpFlags,
        /// Minutes a dashboard session lasts without a request.
        #[arg(long, env = "ERRSCOPE_SESSION_IDLE_MINUTES", default_value_t = 1440,
              value_parser = clap::value_parser!(u64).range(1..=43_200))]
        session_idle_minutes: u64,
        /// The login throttle's window in seconds (5 failures in it); for tests.
        #[arg(long, env = "ERRSCOPE_LOGIN_WINDOW_SECS", default_value_t = 900, hide = true,
              value_parser = clap::value_parser!(u64).range(1..))]
        login_window_secs: u64,
    },
    /// Upload, list and delete debug files (also while `serve` runs on the same data).
    /// Copy an SQLite installation into an empty PostgreSQL database (stop `serve` first).
    Migrate {
        /// The data directory of the SQLite installation.
        #[arg(long = "from-sqlite", value_name = "DIR")]
        from_sqlite: PathBuf,
        /// The PostgreSQL database (`postgres://user:pass@host:port/db`).
        #[arg(long = "to", value_name = "URL")]
        to: String,
    },
    DebugFiles {
        #[command(subcommand)]
        command: difs_cli::DifsCommand,
    },
    /// Manage projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Manage users (the first owner, lost passwords), also while `serve` runs.
    User {
        #[command(subcommand)]
        command: users_cli::UserCommand,
    },
}

/// Minidump settings.
#[derive(clap::Args)]
struct MinidumpFlags {
    /// Megabytes of the largest minidump accepted (larger: 413).
    #[arg(long, env = "ERRSCOPE_MINIDUMP_MAX_MB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=100))]
    minidump_max_mb: u64,
    /// Megabytes of raw minidumps kept for download; the oldest go first.
    #[arg(long, env = "ERRSCOPE_MINIDUMPS_DISK_MB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(0..))]
    minidumps_disk_mb: u64,
    /// Minidumps processed at once over all requests (each takes a core while it runs).
    #[arg(long, env = "ERRSCOPE_MINIDUMP_WORKERS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    minidump_workers: u64,
    /// Seconds one minidump's processing may take; past it the event says "unprocessable".
    #[arg(long, env = "ERRSCOPE_MINIDUMP_TIMEOUT_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    minidump_timeout_secs: u64,
}

impl MinidumpFlags {
    fn config(&self) -> errscope_collector::minidump::MinidumpConfig {
        errscope_collector::minidump::MinidumpConfig {
            max_bytes: (self.minidump_max_mb as usize) << 20,
            disk_bytes: self.minidumps_disk_mb.saturating_mul(1 << 20),
            workers: self.minidump_workers as usize,
            timeout: Duration::from_secs(self.minidump_timeout_secs),
            ..Default::default()
        }
    }
}

/// Alert delivery settings.
#[derive(clap::Args)]
struct AlertFlags {
    /// SMTP server for alert emails: `smtp://user:pass@host:port` (STARTTLS when the server
    /// offers it; `?tls=required` to insist) or `smtps://` for TLS from the start. The
    /// server's certificate is checked against the system's roots (`SSL_CERT_FILE` to
    /// trust a private CA's PEM file instead).
    #[arg(long, env = "ERRSCOPE_SMTP_URL")]
    smtp_url: Option<String>,
    /// Sender address of alert emails (`errscope <alerts@example.com>`).
    #[arg(long, env = "ERRSCOPE_SMTP_FROM")]
    smtp_from: Option<String>,
    /// Length of an alert "minute" in ms (frequency windows, action intervals); for tests.
    #[arg(long, env = "ERRSCOPE_ALERT_MINUTE_MS", default_value_t = 60_000, hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    alert_minute_ms: u64,
    /// First retry delay of a failed delivery in ms (doubles per retry); for tests.
    #[arg(long, env = "ERRSCOPE_ALERT_RETRY_MS", default_value_t = 30_000, hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    alert_retry_ms: u64,
    /// How long a delivery is retried in ms before it is marked failed; for tests.
    #[arg(long, env = "ERRSCOPE_ALERT_GIVE_UP_MS", default_value_t = 86_400_000, hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    alert_give_up_ms: u64,
}

impl AlertFlags {
    fn config(self) -> errscope_collector::alerts::AlertConfig {
        errscope_collector::alerts::AlertConfig {
            smtp_url: self.smtp_url.filter(|s| !s.is_empty()),
            smtp_from: self.smtp_from.filter(|s| !s.is_empty()),
            minute: Duration::from_millis(self.alert_minute_ms),
            retry_base: Duration::from_millis(self.alert_retry_ms),
            give_up: Duration::from_millis(self.alert_give_up_ms),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project and print its DSN.
    Create {
        /// The project's name.
        name: String,
        /// Data directory.
        #[arg(long, env = "ERRSCOPE_DATA", default_value = "./errscope-data")]
        data: PathBuf,
        /// A PostgreSQL URL (`postgres://user:pass@host:port/db`, `?sslmode=require` for
        /// TLS) shared by any number of collectors; without it, SQLite under `--data`.
        #[arg(long, env = "ERRSCOPE_DATABASE_URL")]
        database: Option<String>,
        /// Base URL for the DSN.
        #[arg(
            long,
            env = "ERRSCOPE_PUBLIC_URL",
            default_value = "http://127.0.0.1:8000"
        )]
        public_url: String,
    },
}

fn main() -> ExitCode {
    errscope_collector::log_to_stderr();
    match run(Cli::parse()) {
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

fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::DebugFiles { command } => difs_cli::run(command),
        Command::User { command } => users_cli::run(command),
        Command::Migrate { from_sqlite, to } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt
                .block_on(errscope_collector::store::postgres::copy::copy_from_sqlite(
                    &from_sqlite,
                    &to,
                ))
                .context("migrating")?;
            for (table, rows) in &report.tables {
                println!("{table}: {rows} rows");
            }
            println!(
                "copied; checked: {} events over all issues and {} over all projects on both sides",
                report.occurrences, report.project_events
            );
            println!(
                "debug files: {} copied into the database (each collector keeps a copy under its --data)",
                report.dif_files
            );
            Ok(())
        }
        Command::Project {
            command:
                ProjectCommand::Create {
                    name,
                    data,
                    database,
                    public_url,
                },
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let p = rt.block_on(async {
                let store = state::open_store_for_tools(&data, database)
                    .await
                    .context("opening the database")?;
                let p = store
                    .create_project(name.trim())
                    .await
                    .context("creating the project")?;
                store.close().await;
                p.with_context(|| format!("a project named `{}` exists", name.trim()))
            })?;
            let mut config = Config::new(data);
            config.public_url = public_url;
            let base = config.public_url.trim_end_matches('/');
            let (scheme, host) = base.split_once("://").unwrap_or(("http", base));
            println!("project {} created: id {}", p.name, p.id);
            println!("DSN: {scheme}://{}@{host}/{}", p.key, p.id);
            Ok(())
        }
        Command::Serve {
            listen,
            data,
            database,
            public_url,
            rate_limit,
            max_events_per_issue,
            retention_days,
            queue,
            pg_writers,
            header_timeout_secs,
            body_timeout_secs,
            max_inflight_mb,
            max_connections,
            dedup_max_ids,
            difs_max_mb,
            minidumps,
            session_idle_minutes,
            login_window_secs,
            alerts,
        } => {
            let max_connections = connection_cap(max_connections as usize);
            let alerts = alerts.config();
            if let Some(url) = &alerts.smtp_url {
                // A bad SMTP setting stops startup, naming the flag.
                errscope_collector::alerts::send::smtp_transport(
                    url,
                    alerts.smtp_from.as_deref(),
                    alerts.timeout,
                )?;
            }
            // Few blocking threads (reads are short): each one can pin a malloc arena.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .max_blocking_threads(16)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = serve::bind(listen).with_context(|| format!("binding {listen}"))?;
                let addr = listener.local_addr()?;
                let mut config = Config::new(data);
                config.database = database;
                config.public_url = public_url.unwrap_or_else(|| format!("http://{addr}"));
                config.rate_limit_per_minute = rate_limit;
                config.retention = Retention {
                    max_events_per_issue,
                    retention_days,
                    dedup_max_ids,
                };
                config.max_inflight_bytes = (max_inflight_mb as usize).saturating_mul(1 << 20);
                config.max_connections = max_connections;
                config.queue_capacity = queue.max(1);
                config.pg_writers = pg_writers as usize;
                config.header_timeout = Duration::from_secs(header_timeout_secs);
                config.body_timeout = Duration::from_secs(body_timeout_secs);
                config.difs_max_bytes = difs_max_mb.saturating_mul(1 << 20);
                config.minidumps = minidumps.config();
                config.alerts = alerts;
                config.access.session_idle = Duration::from_secs(session_idle_minutes * 60);
                config.access.login_window = Duration::from_secs(login_window_secs);
                config.admin_token = env_secret("ERRSCOPE_ADMIN_TOKEN");
                config.admin_password = env_secret("ERRSCOPE_ADMIN_PASSWORD");
                let started = start(config).await.context("opening the database")?;
                let s = &started.state;
                errscope_collector::spawn_background(s)?;
                println!("listening on http://{addr}");
                println!("dashboard: {}/", s.config.public_url.trim_end_matches('/'));
                if started.first_start {
                    let projects = s.store.list_projects().await?;
                    if let Some(p) = projects.first() {
                        println!("project {} DSN: {}", p.name, s.dsn(p));
                    }
                }
                match &started.generated.password {
                    Some(pw) => println!(
                        "admin login: user {} password {pw} (shown once; stored hashed)",
                        state::ADMIN_USER
                    ),
                    None if s.config.admin_password.is_some() => println!(
                        "admin login: user {} password from ERRSCOPE_ADMIN_PASSWORD",
                        state::ADMIN_USER
                    ),
                    None => {}
                }
                if let Some(t) = &started.generated.token {
                    println!("admin API token: {t} (shown once; stored hashed)");
                }
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                let options = serve::ServeOptions {
                    header_timeout: started.state.config.header_timeout,
                    max_connections: started.state.config.max_connections,
                };
                serve::serve_with(
                    listener,
                    app(started.state.clone()),
                    options,
                    shutdown_signal(),
                )
                .await;
                // Stop accepting happened above; commit what was accepted, then exit.
                started.state.store.close().await;
                eprintln!("shut down cleanly");
                Ok(())
            })
        }
    }
}

/// File descriptors kept for the database, the listener and the log, besides connections.
const SPARE_FDS: usize = 64;

/// Raises the open-file limit to its hard limit and returns how many connections can be
/// served at once: `wanted`, or fewer (said on stderr) if the limit does not allow it.
fn connection_cap(wanted: usize) -> usize {
    match serve::raise_fd_limit() {
        Ok(limit) => {
            let room = usize::try_from(limit).unwrap_or(usize::MAX);
            let room = room.saturating_sub(SPARE_FDS).max(1);
            if room < wanted {
                eprintln!(
                    "warning: the open file limit is {limit}: --max-connections {wanted} \
                     cannot be reached; serving at most {room} connections at once \
                     (raise the limit with `ulimit -n` or LimitNOFILE=)"
                );
                return room;
            }
            wanted
        }
        Err(e) => {
            eprintln!(
                "warning: could not read the open file limit ({e}); --max-connections {wanted} may not be reachable"
            );
            wanted
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
