//! Release health on PostgreSQL: the same tables, upserts and reads as
//! `store/sqlite/health.rs`, safe when many nodes write the same session at once.

use deadpool_postgres::GenericClient;

use super::PgStore;
use super::basics::{retry, rows};
use crate::store::sqlite::health::KEEP_MS;
use crate::store::{
    NewIssue, SessionAggregate, SessionBucket, SessionQuery, SessionUpdate, StoreError, is_terminal,
};

/// The tables (appended to the migrations in `schema.rs`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE release_sessions (
        project_id BIGINT NOT NULL,
        sid TEXT NOT NULL,
        did TEXT,
        release TEXT NOT NULL,
        environment TEXT NOT NULL,
        started BIGINT NOT NULL,
        timestamp BIGINT NOT NULL,
        status TEXT NOT NULL,
        errors BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        terminal BIGINT NOT NULL,
        PRIMARY KEY (project_id, sid)
    );
    CREATE INDEX release_sessions_started ON release_sessions (project_id, started);
    CREATE TABLE session_aggregates (
        project_id BIGINT NOT NULL,
        key TEXT NOT NULL,
        release TEXT NOT NULL,
        environment TEXT NOT NULL,
        started BIGINT NOT NULL,
        did TEXT,
        exited BIGINT NOT NULL,
        errored BIGINT NOT NULL,
        abnormal BIGINT NOT NULL,
        crashed BIGINT NOT NULL,
        PRIMARY KEY (project_id, key)
    );
    CREATE INDEX session_aggregates_started ON session_aggregates (project_id, started);
"#;

