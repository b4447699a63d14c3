//! Alerts end to end: rules over the API, a real HTTP receiver on 127.0.0.1:0 and a real
//! SMTP server (Python's aiosmtpd, run as a child process) receiving what the collector
//! sends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::util::*;

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    answered: u16,
    at: std::time::Instant,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Default)]
struct Script {
    got: Vec<Got>,
    /// Per path: the statuses to answer before 200s.
    answers: HashMap<String, VecDeque<u16>>,
    /// Per path: answer this forever (after the scripted ones).
    always: HashMap<String, u16>,
    /// Per path: the `Retry-After` header of the answers that are not 200.
    retry_after: HashMap<String, String>,
}

/// An HTTP server on 127.0.0.1:0 that records every request.
pub(crate) struct Receiver {
    pub(crate) base: String,
    script: Arc<Mutex<Script>>,
}

async fn record(
    State(s): State<Arc<Mutex<Script>>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let mut s = s.lock().unwrap();
    let path = uri.path().to_owned();
    let code = s
        .answers
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .or_else(|| s.always.get(&path).copied())
        .unwrap_or(200);
    let mut resp = (StatusCode::from_u16(code).unwrap(), "ok").into_response();
    if let Some(v) = s.retry_after.get(&path).filter(|_| code != 200) {
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v.parse().unwrap());
    }
    s.got.push(Got {
        path,
        headers,
        body: body.to_vec(),
        answered: code,
        at: std::time::Instant::now(),
    });
    resp
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let script = Arc::new(Mutex::new(Script::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(script.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { base, script }
    }

    fn answer(&self, path: &str, codes: &[u16]) {
        self.script
            .lock()
            .unwrap()
            .answers
            .insert(path.into(), codes.iter().copied().collect());
    }

    fn retry_after(&self, path: &str, value: &str) {
        let mut s = self.script.lock().unwrap();
        s.retry_after.insert(path.into(), value.into());
    }

    fn always(&self, path: &str, code: Option<u16>) {
        let mut s = self.script.lock().unwrap();
        match code {
            Some(c) => s.always.insert(path.into(), c),
            None => s.always.remove(path),
        };
    }

    pub(crate) fn got(&self, path: &str) -> Vec<Got> {
        self.script
            .lock()
            .unwrap()
            .got
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got `n` requests answered 2xx (or fails after 20 s).
    pub(crate) async fn wait_ok(&self, path: &str, n: usize) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<Got> = self
                .got(path)
                .into_iter()
                .filter(|g| g.answered < 300)
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: {} of {n} deliveries arrived: {:?}",
                got.len(),
                self.got(path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// With a certificate and key (argv 2 and 3), the server offers STARTTLS and takes neither
// AUTH nor MAIL before it; each mail records the TLS version its session used (or null).
const SMTP_SERVER: &str = r#"
import json, logging, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

class Handler:
    async def handle_DATA(self, server, session, envelope):
        tls = session.ssl["cipher"][1] if session.ssl else None
        print(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos, "tls": tls,
                          "data": envelope.content.decode("utf-8", "replace")}), flush=True)
        return "250 OK"

def auth(server, session, envelope, mechanism, data):
    return AuthResult(success=data.login == b"alerts" and data.password == b"s3cret")

# Refused handshakes are expected; the tests read what arrived, not the server's log.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)
tls = {}
if len(sys.argv) > 3:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    tls = dict(tls_context=ctx, require_starttls=True)
c = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]), authenticator=auth,
               auth_required=True, auth_require_tls=bool(tls), **tls)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

/// aiosmtpd on 127.0.0.1, requiring the login `alerts`/`s3cret`; mails arrive as JSON lines.
/// [`Smtp::start_tls`] offers (and requires) STARTTLS.
pub(crate) struct Smtp {
    pub(crate) url: String,
    mails: Arc<Mutex<Vec<Value>>>,
    _child: tokio::process::Child,
}

impl Smtp {
    pub(crate) async fn start() -> Smtp {
        Smtp::spawn(&[]).await
    }

    /// With the server certificate (PEM) and its key at these paths.
    async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Smtp {
        Smtp::spawn(&[cert, key]).await
    }

