//! The wire side of shipping: Sentry envelopes out (events, `errscope.counts`,
//! `client_report`, `session`), gzip, and what a server's answer means for the shipper
//! (`Retry-After`, `X-Sentry-Rate-Limits`, `X-Errscope-Collector`).

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::store::{DiscardRow, Pending};
use crate::storm::CountRecord;

/// How long to wait after a 429 that names no time.
pub(crate) const DEFAULT_RATE_LIMIT: Duration = Duration::from_secs(60);
/// A server's `Retry-After` is honored up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// One envelope's body, uncompressed: a header line, then the event items in order,
/// then the counts (which refer to events shipped before them) and the client report.
pub(crate) fn build(events: &[Pending], counts: &[CountRecord], report: &[DiscardRow]) -> Vec<u8> {
    let size: usize = events.iter().map(|e| e.payload.len() + 40).sum();
    let mut out = Vec::with_capacity(size + 64);
    let header = match events {
        [one] => json!({ "event_id": one.event_id }),
        _ => json!({}),
    };
    push_line(&mut out, &header);
    for event in events {
        push_item(&mut out, "event", &event.payload);
    }
    if !counts.is_empty() {
        let counts: Vec<_> = counts
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "event_id": c.event_id.to_string(),
                    "count": c.count,
                    "start": c.start,
                    "end": c.end,
                })
            })
            .collect();
        let body = json!({ "counts": counts }).to_string();
        push_item(&mut out, "errscope.counts", body.as_bytes());
    }
    if !report.is_empty() {
        let discarded: Vec<_> = report
            .iter()
            .map(|d| json!({"reason": d.reason, "category": d.category, "quantity": d.quantity}))
            .collect();
        let body = json!({
            "timestamp": crate::time::now_epoch(),
            "discarded_events": discarded,
        })
        .to_string();
        push_item(&mut out, "client_report", body.as_bytes());
    }
    out
}

/// Appends release-health `session` items (each an update's JSON) to an envelope body.
pub(crate) fn push_sessions(out: &mut Vec<u8>, sessions: &[(i64, Vec<u8>)]) {
    for (_, payload) in sessions {
        push_item(out, "session", payload);
    }
}

fn push_line(out: &mut Vec<u8>, value: &serde_json::Value) {
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b'\n');
}

fn push_item(out: &mut Vec<u8>, ty: &str, payload: &[u8]) {
    push_line(out, &json!({ "type": ty, "length": payload.len() }));
    out.extend_from_slice(payload);
    out.push(b'\n');
}

/// Gzips a body at the fastest level: event JSON compresses ~5× even there, and the
/// shipper's CPU is the host's.
pub(crate) fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    enc.finish()
}

/// What a server's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 2xx: delete what was sent. `collector`: the server is an errscope collector
    /// (multi-event envelopes accepted). `pause`: the server rate-limits error events
    /// from now on, for this long.
    Accepted {
        collector: bool,
        pause: Option<Duration>,
    },
    /// 429: keep everything, send nothing for this long.
    RateLimited(Duration),
    /// A failure that may pass (5xx, 408, auth or routing errors): keep, back off, retry;
    /// `at_least` from the server's `Retry-After`.
    Retry {
        reason: String,
        at_least: Option<Duration>,
    },
    /// Another 4xx: this content will never be accepted.
    Rejected { status: u16, detail: String },
}

/// Classifies a response by status and headers; `body` is only read for the detail of
/// a rejection.
pub(crate) fn classify(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> Answer {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let limits = header("x-sentry-rate-limits").and_then(parse_rate_limits);
    let retry_after = header("retry-after").and_then(parse_retry_after);
    match status {
        200..=299 => Answer::Accepted {
            collector: headers.contains_key("x-errscope-collector"),
            pause: limits,
        },
        429 => Answer::RateLimited(limits.or(retry_after).unwrap_or(DEFAULT_RATE_LIMIT)),
        // Failures of the server, the network path or our configuration (a key not yet
        // created, a proxy in the way): the events themselves are fine.
        401 | 403 | 404 | 407 | 408 | 500..=599 => Answer::Retry {
            reason: format!("HTTP {status}{}", short_detail(body)),
            at_least: retry_after,
        },
        _ => Answer::Rejected {
            status,
            detail: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        },
    }
}

fn short_detail(body: &[u8]) -> String {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned));
    match detail {
        Some(d) => format!(": {}", d.chars().take(200).collect::<String>()),
        None => String::new(),
    }
}

