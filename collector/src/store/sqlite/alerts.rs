//! The SQL of alerting: rules, the action-interval marks, the durable delivery queue and
//! its log, and the writer-side hook that decides inside the ingest transaction.
//!
//! The hook runs in the writer's transaction, before the batch's issue counters are
//! applied, so it sees each issue as it was: a stored count of 0 is a new issue, status
//! `resolved` a regression, `muted` sends nothing. A delivery it queues commits (or rolls
//! back) with the events that caused it; the sender (`alerts/send.rs`) reads the queue
//! from the read pool and writes its outcome back through the writer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde_json::Value;

use crate::alerts::Alerts;
use crate::alerts::message::{IssueFacts, payload};
use crate::alerts::rules::{Channel, EventFacts, Filter, Rule, RuleSpec, Trigger};
use crate::store::{
    DeliveryRow, Due, IngestJob, LOG_DAYS, LOG_PER_RULE, MAX_QUEUED, Outcome, StoreError,
};
use crate::time::now_ms;

const RULE_COLUMNS: &str = "id, project_id, name, trigger_kind, count, minutes, filter, interval_minutes, channel, enabled, created";

fn rule_of(r: &Row<'_>) -> rusqlite::Result<Rule> {
    let trigger: String = r.get(3)?;
    let filter: String = r.get(6)?;
    let channel: String = r.get(8)?;
    let filter: Value = serde_json::from_str(&filter).unwrap_or(Value::Null);
    let f = |k: &str| filter.get(k).and_then(Value::as_str).map(str::to_owned);
    let channel = serde_json::from_str(&channel)
        .ok()
        .and_then(|c| Channel::from_stored(&c))
        .unwrap_or(Channel::Slack { url: String::new() });
    Ok(Rule {
        id: r.get(0)?,
        project_id: r.get(1)?,
        spec: RuleSpec {
            name: r.get(2)?,
            trigger: Trigger::parse(&trigger).unwrap_or(Trigger::NewIssue),
            count: r.get(4)?,
            minutes: r.get(5)?,
            filter: Filter {
                level: f("level"),
                environment: f("environment"),
                release: f("release"),
                class: f("class"),
                kind: f("kind"),
            },
            interval_minutes: r.get(7)?,
            channel,
            enabled: r.get(9)?,
        },
        created: r.get(10)?,
    })
}

fn filter_json(f: &Filter) -> String {
    serde_json::to_string(f).unwrap_or_else(|_| "{}".into())
}

/// Stores a new rule.
pub fn insert_rule(
    conn: &Connection,
    project_id: i64,
    s: &RuleSpec,
    now: i64,
) -> Result<Rule, StoreError> {
    conn.execute(
        "INSERT INTO alert_rules (project_id, name, trigger_kind, count, minutes, filter, interval_minutes, channel, enabled, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            project_id,
            s.name,
            s.trigger.as_str(),
            s.count,
            s.minutes,
            filter_json(&s.filter),
            s.interval_minutes,
            s.channel.to_stored().to_string(),
            s.enabled,
            now
        ],
    )?;
    Ok(Rule {
        id: conn.last_insert_rowid(),
        project_id,
        spec: s.clone(),
        created: now,
    })
}

/// Replaces a rule's settings; false when there is no such rule.
pub fn update_rule(conn: &Connection, id: i64, s: &RuleSpec) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE alert_rules SET name = ?2, trigger_kind = ?3, count = ?4, minutes = ?5, filter = ?6,
             interval_minutes = ?7, channel = ?8, enabled = ?9 WHERE id = ?1",
        params![
            id,
            s.name,
            s.trigger.as_str(),
            s.count,
            s.minutes,
            filter_json(&s.filter),
            s.interval_minutes,
            s.channel.to_stored().to_string(),
            s.enabled
        ],
    )?;
    Ok(n > 0)
}

/// Deletes a rule with its marks and deliveries; false when there is no such rule.
pub fn delete_rule(conn: &Connection, id: i64) -> Result<bool, StoreError> {
    conn.execute("DELETE FROM alert_deliveries WHERE rule_id = ?1", [id])?;
    conn.execute("DELETE FROM alert_fired WHERE rule_id = ?1", [id])?;
    Ok(conn.execute("DELETE FROM alert_rules WHERE id = ?1", [id])? > 0)
}

/// One rule.
pub fn rule(conn: &Connection, id: i64) -> Result<Option<Rule>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules WHERE id = ?1"
        ))?
        .query_row([id], rule_of)
        .optional()?)
}

/// A project's rules, oldest first.
pub fn rules(conn: &Connection, project_id: i64) -> Result<Vec<Rule>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules WHERE project_id = ?1 ORDER BY id"
        ))?
        .query_map([project_id], rule_of)?
        .collect::<Result<_, _>>()?)
}

