//! The alert decisions of the PostgreSQL writer, made inside the ingest transaction (new
//! and regressed issues as that transaction found them), queued with the events.
//!
//! The rules and the message are the backend-neutral ones of `crate::alerts`; this file
//! mirrors the SQL of `sqlite/alerts.rs`. Frequency windows live in `issue_minutes`, so
//! every node counts the events all nodes stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Transaction;

use super::apply::Batch;
use crate::alerts::Alerts;
use crate::alerts::message::{IssueFacts, payload};
use crate::alerts::rules::{EventFacts, Rule, Trigger};
use crate::store::postgres::alerts::{RULE_COLUMNS, enqueue, fire_if_due, rule_of};
use crate::store::{IngestJob, StoreError};
use crate::time::now_ms;

/// Rules are reread at least this often: another node's API may have changed them.
const RELOAD: Duration = Duration::from_secs(5);

/// The writer's alerting state: the enabled rules by project and their project names.
pub(super) struct Hook {
    alerts: Option<Arc<Alerts>>,
    rules: HashMap<i64, Vec<Rule>>,
    projects: HashMap<i64, String>,
    loaded: Option<Instant>,
}

impl Hook {
    pub(super) fn new(alerts: Option<Arc<Alerts>>) -> Self {
        Hook {
            alerts,
            rules: HashMap::new(),
            projects: HashMap::new(),
            loaded: None,
        }
    }

    /// The configured minute in ms, when alerting is on.
    pub(super) fn minute_ms(&self) -> Option<i64> {
        self.alerts.as_ref().map(|a| a.minute_ms())
    }

    /// Whether any project has rules (rereading them if they changed here or may have
    /// changed on another node).
    pub(super) async fn active(&mut self, tx: &Transaction<'_>) -> Result<bool, StoreError> {
        let Some(alerts) = &self.alerts else {
            return Ok(false);
        };
        let changed = alerts.take_rules_changed();
        if changed || self.loaded.is_none_or(|t| t.elapsed() >= RELOAD) {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {RULE_COLUMNS} FROM alert_rules WHERE enabled ORDER BY id"
                ))
                .await?;
            let rows = tx.query(&stmt, &[]).await?;
            self.rules.clear();
            for r in rows.iter().map(rule_of) {
                self.rules.entry(r.project_id).or_default().push(r);
            }
            let pids: Vec<i64> = self.rules.keys().copied().collect();
            let stmt = tx
                .prepare_cached("SELECT id, name FROM projects WHERE id = ANY($1::int8[])")
                .await?;
            self.projects = tx
                .query(&stmt, &[&pids])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            self.loaded = Some(Instant::now());
        }
        Ok(!self.rules.is_empty())
    }

    /// Decides which rules fire for the issues a batch touched (`facts`: each as it was
    /// before the batch; new: created by this transaction; `regressed`: reopened by it,
    /// which locked the row) and queues their deliveries in the batch's transaction.
    /// Returns how many were queued.
    pub(super) async fn decide(
        &mut self,
        tx: &Transaction<'_>,
        facts: &BTreeMap<i64, IssueFacts>,
        regressed: &HashSet<i64>,
        batch: &Batch,
        jobs: &[&IngestJob],
    ) -> Result<usize, StoreError> {
        let Some(alerts) = self.alerts.clone() else {
            return Ok(0);
        };
        let now = now_ms();
        let minute_ms = alerts.minute_ms();
        let minute = now / minute_ms;
        let mut queued = 0;
        for (issue_id, d) in &batch.issues {
            let Some(rules) = self.rules.get(&d.project_id) else {
                continue;
            };
            let Some(mut issue) = facts.get(issue_id).cloned() else {
                continue;
            };
            if issue.status == "muted" {
                continue;
            }
            let new = batch.created.contains(issue_id);
            let regression = regressed.contains(issue_id);
            let ev = d.latest.map(|(j, i)| &jobs[j].events[i]);
            issue.count += d.count;
            if let Some(e) = ev {
                issue.last_seen = issue.last_seen.max(e.timestamp);
                if new {
                    issue.first_seen = e.timestamp;
                }
            }
            let freq = rules.iter().any(|r| r.spec.trigger == Trigger::Frequency);
            if freq && d.count > 0 {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO issue_minutes (issue_id, minute, count) VALUES ($1, $2, $3)
                         ON CONFLICT (issue_id, minute) DO UPDATE SET count = issue_minutes.count + excluded.count",
                    )
                    .await?;
                tx.execute(&stmt, &[issue_id, &minute, &d.count]).await?;
            }
            let facts = EventFacts {
                level: ev.map_or(issue.level.as_str(), |e| e.level.as_str()),
                environment: ev.and_then(|e| e.environment.as_deref()),
                release: ev.and_then(|e| e.release.as_deref()),
                class: &issue.class,
                kind: &issue.kind,
            };
            for rule in rules {
                let s = &rule.spec;
                let fires = match s.trigger {
                    Trigger::NewIssue => new,
                    Trigger::Regression => regression,
                    Trigger::Frequency => {
                        let stmt = tx
                            .prepare_cached(
                                "SELECT coalesce(sum(count), 0)::int8 FROM issue_minutes
                                 WHERE issue_id = $1 AND minute > $2",
                            )
                            .await?;
                        let n: i64 = tx
                            .query_one(&stmt, &[issue_id, &(minute - s.minutes)])
                            .await?
                            .get(0);
                        n > s.count
                    }
                    Trigger::Unmute => false,
                };
                if !fires
                    || (ev.is_none() && s.filter.needs_event())
                    || !s.filter.matches(&facts)
                    || !fire_if_due(tx, rule.id, *issue_id, now, s.interval_minutes * minute_ms)
                        .await?
                {
                    continue;
                }
                let project = self.projects.get(&d.project_id).map_or("", String::as_str);
                let body = payload(
                    s.trigger.as_str(),
                    rule,
                    d.project_id,
                    project,
                    &issue,
                    ev,
                    &alerts.public_url,
                );
                if enqueue(
                    tx,
                    rule.id,
                    Some(*issue_id),
                    s.trigger.as_str(),
                    &body,
                    "queued",
                    now,
                )
                .await?
                .is_some()
                {
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    /// After a committed batch that queued deliveries: wake the sender.
    pub(super) fn wake(&self) {
        if let Some(a) = &self.alerts {
            a.wake();
        }
    }
}
