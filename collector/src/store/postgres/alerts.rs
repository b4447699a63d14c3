//! Alert rules, the delivery queue and log, and unmuting; the same rows and JSON columns
//! as `sqlite/alerts.rs`. The queue and marks helpers are shared with ingest's decisions.

use std::sync::Arc;

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;

use super::PgStore;
use super::basics::{exec, retry, row, rows};
use crate::alerts::Alerts;
use crate::alerts::message::{IssueFacts, payload};
use crate::alerts::rules::{Channel, EventFacts, Filter, Rule, RuleSpec, Trigger};
use crate::store::{DeliveryRow, Due, LOG_DAYS, LOG_PER_RULE, MAX_QUEUED, Outcome, StoreError};
use crate::time::now_ms;

pub(super) const RULE_COLUMNS: &str = "id, project_id, name, trigger_kind, count, minutes, filter, interval_minutes, channel, enabled, created";

/// A stored channel (JSON text); an unreadable one sends nowhere.
fn channel_of(stored: &str) -> Channel {
    serde_json::from_str(stored)
        .ok()
        .and_then(|c| Channel::from_stored(&c))
        .unwrap_or(Channel::Slack { url: String::new() })
}

pub(super) fn rule_of(r: &Row) -> Rule {
    let trigger: String = r.get(3);
    let filter: String = r.get(6);
    let filter: Value = serde_json::from_str(&filter).unwrap_or(Value::Null);
    let f = |k: &str| filter.get(k).and_then(Value::as_str).map(str::to_owned);
    Rule {
        id: r.get(0),
        project_id: r.get(1),
        spec: RuleSpec {
            name: r.get(2),
            trigger: Trigger::parse(&trigger).unwrap_or(Trigger::NewIssue),
            count: r.get(4),
            minutes: r.get(5),
            filter: Filter {
                level: f("level"),
                environment: f("environment"),
                release: f("release"),
                class: f("class"),
                kind: f("kind"),
            },
            interval_minutes: r.get(7),
            channel: channel_of(r.get(8)),
            enabled: r.get(9),
        },
        created: r.get(10),
    }
}

fn filter_json(f: &Filter) -> String {
    serde_json::to_string(f).unwrap_or_else(|_| "{}".into())
}

/// A project's rules, oldest first.
pub(super) async fn rules<C: GenericClient>(
    c: &C,
    project_id: i64,
) -> Result<Vec<Rule>, StoreError> {
    Ok(rows(
        c,
        &format!("SELECT {RULE_COLUMNS} FROM alert_rules WHERE project_id = $1 ORDER BY id"),
        &[&project_id],
    )
    .await?
    .iter()
    .map(rule_of)
    .collect())
}

const DELIVERY_COLUMNS: &str = "d.id, d.delivery_id, d.rule_id, d.issue_id, d.trigger_kind, d.status, d.attempts, d.created, d.updated, d.next_attempt, d.response_status, d.last_error, d.payload";

fn delivery_of(r: &Row) -> DeliveryRow {
    let status: String = r.get(5);
    let next: i64 = r.get(9);
    DeliveryRow {
        row: r.get(0),
        id: r.get(1),
        rule_id: r.get(2),
        issue_id: r.get(3),
        trigger: r.get(4),
        attempts: r.get(6),
        created: crate::time::rfc3339(r.get(7)),
        updated: crate::time::rfc3339(r.get(8)),
        next_attempt: (status == "queued").then(|| crate::time::rfc3339(next)),
        status,
        response_status: r.get(10),
        error: r.get(11),
        payload: r.get(12),
    }
}

async fn deliveries<C: GenericClient>(
    c: &C,
    rule_id: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    Ok(rows(
        c,
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries d WHERE d.rule_id = $1
             ORDER BY d.id DESC LIMIT $2"
        ),
        &[&rule_id, &limit],
    )
    .await?
    .iter()
    .map(delivery_of)
    .collect())
}

