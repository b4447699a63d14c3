//! Minidump ingestion: `POST /api/{project}/minidump/` (multipart `upload_file_minidump`
//! with Crashpad's `sentry[...]` form fields, or a raw dump) and envelopes whose
//! `attachment` item is an `event.minidump` (their `event` item is the base of the event).
//!
//! Authenticated and bounded like envelopes (the key before the body is read, the wire
//! and memory budgets, the rate limit before the CPU-heavy processing); the dump becomes a
//! native event (or an "unprocessable minidump" one) and is kept for download.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};

use super::envelope::{EnvelopeHeader, MINIDUMP_ATTACHMENT, OwnedItem};
use super::{IngestError, MAX_EVENT, event, key_from_dsn, key_from_request};
use crate::budget::Reservation;
use crate::minidump::{MinidumpError, Outcome};
use crate::state::AppState;
use crate::store::IngestJob;
use crate::time::now_ms;

/// Bytes of form fields besides the dump (Crashpad's annotations, `sentry` JSON).
const MAX_FIELDS: usize = 1 << 20;
/// Form fields accepted besides the dump.
const MAX_FIELD_COUNT: usize = 200;

/// Whether an envelope item is a minidump attachment.
pub fn is_minidump(item: &OwnedItem) -> bool {
    item.ty == "attachment" && item.attachment_type.as_deref() == Some(MINIDUMP_ATTACHMENT)
}

impl From<MinidumpError> for IngestError {
    fn from(e: MinidumpError) -> Self {
        match e {
            e @ (MinidumpError::Empty | MinidumpError::NotMinidump(_)) => {
                IngestError::Malformed(e.to_string())
            }
            e @ MinidumpError::TooLarge(_) => IngestError::TooLarge(e.to_string()),
            MinidumpError::Busy => IngestError::QueueFull,
            MinidumpError::Store(e) => e.into(),
            e => IngestError::Internal(e.to_string()),
        }
    }
}

/// `POST /api/{project_id}/minidump/`: answers the event id as plain text, as Sentry
/// does for Crashpad and Breakpad clients.
pub async fn handler(
    State(state): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match upload(&state, &project, query.as_deref(), &headers, body).await {
        Ok(id) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            id,
        )
            .into_response(),
        Err(e) => {
            state.metrics.reject(e.reason());
            e.into_response()
        }
    }
}

/// What a multipart upload carried.
#[derive(Default)]
struct Form {
    dump: Option<(Vec<u8>, String)>,
    base: Map<String, Value>,
    fields: Vec<(String, String)>,
}

async fn upload(
    state: &AppState,
    project: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, IngestError> {
    let project_id = super::parse_project(project)?;
    // The key comes with the request: a form has no envelope header to carry a DSN.
    super::authenticate(state, key_from_request(headers, query), project_id).await?;
    let max = state.minidumps.config().max_bytes;
    let mut held = state.budget.reserve();
    let wire = read_wire(body, max + MAX_FIELDS, &mut held).await?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let raw = if encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
        held.cover(2 * wire.len() + max + MAX_FIELDS)
            .await
            .map_err(|_| IngestError::MemoryBusy)?;
        let decoded =
            super::body::decode(encoding, &wire, max + MAX_FIELDS).map_err(|e| match e {
                super::body::BodyError::Unsupported(_) => {
                    IngestError::UnsupportedEncoding(e.to_string())
                }
                super::body::BodyError::TooLarge(_) => IngestError::TooLarge(format!(
                    "the decompressed body exceeds {} bytes (--minidump-max-mb and 1 MiB of fields)",
                    max + MAX_FIELDS
                )),
                e => IngestError::Malformed(e.to_string()),
            })?;
        drop(wire);
        decoded
    } else {
        wire
    };
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    let form = if multipart {
        // The fields are copied out of the body once more.
        held.cover(2 * raw.len() + 256 * 1024)
            .await
            .map_err(|_| IngestError::MemoryBusy)?;
        read_form(headers, raw, max).await?
    } else {
        // A raw dump as the whole body.
        Form {
            dump: Some((raw, "minidump.dmp".into())),
            ..Form::default()
        }
    };
    let Some((dump, name)) = form.dump else {
        return Err(IngestError::Malformed(
            "no `upload_file_minidump` file in the form".into(),
        ));
    };
    let mut base = form.base;
    apply_fields(&mut base, &form.fields);
    let ids = crash(
        state,
        project_id,
        base,
        None,
        dump,
        &name,
        IngestJob::default(),
        held,
    )
    .await?;
    Ok(ids.into_iter().next().unwrap_or_default())
}