/// `Retry-After` in seconds (an HTTP date is not worth a dependency: the default applies).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER))
}

/// The longest limit of `X-Sentry-Rate-Limits` that applies to error events:
/// `retry_after:categories:scope[:reason[:namespaces]], ...`, where no category means all.
fn parse_rate_limits(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.trim().split(':');
            let secs: f64 = parts.next()?.trim().parse().ok()?;
            let categories = parts.next().unwrap_or("");
            let applies = categories.is_empty()
                || categories
                    .split(';')
                    .any(|c| matches!(c.trim(), "error" | "default"));
            (applies && secs.is_finite() && secs >= 0.0).then_some(secs)
        })
        .fold(None, |max: Option<f64>, s| {
            Some(max.map_or(s, |m| m.max(s)))
        })
        .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn pending(i: i64, payload: &str) -> Pending {
        Pending {
            rowid: i,
            event_id: format!("{i:032x}"),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn envelopes_frame_each_item_with_its_length() {
        let one = build(&[pending(1, r#"{"a":1}"#)], &[], &[]);
        assert_eq!(
            String::from_utf8(one).expect("utf8"),
            format!(
                "{{\"event_id\":\"{:032x}\"}}\n{{\"length\":7,\"type\":\"event\"}}\n{{\"a\":1}}\n",
                1
            )
        );
        let count = CountRecord {
            id: "c".repeat(32),
            event_id: format!("{:032x}", 1).parse().expect("id"),
            count: 9,
            start: 1.0,
            end: 2.0,
        };
        let report = DiscardRow {
            reason: "send_error".into(),
            category: "error".into(),
            quantity: 2,
        };
        let many = build(&[pending(1, "{}"), pending(2, "{}")], &[count], &[report]);
        let text = String::from_utf8(many).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "{}", "no event_id header for a batch");
        assert_eq!(lines.len(), 9);
        assert!(lines[5].contains("errscope.counts"), "{text}");
        assert!(lines[6].contains("\"count\":9"), "{text}");
        assert!(lines[7].contains("client_report"), "{text}");
        assert!(lines[8].contains("\"reason\":\"send_error\""), "{text}");
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify(200, &headers(&[("x-errscope-collector", "0.1.0")]), b""),
            Answer::Accepted {
                collector: true,
                pause: None
            }
        );
        assert_eq!(
            classify(429, &headers(&[("retry-after", "2")]), b""),
            Answer::RateLimited(Duration::from_secs(2))
        );
        assert_eq!(
            classify(429, &headers(&[]), b""),
            Answer::RateLimited(DEFAULT_RATE_LIMIT)
        );
        // Categories honored: a transaction limit does not stop errors.
        assert_eq!(
            classify(
                200,
                &headers(&[(
                    "x-sentry-rate-limits",
                    "60:transaction:key, 7:error;default:org"
                )]),
                b""
            ),
            Answer::Accepted {
                collector: false,
                pause: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(
                429,
                &headers(&[
                    ("x-sentry-rate-limits", "17::project"),
                    ("retry-after", "1")
                ]),
                b""
            ),
            Answer::RateLimited(Duration::from_secs(17))
        );
        assert!(matches!(
            classify(503, &headers(&[("retry-after", "1")]), b""),
            Answer::Retry { at_least: Some(d), .. } if d == Duration::from_secs(1)
        ));
        assert!(matches!(
            classify(401, &headers(&[]), br#"{"detail":"unknown key"}"#),
            Answer::Retry { reason, .. } if reason == "HTTP 401: unknown key"
        ));
        assert!(matches!(
            classify(400, &headers(&[]), br#"{"detail":"item 2: bad level"}"#),
            Answer::Rejected { status: 400, detail } if detail.contains("bad level")
        ));
        assert!(matches!(
            classify(413, &headers(&[]), b""),
            Answer::Rejected { status: 413, .. }
        ));
    }
}
