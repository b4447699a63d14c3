//! The sender: a background task that delivers the queued alerts, a few at a time, and
//! records each attempt; failed attempts are retried with backoff for up to a day.
//!
//! Retried: timeouts, connection errors, HTTP 408, 429 (after its `Retry-After`) and
//! 5xx, SMTP transient (4xx) replies and TLS failures. Other answers fail the delivery at
//! once, among them an SMTP server that does not offer STARTTLS when the URL requires it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::rules::Channel;
use super::{AlertError, message};
use crate::state::AppState;
use crate::store::{DeliveryRow, Due, Outcome};
use crate::time::now_ms;

/// The longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

type Smtp = (AsyncSmtpTransport<Tokio1Executor>, Mailbox);

/// Delivers alerts for one collector.
pub struct Sender {
    state: AppState,
    http: reqwest::Client,
    smtp: Option<Smtp>,
    /// Deliveries being attempted: a scan skips them.
    inflight: Mutex<HashSet<i64>>,
    /// Deliveries whose attempt is recorded, leaving `inflight` at the next scan. Not at
    /// once: a scan that read the queue before the record committed still lists them as
    /// due, and would send them again.
    finished: Mutex<Vec<i64>>,
}

/// What one attempt came to, before the retry policy.
#[derive(Debug)]
pub struct Attempt {
    /// Delivered.
    pub ok: bool,
    /// Worth retrying.
    pub transient: bool,
    /// The receiver's status (HTTP or SMTP reply code).
    pub status: Option<i64>,
    /// What the receiver asked for (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
    /// What went wrong.
    pub error: String,
}

impl Attempt {
    fn failed(transient: bool, status: Option<i64>, error: String) -> Attempt {
        Attempt {
            ok: false,
            transient,
            status,
            retry_after: None,
            error,
        }
    }
}

/// Builds the SMTP transport from `--smtp-url`/`--smtp-from` (also to check them at
/// startup).
pub fn smtp_transport(
    url: &str,
    from: Option<&str>,
    timeout: Duration,
) -> Result<Smtp, AlertError> {
    let mut u = reqwest::Url::parse(url).map_err(|e| AlertError::SmtpUrl(e.to_string()))?;
    if u.scheme() != "smtp" && u.scheme() != "smtps" {
        return Err(AlertError::SmtpUrl(format!(
            "the scheme must be smtp or smtps, not `{}`",
            u.scheme()
        )));
    }
    if u.scheme() == "smtp" && !u.query_pairs().any(|(k, _)| k == "tls") {
        // STARTTLS when the server offers it.
        u.query_pairs_mut().append_pair("tls", "opportunistic");
    }
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(u.as_str())
        .map_err(|e| AlertError::SmtpUrl(e.to_string()))?
        .timeout(Some(timeout))
        .build();
    let from = from
        .ok_or_else(|| AlertError::SmtpFrom("required with --smtp-url".into()))?
        .parse::<Mailbox>()
        .map_err(|e| AlertError::SmtpFrom(e.to_string()))?;
    Ok((transport, from))
}