/// Stores session updates and aggregates in one transaction; rows are written in key
/// order so two nodes writing the same sessions cannot deadlock.
pub(super) async fn ingest(
    s: &PgStore,
    project_id: i64,
    mut updates: Vec<SessionUpdate>,
    mut aggregates: Vec<SessionAggregate>,
) -> Result<(), StoreError> {
    updates.sort_by(|a, b| a.sid.cmp(&b.sid));
    aggregates.sort_by(|a, b| a.key.cmp(&b.key));
    let (updates, aggregates) = (&updates, &aggregates);
    let cutoff = crate::time::now_ms() - KEEP_MS;
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        let up = tx
            .prepare_cached(
                "INSERT INTO release_sessions AS r (project_id, sid, did, release, environment, started, timestamp, status, errors, seq, terminal)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (project_id, sid) DO UPDATE SET
                    did = coalesce(excluded.did, r.did),
                    started = least(r.started, excluded.started),
                    timestamp = excluded.timestamp,
                    status = excluded.status,
                    errors = greatest(r.errors, excluded.errors),
                    seq = excluded.seq,
                    terminal = excluded.terminal
                 WHERE (excluded.terminal, excluded.seq, excluded.timestamp)
                     > (r.terminal, r.seq, r.timestamp)",
            )
            .await?;
        for u in updates {
            let terminal = i64::from(is_terminal(&u.status));
            tx.execute(
                &up,
                &[
                    &project_id,
                    &u.sid,
                    &u.did,
                    &u.release,
                    &u.environment,
                    &u.started,
                    &u.timestamp,
                    &u.status,
                    &u.errors,
                    &u.seq,
                    &terminal,
                ],
            )
            .await?;
        }
        let agg = tx
            .prepare_cached(
                "INSERT INTO session_aggregates (project_id, key, release, environment, started, did, exited, errored, abnormal, crashed)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (project_id, key) DO NOTHING",
            )
            .await?;
        for a in aggregates {
            tx.execute(
                &agg,
                &[
                    &project_id,
                    &a.key,
                    &a.release,
                    &a.environment,
                    &a.started,
                    &a.did,
                    &a.exited,
                    &a.errored,
                    &a.abnormal,
                    &a.crashed,
                ],
            )
            .await?;
        }
        tx.execute(
            "DELETE FROM release_sessions WHERE project_id = $1 AND started < $2",
            &[&project_id, &cutoff],
        )
        .await?;
        tx.execute(
            "DELETE FROM session_aggregates WHERE project_id = $1 AND started < $2",
            &[&project_id, &cutoff],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// The filter both tables share: `$1` project, `$2` since, `$3` environment, `$4` release.
const FILTER: &str = "project_id = $1 AND started >= $2 AND ($3::text IS NULL OR environment = $3) AND ($4::text IS NULL OR release = $4)";

pub(super) async fn buckets(
    s: &PgStore,
    project_id: i64,
    q: SessionQuery,
) -> Result<Vec<SessionBucket>, StoreError> {
    let sql = format!(
        "WITH s (release, environment, started, last, sessions, crashed, abnormal, errored) AS (
            SELECT release, environment, started, timestamp, 1::int8,
                CASE WHEN status = 'crashed' THEN 1 ELSE 0 END::int8,
                CASE WHEN status = 'abnormal' THEN 1 ELSE 0 END::int8,
                CASE WHEN status NOT IN ('crashed', 'abnormal') AND (errors > 0 OR status = 'errored') THEN 1 ELSE 0 END::int8
            FROM release_sessions WHERE {FILTER}
            UNION ALL
            SELECT release, environment, started, started, exited + errored + abnormal + crashed,
                crashed, abnormal, errored
            FROM session_aggregates WHERE {FILTER}
        )
        SELECT release, environment, (started / 3600000) * 3600000 AS hour, sum(sessions)::int8,
            sum(crashed)::int8, sum(abnormal)::int8, sum(errored)::int8, min(started), max(last)
        FROM s GROUP BY release, environment, hour ORDER BY hour, release, environment"
    );
    let q = &q;
    let sql = &sql;
    retry(|| async move {
        let c = s.conn().await?;
        Ok(rows(
            &c,
            sql,
            &[&project_id, &q.since, &q.environment, &q.release],
        )
        .await?
        .iter()
        .map(|r| SessionBucket {
            release: r.get(0),
            environment: r.get(1),
            hour: r.get(2),
            sessions: r.get(3),
            crashed: r.get(4),
            abnormal: r.get(5),
            errored: r.get(6),
            first_seen: r.get(7),
            last_seen: r.get(8),
        })
        .collect())
    })
    .await
}

pub(super) async fn users(
    s: &PgStore,
    project_id: i64,
    q: SessionQuery,
) -> Result<Vec<(String, i64)>, StoreError> {
    let sql = format!(
        "SELECT release, count(DISTINCT did) FROM (
            SELECT release, did FROM release_sessions WHERE {FILTER} AND did IS NOT NULL
            UNION ALL
            SELECT release, did FROM session_aggregates WHERE {FILTER} AND did IS NOT NULL
        ) AS u GROUP BY release"
    );
    let (q, sql) = (&q, &sql);
    retry(|| async move {
        let c = s.conn().await?;
        Ok(rows(
            &c,
            sql,
            &[&project_id, &q.since, &q.environment, &q.release],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    })
    .await
}

pub(super) async fn new_issues(
    s: &PgStore,
    project_id: i64,
    limit: i64,
) -> Result<Vec<NewIssue>, StoreError> {
    retry(|| async move {
        let c = super::fold::folded(s).await?;
        Ok(rows(
            &c,
            "SELECT e.release, i.id, i.title, i.first_seen FROM issues i
             JOIN events e ON e.id = (SELECT min(id) FROM events WHERE issue_id = i.id)
             WHERE i.project_id = $1 AND e.release IS NOT NULL
             ORDER BY i.first_seen DESC, i.id DESC LIMIT $2",
            &[&project_id, &limit],
        )
        .await?
        .iter()
        .map(|r| NewIssue {
            release: r.get(0),
            id: r.get(1),
            title: r.get(2),
            first_seen: r.get(3),
        })
        .collect())
    })
    .await
}

pub(super) async fn first_release(
    s: &PgStore,
    issue_id: i64,
) -> Result<Option<String>, StoreError> {
    retry(|| async move {
        let c = s.conn().await?;
        let stmt = c
            .prepare_cached("SELECT release FROM events WHERE issue_id = $1 ORDER BY id LIMIT 1")
            .await?;
        Ok(c.query_opt(&stmt, &[&issue_id])
            .await?
            .and_then(|r| r.get::<_, Option<String>>(0)))
    })
    .await
}
