//! The HTTP routes of debug files: Sentry's chunk-upload and assemble protocol (what
//! `sentry-cli debug-files upload` speaks), a multipart upload for `curl -F`, list, delete.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Digest as _;

use super::chunks::is_sha1;
use super::{DifError, Difs, hex};
use crate::auth::policy::{get, post};
use crate::auth::{Need, Routes, Target};
use crate::state::AppState;
use crate::store::{DifRow, StoreError};
use crate::time::rfc3339;

/// The size of one chunk sentry-cli sends.
pub const CHUNK_SIZE: usize = 8 << 20;
/// Chunks per chunk-upload request.
pub const CHUNKS_PER_REQUEST: usize = 4;
/// The largest chunk-upload request body.
pub const MAX_REQUEST_SIZE: usize = 32 << 20;
/// The largest debug file, in bytes (also bounded by the budget).
pub const MAX_FILE_SIZE: u64 = 2 << 30;
const BUSY: &str = "too many debug file uploads at once; retry in a moment";
/// Files per assemble request.
const MAX_FILES_PER_ASSEMBLE: usize = 256;

/// Why a debug-file request failed.
#[derive(Debug, thiserror::Error)]
pub enum DifApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 503, retry after a second.
    #[error("{0}")]
    Busy(String),
    /// 500.
    #[error("internal error")]
    Internal(String),
}

impl From<DifError> for DifApiError {
    fn from(e: DifError) -> Self {
        match e {
            DifError::Invalid(m) => DifApiError::BadRequest(m),
            e @ DifError::TooLarge { .. } => DifApiError::TooLarge(e.to_string()),
            e @ DifError::StagingFull(_) => DifApiError::Busy(e.to_string()),
            DifError::Store(e) if e.is_busy() => {
                DifApiError::Busy("the collector is busy; retry after 1 s".into())
            }
            e => DifApiError::Internal(e.to_string()),
        }
    }
}

impl From<StoreError> for DifApiError {
    fn from(e: StoreError) -> Self {
        DifError::Store(e).into()
    }
}