    async fn spawn(tls: &[&std::path::Path]) -> Smtp {
        use tokio::io::AsyncBufReadExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new("python3")
            .args(["-W", "ignore", "-c", SMTP_SERVER, &port.to_string()])
            .args(tls)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with aiosmtpd (scripts/setup installs it)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("aiosmtpd start timed out")
            .unwrap();
        assert_eq!(first.as_deref(), Some("ready"), "aiosmtpd did not start");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m = mails.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                m.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        Smtp {
            url: format!("smtp://alerts:s3cret@127.0.0.1:{port}"),
            mails,
            _child: child,
        }
    }

    fn mails(&self) -> Vec<Value> {
        self.mails.lock().unwrap().clone()
    }

    async fn wait(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.mails().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} mails arrived",
                self.mails().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.mails()
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create_rule(http: &reqwest::Client, base: &str, rule: Value) -> i64 {
    let (st, body) = call(
        http,
        reqwest::Method::POST,
        format!("{base}/api/0/projects/1/alerts/"),
        Some(rule),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    body["id"].as_i64().unwrap()
}

async fn deliveries(http: &reqwest::Client, base: &str, rule: i64) -> Vec<Value> {
    let (st, body) = api_at(http, base, &format!("/api/0/alerts/{rule}/deliveries/")).await;
    assert_eq!(st, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn send(s: &Server, ids: std::ops::Range<u64>, function: &str) {
    let events: Vec<Value> = ids.map(|n| event(&event_id(n), function, "'x'")).collect();
    for chunk in events.chunks(50) {
        let r = s.post_envelope(envelope(chunk)).await;
        assert_eq!(r.status(), 200);
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn new_issue_then_storm_then_regression_over_webhook_slack_and_email() {
    let recv = Receiver::start().await;
    let smtp = Smtp::start().await;
    let smtp_url = smtp.url.clone();
    let s = server_with(move |c| {
        c.alerts.smtp_url = Some(smtp_url);
        c.alerts.smtp_from = Some("errscope <alerts@errscope.test>".into());
    })
    .await;
    let base = &s.base;
    let hook = create_rule(
        &s.http,
        base,
        json!({"name": "new to hook", "trigger": "new_issue",
        "filter": {"level": "warning", "environment": "production"},
        "channel": {"type": "webhook", "url": format!("{}/hook", recv.base), "secret": "k3y"}}),
    )
    .await;
    let slack = create_rule(
        &s.http,
        base,
        json!({"name": "new to chat", "trigger": "new_issue",
        "channel": {"type": "slack", "url": format!("{}/slack", recv.base)}}),
    )
    .await;
    let mail = create_rule(
        &s.http,
        base,
        json!({"name": "new by mail", "trigger": "new_issue",
        "channel": {"type": "email", "to": ["oncall@shop.test"]}}),
    )
    .await;
    let regress = create_rule(
        &s.http,
        base,
        json!({"name": "back again", "trigger": "regression",
        "channel": {"type": "webhook", "url": format!("{}/regress", recv.base)}}),
    )
    .await;
    // A filter that does not match: nothing for staging-only rules.
    let staging = create_rule(
        &s.http,
        base,
        json!({"name": "staging only", "trigger": "new_issue",
        "filter": {"environment": "staging"},
        "channel": {"type": "webhook", "url": format!("{}/staging", recv.base)}}),
    )
    .await;

    send(&s, 1..2, "checkout").await;
    let got = recv.wait_ok("/hook", 1).await;
    let body = got[0].json();
    assert_eq!(body["action"], "triggered");
    assert_eq!(body["trigger"], "new_issue");
    assert_eq!(body["rule"]["name"], "new to hook");
    assert_eq!(body["project"]["name"], "default");
    assert_eq!(body["issue"]["class"], "KeyError");
    assert_eq!(body["issue"]["count"], 1);
    assert_eq!(body["issue"]["culprit"], "shop.cart in checkout");
    let issue_id = body["issue"]["id"].as_i64().unwrap();
    assert_eq!(body["issue"]["url"], format!("{base}/issues/{issue_id}"));
    assert_eq!(body["event"]["event_id"], event_id(1));
    assert_eq!(body["event"]["release"], "shop@1.0");
    assert_eq!(body["event"]["tags"]["domain"], "checkout");
    assert_eq!(
        got[0].header("x-errscope-signature"),
        format!("sha256={}", hmac_hex("k3y", &got[0].body))
    );
    assert_eq!(got[0].header("x-errscope-delivery").len(), 36);
    let sl = recv.wait_ok("/slack", 1).await[0].json();
    assert!(
        sl["text"]
            .as_str()
            .unwrap()
            .starts_with("New issue in default: KeyError"),
        "{sl}"
    );
    assert!(
        sl["blocks"]
            .to_string()
            .contains(&format!("{base}/issues/{issue_id}")),
        "{sl}"
    );
    assert!(
        sl["blocks"].to_string().contains("shop.cart in checkout"),
        "{sl}"
    );
    let mails = smtp.wait(1).await;
    assert_eq!(mails[0]["to"], json!(["oncall@shop.test"]));
    assert_eq!(mails[0]["from"], "alerts@errscope.test");
    let data = mails[0]["data"].as_str().unwrap();
    assert!(
        data.contains("Subject: [errscope] New issue in default: KeyError"),
        "{data}"
    );
    assert!(
        data.contains("text/plain") && data.contains("text/html"),
        "{data}"
    );

    // 1,000 more events of the same issue: acknowledged after their transaction, which is
    // where alerts are queued, so the log is final once the last one is answered.
    send(&s, 2..1002, "checkout").await;
    for rule in [hook, slack, mail] {
        let d = deliveries(&s.http, base, rule).await;
        assert_eq!(d.len(), 1, "rule {rule}: {d:?}");
        assert_eq!(d[0]["status"], "sent");
        assert_eq!(d[0]["trigger"], "new_issue");
    }
    assert!(deliveries(&s.http, base, staging).await.is_empty());
    assert!(deliveries(&s.http, base, regress).await.is_empty());

    // Resolve, then one event: one regression, and no new-issue message.
    let (st, _) = call(
        &s.http,
        reqwest::Method::PUT,
        format!("{base}/api/0/issues/{issue_id}/"),
        Some(json!({"status": "resolved"})),
    )
    .await;
    assert_eq!(st, 200);
    send(&s, 5000..5001, "checkout").await;
    let r = recv.wait_ok("/regress", 1).await[0].json();
    assert_eq!(r["trigger"], "regression");
    assert_eq!(r["issue"]["count"], 1002);
    send(&s, 5001..5003, "checkout").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/regress").len(), 1);
    assert_eq!(recv.got("/hook").len(), 1);
    assert_eq!(recv.got("/slack").len(), 1);
    assert_eq!(smtp.mails().len(), 1);
    assert!(recv.got("/staging").is_empty());
    s.stop().await;
}

#[tokio::test]
async fn frequency_sends_one_alert_per_interval() {
    let recv = Receiver::start().await;
    // An alert "minute" of 2 s keeps the test short.
    let s = server_with(|c| c.alerts.minute = Duration::from_secs(2)).await;
    let rule = create_rule(
        &s.http,
        &s.base,
        json!({"name": "storm", "trigger": "frequency",
        "count": 20, "minutes": 1, "interval_minutes": 1,
        "channel": {"type": "webhook", "url": format!("{}/freq", recv.base)}}),
    )
    .await;
    let started = tokio::time::Instant::now();
    // 20 events: not more than 20, nothing.
    send(&s, 1..21, "storm").await;
    assert!(deliveries(&s.http, &s.base, rule).await.is_empty());
    for i in 0..3 {
        send(&s, 21 + i * 10..31 + i * 10, "storm").await;
    }
    let got = recv.wait_ok("/freq", 1).await;
    assert_eq!(got[0].json()["trigger"], "frequency");
    assert_eq!(deliveries(&s.http, &s.base, rule).await.len(), 1);
    // The next interval: another burst, another alert; a third burst inside it, none.
    tokio::time::sleep_until(started + Duration::from_millis(2300)).await;
    send(&s, 100..125, "storm").await;
    recv.wait_ok("/freq", 2).await;
    send(&s, 200..225, "storm").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(deliveries(&s.http, &s.base, rule).await.len(), 2);
    assert_eq!(recv.got("/freq").len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn retries_until_delivered_and_marks_failed_after_the_horizon() {
    let recv = Receiver::start().await;
    recv.answer("/flaky", &[503, 503, 503]);
    recv.always("/down", Some(500));
    let s = server_with(|c| {
        c.alerts.retry_base = Duration::from_millis(100);
        c.alerts.give_up = Duration::from_millis(1500);
    })
    .await;
    let flaky = create_rule(
        &s.http,
        &s.base,
        json!({"name": "flaky", "trigger": "new_issue",
        "channel": {"type": "webhook", "url": format!("{}/flaky", recv.base)}}),
    )
    .await;
    let down = create_rule(
        &s.http,
        &s.base,
        json!({"name": "down", "trigger": "new_issue",
        "channel": {"type": "slack", "url": format!("{}/down", recv.base)}}),
    )
    .await;
    send(&s, 1..2, "f").await;
    recv.wait_ok("/flaky", 1).await;
    let got = recv.got("/flaky");
    assert_eq!(
        got.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    let id = got[0].header("x-errscope-delivery");
    assert!(
        got.iter().all(|g| g.header("x-errscope-delivery") == id),
        "one id across retries"
    );
    assert!(
        got.iter().all(|g| g.body == got[0].body),
        "the same body across retries"
    );
    let d = deliveries(&s.http, &s.base, flaky).await;
    assert_eq!(
        (d[0]["status"].as_str(), d[0]["attempts"].as_i64()),
        (Some("sent"), Some(4)),
        "{d:?}"
    );
    assert_eq!(d[0]["id"], id);
    // Always 500: retried with backoff, then failed once the horizon is reached.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let d = deliveries(&s.http, &s.base, down).await;
        if d[0]["status"] == "failed" {
            break d[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["response_status"], 500);
    assert!(
        failed["error"].as_str().unwrap().contains("gave up"),
        "{failed}"
    );
    let n = recv.got("/down").len();
    assert!(
        (2..=6).contains(&n),
        "{n} attempts in 1.5 s with a 100 ms doubling backoff"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/down").len(), n, "no attempt after failing");
    s.stop().await;
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_delivered_once() {
    let recv = Receiver::start().await;
    recv.answer("/busy", &[429]);
    recv.retry_after("/busy", "2");
    // A 50 ms backoff: a wait of seconds can only come from the receiver's Retry-After.
    let s = server_with(|c| c.alerts.retry_base = Duration::from_millis(50)).await;
    let rule = create_rule(
        &s.http,
        &s.base,
        json!({"name": "busy", "trigger": "new_issue",
        "channel": {"type": "webhook", "url": format!("{}/busy", recv.base)}}),
    )
    .await;
    send(&s, 1..2, "busy").await;
    // Between the two attempts the log shows the 429 and the retry to come.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let d = deliveries(&s.http, &s.base, rule).await;
        if d.first().is_some_and(|d| d["attempts"] == 1) {
            break d[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["response_status"], 429, "{waiting}");
    assert!(
        waiting["error"].as_str().unwrap().contains("429"),
        "{waiting}"
    );
    assert!(waiting["next_attempt"].is_string(), "{waiting}");
    recv.wait_ok("/busy", 1).await;
    let got = recv.got("/busy");
    assert_eq!(
        got.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [429, 200]
    );
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "retried {waited:?} after a `Retry-After: 2`"
    );
    assert_eq!(
        got[0].header("x-errscope-delivery"),
        got[1].header("x-errscope-delivery")
    );
    let d = deliveries(&s.http, &s.base, rule).await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (
            d[0]["status"].as_str(),
            d[0]["attempts"].as_i64(),
            d[0]["response_status"].as_i64()
        ),
        (Some("sent"), Some(2), Some(200)),
        "{d:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/busy").len(), 2, "delivered once");
    s.stop().await;
}

/// A CA and a server certificate for 127.0.0.1 it signed, as PEM files in `dir`: the CA's
/// certificate, the server's certificate and the server's key.
fn test_certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "errscope test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().unwrap();
    let cert_pem = server.signed_by(&key, &issuer).unwrap().pem();
    let paths = ["ca.pem", "server.pem", "server.key"].map(|f| dir.join(f));
    for (path, pem) in paths.iter().zip([ca_pem, cert_pem, key.serialize_pem()]) {
        std::fs::write(path, pem).unwrap();
    }
    paths
}

/// Polls the delivery log of `rule` until its newest delivery passes `done`.
async fn wait_delivery(
    http: &reqwest::Client,
    base: &str,
    rule: i64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = deliveries(http, base, rule).await;
        if let Some(first) = d.first().filter(|d| done(d)) {
            return first.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn email_goes_over_starttls_to_a_server_the_collector_trusts() {
    let certs = tempfile::tempdir().unwrap();
    let [ca, cert, key] = test_certificates(certs.path());
    // Offers STARTTLS, and takes neither the login nor a mail before it.
    let smtp = Smtp::start_tls(&cert, &key).await;
    let rule = json!({"name": "mail", "trigger": "new_issue",
        "channel": {"type": "email", "to": ["oncall@shop.test"]}});
    let from = "errscope <alerts@errscope.test>";

    // The system's roots do not know the test CA: the certificate is refused, nothing is
    // sent, and the log says why (a TLS failure is retried later).
    let smtp_url = smtp.url.clone();
    let s = server_with(move |c| {
        c.alerts.smtp_url = Some(smtp_url);
        c.alerts.smtp_from = Some(from.into());
    })
    .await;
    let untrusted = create_rule(&s.http, &s.base, rule.clone()).await;
    send(&s, 1..2, "tls").await;
    let d = wait_delivery(&s.http, &s.base, untrusted, |d| d["attempts"] == 1).await;
    assert_eq!(d["status"], "queued", "{d}");
    assert!(d["error"].as_str().unwrap().contains("certificate"), "{d}");
    s.stop().await;

    // A collector whose roots are the test CA (`SSL_CERT_FILE`, which the platform
    // verifier reads on Linux) upgrades the session and delivers.
    let data = tempfile::tempdir().unwrap();
    let c = spawn_binary_with(
        data.path(),
        &["--smtp-url", &smtp.url, "--smtp-from", from],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    )
    .await;
    let http = reqwest::Client::new();
    let trusted = create_rule(&http, &c.base, rule).await;
    let key = c.dsn.as_deref().unwrap()["http://".len()..]
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let r = http
        .post(format!("{}/api/1/envelope/?sentry_key={key}", c.base))
        .body(envelope(&[event(&event_id(1), "tls", "v")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mails = smtp.wait(1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0]["tls"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "the session was not encrypted: {}",
        mails[0]["tls"]
    );
    assert_eq!(mails[0]["to"], json!(["oncall@shop.test"]));
    let data = mails[0]["data"].as_str().unwrap();
    assert!(
        data.contains("Subject: [errscope] New issue in default: KeyError"),
        "{data}"
    );
    let d = wait_delivery(&http, &c.base, trusted, |d| d["status"] != "queued").await;
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_i64()),
        (Some("sent"), Some(1)),
        "{d}"
    );
}

#[tokio::test]
async fn email_that_requires_tls_is_never_sent_in_clear() {
    // No STARTTLS on offer, and the URL insists on it.
    let smtp = Smtp::start().await;
    let smtp_url = format!("{}?tls=required", smtp.url);
    let s = server_with(move |c| {
        c.alerts.smtp_url = Some(smtp_url);
        c.alerts.smtp_from = Some("alerts@errscope.test".into());
    })
    .await;
    let rule = create_rule(
        &s.http,
        &s.base,
        json!({"name": "mail", "trigger": "new_issue",
        "channel": {"type": "email", "to": ["oncall@shop.test"]}}),
    )
    .await;
    send(&s, 1..2, "clear").await;
    let d = wait_delivery(&s.http, &s.base, rule, |d| d["status"] != "queued").await;
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{d}"
    );
    assert!(d["error"].as_str().unwrap().contains("STARTTLS"), "{d}");
    assert!(smtp.mails().is_empty(), "{:?}", smtp.mails());
    s.stop().await;
}

#[tokio::test]
async fn rules_api_validates_tests_and_unmutes() {
    let recv = Receiver::start().await;
    let s = server().await;
    let base = &s.base;
    let url = format!("{base}/api/0/projects/1/alerts/");
    let bad = |body: Value, want: &'static str| {
        let (http, url) = (s.http.clone(), url.clone());
        async move {
            let (st, b) = call(&http, reqwest::Method::POST, url, Some(body)).await;
            assert_eq!(st, 400, "{b}");
            assert!(
                b["detail"].as_str().unwrap().contains(want),
                "{b} should say {want}"
            );
        }
    };
    bad(
        json!({"trigger": "new_issue", "channel": {"type": "slack", "url": "https://chat.test/x"}}),
        "name",
    )
    .await;
    bad(json!({"name": "x", "trigger": "sometimes", "channel": {"type": "slack", "url": "https://chat.test/x"}}), "trigger").await;
    bad(json!({"name": "x", "trigger": "frequency", "count": 5, "channel": {"type": "slack", "url": "https://chat.test/x"}}), "minutes").await;
    bad(json!({"name": "x", "trigger": "new_issue", "channel": {"type": "webhook", "url": "file:///etc/passwd"}}), "http or https").await;
    bad(json!({"name": "x", "trigger": "new_issue", "channel": {"type": "webhook", "url": format!("{base}/api/1/store/")}}), "this collector itself").await;
    bad(json!({"name": "x", "trigger": "new_issue", "channel": {"type": "email", "to": ["a@b.test"]}}), "--smtp-url").await;
    bad(json!({"name": "x", "trigger": "new_issue", "filter": {"kind": "bug"}, "channel": {"type": "slack", "url": "https://chat.test/x"}}), "filter.kind").await;
    // Admin only.
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let id = create_rule(
        &s.http,
        base,
        json!({"name": "unmuted", "trigger": "unmute",
        "channel": {"type": "webhook", "url": format!("{}/unmute", recv.base), "secret": "s1"}}),
    )
    .await;
    let (st, r) = api_at(&s.http, base, &format!("/api/0/alerts/{id}/")).await;
    assert_eq!(st, 200);
    assert_eq!(
        r["channel"],
        json!({"type": "webhook", "url": format!("{}/unmute", recv.base), "has_secret": true})
    );
    assert_eq!(r["interval_minutes"], 30);
    // PUT without a secret keeps it.
    let (st, r) = call(
        &s.http,
        reqwest::Method::PUT,
        format!("{base}/api/0/alerts/{id}/"),
        Some(json!({
        "name": "unmuted!", "trigger": "unmute", "interval_minutes": 5,
        "channel": {"type": "webhook", "url": format!("{}/unmute", recv.base)}})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["name"].as_str(), r["channel"]["has_secret"].as_bool()),
        (Some("unmuted!"), Some(true))
    );
    let (_, list) = api_at(&s.http, base, "/api/0/projects/1/alerts/").await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // A test message: sent now, signed, logged as a `test` delivery.
    let (st, d) = call(
        &s.http,
        reqwest::Method::POST,
        format!("{base}/api/0/alerts/{id}/test/"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        (d["status"].as_str(), d["trigger"].as_str()),
        (Some("sent"), Some("test"))
    );
    let got = recv.got("/unmute");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["action"], "test");
    assert_eq!(
        got[0].header("x-errscope-signature"),
        format!("sha256={}", hmac_hex("s1", &got[0].body))
    );

    // Mute, events (nothing), unmute: one alert.
    send(&s, 1..2, "muted").await;
    let (_, issues) = s.api("/api/0/projects/1/issues/").await;
    let issue = issues["data"][0]["id"].as_i64().unwrap();
    for status in ["muted", "unresolved"] {
        let (st, _) = call(
            &s.http,
            reqwest::Method::PUT,
            format!("{base}/api/0/issues/{issue}/"),
            Some(json!({"status": status})),
        )
        .await;
        assert_eq!(st, 200);
        if status == "muted" {
            send(&s, 2..3, "muted").await;
        }
    }
    let got = recv.wait_ok("/unmute", 2).await;
    assert_eq!(got[1].json()["trigger"], "unmute");
    assert_eq!(got[1].json()["issue"]["id"], issue);

    let (st, _) = call(
        &s.http,
        reqwest::Method::DELETE,
        format!("{base}/api/0/alerts/{id}/"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = api_at(&s.http, base, &format!("/api/0/alerts/{id}/")).await;
    assert_eq!(st, 404);
    s.stop().await;
}

#[tokio::test]
async fn muted_issues_send_nothing() {
    let recv = Receiver::start().await;
    let s = server().await;
    let rule = create_rule(
        &s.http,
        &s.base,
        json!({"name": "freq", "trigger": "frequency",
        "count": 1, "minutes": 10, "interval_minutes": 0,
        "channel": {"type": "webhook", "url": format!("{}/m", recv.base)}}),
    )
    .await;
    send(&s, 1..2, "quiet").await;
    let (_, issues) = s.api("/api/0/projects/1/issues/").await;
    let issue = issues["data"][0]["id"].as_i64().unwrap();
    let (st, _) = call(
        &s.http,
        reqwest::Method::PUT,
        format!("{}/api/0/issues/{issue}/", s.base),
        Some(json!({"status": "muted"})),
    )
    .await;
    assert_eq!(st, 200);
    send(&s, 2..40, "quiet").await;
    assert!(deliveries(&s.http, &s.base, rule).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn queued_alerts_survive_sigkill_and_are_delivered_once() {
    let recv = Receiver::start().await;
    recv.always("/later", Some(503));
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--alert-retry-ms", "300"];
    let c = spawn_binary(dir.path(), &flags).await;
    let http = reqwest::Client::new();
    let key = {
        let (_, p) = api_at(&http, &c.base, "/api/0/projects/1/").await;
        p["dsn"]
            .as_str()
            .unwrap()
            .split("://")
            .nth(1)
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .to_owned()
    };
    create_rule(
        &http,
        &c.base,
        json!({"name": "later", "trigger": "new_issue",
        "channel": {"type": "webhook", "url": format!("{}/later", recv.base)}}),
    )
    .await;
    let now_rule = create_rule(
        &http,
        &c.base,
        json!({"name": "now", "trigger": "new_issue",
        "channel": {"type": "webhook", "url": format!("{}/now", recv.base)}}),
    )
    .await;
    for (i, f) in ["a", "b", "c"].iter().enumerate() {
        let r = http
            .post(format!("{}/api/1/envelope/?sentry_key={key}", c.base))
            .body(envelope(&[event(&event_id(i as u64 + 1), f, "v")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    recv.wait_ok("/now", 3).await;
    // Every `later` delivery has been tried (503) and is waiting for its retry, and every
    // `now` delivery is recorded as sent (a message the receiver got but the collector
    // had not recorded yet would rightly be sent again after the kill).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = deliveries(&http, &c.base, now_rule)
            .await
            .iter()
            .filter(|d| d["status"] == "sent")
            .count();
        if recv.got("/later").len() >= 3 && sent == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = c;
    c.child.start_kill().unwrap();
    c.child.wait().await.unwrap();
    // A `now` message may have gone twice before the kill (an attempt that timed out on a
    // loaded machine after the receiver got it is retried, under the same delivery id);
    // what counts is that each went under one id and none goes again after the restart.
    let now_before_kill = recv.got("/now");
    let mut now_ids: Vec<String> = now_before_kill
        .iter()
        .map(|g| g.header("x-errscope-delivery"))
        .collect();
    now_ids.sort();
    now_ids.dedup();
    assert_eq!(now_ids.len(), 3, "three `now` deliveries: {now_ids:?}");
    let sql = "SELECT count(*) FROM alert_deliveries WHERE status = 'queued'";
    let queued: i64 = match errscope_testkit::store::database_for(dir.path()) {
        Some(url) => errscope_testkit::pg::query(&url, sql).unwrap()[0].get(0),
        None => rusqlite::Connection::open(dir.path().join("errscope.sqlite3"))
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap(),
    };
    assert_eq!(queued, 3, "three deliveries queued at the kill");

    recv.always("/later", None);
    let c2 = spawn_binary(dir.path(), &flags).await;
    let got = recv.wait_ok("/later", 3).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|g| g.header("x-errscope-delivery"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        3,
        "three distinct deliveries, each delivered once: {ids:?}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        recv.wait_ok("/later", 3).await.len(),
        3,
        "nothing delivered twice"
    );
    assert_eq!(
        recv.got("/now").len(),
        now_before_kill.len(),
        "what was sent before the kill is not sent again"
    );
    drop(c2);
}
