//! `/api/0/` handlers.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::state::AppState;
use crate::store::{Cursor, IssueFilter, ProjectRow, STATUSES, Sort};
use crate::time::now_ms;

type Params = Query<HashMap<String, String>>;

fn id_param(raw: &str, what: &'static str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or(ApiError::NotFound(what))
}

fn project_json(state: &AppState, p: &ProjectRow) -> Value {
    json!({ "id": p.id, "name": p.name, "dsn": state.dsn(p) })
}

async fn project(state: &AppState, raw: &str) -> Result<ProjectRow, ApiError> {
    let id = id_param(raw, "no such project")?;
    let all = state.store.list_projects().await?;
    all.into_iter()
        .find(|p| p.id == id)
        .ok_or(ApiError::NotFound("no such project"))
}

/// `GET /api/0/projects/`: the projects the caller sees.
pub async fn list_projects(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> Result<Response, ApiError> {
    let all = state.store.list_projects().await?;
    Ok(Json(
        all.iter()
            .filter(|p| caller.sees(p.id))
            .map(|p| project_json(&state, p))
            .collect::<Vec<_>>(),
    )
    .into_response())
}

#[derive(Deserialize)]
struct NewProject {
    name: String,
}

/// `POST /api/0/projects/`.
pub async fn create_project(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p: NewProject = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"name\": \"...\"}}: {e}")))?;
    let name = p.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name must be 1 to 64 printable characters".into(),
        ));
    }
    let n = name.clone();
    let created = state.store.create_project(&n).await?;
    let p =
        created.ok_or_else(|| ApiError::Conflict(format!("a project named `{name}` exists")))?;
    state.remember_key(&p.key, p.id);
    Ok((StatusCode::CREATED, Json(project_json(&state, &p))).into_response())
}

/// `GET /api/0/projects/{pid}/`.
pub async fn get_project(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Response, ApiError> {
    let p = project(&state, &pid).await?;
    Ok(Json(project_json(&state, &p)).into_response())
}

/// `GET /api/0/projects/{pid}/stats/`.
pub async fn project_stats(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_param(&pid, "no such project")?;
    let s = state.store.stats(id).await?;
    Ok(Json(s.ok_or(ApiError::NotFound("no such project"))?).into_response())
}

fn status_param(p: &HashMap<String, String>, default: &str) -> Result<Option<String>, ApiError> {
    let s = p
        .get("status")
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(default);
    if s == "all" {
        return Ok(None);
    }
    if STATUSES.contains(&s) {
        Ok(Some(s.to_owned()))
    } else {
        Err(ApiError::BadRequest(
            "status must be unresolved, resolved, muted or all".into(),
        ))
    }
}

/// `GET /api/0/projects/{pid}/classes/`.
pub async fn classes(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let pr = project(&state, &pid).await?;
    let status = status_param(&p, "all")?;
    let rows = state.store.classes(pr.id, status, now_ms()).await?;
    Ok(Json(rows).into_response())
}

fn limit_param(p: &HashMap<String, String>) -> Result<i64, ApiError> {
    match p.get("limit").filter(|s| !s.is_empty()) {
        None => Ok(50),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| *l >= 1)
            .map(|l| l.min(100))
            .ok_or_else(|| ApiError::BadRequest("limit must be a positive integer".into())),
    }
}

fn opt(p: &HashMap<String, String>, k: &str) -> Option<String> {
    p.get(k).filter(|s| !s.is_empty()).cloned()
}

/// `GET /api/0/projects/{pid}/issues/`.
pub async fn list_issues(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(pid): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let pr = project(&state, &pid).await?;
    let assigned_to = match opt(&p, "assigned").as_deref() {
        None => None,
        Some("me") => Some(caller.user.id),
        Some(a) => Some(a.parse::<i64>().ok().filter(|u| *u > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("assigned must be `me` or a user id, not `{a}`"))
        })?),
    };
    let filter = IssueFilter {
        status: status_param(&p, "unresolved")?,
        class: opt(&p, "class"),
        level: opt(&p, "level"),
        environment: opt(&p, "environment"),
        release: opt(&p, "release"),
        query: opt(&p, "query"),
        assigned_to,
    };
    let sort = match opt(&p, "sort") {
        None => Sort::LastSeen,
        Some(s) => Sort::parse(&s).ok_or_else(|| {
            ApiError::BadRequest("sort must be last_seen, first_seen or count".into())
        })?,
    };
    let cursor = match opt(&p, "cursor") {
        None => None,
        Some(c) => {
            Some(Cursor::decode(&c).ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))?)
        }
    };
    let limit = limit_param(&p)?;
    let (data, next) = state
        .store
        .issues(pr.id, filter, sort, cursor, limit, now_ms())
        .await?;
    Ok(Json(json!({ "data": data, "next_cursor": next })).into_response())
}

