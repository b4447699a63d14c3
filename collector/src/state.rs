//! Shared state: configuration, the store handles, the admin credentials, key cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::budget::Budget;
use crate::difs::Difs;
use crate::metrics::Metrics;
use crate::store::sqlite::SqliteStore;
use crate::store::{ProjectRow, Retention, Store, StoreError};
use crate::symbolicate::{DebugFileLookup, Limits, Symbolicator};
use crate::time::now_ms;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;

/// How the collector is configured.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database (SQLite) and the debug files live.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL (`postgres://user:pass@host:port/db`); `None`: SQLite under
    /// `data_dir`.
    pub database: Option<String>,
    /// The base URL SDKs reach the collector at, for DSNs: `http://127.0.0.1:8000`.
    pub public_url: String,
    /// Writer queue capacity, in requests.
    pub queue_capacity: usize,
    /// Writer tasks on PostgreSQL, each with a transaction in flight.
    pub pg_writers: usize,
    /// Sample and age retention.
    pub retention: Retention,
    /// Events per minute per project; `None` = unlimited.
    pub rate_limit_per_minute: Option<u64>,
    /// Overrides the stored admin token.
    pub admin_token: Option<String>,
    /// Overrides the stored admin password.
    pub admin_password: Option<String>,
    /// How long a client has to send a request head, and how long a keep-alive
    /// connection may stay idle between requests (with [`serve`](crate::serve::serve)).
    pub header_timeout: Duration,
    /// How long a client has to send a request body, counted from its head.
    pub body_timeout: Duration,
    /// The most bytes of debug files kept; the least recently used go first.
    pub difs_max_bytes: u64,
    /// Bytes all ingestion requests in flight may hold together (the memory budget).
    pub max_inflight_bytes: usize,
    /// Connections open at once (with [`serve_with`](crate::serve::serve_with)).
    pub max_connections: usize,
    /// Alert delivery: SMTP, retry and timing settings.
    pub alerts: crate::alerts::AlertConfig,
    /// Where symbolication finds debug files; `None`: the uploaded ones (`<data>/difs/`).
    pub debug_files: Option<Arc<dyn DebugFileLookup>>,
    /// Bounds of the symbolication caches.
    pub symbolication: Limits,
    /// Teams and access: session idle time, login throttling.
    pub access: crate::auth::AccessConfig,
    /// Minidumps: size cap, processing workers and deadline, disk budget of kept dumps.
    pub minidumps: crate::minidump::MinidumpConfig,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            database: None,
            public_url: "http://127.0.0.1:8000".into(),
            queue_capacity: 1024,
            pg_writers: crate::store::postgres::DEFAULT_WRITERS,
            retention: Retention::default(),
            rate_limit_per_minute: None,
            admin_token: None,
            admin_password: None,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            difs_max_bytes: 2048 << 20,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_connections: 1024,
            alerts: crate::alerts::AlertConfig::default(),
            debug_files: None,
            symbolication: Limits::default(),
            access: crate::auth::AccessConfig::default(),
            minidumps: crate::minidump::MinidumpConfig::default(),
        }
    }
}

/// Credentials generated on first start, to print once.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The admin password, if it was generated now.
    pub password: Option<String>,
    /// The admin token, if it was generated now.
    pub token: Option<String>,
}

/// The state every handler gets.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// Configuration.
    pub config: Config,
    /// Where everything is stored.
    pub store: Arc<dyn Store>,
    /// Alerting state shared with the writer and the sender.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Uploaded debug files.
    pub difs: Difs,
    /// The memory budget of ingestion requests in flight.
    pub budget: Budget,
    /// Server-side symbolication, from [`Config::debug_files`] or the uploaded files.
    pub symbolicator: Arc<Symbolicator>,
    /// Minidump processing and the kept dumps.
    pub minidumps: crate::minidump::Minidumps,
    keys: RwLock<HashMap<String, i64>>,
    token_hash: RwLock<String>,
    verified: Mutex<Vec<String>>,
    quotas: crate::quota::Quotas,
    /// One argon2 verification at a time: wrong tokens or passwords cannot take more
    /// than one core, nor the blocking threads reads need.
    hashing: tokio::sync::Semaphore,
}

