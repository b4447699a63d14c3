//! Alert rules, the delivery queue and log, and unmuting.

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

pub(super) async fn set_issue_status(
    s: &PgStore,
    id: i64,
    status: &str,
    alerts: &Arc<Alerts>,
) -> Result<Option<usize>, StoreError> {
    let _ = (s, id, status, alerts);
    Err(unbuilt("set_issue_status"))
}

pub(super) async fn alert_rules(s: &PgStore, project_id: i64) -> Result<Vec<Rule>, StoreError> {
    let _ = (s, project_id);
    Err(unbuilt("alert_rules"))
}

pub(super) async fn alert_rule(s: &PgStore, id: i64) -> Result<Option<Rule>, StoreError> {
    let _ = (s, id);
    Err(unbuilt("alert_rule"))
}

pub(super) async fn insert_alert_rule(
    s: &PgStore,
    project_id: i64,
    spec: &RuleSpec,
    max: i64,
    now: i64,
) -> Result<Option<Rule>, StoreError> {
    let _ = (s, project_id, spec, max, now);
    Err(unbuilt("insert_alert_rule"))
}

pub(super) async fn update_alert_rule(
    s: &PgStore,
    id: i64,
    spec: &RuleSpec,
) -> Result<bool, StoreError> {
    let _ = (s, id, spec);
    Err(unbuilt("update_alert_rule"))
}

pub(super) async fn delete_alert_rule(s: &PgStore, id: i64) -> Result<bool, StoreError> {
    let _ = (s, id);
    Err(unbuilt("delete_alert_rule"))
}

pub(super) async fn alert_deliveries(
    s: &PgStore,
    rule_id: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let _ = (s, rule_id, limit);
    Err(unbuilt("alert_deliveries"))
}

pub(super) async fn alerts_due(
    s: &PgStore,
    now: i64,
    limit: i64,
) -> Result<(Vec<Due>, Option<i64>), StoreError> {
    let _ = (s, now, limit);
    Err(unbuilt("alerts_due"))
}

pub(super) async fn record_alert_attempt(
    s: &PgStore,
    row: i64,
    outcome: &Outcome,
    now: i64,
) -> Result<(), StoreError> {
    let _ = (s, row, outcome, now);
    Err(unbuilt("record_alert_attempt"))
}

pub(super) async fn record_test_delivery(
    s: &PgStore,
    rule_id: i64,
    delivery_id: &str,
    payload: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<Option<DeliveryRow>, StoreError> {
    let _ = (s, rule_id, delivery_id, payload, outcome, now);
    Err(unbuilt("record_test_delivery"))
}

pub(super) async fn prune_alerts(s: &PgStore, now: i64) -> Result<(), StoreError> {
    let _ = (s, now);
    Err(unbuilt("prune_alerts"))
}
