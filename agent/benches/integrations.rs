//! `cargo bench -p errscope --bench integrations`: what the tower and tracing integrations
//! cost a host that records nothing, each against no integration and sentry's, interleaved.
//!
//! - `tower`: requests/s of a trivial axum handler (`GET /orders/{id}`, a short string)
//!   over 32 keep-alive loopback connections with no layer, with `ErrorLayer`, and with
//!   sentry-tower's `NewSentryLayer` + `SentryHttpLayer`; and the server thread's CPU time
//!   per request. The server runs on one thread (a current-thread runtime), the hyper
//!   client on another.
//! - `tracing`: the cost per `info!` (a breadcrumb inside a domain) and per span entered
//!   inside a domain with a `fmt` layer writing to a sink: `fmt` alone, errscope's layer
//!   plus `fmt`, sentry-tracing's layer plus `fmt`.
//!
//! `ERRSCOPE_BENCH=tower` or `ERRSCOPE_BENCH=tracing` runs one part. Without `--bench`
//! (`cargo test --all-targets`), a quick smoke run whose figures mean nothing.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;

static QUICK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn quick() -> bool {
    *QUICK.get_or_init(|| !std::env::args().any(|a| a == "--bench"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

struct DropEvents;

impl sentry::Transport for DropEvents {
    fn send_envelope(&self, envelope: sentry::Envelope) {
        black_box(envelope);
    }
}

/// Both agents initialized as a service would: errscope with an outbox, sentry with a
/// DSN (its events dropped by the transport).
fn init_agents(dir: &std::path::Path) -> (errscope::Guard, sentry::ClientInitGuard) {
    let guard = errscope::init(errscope::Options::new().database(dir.join("bench.db")));
    let mut options = sentry::ClientOptions::default();
    options.dsn = "https://public@sentry.invalid/1".parse().ok();
    options.transport = Some(Arc::new(Arc::new(DropEvents)));
    (guard, sentry::init(options))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layer {
    None,
    Errscope,
    Sentry,
}

impl Layer {
    const ALL: [Layer; 3] = [Layer::None, Layer::Errscope, Layer::Sentry];

    fn label(self) -> &'static str {
        match self {
            Layer::None => "no layer",
            Layer::Errscope => "errscope ErrorLayer",
            Layer::Sentry => "sentry-tower NewSentryLayer + SentryHttpLayer",
        }
    }
}

async fn order() -> &'static str {
    "order 42: 3 items, 59.90 EUR"
}

fn app(layer: Layer) -> Router {
    let router = Router::new().route("/orders/{id}", get(order));
    match layer {
        Layer::None => router,
        Layer::Errscope => router.layer(errscope::tower::ErrorLayer::new()),
        // `Router::layer` wraps outside what came before: the hub first, as sentry's
        // docs put them in a `ServiceBuilder`.
        Layer::Sentry => router
            .layer(sentry_tower::SentryHttpLayer::new())
            .layer(sentry_tower::NewSentryLayer::<Request<Body>>::new_from_top()),
    }
}

/// Nanoseconds the thread has run on a CPU (`/proc/self/task/<tid>/schedstat`).
fn thread_cpu_ns(tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

struct Round {
    per_sec: f64,
    /// Server thread CPU time per request, microseconds.
    server_us: Option<f64>,
}

/// One round: a fresh server with `layer` on its own thread, 32 client connections on
/// another, `warm` then `window` of counted requests.
fn tower_round(layer: Layer, warm: Duration, window: Duration) -> Round {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<(SocketAddr, i32)>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            addr_tx.send((listener.local_addr().unwrap(), tid)).unwrap();
            tokio::select! {
                _ = axum::serve(listener, app(layer)) => {}
                _ = stop_rx => {}
            }
        });
    });
    let (addr, server_tid) = addr_rx.recv().unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut conns = Vec::new();
                for _ in 0..32 {
                    let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
                    conns.push(tokio::spawn(async move {
                        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                        stream.set_nodelay(true).unwrap();
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let (mut send, conn) =
                            hyper::client::conn::http1::handshake(io).await.unwrap();
                        tokio::spawn(conn);
                        let host = addr.to_string();
                        while !stop.load(Ordering::Relaxed) {
                            let req = Request::get("/orders/42")
                                .header("host", &host)
                                .body(Empty::<Bytes>::new())
                                .unwrap();
                            send.ready().await.unwrap();
                            let res = send.send_request(req).await.unwrap();
                            assert_eq!(res.status(), 200);
                            let body = res.into_body().collect().await.unwrap().to_bytes();
                            black_box(body);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                for c in conns {
                    c.await.unwrap();
                }
            });
        })
    };
    std::thread::sleep(warm);
    let (n0, cpu0, t0) = (
        done.load(Ordering::Relaxed),
        thread_cpu_ns(server_tid),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (n1, cpu1, elapsed) = (
        done.load(Ordering::Relaxed),
        thread_cpu_ns(server_tid),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let _ = stop_tx.send(());
    server.join().unwrap();
    let n = (n1 - n0) as f64;
    Round {
        per_sec: n / elapsed.as_secs_f64(),
        server_us: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b - a) as f64 / 1e3 / n.max(1.0)),
    }
}

