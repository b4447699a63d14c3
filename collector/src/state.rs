//! Shared state: configuration, the store handles, credentials, sessions, key cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use rusqlite::OptionalExtension;

use crate::budget::Budget;
use crate::difs::Difs;
use crate::metrics::Metrics;
use crate::store::writer::{Retention, Writer};
use crate::store::{self, ProjectRow, ReadPool, StoreError};
use crate::symbolicate::{DebugFileLookup, Limits, Symbolicator};
use crate::time::now_ms;

/// How the collector is configured.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// The base URL SDKs reach the collector at, for DSNs: `http://127.0.0.1:8000`.
    pub public_url: String,
    /// Writer queue capacity, in requests.
    pub queue_capacity: usize,
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
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            public_url: "http://127.0.0.1:8000".into(),
            queue_capacity: 1024,
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
    /// Read connections.
    pub reads: ReadPool,
    /// The writer thread.
    pub writer: Writer,
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
    keys: RwLock<HashMap<String, i64>>,
    token_hash: RwLock<String>,
    password_hash: RwLock<String>,
    verified: Mutex<Vec<String>>,
    sessions: Mutex<HashMap<String, i64>>,
    rate: Mutex<HashMap<i64, (i64, u64)>>,
    /// One argon2 verification at a time: wrong tokens or passwords cannot take more
    /// than one core, nor the blocking threads reads need.
    hashing: tokio::sync::Semaphore,
}

/// A started collector: its state and the writer thread to join on shutdown.
#[derive(Debug)]
pub struct Started {
    /// Handler state.
    pub state: AppState,
    /// The writer thread.
    pub writer_thread: JoinHandle<()>,
    /// What was generated on this start.
    pub generated: Generated,
    /// Whether the database was created by this start.
    pub first_start: bool,
}

const SESSION_TTL_MS: i64 = 7 * 24 * 3_600_000;
const MAX_SESSIONS: usize = 10_000;
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

