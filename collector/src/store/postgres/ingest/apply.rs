//! The SQL of one writer transaction on PostgreSQL: dedup, issue resolution, event rows
//! and counts first, then the touched issues locked in id order and their counters.
//!
//! Every multi-row statement takes its rows from `UNNEST` arrays and inserts them in a
//! stable order, so two nodes writing the same keys lock them in the same order.

use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::super::schema::COUNTER_SLOTS;
use crate::alerts::message::IssueFacts;
use crate::store::{
    IngestJob, MAX_TAG_VALUES_PER_ISSUE, MAX_TAG_VALUES_PER_PROJECT, PreparedEvent, Retention,
    StoreError,
};
use crate::time::{HOUR_MS, hour_of, now_ms};

const OTHER: &str = "(other)";

/// Tag-value counts by `(issue or project, key, value)`.
pub(super) type TagCounts = HashMap<(i64, String, String), i64>;

/// Issue ids by `(project, fingerprint)`.
pub(super) type IssueIds = HashMap<(i64, String), i64>;

/// Per-issue changes accumulated over a batch.
pub(super) struct IssueDelta {
    pub(super) project_id: i64,
    /// New occurrences (events and aggregate counts).
    pub(super) count: i64,
    last_seen: i64,
    first_seen: i64,
    /// The newest event of the issue in the batch: (job, event) indices.
    pub(super) latest: Option<(usize, usize)>,
    /// Whether the batch stored samples of it (so the cap is enforced).
    samples: bool,
}

impl IssueDelta {
    fn new(project_id: i64) -> Self {
        IssueDelta {
            project_id,
            count: 0,
            last_seen: 0,
            first_seen: i64::MAX,
            latest: None,
            samples: false,
        }
    }
}

#[derive(Default)]
struct ProjectDelta {
    events: i64,
    seq: i64,
    last_seen: i64,
}

/// What one transaction adds, keyed in the order rows are locked.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) issues: BTreeMap<i64, IssueDelta>,
    hourly: BTreeMap<(i64, i64), i64>,
    pub(super) issue_tags: TagCounts,
    pub(super) project_tags: TagCounts,
    projects: BTreeMap<i64, ProjectDelta>,
    pub(super) events_stored: u64,
    pub(super) duplicates: u64,
    /// Issue ids looked up or created; cached once the transaction commits.
    pub(super) learned: Vec<((i64, String), i64)>,
}

impl Batch {
    fn issue(&mut self, issue_id: i64, project_id: i64) -> &mut IssueDelta {
        self.issues
            .entry(issue_id)
            .or_insert_with(|| IssueDelta::new(project_id))
    }

    /// Adds `count` occurrences to an issue, spread over the hours of `[start, end]`.
    fn add_count(&mut self, pid: i64, issue_id: i64, count: i64, start: i64, end: i64) {
        if count <= 0 {
            return;
        }
        let end = end.max(start);
        let d = self.issue(issue_id, pid);
        d.count += count;
        d.last_seen = d.last_seen.max(end);
        for (hour, n) in crate::store::spread(count, start, end) {
            *self.hourly.entry((issue_id, hour)).or_default() += n;
        }
        let p = self.projects.entry(pid).or_default();
        p.events += count;
        p.seq += 1;
        p.last_seen = p.last_seen.max(end);
    }
}

/// Columns of new pending counts.
#[derive(Default)]
struct PendingCols<'a> {
    id: Vec<&'a str>,
    project: Vec<i64>,
    event: Vec<&'a str>,
    count: Vec<i64>,
    start: Vec<i64>,
    end: Vec<i64>,
}

/// Columns of new issues: project, fingerprint, class, kind, title, culprit, level, time.
#[derive(Default)]
struct IssueCols<'a>(
    Vec<i64>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<i64>,
);

/// Columns of the issue UPDATE: id, count, last and first seen, then the newest
/// event's id, level, title and culprit.
#[derive(Default)]
struct UpdateCols<'a>(
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<Option<&'a str>>,
    Vec<Option<&'a str>>,
    Vec<Option<&'a str>>,
    Vec<Option<&'a str>>,
);

