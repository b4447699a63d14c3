//! Ingestion: Sentry envelopes and legacy store requests.
//!
//! A request is authenticated (before its body is decompressed when the key comes from a
//! header or the query string), decoded with bounded decompression, framed, validated and
//! grouped item by item, then handed to the writer; the answer waits for the commit.
//! One bad item rejects the whole request so a client never has to guess what was kept.

pub mod body;
pub mod envelope;
pub mod event;
pub mod intake;
pub mod minidump;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::grouping;
use crate::metrics::Reject;
use crate::releases::Sessions;
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::{CountRecord, Discard, IngestJob, PreparedEvent};
use crate::symbolicate;
use crate::time::{now_ms, parse_rfc3339};
use event::{Event, Timestamp};

/// Bytes accepted on the wire.
pub const MAX_WIRE: usize = 20 * 1024 * 1024;
/// Bytes of a decompressed envelope.
pub const MAX_ENVELOPE: usize = 100 * 1024 * 1024;
/// Bytes of one event.
pub const MAX_EVENT: usize = 1024 * 1024;
/// Bodies larger than this are parsed on a blocking thread.
const INLINE_PARSE: usize = 256 * 1024;
/// Tags indexed per event.
const MAX_TAGS: usize = 50;

/// Why an ingestion request failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// 400.
    #[error("{0}")]
    Malformed(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 408.
    #[error("{0}")]
    Timeout(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// 429.
    #[error("rate limit exceeded for this project; retry after {0} s")]
    RateLimited(u64),
    /// 503.
    #[error("the collector is busy; retry after 1 s")]
    QueueFull,
    /// 503: the memory budget for request bodies in flight is taken.
    #[error("{}", crate::budget::BudgetError)]
    MemoryBusy,
    /// 500.
    #[error("internal error")]
    Internal(String),
}

impl IngestError {
    fn reason(&self) -> Reject {
        match self {
            IngestError::Malformed(_) => Reject::Malformed,
            IngestError::Unauthorized(_) => Reject::Unauthorized,
            IngestError::Forbidden(_) => Reject::Forbidden,
            IngestError::TooLarge(_) => Reject::TooLarge,
            IngestError::Timeout(_) => Reject::Timeout,
            IngestError::UnsupportedEncoding(_) => Reject::Encoding,
            IngestError::RateLimited(_) => Reject::RateLimited,
            IngestError::QueueFull => Reject::QueueFull,
            IngestError::MemoryBusy => Reject::MemoryBusy,
            IngestError::Internal(_) => Reject::Internal,
        }
    }
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        match e {
            e if e.is_busy() => IngestError::QueueFull,
            e => IngestError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = match &self {
            IngestError::Malformed(_) => StatusCode::BAD_REQUEST,
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::Forbidden(_) => StatusCode::FORBIDDEN,
            IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            IngestError::QueueFull | IngestError::MemoryBusy => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let IngestError::Internal(detail) = &self {
            tracing::error!("ingestion failed: {detail}");
        } else {
            tracing::debug!("ingestion rejected ({status}): {self}");
        }
        let mut resp = (status, axum::Json(json!({ "detail": self.to_string() }))).into_response();
        let h = resp.headers_mut();
        match self {
            IngestError::RateLimited(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                if let Ok(v) = HeaderValue::from_str(&format!("{secs}::project")) {
                    h.insert("x-sentry-rate-limits", v);
                }
            }
            IngestError::QueueFull | IngestError::MemoryBusy => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// Adds `X-Errscope-Collector` and CORS to every ingestion response.
pub async fn ingest_headers(resp: Response) -> Response {
    let mut resp = resp;
    let h = resp.headers_mut();
    h.insert(
        "x-errscope-collector",
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-sentry-error, x-sentry-rate-limits, retry-after"),
    );
    resp
}

/// `OPTIONS` on the ingestion routes: the CORS preflight of browser SDKs.
pub async fn preflight() -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, content-encoding, x-sentry-auth, authorization"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    resp
}

/// The key from `X-Sentry-Auth` (or `Authorization: Sentry ...`), then the query string.
fn key_from_request(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    for name in ["x-sentry-auth", "authorization"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            let rest = v
                .strip_prefix("Sentry")
                .or_else(|| v.strip_prefix("sentry"))
                .unwrap_or(v);
            for part in rest.split(',') {
                if let Some(k) = part.trim().strip_prefix("sentry_key=") {
                    return Some(k.trim().to_owned());
                }
            }
        }
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("sentry_key=").map(str::to_owned))
}

/// The public key inside a DSN (`https://<key>@host/<project>`).
fn key_from_dsn(dsn: &str) -> Option<String> {
    let rest = dsn.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let key = userinfo.split(':').next()?;
    (!key.is_empty()).then(|| key.to_owned())
}

async fn authenticate(
    state: &AppState,
    key: Option<String>,
    project_id: i64,
) -> Result<(), IngestError> {
    let key = key.ok_or_else(|| {
        IngestError::Unauthorized(
            "missing sentry_key (X-Sentry-Auth header, sentry_key query parameter or envelope dsn)"
                .into(),
        )
    })?;
    match state.project_of_key(&key).await? {
        None => Err(IngestError::Unauthorized("unknown sentry_key".into())),
        Some(pid) if pid != project_id => Err(IngestError::Forbidden(format!(
            "this key belongs to another project, not {project_id}"
        ))),
        Some(_) => Ok(()),
    }
}

fn parse_project(raw: &str) -> Result<i64, IngestError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        IngestError::Malformed(format!(
            "project id `{}` is not a positive integer",
            raw.chars().take(40).collect::<String>()
        ))
    })
}

