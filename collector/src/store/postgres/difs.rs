//! The debug files' index and its version counter.

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

pub(super) async fn difs_version(s: &PgStore) -> Result<i64, StoreError> {
    let _ = (s);
    Err(unbuilt("difs_version"))
}

pub(super) async fn all_difs(s: &PgStore) -> Result<Vec<DifRow>, StoreError> {
    let _ = (s);
    Err(unbuilt("all_difs"))
}

pub(super) async fn dif(s: &PgStore, id: i64) -> Result<Option<DifRow>, StoreError> {
    let _ = (s, id);
    Err(unbuilt("dif"))
}

pub(super) async fn dif_by_checksum(
    s: &PgStore,
    project_id: i64,
    checksum: &str,
) -> Result<Option<DifRow>, StoreError> {
    let _ = (s, project_id, checksum);
    Err(unbuilt("dif_by_checksum"))
}

pub(super) async fn insert_dif(
    s: &PgStore,
    row: DifRow,
    max_bytes: u64,
) -> Result<DifInsert, StoreError> {
    let _ = (s, row, max_bytes);
    Err(unbuilt("insert_dif"))
}

pub(super) async fn delete_dif(s: &PgStore, id: i64) -> Result<Option<DifRow>, StoreError> {
    let _ = (s, id);
    Err(unbuilt("delete_dif"))
}

pub(super) async fn touch_difs(s: &PgStore, used: Vec<(i64, i64)>) -> Result<(), StoreError> {
    let _ = (s, used);
    Err(unbuilt("touch_difs"))
}
