//! The SQL of one writer transaction: dedup, issue resolution, event rows, the sample
//! cap, and the per-batch aggregates (issue counters, hourly buckets, tag values).

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::{OptionalExtension, Transaction, params};

use crate::store::spread;
use crate::store::{
    IngestJob, MAX_TAG_VALUES_PER_ISSUE, MAX_TAG_VALUES_PER_PROJECT, Retention, StoreError,
    TAG_DELAY,
};
use crate::time::{hour_of, now_ms};

const OTHER: &str = "(other)";

/// Per-issue changes accumulated over a batch.
#[derive(Default)]
struct IssueDelta {
    count: i64,
    last_seen: i64,
    first_seen: i64,
    latest: Option<(String, String, String, String)>, // event id, level, title, culprit
    project_id: i64,
    new_samples: Vec<i64>,
    /// The newest event's (job, event) indices in the batch, for alerts.
    latest_at: Option<(usize, usize)>,
}

#[derive(Default)]
struct ProjectDelta {
    events: i64,
    seq: i64,
    last_seen: i64,
}

#[derive(Default)]
pub(super) struct Batch {
    issues: HashMap<i64, IssueDelta>,
    hourly: HashMap<(i64, i64), i64>,
    pub(super) issue_tags: HashMap<(i64, String, String), i64>,
    pub(super) project_tags: HashMap<(i64, String, String), i64>,
    projects: HashMap<i64, ProjectDelta>,
    pub(super) events_stored: u64,
    pub(super) duplicates: u64,
}

impl Batch {
    /// The issues this batch adds occurrences to, as the alert hook sees them.
    pub(super) fn touched(&self) -> impl Iterator<Item = super::alerts::Touch> + '_ {
        self.issues.iter().map(|(id, d)| super::alerts::Touch {
            issue_id: *id,
            project_id: d.project_id,
            count: d.count,
            latest: d.latest_at,
        })
    }
}