/// Records an attempt's outcome on a queued delivery.
async fn record_attempt<C: GenericClient>(
    c: &C,
    row: i64,
    outcome: &Outcome,
    now: i64,
) -> Result<(), StoreError> {
    let (status, next, code, error) = match outcome {
        Outcome::Sent { status } => ("sent", now, *status, None),
        Outcome::Retry { at, status, error } => ("queued", *at, *status, Some(error.as_str())),
        Outcome::Failed { status, error } => ("failed", now, *status, Some(error.as_str())),
    };
    exec(
        c,
        "UPDATE alert_deliveries SET status = $2, next_attempt = $3, response_status = $4,
             last_error = $5, attempts = attempts + 1, updated = $6
         WHERE id = $1 AND status = 'queued'",
        &[&row, &status, &next, &code, &error, &now],
    )
    .await?;
    Ok(())
}

/// Stores a delivery; with `queued`, it waits for the sender. `None` when the queue is
/// full (the bound is approximate across nodes queueing at once, as it is harmless).
pub(super) async fn enqueue<C: GenericClient>(
    c: &C,
    rule_id: i64,
    issue_id: Option<i64>,
    trigger: &str,
    payload: &str,
    status: &str,
    now: i64,
) -> Result<Option<(i64, String)>, StoreError> {
    if status == "queued" {
        let queued: i64 = row(
            c,
            "SELECT count(*) FROM alert_deliveries WHERE status = 'queued'",
            &[],
        )
        .await?
        .map_or(0, |r| r.get(0));
        if queued >= MAX_QUEUED {
            tracing::warn!(
                "alert delivery queue full ({MAX_QUEUED}); dropping a {trigger} alert of rule {rule_id}"
            );
            return Ok(None);
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let created = row(
        c,
        "INSERT INTO alert_deliveries (delivery_id, rule_id, issue_id, trigger_kind, payload,
                                       status, attempts, next_attempt, created, updated)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, $7) RETURNING id",
        &[&id, &rule_id, &issue_id, &trigger, &payload, &status, &now],
    )
    .await?;
    Ok(created.map(|r| (r.get(0), id)))
}

/// Whether a rule may fire for an issue now (its last message is at least `interval_ms`
/// old), recording that it fires: one statement, so two nodes deciding at once fire once.
pub(super) async fn fire_if_due<C: GenericClient>(
    c: &C,
    rule_id: i64,
    issue_id: i64,
    now: i64,
    interval_ms: i64,
) -> Result<bool, StoreError> {
    Ok(row(
        c,
        "INSERT INTO alert_fired (rule_id, issue_id, fired_at) VALUES ($1, $2, $3)
         ON CONFLICT (rule_id, issue_id) DO UPDATE SET fired_at = excluded.fired_at
         WHERE $3 - alert_fired.fired_at >= $4
         RETURNING 1",
        &[&rule_id, &issue_id, &now, &interval_ms],
    )
    .await?
    .is_some())
}

/// An issue's stored row, as alerts describe it, and its project.
pub(super) async fn issue_facts<C: GenericClient>(
    c: &C,
    issue_id: i64,
) -> Result<Option<(IssueFacts, i64)>, StoreError> {
    Ok(row(
        c,
        "SELECT id, title, class, kind, culprit, level, status, count, first_seen, last_seen,
                project_id
         FROM issues WHERE id = $1",
        &[&issue_id],
    )
    .await?
    .map(|r| {
        (
            IssueFacts {
                id: r.get(0),
                title: r.get(1),
                class: r.get(2),
                kind: r.get(3),
                culprit: r.get(4),
                level: r.get(5),
                status: r.get(6),
                count: r.get(7),
                first_seen: r.get(8),
                last_seen: r.get(9),
            },
            r.get(10),
        )
    }))
}

/// A project's name ("" if it is gone).
pub(super) async fn project_name<C: GenericClient>(
    c: &C,
    project_id: i64,
) -> Result<String, StoreError> {
    Ok(
        row(c, "SELECT name FROM projects WHERE id = $1", &[&project_id])
            .await?
            .map(|r| r.get(0))
            .unwrap_or_default(),
    )
}