/// Stores the events, discards and counts of `jobs` and accumulates what they add to
/// issues, hours, tags and projects in `batch` (written by [`flush`]). With `sweep`, also
/// applies aggregate counts left pending by a node that did not yet see their event.
pub(super) async fn stage(
    tx: &Transaction<'_>,
    jobs: &[&IngestJob],
    cache: &IssueIds,
    batch: &mut Batch,
    sweep: bool,
) -> Result<(), StoreError> {
    let now = now_ms();
    // The first occurrence of each event id in the batch; later ones are retries.
    let mut seen = HashSet::new();
    let mut evs: Vec<(usize, usize)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (i, ev) in job.events.iter().enumerate() {
            if seen.insert((job.project_id, ev.event_id.as_str())) {
                evs.push((j, i));
            } else {
                batch.duplicates += 1;
            }
        }
    }
    let event = |(j, i): (usize, usize)| -> (i64, &PreparedEvent) {
        (jobs[j].project_id, &jobs[j].events[i])
    };

    let ids = resolve_issues(tx, evs.iter().map(|&at| event(at)), cache, batch).await?;
    let issue_of = |pid: i64, ev: &PreparedEvent| -> i64 {
        let key = (pid, ev.grouping.fingerprint.clone());
        cache
            .get(&key)
            .or_else(|| ids.get(&key))
            .copied()
            .unwrap_or(0)
    };

    // The dedup check and record in one statement: a row another node inserted and has
    // not committed yet makes this one wait, then count as a duplicate.
    let mut fresh = HashSet::new();
    if !evs.is_empty() {
        let (mut p, mut e, mut iss, mut r) = (vec![], vec![], vec![], vec![]);
        for &at in &evs {
            let (pid, ev) = event(at);
            p.push(pid);
            e.push(ev.event_id.as_str());
            iss.push(issue_of(pid, ev));
            r.push(ev.received);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO event_ids (project_id, event_id, issue_id, received)
                 SELECT p, e, i, r FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[]) AS u(p, e, i, r)
                 ORDER BY p, e
                 ON CONFLICT DO NOTHING RETURNING project_id, event_id",
            )
            .await?;
        for row in tx.query(&stmt, &[&p, &e, &iss, &r]).await? {
            fresh.insert((row.get::<_, i64>(0), row.get::<_, String>(1)));
        }
    }
    let fresh_evs: Vec<(usize, usize)> = evs
        .iter()
        .copied()
        .filter(|&at| {
            let (pid, ev) = event(at);
            fresh.contains(&(pid, ev.event_id.clone()))
        })
        .collect();
    batch.duplicates += (evs.len() - fresh_evs.len()) as u64;

    // Event rows in arrival order. `DO NOTHING`: a retry whose dedup entry was pruned
    // while its sample is still kept.
    let mut stored = HashSet::new();
    if !fresh_evs.is_empty() {
        let n = fresh_evs.len();
        let (mut p, mut e, mut iss, mut ts, mut rc) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut lv, mut msg, mut env, mut rel, mut enc, mut data) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for &at in &fresh_evs {
            let (pid, ev) = event(at);
            p.push(pid);
            e.push(ev.event_id.as_str());
            iss.push(issue_of(pid, ev));
            ts.push(ev.timestamp);
            rc.push(ev.received);
            lv.push(ev.level.as_str());
            msg.push(ev.grouping.message.as_str());
            env.push(ev.environment.as_deref());
            rel.push(ev.release.as_deref());
            enc.push(i16::from(ev.encoding));
            data.push(ev.data.as_slice());
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO events (project_id, event_id, issue_id, timestamp, received, level, message, environment, release, encoding, data)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int2[], $11::bytea[])
                 ON CONFLICT (project_id, event_id) DO NOTHING RETURNING project_id, event_id",
            )
            .await?;
        for row in tx
            .query(
                &stmt,
                &[&p, &e, &iss, &ts, &rc, &lv, &msg, &env, &rel, &enc, &data],
            )
            .await?
        {
            stored.insert((row.get::<_, i64>(0), row.get::<_, String>(1)));
        }
    }
    let mut stored_issue = HashMap::new();
    for &(j, i) in &fresh_evs {
        let (pid, ev) = event((j, i));
        if !stored.contains(&(pid, ev.event_id.clone())) {
            batch.duplicates += 1;
            continue;
        }
        let issue_id = issue_of(pid, ev);
        stored_issue.insert((pid, ev.event_id.as_str()), issue_id);
        batch.events_stored += 1;
        let d = batch.issue(issue_id, pid);
        d.count += 1;
        d.last_seen = d.last_seen.max(ev.timestamp);
        d.first_seen = d.first_seen.min(ev.timestamp);
        d.latest = Some((j, i));
        d.samples = true;
        *batch
            .hourly
            .entry((issue_id, hour_of(ev.timestamp)))
            .or_default() += 1;
        for (k, v) in &ev.tags {
            *batch
                .issue_tags
                .entry((issue_id, k.clone(), v.clone()))
                .or_default() += 1;
            *batch
                .project_tags
                .entry((pid, k.clone(), v.clone()))
                .or_default() += 1;
        }
        let pd = batch.projects.entry(pid).or_default();
        pd.events += 1;
        pd.seq += 1;
        pd.last_seen = pd.last_seen.max(ev.timestamp);
    }

    // Aggregate counts that arrived before their event.
    if !stored_issue.is_empty() {
        let (p, e): (Vec<i64>, Vec<&str>) = stored_issue.keys().copied().unzip();
        let stmt = tx
            .prepare_cached(
                "DELETE FROM pending_counts WHERE (project_id, event_id) IN (SELECT * FROM UNNEST($1::int8[], $2::text[]))
                 RETURNING project_id, event_id, count, start_ms, end_ms",
            )
            .await?;
        for row in tx.query(&stmt, &[&p, &e]).await? {
            let pid: i64 = row.get(0);
            let eid: String = row.get(1);
            if let Some(&issue_id) = stored_issue.get(&(pid, eid.as_str())) {
                batch.add_count(pid, issue_id, row.get(2), row.get(3), row.get(4));
            }
        }
    }
    if sweep {
        // A count whose event another node was storing at the same moment.
        let stmt = tx
            .prepare_cached(
                "DELETE FROM pending_counts p USING event_ids e
                 WHERE e.project_id = p.project_id AND e.event_id = p.event_id
                 RETURNING p.project_id, e.issue_id, p.count, p.start_ms, p.end_ms",
            )
            .await?;
        for row in tx.query(&stmt, &[]).await? {
            batch.add_count(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        }
    }

    // Client-report discards.
    let mut discards: BTreeMap<(i64, &str, &str), i64> = BTreeMap::new();
    for job in jobs {
        for d in &job.discards {
            *discards
                .entry((job.project_id, d.reason.as_str(), d.category.as_str()))
                .or_default() += d.quantity;
        }
        if !job.discards.is_empty() {
            batch.projects.entry(job.project_id).or_default().seq += 1;
        }
    }
    if !discards.is_empty() {
        let mut cols: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
        for ((p, r, c), q) in &discards {
            cols.0.push(*p);
            cols.1.push(r);
            cols.2.push(c);
            cols.3.push(*q);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO discards (project_id, reason, category, quantity)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[]) AS u(p, r, c, q) ORDER BY p, r, c
                 ON CONFLICT (project_id, reason, category) DO UPDATE SET quantity = discards.quantity + excluded.quantity",
            )
            .await?;
        tx.execute(&stmt, &[&cols.0, &cols.1, &cols.2, &cols.3])
            .await?;
    }

    // Aggregate counts, each applied once whichever node gets it.
    let mut count_ids = HashSet::new();
    let counts: Vec<(i64, &crate::store::CountRecord)> = jobs
        .iter()
        .flat_map(|job| job.counts.iter().map(move |c| (job.project_id, c)))
        .filter(|(_, c)| count_ids.insert(c.id.as_str()))
        .collect();
    if !counts.is_empty() {
        let ids: Vec<&str> = counts.iter().map(|(_, c)| c.id.as_str()).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO applied_counts (id, received)
                 SELECT i, $2 FROM UNNEST($1::text[]) AS u(i) ORDER BY i
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .await?;
        let fresh: HashSet<String> = tx
            .query(&stmt, &[&ids, &now])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let fresh: Vec<(i64, &crate::store::CountRecord)> = counts
            .into_iter()
            .filter(|(_, c)| fresh.contains(&c.id))
            .collect();
        if !fresh.is_empty() {
            let (p, e): (Vec<i64>, Vec<&str>) =
                fresh.iter().map(|(p, c)| (*p, c.event_id.as_str())).unzip();
            let stmt = tx
                .prepare_cached(
                    "SELECT coalesce(
                        (SELECT issue_id FROM event_ids WHERE project_id = u.p AND event_id = u.e),
                        (SELECT issue_id FROM events WHERE project_id = u.p AND event_id = u.e))
                     FROM UNNEST($1::int8[], $2::text[]) WITH ORDINALITY AS u(p, e, n) ORDER BY n",
                )
                .await?;
            let found: Vec<Option<i64>> = tx
                .query(&stmt, &[&p, &e])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut pending = PendingCols::default();
            for ((pid, c), issue) in fresh.iter().zip(found) {
                match issue {
                    Some(issue_id) => batch.add_count(*pid, issue_id, c.count, c.start, c.end),
                    None => {
                        pending.id.push(&c.id);
                        pending.project.push(*pid);
                        pending.event.push(&c.event_id);
                        pending.count.push(c.count);
                        pending.start.push(c.start);
                        pending.end.push(c.end);
                    }
                }
            }
            if !pending.id.is_empty() {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO pending_counts (id, project_id, event_id, count, start_ms, end_ms, received)
                         SELECT u.*, $7::int8 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::int8[]) AS u
                         ON CONFLICT DO NOTHING",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[
                        &pending.id,
                        &pending.project,
                        &pending.event,
                        &pending.count,
                        &pending.start,
                        &pending.end,
                        &now,
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The issue ids of the events' fingerprints: from the cache, else created, else read
/// (after the node that created it committed).
async fn resolve_issues<'a>(
    tx: &Transaction<'_>,
    events: impl Iterator<Item = (i64, &'a PreparedEvent)>,
    cache: &IssueIds,
    batch: &mut Batch,
) -> Result<IssueIds, StoreError> {
    let mut need: BTreeMap<(i64, &str), &PreparedEvent> = BTreeMap::new();
    for (pid, ev) in events {
        let fp = ev.grouping.fingerprint.as_str();
        if !cache.contains_key(&(pid, fp.to_owned())) {
            need.entry((pid, fp)).or_insert(ev);
        }
    }
    let mut ids = IssueIds::new();
    if need.is_empty() {
        return Ok(ids);
    }
    let mut c = IssueCols::default();
    for ((pid, fp), ev) in &need {
        let g = &ev.grouping;
        c.0.push(*pid);
        c.1.push(fp);
        c.2.push(&g.class);
        c.3.push(g.kind.as_str());
        c.4.push(&g.title);
        c.5.push(&g.culprit);
        c.6.push(&ev.level);
        c.7.push(ev.timestamp);
    }
    // Sorted by fingerprint, so racing nodes wait for each other in one order; a
    // fingerprint another node inserts first comes back from the SELECT below.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO issues (project_id, fingerprint, class, kind, title, culprit, level, count, first_seen, last_seen)
             SELECT p, f, c, k, t, cu, l, 0, ts, ts
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int8[]) AS u(p, f, c, k, t, cu, l, ts)
             ORDER BY p, f
             ON CONFLICT (project_id, fingerprint) DO NOTHING RETURNING id, project_id, fingerprint",
        )
        .await?;
    for row in tx
        .query(&stmt, &[&c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7])
        .await?
    {
        ids.insert((row.get(1), row.get(2)), row.get(0));
    }
    if ids.len() < need.len() {
        let stmt = tx
            .prepare_cached(
                "SELECT i.id, i.project_id, i.fingerprint FROM issues i
                 JOIN UNNEST($1::int8[], $2::text[]) AS u(p, f) ON i.project_id = u.p AND i.fingerprint = u.f",
            )
            .await?;
        for row in tx.query(&stmt, &[&c.0, &c.1]).await? {
            ids.insert((row.get(1), row.get(2)), row.get(0));
        }
    }
    batch
        .learned
        .extend(ids.iter().map(|(k, v)| (k.clone(), *v)));
    Ok(ids)
}

