//! The issue workflow: assigning an issue to someone who works on its project, comments
//! on an issue, and who can be assigned (`/api/0/issues/{id}/assignee/`, `.../comments/`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::policy::{Routes, delete, get, put};
use crate::auth::{Caller, Need, Role, Scope, Target, audit};
use crate::state::AppState;
use crate::store::{Assigned, StoreError, UserRow};
use crate::time::now_ms;

/// The longest comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 10_000;
/// Comments an issue page lists (the newest).
pub const COMMENTS_SHOWN: i64 = 500;

/// Why a workflow request failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 503.
    #[error("the collector is busy; retry after 1 s")]
    Busy,
    /// 500.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for WorkflowError {
    fn from(e: StoreError) -> Self {
        if e.is_busy() {
            WorkflowError::Busy
        } else {
            WorkflowError::Internal(e.to_string())
        }
    }
}

impl IntoResponse for WorkflowError {
    fn into_response(self) -> Response {
        let status = match &self {
            WorkflowError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WorkflowError::Forbidden(_) => StatusCode::FORBIDDEN,
            WorkflowError::NotFound(_) => StatusCode::NOT_FOUND,
            WorkflowError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            WorkflowError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let WorkflowError::Internal(detail) = &self {
            tracing::error!("workflow request failed: {detail}");
        } else {
            tracing::debug!("workflow request rejected ({status}): {self}");
        }
        let mut resp = (status, Json(json!({ "detail": self.to_string() }))).into_response();
        if matches!(self, WorkflowError::Busy) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

/// Adds the workflow routes to the `/api/0/` ones: assigning and commenting need
/// `project:write` on the issue's project, reading `project:read`.
pub fn routes(routes: Routes) -> Routes {
    let issue = Target::Issue("id");
    routes
        .route(
            "/api/0/issues/{id}/assignee/",
            put(Need::on(Scope::ProjectWrite, issue), assign).limit(16 * 1024),
        )
        .route(
            "/api/0/issues/{id}/comments/",
            get(Need::on(Scope::ProjectRead, issue), list_comments)
                .post(Need::on(Scope::ProjectWrite, issue), add_comment)
                .limit(64 * 1024),
        )
        .route(
            "/api/0/issues/{id}/comments/{comment}/",
            delete(Need::on(Scope::ProjectWrite, issue), delete_comment),
        )
        .route(
            "/api/0/projects/{pid}/members/",
            get(
                Need::on(Scope::ProjectRead, Target::Project("pid")),
                members,
            ),
        )
}

fn id_of(raw: &str, what: &str) -> Result<i64, WorkflowError> {
    raw.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| WorkflowError::NotFound(format!("no such {what}")))
}

/// Whether a user can work on a project's issues: an owner, or a member of it (viewers
/// read only).
async fn works_on(state: &AppState, u: &UserRow, project_id: i64) -> Result<bool, StoreError> {
    Ok(match Role::parse(&u.role) {
        Some(Role::Owner) => true,
        Some(Role::Member) => state.store.memberships(u.id).await?.contains(&project_id),
        _ => false,
    })
}

async fn issue_json(state: &AppState, id: i64) -> Result<Value, WorkflowError> {
    let i = state
        .store
        .issue(id, now_ms())
        .await?
        .ok_or_else(|| WorkflowError::NotFound("no such issue".into()))?;
    serde_json::to_value(i).map_err(|e| WorkflowError::Internal(e.to_string()))
}

/// `PUT /api/0/issues/{id}/assignee/` `{"assignee": <user id> | "me" | null}`: assigns the
/// issue to an owner or a member of its project (or unassigns it); the issue.
pub async fn assign(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, WorkflowError> {
    const SHAPE: &str = "expected {\"assignee\": <user id> | \"me\" | null}";
    let id = id_of(&id, "issue")?;
    let body: Value = serde_json::from_slice(&b)
        .map_err(|e| WorkflowError::BadRequest(format!("{SHAPE}: {e}")))?;
    let who = match body.get("assignee") {
        None => return Err(WorkflowError::BadRequest(SHAPE.into())),
        Some(Value::Null) => None,
        Some(Value::String(s)) if s == "me" => Some(c.user.id),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n > 0) => n.as_i64(),
        Some(Value::String(s)) if s.parse::<i64>().is_ok_and(|n| n > 0) => s.parse().ok(),
        Some(other) => {
            return Err(WorkflowError::BadRequest(format!(
                "assignee must be a user id, \"me\" or null, not {other}"
            )));
        }
    };
    let issue = state
        .store
        .issue(id, 0)
        .await?
        .ok_or_else(|| WorkflowError::NotFound("no such issue".into()))?;
    let user = match who {
        None => None,
        Some(u) => {
            let user = state
                .store
                .user(u)
                .await?
                .filter(|u| !u.disabled)
                .ok_or_else(|| {
                    WorkflowError::BadRequest(format!("no enabled user with the id {u}"))
                })?;
            if !works_on(&state, &user, issue.project_id).await? {
                return Err(WorkflowError::BadRequest(format!(
                    "`{}` ({}) cannot work on this project's issues: assign an owner or a member of the project",
                    user.username, user.role
                )));
            }
            Some(user)
        }
    };
    match state
        .store
        .assign_issue(id, user.as_ref().map(|u| u.id), now_ms())
        .await?
    {
        Assigned::Done => {}
        Assigned::NoIssue => return Err(WorkflowError::NotFound("no such issue".into())),
        Assigned::NoUser => {
            return Err(WorkflowError::BadRequest(
                "that user was disabled meanwhile".into(),
            ));
        }
    }
    let detail = match &user {
        Some(u) => format!("to {}", u.username),
        None => "unassigned".into(),
    };
    audit(
        &*state.store,
        Some(&c.user.username),
        "issue.assign",
        &format!("issue {id}"),
        &c.address,
        &detail,
    )
    .await;
    Ok(Json(issue_json(&state, id).await?).into_response())
}

/// `GET /api/0/issues/{id}/comments/`: the newest 500 comments, oldest first.
pub async fn list_comments(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, WorkflowError> {
    let id = id_of(&id, "issue")?;
    let rows = state.store.comments(id, COMMENTS_SHOWN).await?;
    Ok(Json(rows).into_response())
}

#[derive(Deserialize)]
struct NewComment {
    body: String,
}

/// `POST /api/0/issues/{id}/comments/` `{"body": "..."}` (Markdown, 1 to 10,000
/// characters): 201 with the comment.
pub async fn add_comment(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, WorkflowError> {
    let id = id_of(&id, "issue")?;
    let n: NewComment = serde_json::from_slice(&b)
        .map_err(|e| WorkflowError::BadRequest(format!("expected {{\"body\": \"...\"}}: {e}")))?;
    let body = n.body.trim();
    if body.is_empty() {
        return Err(WorkflowError::BadRequest(
            "body: a comment needs some text".into(),
        ));
    }
    let chars = body.chars().count();
    if chars > MAX_COMMENT_CHARS {
        return Err(WorkflowError::BadRequest(format!(
            "body: at most {MAX_COMMENT_CHARS} characters, not {chars}"
        )));
    }
    let row = state
        .store
        .insert_comment(id, c.user.id, body, now_ms())
        .await?
        .ok_or_else(|| WorkflowError::NotFound("no such issue".into()))?;
    audit(
        &*state.store,
        Some(&c.user.username),
        "comment.create",
        &format!("issue {id}"),
        &c.address,
        &format!("comment {}", row.id),
    )
    .await;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

/// `DELETE /api/0/issues/{id}/comments/{comment}/`: by its author or an owner; 204.
pub async fn delete_comment(
    State(state): State<AppState>,
    Extension(c): Extension<Caller>,
    Path((id, comment)): Path<(String, String)>,
) -> Result<Response, WorkflowError> {
    let id = id_of(&id, "issue")?;
    let cid = id_of(&comment, "comment")?;
    let row = state
        .store
        .comment(id, cid)
        .await?
        .ok_or_else(|| WorkflowError::NotFound("no such comment".into()))?;
    if row.author.id != c.user.id && c.role != Role::Owner {
        return Err(WorkflowError::Forbidden(
            "only the comment's author or an owner can delete it".into(),
        ));
    }
    if !state.store.delete_comment(id, cid).await? {
        return Err(WorkflowError::NotFound("no such comment".into()));
    }
    audit(
        &*state.store,
        Some(&c.user.username),
        "comment.delete",
        &format!("issue {id}"),
        &c.address,
        &format!("comment {cid} by {}", row.author.username),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/0/projects/{pid}/members/`: the enabled users who see the project, with
/// whether they can be assigned its issues (owners and members; viewers cannot).
pub async fn members(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Response, WorkflowError> {
    let pid = id_of(&pid, "project")?;
    let mut out = Vec::new();
    for u in state.store.users().await? {
        if u.disabled {
            continue;
        }
        let sees =
            u.role == Role::Owner.as_str() || state.store.memberships(u.id).await?.contains(&pid);
        if !sees {
            continue;
        }
        out.push(json!({
            "id": u.id,
            "username": u.username,
            "display_name": u.display_name,
            "role": u.role,
            "assignable": works_on(&state, &u, pid).await?,
        }));
    }
    Ok(Json(out).into_response())
}
