//! Integration tests of the optional integrations (tower, tracing, log, anyhow): real
//! SQLite outboxes in temp dirs, a real axum server on a loopback socket.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use util::{Outbox, contains, options, serial};

/// An upper bound, not a timing: the first event of a test binary loads its debug info.
const FLUSH: Duration = Duration::from_secs(120);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Serves `app` on a fresh loopback port.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A response as the client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// One HTTP/1.1 GET over a fresh connection, read to the end (`Connection: close`);
/// a dropped connection or a hung socket fails the test.
async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        String::from_utf8(raw).expect("utf-8 response")
    };
    let raw = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("the server answered");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn events_with_tag(outbox: &Outbox, key: &str, value: &str) -> Vec<Value> {
    outbox
        .events()
        .into_iter()
        .filter(|e| e["tags"][key] == value)
        .collect()
}

async fn order_handler() -> &'static str {
    // Deep below the handler, without passing anything around.
    errscope::with_domain(|d| d.set_context("cart_items", 3));
    errscope::add_breadcrumb(errscope::Breadcrumb::new("loaded cart"));
    assert_eq!(errscope::tower::request_id().as_deref(), Some("req-7"));
    let customer: Option<&str> = std::hint::black_box(None);
    customer.expect("customer field missing")
}

async fn spawning_handler() -> &'static str {
    errscope::with_domain(|d| d.set_context("stage", "before spawn"));
    let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    errscope::spawn(async move {
        // The task dies before it answers: the handler would wait forever.
        let _keep = rx;
        panic!("pricing task died");
    });
    std::future::pending::<()>().await;
    "unreachable"
}

fn app() -> Router {
    Router::new()
        .route("/orders/{id}", get(order_handler))
        .route("/spawned", get(spawning_handler))
        .route("/busy", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }))
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
        .route("/ok", get(|| async { "fine" }))
        .layer(errscope::tower::ErrorLayer::new().record_status(StatusCode::IM_A_TEAPOT, true))
}

#[test]
fn a_panicking_handler_answers_a_json_500_and_the_event_carries_the_request() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let rt = runtime();
    let reply = rt.block_on(async {
        let addr = serve(app()).await;
        http_get(
            addr,
            "/orders/42?expand=lines",
            &[("x-request-id", "req-7"), ("user-agent", "shop-test/1.0")],
        )
        .await
    });
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-request-id"), Some("req-7"));
    let body = reply.json();
    assert_eq!(body["error"], "internal_error");
    assert_eq!(body["request_id"], "req-7");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(
        !reply.body.contains("customer field missing"),
        "the panic message is not leaked to the client"
    );
    let event_id = body["event_id"].as_str().expect("event_id").to_owned();
    assert_eq!(event_id.len(), 32);
    assert!(guard.flush(FLUSH));

    // The panic was committed before the hook returned, under the id the client got.
    let event = outbox.event(&event_id).expect("the panic event is stored");
    assert_eq!(event["level"], "fatal");
    let exc = &event["exception"]["values"][0];
    assert_eq!(exc["type"], "panic");
    assert_eq!(exc["value"], "customer field missing");
    assert_eq!(exc["mechanism"]["handled"], false);
    assert_eq!(event["tags"]["domain"], "GET /orders/{id}");
    assert_eq!(event["tags"]["route"], "/orders/{id}");
    assert_eq!(event["tags"]["method"], "GET");
    assert_eq!(event["tags"]["request_id"], "req-7");
    assert_eq!(event["tags"]["user_agent"], "shop-test/1.0");
    let domain = &event["contexts"]["domain"];
    assert_eq!(domain["name"], "GET /orders/{id}");
    assert_eq!(domain["data"]["cart_items"], 3);
    assert_eq!(domain["data"]["request"]["path"], "/orders/42");
    assert_eq!(domain["data"]["request"]["query"], "expand=lines");
    assert_eq!(event["breadcrumbs"]["values"][0]["message"], "loaded cart");
    drop(guard);
}