/// Queues the `unmute` alerts of an issue just set from muted back to unresolved (in the
/// transaction that changes its status).
async fn on_unmute<C: GenericClient>(
    c: &C,
    alerts: &Alerts,
    issue_id: i64,
) -> Result<usize, StoreError> {
    let Some((issue, pid)) = issue_facts(c, issue_id).await? else {
        return Ok(0);
    };
    let project = project_name(c, pid).await?;
    let now = now_ms();
    let mut queued = 0;
    for rule in rules(c, pid).await? {
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
                c,
                rule.id,
                issue_id,
                now,
                s.interval_minutes * alerts.minute_ms(),
            )
            .await?
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
            c,
            rule.id,
            Some(issue_id),
            Trigger::Unmute.as_str(),
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
    Ok(queued)
}

/// Sets the status with the issue's row locked (ingest may be reopening it), queueing the
/// unmute alerts in the same transaction.
pub(super) async fn set_issue_status(
    s: &PgStore,
    id: i64,
    status: &str,
    alerts: &Arc<Alerts>,
) -> Result<Option<usize>, StoreError> {
    retry(|| async move {
        // Folded first: an unmute alert quotes the issue's count.
        let mut c = super::fold::folded(s).await?;
        let tx = c.transaction().await?;
        let Some(was) = row(
            &tx,
            "SELECT status FROM issues WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        else {
            return Ok(None);
        };
        let was: String = was.get(0);
        exec(
            &tx,
            "UPDATE issues SET status = $2,
                 is_regression = CASE WHEN $2 = 'resolved' THEN FALSE ELSE is_regression END
             WHERE id = $1",
            &[&id, &status],
        )
        .await?;
        let unmuted = if was == "muted" && status == "unresolved" {
            on_unmute(&tx, alerts, id).await?
        } else {
            0
        };
        tx.commit().await?;
        Ok(Some(unmuted))
    })
    .await
}

pub(super) async fn alert_rules(s: &PgStore, project_id: i64) -> Result<Vec<Rule>, StoreError> {
    retry(|| async move { rules(&s.conn().await?, project_id).await }).await
}

pub(super) async fn alert_rule(s: &PgStore, id: i64) -> Result<Option<Rule>, StoreError> {
    retry(|| async move {
        Ok(row(
            &s.conn().await?,
            &format!("SELECT {RULE_COLUMNS} FROM alert_rules WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| rule_of(&r)))
    })
    .await
}

/// Adds a rule unless the project has `max`; the project's row is locked meanwhile, so
/// nodes adding rules at once cannot pass the bound together.
pub(super) async fn insert_alert_rule(
    s: &PgStore,
    project_id: i64,
    spec: &RuleSpec,
    max: i64,
    now: i64,
) -> Result<Option<Rule>, StoreError> {
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        row(
            &tx,
            "SELECT id FROM projects WHERE id = $1 FOR UPDATE",
            &[&project_id],
        )
        .await?;
        let n: i64 = row(
            &tx,
            "SELECT count(*) FROM alert_rules WHERE project_id = $1",
            &[&project_id],
        )
        .await?
        .map_or(0, |r| r.get(0));
        if n >= max {
            return Ok(None);
        }
        let created = row(
            &tx,
            "INSERT INTO alert_rules (project_id, name, trigger_kind, count, minutes, filter,
                                      interval_minutes, channel, enabled, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &project_id,
                &spec.name,
                &spec.trigger.as_str(),
                &spec.count,
                &spec.minutes,
                &filter_json(&spec.filter),
                &spec.interval_minutes,
                &spec.channel.to_stored().to_string(),
                &spec.enabled,
                &now,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(created.map(|r| Rule {
            id: r.get(0),
            project_id,
            spec: spec.clone(),
            created: now,
        }))
    })
    .await
}

pub(super) async fn update_alert_rule(
    s: &PgStore,
    id: i64,
    spec: &RuleSpec,
) -> Result<bool, StoreError> {
    retry(|| async move {
        let n = exec(
            &s.conn().await?,
            "UPDATE alert_rules SET name = $2, trigger_kind = $3, count = $4, minutes = $5,
                 filter = $6, interval_minutes = $7, channel = $8, enabled = $9
             WHERE id = $1",
            &[
                &id,
                &spec.name,
                &spec.trigger.as_str(),
                &spec.count,
                &spec.minutes,
                &filter_json(&spec.filter),
                &spec.interval_minutes,
                &spec.channel.to_stored().to_string(),
                &spec.enabled,
            ],
        )
        .await?;
        Ok(n > 0)
    })
    .await
}

/// Deletes a rule with its marks and deliveries, in one transaction.
pub(super) async fn delete_alert_rule(s: &PgStore, id: i64) -> Result<bool, StoreError> {
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        exec(
            &tx,
            "DELETE FROM alert_deliveries WHERE rule_id = $1",
            &[&id],
        )
        .await?;
        exec(&tx, "DELETE FROM alert_fired WHERE rule_id = $1", &[&id]).await?;
        let n = exec(&tx, "DELETE FROM alert_rules WHERE id = $1", &[&id]).await?;
        tx.commit().await?;
        Ok(n > 0)
    })
    .await
}

