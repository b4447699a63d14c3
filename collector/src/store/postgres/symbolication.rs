//! Which stored events wait for which images' debug files; rewriting them.

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

pub(super) async fn note_waiting(
    s: &PgStore,
    project_id: i64,
    waiting: Vec<(String, Vec<String>)>,
    now: i64,
    prune_before: Option<i64>,
) -> Result<(), StoreError> {
    let _ = (s, project_id, waiting, now, prune_before);
    Err(unbuilt("note_waiting"))
}

pub(super) async fn waiting_for_image(
    s: &PgStore,
    debug_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Waiting>, StoreError> {
    let _ = (s, debug_id, after, limit);
    Err(unbuilt("waiting_for_image"))
}

pub(super) async fn waiting_event(
    s: &PgStore,
    project_id: i64,
    event_id: &str,
) -> Result<Option<WaitingEvent>, StoreError> {
    let _ = (s, project_id, event_id);
    Err(unbuilt("waiting_event"))
}

pub(super) async fn rewrite_events(s: &PgStore, done: Vec<Rewrite>) -> Result<(), StoreError> {
    let _ = (s, done);
    Err(unbuilt("rewrite_events"))
}
