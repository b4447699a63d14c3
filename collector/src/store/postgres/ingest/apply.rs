//! The SQL of one writer transaction on PostgreSQL: dedup, issue resolution, event rows,
//! then the counts as insert-only deltas (`fold.rs`) in one statement.
//!
//! Every multi-row statement takes its rows from `UNNEST` arrays and inserts them in a
//! stable order, so two nodes writing the same keys lock them in the same order.

use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::super::schema::COUNTER_SLOTS;
use crate::alerts::message::IssueFacts;
use crate::store::{IngestJob, PreparedEvent, Retention, StoreError};
use crate::time::{HOUR_MS, hour_of, now_ms};

/// Tag-value counts by `(issue, key, value)`.
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
    issue_tags: TagCounts,
    projects: BTreeMap<i64, ProjectDelta>,
    pub(super) events_stored: u64,
    pub(super) duplicates: u64,
    /// Issue ids looked up or created; cached once the transaction commits.
    pub(super) learned: Vec<((i64, String), i64)>,
    /// The issues this transaction created (a new-issue alert fires for them).
    pub(super) created: HashSet<i64>,
    /// The highest `event_ids.seq` this batch took (0 if none): how many ids all nodes
    /// have stored, give or take the batches in flight.
    pub(super) id_seq: i64,
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

/// The first statement of a batch with events: dedup ids (`kind` 0, with their number),
/// the event rows stored (1), and the pending aggregate counts of those events taken
/// (2, with count, start and end).
const STAGE: &str = "WITH f AS (
        INSERT INTO event_ids (project_id, event_id, issue_id, received)
        SELECT p, e, i, r FROM UNNEST($1::int8[], $2::text[], $3::int8[], $5::int8[]) AS u(p, e, i, r)
        ORDER BY p, e
        ON CONFLICT DO NOTHING RETURNING project_id, event_id, seq),
    s AS (
        INSERT INTO events (project_id, event_id, issue_id, timestamp, received, level, message, environment, release, encoding, data)
        SELECT u.p, u.e, u.i, u.ts, u.rc, u.lv, u.msg, u.env, u.rel, u.enc, u.data
        FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int2[], $11::bytea[])
             WITH ORDINALITY AS u(p, e, i, ts, rc, lv, msg, env, rel, enc, data, n)
        JOIN f ON f.project_id = u.p AND f.event_id = u.e
        ORDER BY u.n
        ON CONFLICT (project_id, event_id) DO NOTHING RETURNING project_id, event_id),
    c AS (
        DELETE FROM pending_counts pc USING s WHERE pc.project_id = s.project_id AND pc.event_id = s.event_id
        RETURNING pc.project_id, pc.event_id, pc.count, pc.start_ms, pc.end_ms)
    SELECT 0, project_id, event_id, seq, 0::int8, 0::int8 FROM f
    UNION ALL SELECT 1, project_id, event_id, 0::int8, 0::int8, 0::int8 FROM s
    UNION ALL SELECT 2, project_id, event_id, count, start_ms, end_ms FROM c";

/// Columns of a batch's events, in [`STAGE`]'s parameter order.
struct EventCols<'a> {
    p: Vec<i64>,
    e: Vec<&'a str>,
    iss: Vec<i64>,
    ts: Vec<i64>,
    rc: Vec<i64>,
    lv: Vec<&'a str>,
    msg: Vec<&'a str>,
    env: Vec<Option<&'a str>>,
    rel: Vec<Option<&'a str>>,
    enc: Vec<i16>,
    data: Vec<&'a [u8]>,
}

impl EventCols<'_> {
    fn with_capacity(n: usize) -> Self {
        EventCols {
            p: Vec::with_capacity(n),
            e: Vec::with_capacity(n),
            iss: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            rc: Vec::with_capacity(n),
            lv: Vec::with_capacity(n),
            msg: Vec::with_capacity(n),
            env: Vec::with_capacity(n),
            rel: Vec::with_capacity(n),
            enc: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
        }
    }
}

/// Columns of the tag deltas: issue, project, key, value, count.
#[derive(Default)]
struct TagDeltaCols<'a>(Vec<i64>, Vec<i64>, Vec<&'a str>, Vec<&'a str>, Vec<i64>);

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