/// `POST /api/{project_id}/envelope/`.
pub async fn envelope_handler(
    State(state): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = ingest(
        &state,
        &project,
        query.as_deref(),
        &headers,
        body,
        Kind::Envelope,
    )
    .await;
    respond(&state, r)
}

/// `POST /api/{project_id}/store/`.
pub async fn store_handler(
    State(state): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = ingest(
        &state,
        &project,
        query.as_deref(),
        &headers,
        body,
        Kind::Store,
    )
    .await;
    respond(&state, r)
}

fn respond(state: &AppState, r: Result<Vec<String>, IngestError>) -> Response {
    match r {
        Ok(ids) => {
            let body = match ids.len() {
                0 => json!({}),
                1 => json!({ "id": ids[0] }),
                _ => json!({ "id": ids[0], "ids": ids }),
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => {
            state.metrics.reject(e.reason());
            e.into_response()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Envelope,
    Store,
}

async fn ingest(
    state: &AppState,
    project: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<Vec<String>, IngestError> {
    let project_id = parse_project(project)?;
    let request_key = key_from_request(headers, query);
    if request_key.is_some() {
        authenticate(state, request_key.clone(), project_id).await?;
    }
    // Every byte this request holds, from its first wire frame to the commit of what it
    // stores, is covered by this reservation against the memory budget.
    let mut held = state.budget.reserve();
    let minidump_max = state.minidumps.config().max_bytes;
    let framed = intake::read(body, headers, kind == Kind::Store, minidump_max, &mut held).await?;
    // An envelope with a minidump is one crash: processed as the minidump endpoint does.
    let framed = match framed {
        intake::Framed::Envelope(header, items) if items.iter().any(minidump::is_minidump) => {
            return minidump::from_envelope(state, project_id, request_key, header, items, held)
                .await;
        }
        other => other,
    };
    let received = now_ms();
    let size = framed.payload_bytes();
    let symbolicator = state.symbolicator.clone();
    // Symbolication may build a SymCache: never on an async thread.
    let may_need_symbols = match &framed {
        intake::Framed::Store(event) => symbolicate::may_need(event),
        intake::Framed::Envelope(_, items) => items
            .iter()
            .any(|i| i.ty == "event" && symbolicate::may_need(&i.payload)),
    };
    let inline = size <= INLINE_PARSE && !may_need_symbols;
    // Preparing copies each event once more (compressed), until the commit.
    held.cover(2 * size + 64 * 1024)
        .await
        .map_err(|_| IngestError::MemoryBusy)?;
    let work = move || -> Result<(Option<String>, IngestJob, Waiting, Sessions), IngestError> {
        let mut sessions = Sessions::default();
        let sym = Some(&*symbolicator);
        let mut waiting = Vec::new();
        let mut job = IngestJob {
            project_id,
            ..Default::default()
        };
        let mut dsn_key = None;
        match framed {
            intake::Framed::Store(event) => job.events.push(prepare_symbolicated(
                sym,
                &event,
                received,
                None,
                &mut waiting,
            )?),
            intake::Framed::Envelope(header, items) => {
                dsn_key = header.dsn.as_deref().and_then(key_from_dsn);
                let header_id = header.event_id.as_deref().and_then(event::parse_event_id);
                for item in items {
                    let n = item.n;
                    match item.ty.as_str() {
                        "event" => {
                            let first = job.events.is_empty();
                            let ev = prepare_symbolicated(
                                sym,
                                &item.payload,
                                received,
                                if first { header_id.clone() } else { None },
                                &mut waiting,
                            )
                            .map_err(|e| prefix(e, n))?;
                            job.events.push(ev);
                        }
                        "client_report" => job
                            .discards
                            .extend(parse_client_report(&item.payload).map_err(|e| prefix(e, n))?),
                        "errscope.counts" => job
                            .counts
                            .extend(parse_counts(&item.payload).map_err(|e| prefix(e, n))?),
                        ty @ ("session" | "sessions") => {
                            sessions.take(ty, &item.payload, n, header.sent_at.as_deref(), received)
                        }
                        _ => {}
                    }
                }
            }
        }
        job.discards.extend(sessions.discards());
        Ok((dsn_key, job, waiting, sessions))
    };
    let (dsn_key, job, waiting, sessions) = if inline {
        work()?
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))??
    };
    if request_key.is_none() {
        authenticate(state, dsn_key, project_id).await?;
    }
    // Session updates take their share of the project's rate limit.
    let n = job.events.len() as u64 + sessions.len();
    if n > 0
        && let Some(wait) = state.rate_limited(project_id, n).await?
    {
        return Err(IngestError::RateLimited(wait));
    }
    let ids: Vec<String> = job.events.iter().map(|e| e.event_id.clone()).collect();
    if !sessions.is_empty() {
        state
            .store
            .ingest_sessions(project_id, sessions.updates, sessions.aggregates)
            .await?;
    }
    if job.events.is_empty() && job.discards.is_empty() && job.counts.is_empty() {
        return Ok(ids);
    }
    state.store.ingest(job).await?;
    drop(held);
    symbolicate::remember_missing(state, project_id, waiting).await;
    Ok(ids)
}

/// `(event_id, debug ids)` of events whose frames wait for debug files.
type Waiting = Vec<(String, Vec<String>)>;

/// Symbolicates an event, then prepares it.
fn prepare_symbolicated(
    sym: Option<&symbolicate::Symbolicator>,
    bytes: &[u8],
    received: i64,
    fallback_id: Option<String>,
    waiting: &mut Waiting,
) -> Result<PreparedEvent, IngestError> {
    let done = symbolicate::process(sym, bytes, MAX_EVENT);
    let ev = prepare_event(&done.bytes, received, fallback_id)?;
    if !done.missing.is_empty() {
        waiting.push((ev.event_id.clone(), done.missing));
    }
    Ok(ev)
}

fn prefix(e: IngestError, item: usize) -> IngestError {
    match e {
        IngestError::Malformed(m) => IngestError::Malformed(format!("item {item}: {m}")),
        IngestError::TooLarge(m) => IngestError::TooLarge(format!("item {item}: {m}")),
        e => e,
    }
}

/// Whether JSON that parsed when skipped may still not load into a value: it has an
/// escaped UTF-16 surrogate (`\uD800`-`\uDFFF`, fine in a pair, an error alone), a
/// number with an exponent of three digits or more, or a run of 300 digits.
fn may_not_load(bytes: &[u8]) -> bool {
    let mut i = 0;
    let mut digits = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                digits = 0;
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', bytes.get(i..).unwrap_or(&[])) {
                        Some(p) if bytes[i + p] == b'\\' => {
                            let esc = bytes.get(i + p + 1..i + p + 4).unwrap_or(&[]);
                            if let [b'u', b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'] =
                                esc
                            {
                                return true;
                            }
                            i += p + 2;
                        }
                        Some(p) => {
                            i += p + 1;
                            break;
                        }
                        None => return false,
                    }
                }
                continue;
            }
            b'0'..=b'9' => {
                digits += 1;
                if digits >= 300 {
                    return true;
                }
            }
            b'e' | b'E' => {
                let rest = &bytes[i + 1..];
                let rest = rest
                    .strip_prefix(b"-")
                    .or_else(|| rest.strip_prefix(b"+"))
                    .unwrap_or(rest);
                if rest
                    .get(..3)
                    .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
                {
                    return true;
                }
                digits = 0;
            }
            _ => digits = 0,
        }
        i += 1;
    }
    false
}