async fn issue_json(state: &AppState, id: i64) -> Result<Value, ApiError> {
    let i = state.store.issue(id, now_ms()).await?;
    let i = i.ok_or(ApiError::NotFound("no such issue"))?;
    serde_json::to_value(i).map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /api/0/issues/{id}/`.
pub async fn get_issue(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "no such issue")?;
    let mut v = issue_json(&state, id).await?;
    let d = state.store.issue_detail(id, 336, now_ms()).await?;
    if let Value::Object(m) = &mut v {
        m.insert("hourly_14d".into(), json!(d.hourly));
        m.insert("tags".into(), json!(d.tags));
        m.insert("latest_event_id".into(), json!(d.latest_event_id));
        // Release health: the releases the issue was seen in (its `release` tag values,
        // most events first) and the one it first appeared in.
        let releases: Vec<Value> = d
            .tags
            .get("release")
            .map(|vs| {
                vs.iter()
                    .map(|t| json!({"version": t.value, "count": t.count}))
                    .collect()
            })
            .unwrap_or_default();
        m.insert("releases".into(), json!(releases));
        let first = state.store.first_release(id).await?;
        m.insert("first_release".into(), json!(first));
    }
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

/// `PUT /api/0/issues/{id}/`.
pub async fn update_issue(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "no such issue")?;
    let b: StatusBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"status\": \"resolved\"|\"muted\"|\"unresolved\"}}: {e}"
        ))
    })?;
    if !STATUSES.contains(&b.status.as_str()) {
        return Err(ApiError::BadRequest(
            "status must be resolved, muted or unresolved".into(),
        ));
    }
    let Some(unmuted) = state
        .store
        .set_issue_status(id, &b.status, &state.alerts)
        .await?
    else {
        return Err(ApiError::NotFound("no such issue"));
    };
    if unmuted > 0 {
        state.alerts.wake();
    }
    Ok(Json(issue_json(&state, id).await?).into_response())
}

/// `GET /api/0/issues/{id}/events/`.
pub async fn issue_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "no such issue")?;
    let limit = limit_param(&p)?;
    let cursor = match opt(&p, "cursor") {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?,
        ),
    };
    let found = state.store.issue(id, 0).await?;
    if found.is_none() {
        return Err(ApiError::NotFound("no such issue"));
    }
    let (data, next) = state.store.issue_events(id, cursor, limit).await?;
    Ok(Json(json!({ "data": data, "next_cursor": next })).into_response())
}

/// `GET /api/0/projects/{pid}/events/{event_id}/`.
pub async fn get_event(
    State(state): State<AppState>,
    Path((pid, event_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let pid = id_param(&pid, "no such project")?;
    let eid = crate::ingest::event::parse_event_id(&event_id)
        .ok_or(ApiError::NotFound("no such event"))?;
    // An event that waited for a debug file which has arrived is symbolicated now.
    if let Err(e) = crate::symbolicate::on_view(&state, pid, &eid).await {
        tracing::warn!("symbolicating event {eid} on view: {e}");
    }
    let v = state.store.event(pid, &eid).await?;
    Ok(Json(v.ok_or(ApiError::NotFound("no such event"))?).into_response())
}

/// `GET /api/0/projects/{pid}/tags/{key}/values/`.
pub async fn tag_values(
    State(state): State<AppState>,
    Path((pid, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let pr = project(&state, &pid).await?;
    let v = state.store.project_tag_values(pr.id, &key).await?;
    Ok(Json(v).into_response())
}
