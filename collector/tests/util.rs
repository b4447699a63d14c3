//! Helpers for the end-to-end tests: a collector on 127.0.0.1:0 over a fresh data dir.

use std::io::Write as _;
use std::net::SocketAddr;

use errscope_collector::{AppState, Config, app, start};
use serde_json::{Value, json};

pub(crate) const TOKEN: &str = "test-admin-token";
pub(crate) const PASSWORD: &str = "test-admin-password";

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) state: AppState,
    pub(crate) http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn server() -> Server {
    server_with(|_| {}).await
}

pub(crate) async fn server_with(tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let mut config = Config::new(dir.path());
    config.database = errscope_testkit::store::database_for(dir.path());
    config.public_url = format!("http://{addr}");
    config.admin_token = Some(TOKEN.into());
    config.admin_password = Some(PASSWORD.into());
    tweak(&mut config);
    let started = start(config).await.expect("start");
    let state = started.state.clone();
    errscope_collector::spawn_background(&state).expect("background tasks");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = app(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let key = {
        let projects = state.store.list_projects().await.unwrap();
        projects[0].key.clone()
    };
    Server {
        base: format!("http://{addr}"),
        key,
        state,
        http: reqwest::Client::new(),
        _dir: dir,
        stop: Some(stop),
        task: Some(task),
    }
}

impl Server {
    /// The data directory.
    #[allow(
        dead_code,
        reason = "not every test binary runs the command-line tools"
    )]
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub(crate) fn auth(&self) -> String {
        format!(
            "Sentry sentry_version=7, sentry_key={}, sentry_client=test/1.0",
            self.key
        )
    }

    pub(crate) async fn post_envelope(&self, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}/api/1/envelope/", self.base))
            .header("x-sentry-auth", self.auth())
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn api(&self, path: &str) -> (u16, Value) {
        api_at(&self.http, &self.base, path).await
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.state.store.close().await;
    }
}

