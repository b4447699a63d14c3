//! Release health: `session` and `sessions` (aggregate) envelope items from any Sentry
//! SDK, validated into store rows, and the releases API ([`api`]) built from them.
//!
//! Session items are hostile input like events: each is capped in size and in the
//! lengths of its strings, its times must be recent, and it counts against the project's
//! rate limit. A malformed item is dropped alone (counted as an `invalid`/`session`
//! discard) and the envelope's other items are kept.

pub mod api;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::sqlite::health::KEEP_MS;
use crate::store::{Discard, SessionAggregate, SessionUpdate};
use crate::time::parse_rfc3339;

/// Bytes of one `session` item.
pub const MAX_SESSION_ITEM: usize = 16 * 1024;
/// Bytes of one `sessions` item.
pub const MAX_SESSIONS_ITEM: usize = 256 * 1024;
/// Buckets in one `sessions` item.
pub const MAX_AGGREGATES: usize = 1000;
/// Sessions one bucket may count (per status).
pub const MAX_BUCKET_COUNT: i64 = 1_000_000;
/// Longest release name (Sentry's limit).
pub const MAX_RELEASE: usize = 200;
/// Longest environment name (Sentry's limit).
pub const MAX_ENVIRONMENT: usize = 64;
/// Longest `sid` / `did`.
const MAX_ID: usize = 128;
/// How far in the future a session may start (clock skew).
const FUTURE_MS: i64 = 24 * 3_600_000;

/// Why a session item was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// Too many bytes.
    #[error("{0} item is larger than {1} bytes")]
    TooLarge(&'static str, usize),
    /// Not JSON of the expected shape.
    #[error("invalid {0} item: {1}")]
    Invalid(&'static str, String),
}

/// What a request's session items became.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Single session updates.
    pub updates: Vec<SessionUpdate>,
    /// Aggregate buckets.
    pub aggregates: Vec<SessionAggregate>,
    /// Items dropped (each logged at debug level with its reason).
    pub dropped: u64,
}

impl Sessions {
    /// Whether nothing is to be stored.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.aggregates.is_empty()
    }

    /// Updates and buckets, for the rate limit.
    pub fn len(&self) -> u64 {
        (self.updates.len() + self.aggregates.len()) as u64
    }

    /// Takes one `session` or `sessions` item (`n`: its position; `sent_at`: the
    /// envelope header's); a bad item is dropped and counted.
    pub fn take(&mut self, ty: &str, payload: &[u8], n: usize, sent_at: Option<&str>, now: i64) {
        let r = match ty {
            "session" => parse_session(payload, now).map(|u| self.updates.push(u)),
            _ => parse_aggregates(payload, n, sent_at, now).map(|a| self.aggregates.extend(a)),
        };
        if let Err(e) = r {
            tracing::debug!("session item {n} dropped: {e}");
            self.dropped += 1;
        }
    }

    /// The discards to record for the dropped items.
    pub fn discards(&self) -> Option<Discard> {
        (self.dropped > 0).then(|| Discard {
            reason: "invalid".into(),
            category: "session".into(),
            quantity: self.dropped as i64,
        })
    }
}

#[derive(Deserialize)]
struct Attrs {
    #[serde(default)]
    release: Option<String>,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Deserialize)]
struct RawSession {
    sid: String,
    #[serde(default)]
    did: Option<Value>,
    started: Value,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    errors: Option<u32>,
    #[serde(default)]
    seq: Option<u64>,
    attrs: Attrs,
}

#[derive(Deserialize)]
struct RawAggregates {
    attrs: Attrs,
    aggregates: Vec<RawBucket>,
}

#[derive(Deserialize)]
struct RawBucket {
    started: Value,
    #[serde(default)]
    did: Option<Value>,
    #[serde(default)]
    exited: Option<u32>,
    #[serde(default)]
    errored: Option<u32>,
    #[serde(default)]
    abnormal: Option<u32>,
    #[serde(default)]
    crashed: Option<u32>,
}