const LEVELS: [&str; 5] = ["fatal", "error", "warning", "info", "debug"];

fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Validates, groups and compresses one event JSON.
pub fn prepare_event(
    bytes: &[u8],
    received: i64,
    fallback_id: Option<String>,
) -> Result<PreparedEvent, IngestError> {
    if bytes.len() > MAX_EVENT {
        return Err(IngestError::TooLarge(format!(
            "the event is {} bytes; the limit is {MAX_EVENT}",
            bytes.len()
        )));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(IngestError::Malformed(
            "the event must be a JSON object".into(),
        ));
    }
    if event::json_depth(bytes) > event::MAX_DEPTH {
        return Err(IngestError::Malformed(format!(
            "the event nests deeper than {} levels",
            event::MAX_DEPTH
        )));
    }
    let ev: Event<'_> = serde_json::from_slice(bytes)
        .map_err(|e| IngestError::Malformed(format!("invalid event: {e}")))?;
    // Fields the collector does not read were only skipped over; an escaped surrogate
    // or a number past f64 there would be stored, then fail to load when the event is
    // viewed. Such events are read in full once, and refused if that fails.
    if may_not_load(bytes) {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| IngestError::Malformed(format!("invalid event: {e}")))?;
    }
    let event_id = match ev.event_id.as_deref() {
        Some(id) => event::parse_event_id(id).ok_or_else(|| {
            IngestError::Malformed("event_id must be 32 hex digits (or a UUID)".into())
        })?,
        None => fallback_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
    };
    let timestamp = match &ev.timestamp {
        None => received,
        Some(Timestamp::Seconds(s)) if s.is_finite() && *s >= 0.0 && *s < 1e11 => {
            (*s * 1000.0) as i64
        }
        Some(Timestamp::Seconds(_)) => {
            return Err(IngestError::Malformed("timestamp is out of range".into()));
        }
        Some(Timestamp::Text(t)) => match parse_rfc3339(t) {
            // The same range as epoch seconds: nothing before 1970.
            Some(ms) if ms >= 0 => ms,
            Some(_) => {
                return Err(IngestError::Malformed("timestamp is out of range".into()));
            }
            None => {
                return Err(IngestError::Malformed(
                    "timestamp must be epoch seconds or RFC 3339".into(),
                ));
            }
        },
    };
    // A clock running ahead must not put events in the future.
    let timestamp = timestamp.min(received);
    let level = match ev.level.as_deref().map(str::to_ascii_lowercase) {
        None => "error".to_owned(),
        Some(l) => match l.as_str() {
            "warn" => "warning".to_owned(),
            "critical" => "fatal".to_owned(),
            "log" => "info".to_owned(),
            l if LEVELS.contains(&l) => l.to_owned(),
            _ => {
                return Err(IngestError::Malformed(format!(
                    "level must be one of {}",
                    LEVELS.join(", ")
                )));
            }
        },
    };
    let grouping = grouping::group(&ev);
    let environment = ev
        .environment
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| clip(s, 200));
    let release = ev
        .release
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| clip(s, 200));
    let mut tags: Vec<(String, String)> = Vec::new();
    tags.push(("level".into(), level.clone()));
    if let Some(e) = &environment {
        tags.push(("environment".into(), e.clone()));
    }
    if let Some(r) = &release {
        tags.push(("release".into(), r.clone()));
    }
    if let Some(s) = ev.server_name.as_deref().filter(|s| !s.is_empty()) {
        tags.push(("server_name".into(), clip(s, 200)));
    }
    if let Some(t) = &ev.tags {
        for (k, v) in &t.0 {
            if tags.len() >= MAX_TAGS {
                break;
            }
            // Compared once clipped: two long keys that clip alike are one tag.
            let k = clip(k, 64);
            if k.is_empty() || tags.iter().any(|(x, _)| *x == k) {
                continue;
            }
            tags.push((k, clip(v, 200)));
        }
    }
    let (encoding, data) = compress(bytes);
    Ok(PreparedEvent {
        event_id,
        grouping,
        level,
        environment,
        release,
        timestamp,
        received,
        tags,
        encoding,
        data,
    })
}