/// An envelope holding a minidump attachment: its event item (if any) is the base of the
/// event, its client reports and counts are kept as usual.
pub async fn from_envelope(
    state: &AppState,
    project_id: i64,
    request_key: Option<String>,
    header: EnvelopeHeader,
    items: Vec<OwnedItem>,
    held: Reservation,
) -> Result<Vec<String>, IngestError> {
    if request_key.is_none() {
        let dsn_key = header.dsn.as_deref().and_then(key_from_dsn);
        super::authenticate(state, dsn_key, project_id).await?;
    }
    let mut base = Map::new();
    let mut dump = None;
    let mut job = IngestJob::default();
    for item in items {
        let n = item.n;
        match item.ty.as_str() {
            "event" if base.is_empty() => {
                base = parse_base(&item.payload).map_err(|e| super::prefix(e, n))?;
            }
            "attachment" if dump.is_none() && is_minidump(&item) => {
                let name = item.filename.unwrap_or_else(|| "minidump.dmp".into());
                dump = Some((item.payload, name));
            }
            "client_report" => job.discards.extend(
                super::parse_client_report(&item.payload).map_err(|e| super::prefix(e, n))?,
            ),
            "errscope.counts" => job
                .counts
                .extend(super::parse_counts(&item.payload).map_err(|e| super::prefix(e, n))?),
            _ => {}
        }
    }
    let (dump, name) = dump.ok_or_else(|| IngestError::Internal("no minidump item".into()))?;
    let header_id = header.event_id.as_deref().and_then(event::parse_event_id);
    crash(state, project_id, base, header_id, dump, &name, job, held).await
}

/// An event JSON object that is the base of a crash event.
fn parse_base(bytes: &[u8]) -> Result<Map<String, Value>, IngestError> {
    if bytes.len() > MAX_EVENT {
        return Err(IngestError::TooLarge(format!(
            "the event is {} bytes; the limit is {MAX_EVENT}",
            bytes.len()
        )));
    }
    if event::json_depth(bytes) > event::MAX_DEPTH {
        return Err(IngestError::Malformed(format!(
            "the event nests deeper than {} levels",
            event::MAX_DEPTH
        )));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(IngestError::Malformed(
            "the event must be a JSON object".into(),
        )),
        Err(e) => Err(IngestError::Malformed(format!("invalid event: {e}"))),
    }
}

/// Reads the request body, at most `limit` wire bytes, each covered by `held` first.
async fn read_wire(
    body: Body,
    limit: usize,
    held: &mut Reservation,
) -> Result<Vec<u8>, IngestError> {
    let too_large = || {
        IngestError::TooLarge(format!(
            "the request body exceeds {limit} bytes (--minidump-max-mb and 1 MiB of fields)"
        ))
    };
    let hint = axum::body::HttpBody::size_hint(&body);
    if hint.lower() > limit as u64 {
        return Err(too_large());
    }
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(super::intake::wire_error)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if out.len() + data.len() > limit {
            return Err(too_large());
        }
        held.cover(64 * 1024 + out.len() + data.len())
            .await
            .map_err(|_| IngestError::MemoryBusy)?;
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// The form's fields: the dump, the `sentry` JSON, `sentry[...]` and other text fields.
async fn read_form(headers: &HeaderMap, raw: Vec<u8>, max: usize) -> Result<Form, IngestError> {
    let mut req = Request::new(Body::from(raw));
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    let bad = |e: axum::extract::multipart::MultipartError| {
        IngestError::Malformed(format!("bad multipart body: {}", e.body_text()))
    };
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| IngestError::Malformed(format!("bad multipart body: {}", e.body_text())))?;
    let mut form = Form::default();
    let mut field_bytes = 0usize;
    while let Some(mut field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "upload_file_minidump" {
            let file = field.file_name().unwrap_or("minidump.dmp").to_owned();
            let mut data = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                if data.len() + chunk.len() > max {
                    return Err(MinidumpError::TooLarge(max).into());
                }
                data.extend_from_slice(&chunk);
            }
            if form.dump.is_none() {
                form.dump = Some((data, file));
            }
            continue;
        }
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            field_bytes += chunk.len();
            if field_bytes > MAX_FIELDS {
                return Err(IngestError::TooLarge(format!(
                    "the form's fields besides the minidump exceed {MAX_FIELDS} bytes"
                )));
            }
            data.extend_from_slice(&chunk);
        }
        // Other files (logs, attachments) are not kept.
        if name.starts_with("upload_file_") || field.file_name().is_some() {
            continue;
        }
        if name == "sentry" {
            form.base =
                parse_base(&data).map_err(|e| prefix_field(e, "the `sentry` form field"))?;
            continue;
        }
        if form.fields.len() >= MAX_FIELD_COUNT {
            continue;
        }
        let value = String::from_utf8_lossy(&data).into_owned();
        form.fields.push((name, value));
    }
    Ok(form)
}