/// A started collector: its state (`state.store.close()` on shutdown).
#[derive(Debug)]
pub struct Started {
    /// Handler state.
    pub state: AppState,
    /// What was generated on this start.
    pub generated: Generated,
    /// Whether the database was created by this start.
    pub first_start: bool,
}

/// The dashboard user's name.
pub const ADMIN_USER: &str = "admin";

/// A random secret: 32 hex digits from the OS RNG.
pub fn random_secret() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hashes a secret with argon2id.
pub fn hash_secret(secret: &str) -> Result<String, StoreError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| StoreError::Task(e.to_string()))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Task(e.to_string()))
}

/// Checks a secret against an argon2 hash.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Opens (creating on first start) the database, bootstraps the default project and the
/// admin credentials, and starts the writer. Safe when several collectors start at once on
/// one database: they agree on one default project and one generated secret each.
pub async fn start(config: Config) -> Result<Started, StoreError> {
    let metrics = Arc::new(Metrics::default());
    let alerts = Arc::new(crate::alerts::Alerts::new(
        config.alerts.clone(),
        config.public_url.clone(),
    ));
    let store = open_store(&config, metrics.clone(), alerts.clone()).await?;
    let first_start = store.list_projects().await?.is_empty();
    if first_start {
        store.create_project("default").await?;
    }
    let mut generated = Generated {
        password: None,
        token: None,
    };
    let mut verified = Vec::new();
    let mut hashes = Vec::new();
    for (setting, from_env, slot) in [
        (
            "admin_password_hash",
            &config.admin_password,
            &mut generated.password,
        ),
        (
            "admin_token_hash",
            &config.admin_token,
            &mut generated.token,
        ),
    ] {
        let is_token = setting == "admin_token_hash";
        let hash = if let Some(secret) = from_env {
            let h = hash_secret(secret)?;
            store.set_setting(setting, &h).await?;
            if is_token {
                verified.push(secret.clone());
            }
            h
        } else if let Some(h) = store.get_setting(setting).await? {
            h
        } else {
            let secret = random_secret();
            let h = hash_secret(&secret)?;
            let stored = store.setting_or_insert(setting, &h).await?;
            // Another node may have stored its own first; then that one holds.
            if stored == h {
                if is_token {
                    verified.push(secret.clone());
                }
                *slot = Some(secret);
            }
            stored
        };
        hashes.push(hash);
    }
    let token_hash = hashes.pop().unwrap_or_default();
    let password_hash = hashes.pop().unwrap_or_default();
    // The admin login is the first owner (on upgrade, and on a fresh start).
    crate::auth::bootstrap_owner(&*store, &password_hash, config.admin_password.is_some()).await?;
    let keys = store
        .list_projects()
        .await?
        .into_iter()
        .map(|p| (p.key, p.id))
        .collect();

    let difs = Difs::open(&config.data_dir, config.difs_max_bytes, store.clone())
        .await
        .map_err(|e| match e {
            crate::difs::DifError::Store(e) => e,
            crate::difs::DifError::Io(p, e) => StoreError::Io(p, e),
            e => StoreError::Task(e.to_string()),
        })?;
    difs.start_maintenance();
    // Symbolication looks in the uploaded debug files unless the config names a lookup.
    let lookup: Arc<dyn DebugFileLookup> = match &config.debug_files {
        Some(lookup) => lookup.clone(),
        None => Arc::new(difs.clone()),
    };
    let symbolicator = Arc::new(Symbolicator::new(lookup.clone(), config.symbolication));
    let minidumps =
        crate::minidump::Minidumps::open(&config.data_dir, config.minidumps, store.clone(), lookup)
            .map_err(|e| match e {
                crate::minidump::MinidumpError::Io(p, e) => StoreError::Io(p, e),
                e => StoreError::Task(e.to_string()),
            })?;
    crate::symbolicate::forget_on_change(&difs, &symbolicator, &minidumps);
    let inner = Inner {
        store,
        budget: Budget::new(config.max_inflight_bytes),
        symbolicator,
        minidumps,
        config,
        alerts,
        metrics,
        difs,
        keys: RwLock::new(keys),
        token_hash: RwLock::new(token_hash),
        verified: Mutex::new(verified),
        quotas: crate::quota::Quotas::default(),
        hashing: tokio::sync::Semaphore::new(1),
    };
    Ok(Started {
        state: AppState(Arc::new(inner)),
        generated,
        first_start,
    })
}