pub(super) fn apply_ingest(
    tx: &Transaction<'_>,
    batch: &mut Batch,
    issue_ids: &mut HashMap<(i64, String), i64>,
    pending_possible: &mut bool,
    job: &IngestJob,
    job_index: usize,
) -> Result<(), StoreError> {
    let pid = job.project_id;
    for (ev_index, ev) in job.events.iter().enumerate() {
        let g = &ev.grouping;
        let key = (pid, g.fingerprint.clone());
        let issue_id = match issue_ids.get(&key) {
            Some(id) => *id,
            None => {
                let found: Option<i64> = tx
                    .prepare_cached(
                        "SELECT id FROM issues WHERE project_id = ?1 AND fingerprint = ?2",
                    )?
                    .query_row(params![pid, g.fingerprint], |r| r.get(0))
                    .optional()?;
                let id = match found {
                    Some(id) => id,
                    None => {
                        tx.prepare_cached(
                            "INSERT INTO issues (project_id, fingerprint, class, kind, title, culprit, level, count, first_seen, last_seen)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?8)",
                        )?
                        .execute(params![pid, g.fingerprint, g.class, g.kind.as_str(), g.title, g.culprit, ev.level, ev.timestamp])?;
                        tx.last_insert_rowid()
                    }
                };
                if issue_ids.len() > 100_000 {
                    issue_ids.clear();
                }
                issue_ids.insert(key, id);
                id
            }
        };
        // The dedup check and the record in one statement. (A retried event's issue
        // exists already, so resolving it above never creates one for a duplicate.)
        let fresh = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO event_ids (project_id, event_id, issue_id, received) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![pid, ev.event_id, issue_id, ev.received])?;
        if fresh == 0 {
            batch.duplicates += 1;
            continue;
        }
        // `OR IGNORE`: a retry whose dedup entry was pruned while its sample is still kept.
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO events (project_id, event_id, issue_id, timestamp, received, level, message, environment, release, encoding, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                pid, ev.event_id, issue_id, ev.timestamp, ev.received, ev.level, g.message,
                ev.environment, ev.release, ev.encoding, ev.data
            ])?;
        if inserted == 0 {
            batch.duplicates += 1;
            continue;
        }
        batch.events_stored += 1;
        let d = batch.issues.entry(issue_id).or_insert_with(|| IssueDelta {
            first_seen: i64::MAX,
            project_id: pid,
            ..Default::default()
        });
        d.count += 1;
        d.last_seen = d.last_seen.max(ev.timestamp);
        d.first_seen = d.first_seen.min(ev.timestamp);
        d.latest = Some((
            ev.event_id.clone(),
            ev.level.clone(),
            g.title.clone(),
            g.culprit.clone(),
        ));
        d.new_samples.push(tx.last_insert_rowid());
        d.latest_at = Some((job_index, ev_index));
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
        let p = batch.projects.entry(pid).or_default();
        p.events += 1;
        p.seq += 1;
        p.last_seen = p.last_seen.max(ev.timestamp);

        if *pending_possible {
            let pending: Vec<(String, i64, i64, i64)> = tx
                .prepare_cached(
                    "SELECT id, count, start_ms, end_ms FROM pending_counts WHERE project_id = ?1 AND event_id = ?2",
                )?
                .query_map(params![pid, ev.event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            for (id, count, start, end) in pending {
                tx.prepare_cached("DELETE FROM pending_counts WHERE id = ?1")?
                    .execute([&id])?;
                add_count(batch, pid, issue_id, count, start, end);
            }
        }
    }
    for d in &job.discards {
        tx.prepare_cached(
            "INSERT INTO discards (project_id, reason, category, quantity) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project_id, reason, category) DO UPDATE SET quantity = quantity + excluded.quantity",
        )?
        .execute(params![pid, d.reason, d.category, d.quantity])?;
    }
    if !job.discards.is_empty() {
        batch.projects.entry(pid).or_default().seq += 1;
    }
    for c in &job.counts {
        let fresh = tx
            .prepare_cached("INSERT OR IGNORE INTO applied_counts (id, received) VALUES (?1, ?2)")?
            .execute(params![c.id, now_ms()])?;
        if fresh == 0 {
            continue;
        }
        let issue: Option<i64> = tx
            .prepare_cached(
                "SELECT issue_id FROM event_ids WHERE project_id = ?1 AND event_id = ?2",
            )?
            .query_row(params![pid, c.event_id], |r| r.get(0))
            .optional()?;
        let issue = match issue {
            Some(i) => Some(i),
            None => tx
                .prepare_cached(
                    "SELECT issue_id FROM events WHERE project_id = ?1 AND event_id = ?2",
                )?
                .query_row(params![pid, c.event_id], |r| r.get(0))
                .optional()?,
        };
        match issue {
            Some(issue_id) => add_count(batch, pid, issue_id, c.count, c.start, c.end),
            None => {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO pending_counts (id, project_id, event_id, count, start_ms, end_ms, received)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![c.id, pid, c.event_id, c.count, c.start, c.end, now_ms()])?;
                *pending_possible = true;
            }
        }
    }
    Ok(())
}

/// Adds `count` occurrences to an issue, spread over the hours of `[start, end]`.
fn add_count(batch: &mut Batch, pid: i64, issue_id: i64, count: i64, start: i64, end: i64) {
    if count <= 0 {
        return;
    }
    let end = end.max(start);
    let d = batch.issues.entry(issue_id).or_insert_with(|| IssueDelta {
        first_seen: i64::MAX,
        project_id: pid,
        ..Default::default()
    });
    d.count += count;
    d.last_seen = d.last_seen.max(end);
    for (hour, n) in spread(count, start, end) {
        *batch.hourly.entry((issue_id, hour)).or_default() += n;
    }
    let p = batch.projects.entry(pid).or_default();
    p.events += count;
    p.seq += 1;
    p.last_seen = p.last_seen.max(end);
}