/// Locks the issues the batch touches, in id order, and reads them as they were before
/// it (what the alert hook decides on: a count of 0 is new, `resolved` a regression).
pub(super) async fn lock_issues(
    tx: &Transaction<'_>,
    batch: &Batch,
) -> Result<BTreeMap<i64, IssueFacts>, StoreError> {
    let mut facts = BTreeMap::new();
    if batch.issues.is_empty() {
        return Ok(facts);
    }
    let ids: Vec<i64> = batch.issues.keys().copied().collect();
    let stmt = tx
        .prepare_cached(
            "SELECT id, title, class, kind, culprit, level, status, count, first_seen, last_seen
             FROM issues WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE",
        )
        .await?;
    for r in tx.query(&stmt, &[&ids]).await? {
        let f = IssueFacts {
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
        };
        facts.insert(f.id, f);
    }
    Ok(facts)
}

/// Applies a batch's issue counters (one UPDATE for all its issues), the sample cap,
/// the hourly buckets and the project's counter slot. Call after [`lock_issues`].
pub(super) async fn flush(
    tx: &Transaction<'_>,
    jobs: &[&IngestJob],
    batch: &Batch,
    retention: &Retention,
) -> Result<(), StoreError> {
    if !batch.issues.is_empty() {
        let mut c = UpdateCols::default();
        for (id, d) in &batch.issues {
            let latest = d.latest.map(|(j, i)| &jobs[j].events[i]);
            c.0.push(*id);
            c.1.push(d.count);
            c.2.push(d.last_seen);
            c.3.push(d.first_seen.min(d.last_seen));
            c.4.push(latest.map(|e| e.event_id.as_str()));
            c.5.push(latest.map(|e| e.level.as_str()));
            c.6.push(latest.map(|e| e.grouping.title.as_str()));
            c.7.push(latest.map(|e| e.grouping.culprit.as_str()));
        }
        let stmt = tx
            .prepare_cached(
                "UPDATE issues i SET
                    count = i.count + u.n,
                    last_seen = greatest(i.last_seen, u.ls),
                    first_seen = least(i.first_seen, u.fs),
                    latest_event_id = coalesce(u.le, i.latest_event_id),
                    level = coalesce(u.lv, i.level),
                    title = coalesce(u.ti, i.title),
                    culprit = coalesce(u.cu, i.culprit),
                    is_regression = (i.status = 'resolved') OR i.is_regression,
                    status = CASE WHEN i.status = 'resolved' THEN 'unresolved' ELSE i.status END
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[])
                      AS u(id, n, ls, fs, le, lv, ti, cu)
                 WHERE i.id = u.id",
            )
            .await?;
        tx.execute(&stmt, &[&c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7])
            .await?;

        // The first sample of each issue and its newest, `max_events_per_issue` in all.
        let sampled: Vec<i64> = batch
            .issues
            .iter()
            .filter(|(_, d)| d.samples)
            .map(|(id, _)| *id)
            .collect();
        if !sampled.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM events WHERE id IN (
                        SELECT id FROM (
                            SELECT id, row_number() OVER (PARTITION BY issue_id ORDER BY id DESC) AS newer,
                                   min(id) OVER (PARTITION BY issue_id) AS first
                            FROM events WHERE issue_id = ANY($1::int8[])) s
                        WHERE newer >= $2 AND id <> first)",
                )
                .await?;
            tx.execute(&stmt, &[&sampled, &retention.max_events_per_issue.max(1)])
                .await?;
        }
    }
    if !batch.hourly.is_empty() {
        let mut c: (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
        for ((i, h), n) in &batch.hourly {
            c.0.push(*i);
            c.1.push(*h);
            c.2.push(*n);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO issue_hourly (issue_id, hour, count)
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) AS u(i, h, n) ORDER BY i, h
                 ON CONFLICT (issue_id, hour) DO UPDATE SET count = issue_hourly.count + excluded.count",
            )
            .await?;
        tx.execute(&stmt, &[&c.0, &c.1, &c.2]).await?;
    }
    if !batch.projects.is_empty() {
        // One of the project's slots, at random: nodes rarely wait for each other here.
        let slot: i32 = rand::random_range(0..COUNTER_SLOTS);
        let mut c: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
        for (p, d) in &batch.projects {
            c.0.push(*p);
            c.1.push(d.events);
            c.2.push(d.seq);
            c.3.push(d.last_seen);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO project_counters (project_id, slot, events, seq, last_seen)
                 SELECT p, $5, e, s, NULLIF(l, 0)
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[]) AS u(p, e, s, l) ORDER BY p
                 ON CONFLICT (project_id, slot) DO UPDATE SET
                    events = project_counters.events + excluded.events,
                    seq = project_counters.seq + excluded.seq,
                    last_seen = greatest(project_counters.last_seen, excluded.last_seen)",
            )
            .await?;
        tx.execute(&stmt, &[&c.0, &c.1, &c.2, &c.3, &slot]).await?;
    }
    Ok(())
}

