//! [`Options`]: everything `init` can be told, with documented defaults.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::warn;

/// A hook that sees every event before it is stored and may change or drop it.
pub type BeforeSend = Arc<dyn Fn(Event) -> Option<Event> + Send + Sync>;

/// Configuration of the agent. Build it with [`Options::new`] or [`Options::from_env`]
/// and the chained setters, then pass it to [`init`](crate::init).
///
/// ```
/// let options = errscope::Options::new()
///     .release("shop@1.4.0")
///     .environment("production")
///     .database("/var/lib/shop/errscope.db")
///     .in_app_include("shop_");
/// assert_eq!(options.release.as_deref(), Some("shop@1.4.0"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Options {
    /// Where events will be shipped (by the shipper). Default: none.
    pub dsn: Option<Dsn>,
    /// The SQLite outbox file. Default: `<data dir>/errscope/<program>-outbox.db`
    /// (e.g. `~/.local/share/errscope/shop-outbox.db`), or `./errscope-outbox.db`
    /// when there is no data dir.
    pub database: Option<PathBuf>,
    /// The release, e.g. `shop@1.4.0`. Default: none.
    pub release: Option<String>,
    /// The environment, e.g. `production`. Default: none.
    pub environment: Option<String>,
    /// The host name reported as `server_name`. Default: the machine's host name.
    pub server_name: Option<String>,
    /// Crates whose frames are in-app, besides the host crate the agent finds itself. An
    /// entry names a crate and those continuing it after `_` (`shop`: `shop`, `shop_db`,
    /// not `shopify`; `shop_`: `shop_db`). Default: empty, which means the host crate's
    /// family and, in builds with debug info, every Rust source that is neither std nor a
    /// dependency from the cargo registry are in-app; when set, only the host crate's
    /// family and these. errscope's own frames are never in-app.
    pub in_app_include: Vec<String>,
    /// Crates whose frames are never in-app (named as in `in_app_include`), on top of
    /// std, core, alloc, errscope, backtrace, tokio, hyper and friends; wins over
    /// everything else. Default: empty.
    pub in_app_exclude: Vec<String>,
    /// At most this many events are kept in the outbox; the oldest go first. Default: 10 000.
    pub max_events: u64,
    /// At most this many bytes of event JSON are kept in the outbox. Default: 64 MiB.
    pub max_bytes: u64,
    /// The share of `capture_error`/`capture_message` events kept, 0.0 to 1.0.
    /// Panics are always kept. Default: 1.0.
    pub sample_rate: f64,
    /// Called on the agent's thread with each event before it is scrubbed and stored.
    /// Returning `None` drops the event (counted as `before_send`). A panicking hook is
    /// caught (and recorded as a panic); the event is then stored unchanged. Storm counts
    /// of a dropped event are dropped with it. Default: none.
    pub before_send: Option<BeforeSend>,
    /// Replace secrets (passwords, tokens, cookies, card numbers, URL credentials) with
    /// `[Filtered]` before anything is stored. Default: on.
    pub scrub: bool,
    /// Extra case-insensitive key substrings whose values are scrubbed, on top of
    /// password, passwd, secret, api_key, apikey, auth, credentials, token, private_key,
    /// cookie and session. Default: empty.
    pub scrub_keys: Vec<String>,
    /// Capture the stack of `capture_error` and `capture_message` calls (about 5 µs on
    /// the caller's thread for 20 frames). Panics always have theirs. Default: on.
    pub attach_stacktrace: bool,
    /// Install handlers for fatal signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT,
    /// SIGTRAP; Linux) that record the crash for the next start. Off for a host whose own
    /// crash reporter must see these signals first. What an earlier run recorded is
    /// delivered either way. Default: on.
    pub catch_signals: bool,
    /// Release health: send a Sentry session per run (`init` opens it; it ends `exited`,
    /// or `crashed`/`abnormal`, sent by the next run, when the process died). Needs a
    /// [`release`](Options::release). `ERRSCOPE_SESSIONS=0` turns it off. Default: on.
    pub sessions: bool,
    /// Capacity of the queue between the host's threads and the agent's thread. A capture
    /// that finds it full is counted against a stored event of its fingerprint if there is
    /// one, else dropped and counted (`queue_overflow`). Default: 4096.
    pub queue_size: usize,
    /// Storm limiter: per error fingerprint (type, `Debug` name, call site, I/O error
    /// kind), only the first `storm_burst` events of each `storm_window` are stored in
    /// full; the rest are counted exactly. Default: 5.
    pub storm_burst: u32,
    /// The storm limiter's window. Default: 10 s.
    pub storm_window: Duration,
    /// How long a panic waits for the agent's threads to commit its event; after that the
    /// hook writes the event itself before it returns. Default: 3 s.
    pub panic_timeout: Duration,
    /// How long dropping the [`Guard`](crate::Guard) waits for pending events. Default: 2 s.
    pub shutdown_timeout: Duration,
    /// Commit with `PRAGMA synchronous = FULL` (an fsync per group commit, which survives
    /// power loss) instead of `NORMAL` (survives a crash or abort of the process, which is
    /// what a panic needs). Default: off.
    pub sync_full: bool,
    /// How long the shipper waits for a server's answer to one envelope before it gives
    /// up on that attempt (the events stay and are retried). Default: 30 s.
    pub send_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dsn: None,
            database: None,
            release: None,
            environment: None,
            server_name: None,
            in_app_include: Vec::new(),
            in_app_exclude: Vec::new(),
            max_events: 10_000,
            max_bytes: 64 * 1024 * 1024,
            sample_rate: 1.0,
            before_send: None,
            scrub: true,
            scrub_keys: Vec::new(),
            attach_stacktrace: true,
            catch_signals: true,
            sessions: true,
            queue_size: 4096,
            storm_burst: 5,
            storm_window: Duration::from_secs(10),
            panic_timeout: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(2),
            sync_full: false,
            send_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("dsn", &self.dsn)
            .field("database", &self.database)
            .field("release", &self.release)
            .field("environment", &self.environment)
            .field("server_name", &self.server_name)
            .field("in_app_include", &self.in_app_include)
            .field("in_app_exclude", &self.in_app_exclude)
            .field("max_events", &self.max_events)
            .field("max_bytes", &self.max_bytes)
            .field("sample_rate", &self.sample_rate)
            .field("before_send", &self.before_send.as_ref().map(|_| ".."))
            .field("scrub", &self.scrub)
            .field("scrub_keys", &self.scrub_keys)
            .field("attach_stacktrace", &self.attach_stacktrace)
            .field("catch_signals", &self.catch_signals)
            .field("sessions", &self.sessions)
            .field("queue_size", &self.queue_size)
            .field("storm_burst", &self.storm_burst)
            .field("storm_window", &self.storm_window)
            .field("panic_timeout", &self.panic_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("sync_full", &self.sync_full)
            .field("send_timeout", &self.send_timeout)
            .finish()
    }
}