/// Applies a batch's accumulated deltas and enforces the per-issue sample cap.
pub(super) fn flush(
    tx: &Transaction<'_>,
    batch: &Batch,
    retention: &Retention,
    samples: &mut SampleIds,
) -> Result<(), StoreError> {
    for (issue_id, d) in &batch.issues {
        let (latest_id, level, title, culprit) = match &d.latest {
            Some((a, b, c, e)) => (
                Some(a.as_str()),
                Some(b.as_str()),
                Some(c.as_str()),
                Some(e.as_str()),
            ),
            None => (None, None, None, None),
        };
        tx.prepare_cached(
            "UPDATE issues SET
                count = count + ?2,
                last_seen = max(last_seen, ?3),
                first_seen = min(first_seen, ?4),
                latest_event_id = coalesce(?5, latest_event_id),
                level = coalesce(?6, level),
                title = coalesce(?7, title),
                culprit = coalesce(?8, culprit),
                is_regression = CASE WHEN status = 'resolved' THEN 1 ELSE is_regression END,
                status = CASE WHEN status = 'resolved' THEN 'unresolved' ELSE status END
             WHERE id = ?1",
        )?
        .execute(params![
            issue_id,
            d.count,
            d.last_seen,
            d.first_seen.min(d.last_seen),
            latest_id,
            level,
            title,
            culprit
        ])?;
        let _ = d.project_id;
        if !d.new_samples.is_empty() {
            samples.enforce(
                tx,
                *issue_id,
                &d.new_samples,
                retention.max_events_per_issue.max(1),
            )?;
        }
    }
    for ((issue_id, hour), n) in &batch.hourly {
        tx.prepare_cached(
            "INSERT INTO issue_hourly (issue_id, hour, count) VALUES (?1, ?2, ?3)
             ON CONFLICT (issue_id, hour) DO UPDATE SET count = count + excluded.count",
        )?
        .execute(params![issue_id, hour, n])?;
    }
    for (pid, d) in &batch.projects {
        tx.prepare_cached(
            "UPDATE projects SET events = events + ?2, seq = seq + ?3,
                last_seen = CASE WHEN ?4 > 0 THEN max(coalesce(last_seen, 0), ?4) ELSE last_seen END
             WHERE id = ?1",
        )?
        .execute(params![pid, d.events, d.seq, d.last_seen])?;
    }
    Ok(())
}

/// The stored sample ids of recently written issues, oldest first, so enforcing the
/// per-issue cap costs one DELETE instead of reading the issue's ids on every batch.
/// Bounded: forgotten wholesale past [`SampleIds::MAX_ISSUES`] issues, after a failed
/// transaction and after age pruning; an issue not in it is read back from the index.
#[derive(Default)]
pub(super) struct SampleIds {
    by_issue: HashMap<i64, std::collections::VecDeque<i64>>,
}

impl SampleIds {
    const MAX_ISSUES: usize = 4096;

    pub(super) fn clear(&mut self) {
        self.by_issue.clear();
    }