/// What the database keeps of a session id: its BLAKE2s-256 digest, hex.
fn session_key(id: &str) -> String {
    use blake2::Digest;
    blake2::Blake2s256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Opens (creating on first start) the database, bootstraps the default project and the
/// admin credentials, and starts the writer thread.
pub fn start(config: Config) -> Result<Started, StoreError> {
    let conn = store::open_and_migrate(&config.data_dir)?;
    let first_start = store::list_projects(&conn)?.is_empty();
    if first_start {
        store::create_project(&conn, "default")?;
    }
    let mut generated = Generated {
        password: None,
        token: None,
    };
    let mut verified = Vec::new();
    let mut cred = |setting: &str,
                    from_env: &Option<String>,
                    slot: &mut Option<String>|
     -> Result<String, StoreError> {
        if let Some(secret) = from_env {
            let h = hash_secret(secret)?;
            store::set_setting(&conn, setting, &h)?;
            if setting == "admin_token_hash" {
                verified.push(secret.clone());
            }
            return Ok(h);
        }
        if let Some(h) = store::get_setting(&conn, setting)? {
            return Ok(h);
        }
        let secret = random_secret();
        let h = hash_secret(&secret)?;
        store::set_setting(&conn, setting, &h)?;
        if setting == "admin_token_hash" {
            verified.push(secret.clone());
        }
        *slot = Some(secret);
        Ok(h)
    };
    let password_hash = cred(
        "admin_password_hash",
        &config.admin_password,
        &mut generated.password,
    )?;
    let token_hash = cred(
        "admin_token_hash",
        &config.admin_token,
        &mut generated.token,
    )?;
    let keys = store::list_projects(&conn)?
        .into_iter()
        .map(|p| (p.key, p.id))
        .collect();

    let difs = Difs::open(&config.data_dir, config.difs_max_bytes).map_err(|e| match e {
        crate::difs::DifError::Store(e) => e,
        crate::difs::DifError::Io(p, e) => StoreError::Io(p, e),
        e => StoreError::Task(e.to_string()),
    })?;
    difs.start_maintenance();
    let metrics = Arc::new(Metrics::default());
    let alerts = Arc::new(crate::alerts::Alerts::new(
        config.alerts.clone(),
        config.public_url.clone(),
    ));
    let (writer, writer_thread) = Writer::start_with_alerts(
        conn,
        config.queue_capacity,
        config.retention,
        metrics.clone(),
        Some(alerts.clone()),
    )
    .map_err(|e| StoreError::Io(config.data_dir.clone(), e))?;
    // Symbolication looks in the uploaded debug files unless the config names a lookup.
    let lookup: Arc<dyn DebugFileLookup> = match &config.debug_files {
        Some(lookup) => lookup.clone(),
        None => Arc::new(difs.clone()),
    };
    let symbolicator = Arc::new(Symbolicator::new(lookup, config.symbolication));
    let inner = Inner {
        reads: ReadPool::new(store::db_path(&config.data_dir)),
        budget: Budget::new(config.max_inflight_bytes),
        symbolicator,
        config,
        writer,
        alerts,
        metrics,
        difs,
        keys: RwLock::new(keys),
        token_hash: RwLock::new(token_hash),
        password_hash: RwLock::new(password_hash),
        verified: Mutex::new(verified),
        sessions: Mutex::new(HashMap::new()),
        rate: Mutex::new(HashMap::new()),
        hashing: tokio::sync::Semaphore::new(1),
    };
    Ok(Started {
        state: AppState(Arc::new(inner)),
        writer_thread,
        generated,
        first_start,
    })
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
        let k = key.to_owned();
        let found = self
            .reads
            .run(move |c| store::project_of_key(c, &k))
            .await?;
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

    /// Whether `password` is the admin password.
    pub async fn check_password(&self, password: &str) -> bool {
        let hash = self
            .password_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let p = password.to_owned();
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || verify_secret(&p, &hash))
            .await
            .unwrap_or(false)
    }

    /// Starts a dashboard session and stores it (hashed); returns its id.
    pub async fn new_session(&self) -> Result<String, StoreError> {
        let id = format!("{}{}", random_secret(), random_secret());
        let now = now_ms();
        let expires = now + SESSION_TTL_MS;
        let key = session_key(&id);
        self.writer
            .exec(move |tx| {
                tx.execute("DELETE FROM sessions WHERE expires <= ?1", [now])?;
                tx.execute(
                    "INSERT INTO sessions (token_hash, expires) VALUES (?1, ?2)",
                    rusqlite::params![key, expires],
                )?;
                Ok(())
            })
            .await?;
        self.remember_session(&id, expires);
        Ok(id)
    }

    fn remember_session(&self, id: &str, expires: i64) {
        let now = now_ms();
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|_, exp| *exp > now);
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(id.to_owned(), expires);
    }

    /// Whether a session id is live (memory first, then the database, so sessions
    /// survive a restart).
    pub async fn session_valid(&self, id: &str) -> bool {
        let now = now_ms();
        if let Some(exp) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return *exp > now;
        }
        let key = session_key(id);
        let found = self
            .reads
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT expires FROM sessions WHERE token_hash = ?1",
                    [key],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?)
            })
            .await;
        match found {
            Ok(Some(exp)) if exp > now => {
                self.remember_session(id, exp);
                true
            }
            _ => false,
        }
    }

    /// Ends a session.
    pub async fn end_session(&self, id: &str) -> Result<(), StoreError> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let key = session_key(id);
        self.writer
            .exec(move |tx| {
                tx.execute("DELETE FROM sessions WHERE token_hash = ?1", [key])?;
                Ok(())
            })
            .await
    }

    /// Counts `n` events against the project's per-minute limit. Returns the seconds to
    /// wait when over it.
    pub fn rate_limited(&self, project_id: i64, n: u64) -> Option<u64> {
        let limit = self.config.rate_limit_per_minute?;
        let now = now_ms();
        let minute = now / 60_000;
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let entry = rate.entry(project_id).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 + n > limit {
            let wait = 60 - (now % 60_000) / 1000;
            return Some(wait.max(1) as u64);
        }
        entry.1 += n;
        None
    }

    /// The writer queue depth (for tests and metrics).
    pub fn queue_depth(&self) -> i64 {
        self.metrics.queue_depth.load(Relaxed)
    }
}
