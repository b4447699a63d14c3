//! Settings, projects and their keys, dashboard sessions.

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

pub(super) async fn get_setting(s: &PgStore, name: &str) -> Result<Option<String>, StoreError> {
    let _ = (s, name);
    Err(unbuilt("get_setting"))
}

pub(super) async fn set_setting(s: &PgStore, name: &str, value: &str) -> Result<(), StoreError> {
    let _ = (s, name, value);
    Err(unbuilt("set_setting"))
}

pub(super) async fn setting_or_insert(
    s: &PgStore,
    name: &str,
    value: &str,
) -> Result<String, StoreError> {
    let _ = (s, name, value);
    Err(unbuilt("setting_or_insert"))
}

pub(super) async fn list_projects(s: &PgStore) -> Result<Vec<ProjectRow>, StoreError> {
    let _ = (s);
    Err(unbuilt("list_projects"))
}

pub(super) async fn create_project(
    s: &PgStore,
    name: &str,
) -> Result<Option<ProjectRow>, StoreError> {
    let _ = (s, name);
    Err(unbuilt("create_project"))
}

pub(super) async fn project_of_key(s: &PgStore, key: &str) -> Result<Option<i64>, StoreError> {
    let _ = (s, key);
    Err(unbuilt("project_of_key"))
}

pub(super) async fn insert_session(
    s: &PgStore,
    hash: &str,
    expires: i64,
    now: i64,
) -> Result<(), StoreError> {
    let _ = (s, hash, expires, now);
    Err(unbuilt("insert_session"))
}

pub(super) async fn session_expires(s: &PgStore, hash: &str) -> Result<Option<i64>, StoreError> {
    let _ = (s, hash);
    Err(unbuilt("session_expires"))
}

pub(super) async fn delete_session(s: &PgStore, hash: &str) -> Result<(), StoreError> {
    let _ = (s, hash);
    Err(unbuilt("delete_session"))
}
