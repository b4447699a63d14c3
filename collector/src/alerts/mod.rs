//! Alerts: rules that tell a team when an issue is new, regresses, turns frequent or is
//! unmuted, by webhook, Slack-compatible webhook or email.
//!
//! The decision is made on the ingest path, inside the writer's transaction
//! (`store/alerts.rs`), which queues a delivery durably with the events that caused it;
//! [`send`] delivers the queue in the background with retries; [`api`] is the JSON API.

pub mod api;
pub mod message;
pub mod rules;
pub mod send;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use send::spawn;

/// What can go wrong setting alerts up.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// `--smtp-url` is not an SMTP URL lettre accepts.
    #[error("--smtp-url: {0}")]
    SmtpUrl(String),
    /// `--smtp-from` is missing or not an address.
    #[error("--smtp-from: {0}")]
    SmtpFrom(String),
    /// The HTTP client could not be built.
    #[error("the HTTP client for alerts: {0}")]
    Http(#[from] reqwest::Error),
}

/// How alerts are delivered.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// `smtp://user:pass@host:port` (STARTTLS when the server offers it) or `smtps://`.
    pub smtp_url: Option<String>,
    /// The sender address of alert emails.
    pub smtp_from: Option<String>,
    /// The length of the "minute" of frequency windows and action intervals; 60 s
    /// except in tests (`ERRSCOPE_ALERT_MINUTE_MS`).
    pub minute: Duration,
    /// The first retry's delay; each further retry doubles it, up to an hour.
    pub retry_base: Duration,
    /// How long a delivery is retried before it is marked failed.
    pub give_up: Duration,
    /// One attempt's timeout.
    pub timeout: Duration,
    /// Deliveries sent at once at most.
    pub concurrency: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            smtp_url: None,
            smtp_from: None,
            minute: Duration::from_secs(60),
            retry_base: Duration::from_secs(30),
            give_up: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 8,
        }
    }
}

/// The alerting state the writer, the sender and the API share.
#[derive(Debug)]
pub struct Alerts {
    /// Settings.
    pub config: AlertConfig,
    /// The collector's base URL (issue links; the self-URL check).
    pub public_url: String,
    notify: tokio::sync::Notify,
    changed: AtomicBool,
}

impl Alerts {
    /// Alerting with `config` for a collector at `public_url`.
    pub fn new(config: AlertConfig, public_url: String) -> Self {
        Alerts {
            config,
            public_url,
            notify: tokio::sync::Notify::new(),
            // The writer loads the rules on its first batch.
            changed: AtomicBool::new(true),
        }
    }

    /// The configured minute, in milliseconds.
    pub fn minute_ms(&self) -> i64 {
        (self.config.minute.as_millis() as i64).max(1)
    }

    /// Tells the writer to reload the rules (after the API changed one).
    pub fn rules_changed(&self) {
        self.changed.store(true, Ordering::Release);
    }

    pub(crate) fn take_rules_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// Wakes the sender: deliveries were queued.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}