fn prefix_field(e: IngestError, what: &str) -> IngestError {
    match e {
        IngestError::Malformed(m) => IngestError::Malformed(format!("{what}: {m}")),
        e => e,
    }
}

/// The path of a `sentry[a][b]` field name: `["a", "b"]`.
fn bracket_path(name: &str) -> Option<Vec<&str>> {
    let rest = name.strip_prefix("sentry")?;
    let mut out = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        out.push(&inner[..end]);
        rest = &inner[end + 1..];
    }
    (!out.is_empty() && out.iter().all(|s| !s.is_empty())).then_some(out)
}

/// Applies Crashpad's form fields to the event: `sentry[release]`, `sentry[tags][k]`,
/// `sentry[user][id]`, ... set those paths; other text fields go under `extra`.
fn apply_fields(ev: &mut Map<String, Value>, fields: &[(String, String)]) {
    for (name, value) in fields {
        match bracket_path(name) {
            Some(path) if path.len() <= 4 => {
                let mut at = &mut *ev;
                for key in &path[..path.len() - 1] {
                    let slot = at
                        .entry((*key).to_owned())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !slot.is_object() {
                        *slot = Value::Object(Map::new());
                    }
                    let Value::Object(m) = slot else {
                        unreachable!("made an object above")
                    };
                    at = m;
                }
                at.insert(path[path.len() - 1].to_owned(), value.clone().into());
            }
            Some(_) => {}
            None => {
                let extra = ev
                    .entry("extra")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = extra {
                    m.insert(name.clone(), value.clone().into());
                }
            }
        }
    }
}