fn enabled_rules(conn: &Connection) -> Result<Vec<Rule>, StoreError> {
    Ok(conn
        .prepare(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules WHERE enabled = 1 ORDER BY id"
        ))?
        .query_map([], rule_of)?
        .collect::<Result<_, _>>()?)
}

const DELIVERY_COLUMNS: &str = "id, delivery_id, rule_id, issue_id, trigger_kind, status, attempts, created, updated, next_attempt, response_status, last_error, payload";

fn delivery_of(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    let status: String = r.get(5)?;
    let next: i64 = r.get(9)?;
    Ok(DeliveryRow {
        row: r.get(0)?,
        id: r.get(1)?,
        rule_id: r.get(2)?,
        issue_id: r.get(3)?,
        trigger: r.get(4)?,
        attempts: r.get(6)?,
        created: crate::time::rfc3339(r.get(7)?),
        updated: crate::time::rfc3339(r.get(8)?),
        next_attempt: (status == "queued").then(|| crate::time::rfc3339(next)),
        status,
        response_status: r.get(10)?,
        error: r.get(11)?,
        payload: r.get(12)?,
    })
}

/// A rule's newest deliveries.
pub fn deliveries(
    conn: &Connection,
    rule_id: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE rule_id = ?1 ORDER BY id DESC LIMIT ?2"
        ))?
        .query_map(params![rule_id, limit], delivery_of)?
        .collect::<Result<_, _>>()?)
}

/// Up to `limit` queued deliveries due at `now`, oldest first, and when the next one
/// not yet due is.
pub fn due(conn: &Connection, now: i64, limit: i64) -> Result<(Vec<Due>, Option<i64>), StoreError> {
    let cols = DELIVERY_COLUMNS
        .split(", ")
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {cols}, r.channel, r.name, d.created FROM alert_deliveries d JOIN alert_rules r ON r.id = d.rule_id
             WHERE d.status = 'queued' AND d.next_attempt <= ?1 ORDER BY d.next_attempt, d.id LIMIT ?2"
        ))?
        .query_map(params![now, limit], |r| {
            let channel: String = r.get(13)?;
            Ok(Due {
                delivery: delivery_of(r)?,
                channel: serde_json::from_str(&channel)
                    .ok()
                    .and_then(|c| Channel::from_stored(&c))
                    .unwrap_or(Channel::Slack { url: String::new() }),
                rule_name: r.get(14)?,
                created_ms: r.get(15)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let next = conn
        .prepare_cached(
            "SELECT min(next_attempt) FROM alert_deliveries WHERE status = 'queued' AND next_attempt > ?1",
        )?
        .query_row([now], |r| r.get(0))?;
    Ok((rows, next))
}

/// Records an attempt's outcome on a queued delivery.
pub fn record_attempt(
    conn: &Connection,
    row: i64,
    outcome: &Outcome,
    now: i64,
) -> Result<(), StoreError> {
    let (status, next, code, error) = match outcome {
        Outcome::Sent { status } => ("sent", now, *status, None),
        Outcome::Retry { at, status, error } => ("queued", *at, *status, Some(error.as_str())),
        Outcome::Failed { status, error } => ("failed", now, *status, Some(error.as_str())),
    };
    conn.prepare_cached(
        "UPDATE alert_deliveries SET status = ?2, next_attempt = ?3, response_status = ?4, last_error = ?5,
             attempts = attempts + 1, updated = ?6 WHERE id = ?1 AND status = 'queued'",
    )?
    .execute(params![row, status, next, code, error, now])?;
    Ok(())
}

/// Stores a delivery; with `queued`, it waits for the sender. `None` when the queue is
/// full.
#[allow(clippy::too_many_arguments)]
pub fn enqueue(
    conn: &Connection,
    rule_id: i64,
    issue_id: Option<i64>,
    trigger: &str,
    payload: &str,
    status: &str,
    now: i64,
) -> Result<Option<(i64, String)>, StoreError> {
    if status == "queued" {
        let queued: i64 = conn
            .prepare_cached("SELECT count(*) FROM alert_deliveries WHERE status = 'queued'")?
            .query_row([], |r| r.get(0))?;
        if queued >= MAX_QUEUED {
            tracing::warn!(
                "alert delivery queue full ({MAX_QUEUED}); dropping a {trigger} alert of rule {rule_id}"
            );
            return Ok(None);
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    conn.prepare_cached(
        "INSERT INTO alert_deliveries (delivery_id, rule_id, issue_id, trigger_kind, payload, status, attempts, next_attempt, created, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, ?7)",
    )?
    .execute(params![id, rule_id, issue_id, trigger, payload, status, now])?;
    Ok(Some((conn.last_insert_rowid(), id)))
}

/// Whether a rule may fire for an issue now (its last message is at least `interval_ms`
/// old); if so, records that it fires.
pub fn fire_if_due(
    conn: &Connection,
    rule_id: i64,
    issue_id: i64,
    now: i64,
    interval_ms: i64,
) -> Result<bool, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT fired_at FROM alert_fired WHERE rule_id = ?1 AND issue_id = ?2")?
        .query_row(params![rule_id, issue_id], |r| r.get(0))
        .optional()?;
    if last.is_some_and(|t| now - t < interval_ms) {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO alert_fired (rule_id, issue_id, fired_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (rule_id, issue_id) DO UPDATE SET fired_at = excluded.fired_at",
    )?
    .execute(params![rule_id, issue_id, now])?;
    Ok(true)
}

/// Deletes old log entries: sent and failed deliveries past [`LOG_DAYS`] or beyond the
/// newest [`LOG_PER_RULE`] of their rule, and action-interval marks older than a week.
pub fn prune(conn: &Connection, now: i64) -> Result<(), StoreError> {
    let cutoff = now - LOG_DAYS * 24 * crate::time::HOUR_MS;
    conn.execute(
        "DELETE FROM alert_deliveries WHERE status <> 'queued' AND updated < ?1",
        [cutoff],
    )?;
    conn.execute(
        "DELETE FROM alert_deliveries WHERE status <> 'queued' AND id IN (
             SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY rule_id ORDER BY id DESC) AS n
                             FROM alert_deliveries WHERE status <> 'queued') WHERE n > ?1)",
        [LOG_PER_RULE],
    )?;
    conn.execute(
        "DELETE FROM alert_fired WHERE fired_at < ?1",
        [now - crate::alerts::rules::MAX_MINUTES * 60_000],
    )?;
    Ok(())
}

/// An issue's stored row, as alerts describe it.
fn issue_facts(conn: &Connection, issue_id: i64) -> Result<Option<IssueFacts>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, title, class, kind, culprit, level, status, count, first_seen, last_seen FROM issues WHERE id = ?1",
        )?
        .query_row([issue_id], |r| {
            Ok(IssueFacts {
                id: r.get(0)?,
                title: r.get(1)?,
                class: r.get(2)?,
                kind: r.get(3)?,
                culprit: r.get(4)?,
                level: r.get(5)?,
                status: r.get(6)?,
                count: r.get(7)?,
                first_seen: r.get(8)?,
                last_seen: r.get(9)?,
            })
        })
        .optional()?)
}

