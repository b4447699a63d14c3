//! Counters every batch of a storm would share (issue counts, hourly buckets, tag counts)
//! are written as insert-only delta rows, and folded into their tables here.
//!
//! A writer's transaction only inserts into `issue_deltas`, `hourly_deltas` and
//! `tag_deltas`, so it holds no lock that another writer needs while it waits for its
//! commit's WAL flush. One fold at a time (an advisory lock) moves the committed deltas
//! into `issues`, `issue_hourly`, `issue_tags` and `project_tags` in one transaction: it
//! deletes exactly the rows it adds, so every snapshot counts each event once. Each node
//! folds every [`FOLD_EVERY`], and every read of those tables folds first
//! ([`folded`]), so the API is exact: it counts every event answered before the read.
//!
//! Tag caps are applied by the fold, which runs alone: a value past a cap becomes
//! `(other)` exactly as when one writer adds them in arrival order.
//!
//! The fold commits with `synchronous_commit = off`: it only moves counts from one table
//! to another, so a server crash that loses it loses the deletions with the additions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::PgStore;
use super::basics::is_conflict;
use crate::store::{MAX_TAG_VALUES_PER_ISSUE, MAX_TAG_VALUES_PER_PROJECT, StoreError};
use deadpool_postgres::{Object, Pool, Transaction};

/// How often each node folds the deltas (a read folds at once).
pub(super) const FOLD_EVERY: Duration = Duration::from_millis(250);

/// How often a node vacuums the delta tables, which churn through many rows.
const VACUUM_EVERY: Duration = Duration::from_secs(5);

/// `pg_advisory_xact_lock` key of the fold ("errfolds").
const FOLD_LOCK: i64 = 0x65_72_72_66_6f_6c_64_73;

/// `pg_try_advisory_lock` key of the vacuum ("errvacum").
const VACUUM_LOCK: i64 = 0x65_72_72_76_61_63_75_6d;

/// Attempts of a fold that deadlocked with another transaction.
const ATTEMPTS: u32 = 20;

const OTHER: &str = "(other)";

/// The migration: the delta tables; event bodies (already zlib-compressed) stored without
/// PostgreSQL trying to compress them again; the dedup ids numbered in insertion order
/// (so that every writer sees how many all nodes stored, for the cap: `ingest.rs`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE issue_deltas (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        issue_id BIGINT NOT NULL,
        count BIGINT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        latest_event_id TEXT,
        level TEXT,
        title TEXT,
        culprit TEXT
    );
    CREATE TABLE hourly_deltas (
        issue_id BIGINT NOT NULL,
        hour BIGINT NOT NULL,
        count BIGINT NOT NULL
    );
    CREATE TABLE tag_deltas (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        issue_id BIGINT NOT NULL,
        project_id BIGINT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        count BIGINT NOT NULL
    );
    ALTER TABLE events ALTER COLUMN data SET STORAGE EXTERNAL;
    ALTER TABLE event_ids ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;
"#;

const PENDING: &str =
    "SELECT EXISTS (SELECT 1 FROM issue_deltas) OR EXISTS (SELECT 1 FROM hourly_deltas)
                       OR EXISTS (SELECT 1 FROM tag_deltas)";

const FOLD_ISSUES: &str = "WITH d AS (DELETE FROM issue_deltas RETURNING *),
    s AS (SELECT issue_id, sum(count)::int8 AS n, min(first_seen) AS fs, max(last_seen) AS ls,
              (array_agg(latest_event_id ORDER BY seq DESC) FILTER (WHERE latest_event_id IS NOT NULL))[1] AS le,
              (array_agg(level ORDER BY seq DESC) FILTER (WHERE latest_event_id IS NOT NULL))[1] AS lv,
              (array_agg(title ORDER BY seq DESC) FILTER (WHERE latest_event_id IS NOT NULL))[1] AS ti,
              (array_agg(culprit ORDER BY seq DESC) FILTER (WHERE latest_event_id IS NOT NULL))[1] AS cu
          FROM d GROUP BY issue_id)
    UPDATE issues i SET
        count = i.count + s.n,
        last_seen = greatest(i.last_seen, s.ls),
        first_seen = least(i.first_seen, s.fs),
        latest_event_id = coalesce(s.le, i.latest_event_id),
        level = coalesce(s.lv, i.level),
        title = coalesce(s.ti, i.title),
        culprit = coalesce(s.cu, i.culprit)
    FROM s WHERE i.id = s.issue_id";

const FOLD_HOURLY: &str = "WITH d AS (DELETE FROM hourly_deltas RETURNING *)
    INSERT INTO issue_hourly (issue_id, hour, count)
    SELECT issue_id, hour, sum(count)::int8 FROM d GROUP BY issue_id, hour ORDER BY issue_id, hour
    ON CONFLICT (issue_id, hour) DO UPDATE SET count = issue_hourly.count + excluded.count";

const FOLD_TAGS: &str = "WITH d AS (DELETE FROM tag_deltas RETURNING *)
    SELECT issue_id, project_id, key, value, sum(count)::int8, min(seq) FROM d
    GROUP BY issue_id, project_id, key, value";

