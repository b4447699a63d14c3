//! The SQL of release health on SQLite: session rows (one per sid, the final status
//! wins), aggregate rows (one per delivered entry), and the reads of the releases API.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::store::{
    NewIssue, SessionAggregate, SessionBucket, SessionQuery, SessionUpdate, StoreError, is_terminal,
};

/// Sessions started longer ago than this are dropped as new ones arrive.
pub const KEEP_MS: i64 = 90 * 24 * 3_600_000;

/// The tables (appended to the migrations in `mod.rs`).
pub const MIGRATION: &str = r#"
    CREATE TABLE release_sessions (
        project_id INTEGER NOT NULL,
        sid TEXT NOT NULL,
        did TEXT,
        release TEXT NOT NULL,
        environment TEXT NOT NULL,
        started INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        status TEXT NOT NULL,
        errors INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        terminal INTEGER NOT NULL,
        PRIMARY KEY (project_id, sid)
    );
    CREATE INDEX release_sessions_started ON release_sessions (project_id, started);
    CREATE TABLE session_aggregates (
        project_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        release TEXT NOT NULL,
        environment TEXT NOT NULL,
        started INTEGER NOT NULL,
        did TEXT,
        exited INTEGER NOT NULL,
        errored INTEGER NOT NULL,
        abnormal INTEGER NOT NULL,
        crashed INTEGER NOT NULL,
        PRIMARY KEY (project_id, key)
    );
    CREATE INDEX session_aggregates_started ON session_aggregates (project_id, started);
"#;

/// Stores one request's session updates and aggregates, dropping sessions past
/// [`KEEP_MS`].
pub fn ingest(
    tx: &Transaction<'_>,
    project_id: i64,
    updates: &[SessionUpdate],
    aggregates: &[SessionAggregate],
    now: i64,
) -> Result<(), StoreError> {
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO release_sessions (project_id, sid, did, release, environment, started, timestamp, status, errors, seq, terminal)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (project_id, sid) DO UPDATE SET
                did = coalesce(excluded.did, did),
                started = min(started, excluded.started),
                timestamp = excluded.timestamp,
                status = excluded.status,
                errors = max(errors, excluded.errors),
                seq = excluded.seq,
                terminal = excluded.terminal
             WHERE (excluded.terminal, excluded.seq, excluded.timestamp)
                 > (release_sessions.terminal, release_sessions.seq, release_sessions.timestamp)",
        )?;
        for u in updates {
            up.execute(params![
                project_id,
                u.sid,
                u.did,
                u.release,
                u.environment,
                u.started,
                u.timestamp,
                u.status,
                u.errors,
                u.seq,
                i64::from(is_terminal(&u.status)),
            ])?;
        }
        let mut agg = tx.prepare_cached(
            "INSERT OR IGNORE INTO session_aggregates (project_id, key, release, environment, started, did, exited, errored, abnormal, crashed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for a in aggregates {
            agg.execute(params![
                project_id,
                a.key,
                a.release,
                a.environment,
                a.started,
                a.did,
                a.exited,
                a.errored,
                a.abnormal,
                a.crashed
            ])?;
        }
    }
    let cutoff = now - KEEP_MS;
    tx.prepare_cached("DELETE FROM release_sessions WHERE project_id = ?1 AND started < ?2")?
        .execute(params![project_id, cutoff])?;
    tx.prepare_cached("DELETE FROM session_aggregates WHERE project_id = ?1 AND started < ?2")?
        .execute(params![project_id, cutoff])?;
    Ok(())
}

/// The filter both tables share: `?1` project, `?2` since, `?3` environment, `?4` release.
const FILTER: &str = "project_id = ?1 AND started >= ?2 AND (?3 IS NULL OR environment = ?3) AND (?4 IS NULL OR release = ?4)";

/// Sessions by release, environment and hour.
pub fn buckets(
    conn: &Connection,
    project_id: i64,
    q: &SessionQuery,
) -> Result<Vec<SessionBucket>, StoreError> {
    let sql = format!(
        "WITH s (release, environment, started, last, sessions, crashed, abnormal, errored) AS (
            SELECT release, environment, started, timestamp, 1,
                CASE WHEN status = 'crashed' THEN 1 ELSE 0 END,
                CASE WHEN status = 'abnormal' THEN 1 ELSE 0 END,
                CASE WHEN status NOT IN ('crashed', 'abnormal') AND (errors > 0 OR status = 'errored') THEN 1 ELSE 0 END
            FROM release_sessions WHERE {FILTER}
            UNION ALL
            SELECT release, environment, started, started, exited + errored + abnormal + crashed,
                crashed, abnormal, errored
            FROM session_aggregates WHERE {FILTER}
        )
        SELECT release, environment, (started / 3600000) * 3600000 AS hour, sum(sessions),
            sum(crashed), sum(abnormal), sum(errored), min(started), max(last)
        FROM s GROUP BY release, environment, hour ORDER BY hour, release, environment"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(
            params![project_id, q.since, q.environment, q.release],
            |r| {
                Ok(SessionBucket {
                    release: r.get(0)?,
                    environment: r.get(1)?,
                    hour: r.get(2)?,
                    sessions: r.get(3)?,
                    crashed: r.get(4)?,
                    abnormal: r.get(5)?,
                    errored: r.get(6)?,
                    first_seen: r.get(7)?,
                    last_seen: r.get(8)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Distinct ids per release.
pub fn users(
    conn: &Connection,
    project_id: i64,
    q: &SessionQuery,
) -> Result<Vec<(String, i64)>, StoreError> {
    let sql = format!(
        "SELECT release, count(DISTINCT did) FROM (
            SELECT release, did FROM release_sessions WHERE {FILTER} AND did IS NOT NULL
            UNION ALL
            SELECT release, did FROM session_aggregates WHERE {FILTER} AND did IS NOT NULL
        ) GROUP BY release"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(
            params![project_id, q.since, q.environment, q.release],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Issues by the release of their first stored event (samples keep the first event).
pub fn new_issues(
    conn: &Connection,
    project_id: i64,
    limit: i64,
) -> Result<Vec<NewIssue>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.release, i.id, i.title, i.first_seen FROM issues i
         JOIN events e ON e.id = (SELECT min(id) FROM events WHERE issue_id = i.id)
         WHERE i.project_id = ?1 AND e.release IS NOT NULL
         ORDER BY i.first_seen DESC, i.id DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![project_id, limit], |r| {
            Ok(NewIssue {
                release: r.get(0)?,
                id: r.get(1)?,
                title: r.get(2)?,
                first_seen: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The release of an issue's first stored event.
pub fn first_release(conn: &Connection, issue_id: i64) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT release FROM events WHERE issue_id = ?1 ORDER BY id LIMIT 1",
            [issue_id],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}
