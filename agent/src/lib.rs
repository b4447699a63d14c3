//! errscope: error telemetry for Rust services.
//!
//! The agent records panics and operational errors with their backtraces and the
//! request (domain) they happened in, durably into a local SQLite outbox, in Sentry's
//! event JSON shape, ready to ship to an errscope collector or any Sentry-compatible
//! server.
//!
//! # Quickstart
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # #[derive(Debug)] struct Order;
//! # async fn load_order(_id: u64) -> std::io::Result<Order> { Ok(Order) }
//! # async fn handler(rid: u64) -> u16 {
//! // Once, at the start of main. Reads ERRSCOPE_DSN, ERRSCOPE_DATABASE, ERRSCOPE_RELEASE,
//! // ERRSCOPE_ENVIRONMENT and ERRSCOPE_SAMPLE_RATE.
//! let guard = errscope::init(
//!     errscope::Options::from_env()
//!         .release("shop@1.4.0")
//!         .environment("production"),
//! );
//!
//! // Per request: a domain whose tags go with every event captured inside it.
//! let domain = errscope::Domain::new("GET /orders/:id").tag("request_id", rid);
//! let status = match domain.run(load_order(7)).await {
//!     Ok(Ok(_order)) => 200,
//!     Ok(Err(err)) => {
//!         // An operational error: type, message, source chain, io::ErrorKind, os code.
//!         let id: errscope::EventId = errscope::capture_error(&err);
//!         eprintln!("load_order failed, event {id}");
//!         502
//!     }
//!     // A panic inside the domain: recorded (committed before the hook returned).
//!     Err(panic) => {
//!         eprintln!("bug, event {}", panic.event_id);
//!         500
//!     }
//! };
//! errscope::capture_message("disk almost full", errscope::Level::Warning);
//! errscope::spawn(async { /* runs in the same domain */ });
//! guard.flush(Duration::from_secs(2));
//! # status
//! # }
//! ```
//!
//! # Features
//!
//! - `tokio` (default): [`spawn`], a `tokio::spawn` that carries the current domain.
//!   Domains themselves work on any executor.
//! - `tls` (default): `https://` DSNs (rustls). Without it only `http://` DSNs are taken (an
//!   `https://` one is ignored with a warning) and no TLS library is built.
//!
//! The optional integrations, each off by default:
//!
//! - `tower`: `tower::ErrorLayer`, a domain per HTTP request for axum/hyper services, named `METHOD
//!   <route template>`, with a request id (from `x-request-id` or generated, echoed in the
//!   response), method, route, status and user agent tags and the headers in its context (never the
//!   values of `Authorization` or `Cookie`). A panic in the handler or in a task it spawned with
//!   [`spawn`] is recorded and answered with a `500` and `{"error": "internal_error", "message":
//!   "...", "event_id": "...", "request_id": "..."}`; 5xx responses are recorded as events of type
//!   `HTTP <code>`, 4xx are not (configurable per status).
//!
//!   ```
//!   # #[cfg(feature = "tower")] {
//!   use axum::{Router, http::StatusCode, routing::get};
//!
//!   let app: Router = Router::new()
//!       .route("/orders/{id}", get(|| async { "order" }))
//!       .layer(
//!           errscope::tower::ErrorLayer::new()
//!               // Also record 429s; 503s from a draining instance are expected.
//!               .record_status(StatusCode::TOO_MANY_REQUESTS, true)
//!               .record_status(StatusCode::SERVICE_UNAVAILABLE, false),
//!       );
//!   # }
//!   ```
//! - `tracing`: `tracing::ErrscopeLayer`, a `tracing_subscriber::Layer`: `error!` events are
//!   captured with their fields and the span chain (`contexts.tracing`; an `error = &err as &dyn
//!   Error` field becomes the exception chain), `warn!`/`info!` events become breadcrumbs of the
//!   current domain, and spans entered inside a domain add their fields to its context
//!   (`spans.<name>`).
//!
//!   ```
//!   # #[cfg(feature = "tracing")] {
//!   use tracing_subscriber::prelude::*;
//!
//!   tracing_subscriber::registry()
//!       .with(errscope::tracing::ErrscopeLayer::new())
//!       .with(tracing_subscriber::fmt::layer())
//!       .try_init()
//!       .expect("no other subscriber is set");
//!   # }
//!   ```
//! - `log`: `log::ErrscopeLogger`, the same for the `log` crate (key-values as fields; no spans),
//!   optionally wrapping another logger.
//!
//!   ```
//!   # #[cfg(feature = "log")] {
//!   errscope::log::ErrscopeLogger::new()
//!       // .wrap(env_logger::Logger::from_default_env())
//!       .install()
//!       .expect("no other logger is set");
//!   # }
//!   ```
//! - `anyhow`: `capture_anyhow`: the context chain becomes the exception chain, the root cause's
//!   type (found by downcasting `std::io::Error`, `serde_json::Error`, std's parse errors, …) its
//!   class, and anyhow's own backtrace, when it captured one, the stack (parsed from std's
//!   backtrace text).
//!
//!   ```
//!   # #[cfg(feature = "anyhow")] {
//!   use anyhow::Context as _;
//!
//!   let err = std::fs::read_to_string("/no/such/config.toml")
//!       .context("loading config")
//!       .unwrap_err();
//!   // Class `std::io::Error: NotFound`, not `anyhow::Error`.
//!   errscope::capture_anyhow(&err);
//!   # }
//!   ```
//!
//! Synchronous code uses [`Domain::run_sync`]; a future that should carry the current
//! domain somewhere else (a spawned task, a `select!` arm) uses
//! [`DomainExt::in_current_domain`]; code deep below a handler adds context with
//! [`with_domain`] and [`add_breadcrumb`]. Call [`Guard::flush`] (or drop the guard)
//! before `std::process::exit`: captures are written asynchronously, panics are not.
//!
//! # How it works
//!
//! - [`capture_error`] costs the caller a few microseconds: a storm check, the error
//!   chain as strings, the unresolved stack addresses and a snapshot of the current
//!   domain go over a bounded queue ([`Options::queue_size`]) to the agent's thread
//!   `errscope-worker`, which resolves symbols (cached per address), builds the event,
//!   applies `before_send` and scrubs secrets; the `errscope-writer` thread writes each
//!   batch in one SQLite transaction. A capture that finds the queue full is counted
//!   against a stored event of its fingerprint, or else dropped and counted, in [`stats`]
//!   and in the outbox's `discards` table: never silently.
//! - The panic hook (installed once, calling the previous hook after it) records the
//!   message, location, thread, stack and domain and waits for the commit (at most
//!   [`Options::panic_timeout`]) before it returns, so `panic = "abort"` builds and
//!   main-thread panics lose nothing. Concurrent panics share a transaction. If the
//!   agent's threads cannot commit in time (stuck in a `before_send` hook, say), or the
//!   panic happens on one of them, the hook writes the event itself through a connection
//!   of its own. A thread-local flag keeps a panic inside the hook from re-entering it.
//!   A host that sets a panic hook of its own should do so before `init` (errscope calls
//!   it) or chain the one it replaces with `std::panic::take_hook`.
//! - Backtraces: frames are resolved off the caller's thread, inlined frames kept, Rust
//!   hashes stripped, the agent's and the panic machinery's frames trimmed from the top.
//!   A frame is in-app when it belongs to the host crate, found without configuration
//!   (the `<crate>::main` that std's `lang_start` runs, in a stack `init` takes and the
//!   agent's thread resolves; else the executable's name with `-` as `_`), or to one of
//!   its `_`-named family (`shop_db`), so builds without debug info get it right too;
//!   with debug info, also Rust sources outside the cargo registry and std. errscope's
//!   own frames never are, std, tokio, hyper, … are not; [`Options::in_app_include`] and
//!   [`Options::in_app_exclude`] win over the rest. Frames that cannot be resolved
//!   in-process (a stripped binary) keep their address and are sent without a name.
//! - Debug images: the executable and the loaded shared objects (with their GNU build ids)
//!   are read once on the agent's thread and sent with every event as Sentry's
//!   `debug_meta.images`, so a server holding the debug files can symbolicate.
//! - Error storms: per fingerprint (error type, enum variant or concrete type of a `dyn
//!   Error` as its `Debug` names it, call site, I/O error kind) only the first
//!   [`Options::storm_burst`] events of each [`Options::storm_window`] are stored in
//!   full; the rest are counted exactly against a stored event of the same fingerprint,
//!   written once per window, at a flush, and with every panic (the process may abort).
//! - Scrubbing (on by default, [`Options::scrub`], [`Options::scrub_keys`]): values under
//!   keys containing password, passwd, secret, api_key, apikey, auth, credentials, token,
//!   private_key, cookie or session (any case) become `[Filtered]`, in tags, contexts,
//!   extra and breadcrumb data at any depth; so do card-like numbers (13–19 digits starting
//!   with 2–6 and passing the Luhn check) and the password of `user:pass@` URLs in any string.
//! - Shipping (with a DSN): the `errscope-shipper` thread, with a current-thread tokio
//!   runtime and a connection of its own, reads the outbox in rowid order and sends
//!   gzipped Sentry envelopes to `{dsn}/api/{project}/envelope/` with `X-Sentry-Auth`;
//!   up to 1,000 events per envelope (3 in flight) to an errscope collector (it answers with
//!   `X-Errscope-Collector`), one per envelope (4 in flight) to other Sentry-compatible
//!   servers. Rows are deleted only after a 2xx, so what a previous run left is shipped at
//!   start and a batch whose answer was lost is resent with the same `event_id`s.
//!   Connection errors, resets, timeouts ([`Options::send_timeout`]), 5xx, 401/403/404:
//!   everything stays, exponential backoff with full jitter up to 30 s (at least the
//!   server's `Retry-After`). 429: nothing is sent until `X-Sentry-Rate-Limits` (error
//!   categories) or `Retry-After` has passed, 60 s by default. Another 4xx (400, 413): the
//!   batch is split in halves and resent down to the refused event, which is dropped and
//!   counted as a `send_error` discard. Storm counts follow their events (`errscope.counts`
//!   items), discards go as `client_report` items; both are deleted after a 2xx. One stderr
//!   line when delivery starts failing and one when it recovers; [`stats`] has the
//!   counters. [`flush`] and dropping the [`Guard`] wait (bounded) for the outbox to empty;
//!   the capture path never waits for the network. Events held in memory by a degraded
//!   outbox are not shipped.
//! - Fatal signals (Linux): SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT and SIGTRAP are
//!   recorded by an async-signal-safe handler into a run file beside the outbox, then
//!   the process dies as it would have (the previous handlers are put back, the signal
//!   re-faults or is raised again). The next start stores the record, before anything of
//!   its own, as a `fatal` event with `mechanism {type: "signalhandler", handled: false,
//!   meta.signal}`, classed `SIGSEGV`, `stack overflow`, `out of memory`, `abort`, …
//! - Release health (with a release; [`Options::sessions`]): one Sentry session per run,
//!   opened by [`init`] and ended `exited` by the [`Guard`]; a run that died is ended by
//!   the next start, `crashed` (a panic or a fatal signal) or `abnormal` (SIGKILL), with
//!   the errors it counted. Updates go out as `session` items with the counts.
//! - Nothing in the agent panics its host: failures degrade with one line on stderr
//!   starting with `errscope:` (an outbox that cannot be opened or written is replaced by
//!   a bounded in-memory buffer, and [`Stats::degraded`] says so).
//!
//! # The outbox
//!
//! One SQLite file (WAL, `synchronous = NORMAL` unless [`Options::sync_full`]; numbered
//! migrations tracked in `PRAGMA user_version`), bounded by [`Options::max_events`] and
//! [`Options::max_bytes`]: the oldest events go first, counted as `cache_overflow`.
//!
//! | table | columns |
//! |---|---|
//! | `events` | `id INTEGER PRIMARY KEY AUTOINCREMENT`, `event_id TEXT UNIQUE`, `created_at REAL`, `payload BLOB` (the event JSON), `size INTEGER` |
//! | `counts` | `id TEXT PRIMARY KEY` (32 hex), `event_id TEXT`, `count INTEGER`, `start REAL`, `end REAL`: the collector's `errscope.counts` items; `event_id` is a stored event |
//! | `discards` | `reason TEXT`, `category TEXT`, `quantity INTEGER`, key (`reason`, `category`): client-report counters (`queue_overflow`, `cache_overflow`, `sample_rate`, `before_send`) |
//! | `meta` | `key TEXT PRIMARY KEY`, `value TEXT`: `agent_version` |
//! | `open_sessions` | `sid TEXT PRIMARY KEY`, `run_id TEXT` (the run file's id), `started REAL`, `errors INTEGER`, `panicked INTEGER`, `release TEXT`, `environment TEXT`: sessions no run has ended yet (migration 2) |
//! | `session_updates` | `id INTEGER PRIMARY KEY AUTOINCREMENT`, `payload BLOB` (a `session` item's JSON): waiting to be shipped, at most 1000 |
//! | `totals` | one row (`id = 1`): `events INTEGER`, `bytes INTEGER`, the count and size of `events`, kept by every writer in the same transaction as its change (a shipper deleting sent events must lower them too), so several processes sharing one file keep its bounds |
//!
//! Beside it, each process that installed the fatal-signal handlers keeps a run file,
//! `<outbox file>-run-<32 hex>`, under `flock` while it lives: one JSON line (run id, pid,
//! start, release, environment, the loaded modules with their build ids) and, if a fatal
//! signal ended the run, the handler's fixed-size record. The next start delivers and
//! deletes the files of runs that are over.
//!
//! # Event shape
//!
//! Sentry's event JSON: `event_id` (32 hex), `timestamp` (epoch seconds), `level`,
//! `platform: "native"`, `release`, `environment`, `server_name`, `exception.values[]`,
//! `tags` (the domain's, and `domain`: its name), `contexts` (`os`, `runtime`, `thread`,
//! and `domain`: `{name, tags, data}` with the domain's context entries under `data`),
//! `breadcrumbs` (the domain's), `extra.capture_location`, `sdk`, `debug_meta.images`
//! (type `elf`: `code_file`, `code_id`, `debug_id`, `image_addr`, `image_size`,
//! `image_vmaddr`, `arch`) and `contexts.errscope` (`in_app_include`, `in_app_exclude`:
//! the crates counted as in-app).
//! Messages have `message` and their stack under `threads`.
//!
//! `exception.values` holds one entry per link of the `source()` chain in Sentry's order:
//! the root cause (the innermost `source()`) first, the captured error last. The last
//! entry is the event's main exception for Sentry-compatible servers and carries the
//! stack trace of the `capture_error` call (frames oldest first: `function`, `module`,
//! `filename`, `abs_path`, `lineno`, `colno`, `in_app`, `instruction_addr`, `package`,
//! `image_addr`); the errscope
//! collector files the event under the root cause's class. Each link has
//! `mechanism {type: "capture_error", handled: true}`; an `std::io::Error` link adds
//! `mechanism.data.io_kind` (e.g. `ConnectionReset`), `mechanism.data.os_code` and
//! `mechanism.meta.errno` (`{"number": 104, "name": "ECONNRESET"}`). A panic is one
//! exception of type `panic` with the message as value, `mechanism {type: "panic",
//! handled: false}` and the location in `mechanism.data` (`file`, `line`, `column`);
//! level `fatal`.
#![warn(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// Imports run one way, never back up: `init`, `capture`, `hook` and the integrations →
// `client` → `worker` (`assemble`, `scrub`, `trace`, `event`) → `store`; `ship` reads the
// store; `shared` holds what the agent's threads share. `module_imports_run_one_way`
// below keeps it so.
#[cfg(feature = "anyhow")]
mod anyhow;
mod assemble;
mod capture;
mod client;
mod crash;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod crash_report;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
use crate::crash::elsewhere as crash_report;
mod domain;
mod envelope;
mod event;
mod hook;
mod images;
mod in_app;
mod init;
#[cfg_attr(
    not(any(
        feature = "tower",
        feature = "tracing",
        feature = "log",
        feature = "anyhow"
    )),
    allow(dead_code)
)]
mod integration;
mod options;
mod rand;
mod scrub;
mod session;
mod shared;
mod ship;
mod store;
mod storm;
mod time;
mod trace;
mod worker;