    /// Records `new` samples of an issue and deletes the oldest beyond `cap`, never the
    /// issue's first one.
    pub(super) fn enforce(
        &mut self,
        tx: &Transaction<'_>,
        issue_id: i64,
        new: &[i64],
        cap: i64,
    ) -> Result<(), StoreError> {
        if !self.by_issue.contains_key(&issue_id) {
            if self.by_issue.len() >= Self::MAX_ISSUES {
                self.by_issue.clear();
            }
            // No ORDER BY: with one, SQLite re-prepares the statement on every binding.
            let mut ids: Vec<i64> = tx
                .prepare_cached("SELECT id FROM events WHERE issue_id = ?1")?
                .query_map([issue_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids.sort_unstable();
            self.by_issue.insert(issue_id, ids.into());
        } else if let Some(ids) = self.by_issue.get_mut(&issue_id) {
            ids.extend(new);
        }
        let Some(ids) = self.by_issue.get_mut(&issue_id) else {
            return Ok(());
        };
        let mut del = tx.prepare_cached("DELETE FROM events WHERE id = ?1")?;
        while ids.len() as i64 > cap {
            if let Some(id) = ids.remove(1) {
                del.execute([id])?;
            }
        }
        Ok(())
    }
}

pub(super) type TagCounts = HashMap<(i64, String, String), i64>;

pub(super) fn write_tags_of(
    tx: &Transaction<'_>,
    issue: &TagCounts,
    project: &TagCounts,
) -> Result<(), StoreError> {
    for ((issue_id, k, v), n) in issue {
        bump_tag(tx, &ISSUE_TAGS, *issue_id, k, v, *n)?;
    }
    for ((pid, k, v), n) in project {
        bump_tag(tx, &PROJECT_TAGS, *pid, k, v, *n)?;
    }
    Ok(())
}

/// Tag-value counts of committed events not yet written (see [`TAG_DELAY`]).
pub(super) struct TagBacklog {
    pub(super) issue: TagCounts,
    pub(super) project: TagCounts,
    since: Instant,
}

impl TagBacklog {
    pub(super) fn new() -> Self {
        TagBacklog {
            issue: HashMap::new(),
            project: HashMap::new(),
            since: Instant::now(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.issue.is_empty() && self.project.is_empty()
    }

    pub(super) fn due(&self) -> bool {
        self.since.elapsed() >= TAG_DELAY || self.issue.len() + self.project.len() > 50_000
    }

    pub(super) fn clear(&mut self) {
        self.issue.clear();
        self.project.clear();
        self.since = Instant::now();
    }

    pub(super) fn absorb(&mut self, issue: TagCounts, project: TagCounts) {
        if self.is_empty() {
            self.since = Instant::now();
        }
        for (k, n) in issue {
            *self.issue.entry(k).or_default() += n;
        }
        for (k, n) in project {
            *self.project.entry(k).or_default() += n;
        }
    }
}

/// The statements of one tag-count table.
struct TagTable {
    update: &'static str,
    distinct: &'static str,
    insert: &'static str,
    cap: i64,
}

const ISSUE_TAGS: TagTable = TagTable {
    update: "UPDATE issue_tags SET count = count + ?4 WHERE issue_id = ?1 AND key = ?2 AND value = ?3",
    distinct: "SELECT count(*) FROM issue_tags WHERE issue_id = ?1 AND key = ?2",
    insert: "INSERT INTO issue_tags (issue_id, key, value, count) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (issue_id, key, value) DO UPDATE SET count = count + excluded.count",
    cap: MAX_TAG_VALUES_PER_ISSUE,
};

const PROJECT_TAGS: TagTable = TagTable {
    update: "UPDATE project_tags SET count = count + ?4 WHERE project_id = ?1 AND key = ?2 AND value = ?3",
    distinct: "SELECT count(*) FROM project_tags WHERE project_id = ?1 AND key = ?2",
    insert: "INSERT INTO project_tags (project_id, key, value, count) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project_id, key, value) DO UPDATE SET count = count + excluded.count",
    cap: MAX_TAG_VALUES_PER_PROJECT,
};

/// Adds `n` to a tag value's count; a new value beyond the table's cap counts as `(other)`.
fn bump_tag(
    tx: &Transaction<'_>,
    t: &TagTable,
    owner: i64,
    key: &str,
    value: &str,
    n: i64,
) -> Result<(), StoreError> {
    if tx
        .prepare_cached(t.update)?
        .execute(params![owner, key, value, n])?
        > 0
    {
        return Ok(());
    }
    let distinct: i64 = tx
        .prepare_cached(t.distinct)?
        .query_row(params![owner, key], |r| r.get(0))?;
    let value = if distinct >= t.cap { OTHER } else { value };
    tx.prepare_cached(t.insert)?
        .execute(params![owner, key, value, n])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::HOUR_MS;

    #[test]
    fn spread_sums_to_count() {
        let h = HOUR_MS;
        assert_eq!(spread(10, 5 * h + 10, 5 * h + 20), vec![(5, 10)]);
        let parts = spread(100, 5 * h + h / 2, 7 * h + h / 2);
        assert_eq!(parts.iter().map(|p| p.1).sum::<i64>(), 100);
        assert_eq!(parts, vec![(5, 25), (6, 50), (7, 25)]);
        assert_eq!(spread(7, 10 * h, 9 * h), vec![(10, 7)]);
    }
}