impl Options {
    /// The outbox file: [`Options::database`], or the default next to the program's name.
    pub(crate) fn database_path(&self) -> PathBuf {
        self.database.clone().unwrap_or_else(default_database)
    }

    /// The defaults documented on each field.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The defaults, overridden by `ERRSCOPE_DSN`, `ERRSCOPE_DATABASE`, `ERRSCOPE_RELEASE`,
    /// `ERRSCOPE_ENVIRONMENT` and `ERRSCOPE_SAMPLE_RATE` where set. A value that cannot be
    /// used is ignored with one line on stderr naming the variable.
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut options = Self::new();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(dsn) = get("ERRSCOPE_DSN") {
            match Dsn::usable(&dsn) {
                Ok(dsn) => options.dsn = Some(dsn),
                Err(e) => warn(format_args!("ignoring ERRSCOPE_DSN: {e}")),
            }
        }
        if let Some(path) = get("ERRSCOPE_DATABASE") {
            options.database = Some(PathBuf::from(path));
        }
        options.release = get("ERRSCOPE_RELEASE");
        options.environment = get("ERRSCOPE_ENVIRONMENT");
        if let Some(on) = get("ERRSCOPE_SESSIONS") {
            match on.trim() {
                "0" | "false" | "off" => options.sessions = false,
                "1" | "true" | "on" => options.sessions = true,
                _ => warn(format_args!(
                    "ignoring ERRSCOPE_SESSIONS={on:?}: expected 0/1, true/false or on/off"
                )),
            }
        }
        if let Some(rate) = get("ERRSCOPE_SAMPLE_RATE") {
            match rate.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => options.sample_rate = r,
                _ => warn(format_args!(
                    "ignoring ERRSCOPE_SAMPLE_RATE={rate:?}: expected a number from 0.0 to 1.0"
                )),
            }
        }
        options
    }

    /// Sets the DSN. A DSN that does not parse, or an `https://` one in a build without the
    /// `tls` feature, is ignored with a warning on stderr.
    #[must_use]
    pub fn dsn(mut self, dsn: &str) -> Self {
        match Dsn::usable(dsn) {
            Ok(dsn) => self.dsn = Some(dsn),
            Err(e) => warn(format_args!("ignoring DSN: {e}")),
        }
        self
    }

    /// Sets the SQLite outbox path.
    #[must_use]
    pub fn database(mut self, path: impl Into<PathBuf>) -> Self {
        self.database = Some(path.into());
        self
    }

    /// Sets the release.
    #[must_use]
    pub fn release(mut self, release: impl Into<String>) -> Self {
        self.release = Some(release.into());
        self
    }

    /// Sets the environment.
    #[must_use]
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Sets the reported host name.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Adds a crate (and its `_`-named family) whose frames are in-app.
    #[must_use]
    pub fn in_app_include(mut self, prefix: impl Into<String>) -> Self {
        self.in_app_include.push(prefix.into());
        self
    }

    /// Adds a crate (and its `_`-named family) whose frames are not in-app.
    #[must_use]
    pub fn in_app_exclude(mut self, prefix: impl Into<String>) -> Self {
        self.in_app_exclude.push(prefix.into());
        self
    }

    /// Bounds the outbox by event count.
    #[must_use]
    pub fn max_events(mut self, max: u64) -> Self {
        self.max_events = max.max(1);
        self
    }

    /// Bounds the outbox by bytes of event JSON.
    #[must_use]
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max.max(1);
        self
    }

    /// Sets the sample rate (clamped to 0.0..=1.0; NaN means 1.0).
    #[must_use]
    pub fn sample_rate(mut self, rate: f64) -> Self {
        self.sample_rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self
    }

    /// Sets the `before_send` hook.
    #[must_use]
    pub fn before_send(
        mut self,
        hook: impl Fn(Event) -> Option<Event> + Send + Sync + 'static,
    ) -> Self {
        self.before_send = Some(Arc::new(hook));
        self
    }

    /// Turns scrubbing on or off.
    #[must_use]
    pub fn scrub(mut self, on: bool) -> Self {
        self.scrub = on;
        self
    }

    /// Adds a key substring whose values are scrubbed (case-insensitive).
    #[must_use]
    pub fn scrub_key(mut self, key: impl Into<String>) -> Self {
        self.scrub_keys.push(key.into());
        self
    }

    /// Turns stack traces of `capture_error`/`capture_message` on or off.
    #[must_use]
    pub fn attach_stacktrace(mut self, on: bool) -> Self {
        self.attach_stacktrace = on;
        self
    }

    /// Turns the fatal-signal handlers on or off (see [`Options::catch_signals`]).
    #[must_use]
    pub fn catch_signals(mut self, on: bool) -> Self {
        self.catch_signals = on;
        self
    }

    /// Turns release-health sessions on or off (see [`Options::sessions`]).
    #[must_use]
    pub fn sessions(mut self, on: bool) -> Self {
        self.sessions = on;
        self
    }

    /// Sets the queue capacity (at least 1).
    #[must_use]
    pub fn queue_size(mut self, size: usize) -> Self {
        self.queue_size = size.max(1);
        self
    }

    /// Sets the storm limiter: `burst` full events per fingerprint per `window`.
    #[must_use]
    pub fn storm(mut self, burst: u32, window: Duration) -> Self {
        self.storm_burst = burst.max(1);
        self.storm_window = window;
        self
    }

    /// Sets how long a panic waits for its commit.
    #[must_use]
    pub fn panic_timeout(mut self, timeout: Duration) -> Self {
        self.panic_timeout = timeout;
        self
    }

    /// Sets how long dropping the guard waits.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Commits with an fsync (`PRAGMA synchronous = FULL`).
    #[must_use]
    pub fn sync_full(mut self, on: bool) -> Self {
        self.sync_full = on;
        self
    }

    /// Sets how long the shipper waits for an answer to one envelope.
    #[must_use]
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }
}