pub(super) async fn alert_deliveries(
    s: &PgStore,
    rule_id: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    retry(|| async move { deliveries(&s.conn().await?, rule_id, limit).await }).await
}

/// Up to `limit` queued deliveries due at `now`, oldest first, and when the next one not
/// yet due is.
/// How long a node holds the deliveries it took from the queue before another node may
/// take them (it records each attempt's outcome well before: attempts time out sooner).
pub(super) const CLAIM_LEASE_MS: i64 = 60_000;

pub(super) async fn alerts_due(
    s: &PgStore,
    now: i64,
    limit: i64,
) -> Result<(Vec<Due>, Option<i64>), StoreError> {
    retry(|| async move {
        let c = s.conn().await?;
        // Claimed for a lease: the sender of one node attempts a delivery, the others skip
        // it; if that node dies mid-attempt, another takes it when the lease is over.
        let due: Vec<Due> = rows(
            &c,
            &format!(
                "WITH d AS (
                     UPDATE alert_deliveries SET next_attempt = $1 + $3
                     WHERE id IN (
                         SELECT id FROM alert_deliveries
                         WHERE status = 'queued' AND next_attempt <= $1
                         ORDER BY next_attempt, id LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     RETURNING *)
                 SELECT {DELIVERY_COLUMNS}, r.channel, r.name, d.created
                 FROM d JOIN alert_rules r ON r.id = d.rule_id
                 ORDER BY d.next_attempt, d.id"
            ),
            &[&now, &limit, &CLAIM_LEASE_MS],
        )
        .await?
        .iter()
        .map(|r| Due {
            delivery: delivery_of(r),
            channel: channel_of(r.get(13)),
            rule_name: r.get(14),
            created_ms: r.get(15),
        })
        .collect();
        // The next one due after these (the ones just claimed do not count: their lease
        // is not an attempt).
        let claimed: Vec<i64> = due.iter().map(|d| d.delivery.row).collect();
        let next: Option<i64> = row(
            &c,
            "SELECT min(next_attempt) FROM alert_deliveries
             WHERE status = 'queued' AND next_attempt > $1 AND id <> ALL($2)",
            &[&now, &claimed],
        )
        .await?
        .and_then(|r| r.get(0));
        Ok((due, next))
    })
    .await
}

pub(super) async fn record_alert_attempt(
    s: &PgStore,
    row: i64,
    outcome: &Outcome,
    now: i64,
) -> Result<(), StoreError> {
    retry(|| async move { record_attempt(&s.conn().await?, row, outcome, now).await }).await
}

