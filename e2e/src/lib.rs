//! Helpers for errscope's end-to-end tests: the real collector on 127.0.0.1 (in this
//! process, on a runtime of its own, so tests and agents stay plain synchronous code),
//! queries of its API, and a fault-injecting HTTP proxy to put in front of it.
#![warn(missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use errscope_collector::{AppState, Config, app, start};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The admin token the helpers configure.
pub const TOKEN: &str = "e2e-admin-token";

/// A collector serving on 127.0.0.1.
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The default project's public key.
    pub key: String,
    rt: tokio::runtime::Runtime,
    state: AppState,
    closed: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    http: reqwest::Client,
}

impl Collector {
    /// Starts a collector over `data` on a fresh port.
    pub fn start(data: &Path) -> Self {
        Self::start_on(data, "127.0.0.1:0".parse().expect("addr")).expect("start collector")
    }

    /// Starts a collector over `data` on `addr` (a port used before, for restarts).
    pub fn start_on(data: &Path, addr: SocketAddr) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let mut config = Config::new(data);
        config.database = errscope_testkit::store::database_for(data);
        config.public_url = format!("http://{addr}");
        config.admin_token = Some(TOKEN.into());
        // The tests look every event up: keep them all (not just 100 per issue).
        config.retention.max_events_per_issue = 1_000_000;
        let started = rt.block_on(start(config)).map_err(std::io::Error::other)?;
        let state = started.state.clone();
        {
            let _runtime = rt.enter();
            errscope_collector::spawn_background(&state).map_err(std::io::Error::other)?;
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = app(state.clone());
        let header_timeout = state.config.header_timeout;
        rt.spawn(errscope_collector::serve::serve(
            listener,
            router,
            header_timeout,
            async {
                let _ = stopped.await;
            },
        ));
        let key = rt
            .block_on(state.store.list_projects())
            .map_err(std::io::Error::other)?
            .first()
            .map(|p| p.key.clone())
            .ok_or_else(|| std::io::Error::other("no project"))?;
        Ok(Self {
            addr,
            key,
            rt,
            state,
            closed: false,
            stop: Some(stop),
            http: reqwest::Client::new(),
        })
    }

    /// The default project's DSN, pointing at `addr` (this collector or a proxy).
    pub fn dsn_via(&self, addr: SocketAddr) -> String {
        format!("http://{}@{addr}/1", self.key)
    }

    /// The default project's DSN.
    pub fn dsn(&self) -> String {
        self.dsn_via(self.addr)
    }