fn project_name(conn: &Connection, project_id: i64) -> Result<String, StoreError> {
    Ok(conn
        .prepare_cached("SELECT name FROM projects WHERE id = ?1")?
        .query_row([project_id], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

/// Queues the `unmute` alerts of an issue that was just set from muted back to
/// unresolved (called in the transaction that changes its status).
pub fn on_unmute(
    tx: &Transaction<'_>,
    alerts: &Alerts,
    issue_id: i64,
) -> Result<usize, StoreError> {
    let Some(issue) = issue_facts(tx, issue_id)? else {
        return Ok(0);
    };
    let pid: i64 = tx.query_row(
        "SELECT project_id FROM issues WHERE id = ?1",
        [issue_id],
        |r| r.get(0),
    )?;
    let project = project_name(tx, pid)?;
    let now = now_ms();
    let mut queued = 0;
    for rule in rules(tx, pid)? {
        let s = &rule.spec;
        if !s.enabled || s.trigger != Trigger::Unmute || s.filter.needs_event() {
            continue;
        }
        let facts = EventFacts {
            level: &issue.level,
            environment: None,
            release: None,
            class: &issue.class,
            kind: &issue.kind,
        };
        if !s.filter.matches(&facts)
            || !fire_if_due(
                tx,
                rule.id,
                issue_id,
                now,
                s.interval_minutes * alerts.minute_ms(),
            )?
        {
            continue;
        }
        let body = payload(
            Trigger::Unmute.as_str(),
            &rule,
            pid,
            &project,
            &issue,
            None,
            &alerts.public_url,
        );
        if enqueue(
            tx,
            rule.id,
            Some(issue_id),
            Trigger::Unmute.as_str(),
            &body,
            "queued",
            now,
        )?
        .is_some()
        {
            queued += 1;
        }
    }
    Ok(queued)
}

/// What the hook needs of one issue a batch touched.
#[derive(Debug, Clone, Copy)]
pub(super) struct Touch {
    pub(super) issue_id: i64,
    pub(super) project_id: i64,
    /// New occurrences in this batch.
    pub(super) count: i64,
    /// The issue's newest event in the batch: (job, event) indices.
    pub(super) latest: Option<(usize, usize)>,
}

/// The writer's alerting state: the enabled rules by project (reloaded when the API
/// changes one) and the per-issue minute counters of frequency rules.
pub(super) struct AlertHook {
    alerts: Option<Arc<Alerts>>,
    rules: HashMap<i64, Vec<Rule>>,
    projects: HashMap<i64, String>,
    /// Issue id → (minute, events) buckets, oldest first.
    windows: HashMap<i64, VecDeque<(i64, i64)>>,
}

/// Issues whose frequency windows are kept in memory at most.
const MAX_WINDOWS: usize = 50_000;

impl AlertHook {
    pub(super) fn new(alerts: Option<Arc<Alerts>>) -> Self {
        AlertHook {
            alerts,
            rules: HashMap::new(),
            projects: HashMap::new(),
            windows: HashMap::new(),
        }
    }

    /// Whether any project has rules (after reloading them if they changed).
    pub(super) fn active(&mut self, tx: &Transaction<'_>) -> Result<bool, StoreError> {
        let Some(alerts) = &self.alerts else {
            return Ok(false);
        };
        if alerts.take_rules_changed() {
            self.rules.clear();
            self.projects.clear();
            for r in enabled_rules(tx)? {
                self.rules.entry(r.project_id).or_default().push(r);
            }
            for pid in self.rules.keys() {
                self.projects.insert(*pid, project_name(tx, *pid)?);
            }
            let freq: std::collections::HashSet<i64> = self
                .rules
                .values()
                .flatten()
                .filter(|r| r.spec.trigger == Trigger::Frequency)
                .map(|r| r.project_id)
                .collect();
            if freq.is_empty() {
                self.windows.clear();
            }
        }
        Ok(!self.rules.is_empty())
    }

    /// Decides which rules fire for the issues a batch touched and queues their
    /// deliveries in the batch's transaction. Call before the batch's counters are
    /// applied. Returns how many deliveries were queued.
    pub(super) fn decide(
        &mut self,
        tx: &Transaction<'_>,
        touched: impl Iterator<Item = Touch>,
        jobs: &[IngestJob],
    ) -> Result<usize, StoreError> {
        let Some(alerts) = self.alerts.clone() else {
            return Ok(0);
        };
        let now = now_ms();
        let minute_ms = alerts.minute_ms();
        let minute = now / minute_ms;
        let mut queued = 0;
        for t in touched {
            let Some(rules) = self.rules.get(&t.project_id) else {
                continue;
            };
            let Some(mut issue) = issue_facts(tx, t.issue_id)? else {
                continue;
            };
            if issue.status == "muted" {
                continue;
            }
            let new = issue.count == 0;
            let regression = issue.status == "resolved";
            let ev = t
                .latest
                .and_then(|(j, i)| jobs.get(j).and_then(|job| job.events.get(i)));
            issue.count += t.count;
            if let Some(e) = ev {
                issue.last_seen = issue.last_seen.max(e.timestamp);
                if new {
                    issue.first_seen = e.timestamp;
                }
            }
            let freq = rules.iter().any(|r| r.spec.trigger == Trigger::Frequency);
            let window = if freq {
                if self.windows.len() >= MAX_WINDOWS && !self.windows.contains_key(&t.issue_id) {
                    self.windows.clear();
                }
                let w = self.windows.entry(t.issue_id).or_default();
                match w.back_mut() {
                    Some((m, n)) if *m == minute => *n += t.count,
                    _ => w.push_back((minute, t.count)),
                }
                while w
                    .front()
                    .is_some_and(|(m, _)| minute - m >= crate::alerts::rules::MAX_MINUTES)
                {
                    w.pop_front();
                }
                Some(&*w)
            } else {
                None
            };
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
                    Trigger::Frequency => window.is_some_and(|w| {
                        w.iter()
                            .rev()
                            .take_while(|(m, _)| minute - m < s.minutes)
                            .map(|(_, n)| n)
                            .sum::<i64>()
                            > s.count
                    }),
                    Trigger::Unmute => false,
                };
                if !fires
                    || (ev.is_none() && s.filter.needs_event())
                    || !s.filter.matches(&facts)
                    || !fire_if_due(tx, rule.id, t.issue_id, now, s.interval_minutes * minute_ms)?
                {
                    continue;
                }
                let project = self.projects.get(&t.project_id).map_or("", String::as_str);
                let body = payload(
                    s.trigger.as_str(),
                    rule,
                    t.project_id,
                    project,
                    &issue,
                    ev,
                    &alerts.public_url,
                );
                if enqueue(
                    tx,
                    rule.id,
                    Some(t.issue_id),
                    s.trigger.as_str(),
                    &body,
                    "queued",
                    now,
                )?
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

    /// After a failed transaction: forget what may have been rolled back.
    pub(super) fn rolled_back(&mut self) {
        if let Some(a) = &self.alerts {
            a.rules_changed();
        }
    }
}