/// `GET` an API path of the collector at `base` with the admin token: status and JSON body.
pub(crate) async fn api_at(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub(crate) fn event_id(n: u64) -> String {
    format!("{n:032x}")
}

/// An event the way SDKs build one: exception chain with in-app frames.
pub(crate) fn event(id: &str, function: &str, value: &str) -> Value {
    json!({
        "event_id": id,
        "timestamp": 1.7e9,
        "platform": "python",
        "level": "error",
        "environment": "production",
        "release": "shop@1.0",
        "server_name": "web-1",
        "tags": {"domain": "checkout"},
        "exception": {"values": [{
            "type": "KeyError",
            "value": value,
            "mechanism": {"type": "generic", "handled": true},
            "stacktrace": {"frames": [
                {"function": "main", "module": "shop.app", "filename": "app.py", "lineno": 10, "in_app": true},
                {"function": function, "module": "shop.cart", "filename": "cart.py", "lineno": 42, "in_app": true}
            ]}
        }]}
    })
}

/// An envelope with `length`-less items.
pub(crate) fn envelope(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    let first = events
        .first()
        .and_then(|e| e["event_id"].as_str())
        .unwrap_or("");
    writeln!(
        out,
        "{}",
        json!({"event_id": first, "sent_at": "2026-11-22T10:00:00Z"})
    )
    .unwrap();
    for e in events {
        writeln!(out, "{}", json!({"type": "event"})).unwrap();
        writeln!(out, "{e}").unwrap();
    }
    out
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A hand-written HTTP/1.1 request with `Transfer-Encoding: chunked`.
pub(crate) async fn raw_chunked_post(
    base: &str,
    path: &str,
    body: &[u8],
    chunk: usize,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-sentry-envelope\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in body.chunks(chunk) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    sock.write_all(&req).await.unwrap();
    let mut resp = Vec::new();
    sock.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The collector binary running as a child process.
pub(crate) struct Child {
    pub(crate) child: tokio::process::Child,
    pub(crate) base: String,
    pub(crate) dsn: Option<String>,
    pub(crate) stdout: Vec<String>,
}

/// Starts `errscope-collector serve --listen 127.0.0.1:0` on `data`, waiting for its
/// `listening on` line.
pub(crate) async fn spawn_binary(data: &std::path::Path, extra: &[&str]) -> Child {
    spawn_binary_with(data, extra, &[]).await
}

/// [`spawn_binary`] with these environment variables set for the collector.
pub(crate) async fn spawn_binary_with(
    data: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Child {
    use tokio::io::AsyncBufReadExt;
    let mut child = collector_command(data)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .envs(env.iter().copied())
        .env("ERRSCOPE_ADMIN_TOKEN", TOKEN)
        .env("ERRSCOPE_ADMIN_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the collector");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = Vec::new();
    let mut base = None;
    let mut dsn = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    // The env password makes `serve` always print an `admin login` line, after the others.
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("collector start timed out");
        let Some(line) = line.unwrap() else { break };
        if let Some(b) = line.strip_prefix("listening on ") {
            base = Some(b.to_owned());
        }
        if let Some(d) = line.split("DSN: ").nth(1) {
            dsn = Some(d.to_owned());
        }
        let done = line.starts_with("admin login");
        stdout.push(line);
        if done {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Child {
        child,
        base: base.expect("a `listening on` line"),
        dsn,
        stdout,
    }
}

/// The collector binary, on the store the test run asked for: with
/// `ERRSCOPE_TEST_STORE=postgres`, the PostgreSQL database of `data`
/// (`ERRSCOPE_DATABASE_URL`), the one an in-process server over `data` uses too.
pub(crate) fn collector_command(data: &std::path::Path) -> tokio::process::Command {
    collector_command_blocking(data).into()
}

/// The collector binary the tests run: this build's, or the one `ERRSCOPE_COLLECTOR_BIN`
/// names (a release build, for the long runs of `ERRSCOPE_LONG=1`).
fn collector_bin() -> std::ffi::OsString {
    std::env::var_os("ERRSCOPE_COLLECTOR_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_errscope-collector").into())
}

/// [`collector_command`], blocking.
#[allow(
    dead_code,
    reason = "not every test binary runs the command-line tools"
)]
pub(crate) fn collector_command_blocking(data: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(collector_bin());
    match errscope_testkit::store::database_for(data) {
        Some(url) => cmd.env("ERRSCOPE_DATABASE_URL", url),
        None => cmd.env_remove("ERRSCOPE_DATABASE_URL"),
    };
    cmd
}

/// A valid brotli stream holding `data` in uncompressed meta-blocks (no encoder needed):
/// WBITS=16, then per block ISLAST=0, MNIBBLES=4, MLEN-1, ISUNCOMPRESSED=1, byte-aligned
/// raw bytes; then an empty last block.
pub(crate) fn brotli_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut first = true;
    for chunk in data.chunks(65_536) {
        let mut bits: Vec<u8> = Vec::new();
        if first {
            bits.push(0); // WBITS = 16
            first = false;
        }
        bits.push(0); // ISLAST
        bits.extend([0, 0]); // MNIBBLES = 4
        let mlen = (chunk.len() - 1) as u32;
        bits.extend((0..16).map(|i| ((mlen >> i) & 1) as u8));
        bits.push(1); // ISUNCOMPRESSED
        while !bits.len().is_multiple_of(8) {
            bits.push(0);
        }
        out.extend(bits.chunks(8).map(|b| {
            b.iter()
                .enumerate()
                .fold(0u8, |acc, (i, bit)| acc | (bit << i))
        }));
        out.extend_from_slice(chunk);
    }
    out.push(0b0000_0011); // ISLAST, ISLASTEMPTY
    out
}

/// Whether the long variant of the reliability scenarios was asked for (`ERRSCOPE_LONG=1`).
#[allow(dead_code, reason = "used by tests/abuse.rs only")]
pub(crate) fn long() -> bool {
    std::env::var("ERRSCOPE_LONG").is_ok_and(|v| v == "1")
}

/// What a raw HTTP exchange saw.
#[allow(dead_code, reason = "used by tests/abuse.rs only")]
#[derive(Debug)]
pub(crate) struct Raw {
    /// Every byte the server sent.
    pub(crate) bytes: Vec<u8>,
    /// When the server closed (or reset) the connection, from the first byte written;
    /// `None` if it was still open when the exchange gave up.
    pub(crate) closed_after: Option<std::time::Duration>,
    /// Whether every write went through (the server had not cut the client off).
    pub(crate) wrote_all: bool,
}

#[allow(dead_code, reason = "used by tests/abuse.rs only")]
impl Raw {
    /// The status of the first response, if one arrived.
    pub(crate) fn status(&self) -> Option<u16> {
        let line = self.bytes.split(|b| *b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    }

    /// The body of the first response (everything after its head).
    pub(crate) fn body(&self) -> &[u8] {
        let end =
            memchr::memmem::find(&self.bytes, b"\r\n\r\n").map_or(self.bytes.len(), |p| p + 4);
        &self.bytes[end..]
    }

    /// The value of a header of the first response.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let end = memchr::memmem::find(&self.bytes, b"\r\n\r\n")?;
        String::from_utf8_lossy(&self.bytes[..end])
            .split("\r\n")
            .skip(1)
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
    }
}

/// Connects to `addr` and writes `writes` in turn (each after its pause) while reading
/// whatever the server answers, until the server closes the connection or `limit` passes.
#[allow(dead_code, reason = "used by tests/abuse.rs only")]
pub(crate) async fn raw_exchange(
    addr: &str,
    writes: Vec<(std::time::Duration, Vec<u8>)>,
    limit: std::time::Duration,
) -> Raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = sock.into_split();
    let started = tokio::time::Instant::now();
    let wrote = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::clone(&wrote);
    let writer = tokio::spawn(async move {
        for (pause, bytes) in writes {
            tokio::time::sleep(pause).await;
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        // Keep the write side open: a half-close would end the request early.
        std::future::pending::<()>().await;
    });
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed_after = loop {
        match tokio::time::timeout_at(started + limit, rd.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0) | Err(_)) => break Some(started.elapsed()),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    writer.abort();
    Raw {
        bytes,
        closed_after,
        wrote_all: wrote.load(std::sync::atomic::Ordering::SeqCst),
    }
}

/// The peak (`VmHWM`) and current (`VmRSS`) resident memory of a process, in KiB.
#[allow(dead_code, reason = "used by tests/abuse.rs only")]
pub(crate) fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