/// A time as SDKs send it: RFC 3339, or epoch seconds.
fn instant(v: &Value, what: &str, now: i64) -> Result<i64, String> {
    let ms = match v {
        Value::String(s) => parse_rfc3339(s).ok_or_else(|| format!("`{what}` is not RFC 3339"))?,
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| (f * 1000.0) as i64)
            .ok_or_else(|| format!("`{what}` is not a number of seconds"))?,
        _ => return Err(format!("`{what}` must be a timestamp")),
    };
    if ms > now + FUTURE_MS {
        return Err(format!("`{what}` is more than a day in the future"));
    }
    if ms < now - KEEP_MS {
        return Err(format!("`{what}` is older than the 90 days kept"));
    }
    Ok(ms)
}

fn release_env(attrs: &Attrs) -> Result<(String, String), String> {
    let release = attrs
        .release
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or("`attrs.release` is required")?;
    if release.chars().count() > MAX_RELEASE || release.contains(['\n', '\r', '\t', '/']) {
        return Err(format!(
            "`attrs.release` must be at most {MAX_RELEASE} characters without newlines, tabs or slashes"
        ));
    }
    let env = attrs.environment.as_deref().unwrap_or("").trim();
    if env.chars().count() > MAX_ENVIRONMENT || env.contains(['\n', '\r', '/']) {
        return Err(format!(
            "`attrs.environment` must be at most {MAX_ENVIRONMENT} characters without newlines or slashes"
        ));
    }
    Ok((release.to_owned(), env.to_owned()))
}

fn did(v: Option<&Value>) -> Result<Option<String>, String> {
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("`did` must be a string".into()),
    };
    if s.len() > MAX_ID {
        return Err(format!("`did` is longer than {MAX_ID} bytes"));
    }
    Ok((!s.is_empty()).then_some(s))
}

/// Validates one `session` item.
pub fn parse_session(payload: &[u8], now: i64) -> Result<SessionUpdate, SessionError> {
    let bad = |m: String| SessionError::Invalid("session", m);
    if payload.len() > MAX_SESSION_ITEM {
        return Err(SessionError::TooLarge("session", MAX_SESSION_ITEM));
    }
    let raw: RawSession = serde_json::from_slice(payload).map_err(|e| bad(e.to_string()))?;
    let sid = raw.sid.trim();
    if sid.is_empty() || sid.len() > MAX_ID || !sid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(format!(
            "`sid` must be 1 to {MAX_ID} printable ASCII characters"
        )));
    }
    let (release, environment) = release_env(&raw.attrs).map_err(bad)?;
    let started = instant(&raw.started, "started", now).map_err(bad)?;
    let timestamp = match &raw.timestamp {
        Some(v) => instant(v, "timestamp", now).map_err(bad)?,
        None => now,
    };
    let status = raw.status.unwrap_or_else(|| "ok".into());
    if !matches!(
        status.as_str(),
        "ok" | "exited" | "crashed" | "abnormal" | "errored"
    ) {
        return Err(bad(format!(
            "`status` must be ok, exited, crashed, abnormal or errored, not {status:?}"
        )));
    }
    Ok(SessionUpdate {
        sid: sid.to_owned(),
        did: did(raw.did.as_ref()).map_err(bad)?,
        release,
        environment,
        started,
        timestamp: timestamp.max(started),
        status,
        errors: i64::from(raw.errors.unwrap_or(0)),
        seq: i64::try_from(raw.seq.unwrap_or(0)).unwrap_or(i64::MAX),
    })
}

/// The key of the `index`th bucket of an aggregate item: a hash of the envelope's
/// `sent_at` and the item's bytes. A retried envelope has the same bytes and so the same
/// keys. Without `sent_at` (Python's session flusher sends none) a retry cannot be told
/// from a later flush that happens to carry the same counts, so each delivery gets keys
/// of its own and counts, as Sentry adds aggregates up.
pub fn aggregate_key(sent_at: Option<&str>, payload: &[u8], index: usize) -> String {
    let mut h = Sha256::new();
    match sent_at {
        Some(s) => h.update(s.as_bytes()),
        None => h.update(crate::state::random_secret().as_bytes()),
    }
    h.update([0]);
    h.update(payload);
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}:{index}")
}