/// The statements of one tag-count table.
struct TagTable {
    existing: &'static str,
    distinct: &'static str,
    upsert: &'static str,
    cap: i64,
}

const ISSUE_TAGS: TagTable = TagTable {
    existing: "SELECT t.issue_id, t.key, t.value FROM issue_tags t
               JOIN UNNEST($1::int8[], $2::text[], $3::text[]) AS u(o, k, v) ON t.issue_id = u.o AND t.key = u.k AND t.value = u.v",
    distinct: "SELECT t.issue_id, t.key, count(*) FROM issue_tags t
               JOIN (SELECT DISTINCT * FROM UNNEST($1::int8[], $2::text[])) AS u(o, k) ON t.issue_id = u.o AND t.key = u.k
               GROUP BY t.issue_id, t.key",
    upsert: "INSERT INTO issue_tags (issue_id, key, value, count)
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[]) AS u(o, k, v, n) ORDER BY o, k, v
             ON CONFLICT (issue_id, key, value) DO UPDATE SET count = issue_tags.count + excluded.count",
    cap: MAX_TAG_VALUES_PER_ISSUE,
};

const PROJECT_TAGS: TagTable = TagTable {
    existing: "SELECT t.project_id, t.key, t.value FROM project_tags t
               JOIN UNNEST($1::int8[], $2::text[], $3::text[]) AS u(o, k, v) ON t.project_id = u.o AND t.key = u.k AND t.value = u.v",
    distinct: "SELECT t.project_id, t.key, count(*) FROM project_tags t
               JOIN (SELECT DISTINCT * FROM UNNEST($1::int8[], $2::text[])) AS u(o, k) ON t.project_id = u.o AND t.key = u.k
               GROUP BY t.project_id, t.key",
    upsert: "INSERT INTO project_tags (project_id, key, value, count)
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[]) AS u(o, k, v, n) ORDER BY o, k, v
             ON CONFLICT (project_id, key, value) DO UPDATE SET count = project_tags.count + excluded.count",
    cap: MAX_TAG_VALUES_PER_PROJECT,
};