/// Processes a dump into an event over `base`, stores it (with `job`'s other records) and
/// keeps the dump. Returns the stored event ids.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per ingestion path"
)]
async fn crash(
    state: &AppState,
    project_id: i64,
    mut base: Map<String, Value>,
    fallback_id: Option<String>,
    dump: Vec<u8>,
    name: &str,
    mut job: IngestJob,
    held: Reservation,
) -> Result<Vec<String>, IngestError> {
    state.minidumps.check(&dump)?;
    // Processing costs a core for a while: a project over its limit pays none of it.
    if let Some(wait) = state.rate_limited(project_id, 1).await? {
        return Err(IngestError::RateLimited(wait));
    }
    let received = now_ms();
    let dump = Arc::new(dump);
    let outcome = state.minidumps.process(dump.clone()).await?;
    let mut note = json!({ "size": dump.len(), "name": name });
    match outcome {
        Outcome::Processed(fields) => {
            for (k, v) in fields {
                match (k.as_str(), base.get_mut(&k)) {
                    // The SDK's own contexts and time win; the dump fills what is missing.
                    ("contexts", Some(Value::Object(mine))) => {
                        if let Value::Object(theirs) = v {
                            for (ck, cv) in theirs {
                                mine.entry(ck).or_insert(cv);
                            }
                        }
                    }
                    ("timestamp", Some(_)) => {}
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
            note["processed"] = true.into();
        }
        Outcome::Unprocessable(reason) => {
            base.insert(
                "message".into(),
                format!("Unprocessable minidump: {reason}").into(),
            );
            base.remove("exception");
            note["processed"] = false.into();
            note["error"] = reason.into();
        }
    }
    base.entry("platform").or_insert_with(|| "native".into());
    base.entry("level").or_insert_with(|| "fatal".into());
    let event_id = match base.get("event_id").and_then(Value::as_str) {
        Some(id) => event::parse_event_id(id).ok_or_else(|| {
            IngestError::Malformed("event_id must be 32 hex digits (or a UUID)".into())
        })?,
        None => fallback_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
    };
    base.insert("event_id".into(), event_id.clone().into());
    let notes = base
        .entry("errscope")
        .or_insert_with(|| Value::Object(Map::new()));
    if !notes.is_object() {
        *notes = Value::Object(Map::new());
    }
    notes["minidump"] = note;
    let mut ev = Value::Object(base);
    let bytes = fit(&mut ev)?;
    let symbolicator = state.symbolicator.clone();
    let (prepared, waiting) = tokio::task::spawn_blocking(move || {
        let mut waiting = Vec::new();
        super::prepare_symbolicated(Some(&symbolicator), &bytes, received, None, &mut waiting)
            .map(|p| (p, waiting))
    })
    .await
    .map_err(|e| IngestError::Internal(e.to_string()))??;
    job.project_id = project_id;
    job.events.push(prepared);
    state.store.ingest(job).await?;
    drop(held);
    if let Err(e) = state
        .minidumps
        .keep(project_id, &event_id, name, dump, received)
        .await
    {
        tracing::warn!("minidumps: the dump of event {event_id} was not kept: {e}");
    }
    crate::symbolicate::remember_missing(state, project_id, waiting).await;
    Ok(vec![event_id])
}

/// The event's JSON within [`MAX_EVENT`]: past it, the other threads lose their stacks,
/// then every stack keeps fewer frames.
fn fit(ev: &mut Value) -> Result<Vec<u8>, IngestError> {
    let serialize = |ev: &Value| {
        serde_json::to_vec(ev).map_err(|e| IngestError::Internal(format!("event JSON: {e}")))
    };
    let mut bytes = serialize(ev)?;
    if bytes.len() <= MAX_EVENT {
        return Ok(bytes);
    }
    if let Some(Value::Array(threads)) = ev.pointer_mut("/threads/values") {
        for t in threads.iter_mut() {
            if t.get("crashed") != Some(&Value::Bool(true))
                && let Value::Object(m) = t
            {
                m.remove("stacktrace");
            }
        }
    }
    let mut keep = 128;
    loop {
        bytes = serialize(ev)?;
        if bytes.len() <= MAX_EVENT || keep == 0 {
            break;
        }
        for st in crate::symbolicate::event::stacktraces_mut(ev) {
            if let Some(Value::Array(frames)) = st.get_mut("frames")
                && frames.len() > keep
            {
                // The newest frames are last.
                let cut = frames.len() - keep;
                frames.drain(..cut);
            }
        }
        keep /= 2;
    }
    if bytes.len() > MAX_EVENT {
        return Err(IngestError::TooLarge(format!(
            "the event made from the minidump exceeds {MAX_EVENT} bytes even without stacks"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashpad_fields_fill_the_event() {
        let mut ev = Map::new();
        apply_fields(
            &mut ev,
            &[
                ("sentry[release]".into(), "app@1.2".into()),
                ("sentry[environment]".into(), "prod".into()),
                ("sentry[tags][gpu]".into(), "nv".into()),
                ("sentry[user][id]".into(), "42".into()),
                ("prod".into(), "Crashpad-App".into()),
                ("sentry[]".into(), "ignored".into()),
            ],
        );
        assert_eq!(
            Value::Object(ev),
            json!({
                "release": "app@1.2",
                "environment": "prod",
                "tags": {"gpu": "nv"},
                "user": {"id": "42"},
                "extra": {"prod": "Crashpad-App", "sentry[]": "ignored"},
            })
        );
        assert_eq!(bracket_path("sentry[a][b]"), Some(vec!["a", "b"]));
        assert_eq!(bracket_path("sentry[a"), None);
        assert_eq!(bracket_path("other[a]"), None);
    }
}