#[test]
fn a_panic_in_a_spawned_task_answers_the_waiting_request_with_a_500() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let rt = runtime();
    let reply = rt.block_on(async {
        let addr = serve(app()).await;
        http_get(addr, "/spawned", &[]).await
    });
    assert_eq!(reply.status, 500, "{reply:?}");
    let body = reply.json();
    let request_id = body["request_id"].as_str().expect("a generated request id");
    assert_eq!(reply.header("x-request-id"), Some(request_id));
    assert!(guard.flush(FLUSH));
    let event = outbox
        .event(body["event_id"].as_str().expect("event_id"))
        .expect("the task's panic is stored");
    assert_eq!(
        event["exception"]["values"][0]["value"],
        "pricing task died"
    );
    assert_eq!(event["tags"]["request_id"], request_id);
    assert_eq!(event["tags"]["domain"], "GET /spawned");
    assert_eq!(event["contexts"]["domain"]["data"]["stage"], "before spawn");
    // One event for the request: the handler's own future was dropped, not re-polled.
    assert_eq!(events_with_tag(&outbox, "request_id", request_id).len(), 1);
    drop(guard);
}

#[test]
fn server_errors_are_recorded_client_errors_are_not_and_secrets_stay_out() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let rt = runtime();
    let secrets = [
        ("authorization", "Bearer tok-5f1d2a-never-stored"),
        ("cookie", "sid=ck-8e7c1b-never-stored"),
        ("accept", "application/json"),
    ];
    let (missing, gone, busy, teapot, ok) = rt.block_on(async {
        let addr = serve(app()).await;
        let with_id = |id: &'static str| {
            let mut h = secrets.to_vec();
            h.push(("x-request-id", id));
            h
        };
        (
            http_get(addr, "/missing", &with_id("req-404")).await,
            http_get(addr, "/gone", &with_id("req-404b")).await,
            http_get(addr, "/busy", &with_id("req-503")).await,
            http_get(addr, "/teapot", &with_id("req-418")).await,
            http_get(addr, "/ok", &with_id("req-200")).await,
        )
    });
    assert_eq!(missing.status, 404);
    assert_eq!(gone.status, 404);
    // The handler's 404 went through the layer (the id is echoed) and was not recorded.
    assert_eq!(gone.header("x-request-id"), Some("req-404b"));
    assert_eq!(busy.status, 503);
    assert_eq!(teapot.status, 418);
    assert_eq!(ok.status, 200);
    assert_eq!(busy.header("x-request-id"), Some("req-503"));
    assert!(guard.flush(FLUSH));

    assert!(events_with_tag(&outbox, "request_id", "req-404").is_empty());
    assert!(events_with_tag(&outbox, "request_id", "req-404b").is_empty());
    assert!(events_with_tag(&outbox, "request_id", "req-200").is_empty());
    let recorded = events_with_tag(&outbox, "request_id", "req-503");
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    let event = &recorded[0];
    assert_eq!(event["level"], "error");
    assert_eq!(event["tags"]["status"], "503");
    assert_eq!(event["tags"]["route"], "/busy");
    assert_eq!(event["extra"]["status"], 503);
    let exc = &event["exception"]["values"][0];
    assert_eq!(exc["type"], "HTTP 503");
    assert_eq!(exc["value"], "GET /busy answered 503 Service Unavailable");
    let headers = &event["contexts"]["domain"]["data"]["request"]["headers"];
    assert_eq!(headers["authorization"], "[Filtered]");
    assert_eq!(headers["cookie"], "[Filtered]");
    assert_eq!(headers["accept"], "application/json");
    // A 4xx made recordable by `record_status`.
    let teapot = events_with_tag(&outbox, "request_id", "req-418");
    assert_eq!(teapot.len(), 1);
    assert_eq!(teapot[0]["exception"]["values"][0]["type"], "HTTP 418");
    drop(guard);
    let raw = outbox.raw_bytes();
    assert!(
        contains(&raw, "req-503"),
        "the check below can see the file"
    );
    assert!(!contains(&raw, "tok-5f1d2a"));
    assert!(!contains(&raw, "ck-8e7c1b"));
}