/// Stores a test message's delivery, its outcome already known, in one transaction.
pub(super) async fn record_test_delivery(
    s: &PgStore,
    rule_id: i64,
    delivery_id: &str,
    payload: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<Option<DeliveryRow>, StoreError> {
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        let (row, _) = enqueue(&tx, rule_id, None, "test", payload, "queued", now)
            .await?
            .ok_or(StoreError::QueueFull)?;
        exec(
            &tx,
            "UPDATE alert_deliveries SET delivery_id = $2 WHERE id = $1",
            &[&row, &delivery_id],
        )
        .await?;
        record_attempt(&tx, row, outcome, now).await?;
        let stored = deliveries(&tx, rule_id, 1).await?.into_iter().next();
        tx.commit().await?;
        Ok(stored)
    })
    .await
}

/// Deletes old log entries: sent and failed deliveries past [`LOG_DAYS`] or beyond the
/// newest [`LOG_PER_RULE`] of their rule, and action-interval marks older than the
/// longest window; one transaction.
pub(super) async fn prune_alerts(s: &PgStore, now: i64) -> Result<(), StoreError> {
    let cutoff = now - LOG_DAYS * 24 * crate::time::HOUR_MS;
    let marks = now - crate::alerts::rules::MAX_MINUTES * 60_000;
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        exec(
            &tx,
            "DELETE FROM alert_deliveries WHERE status <> 'queued' AND updated < $1",
            &[&cutoff],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM alert_deliveries WHERE status <> 'queued' AND id IN (
                 SELECT id FROM (
                     SELECT id, row_number() OVER (PARTITION BY rule_id ORDER BY id DESC) AS n
                     FROM alert_deliveries WHERE status <> 'queued') ranked
                 WHERE n > $1)",
            &[&LOG_PER_RULE],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM alert_fired WHERE fired_at < $1",
            &[&marks],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::testing::{sample_job, twin};
    use crate::alerts::rules::{Channel, Filter, RuleSpec, Trigger};
    use crate::alerts::{AlertConfig, Alerts};
    use crate::store::{DeliveryRow, Outcome, Store};
    use std::sync::Arc;

    fn spec(name: &str, trigger: Trigger, filter: Filter) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            trigger,
            count: 5,
            minutes: 10,
            filter,
            interval_minutes: 30,
            channel: Channel::Webhook {
                url: "http://127.0.0.1:9/hook".into(),
                secret: Some("s3cret".into()),
            },
            enabled: true,
        }
    }

    /// What two stores' deliveries must agree on (ids and times are their own).
    fn shape(d: &[DeliveryRow]) -> Vec<String> {
        d.iter()
            .map(|d| {
                format!(
                    "{:?}",
                    (
                        d.rule_id,
                        d.issue_id,
                        &d.trigger,
                        &d.status,
                        d.attempts,
                        d.response_status,
                        &d.error,
                        d.next_attempt.is_some(),
                    )
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn rules_unmutes_and_the_queue_behave_as_on_sqlite() {
        let t = twin().await;
        let alerts = Arc::new(Alerts::new(
            AlertConfig::default(),
            "http://errscope.test".into(),
        ));
        let now = crate::time::now_ms();
        for s in [&t.lite as &dyn Store, &t.pg] {
            s.create_project("default").await.unwrap().unwrap();
            s.create_project("other").await.unwrap().unwrap();
        }
        t.lite.ingest(sample_job(1, now)).await.unwrap();
        t.mirror().await;
        let unmute = spec("unmute", Trigger::Unmute, Filter::default());
        let only_b = spec(
            "b only",
            Trigger::Unmute,
            Filter {
                class: Some("TypeB".into()),
                ..Default::default()
            },
        );
        let needs_event = spec(
            "prod",
            Trigger::Unmute,
            Filter {
                environment: Some("prod".into()),
                ..Default::default()
            },
        );
        let mut disabled = spec("off", Trigger::Unmute, Filter::default());
        disabled.enabled = false;
        let newish = spec("new", Trigger::NewIssue, Filter::default());
        for s in [&t.lite as &dyn Store, &t.pg] {
            for sp in [&unmute, &only_b, &needs_event, &disabled, &newish] {
                s.insert_alert_rule(1, sp, 5, now)
                    .await
                    .unwrap()
                    .expect("under the bound");
            }
            assert!(
                s.insert_alert_rule(1, &unmute, 5, now)
                    .await
                    .unwrap()
                    .is_none(),
                "at max"
            );
            assert!(
                s.insert_alert_rule(2, &unmute, 5, now)
                    .await
                    .unwrap()
                    .is_some(),
                "per project"
            );
        }
        assert_eq!(
            t.pg.alert_rules(1).await.unwrap(),
            t.lite.alert_rules(1).await.unwrap()
        );
        assert_eq!(
            t.pg.alert_rules(1).await.unwrap()[0].spec,
            unmute,
            "stored and read back"
        );
        assert_eq!(
            t.pg.alert_rule(2).await.unwrap(),
            t.lite.alert_rule(2).await.unwrap()
        );
        assert_eq!(t.pg.alert_rule(99).await.unwrap(), None);
        let mut renamed = newish.clone();
        renamed.name = "renamed".into();
        renamed.channel = Channel::Email {
            to: vec!["a@example.com".into()],
        };
        for s in [&t.lite as &dyn Store, &t.pg] {
            assert!(s.update_alert_rule(5, &renamed).await.unwrap());
            assert!(!s.update_alert_rule(99, &renamed).await.unwrap());
        }
        assert_eq!(t.pg.alert_rule(5).await.unwrap().unwrap().spec, renamed);

        // Issue 2 is TypeB: muting then reopening fires "unmute" and "b only".
        let classes: Vec<String> = {
            let i = t.pg.issue(2, now).await.unwrap().unwrap();
            vec![i.class]
        };
        assert_eq!(classes, ["TypeB"]);
        for s in [&t.lite as &dyn Store, &t.pg] {
            assert_eq!(
                s.set_issue_status(99, "resolved", &alerts).await.unwrap(),
                None
            );
            assert_eq!(
                s.set_issue_status(2, "muted", &alerts).await.unwrap(),
                Some(0)
            );
            assert_eq!(
                s.set_issue_status(2, "unresolved", &alerts).await.unwrap(),
                Some(2)
            );
            s.set_issue_status(2, "muted", &alerts).await.unwrap();
            assert_eq!(
                s.set_issue_status(2, "unresolved", &alerts).await.unwrap(),
                Some(0),
                "within the action interval"
            );
            assert_eq!(
                s.set_issue_status(1, "muted", &alerts).await.unwrap(),
                Some(0)
            );
            assert_eq!(
                s.set_issue_status(1, "resolved", &alerts).await.unwrap(),
                Some(0),
                "not an unmute"
            );
            assert_eq!(s.issue(1, now).await.unwrap().unwrap().status, "resolved");
        }
        for rule in 1..=6 {
            let lite = t.lite.alert_deliveries(rule, 50).await.unwrap();
            let pg = t.pg.alert_deliveries(rule, 50).await.unwrap();
            assert_eq!(shape(&pg), shape(&lite), "deliveries of rule {rule}");
            let payloads = |d: &[DeliveryRow]| {
                d.iter()
                    .map(|d| serde_json::from_str::<serde_json::Value>(&d.payload).unwrap())
                    .collect::<Vec<_>>()
            };
            assert_eq!(payloads(&pg), payloads(&lite), "payloads of rule {rule}");
        }
        assert_eq!(t.pg.alert_deliveries(1, 50).await.unwrap().len(), 1);

        // The queue: due now, retried later, then sent; a test message; pruning.
        let later = crate::time::now_ms() + 1_000;
        let (lite_due, lite_next) = t.lite.alerts_due(later, 10).await.unwrap();
        let (pg_due, pg_next) = t.pg.alerts_due(later, 10).await.unwrap();
        assert_eq!((pg_due.len(), pg_next), (lite_due.len(), lite_next));
        assert_eq!(pg_due.len(), 2);
        for (p, l) in pg_due.iter().zip(&lite_due) {
            assert_eq!((&p.channel, &p.rule_name), (&l.channel, &l.rule_name));
            assert_eq!(p.delivery.payload, l.delivery.payload);
        }
        let retry = Outcome::Retry {
            at: later + 60_000,
            status: Some(502),
            error: "bad gateway".into(),
        };
        for (s, due) in [(&t.lite as &dyn Store, &lite_due), (&t.pg, &pg_due)] {
            s.record_alert_attempt(due[0].delivery.row, &retry, later)
                .await
                .unwrap();
            let (now_due, next) = s.alerts_due(later, 10).await.unwrap();
            // PostgreSQL hands a delivery to one sender at a time: the other one, taken by
            // the call above and not attempted yet, is under its lease until later + 60 s.
            let still_due = if s.backend() == "postgres" { 0 } else { 1 };
            assert_eq!(now_due.len(), still_due, "{}", s.backend());
            assert_eq!(next, Some(later + 60_000));
            s.record_alert_attempt(
                due[1].delivery.row,
                &Outcome::Sent { status: Some(200) },
                later,
            )
            .await
            .unwrap();
            let failed = Outcome::Failed {
                status: None,
                error: "gave up".into(),
            };
            s.record_alert_attempt(due[0].delivery.row, &failed, later + 60_000)
                .await
                .unwrap();
            s.record_alert_attempt(
                due[0].delivery.row,
                &Outcome::Sent { status: Some(200) },
                later,
            )
            .await
            .unwrap();
            let (left, next) = s.alerts_due(later + 120_000, 10).await.unwrap();
            assert_eq!((left.len(), next), (0, None), "nothing queued any more");
            let test = s
                .record_test_delivery(
                    3,
                    "test-1",
                    "{\"test\":true}",
                    &Outcome::Sent { status: Some(204) },
                    later,
                )
                .await
                .unwrap()
                .expect("stored");
            assert_eq!(
                (
                    test.id.as_str(),
                    test.trigger.as_str(),
                    test.status.as_str()
                ),
                ("test-1", "test", "sent")
            );
            assert_eq!(
                (test.attempts, test.response_status, test.issue_id),
                (1, Some(204), None)
            );
        }
        for rule in 1..=6 {
            let lite = t.lite.alert_deliveries(rule, 50).await.unwrap();
            let pg = t.pg.alert_deliveries(rule, 50).await.unwrap();
            assert_eq!(
                shape(&pg),
                shape(&lite),
                "deliveries of rule {rule} after attempts"
            );
        }
        let eight_days = later + 8 * 24 * crate::time::HOUR_MS;
        for s in [&t.lite as &dyn Store, &t.pg] {
            s.prune_alerts(later).await.unwrap();
            assert_eq!(
                s.alert_deliveries(3, 50).await.unwrap().len(),
                1,
                "recent entries stay"
            );
            s.prune_alerts(eight_days).await.unwrap();
            assert!(
                s.alert_deliveries(1, 50).await.unwrap().is_empty(),
                "old entries go"
            );
            assert!(s.alert_deliveries(3, 50).await.unwrap().is_empty());
            assert!(s.delete_alert_rule(1).await.unwrap());
            assert!(!s.delete_alert_rule(1).await.unwrap());
            assert_eq!(s.alert_rules(1).await.unwrap().len(), 4);
        }
        // Pruned marks let the rules fire again.
        for s in [&t.lite as &dyn Store, &t.pg] {
            s.set_issue_status(2, "muted", &alerts).await.unwrap();
            assert_eq!(
                s.set_issue_status(2, "unresolved", &alerts).await.unwrap(),
                Some(1),
                "rule 1 is gone"
            );
        }
    }

    #[tokio::test]
    async fn the_log_keeps_the_newest_entries_of_each_rule() {
        let t = twin().await;
        let now = crate::time::now_ms();
        for s in [&t.lite as &dyn Store, &t.pg] {
            s.create_project("default").await.unwrap().unwrap();
            let r = s
                .insert_alert_rule(1, &spec("r", Trigger::NewIssue, Filter::default()), 5, now)
                .await
                .unwrap()
                .unwrap();
            for n in 0..crate::store::LOG_PER_RULE + 3 {
                s.record_test_delivery(
                    r.id,
                    &format!("t{n}"),
                    "{}",
                    &Outcome::Sent { status: Some(200) },
                    now,
                )
                .await
                .unwrap();
            }
            s.prune_alerts(now).await.unwrap();
            let kept = s.alert_deliveries(r.id, 1000).await.unwrap();
            assert_eq!(kept.len() as i64, crate::store::LOG_PER_RULE);
            assert_eq!(kept[0].id, format!("t{}", crate::store::LOG_PER_RULE + 2));
            assert_eq!(kept.last().unwrap().id, "t3");
        }
    }

    #[tokio::test]
    async fn nodes_reopening_an_issue_at_once_queue_its_alerts_once() {
        let url = super::super::testing::fresh_database().await;
        let mut nodes = Vec::new();
        for _ in 0..2 {
            nodes.push(Arc::new(
                super::PgStore::open(
                    &url,
                    8,
                    crate::store::Retention::default(),
                    Arc::new(crate::metrics::Metrics::default()),
                    None,
                )
                .await
                .unwrap(),
            ));
        }
        let now = crate::time::now_ms();
        nodes[0].create_project("default").await.unwrap().unwrap();
        super::exec(
            &nodes[0].conn().await.unwrap(),
            "INSERT INTO issues (project_id, fingerprint, class, kind, title, culprit, level,
                                 status, count, first_seen, last_seen)
             VALUES (1, 'f', 'E', 'programmer', 'E: boom', 'app::f', 'error', 'muted', 3, $1, $1)",
            &[&now],
        )
        .await
        .unwrap();
        // Rules added from both nodes at once stay within the bound.
        let mut adds = Vec::new();
        for n in 0..8 {
            let node = nodes[n % 2].clone();
            let sp = spec(&format!("r{n}"), Trigger::Unmute, Filter::default());
            adds.push(tokio::spawn(async move {
                node.insert_alert_rule(1, &sp, 3, now).await.unwrap()
            }));
        }
        let mut added = 0;
        for a in adds {
            added += usize::from(a.await.unwrap().is_some());
        }
        assert_eq!(added, 3);
        assert_eq!(nodes[1].alert_rules(1).await.unwrap().len(), 3);
        let alerts = Arc::new(Alerts::new(AlertConfig::default(), "http://x".into()));
        let mut tasks = Vec::new();
        for n in 0..8 {
            let (node, alerts) = (nodes[n % 2].clone(), alerts.clone());
            tasks.push(tokio::spawn(async move {
                node.set_issue_status(1, "unresolved", &alerts)
                    .await
                    .unwrap()
            }));
        }
        let mut queued = 0;
        for t in tasks {
            queued += t.await.unwrap().expect("the issue exists");
        }
        assert_eq!(
            queued, 3,
            "one unmute alert per rule, whichever node reopened it"
        );
        // The two nodes' senders take the queue at once: each delivery goes to one of them.
        let at = now + 60_000;
        let (a, b) = tokio::join!(nodes[0].alerts_due(at, 100), nodes[1].alerts_due(at, 100));
        let mut rows: Vec<i64> = a
            .unwrap()
            .0
            .iter()
            .chain(b.unwrap().0.iter())
            .map(|d| d.delivery.row)
            .collect();
        rows.sort_unstable();
        let taken = rows.len();
        rows.dedup();
        assert_eq!((taken, rows.len()), (3, 3), "each delivery taken once");
        assert!(nodes[0].alerts_due(at, 100).await.unwrap().0.is_empty());
        // A node that took them and died: after the lease another node takes them again.
        let later = at + super::CLAIM_LEASE_MS;
        assert_eq!(nodes[1].alerts_due(later, 100).await.unwrap().0.len(), 3);
        assert_eq!(
            nodes[1].issue(1, now).await.unwrap().unwrap().status,
            "unresolved"
        );
    }
}
