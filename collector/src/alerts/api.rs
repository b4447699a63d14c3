//! `/api/0/.../alerts/` handlers: list, create, read, replace and delete rules, send a
//! test message, and read a rule's delivery log. Behind the API's `require_auth`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::rules::{Context, Rule, RuleSpec, SelfAddress, parse_rule};
use crate::api::ApiError;
use crate::state::AppState;
use crate::store::LOG_PER_RULE;
use crate::time::now_ms;

/// Rules per project at most.
pub const MAX_RULES_PER_PROJECT: i64 = 100;

fn id_param(raw: &str, what: &'static str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or(ApiError::NotFound(what))
}

fn parse_body(
    state: &AppState,
    body: &Bytes,
    old: Option<&RuleSpec>,
) -> Result<RuleSpec, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let me = SelfAddress::from_public_url(&state.config.public_url);
    parse_rule(
        &v,
        Context {
            me: me.as_ref(),
            smtp: state.alerts.config.smtp_url.is_some(),
            old,
        },
    )
    .map_err(ApiError::BadRequest)
}

async fn project_name(state: &AppState, pid: i64) -> Result<String, ApiError> {
    let all = state.store.list_projects().await?;
    all.into_iter()
        .find(|p| p.id == pid)
        .map(|p| p.name)
        .ok_or(ApiError::NotFound("no such project"))
}

async fn load(state: &AppState, raw: &str) -> Result<Rule, ApiError> {
    let id = id_param(raw, "no such alert rule")?;
    state
        .store
        .alert_rule(id)
        .await?
        .ok_or(ApiError::NotFound("no such alert rule"))
}

/// `GET /api/0/projects/{pid}/alerts/`.
pub async fn list_rules(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Response, ApiError> {
    let pid = id_param(&pid, "no such project")?;
    project_name(&state, pid).await?;
    let rules = state.store.alert_rules(pid).await?;
    Ok(Json(rules.iter().map(Rule::to_api).collect::<Vec<_>>()).into_response())
}

/// `POST /api/0/projects/{pid}/alerts/`.
pub async fn create_rule(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pid = id_param(&pid, "no such project")?;
    project_name(&state, pid).await?;
    let spec = parse_body(&state, &body, None)?;
    let created = state
        .store
        .insert_alert_rule(pid, &spec, MAX_RULES_PER_PROJECT, now_ms())
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "a project has at most {MAX_RULES_PER_PROJECT} alert rules"
            ))
        })?;
    state.alerts.rules_changed();
    Ok((StatusCode::CREATED, Json(created.to_api())).into_response())
}

/// `GET /api/0/alerts/{id}/`.
pub async fn get_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(load(&state, &id).await?.to_api()).into_response())
}

/// `PUT /api/0/alerts/{id}/`: replaces the rule (a webhook body without `secret` keeps
/// the stored one).
pub async fn update_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let old = load(&state, &id).await?;
    let spec = parse_body(&state, &body, Some(&old.spec))?;
    let rid = old.id;
    let found = state.store.update_alert_rule(rid, &spec).await?;
    if !found {
        return Err(ApiError::NotFound("no such alert rule"));
    }
    state.alerts.rules_changed();
    Ok(Json(Rule { spec, ..old }.to_api()).into_response())
}

/// `DELETE /api/0/alerts/{id}/`: the rule, its queue and its log.
pub async fn delete_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_param(&id, "no such alert rule")?;
    let found = state.store.delete_alert_rule(id).await?;
    if !found {
        return Err(ApiError::NotFound("no such alert rule"));
    }
    state.alerts.rules_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/0/alerts/{id}/test/`: sends a test message now, once, and answers with its
/// delivery (status `sent` or `failed`, with the receiver's answer).
pub async fn test_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rule = load(&state, &id).await?;
    let project = project_name(&state, rule.project_id).await?;
    let sender =
        super::send::Sender::for_test(&state).map_err(|e| ApiError::Internal(e.to_string()))?;
    let d = sender.send_test(&rule, &project).await?;
    Ok(Json(json!(d)).into_response())
}

/// `GET /api/0/alerts/{id}/deliveries/?limit=`: the newest deliveries first.
pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let rule = load(&state, &id).await?;
    let limit = match p.get("limit").filter(|s| !s.is_empty()) {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| *l >= 1)
            .map(|l| l.min(LOG_PER_RULE))
            .ok_or_else(|| ApiError::BadRequest("limit must be a positive integer".into()))?,
    };
    let rows = state.store.alert_deliveries(rule.id, limit).await?;
    Ok(Json(rows).into_response())
}
