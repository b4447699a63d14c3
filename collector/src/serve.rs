//! The HTTP/1.1 server loop and its deadlines for slow clients.
//!
//! `axum::serve` gives hyper no timer, so hyper's header read timeout is off and a client
//! that trickles its request head (or keeps an idle keep-alive connection) holds the
//! connection forever. [`serve`] runs the router on hyper's HTTP/1.1 connections with a
//! timer and [`Config::header_timeout`](crate::Config::header_timeout), which bounds both
//! the time to send a request head and the idle time between keep-alive requests.
//! [`body_deadline`] (a layer of [`app`](crate::app)) bounds the time to send a body, and
//! [`serve_with`] caps the connections open at once, closing idle ones first; [`bind`]
//! makes a listener whose backlog holds a burst past that cap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};

use crate::state::AppState;

/// The listen backlog [`bind`] asks for: connections the kernel completes and queues
/// before the collector accepts them (Linux caps it at `net.core.somaxconn`, 4096 by
/// default since 5.4).
///
/// tokio's `TcpListener::bind` asks for 1,024. A burst past that (idle sockets hoarded
/// while clients send events) overflows the queue, and Linux then drops the handshake's
/// last ACK: the client believes it is connected and has sent its request, the collector
/// gets the connection only after retransmissions, seconds later, and until that request
/// arrives it looks idle and is the first closed to make room.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR` on Unix, as
/// tokio's own `bind`); must be called within a tokio runtime.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How [`serve_with`] runs.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The time to send a request head, and the longest a keep-alive connection may idle.
    pub header_timeout: Duration,
    /// Connections open at once; at the cap, the connection idle the longest is closed to
    /// make room (one in the middle of a request never is).
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// the requests in flight finish and returns when every connection has closed.
///
/// Bind `listener` with [`bind`] to take bursts of connections past the cap.
///
/// A request head (or the next one on a keep-alive connection) must arrive within
/// `header_timeout`, or the connection is closed without an answer. At most 1,024
/// connections are open at once (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let options = ServeOptions {
        header_timeout,
        max_connections: 1024,
    };
    serve_with(listener, router, options, shutdown).await;
}

/// [`serve`] with every option: at `max_connections` open connections, the one that has
/// been idle longest (between keep-alive requests, or opened and sent nothing yet) is
/// closed before the next is accepted, so whoever hoards idle sockets loses them, not a
/// client sending a request. When every connection is in a request, accepting waits.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let conns = Arc::new(Conns::default());
    let max = options.max_connections.max(1);
    let mut next_id = 0u64;
    let mut shutdown = std::pin::pin!(shutdown);
    'accept: loop {
        // Room first: evict the longest idle connection, or wait for one to free up.
        while !conns.make_room(max) {
            tokio::select! {
                () = conns.changed.notified() => {}
                () = &mut shutdown => break 'accept,
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are small and answer a request: never hold them back (Nagle).
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let evicted = conns.open(id);
        let svc = TowerToHyperService::new(router.clone());
        let slot = Slot {
            conns: Arc::clone(&conns),
            id,
        };
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            // The client's address for login throttling (forwarded headers are not trusted).
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let busy = slot.busy();
            let fut = hyper::service::Service::call(&svc, req);
            async move {
                let r = fut.await;
                drop(busy);
                r
            }
        });
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        let header_timeout = options.header_timeout;
        let conns = Arc::clone(&conns);
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection closed: {e}");
                    }
                }
                // Only an idle connection is evicted: dropping it loses no request.
                _ = evicted => tracing::debug!("idle connection closed to make room"),
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            conns.close(id);
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(open_rx);
    open_tx.closed().await;
}

/// The open connections: which are idle, since when, and how to close them.
#[derive(Default)]
struct Conns {
    map: std::sync::Mutex<std::collections::HashMap<u64, Conn>>,
    /// Signalled when a connection closes or becomes idle.
    changed: tokio::sync::Notify,
}

struct Conn {
    /// `None` while a request is in flight.
    idle_since: Option<std::time::Instant>,
    /// Taken when the connection is asked to close.
    evict: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Conn>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection; the receiver fires if it is evicted.
    fn open(&self, id: u64) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().insert(
            id,
            Conn {
                idle_since: Some(std::time::Instant::now()),
                evict: Some(tx),
            },
        );
        rx
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_one();
    }

    /// Whether another connection may be accepted now. At the cap, asks the longest idle
    /// connection to close (once: until it has closed, the cap still counts it), and the
    /// caller waits for [`Conns::changed`].
    fn make_room(&self, max: usize) -> bool {
        let mut map = self.lock();
        if map.len() < max {
            return true;
        }
        if map.values().any(|c| c.evict.is_none()) {
            return false;
        }
        let oldest = map
            .values_mut()
            .filter_map(|c| c.idle_since.map(|t| (t, c)))
            .min_by_key(|(t, _)| *t);
        if let Some(tx) = oldest.and_then(|(_, c)| c.evict.take()) {
            let _ = tx.send(());
        }
        false
    }
}

/// One connection's handle, to mark it busy for the length of each request.
struct Slot {
    conns: Arc<Conns>,
    id: u64,
}

impl Slot {
    fn busy(&self) -> Busy {
        if let Some(c) = self.conns.lock().get_mut(&self.id) {
            c.idle_since = None;
        }
        Busy {
            conns: Arc::clone(&self.conns),
            id: self.id,
        }
    }
}

/// Marks its connection idle again when dropped (the response is ready).
struct Busy {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(c) = self.conns.lock().get_mut(&self.id) {
            c.idle_since = Some(std::time::Instant::now());
        }
        self.conns.changed.notify_one();
    }
}

/// Raises this process's soft limit on open files to its hard limit; returns the soft
/// limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `setrlimit` reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast, reason = "rlim_t is not u64 on every unix")]
    Ok(lim.rlim_cur as u64)
}

/// Elsewhere there is no such limit to raise.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Connection-level accept errors are the client's; others (out of file descriptors)
/// are logged and retried after a pause, as hyper's own server did.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The error a request body gives once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub struct BodyTimeout(pub Duration);

/// Middleware: the body of every request must arrive within
/// [`Config::body_timeout`](crate::Config::body_timeout) of its head. A request that
/// misses it is answered `408` with `Connection: close`.
pub async fn body_deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.body_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
            expired: Arc::clone(&expired),
        })
    });
    let resp = next.run(req).await;
    if !expired.load(Relaxed) {
        return resp;
    }
    tracing::debug!("request body timed out after {limit:?}");
    let mut resp = (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(json!({ "detail": BodyTimeout(limit).to_string() })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.limit)))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: error responses the framework writes itself (an unknown method, a path
/// parameter that is not UTF-8, a body that is not JSON) get the JSON shape every other
/// error has: `{"detail": "..."}`.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        t => t.to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&json!({ "detail": detail })).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}