#[cfg(feature = "log")]
pub mod log;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "tracing")]
pub mod tracing;

#[cfg(feature = "anyhow")]
pub use crate::anyhow::capture_anyhow;
pub use crate::capture::{AsDynError, capture_error, capture_message};
pub use crate::client::{Stats, flush, stats};
#[cfg(feature = "tokio")]
pub use crate::domain::spawn;
pub use crate::domain::{
    Domain, DomainExt, DomainPanic, DomainRun, InDomain, add_breadcrumb, with_domain,
};
pub use crate::event::{
    Breadcrumb, DebugImage, DebugMeta, Errno, Event, EventId, Exception, Frame, Level, Mechanism,
    MechanismMeta, Sdk, Signal, Stacktrace, Thread, Values,
};
pub use crate::init::{Guard, init};
pub use crate::options::{BeforeSend, Dsn, DsnError, Options};

/// Writes one `errscope:` line to stderr, ignoring a closed stderr (`eprintln!` would
/// panic there).
pub(crate) fn warn(msg: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "errscope: {msg}");
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The modules each module of `src/` names through `crate::`, outside comments and
    /// its tests.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut sources = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path
                    .file_stem()
                    .expect("stem")
                    .to_string_lossy()
                    .into_owned();
                sources.insert(name, std::fs::read_to_string(&path).expect("read"));
            }
        }
        let modules: BTreeSet<String> = sources.keys().cloned().collect();
        let word = |s: &str| {
            s.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect::<String>()
        };
        sources
            .iter()
            .map(|(name, src)| {
                let code = src.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
                let mut deps = BTreeSet::new();
                for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                    for (idx, _) in line.match_indices("crate::") {
                        let rest = &line[idx + "crate::".len()..];
                        let mut names = vec![word(rest)];
                        if let Some(group) = rest.strip_prefix('{') {
                            let group = group.split('}').next().unwrap_or("");
                            names = group.split(',').map(|s| word(s.trim())).collect();
                        }
                        deps.extend(
                            names
                                .into_iter()
                                .filter(|n| modules.contains(n) && n != name),
                        );
                    }
                }
                (name.clone(), deps)
            })
            .collect()
    }

    #[test]
    fn module_imports_run_one_way() {
        let graph = imports();
        assert!(graph["client"].contains("worker"), "the scan sees imports");
        // Depth-first search; a module met again while on the path closes a cycle.
        fn visit<'g>(
            m: &'g str,
            graph: &'g BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'g str>,
            done: &mut BTreeSet<&'g str>,
        ) {
            if done.contains(m) {
                return;
            }
            if let Some(pos) = path.iter().position(|p| *p == m) {
                panic!("import cycle: {} -> {m}", path[pos..].join(" -> "));
            }
            path.push(m);
            for dep in &graph[m] {
                visit(dep, graph, path, done);
            }
            path.pop();
            done.insert(m);
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            visit(m, &graph, &mut Vec::new(), &mut done);
        }
    }
}
