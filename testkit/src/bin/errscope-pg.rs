//! errscope-pg: starts a throwaway PostgreSQL server, prints its URL on one line of stdout
//! and keeps it up until stdin closes or SIGTERM/SIGINT arrives; then stops and removes it.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::Parser;
use errscope_testkit::pg::Cluster;
use tokio::signal::unix::{SignalKind, signal};

/// A throwaway PostgreSQL server for tests and manual runs (Debian's binaries, a temporary
/// directory, 127.0.0.1 on a free port, trust authentication, no fsync). Prints
/// `postgres://postgres@127.0.0.1:PORT/DB` on stdout once it accepts connections, then runs
/// until its standard input closes or it gets SIGTERM or SIGINT, and stops it. Killed
/// outright, the server still stops and its directory is removed.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Also create this empty database and print its URL instead of the `postgres` one.
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// Keep running when standard input closes (for `errscope-pg &` in a shell script);
    /// only SIGTERM or SIGINT stop it then.
    #[arg(long)]
    ignore_stdin: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("errscope-pg: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Listening before the URL is out, so a SIGTERM sent right after reading it counts.
    let (mut term, mut int) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let cluster = Cluster::start()?;
    let url = match &args.database {
        Some(name) => cluster.create_database(name)?,
        None => cluster.url(),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{url}")?;
    stdout.flush()?;
    drop(stdout);
    eprintln!(
        "errscope-pg: PostgreSQL on 127.0.0.1:{}, data in {}, log in {}",
        cluster.port(),
        cluster.data_dir().display(),
        cluster.log_path().display()
    );

    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    if !args.ignore_stdin {
        // A plain thread: a blocked read would hold up the runtime's shutdown.
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = closed_tx.send(());
        });
    }
    let why = runtime.block_on(async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            Ok(()) = closed_rx => "standard input closed",
        }
    });
    eprintln!("errscope-pg: {why}, stopping");
    cluster.stop()?;
    drop(cluster);
    runtime.shutdown_background();
    Ok(())
}