/// The store of a data directory (or database URL) for the command-line tools, which may
/// run while `serve` runs on the same data.
pub async fn open_store_for_tools(
    data_dir: &std::path::Path,
    database: Option<String>,
) -> Result<Arc<dyn Store>, StoreError> {
    let mut config = Config::new(data_dir);
    config.database = database;
    let alerts = Arc::new(crate::alerts::Alerts::new(
        config.alerts.clone(),
        config.public_url.clone(),
    ));
    open_store(&config, Arc::new(Metrics::default()), alerts).await
}

/// The store the config names: SQLite under `data_dir` unless a database URL is given.
pub async fn open_store(
    config: &Config,
    metrics: Arc<Metrics>,
    alerts: Arc<crate::alerts::Alerts>,
) -> Result<Arc<dyn Store>, StoreError> {
    match &config.database {
        None => {
            let (dir, cap, retention) = (
                config.data_dir.clone(),
                config.queue_capacity,
                config.retention,
            );
            let store = tokio::task::spawn_blocking(move || {
                SqliteStore::open(&dir, cap, retention, metrics, Some(alerts))
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
            Ok(Arc::new(store))
        }
        Some(url) => Ok(Arc::new(
            crate::store::postgres::PgStore::open_with_writers(
                url,
                config.queue_capacity,
                config.retention,
                metrics,
                Some(alerts),
                config.pg_writers,
            )
            .await?,
        )),
    }
}

impl Inner {
    /// The DSN of a project.
    pub fn dsn(&self, p: &ProjectRow) -> String {
        let base = self.config.public_url.trim_end_matches('/');
        match base.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://{}@{host}/{}", p.key, p.id),
            None => format!("http://{}@{base}/{}", p.key, p.id),
        }
    }

    /// The project of a public key (cache, then database).
    pub async fn project_of_key(&self, key: &str) -> Result<Option<i64>, StoreError> {
        if let Some(id) = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(Some(*id));
        }
        let found = self.store.project_of_key(key).await?;
        if let Some(id) = found {
            self.remember_key(key, id);
        }
        Ok(found)
    }

    /// Adds a key to the cache.
    pub fn remember_key(&self, key: &str, project_id: i64) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys.len() < 100_000 {
            keys.insert(key.to_owned(), project_id);
        }
    }

    /// Whether `token` is the admin token. Verified tokens are remembered so argon2 runs
    /// once, not on every API call.
    pub async fn check_token(&self, token: &str) -> bool {
        {
            let v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if v.iter()
                .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
            {
                return true;
            }
        }
        let hash = self
            .token_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let t = token.to_owned();
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || verify_secret(&t, &hash))
            .await
            .unwrap_or(false);
        if ok {
            let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() < 8 {
                v.push(token.to_owned());
            }
        }
        ok
    }

    /// Checks a secret against an argon2 hash, one verification at a time over all
    /// callers; `None` if the verifications waiting took longer than 10 s (busy).
    pub async fn argon2_verify(&self, secret: &str, hash: &str) -> Option<bool> {
        let permit = tokio::time::timeout(Duration::from_secs(10), self.hashing.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            return None;
        };
        let (s, h) = (secret.to_owned(), hash.to_owned());
        tokio::task::spawn_blocking(move || verify_secret(&s, &h))
            .await
            .ok()
    }

    /// Hashes a secret with argon2id, sharing [`Inner::argon2_verify`]'s bound.
    pub async fn argon2_hash(&self, secret: &str) -> Result<String, StoreError> {
        let permit = tokio::time::timeout(Duration::from_secs(10), self.hashing.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            return Err(StoreError::Unavailable("password hashing is busy".into()));
        };
        let s = secret.to_owned();
        tokio::task::spawn_blocking(move || hash_secret(&s))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Counts `n` events against the project's per-minute limit, shared by every
    /// collector on the database. Returns the seconds to wait when over it.
    pub async fn rate_limited(&self, project_id: i64, n: u64) -> Result<Option<u64>, StoreError> {
        let Some(limit) = self.config.rate_limit_per_minute else {
            return Ok(None);
        };
        self.quotas
            .admit(&*self.store, project_id, n, limit, now_ms())
            .await
    }

    /// The writer queue depth (for tests and metrics).
    pub fn queue_depth(&self) -> i64 {
        self.store.queue_depth()
    }
}