/// Validates one `sessions` item.
pub fn parse_aggregates(
    payload: &[u8],
    n: usize,
    sent_at: Option<&str>,
    now: i64,
) -> Result<Vec<SessionAggregate>, SessionError> {
    let bad = |m: String| SessionError::Invalid("sessions", m);
    if payload.len() > MAX_SESSIONS_ITEM {
        return Err(SessionError::TooLarge("sessions", MAX_SESSIONS_ITEM));
    }
    let raw: RawAggregates = serde_json::from_slice(payload).map_err(|e| bad(e.to_string()))?;
    if raw.aggregates.len() > MAX_AGGREGATES {
        return Err(bad(format!(
            "more than {MAX_AGGREGATES} entries in `aggregates`"
        )));
    }
    let (release, environment) = release_env(&raw.attrs).map_err(bad)?;
    let mut out = Vec::with_capacity(raw.aggregates.len());
    for (i, b) in raw.aggregates.iter().enumerate() {
        let count = |c: Option<u32>| -> Result<i64, SessionError> {
            let c = i64::from(c.unwrap_or(0));
            if c > MAX_BUCKET_COUNT {
                return Err(bad(format!(
                    "aggregates[{i}]: a count above {MAX_BUCKET_COUNT}"
                )));
            }
            Ok(c)
        };
        out.push(SessionAggregate {
            key: aggregate_key(sent_at, payload, n * MAX_AGGREGATES + i),
            release: release.clone(),
            environment: environment.clone(),
            started: instant(&b.started, "started", now)
                .map_err(|m| bad(format!("aggregates[{i}]: {m}")))?,
            did: did(b.did.as_ref()).map_err(bad)?,
            exited: count(b.exited)?,
            errored: count(b.errored)?,
            abnormal: count(b.abnormal)?,
            crashed: count(b.crashed)?,
        });
    }
    Ok(out)
}

/// The share of sessions that did not crash, or `None` without sessions.
pub fn crash_free_rate(sessions: i64, crashed: i64) -> Option<f64> {
    (sessions > 0).then(|| 1.0 - crashed as f64 / sessions as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000_000;

    #[test]
    fn sessions_are_validated() {
        let ok = br#"{"sid":"a1","init":true,"started":"2026-11-30T10:00:00Z","status":"ok","errors":1,"attrs":{"release":"r@1","environment":"prod"}}"#;
        let u = parse_session(ok, NOW).unwrap();
        assert_eq!(
            (u.release.as_str(), u.environment.as_str()),
            ("r@1", "prod")
        );
        assert_eq!((u.status.as_str(), u.errors, u.seq), ("ok", 1, 0));
        for (bad, why) in [
            (&br#"{"sid":"a","started":"2026-11-30T10:00:00Z","attrs":{}}"#[..], "release"),
            (br#"{"sid":"a","started":"2026-11-30T10:00:00Z","status":"weird","attrs":{"release":"r"}}"#, "status"),
            (br#"{"sid":"a","started":"2030-11-30T10:00:00Z","attrs":{"release":"r"}}"#, "future"),
            (br#"{"sid":"","started":1796000000,"attrs":{"release":"r"}}"#, "sid"),
            (br#"[1]"#, "invalid session"),
        ] {
            let e = parse_session(bad, NOW).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let big = format!(
            r#"{{"sid":"a","started":1,"attrs":{{"release":"{}"}}}}"#,
            "x".repeat(20_000)
        );
        assert!(matches!(
            parse_session(big.as_bytes(), NOW),
            Err(SessionError::TooLarge(..))
        ));
    }

    #[test]
    fn aggregate_keys_are_stable_per_delivery() {
        let p = br#"{"attrs":{"release":"r"},"aggregates":[{"started":"2026-11-30T10:00:00Z","exited":2},{"started":"2026-11-30T10:01:00Z","crashed":1}]}"#;
        let sent = Some("2026-11-30T10:02:00Z");
        let a = parse_aggregates(p, 1, sent, NOW).unwrap();
        let b = parse_aggregates(p, 1, sent, NOW).unwrap();
        assert_eq!(a, b, "a retry");
        assert_ne!(a[0].key, a[1].key);
        let c = parse_aggregates(p, 1, Some("2026-11-30T10:03:00Z"), NOW).unwrap();
        assert_ne!(a[0].key, c[0].key, "a later flush");
        // Without sent_at, every delivery counts.
        let d = parse_aggregates(p, 1, None, NOW).unwrap();
        let e = parse_aggregates(p, 1, None, NOW).unwrap();
        assert_ne!(d[0].key, e[0].key);
        assert_eq!((a[0].exited, a[1].crashed), (2, 1));
    }
}