/// The global tracing subscriber and `log` logger of this test binary (both process-wide,
/// like the agent): axum runs handlers on the runtime's threads.
fn install_loggers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::prelude::*;
        let subscriber =
            tracing_subscriber::registry().with(errscope::tracing::ErrscopeLayer::new());
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        errscope::log::ErrscopeLogger::new()
            .install()
            .expect("no other logger");
    });
}

#[tracing::instrument(fields(customer = "c-9"))]
async fn report_handler() -> StatusCode {
    tracing::info!(step = 1, "loading report");
    tokio::task::yield_now().await;
    tracing::warn!("cache cold");
    tracing::debug!("below the breadcrumb level");
    {
        let span = tracing::info_span!("render", template = "monthly");
        let _entered = span.enter();
        let err = std::io::Error::from(std::io::ErrorKind::TimedOut);
        tracing::error!(
            rows = 12,
            error = &err as &dyn std::error::Error,
            "render failed"
        );
    }
    StatusCode::OK
}

#[test]
fn a_tracing_error_inside_a_request_is_captured_with_the_domain_and_breadcrumbs() {
    let _serial = serial();
    install_loggers();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let rt = runtime();
    let reply = rt.block_on(async {
        let app = Router::new()
            .route("/report", get(report_handler))
            .layer(errscope::tower::ErrorLayer::new());
        let addr = serve(app).await;
        http_get(addr, "/report", &[("x-request-id", "req-t1")]).await
    });
    assert_eq!(reply.status, 200);
    assert!(guard.flush(FLUSH));
    let events = events_with_tag(&outbox, "request_id", "req-t1");
    assert_eq!(events.len(), 1, "only the error! event: {events:#?}");
    let event = &events[0];
    assert_eq!(event["level"], "error");
    assert_eq!(event["message"], "render failed");
    assert_eq!(event["tags"]["domain"], "GET /report");
    let crumbs: Vec<&str> = event["breadcrumbs"]["values"]
        .as_array()
        .expect("breadcrumbs")
        .iter()
        .filter_map(|b| b["message"].as_str())
        .collect();
    assert_eq!(crumbs, ["loading report", "cache cold"]);
    assert_eq!(event["breadcrumbs"]["values"][0]["data"]["step"], 1);
    assert_eq!(event["breadcrumbs"]["values"][1]["level"], "warning");
    let tracing = &event["contexts"]["tracing"];
    assert_eq!(tracing["fields"]["rows"], 12);
    let spans: Vec<&str> = tracing["spans"]
        .as_array()
        .expect("span chain")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(spans, ["report_handler", "render"], "root first");
    assert_eq!(tracing["spans"][0]["fields"]["customer"], "c-9");
    assert_eq!(tracing["spans"][1]["fields"]["template"], "monthly");
    // Entered spans added their fields to the domain's context.
    let data = &event["contexts"]["domain"]["data"];
    assert_eq!(data["spans"]["report_handler"]["customer"], "c-9");
    assert_eq!(data["spans"]["render"]["template"], "monthly");
    // The `error` field is the exception chain.
    let exc = &event["exception"]["values"][0];
    assert_eq!(exc["type"], "std::io::Error");
    assert_eq!(exc["mechanism"]["data"]["io_kind"], "TimedOut");
    assert_eq!(exc["mechanism"]["type"], "tracing");
    assert!(
        event["extra"]["capture_location"]
            .as_str()
            .is_some_and(|l| l.contains("tests/integrations.rs:")),
        "{}",
        event["extra"]
    );
    drop(guard);
}