    /// `GET` an API path with the admin token: status and JSON body.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        self.rt.block_on(async {
            let resp = self
                .http
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("API request");
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        })
    }

    /// The default project's `/stats/`.
    pub fn stats(&self) -> Value {
        let (status, body) = self.get("/api/0/projects/1/stats/");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The number of events the default project stored.
    pub fn event_count(&self) -> u64 {
        self.stats()["events"].as_u64().unwrap_or(0)
    }

    /// Whether the collector stored the event.
    pub fn has_event(&self, event_id: &str) -> bool {
        let (status, body) = self.get(&format!("/api/0/projects/1/events/{event_id}/"));
        assert!(status == 200 || status == 404, "{status} {body}");
        status == 200
    }

    /// The quantity of discards the project received for `reason`.
    pub fn discarded(&self, reason: &str) -> u64 {
        self.stats()["discarded"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|d| d["reason"] == reason)
                    .filter_map(|d| d["quantity"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// How many rows the collector stored for each event id, read from its database.
    pub fn stored_copies(&self) -> HashMap<String, u64> {
        self.rt
            .block_on(self.state.store.event_copies())
            .expect("read stored events")
    }

    /// Events the collector answered as retries of stored ones, without storing them
    /// again: the duplicates it saw on the wire.
    pub fn wire_duplicates(&self) -> u64 {
        self.state.metrics.events_duplicate.load(Ordering::Relaxed)
    }

    /// How many retained events wait for the debug file of `debug_id`, read from the
    /// collector's database (viewing an event would symbolicate it; this does not).
    pub fn waiting_for_debug_file(&self, debug_id: &str) -> usize {
        self.rt
            .block_on(self.state.store.waiting_for_image(debug_id, 0, 1_000))
            .expect("read waiting events")
            .len()
    }

    /// Polls `event_count` until it reaches `n` or `timeout` passes; returns the last count.
    pub fn wait_for_events(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.event_count();
            if got >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops serving and the writer (everything accepted is committed).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if !self.closed {
            self.closed = true;
            self.rt.block_on(self.state.store.close());
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A fresh outbox path in `dir`.
pub fn outbox(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-outbox.db"))
}

/// Whether the long versions of the reliability scenarios run: `ERRSCOPE_LONG=1`.
pub fn long_run() -> bool {
    static LONG: OnceLock<bool> = OnceLock::new();
    *LONG.get_or_init(|| std::env::var("ERRSCOPE_LONG").is_ok_and(|v| v == "1"))
}

/// The seed of a randomized test: `ERRSCOPE_SEED` when set (to replay a failure),
/// otherwise taken from the clock.
pub fn seed() -> u64 {
    if let Some(seed) = std::env::var("ERRSCOPE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// A small seeded pseudo-random generator (xorshift64*): the same seed draws the same
/// sequence, so a failure can be replayed.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        // The state must not be zero; the constant spreads small seeds over the bits.
        Self((seed ^ 0x9e37_79b9_7f4a_7c15).max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[low, high)` (`low` when the range is empty).
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + high.saturating_sub(low).mul_f64(self.unit())
    }
}

/// What the proxy does to the next envelope request, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reads the request head, then resets the connection (RST) mid-request.
    ResetMidRequest,
    /// Reads the request and never answers (the connection stays open for 60 s).
    NeverAnswer,
    /// `503` with `Retry-After: 1`.
    Unavailable,
    /// `429` with `Retry-After: 2`.
    RateLimited,
    /// Forwards the request (the collector stores it), then resets the connection
    /// instead of answering: the answer is lost.
    LoseAnswer,
    /// Reads the request, holds it for the stall time of [`RandomFaults`] (10 s for a
    /// scripted one) and closes the connection without an answer.
    Stall,
}

/// Faults drawn for every envelope request once the scripted ones are used up.
#[derive(Clone, Copy, Debug)]
pub struct RandomFaults {
    /// The seed of the draws: the same seed draws the same fault for the n-th request.
    pub seed: u64,
    /// Probability of a reset (RST): half of them before the request is forwarded
    /// ([`Fault::ResetMidRequest`]), half after it (the answer lost, [`Fault::LoseAnswer`]).
    pub reset: f64,
    /// Probability of a [`Fault::Stall`].
    pub stall: f64,
    /// How long a stalled request is held before its connection is closed.
    pub stall_for: Duration,
}

impl RandomFaults {
    /// Resets 20 % of the requests and stalls 5 % for 10 s.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            reset: 0.20,
            stall: 0.05,
            stall_for: Duration::from_secs(10),
        }
    }

    /// No faults: every request forwarded (a clean proxy to compare with).
    pub fn none(seed: u64) -> Self {
        Self {
            reset: 0.0,
            stall: 0.0,
            ..Self::new(seed)
        }
    }
}

/// What a proxy did with the envelope requests it received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Envelope requests (`POST`) received.
    pub requests: u64,
    /// Forwarded and answered.
    pub forwarded: u64,
    /// Reset before being forwarded.
    pub reset_mid_request: u64,
    /// Forwarded and accepted by the collector (2xx), then reset: the answer lost, so
    /// the agent sends those events again.
    pub accepted_then_reset: u64,
    /// Forwarded, refused by the collector, then reset.
    pub refused_then_reset: u64,
    /// Held, then closed without an answer.
    pub stalled: u64,
}

/// A loopback HTTP/1.1 proxy in front of the collector that injects faults: the
/// scripted ones in turn, one per envelope request, then (in random mode) one drawn for
/// each request; a `400` for every request whose body contains the poison marker; and it
/// closes every client connection that stays idle for 1 s (as servers close idle
/// keep-alive connections).
pub struct FaultProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
    rt: tokio::runtime::Runtime,
}

struct ProxyShared {
    upstream: SocketAddr,
    script: Mutex<VecDeque<Fault>>,
    poison: Option<String>,
    /// Hide `X-Errscope-Collector` from the agent, as a Sentry server would.
    sentry_like: bool,
    random: Option<Mutex<(RandomFaults, XorShift)>>,
    tally: Mutex<Tally>,
    started: Instant,
    log: Mutex<Vec<(Duration, String)>>,
}

impl FaultProxy {
    /// Starts the proxy in front of `upstream` with the faults to inject in turn and the
    /// marker of the poisoned event.
    pub fn start(upstream: SocketAddr, script: &[Fault], poison: Option<&str>) -> Self {
        Self::start_with(upstream, script, poison, false, None)
    }

    /// A proxy without faults that hides `X-Errscope-Collector`, so the agent takes the
    /// collector for a plain Sentry server; it logs `events: N` for each request.
    pub fn sentry_like(upstream: SocketAddr) -> Self {
        Self::start_with(upstream, &[], None, true, None)
    }

    /// A proxy that draws a fault for every envelope request.
    pub fn random(upstream: SocketAddr, faults: RandomFaults) -> Self {
        Self::start_with(upstream, &[], None, false, Some(faults))
    }

    fn start_with(
        upstream: SocketAddr,
        script: &[Fault],
        poison: Option<&str>,
        sentry_like: bool,
        random: Option<RandomFaults>,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(ProxyShared {
            upstream,
            script: Mutex::new(script.iter().copied().collect()),
            poison: poison.map(str::to_owned),
            sentry_like,
            random: random.map(|r| Mutex::new((r, XorShift::new(r.seed)))),
            tally: Mutex::new(Tally::default()),
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        rt.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move {
                    let _ = serve_connection(conn, &shared).await;
                });
            }
        });
        Self { addr, shared, rt }
    }

    /// What the proxy did, one line per request or closed connection.
    pub fn log(&self) -> Vec<String> {
        self.timed_log().into_iter().map(|(_, line)| line).collect()
    }

    /// What the proxy did, with the time since it started.
    pub fn timed_log(&self) -> Vec<(Duration, String)> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the proxy did with the envelope requests so far.
    pub fn tally(&self) -> Tally {
        *self
            .shared
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Faults not injected yet.
    pub fn faults_left(&self) -> usize {
        self.shared
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Stops the proxy (its connections are dropped).
    pub fn stop(self) {
        self.rt.shutdown_background();
    }
}

impl ProxyShared {
    fn note(&self, line: String) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.started.elapsed(), line));
    }

    fn count(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self.tally.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The next scripted fault, else one drawn in random mode.
    fn next_fault(&self) -> Option<Fault> {
        let scripted = self
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        scripted.or_else(|| {
            let mut random = self
                .random
                .as_ref()?
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (faults, rng) = &mut *random;
            let r = rng.unit();
            if r < faults.reset / 2.0 {
                Some(Fault::ResetMidRequest)
            } else if r < faults.reset {
                Some(Fault::LoseAnswer)
            } else if r < faults.reset + faults.stall {
                Some(Fault::Stall)
            } else {
                None
            }
        })
    }

    fn stall_for(&self) -> Duration {
        self.random.as_ref().map_or(Duration::from_secs(10), |r| {
            r.lock().unwrap_or_else(PoisonError::into_inner).0.stall_for
        })
    }
}

const IDLE_CLOSE: Duration = Duration::from_secs(1);

async fn serve_connection(mut conn: TcpStream, shared: &ProxyShared) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head = match tokio::time::timeout(IDLE_CLOSE, read_head(&mut conn, &mut buf)).await {
            Err(_) => {
                shared.note("closed an idle connection".into());
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Ok(Some(head)) => head,
        };
        let fault = if head.starts_with("POST ") {
            shared.note("request".into());
            shared.count(|t| t.requests += 1);
            shared.next_fault()
        } else {
            None
        };
        if fault == Some(Fault::ResetMidRequest) {
            shared.note("reset mid-request".into());
            shared.count(|t| t.reset_mid_request += 1);
            conn.set_zero_linger()?;
            return Ok(());
        }
        let body = read_body(&mut conn, &head, &mut buf).await?;
        match fault {
            Some(Fault::NeverAnswer) => {
                shared.note("never answered".into());
                tokio::time::sleep(Duration::from_secs(60)).await;
                return Ok(());
            }
            Some(Fault::Unavailable) => {
                shared.note("answered 503".into());
                respond(&mut conn, "503 Service Unavailable", "retry-after: 1\r\n").await?;
                continue;
            }
            Some(Fault::RateLimited) => {
                shared.note("answered 429".into());
                respond(&mut conn, "429 Too Many Requests", "retry-after: 2\r\n").await?;
                continue;
            }
            Some(Fault::LoseAnswer) => {
                let response = forward(shared.upstream, &head, &body, false).await?;
                shared.note("forwarded, then lost the answer".into());
                if response.starts_with(b"HTTP/1.1 2") {
                    shared.count(|t| t.accepted_then_reset += 1);
                } else {
                    shared.count(|t| t.refused_then_reset += 1);
                }
                conn.set_zero_linger()?;
                return Ok(());
            }
            Some(Fault::Stall) => {
                shared.note("stalled".into());
                shared.count(|t| t.stalled += 1);
                tokio::time::sleep(shared.stall_for()).await;
                return Ok(());
            }
            Some(Fault::ResetMidRequest) | None => {}
        }
        if let Some(marker) = &shared.poison
            && contains(&decoded(&head, &body), marker.as_bytes())
        {
            shared.note("answered 400 (poisoned event)".into());
            respond(
                &mut conn,
                "400 Bad Request",
                "x-errscope-collector: proxy\r\n",
            )
            .await?;
            continue;
        }
        if shared.sentry_like {
            let items = decoded(&head, &body)
                .windows(14)
                .filter(|w| w == br#""type":"event""#)
                .count();
            shared.note(format!("events: {items}"));
        }
        let response = forward(shared.upstream, &head, &body, shared.sentry_like).await?;
        if fault.is_none() && head.starts_with("POST ") {
            shared.count(|t| t.forwarded += 1);
        }
        shared.note(format!(
            "forwarded: {}",
            String::from_utf8_lossy(response.split(|b| *b == b'\r').next().unwrap_or(b""))
        ));
        conn.write_all(&response).await?;
    }
}

/// Reads up to the end of a request head; `None` at a clean end of the connection.
/// Bytes read past the head stay in `buf`.
async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn read_body(
    conn: &mut TcpStream,
    head: &str,
    buf: &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let len: usize = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = [0u8; 65536];
    while buf.len() < len {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("body timed out"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf.drain(..len).collect())
}

fn decoded(head: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    if header(head, "content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip")) {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .is_ok()
        {
            return out;
        }
    }
    body.to_vec()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

async fn respond(conn: &mut TcpStream, status: &str, extra: &str) -> std::io::Result<()> {
    let body = format!(r#"{{"detail":"injected {status}"}}"#);
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(text.as_bytes()).await
}

/// Sends the request to the collector on a connection of its own (`connection: close`)
/// and returns the whole response, minus its `connection` header (the client's
/// connection stays open) and, with `hide`, its `x-errscope-collector` header.
async fn forward(
    upstream: SocketAddr,
    head: &str,
    body: &[u8],
    hide: bool,
) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).await?;
    let mut request = String::new();
    for line in head.trim_end().lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("connection: close\r\n\r\n");
    up.write_all(request.as_bytes()).await?;
    up.write_all(body).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), up.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("collector timed out"))??;
    let Some(end) = find(&response, b"\r\n\r\n") else {
        return Err(std::io::Error::other("no response head"));
    };
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let mut out = Vec::with_capacity(response.len());
    for line in head.lines() {
        let lower = line.to_ascii_lowercase();
        let dropped = lower.starts_with("connection:")
            || (hide && lower.starts_with("x-errscope-collector:"));
        if !dropped {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response[end + 4..]);
    Ok(out)
}

/// Rows in a table of an agent's outbox, read through a connection of its own.
pub fn count_rows(db: &Path, table: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open(db).ok()?;
    // `table` is one of the outbox's own table names, never input.
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()
}

/// The event ids waiting in an agent's outbox.
pub fn event_ids(db: &Path) -> Vec<String> {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT event_id FROM events ORDER BY id") else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}