/// A parsed DSN: `{scheme}://{public_key}@{host}[:{port}]/{project_id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dsn {
    /// `http` or `https`.
    pub scheme: String,
    /// The project's public key.
    pub public_key: String,
    /// The collector's host.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
    /// Any path before the project id (for collectors behind a prefix), without slashes.
    pub path: String,
    /// The project id.
    pub project_id: String,
}

/// Why a DSN was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DsnError {
    /// Not `http://` or `https://`.
    #[error("{0:?} does not start with http:// or https://")]
    Scheme(String),
    /// No `key@` part.
    #[error("{0:?} has no public key (expected scheme://KEY@host/PROJECT)")]
    MissingKey(String),
    /// Empty host or bad port.
    #[error("{0:?} has no valid host[:port]")]
    Host(String),
    /// No project id at the end of the path.
    #[error("{0:?} has no project id (expected scheme://KEY@host/PROJECT)")]
    Project(String),
    /// An `https://` DSN in a build without the `tls` feature.
    #[error("{0:?} is https, and errscope was built without its `tls` feature")]
    TlsDisabled(String),
}

impl FromStr for Dsn {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scheme, rest) = s
            .split_once("://")
            .filter(|(scheme, _)| *scheme == "http" || *scheme == "https")
            .ok_or_else(|| DsnError::Scheme(s.to_owned()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| DsnError::MissingKey(s.to_owned()))?;
        let public_key = userinfo.split(':').next().unwrap_or_default();
        if public_key.is_empty() {
            return Err(DsnError::MissingKey(s.to_owned()));
        }
        let bad_host = || DsnError::Host(s.to_owned());
        // `host`, `host:port`, `[v6]` or `[v6]:port`.
        let (host, port) = if hostport.starts_with('[') {
            let close = hostport.find(']').ok_or_else(bad_host)?;
            let (host, after) = hostport.split_at(close + 1);
            match after {
                "" => (host, None),
                _ => {
                    let port = after.strip_prefix(':').ok_or_else(bad_host)?;
                    (host, Some(port.parse::<u16>().map_err(|_| bad_host())?))
                }
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| bad_host())?)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(DsnError::Host(s.to_owned()));
        }
        let path = path.trim_end_matches('/');
        let (prefix, project_id) = path.rsplit_once('/').unwrap_or(("", path));
        if project_id.is_empty() || !project_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(DsnError::Project(s.to_owned()));
        }
        Ok(Self {
            scheme: scheme.to_owned(),
            public_key: public_key.to_owned(),
            host: host.to_owned(),
            port,
            path: prefix.to_owned(),
            project_id: project_id.to_owned(),
        })
    }
}