#[test]
fn log_errors_are_captured_with_the_domain_and_earlier_lines_as_breadcrumbs() {
    let _serial = serial();
    install_loggers();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let domain = errscope::Domain::new("job: import").tag("job_id", "j-5");
    domain
        .run_sync(|| {
            log::info!(file = "orders.csv"; "importing");
            log::warn!("slow disk");
            log::debug!("not kept");
            log::error!(row = 7; "bad row");
        })
        .expect("no panic");
    log::error!("outside any domain");
    assert!(guard.flush(FLUSH));
    let events = outbox.events();
    let event = events
        .iter()
        .find(|e| e["message"] == "bad row")
        .expect("the error record is stored");
    assert_eq!(event["level"], "error");
    assert_eq!(event["tags"]["job_id"], "j-5");
    assert_eq!(event["tags"]["domain"], "job: import");
    let crumbs = event["breadcrumbs"]["values"]
        .as_array()
        .expect("breadcrumbs");
    assert_eq!(crumbs.len(), 2, "{crumbs:#?}");
    assert_eq!(crumbs[0]["message"], "importing");
    assert_eq!(crumbs[0]["data"]["file"], "orders.csv");
    assert_eq!(crumbs[1]["message"], "slow disk");
    assert_eq!(event["contexts"]["log"]["fields"]["row"], 7);
    let outside = events
        .iter()
        .find(|e| e["message"] == "outside any domain")
        .expect("captured without a domain too");
    assert!(outside["tags"].get("domain").is_none());
    drop(guard);
}

/// One call site for every anyhow capture of the test (one storm fingerprint per root).
#[inline(never)]
fn report(err: &anyhow::Error) -> errscope::EventId {
    errscope::capture_anyhow(err)
}

fn read_port(text: &str) -> anyhow::Result<u16> {
    use anyhow::Context as _;
    text.trim().parse::<u16>().context("loading config")
}

fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    std::fs::read_to_string(path).context("loading config")
}

#[test]
fn anyhow_errors_with_one_context_and_different_root_causes_get_different_types() {
    let _serial = serial();
    let outbox = Outbox::new();
    // One full event per fingerprint: a second error of the same root cause is counted.
    let guard = errscope::init(options(&outbox).storm(1, Duration::from_secs(600)));
    let parse = read_port("eighty").expect_err("not a number");
    let missing = read_file(&outbox.dir.path().join("absent.toml")).expect_err("no file");
    let parse_id = report(&parse);
    let missing_id = report(&missing);
    let again = report(&read_port("-1").expect_err("negative"));
    assert!(!parse_id.is_nil() && !missing_id.is_nil());
    assert_eq!(
        again, parse_id,
        "the same root cause is the same fingerprint"
    );
    assert!(guard.flush(FLUSH));

    let root_and_top = |id: errscope::EventId| {
        let event = outbox.event(&id.to_string()).expect("stored");
        let values = event["exception"]["values"]
            .as_array()
            .expect("values")
            .clone();
        assert_eq!(values.len(), 2, "{values:#?}");
        (event, values[0].clone(), values[1].clone())
    };
    let (event, root, top) = root_and_top(parse_id);
    assert_eq!(root["type"], "core::num::error::ParseIntError");
    assert_eq!(root["value"], "invalid digit found in string");
    assert_eq!(top["type"], "anyhow::Context");
    assert_eq!(top["value"], "loading config");
    assert_eq!(top["mechanism"]["type"], "anyhow");
    assert_eq!(top["mechanism"]["handled"], true);
    // The stack: anyhow's own backtrace when it captured one (RUST_LIB_BACKTRACE), else
    // the `capture_anyhow` call's. Either way the test's frames are in it.
    let functions = util::functions(&top);
    if parse.backtrace().status() == std::backtrace::BacktraceStatus::Captured {
        assert!(
            event["extra"]["backtrace"]
                .as_str()
                .is_some_and(|s| s.starts_with("anyhow")),
            "{}",
            event["extra"]
        );
        assert!(
            functions.last().is_some_and(|f| f.contains("read_port")),
            "where the error was created: {functions:#?}"
        );
        let frames = top["stacktrace"]["frames"].as_array().expect("frames");
        assert_eq!(
            frames.last().map(|f| &f["in_app"]),
            Some(&Value::Bool(true))
        );
    } else {
        assert_eq!(event["extra"]["backtrace"], "capture_anyhow call");
        assert!(
            functions.last().is_some_and(|f| f.ends_with("report")),
            "{functions:#?}"
        );
    }

    let (_, root, top) = root_and_top(missing_id);
    assert_eq!(root["type"], "std::io::Error");
    assert_eq!(root["mechanism"]["data"]["io_kind"], "NotFound");
    assert_eq!(root["mechanism"]["meta"]["errno"]["name"], "ENOENT");
    assert_eq!(top["value"], "loading config");
    drop(guard);
}
