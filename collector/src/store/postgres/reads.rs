//! The API's reads: issues (keyset pages), one issue's counts and tags, events, classes.

use super::{PgStore, unbuilt};
#[allow(unused_imports)]
use crate::alerts::Alerts;
#[allow(unused_imports)]
use crate::alerts::rules::{Rule, RuleSpec};
#[allow(unused_imports)]
use crate::store::*;
#[allow(unused_imports)]
use serde_json::Value;
#[allow(unused_imports)]
use std::{collections::HashMap, sync::Arc};

pub(super) async fn classes(
    s: &PgStore,
    project_id: i64,
    status: Option<String>,
    now: i64,
) -> Result<Vec<Class>, StoreError> {
    let _ = (s, project_id, status, now);
    Err(unbuilt("classes"))
}

pub(super) async fn issues(
    s: &PgStore,
    project_id: i64,
    filter: IssueFilter,
    sort: Sort,
    cursor: Option<Cursor>,
    limit: i64,
    now: i64,
) -> Result<(Vec<Issue>, Option<String>), StoreError> {
    let _ = (s, project_id, filter, sort, cursor, limit, now);
    Err(unbuilt("issues"))
}

pub(super) async fn issue(s: &PgStore, id: i64, now: i64) -> Result<Option<Issue>, StoreError> {
    let _ = (s, id, now);
    Err(unbuilt("issue"))
}

pub(super) async fn issue_detail(
    s: &PgStore,
    id: i64,
    hours: i64,
    now: i64,
) -> Result<IssueDetail, StoreError> {
    let _ = (s, id, hours, now);
    Err(unbuilt("issue_detail"))
}

pub(super) async fn issue_events(
    s: &PgStore,
    issue_id: i64,
    cursor: Option<i64>,
    limit: i64,
) -> Result<(Vec<EventSummary>, Option<String>), StoreError> {
    let _ = (s, issue_id, cursor, limit);
    Err(unbuilt("issue_events"))
}

pub(super) async fn event(
    s: &PgStore,
    project_id: i64,
    event_id: &str,
) -> Result<Option<Value>, StoreError> {
    let _ = (s, project_id, event_id);
    Err(unbuilt("event"))
}

pub(super) async fn project_tag_values(
    s: &PgStore,
    project_id: i64,
    key: &str,
) -> Result<Vec<TagValue>, StoreError> {
    let _ = (s, project_id, key);
    Err(unbuilt("project_tag_values"))
}
