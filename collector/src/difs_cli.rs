//! `errscope-collector debug-files upload|list|delete`: the debug files of a data dir,
//! for people without sentry-cli; a running collector sees the changes within a second.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;
use errscope_collector::difs::Difs;
use errscope_collector::state::open_store_for_tools;
use errscope_collector::store::Store;

#[derive(Subcommand)]
pub(crate) enum DifsCommand {
    /// Store debug files (ELF with symbols or debug info, Breakpad, source bundles).
    Upload {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The project, by name or id.
        #[arg(long, default_value = "default")]
        project: String,
        /// Data directory.
        #[arg(long, env = "ERRSCOPE_DATA", default_value = "./errscope-data")]
        data: PathBuf,
        /// A PostgreSQL URL (as `serve --database`).
        #[arg(long, env = "ERRSCOPE_DATABASE_URL")]
        database: Option<String>,
        /// Megabytes of debug files kept (as `serve --difs-max-mb`).
        #[arg(long, env = "ERRSCOPE_DIFS_MAX_MB", default_value_t = 2048,
              value_parser = clap::value_parser!(u64).range(1..))]
        difs_max_mb: u64,
    },
    /// List the stored debug files.
    List {
        /// Only this project's (by name or id).
        #[arg(long)]
        project: Option<String>,
        /// Data directory.
        #[arg(long, env = "ERRSCOPE_DATA", default_value = "./errscope-data")]
        data: PathBuf,
        /// A PostgreSQL URL (as `serve --database`).
        #[arg(long, env = "ERRSCOPE_DATABASE_URL")]
        database: Option<String>,
    },
    /// Delete stored debug files by id (as `list` shows).
    Delete {
        /// The ids.
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Data directory.
        #[arg(long, env = "ERRSCOPE_DATA", default_value = "./errscope-data")]
        data: PathBuf,
        /// A PostgreSQL URL (as `serve --database`).
        #[arg(long, env = "ERRSCOPE_DATABASE_URL")]
        database: Option<String>,
    },
}

/// The store and the debug files, with the runtime their blocking methods run the store's
/// calls on (they are called from this thread, outside the runtime).
struct Opened {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    difs: Difs,
}

impl Opened {
    fn close(self) {
        self.rt.block_on(self.store.close());
    }
}

fn open(data: &std::path::Path, database: Option<String>, max_mb: u64) -> anyhow::Result<Opened> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (store, difs) = rt.block_on(async {
        let store = open_store_for_tools(data, database)
            .await
            .context("opening the database")?;
        let difs = Difs::open(data, max_mb.saturating_mul(1 << 20), store.clone())
            .await
            .context("opening the debug files")?;
        anyhow::Ok((store, difs))
    })?;
    Ok(Opened { rt, store, difs })
}

fn project_id(o: &Opened, raw: &str) -> anyhow::Result<i64> {
    let projects = o.rt.block_on(o.store.list_projects())?;
    projects
        .iter()
        .find(|p| p.id.to_string() == raw)
        .or_else(|| projects.iter().find(|p| p.name == raw))
        .map(|p| p.id)
        .with_context(|| format!("no project with the id or name `{raw}`"))
}

pub(crate) fn run(cmd: DifsCommand) -> anyhow::Result<()> {
    match cmd {
        DifsCommand::Upload {
            files,
            project,
            data,
            database,
            difs_max_mb,
        } => {
            let o = open(&data, database, difs_max_mb)?;
            let pid = project_id(&o, &project)?;
            let difs = o.difs.clone();
            let mut failed = 0;
            for f in &files {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| f.display().to_string());
                let stored = difs.add_path(pid, &name, f);
                match stored {
                    Ok(r) => println!(
                        "stored {} (id {}): debug id {}, code id {}, {}, {}, features {}",
                        r.name,
                        r.id,
                        r.debug_id,
                        r.code_id.as_deref().unwrap_or("none"),
                        r.kind.as_str(),
                        r.arch,
                        r.features
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{}: {e:#}", f.display());
                    }
                }
            }
            o.close();
            if failed > 0 {
                anyhow::bail!("{failed} of {} files were not stored", files.len());
            }
            Ok(())
        }
        DifsCommand::List {
            project,
            data,
            database,
        } => {
            let o = open(&data, database, u64::MAX >> 20)?;
            let pid = project.map(|p| project_id(&o, &p)).transpose()?;
            let difs = o.difs.clone();
            println!(
                "id\tproject\tname\tkind\tarch\tdebug_id\tcode_id\tfeatures\tsize\tuploaded\tlast_used"
            );
            for r in difs.list(pid) {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    r.id,
                    r.project_id,
                    r.name,
                    r.kind.as_str(),
                    r.arch,
                    r.debug_id,
                    r.code_id.as_deref().unwrap_or("-"),
                    r.features,
                    r.size,
                    errscope_collector::time::rfc3339(r.uploaded),
                    r.last_used
                        .map_or_else(|| "-".into(), errscope_collector::time::rfc3339)
                );
            }
            o.close();
            Ok(())
        }
        DifsCommand::Delete {
            ids,
            data,
            database,
        } => {
            let o = open(&data, database, u64::MAX >> 20)?;
            let difs = o.difs.clone();
            let mut missing = Vec::new();
            for id in ids {
                if difs.delete(None, id)? {
                    println!("deleted {id}");
                } else {
                    missing.push(id.to_string());
                }
            }
            o.close();
            if !missing.is_empty() {
                anyhow::bail!("no debug file with the id {}", missing.join(", "));
            }
            Ok(())
        }
    }
}