/// A pooled connection on which every delta committed before the call has been folded:
/// what the reads of issues, hours and tags start with.
pub(super) async fn folded(s: &PgStore) -> Result<Object, StoreError> {
    let mut c = s.conn().await?;
    fold(&mut c, true).await?;
    Ok(c)
}

/// Folds the committed deltas; with `wait`, after the fold another session is running
/// (so that everything committed before the call is folded), else skipping the turn.
/// Whether it folded anything.
pub(super) async fn fold(c: &mut Object, wait: bool) -> Result<bool, StoreError> {
    let stmt = c.prepare_cached(PENDING).await?;
    if !c.query_one(&stmt, &[]).await?.get::<_, bool>(0) {
        return Ok(false);
    }
    let mut attempt = 1;
    loop {
        match fold_once(c, wait).await {
            Err(e) if attempt < ATTEMPTS && is_conflict(&e) => {
                let ms = rand::random_range(1..=5 * u64::from(attempt.min(10)));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

async fn fold_once(c: &mut Object, wait: bool) -> Result<bool, StoreError> {
    let tx = c.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    if wait {
        let stmt = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1)")
            .await?;
        tx.execute(&stmt, &[&FOLD_LOCK]).await?;
    } else {
        let stmt = tx
            .prepare_cached("SELECT pg_try_advisory_xact_lock($1)")
            .await?;
        if !tx.query_one(&stmt, &[&FOLD_LOCK]).await?.get::<_, bool>(0) {
            return Ok(false);
        }
    }
    let stmt = tx.prepare_cached(FOLD_ISSUES).await?;
    tx.execute(&stmt, &[]).await?;
    let stmt = tx.prepare_cached(FOLD_HOURLY).await?;
    tx.execute(&stmt, &[]).await?;
    let stmt = tx.prepare_cached(FOLD_TAGS).await?;
    let rows = tx.query(&stmt, &[]).await?;
    let mut issue: Vec<Tag> = Vec::with_capacity(rows.len());
    let mut project: HashMap<(i64, String, String), (i64, i64)> = HashMap::new();
    for r in &rows {
        let (iid, pid, key, value): (i64, i64, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let (n, seq): (i64, i64) = (r.get(4), r.get(5));
        let p = project
            .entry((pid, key.clone(), value.clone()))
            .or_insert((0, seq));
        p.0 += n;
        p.1 = p.1.min(seq);
        issue.push(((iid, key, value), n, seq));
    }
    let project: Vec<Tag> = project.into_iter().map(|(k, (n, s))| (k, n, s)).collect();
    write_table(&tx, &ISSUE_TAGS, issue).await?;
    write_table(&tx, &PROJECT_TAGS, project).await?;
    tx.commit().await?;
    Ok(true)
}

/// A tag-value count to add: `(owner, key, value)`, count, and the first delta's `seq`
/// (new values are admitted under a cap in that order).
type Tag = ((i64, String, String), i64, i64);

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

/// Adds tag-value counts to a table; a new value beyond the table's cap for its
/// `(owner, key)` counts as `(other)`. Exact: only the fold writes these tables.
async fn write_table(
    tx: &Transaction<'_>,
    t: &TagTable,
    mut tags: Vec<Tag>,
) -> Result<(), StoreError> {
    if tags.is_empty() {
        return Ok(());
    }
    // In arrival order, so the values admitted under the cap are the first to come.
    tags.sort_unstable_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    let (mut o, mut k, mut v) = (vec![], vec![], vec![]);
    for ((owner, key, value), _, _) in &tags {
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
    for ((owner, key, value), n, _) in &tags {
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

/// Folds every [`FOLD_EVERY`] on this node (skipping a turn another node is folding)
/// and vacuums the delta tables now and then, until the task is aborted.
pub(super) async fn run(pool: Pool) {
    let mut last_vacuum = Instant::now();
    let mut tick = tokio::time::interval(FOLD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(mut c) = pool.get().await else {
            continue;
        };
        if let Err(e) = fold(&mut c, false).await {
            tracing::debug!("folding counts failed: {e}");
            continue;
        }
        if last_vacuum.elapsed() >= VACUUM_EVERY {
            last_vacuum = Instant::now();
            if let Err(e) = vacuum(&c).await {
                tracing::debug!("vacuuming the delta tables failed: {e}");
            }
        }
    }
}

/// Reclaims the rows folds deleted, so the delta tables stay a few pages long (one node
/// at a time).
async fn vacuum(c: &Object) -> Result<(), StoreError> {
    let locked: bool = c
        .query_one("SELECT pg_try_advisory_lock($1)", &[&VACUUM_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(());
    }
    let r = c
        .batch_execute("VACUUM issue_deltas, hourly_deltas, tag_deltas")
        .await;
    c.execute("SELECT pg_advisory_unlock($1)", &[&VACUUM_LOCK])
        .await?;
    r?;
    Ok(())
}