/// Adds tag-value counts to both tables; a new value beyond a table's cap counts as
/// `(other)`. (Nodes adding new values at the same moment may pass the cap by a batch.)
pub(super) async fn write_tags(
    tx: &Transaction<'_>,
    issue: &TagCounts,
    project: &TagCounts,
) -> Result<(), StoreError> {
    write_table(tx, &ISSUE_TAGS, issue).await?;
    write_table(tx, &PROJECT_TAGS, project).await
}

async fn write_table(
    tx: &Transaction<'_>,
    t: &TagTable,
    counts: &TagCounts,
) -> Result<(), StoreError> {
    if counts.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<(&(i64, String, String), &i64)> = counts.iter().collect();
    sorted.sort_unstable();
    let (mut o, mut k, mut v) = (vec![], vec![], vec![]);
    for ((owner, key, value), _) in &sorted {
        o.push(*owner);
        k.push(key.as_str());
        v.push(value.as_str());
    }
    let stmt = tx.prepare_cached(t.existing).await?;
    let existing: HashSet<(i64, String, String)> = tx
        .query(&stmt, &[&o, &k, &v])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let stmt = tx.prepare_cached(t.distinct).await?;
    let mut distinct: HashMap<(i64, String), i64> = tx
        .query(&stmt, &[&o, &k])
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let mut out: BTreeMap<(i64, &str, &str), i64> = BTreeMap::new();
    for ((owner, key, value), n) in sorted {
        let keep = existing.contains(&(*owner, key.clone(), value.clone())) || {
            let d = distinct.entry((*owner, key.clone())).or_default();
            let room = *d < t.cap;
            if room {
                *d += 1;
            }
            room
        };
        let value = if keep { value.as_str() } else { OTHER };
        *out.entry((*owner, key.as_str(), value)).or_default() += n;
    }
    let mut c: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    for ((owner, key, value), n) in out {
        c.0.push(owner);
        c.1.push(key);
        c.2.push(value);
        c.3.push(n);
    }
    let stmt = tx.prepare_cached(t.upsert).await?;
    tx.execute(&stmt, &[&c.0, &c.1, &c.2, &c.3]).await?;
    Ok(())
}

/// Hours of hourly buckets kept.
pub(super) fn hourly_keep_hours(retention: &Retention) -> i64 {
    (retention.retention_days * 24).max(14 * 24 + 1)
}

/// The oldest `received` still inside the retention.
pub(super) fn retention_cutoff(retention: &Retention, now: i64) -> i64 {
    now - retention.retention_days * 24 * HOUR_MS
}