/// Columns of the issue deltas: id, count, first and last seen, then the newest
/// event's id, level, title and culprit.
#[derive(Default)]
struct DeltaCols<'a>(
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

    // The dedup ids, the event rows and the aggregate counts that arrived before their
    // event, in one statement. An id another node inserted and has not committed yet
    // makes this one wait, then count as a duplicate. Event rows go in arrival order;
    // `DO NOTHING` there: a retry whose dedup entry was pruned while its sample is kept.
    let (mut fresh, mut stored) = (HashSet::new(), HashSet::new());
    let mut pending = Vec::new();
    if !evs.is_empty() {
        let n = evs.len();
        let mut c = EventCols::with_capacity(n);
        for &at in &evs {
            let (pid, ev) = event(at);
            c.p.push(pid);
            c.e.push(ev.event_id.as_str());
            c.iss.push(issue_of(pid, ev));
            c.ts.push(ev.timestamp);
            c.rc.push(ev.received);
            c.lv.push(ev.level.as_str());
            c.msg.push(ev.grouping.message.as_str());
            c.env.push(ev.environment.as_deref());
            c.rel.push(ev.release.as_deref());
            c.enc.push(i16::from(ev.encoding));
            c.data.push(ev.data.as_slice());
        }
        let stmt = tx.prepare_cached(STAGE).await?;
        let rows = tx
            .query(
                &stmt,
                &[
                    &c.p, &c.e, &c.iss, &c.ts, &c.rc, &c.lv, &c.msg, &c.env, &c.rel, &c.enc,
                    &c.data,
                ],
            )
            .await?;
        for row in rows {
            let key = (row.get::<_, i64>(1), row.get::<_, String>(2));
            match row.get::<_, i32>(0) {
                0 => {
                    batch.id_seq = batch.id_seq.max(row.get(3));
                    fresh.insert(key);
                }
                1 => {
                    stored.insert(key);
                }
                _ => pending.push((key, row.get::<_, i64>(3), row.get(4), row.get(5))),
            }
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
        }
        let pd = batch.projects.entry(pid).or_default();
        pd.events += 1;
        pd.seq += 1;
        pd.last_seen = pd.last_seen.max(ev.timestamp);
    }
    // Aggregate counts that arrived before their event.
    for ((pid, eid), count, start, end) in pending {
        if let Some(&issue_id) = stored_issue.get(&(pid, eid.as_str())) {
            batch.add_count(pid, issue_id, count, start, end);
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
        batch.created.insert(row.get(0));
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

/// The touched issues as they are before the batch (what the alert hook decides on),
/// read without locking them: counts include the deltas not folded yet.
pub(super) async fn issue_facts(
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
            "SELECT i.id, i.title, i.class, i.kind, i.culprit, i.level, i.status,
                    i.count + coalesce(d.n, 0)::int8, least(i.first_seen, d.fs), greatest(i.last_seen, d.ls)
             FROM issues i LEFT JOIN (
                SELECT issue_id, sum(count) AS n, min(first_seen) AS fs, max(last_seen) AS ls
                FROM issue_deltas WHERE issue_id = ANY($1::int8[]) GROUP BY issue_id) d ON d.issue_id = i.id
             WHERE i.id = ANY($1::int8[])",
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

/// Everything [`flush`] writes after the events, in one statement: the regressions of
/// resolved issues (the only issue rows a batch locks), the issue, hourly and tag deltas
/// (insert-only, folded by `fold.rs`), the project's counter slot, and the sample cap.
const FLUSH: &str = "WITH r AS (
        UPDATE issues SET is_regression = TRUE, status = 'unresolved'
        WHERE id = ANY($1::int8[]) AND status = 'resolved' RETURNING id),
    a AS (INSERT INTO issue_deltas (issue_id, count, first_seen, last_seen, latest_event_id, level, title, culprit)
        SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[])),
    h AS (INSERT INTO hourly_deltas (issue_id, hour, count)
        SELECT * FROM UNNEST($9::int8[], $10::int8[], $11::int8[])),
    t AS (INSERT INTO tag_deltas (issue_id, project_id, key, value, count)
        SELECT * FROM UNNEST($12::int8[], $13::int8[], $14::text[], $15::text[], $16::int8[])),
    p AS (INSERT INTO project_counters (project_id, slot, events, seq, last_seen)
        SELECT p, $21, e, s, NULLIF(l, 0)
        FROM UNNEST($17::int8[], $18::int8[], $19::int8[], $20::int8[]) AS u(p, e, s, l) ORDER BY p
        ON CONFLICT (project_id, slot) DO UPDATE SET
            events = project_counters.events + excluded.events,
            seq = project_counters.seq + excluded.seq,
            last_seen = greatest(project_counters.last_seen, excluded.last_seen)),
    x AS (DELETE FROM events WHERE id IN (
        SELECT id FROM events WHERE id IN (
            SELECT id FROM (
                SELECT id, row_number() OVER (PARTITION BY issue_id ORDER BY id DESC) AS newer,
                       min(id) OVER (PARTITION BY issue_id) AS first
                FROM events WHERE issue_id = ANY($22::int8[])) s
            WHERE newer >= $23 AND id <> first)
        FOR UPDATE SKIP LOCKED))
    SELECT id FROM r";

/// Applies a batch's counts: deltas of its issues, hours and tags, the project's counter
/// slot, regressions and the sample cap (a sample another writer is deleting is skipped,
/// not waited for). Returns the resolved issues this batch made regressions.
pub(super) async fn flush(
    tx: &Transaction<'_>,
    jobs: &[&IngestJob],
    batch: &Batch,
    retention: &Retention,
) -> Result<HashSet<i64>, StoreError> {
    if batch.issues.is_empty() && batch.projects.is_empty() {
        return Ok(HashSet::new());
    }
    let mut c = DeltaCols::default();
    for (id, d) in &batch.issues {
        let latest = d.latest.map(|(j, i)| &jobs[j].events[i]);
        c.0.push(*id);
        c.1.push(d.count);
        c.2.push(d.first_seen.min(d.last_seen));
        c.3.push(d.last_seen);
        c.4.push(latest.map(|e| e.event_id.as_str()));
        c.5.push(latest.map(|e| e.level.as_str()));
        c.6.push(latest.map(|e| e.grouping.title.as_str()));
        c.7.push(latest.map(|e| e.grouping.culprit.as_str()));
    }
    let mut h: (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
    for ((i, hour), n) in &batch.hourly {
        h.0.push(*i);
        h.1.push(*hour);
        h.2.push(*n);
    }
    let mut t = TagDeltaCols::default();
    for ((i, k, v), n) in &batch.issue_tags {
        t.0.push(*i);
        t.1.push(batch.issues.get(i).map_or(0, |d| d.project_id));
        t.2.push(k);
        t.3.push(v);
        t.4.push(*n);
    }
    // One of the project's slots, at random: nodes rarely wait for each other here.
    let slot: i32 = rand::random_range(0..COUNTER_SLOTS);
    let mut p: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
    for (pid, d) in &batch.projects {
        p.0.push(*pid);
        p.1.push(d.events);
        p.2.push(d.seq);
        p.3.push(d.last_seen);
    }
    // The first sample of each issue and its newest, `max_events_per_issue` in all.
    let sampled: Vec<i64> = batch
        .issues
        .iter()
        .filter(|(_, d)| d.samples)
        .map(|(id, _)| *id)
        .collect();
    let cap = retention.max_events_per_issue.max(1);
    let stmt = tx.prepare_cached(FLUSH).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7, &h.0, &h.1, &h.2, &t.0, &t.1, &t.2,
                &t.3, &t.4, &p.0, &p.1, &p.2, &p.3, &slot, &sampled, &cap,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Hours of hourly buckets kept.
pub(super) fn hourly_keep_hours(retention: &Retention) -> i64 {
    (retention.retention_days * 24).max(14 * 24 + 1)
}

/// The oldest `received` still inside the retention.
pub(super) fn retention_cutoff(retention: &Retention, now: i64) -> i64 {
    now - retention.retention_days * 24 * HOUR_MS
}
