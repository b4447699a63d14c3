//! The HTTP route of kept minidumps: the raw dump of an event, for download.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::MinidumpError;
use crate::state::AppState;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// 503.
    #[error("the collector is busy; retry after 1 s")]
    Busy,
    /// 500.
    #[error("internal error")]
    Internal(String),
}

impl From<MinidumpError> for DownloadError {
    fn from(e: MinidumpError) -> Self {
        match e {
            MinidumpError::Store(e) if e.is_busy() => DownloadError::Busy,
            e => DownloadError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for DownloadError {
    fn into_response(self) -> Response {
        let status = match &self {
            DownloadError::NotFound(_) => StatusCode::NOT_FOUND,
            DownloadError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            DownloadError::Internal(detail) => {
                tracing::error!("minidump download failed: {detail}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, axum::Json(json!({ "detail": self.to_string() }))).into_response()
    }
}

/// `GET /api/0/projects/{pid}/events/{event_id}/attachments/minidump/`: the raw dump.
pub async fn download(
    State(state): State<AppState>,
    Path((pid, event_id)): Path<(String, String)>,
) -> Result<Response, DownloadError> {
    let pid: i64 = pid
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or(DownloadError::NotFound("no such project"))?;
    let eid = crate::ingest::event::parse_event_id(&event_id)
        .ok_or(DownloadError::NotFound("no such event"))?;
    let Some((row, bytes)) = state.minidumps.get(pid, &eid).await? else {
        return Err(DownloadError::NotFound(
            "no minidump is kept for this event (none was sent, or it was dropped past --minidumps-disk-mb)",
        ));
    };
    let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-dmp"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", row.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&row.checksum) {
        h.insert("x-errscope-sha1", v);
    }
    Ok(resp)
}