impl IntoResponse for DifApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            DifApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DifApiError::NotFound(_) => StatusCode::NOT_FOUND,
            DifApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DifApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            DifApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let DifApiError::Internal(detail) = &self {
            tracing::error!("debug file request failed: {detail}");
        } else {
            tracing::debug!("debug file request rejected ({status}): {self}");
        }
        let mut resp = (status, Json(json!({ "detail": self.to_string() }))).into_response();
        if matches!(self, DifApiError::Busy(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Adds the routes to the authenticated `/api/0/` ones, with what each needs: uploads
/// `debugfiles:write`, listing `project:read`, deleting `project:admin`. (The org segment
/// is named `pid` because the router needs one name per position under `/projects/`.)
pub fn routes(routes: Routes) -> Routes {
    use crate::auth::Scope::{DebugFilesWrite, ProjectAdmin, ProjectRead};
    let project = Target::ProjectRef("project");
    routes
        .route(
            "/api/0/organizations/{org}/chunk-upload/",
            get(Need::org(DebugFilesWrite), chunk_options)
                .post(Need::org(DebugFilesWrite), upload_chunks)
                .limit(MAX_REQUEST_SIZE),
        )
        .route(
            "/api/0/projects/{pid}/{project}/files/difs/assemble/",
            post(Need::on(DebugFilesWrite, project), assemble),
        )
        .route(
            "/api/0/projects/{pid}/{project}/files/dsyms/",
            get(Need::on(ProjectRead, project), list)
                .delete(
                    Need::on(ProjectAdmin, project).audited("debugfile.delete"),
                    delete_file,
                )
                .post(Need::on(DebugFilesWrite, project), upload_multipart)
                .limit(MAX_FILE_SIZE as usize),
        )
}

/// The project a path names, by id or by name.
async fn project_id(state: &AppState, raw: &str) -> Result<i64, DifApiError> {
    let projects = state.store.list_projects().await?;
    projects
        .iter()
        .find(|p| p.id.to_string() == raw)
        .or_else(|| projects.iter().find(|p| p.name == raw))
        .map(|p| p.id)
        .ok_or_else(|| DifApiError::NotFound(format!("no project with the id or name `{raw}`")))
}

/// The JSON of a stored file: Sentry's shape, plus errscope's `kind`, `features`,
/// `hasSources`, `hasDebugInfo`, `lastUsed`, `projectId`.
pub fn dif_json(r: &DifRow) -> Value {
    let features = r.features.names();
    json!({
        "id": r.id.to_string(),
        "uuid": r.debug_id.get(..36).unwrap_or(&r.debug_id),
        "debugId": r.debug_id,
        "codeId": r.code_id,
        "cpuName": r.arch,
        "objectName": r.name,
        "symbolType": r.kind.as_str(),
        "kind": r.kind.as_str(),
        "size": r.size,
        "sha1": r.checksum,
        "dateCreated": rfc3339(r.uploaded),
        "lastUsed": r.last_used.map(rfc3339),
        "projectId": r.project_id,
        "features": features,
        "hasSources": r.features.sources,
        "hasDebugInfo": r.features.debug,
        "data": { "type": r.object_kind, "features": features },
    })
}

fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET /api/0/organizations/{org}/chunk-upload/`: how to send chunks.
async fn chunk_options(State(state): State<AppState>, Path(org): Path<String>) -> Response {
    let base = state.config.public_url.trim_end_matches('/');
    let max_file = MAX_FILE_SIZE.min(state.difs.max_bytes());
    Json(json!({
        "url": format!("{base}/api/0/organizations/{}/chunk-upload/", path_segment(&org)),
        "chunkSize": CHUNK_SIZE,
        "chunksPerRequest": CHUNKS_PER_REQUEST,
        "maxFileSize": max_file,
        "maxRequestSize": MAX_REQUEST_SIZE,
        "maxWait": 60,
        "concurrency": super::CONCURRENT_UPLOADS,
        "hashAlgorithm": "sha1",
        "compression": ["gzip"],
        "accept": ["debug_files", "sources"],
    }))
    .into_response()
}

/// `POST /api/0/organizations/{org}/chunk-upload/`: multipart fields `file` (or
/// `file_gzip`, gzip-compressed), each named by the SHA-1 of its content.
async fn upload_chunks(
    State(state): State<AppState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Response, DifApiError> {
    // Refuse a body announced too large before reading any of it.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_REQUEST_SIZE as u64) {
        return Err(DifApiError::TooLarge(format!(
            "the request has {} bytes; chunk uploads take at most {MAX_REQUEST_SIZE} (maxRequestSize)",
            announced.unwrap_or_default()
        )));
    }
    let difs = state.difs.clone();
    let _permit = difs
        .upload_permit()
        .await
        .ok_or_else(|| DifApiError::Busy(BUSY.into()))?;
    let mut chunks: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        let gzip = match field.name() {
            Some("file") => false,
            Some("file_gzip") => true,
            other => {
                return Err(DifApiError::BadRequest(format!(
                    "unexpected form field {other:?}: chunks are sent as `file` or `file_gzip`"
                )));
            }
        };
        let checksum = field.file_name().unwrap_or_default().to_ascii_lowercase();
        if !is_sha1(&checksum) {
            return Err(DifApiError::BadRequest(format!(
                "a chunk's file name must be the SHA-1 of its content in hex, not {checksum:?}"
            )));
        }
        if chunks.len() == CHUNKS_PER_REQUEST {
            return Err(DifApiError::BadRequest(format!(
                "more than {CHUNKS_PER_REQUEST} chunks in one request (chunksPerRequest)"
            )));
        }
        let mut raw = Vec::new();
        while let Some(part) = field.chunk().await.map_err(multipart_error)? {
            if raw.len() + part.len() > CHUNK_SIZE {
                return Err(DifApiError::TooLarge(format!(
                    "chunk {checksum} is larger than the chunk size of {CHUNK_SIZE} bytes"
                )));
            }
            raw.extend_from_slice(&part);
        }
        let data = if gzip {
            gunzip_chunk(&raw, &checksum)?
        } else {
            raw
        };
        let actual = hex(&sha1::Sha1::digest(&data));
        if actual != checksum {
            return Err(DifApiError::BadRequest(format!(
                "chunk {checksum}: its content has the SHA-1 {actual}; nothing was stored"
            )));
        }
        chunks.push((checksum, data));
    }
    let n = chunks.len();
    let d = difs.clone();
    tokio::task::spawn_blocking(move || d.chunks().put_all(&chunks))
        .await
        .map_err(|e| DifApiError::Internal(e.to_string()))??;
    Ok(Json(json!({ "chunks": n })).into_response())
}

fn gunzip_chunk(raw: &[u8], checksum: &str) -> Result<Vec<u8>, DifApiError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(CHUNK_SIZE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DifApiError::BadRequest(format!("chunk {checksum}: bad gzip data: {e}")))?;
    if out.len() > CHUNK_SIZE {
        return Err(DifApiError::TooLarge(format!(
            "chunk {checksum} inflates beyond the chunk size of {CHUNK_SIZE} bytes"
        )));
    }
    Ok(out)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> DifApiError {
    let status = e.status();
    let msg = format!("bad multipart body: {}", e.body_text());
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        DifApiError::TooLarge(msg)
    } else {
        DifApiError::BadRequest(msg)
    }
}

#[derive(Debug, Deserialize)]
struct AssembleFile {
    name: String,
    #[serde(default)]
    debug_id: Option<String>,
    chunks: Vec<String>,
}

/// `POST /api/0/projects/{org}/{project}/files/difs/assemble/`: `{checksum: {name,
/// debug_id, chunks}}`. Files whose chunks are all staged are assembled, checked and
/// stored during the request; the answer gives each file's state: `ok` (with `dif`),
/// `not_found` (with the `missingChunks` to upload), `assembling` or `error` (`detail`).
async fn assemble(
    State(state): State<AppState>,
    Path((_org, project)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, DifApiError> {
    let pid = project_id(&state, &project).await?;
    let files: BTreeMap<String, AssembleFile> = serde_json::from_slice(&body).map_err(|e| {
        DifApiError::BadRequest(format!(
            "expected {{\"<sha1>\": {{\"name\", \"debug_id\", \"chunks\": [\"<sha1>\", ...]}}}}: {e}"
        ))
    })?;
    if files.len() > MAX_FILES_PER_ASSEMBLE {
        return Err(DifApiError::BadRequest(format!(
            "{} files in one assemble request; at most {MAX_FILES_PER_ASSEMBLE}",
            files.len()
        )));
    }
    let max_chunks = (MAX_FILE_SIZE / CHUNK_SIZE as u64) as usize + 1;
    for (checksum, f) in &files {
        if !is_sha1(checksum) {
            return Err(DifApiError::BadRequest(format!(
                "`{checksum}` is not a SHA-1 in lower-case hex"
            )));
        }
        if let Some(c) = f.chunks.iter().find(|c| !is_sha1(c)) {
            return Err(DifApiError::BadRequest(format!(
                "file {checksum}: chunk `{c}` is not a SHA-1 in lower-case hex"
            )));
        }
        if f.chunks.len() > max_chunks {
            return Err(DifApiError::TooLarge(format!(
                "file {checksum}: {} chunks is more than the largest file ({MAX_FILE_SIZE} bytes) has",
                f.chunks.len()
            )));
        }
    }
    let difs = state.difs.clone();
    let mut out = serde_json::Map::new();
    for (checksum, f) in files {
        let answer = assemble_one(&difs, pid, &checksum, f).await;
        out.insert(checksum, answer);
    }
    Ok(Json(Value::Object(out)).into_response())
}

fn file_state(
    state: &str,
    missing: &[String],
    detail: Option<String>,
    dif: Option<Value>,
) -> Value {
    json!({ "state": state, "missingChunks": missing, "detail": detail, "dif": dif })
}

async fn assemble_one(difs: &Difs, pid: i64, checksum: &str, f: AssembleFile) -> Value {
    if let Some(row) = difs.by_checksum(pid, checksum) {
        return file_state("ok", &[], None, Some(dif_json(&row)));
    }
    if f.chunks.is_empty() {
        return file_state("error", &[], Some("the file lists no chunks".into()), None);
    }
    let missing: Vec<String> = f
        .chunks
        .iter()
        .filter(|c| !difs.chunks().has(c))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let detail = format!(
            "{} of {} chunks have not been uploaded",
            missing.len(),
            f.chunks.len()
        );
        return file_state("not_found", &missing, Some(detail), None);
    }
    if !difs.claim(checksum) {
        return file_state("assembling", &[], None, None);
    }
    let Some(_permit) = difs.upload_permit().await else {
        difs.release(checksum);
        return file_state("error", &[], Some(BUSY.into()), None);
    };
    let d = difs.clone();
    let sum = checksum.to_owned();
    let chunks = f.chunks.clone();
    let name = f.name.clone();
    let result = tokio::task::spawn_blocking(move || assemble_file(&d, pid, &name, &sum, &chunks))
        .await
        .map_err(|e| DifError::Invalid(format!("assembling failed: {e}")))
        .and_then(|r| r);
    difs.release(checksum);
    // The chunks were used (or found wanting) either way.
    difs.chunks().remove(&f.chunks);
    match result {
        Ok(row) => {
            if let Some(want) = f.debug_id.as_deref().and_then(super::normalize_debug_id)
                && want != row.debug_id
            {
                tracing::info!(
                    "debug files: {} was announced as {want} but is {}",
                    row.name,
                    row.debug_id
                );
            }
            file_state("ok", &[], None, Some(dif_json(&row)))
        }
        Err(DifError::Store(e)) => {
            tracing::error!("debug files: storing {checksum} failed: {e}");
            file_state(
                "error",
                &[],
                Some("internal error while storing the file".into()),
                None,
            )
        }
        Err(DifError::Io(p, e)) => {
            tracing::error!("debug files: {}: {e}", p.display());
            file_state(
                "error",
                &[],
                Some("internal error while storing the file".into()),
                None,
            )
        }
        Err(e) => file_state("error", &[], Some(e.to_string()), None),
    }
}

fn assemble_file(
    difs: &Difs,
    pid: i64,
    name: &str,
    checksum: &str,
    chunks: &[String],
) -> Result<DifRow, DifError> {
    let limit = MAX_FILE_SIZE.min(difs.max_bytes());
    let mut tmp = difs.temp_file()?;
    let mut hasher = sha1::Sha1::new();
    let mut size = 0u64;
    for c in chunks {
        let path = difs
            .chunks()
            .staged(c)
            .ok_or_else(|| DifError::Invalid(format!("chunk {c} is no longer staged")))?;
        let data = std::fs::read(&path).map_err(|e| DifError::Io(path.clone(), e))?;
        size += data.len() as u64;
        if size > limit {
            return Err(DifError::TooLarge {
                size,
                budget: limit,
            });
        }
        hasher.update(&data);
        tmp.write_all(&data)?;
    }
    let actual = hex(&hasher.finalize());
    if actual != checksum {
        return Err(DifError::Invalid(format!(
            "the chunks put together have the SHA-1 {actual}, not {checksum}"
        )));
    }
    difs.add_file(pid, name, tmp, checksum)
}

/// `GET /api/0/projects/{org}/{project}/files/dsyms/`: the project's files, newest
/// first; `debug_id`, `code_id` and `query` (part of the name or an id) filter.
async fn list(
    State(state): State<AppState>,
    Path((_org, project)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, DifApiError> {
    let pid = project_id(&state, &project).await?;
    let debug_id = q.get("debug_id").and_then(|d| super::normalize_debug_id(d));
    let code_id = q.get("code_id").map(|c| c.trim().to_ascii_lowercase());
    let query = q.get("query").map(|s| s.trim().to_ascii_lowercase());
    let rows: Vec<Value> = state
        .difs
        .list(Some(pid))
        .iter()
        .filter(|r| debug_id.as_ref().is_none_or(|d| &r.debug_id == d))
        .filter(|r| {
            code_id
                .as_ref()
                .is_none_or(|c| r.code_id.as_ref() == Some(c))
        })
        .filter(|r| {
            query.as_ref().is_none_or(|s| {
                r.name.to_ascii_lowercase().contains(s)
                    || r.debug_id.contains(s)
                    || r.code_id.as_ref().is_some_and(|c| c.contains(s))
            })
        })
        .map(dif_json)
        .collect();
    Ok(Json(rows).into_response())
}

/// `DELETE /api/0/projects/{org}/{project}/files/dsyms/?id=<id>`.
async fn delete_file(
    State(state): State<AppState>,
    Path((_org, project)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, DifApiError> {
    let pid = project_id(&state, &project).await?;
    let id: i64 = q
        .get("id")
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| DifApiError::BadRequest("give the file to delete as ?id=<id>".into()))?;
    let difs = state.difs.clone();
    let found = tokio::task::spawn_blocking(move || difs.delete(Some(pid), id))
        .await
        .map_err(|e| DifApiError::Internal(e.to_string()))??;
    if !found {
        return Err(DifApiError::NotFound(format!(
            "no debug file with the id {id} in this project"
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/0/projects/{org}/{project}/files/dsyms/`: multipart, one or more `file`
/// fields (`curl -F file=@app.debug`). Each is streamed to disk, then checked and
/// stored; the answer (201) lists them.
async fn upload_multipart(
    State(state): State<AppState>,
    Path((_org, project)): Path<(String, String)>,
    mut form: Multipart,
) -> Result<Response, DifApiError> {
    let pid = project_id(&state, &project).await?;
    let difs = state.difs.clone();
    let _permit = difs
        .upload_permit()
        .await
        .ok_or_else(|| DifApiError::Busy(BUSY.into()))?;
    let limit = MAX_FILE_SIZE.min(difs.max_bytes());
    let mut stored = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            continue;
        }
        let name = field
            .file_name()
            .map(str::to_owned)
            .unwrap_or_else(|| "unnamed".into());
        let mut tmp = difs.temp_file()?;
        let mut hasher = sha1::Sha1::new();
        let mut size = 0u64;
        while let Some(part) = field.chunk().await.map_err(multipart_error)? {
            size += part.len() as u64;
            if size > limit {
                return Err(DifError::TooLarge {
                    size,
                    budget: limit,
                }
                .into());
            }
            hasher.update(&part);
            tmp.write_all(&part)?;
        }
        let checksum = hex(&hasher.finalize());
        let d = difs.clone();
        let row = tokio::task::spawn_blocking(move || d.add_file(pid, &name, tmp, &checksum))
            .await
            .map_err(|e| DifApiError::Internal(e.to_string()))??;
        stored.push(dif_json(&row));
    }
    if stored.is_empty() {
        return Err(DifApiError::BadRequest(
            "no `file` field: upload with curl -F file=@<path>".into(),
        ));
    }
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}