impl Dsn {
    /// Parses a DSN this build can ship to: `https://` needs the `tls` feature.
    fn usable(s: &str) -> Result<Self, DsnError> {
        let dsn = s.parse::<Self>()?;
        if dsn.scheme == "https" && !cfg!(feature = "tls") {
            return Err(DsnError::TlsDisabled(s.trim().to_owned()));
        }
        Ok(dsn)
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}@{}", self.scheme, self.public_key, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        write!(f, "/{}", self.project_id)
    }
}

fn default_database() -> PathBuf {
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "app".to_owned());
    match dirs::data_local_dir() {
        Some(dir) => dir.join("errscope").join(format!("{program}-outbox.db")),
        None => PathBuf::from("errscope-outbox.db"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_outbox_is_named_after_the_program() {
        let path = default_database();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let program = std::env::current_exe().expect("exe");
        let stem = program.file_stem().and_then(|s| s.to_str()).expect("stem");
        assert_eq!(name, format!("{stem}-outbox.db"));
        if dirs::data_local_dir().is_some() {
            assert!(
                path.parent().is_some_and(|d| d.ends_with("errscope")),
                "{path:?}"
            );
        }
    }

    #[test]
    fn parses_a_collector_dsn() {
        let dsn: Dsn = "http://abc123@127.0.0.1:8000/1".parse().expect("valid dsn");
        assert_eq!(dsn.public_key, "abc123");
        assert_eq!(dsn.host, "127.0.0.1");
        assert_eq!(dsn.port, Some(8000));
        assert_eq!(dsn.project_id, "1");
        assert_eq!(dsn.to_string(), "http://abc123@127.0.0.1:8000/1");
        let prefixed: Dsn = "https://k@errors.example.com/sentry/42"
            .parse()
            .expect("valid dsn");
        assert_eq!(prefixed.path, "sentry");
        assert_eq!(prefixed.port, None);
        let v6: Dsn = "http://k@[::1]:8000/3".parse().expect("valid dsn");
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", Some(8000)));
        let v6: Dsn = "http://k@[::1]/3".parse().expect("valid dsn");
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", None));
        assert_eq!(v6.to_string(), "http://k@[::1]/3");
    }

    #[test]
    fn rejects_bad_dsns() {
        assert!(matches!(
            "ftp://k@h/1".parse::<Dsn>(),
            Err(DsnError::Scheme(_))
        ));
        assert!(matches!(
            "http://h/1".parse::<Dsn>(),
            Err(DsnError::MissingKey(_))
        ));
        assert!(matches!(
            "http://k@h:x/1".parse::<Dsn>(),
            Err(DsnError::Host(_))
        ));
        assert!(matches!(
            "http://k@h/".parse::<Dsn>(),
            Err(DsnError::Project(_))
        ));
    }

    #[test]
    fn env_values_are_read_and_bad_ones_ignored() {
        let env = |name: &str| match name {
            "ERRSCOPE_DSN" => Some("not a dsn".to_owned()),
            "ERRSCOPE_DATABASE" => Some("/tmp/x.db".to_owned()),
            "ERRSCOPE_RELEASE" => Some("shop@1.4.0".to_owned()),
            "ERRSCOPE_ENVIRONMENT" => Some("production".to_owned()),
            "ERRSCOPE_SAMPLE_RATE" => Some("2.5".to_owned()),
            _ => None,
        };
        let options = Options::from_lookup(env);
        assert_eq!(options.dsn, None);
        assert_eq!(options.database, Some(PathBuf::from("/tmp/x.db")));
        assert_eq!(options.release.as_deref(), Some("shop@1.4.0"));
        assert_eq!(options.environment.as_deref(), Some("production"));
        assert!((options.sample_rate - 1.0).abs() < f64::EPSILON);
        let ok =
            Options::from_lookup(|name| (name == "ERRSCOPE_SAMPLE_RATE").then(|| "0.25".into()));
        assert!((ok.sample_rate - 0.25).abs() < f64::EPSILON);
    }
}
