//! `errscope-collector user ...`: add, list, disable users and reset passwords on the
//! database of `--data` / `--database`, also while `serve` runs on it.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use errscope_collector::auth::users;
use errscope_collector::state;
use errscope_collector::store::{Store, UserUpdate};

/// Where the database is.
#[derive(clap::Args)]
pub(crate) struct Db {
    /// Data directory.
    #[arg(long, env = "ERRSCOPE_DATA", default_value = "./errscope-data")]
    data: PathBuf,
    /// A PostgreSQL URL; without it, SQLite under `--data`.
    #[arg(long, env = "ERRSCOPE_DATABASE_URL")]
    database: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user (with a generated password, printed once, unless --password-stdin).
    Add {
        /// The login name.
        username: String,
        /// owner, member or viewer.
        #[arg(long)]
        role: String,
        /// A project (name or id) a member or viewer belongs to; repeat for more.
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: Db,
    },
    /// List the users.
    List {
        #[command(flatten)]
        db: Db,
    },
    /// Disable a user: they cannot log in, their sessions end at once, their tokens stop.
    Disable {
        /// The login name.
        username: String,
        #[command(flatten)]
        db: Db,
    },
    /// Set a new password (printed once, or read from standard input).
    ResetPassword {
        /// The login name.
        username: String,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: Db,
    },
}

fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((state::random_secret(), true));
    }
    let mut s = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut s)
        .context("reading the password from standard input")?;
    let p = s.lines().next().unwrap_or("").to_owned();
    users::check_password(&p)?;
    Ok((p, false))
}

async fn open(db: Db) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    state::open_store_for_tools(&db.data, db.database)
        .await
        .context("opening the database")
}

pub(crate) fn run(command: UserCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            UserCommand::Add {
                username,
                role,
                projects,
                password_stdin,
                db,
            } => {
                let role = users::check_role(&role)?;
                let (pw, generated) = password(password_stdin)?;
                let store = open(db).await?;
                let result = async {
                    let ids = users::project_ids(&*store, &projects).await?;
                    let hash = state::hash_secret(&pw)?;
                    let u =
                        users::add(&*store, &username, None, None, role, &ids, Some(hash)).await?;
                    errscope_collector::auth::audit(
                        &*store,
                        None,
                        "user.create",
                        &u.username,
                        "command line",
                        &format!("role {}", u.role),
                    )
                    .await;
                    anyhow::Ok(u)
                }
                .await;
                store.close().await;
                let u = result?;
                println!("user {} added: id {}, role {}", u.username, u.id, u.role);
                if generated {
                    println!("password: {pw} (shown once; stored hashed)");
                }
                Ok(())
            }
            UserCommand::List { db } => {
                let store = open(db).await?;
                let result = async {
                    let mut lines = Vec::new();
                    for u in store.users().await? {
                        let projects = store.memberships(u.id).await?;
                        lines.push(format!(
                            "{}\t{}\t{}\t{}\tprojects: {}",
                            u.id,
                            u.username,
                            u.role,
                            if u.disabled {
                                "disabled"
                            } else if u.password_hash.is_none() {
                                "invited"
                            } else {
                                "active"
                            },
                            if u.role == "owner" {
                                "all".to_owned()
                            } else {
                                projects
                                    .iter()
                                    .map(i64::to_string)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            }
                        ));
                    }
                    anyhow::Ok(lines)
                }
                .await;
                store.close().await;
                for l in result? {
                    println!("{l}");
                }
                Ok(())
            }
            UserCommand::Disable { username, db } => {
                let store = open(db).await?;
                let result = change(
                    &*store,
                    &username,
                    UserUpdate {
                        disabled: Some(true),
                        ..Default::default()
                    },
                    "user.disable",
                )
                .await;
                store.close().await;
                result?;
                println!("user {username} disabled; their sessions have ended");
                Ok(())
            }
            UserCommand::ResetPassword {
                username,
                password_stdin,
                db,
            } => {
                let (pw, generated) = password(password_stdin)?;
                let hash = state::hash_secret(&pw)?;
                let store = open(db).await?;
                let result = change(
                    &*store,
                    &username,
                    UserUpdate {
                        password_hash: Some(hash),
                        ..Default::default()
                    },
                    "password.reset",
                )
                .await;
                store.close().await;
                result?;
                if generated {
                    println!("new password for {username}: {pw} (shown once; stored hashed)");
                } else {
                    println!("password of {username} set");
                }
                Ok(())
            }
        }
    })
}

async fn change(
    store: &dyn Store,
    username: &str,
    update: UserUpdate,
    action: &str,
) -> anyhow::Result<()> {
    let Some(user) = store.user_by_name(username.trim()).await? else {
        bail!("no user named `{username}`");
    };
    users::update(store, &user, update).await?;
    errscope_collector::auth::audit(store, None, action, &user.username, "command line", "").await;
    Ok(())
}