fn tower_bench() {
    let (rounds, warm, window) = if quick() {
        (1, Duration::from_millis(50), Duration::from_millis(200))
    } else {
        (5, Duration::from_millis(500), Duration::from_secs(3))
    };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        // Interleaved, and each round starts with another layer, so that drift in what
        // else the machine runs falls on all three alike.
        for k in 0..3 {
            let i = (round + k) % 3;
            let r = tower_round(Layer::ALL[i], warm, window);
            rates[i].push(r.per_sec);
            if let Some(us) = r.server_us {
                cpu[i].push(us);
            }
        }
    }
    println!(
        "tower: trivial axum handler, 32 keep-alive connections on loopback, server on one thread, hyper client on another; {rounds} interleaved rounds of {window:?}"
    );
    let base = median(rates[0].clone());
    let base_cpu = (!cpu[0].is_empty()).then(|| median(cpu[0].clone()));
    for (i, layer) in Layer::ALL.iter().enumerate() {
        let rate = median(rates[i].clone());
        let ratios: Vec<f64> = rates[i].iter().zip(&rates[0]).map(|(a, b)| a / b).collect();
        let server = if cpu[i].is_empty() {
            "server CPU n/a".to_owned()
        } else {
            let us = median(cpu[i].clone());
            format!(
                "server CPU {us:.2} us/request (+{:.2} us)",
                us - base_cpu.unwrap_or(us)
            )
        };
        println!(
            "  {:<46} {rate:>9.0} req/s  {:.3}x of no layer (per-round {})  {server}  rounds: {}",
            layer.label(),
            rate / base,
            list(&ratios, 3),
            list(&rates[i], 0),
        );
    }
    let ours = median(rates[1].clone());
    let theirs = median(rates[2].clone());
    println!(
        "  errscope vs sentry-tower: {:.3}x the requests/s",
        ours / theirs
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tracing {
    Fmt,
    Errscope,
    Sentry,
}

impl Tracing {
    const ALL: [Tracing; 3] = [Tracing::Fmt, Tracing::Errscope, Tracing::Sentry];

    fn label(self) -> &'static str {
        match self {
            Tracing::Fmt => "fmt layer alone",
            Tracing::Errscope => "errscope ErrscopeLayer + fmt",
            Tracing::Sentry => "sentry-tracing layer + fmt",
        }
    }
}

fn fmt_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::io::sink)
}

/// Runs `f` with the subscriber of `mode` as the thread's default.
fn with_subscriber<R>(mode: Tracing, f: impl FnOnce() -> R) -> R {
    use tracing_subscriber::prelude::*;
    let registry = tracing_subscriber::registry();
    match mode {
        Tracing::Fmt => tracing::subscriber::with_default(registry.with(fmt_layer()), f),
        Tracing::Errscope => tracing::subscriber::with_default(
            registry
                .with(errscope::tracing::ErrscopeLayer::new())
                .with(fmt_layer()),
            f,
        ),
        Tracing::Sentry => tracing::subscriber::with_default(
            registry.with(sentry_tracing::layer()).with(fmt_layer()),
            f,
        ),
    }
}

/// Nanoseconds per call of `op`, inside a domain (and sentry's hub scope).
fn per_call(mode: Tracing, n: u64, op: fn(u64)) -> f64 {
    with_subscriber(mode, || {
        let domain = errscope::Domain::new("GET /orders/{id}").tag("request_id", "r-1");
        domain
            .run_sync(|| {
                sentry::with_scope(
                    |_| {},
                    || {
                        // Warm-up: callsite interest, a full breadcrumb ring.
                        for i in 0..n / 10 {
                            op(i);
                        }
                        let start = thread_cpu();
                        for i in 0..n {
                            op(i);
                        }
                        (thread_cpu() - start).as_nanos() as f64 / n as f64
                    },
                )
            })
            .unwrap()
    })
}

/// CPU time of the calling thread: on a shared machine, time spent preempted does not
/// count against whichever mode happened to run then.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn info_event(i: u64) {
    tracing::info!(order_id = i, "priced the cart");
}

fn entered_span(i: u64) {
    let span = tracing::info_span!("price", order_id = i);
    let _entered = span.enter();
    black_box(&span);
}

fn tracing_bench() {
    let (rounds, n) = if quick() { (1, 2_000) } else { (5, 200_000) };
    for (what, op) in [
        ("info! (a breadcrumb)", info_event as fn(u64)),
        ("span created and entered", entered_span),
    ] {
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for round in 0..rounds {
            for k in 0..3 {
                let i = (round + k) % 3;
                ns[i].push(per_call(Tracing::ALL[i], n, op));
            }
        }
        println!(
            "tracing: {what} inside a domain, fmt writing to a sink; thread CPU time, {rounds} interleaved rounds of {n}"
        );
        let base = median(ns[0].clone());
        for (i, mode) in Tracing::ALL.iter().enumerate() {
            let ratios: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(a, b)| a / b).collect();
            let m = median(ns[i].clone());
            println!(
                "  {:<46} {m:>8.0} ns each  {:.2}x fmt alone (per-round {})",
                mode.label(),
                m / base,
                list(&ratios, 2),
            );
        }
    }
}

fn main() {
    let part = std::env::var("ERRSCOPE_BENCH").ok();
    if part
        .as_deref()
        .is_some_and(|p| p != "tower" && p != "tracing")
    {
        // A part of the other benchmark binary.
        return;
    }
    println!(
        "errscope integration benchmarks ({} cores){}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick() {
            " -- quick smoke run without --bench: the figures mean nothing"
        } else {
            ""
        }
    );
    let dir = tempfile::tempdir().unwrap();
    let _agents = init_agents(dir.path());
    if part.as_deref() != Some("tracing") {
        tower_bench();
    }
    if part.as_deref() != Some("tower") {
        tracing_bench();
    }
}