/// Starts the sender on the current tokio runtime.
pub fn spawn(state: &AppState) -> Result<Arc<Sender>, AlertError> {
    let sender = Arc::new(Sender::new(state.clone())?);
    let s = sender.clone();
    tokio::spawn(async move { s.run().await });
    Ok(sender)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key size");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn retry_after(v: Option<&HeaderValue>) -> Option<Duration> {
    let s = v?.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

impl Sender {
    /// A sender for one test message (not running the queue).
    pub fn for_test(state: &AppState) -> Result<Sender, AlertError> {
        Sender::new(state.clone())
    }

    fn new(state: AppState) -> Result<Sender, AlertError> {
        let c = &state.alerts.config;
        let http = reqwest::Client::builder()
            .timeout(c.timeout)
            .connect_timeout(c.timeout.min(Duration::from_secs(5)))
            // A redirect could lead back into the collector or elsewhere unchecked.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("errscope-collector/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let smtp = match &c.smtp_url {
            Some(url) => Some(smtp_transport(url, c.smtp_from.as_deref(), c.timeout)?),
            None => None,
        };
        Ok(Sender {
            state,
            http,
            smtp,
            inflight: Mutex::new(HashSet::new()),
            finished: Mutex::new(Vec::new()),
        })
    }

    /// Whether email can be sent.
    pub fn has_smtp(&self) -> bool {
        self.smtp.is_some()
    }

    async fn run(self: Arc<Self>) {
        let alerts = self.state.alerts.clone();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            alerts.config.concurrency.max(1),
        ));
        let mut last_prune: Option<Instant> = None;
        loop {
            // Recorded before this scan reads the queue, so it sees them as recorded.
            let finished =
                std::mem::take(&mut *self.finished.lock().unwrap_or_else(|e| e.into_inner()));
            self.lock().retain(|row| !finished.contains(row));
            let now = now_ms();
            let next = match self.state.store.alerts_due(now, 64).await {
                Ok((rows, next)) => {
                    for d in rows {
                        if !self.lock().insert(d.delivery.row) {
                            continue;
                        }
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        let s = self.clone();
                        tokio::spawn(async move {
                            let row = d.delivery.row;
                            let outcome = s.policy(&d, s.attempt(&d).await);
                            s.record(row, outcome).await;
                            s.finished
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(row);
                            drop(permit);
                            s.state.alerts.wake();
                        });
                    }
                    next
                }
                Err(e) => {
                    tracing::warn!("reading the alert queue failed: {e}");
                    Some(now + 1000)
                }
            };
            if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(600)) {
                last_prune = Some(Instant::now());
                let _ = self.state.store.prune_alerts(now_ms()).await;
            }
            let wait = next.map_or(60_000, |n| (n - now_ms()).clamp(0, 60_000));
            tokio::select! {
                _ = alerts.woken() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an attempt; retried while the writer is busy, since a lost record means
    /// the delivery is sent again.
    async fn record(&self, row: i64, outcome: Outcome) {
        for _ in 0..50 {
            match self
                .state
                .store
                .record_alert_attempt(row, &outcome, now_ms())
                .await
            {
                Ok(()) => return,
                Err(crate::store::StoreError::QueueFull) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => {
                    tracing::error!("recording alert delivery {row} failed: {e}");
                    return;
                }
            }
        }
    }

    /// Turns an attempt into what is stored: sent, retry at, or failed.
    fn policy(&self, d: &Due, a: Attempt) -> Outcome {
        if a.ok {
            return Outcome::Sent { status: a.status };
        }
        let c = &self.state.alerts.config;
        if !a.transient {
            return Outcome::Failed {
                status: a.status,
                error: a.error,
            };
        }
        let attempts = d.delivery.attempts.clamp(0, 30) as u32;
        let backoff = c
            .retry_base
            .saturating_mul(2u32.saturating_pow(attempts))
            .min(MAX_BACKOFF);
        let delay = a.retry_after.map_or(backoff, |r| r.min(MAX_BACKOFF));
        let at = now_ms() + delay.as_millis() as i64;
        if at > d.created_ms + c.give_up.as_millis() as i64 {
            return Outcome::Failed {
                status: a.status,
                error: format!(
                    "gave up after {} attempts over {} s: {}",
                    attempts + 1,
                    c.give_up.as_secs(),
                    a.error
                ),
            };
        }
        Outcome::Retry {
            at,
            status: a.status,
            error: a.error,
        }
    }

    /// One attempt at a delivery.
    pub async fn attempt(&self, d: &Due) -> Attempt {
        let id = &d.delivery.id;
        let payload = &d.delivery.payload;
        match &d.channel {
            Channel::Webhook { url, secret } => {
                self.post(url, payload.clone(), secret.as_deref(), id).await
            }
            Channel::Slack { url } => self.post(url, message::slack(payload), None, id).await,
            Channel::Email { to } => self.mail(to, payload, id).await,
        }
    }

    async fn post(&self, url: &str, body: String, secret: Option<&str>, id: &str) -> Attempt {
        let mut req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("X-Errscope-Delivery", id);
        if let Some(s) = secret {
            req = req.header("X-Errscope-Signature", signature(s, body.as_bytes()));
        }
        match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status();
                let code = Some(i64::from(status.as_u16()));
                if status.is_success() {
                    return Attempt {
                        ok: true,
                        transient: false,
                        status: code,
                        retry_after: None,
                        error: String::new(),
                    };
                }
                let transient = status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                Attempt {
                    retry_after: retry_after(resp.headers().get(RETRY_AFTER)),
                    ..Attempt::failed(transient, code, format!("the receiver answered {status}"))
                }
            }
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out".to_owned()
                } else if e.is_connect() {
                    format!("could not connect: {}", error_chain(&e))
                } else {
                    error_chain(&e)
                };
                // Builder errors (a bad URL) cannot get better; everything else can.
                Attempt::failed(!e.is_builder(), None, what)
            }
        }
    }

    async fn mail(&self, to: &[String], payload: &str, id: &str) -> Attempt {
        let Some((transport, from)) = &self.smtp else {
            return Attempt::failed(
                false,
                None,
                "email needs the collector started with --smtp-url".into(),
            );
        };
        let (subject, text, html) = message::email(payload);
        let mut b = Message::builder()
            .from(from.clone())
            .subject(subject)
            // Stable across retries, like X-Errscope-Delivery: a mail system can drop a copy.
            .message_id(Some(format!("<{id}@errscope>")));
        for t in to {
            match t.parse::<Mailbox>() {
                Ok(m) => b = b.to(m),
                Err(e) => return Attempt::failed(false, None, format!("recipient {t}: {e}")),
            }
        }
        let msg = match b.multipart(MultiPart::alternative_plain_html(text, html)) {
            Ok(m) => m,
            Err(e) => return Attempt::failed(false, None, format!("building the email: {e}")),
        };
        match transport.send(msg).await {
            Ok(resp) => Attempt {
                ok: true,
                transient: false,
                status: resp.code().to_string().parse().ok(),
                retry_after: None,
                error: String::new(),
            },
            Err(e) => {
                let status = e.status().and_then(|c| c.to_string().parse().ok());
                // A client error is lettre refusing to go on with this server as it is
                // (`?tls=required` and no STARTTLS offered, no common AUTH mechanism):
                // retrying cannot help, and the message is never sent in clear.
                let transient = !(e.is_permanent() || e.is_client());
                Attempt::failed(transient, status, format!("SMTP: {e}"))
            }
        }
    }

    /// Sends a test message now (no retries) and logs it as a `test` delivery.
    pub async fn send_test(
        &self,
        rule: &super::rules::Rule,
        project: &str,
    ) -> Result<DeliveryRow, crate::store::StoreError> {
        let now = now_ms();
        let payload = message::test_payload(rule, project, &self.state.alerts.public_url, now);
        let id = uuid::Uuid::new_v4().to_string();
        let d = Due {
            delivery: DeliveryRow {
                row: 0,
                id: id.clone(),
                rule_id: rule.id,
                issue_id: None,
                trigger: "test".into(),
                status: "queued".into(),
                attempts: 0,
                created: String::new(),
                updated: String::new(),
                next_attempt: None,
                response_status: None,
                error: None,
                payload: payload.clone(),
            },
            channel: rule.spec.channel.clone(),
            rule_name: rule.spec.name.clone(),
            created_ms: now,
        };
        let a = self.attempt(&d).await;
        let outcome = if a.ok {
            Outcome::Sent { status: a.status }
        } else {
            Outcome::Failed {
                status: a.status,
                error: a.error,
            }
        };
        self.state
            .store
            .record_test_delivery(rule.id, &id, &payload, &outcome, now_ms())
            .await?
            .ok_or_else(|| crate::store::StoreError::Task("the test delivery vanished".into()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_with_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn smtp_settings_are_checked() {
        let t = Duration::from_secs(1);
        assert!(smtp_transport("smtp://u:p@127.0.0.1:2525", Some("a@b.c"), t).is_ok());
        assert!(matches!(
            smtp_transport("http://x", Some("a@b.c"), t),
            Err(AlertError::SmtpUrl(_))
        ));
        assert!(matches!(
            smtp_transport("smtp://h:25", None, t),
            Err(AlertError::SmtpFrom(_))
        ));
    }
}