thread_local! {
    /// One zlib state per thread, reset between events: a fresh compressor allocates and
    /// zeroes a few hundred KiB, which cost more than compressing a 15 KB event.
    static ZLIB: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::fast(), true));
}

/// zlib at the fastest level, kept only when it saves at least 10 %.
fn compress(bytes: &[u8]) -> (u8, Vec<u8>) {
    if bytes.len() >= 512 {
        let budget = bytes.len() / 10 * 9;
        let done = ZLIB.with(|z| {
            let mut z = z.borrow_mut();
            z.reset();
            let mut out = Vec::with_capacity(budget);
            match z.compress_vec(bytes, &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) => Some(out),
                _ => None,
            }
        });
        if let Some(out) = done {
            return (1, out);
        }
    }
    (0, bytes.to_vec())
}

#[derive(Deserialize)]
struct ClientReport {
    #[serde(default)]
    discarded_events: Vec<DiscardedEvent>,
}

#[derive(Deserialize)]
struct DiscardedEvent {
    reason: String,
    category: String,
    quantity: i64,
}

fn parse_client_report(payload: &[u8]) -> Result<Vec<Discard>, IngestError> {
    let r: ClientReport = serde_json::from_slice(payload)
        .map_err(|e| IngestError::Malformed(format!("invalid client_report: {e}")))?;
    r.discarded_events
        .into_iter()
        .map(|d| {
            if d.quantity < 0 {
                return Err(IngestError::Malformed(
                    "client_report quantity must not be negative".into(),
                ));
            }
            Ok(Discard {
                reason: clip(&d.reason, 64),
                category: clip(&d.category, 64),
                quantity: d.quantity,
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct Counts {
    counts: Vec<CountJson>,
}

#[derive(Deserialize)]
struct CountJson {
    id: String,
    event_id: String,
    count: i64,
    start: f64,
    end: f64,
}

fn parse_counts(payload: &[u8]) -> Result<Vec<CountRecord>, IngestError> {
    let c: Counts = serde_json::from_slice(payload)
        .map_err(|e| IngestError::Malformed(format!("invalid errscope.counts: {e}")))?;
    c.counts
        .into_iter()
        .map(|c| {
            let id = event::parse_event_id(&c.id).ok_or_else(|| {
                IngestError::Malformed("errscope.counts id must be 32 hex digits".into())
            })?;
            let event_id = event::parse_event_id(&c.event_id).ok_or_else(|| {
                IngestError::Malformed("errscope.counts event_id must be 32 hex digits".into())
            })?;
            let ok = |t: f64| t.is_finite() && (0.0..1e11).contains(&t);
            if c.count < 0 || !ok(c.start) || !ok(c.end) {
                return Err(IngestError::Malformed(
                    "errscope.counts needs count >= 0 and epoch-second start/end".into(),
                ));
            }
            Ok(CountRecord {
                id,
                event_id,
                count: c.count,
                start: (c.start * 1000.0) as i64,
                end: (c.end * 1000.0) as i64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_headers_query_and_dsn() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-sentry-auth",
            HeaderValue::from_static("Sentry sentry_version=7, sentry_key=abc, sentry_client=x"),
        );
        assert_eq!(key_from_request(&h, None).as_deref(), Some("abc"));
        assert_eq!(
            key_from_request(&HeaderMap::new(), Some("sentry_version=7&sentry_key=def")).as_deref(),
            Some("def")
        );
        assert_eq!(key_from_request(&HeaderMap::new(), None), None);
        assert_eq!(
            key_from_dsn("https://k1@o.example.com/3").as_deref(),
            Some("k1")
        );
        assert_eq!(
            key_from_dsn("https://k1:secret@host/3").as_deref(),
            Some("k1")
        );
        assert_eq!(key_from_dsn("nonsense"), None);
    }

    #[test]
    fn error_responses_carry_status_and_retry_headers() {
        let r = IngestError::QueueFull.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = IngestError::RateLimited(17).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["x-sentry-rate-limits"], "17::project");
        let r = IngestError::Internal("disk on fire".into()).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn internal_details_do_not_leak() {
        let r = IngestError::Internal("/var/secret/path: disk on fire".into()).into_response();
        let body = axum::body::to_bytes(r.into_body(), 1000).await.unwrap();
        assert_eq!(&body[..], br#"{"detail":"internal error"}"#);
    }

    #[test]
    fn events_that_would_not_load_back_are_refused() {
        for bad in [
            &br#"{"extra":{"a":"\ud800"}}"#[..],
            br#"{"extra":{"a":"x\uDC00"}}"#,
            br#"{"extra":[1e999]}"#,
            br#"{"extra":{"n":-2E+400}}"#,
            format!(r#"{{"extra":{}}}"#, "9".repeat(400)).as_bytes(),
        ] {
            assert!(
                matches!(prepare_event(bad, 0, None), Err(IngestError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Pairs, in-range exponents and long strings of digits are fine.
        for good in [
            &br#"{"message":"\ud83d\ude00","extra":{"n":1e300,"m":1.5E-7}}"#[..],
            format!(r#"{{"message":"{}","extra":"e999"}}"#, "7".repeat(400)).as_bytes(),
        ] {
            let e = prepare_event(good, 0, None).unwrap();
            let raw = crate::store::decode_event(e.encoding, &e.data).unwrap();
            serde_json::from_slice::<serde_json::Value>(&raw).unwrap();
        }
        assert!(
            may_not_load(br#"{"a":1e308}"#),
            "conservative: parsed in full"
        );
        assert!(!may_not_load(br#"{"a":"1e308","b":true,"c":12e10}"#));
    }

    #[test]
    fn prepares_events() {
        let e = prepare_event(br#"{"event_id":"AB0C2B6A9D7E4F1A8B3C2D1E0F9A8B7C","timestamp":"2020-01-01T00:00:00Z","level":"warn","message":"m","tags":{"domain":"ldap"}}"#, 1_700_000_000_000, None).unwrap();
        assert_eq!(e.event_id, "ab0c2b6a9d7e4f1a8b3c2d1e0f9a8b7c");
        assert_eq!(e.level, "warning");
        assert_eq!(e.timestamp, 1_577_836_800_000);
        assert!(e.tags.contains(&("domain".into(), "ldap".into())));
        // Future timestamps are clamped to the arrival time.
        let f = prepare_event(br#"{"timestamp":9999999999}"#, 1000, None).unwrap();
        assert_eq!(f.timestamp, 1000);
        for bad in [
            &br#"[]"#[..],
            br#"{"event_id":"nope"}"#,
            br#"{"level":"loud"}"#,
            br#"{"timestamp":"soon"}"#,
            br#"{"timestamp":"0001-01-01T00:00:00Z"}"#,
            br#"{"timestamp":-1}"#,
            b"{\"message\":\"\xff\"}",
        ] {
            assert!(
                matches!(prepare_event(bad, 0, None), Err(IngestError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Compressed when it pays, and it inflates back to the same bytes.
        let text = format!(r#"{{"message":"{}"}}"#, "abc ".repeat(1000));
        let c = prepare_event(text.as_bytes(), 0, None).unwrap();
        assert_eq!(c.encoding, 1);
        assert_eq!(
            crate::store::decode_event(1, &c.data).unwrap(),
            text.as_bytes()
        );
        let again = prepare_event(text.as_bytes(), 0, None).unwrap();
        assert_eq!(again.data, c.data);
        let small = prepare_event(br#"{"message":"tiny"}"#, 0, None).unwrap();
        assert_eq!(small.encoding, 0);
        let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(MAX_EVENT));
        assert!(matches!(
            prepare_event(big.as_bytes(), 0, None),
            Err(IngestError::TooLarge(_))
        ));
    }

    #[test]
    fn long_tag_keys_that_clip_alike_are_one_tag() {
        let (a64, a65) = ("a".repeat(64), "a".repeat(65));
        let body = format!(r#"{{"tags":{{"{a64}":"1","{a65}":"2"}}}}"#);
        let e = prepare_event(body.as_bytes(), 1000, None).unwrap();
        let keys: Vec<&str> = e
            .tags
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with('a'))
            .collect();
        assert_eq!(keys, [a64.as_str()]);
    }
}
