//! `errscope-collector migrate --from-sqlite DIR --to postgres://...`: copies an SQLite
//! installation into an empty PostgreSQL database, every row with its id, in one
//! transaction, then checks that the counts on both sides are equal.

use std::path::Path;

use rusqlite::types::Value as Lite;
use tokio_postgres::types::{ToSql, Type};

use super::schema::COUNTER_SLOTS;
use crate::store::StoreError;

/// How a column is written on the PostgreSQL side.
#[derive(Clone, Copy)]
enum Col {
    Int,
    Small,
    Bool,
    Text,
    Bytes,
}

/// The tables copied as they are, with their columns (the SQLite and PostgreSQL schemas
/// share names); `true` when the table's `id` is an identity column to move on.
/// A table: its name, its columns, and whether its `id` is an identity column.
type Table = (&'static str, &'static [(&'static str, Col)], bool);

const TABLES: &[Table] = {
    use Col::*;
    &[
        ("settings", &[("name", Text), ("value", Text)], false),
        (
            "projects",
            &[("id", Int), ("name", Text), ("created", Int)],
            true,
        ),
        (
            "keys",
            &[("public_key", Text), ("project_id", Int), ("created", Int)],
            false,
        ),
        (
            "issues",
            &[
                ("id", Int),
                ("project_id", Int),
                ("fingerprint", Text),
                ("class", Text),
                ("kind", Text),
                ("title", Text),
                ("culprit", Text),
                ("level", Text),
                ("status", Text),
                ("is_regression", Bool),
                ("count", Int),
                ("first_seen", Int),
                ("last_seen", Int),
                ("latest_event_id", Text),
            ],
            true,
        ),
        (
            "events",
            &[
                ("id", Int),
                ("project_id", Int),
                ("event_id", Text),
                ("issue_id", Int),
                ("timestamp", Int),
                ("received", Int),
                ("level", Text),
                ("message", Text),
                ("environment", Text),
                ("release", Text),
                ("encoding", Small),
                ("data", Bytes),
            ],
            true,
        ),
        (
            "event_ids",
            &[
                ("project_id", Int),
                ("event_id", Text),
                ("issue_id", Int),
                ("received", Int),
            ],
            false,
        ),
        (
            "issue_hourly",
            &[("issue_id", Int), ("hour", Int), ("count", Int)],
            false,
        ),
        (
            "issue_tags",
            &[
                ("issue_id", Int),
                ("key", Text),
                ("value", Text),
                ("count", Int),
            ],
            false,
        ),
        (
            "project_tags",
            &[
                ("project_id", Int),
                ("key", Text),
                ("value", Text),
                ("count", Int),
            ],
            false,
        ),
        (
            "discards",
            &[
                ("project_id", Int),
                ("reason", Text),
                ("category", Text),
                ("quantity", Int),
            ],
            false,
        ),
        ("applied_counts", &[("id", Text), ("received", Int)], false),
        (
            "pending_counts",
            &[
                ("id", Text),
                ("project_id", Int),
                ("event_id", Text),
                ("count", Int),
                ("start_ms", Int),
                ("end_ms", Int),
                ("received", Int),
            ],
            false,
        ),
        (
            "difs",
            &[
                ("id", Int),
                ("project_id", Int),
                ("checksum", Text),
                ("name", Text),
                ("kind", Text),
                ("object_kind", Text),
                ("arch", Text),
                ("debug_id", Text),
                ("code_id", Text),
                ("features", Text),
                ("size", Int),
                ("uploaded", Int),
                ("last_used", Int),
            ],
            true,
        ),
        (
            "alert_rules",
            &[
                ("id", Int),
                ("project_id", Int),
                ("name", Text),
                ("trigger_kind", Text),
                ("count", Int),
                ("minutes", Int),
                ("filter", Text),
                ("interval_minutes", Int),
                ("channel", Text),
                ("enabled", Bool),
                ("created", Int),
            ],
            true,
        ),
        (
            "alert_fired",
            &[("rule_id", Int), ("issue_id", Int), ("fired_at", Int)],
            false,
        ),
        (
            "alert_deliveries",
            &[
                ("id", Int),
                ("delivery_id", Text),
                ("rule_id", Int),
                ("issue_id", Int),
                ("trigger_kind", Text),
                ("payload", Text),
                ("status", Text),
                ("attempts", Int),
                ("next_attempt", Int),
                ("created", Int),
                ("updated", Int),
                ("response_status", Int),
                ("last_error", Text),
            ],
            true,
        ),
        (
            "unsymbolicated",
            &[
                ("id", Int),
                ("debug_id", Text),
                ("project_id", Int),
                ("event_id", Text),
                ("received", Int),
            ],
            true,
        ),
        // Teams and access (store/*/access.rs); login throttle windows are not copied.
        (
            "users",
            &[
                ("id", Int),
                ("username", Text),
                ("display_name", Text),
                ("email", Text),
                ("role", Text),
                ("disabled", Bool),
                ("password_hash", Text),
                ("created", Int),
            ],
            true,
        ),
        (
            "memberships",
            &[("user_id", Int), ("project_id", Int)],
            false,
        ),
        (
            "api_tokens",
            &[
                ("id", Int),
                ("user_id", Int),
                ("name", Text),
                ("scopes", Text),
                ("hash", Text),
                ("prefix", Text),
                ("created", Int),
                ("last_used", Int),
            ],
            true,
        ),
        (
            "user_sessions",
            &[
                ("id", Int),
                ("user_id", Int),
                ("hash", Text),
                ("created", Int),
                ("last_seen", Int),
                ("expires", Int),
                ("client", Text),
            ],
            true,
        ),
        (
            "invites",
            &[
                ("hash", Text),
                ("user_id", Int),
                ("created", Int),
                ("expires", Int),
            ],
            false,
        ),
        (
            "audit_log",
            &[
                ("id", Int),
                ("at", Int),
                ("actor", Text),
                ("action", Text),
                ("target", Text),
                ("address", Text),
                ("detail", Text),
            ],
            true,
        ),
        // Release health (store/*/health.rs).
        (
            "release_sessions",
            &[
                ("project_id", Int),
                ("sid", Text),
                ("did", Text),
                ("release", Text),
                ("environment", Text),
                ("started", Int),
                ("timestamp", Int),
                ("status", Text),
                ("errors", Int),
                ("seq", Int),
                ("terminal", Int),
            ],
            false,
        ),
        (
            "session_aggregates",
            &[
                ("project_id", Int),
                ("key", Text),
                ("release", Text),
                ("environment", Text),
                ("started", Int),
                ("did", Text),
                ("exited", Int),
                ("errored", Int),
                ("abnormal", Int),
                ("crashed", Int),
            ],
            false,
        ),
        // The issue workflow (store/*/workflow.rs).
        (
            "issue_assignees",
            &[("issue_id", Int), ("user_id", Int), ("assigned", Int)],
            false,
        ),
        (
            "issue_comments",
            &[
                ("id", Int),
                ("issue_id", Int),
                ("user_id", Int),
                ("body", Text),
                ("created", Int),
            ],
            true,
        ),
    ]
};

/// Rows per INSERT (PostgreSQL takes at most 65,535 parameters in one statement).
const ROWS_PER_INSERT: usize = 500;

/// What was copied: rows per table, and the checks made after.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// `(table, rows)` in copy order.
    pub tables: Vec<(&'static str, u64)>,
    /// Events counted over all issues (the sum of `issues.count`), equal on both sides.
    pub occurrences: i64,
    /// Events counted over all projects, equal on both sides.
    pub project_events: i64,
    /// Debug files whose bytes were copied from `<data>/difs/` into the database.
    pub dif_files: u64,
}

fn value(v: Lite, col: Col) -> Result<Box<dyn ToSql + Sync + Send>, StoreError> {
    let bad = |what: &str| StoreError::Task(format!("unexpected {what} in the SQLite database"));
    Ok(match (v, col) {
        (Lite::Null, Col::Int) => Box::new(None::<i64>),
        (Lite::Null, Col::Small) => Box::new(None::<i16>),
        (Lite::Null, Col::Bool) => Box::new(None::<bool>),
        (Lite::Null, Col::Text) => Box::new(None::<String>),
        (Lite::Null, Col::Bytes) => Box::new(None::<Vec<u8>>),
        (Lite::Integer(i), Col::Int) => Box::new(i),
        (Lite::Integer(i), Col::Small) => {
            Box::new(i16::try_from(i).map_err(|_| bad("a small integer out of range"))?)
        }
        (Lite::Integer(i), Col::Bool) => Box::new(i != 0),
        (Lite::Text(s), Col::Text) => Box::new(s),
        (Lite::Blob(b), Col::Bytes) => Box::new(b),
        // SQLite keeps what it is given: a text event body or a blob text are copied as is.
        (Lite::Text(s), Col::Bytes) => Box::new(s.into_bytes()),
        (Lite::Blob(b), Col::Text) => Box::new(String::from_utf8(b).map_err(|_| bad("bytes"))?),
        (Lite::Integer(i), Col::Text) => Box::new(i.to_string()),
        _ => return Err(bad("a value of another type")),
    })
}

fn type_of(col: Col) -> Type {
    match col {
        Col::Int => Type::INT8,
        Col::Small => Type::INT2,
        Col::Bool => Type::BOOL,
        Col::Text => Type::TEXT,
        Col::Bytes => Type::BYTEA,
    }
}

/// Copies the SQLite database of `data_dir` into the (empty) PostgreSQL database at
/// `url`, migrating its schema first. Refuses a database that already holds projects.
pub async fn copy_from_sqlite(data_dir: &Path, url: &str) -> Result<CopyReport, StoreError> {
    let path = crate::store::sqlite::db_path(data_dir);
    if !path.exists() {
        return Err(StoreError::Config(format!(
            "{} holds no errscope database (no {})",
            data_dir.display(),
            path.display()
        )));
    }
    // Bring the source up to this collector's schema, then read it while it stands still.
    drop(crate::store::sqlite::open_and_migrate(data_dir)?);
    let lite = crate::store::sqlite::open_connection(&path, true)?;
    let pool = super::pool(url)?;
    super::migrate(&pool).await?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let tx = client.transaction().await?;
    let existing: i64 = tx
        .query_one("SELECT count(*) FROM projects", &[])
        .await?
        .get(0);
    if existing > 0 {
        return Err(StoreError::Config(format!(
            "{} already holds {existing} projects: migrate into an empty database",
            crate::store::redact_url(url)
        )));
    }
    // The bootstrap of a collector that ran against it first: start from nothing.
    tx.batch_execute("DELETE FROM settings").await?;
    let mut report = CopyReport::default();
    for (table, cols, identity) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let list = names.join(", ");
        // The dedup ids in insertion order, which numbers them (`event_ids.seq`) as the
        // writers would have: the cap keeps the newest.
        let order = if *table == "event_ids" {
            " ORDER BY rowid"
        } else {
            ""
        };
        let mut stmt = lite.prepare(&format!("SELECT {list} FROM {table}{order}"))?;
        let mut rows = stmt.query([])?;
        let mut copied = 0u64;
        let mut batch: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut in_batch = 0usize;
        loop {
            let row = rows.next()?;
            if let Some(row) = row {
                for (i, (_, col)) in cols.iter().enumerate() {
                    batch.push(value(row.get::<_, Lite>(i)?, *col)?);
                }
                in_batch += 1;
            }
            if in_batch > 0 && (row.is_none() || in_batch == ROWS_PER_INSERT) {
                insert(&tx, table, cols, &list, &batch, in_batch, *identity).await?;
                copied += in_batch as u64;
                batch.clear();
                in_batch = 0;
            }
            if row.is_none() {
                break;
            }
        }
        if *identity {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                ),
                &[],
            )
            .await?;
        }
        report.tables.push((table, copied));
    }
    // The project counters: SQLite keeps them on the project row; here they start in slot 0.
    let mut stmt = lite.prepare("SELECT id, events, seq, last_seen FROM projects")?;
    let counters = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, events, seq, last_seen) in counters {
        for slot in 0..COUNTER_SLOTS {
            let first = slot == 0;
            tx.execute(
                "INSERT INTO project_counters (project_id, slot, events, seq, last_seen) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id,
                    &slot,
                    &if first { events } else { 0 },
                    &if first { seq } else { 0 },
                    &if first { last_seen } else { None },
                ],
            )
            .await?;
        }
    }
    // The debug files' bytes, which every node fetches from the database.
    let mut stmt = lite.prepare("SELECT id, project_id, checksum FROM difs ORDER BY id")?;
    let difs = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, project_id, checksum) in difs {
        let file = data_dir
            .join("difs")
            .join(project_id.to_string())
            .join(checksum);
        if !file.exists() {
            return Err(StoreError::Task(format!(
                "debug file {id} is indexed but {} is missing; nothing was committed",
                file.display()
            )));
        }
        super::difs::put_bytes(&tx, id, &file).await?;
        report.dif_files += 1;
    }
    // The checks: every table's rows, and the counts the dashboard shows.
    for (table, copied) in &report.tables {
        let source: i64 =
            lite.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        let target: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        if source != target || source as u64 != *copied {
            return Err(StoreError::Task(format!(
                "{table}: {source} rows in SQLite, {target} copied; nothing was committed"
            )));
        }
    }
    let occurrences: i64 =
        lite.query_row("SELECT coalesce(sum(count), 0) FROM issues", [], |r| {
            r.get(0)
        })?;
    let copied: i64 = tx
        .query_one("SELECT coalesce(sum(count), 0)::BIGINT FROM issues", &[])
        .await?
        .get(0);
    let project_events: i64 =
        lite.query_row("SELECT coalesce(sum(events), 0) FROM projects", [], |r| {
            r.get(0)
        })?;
    let copied_events: i64 = tx
        .query_one(
            "SELECT coalesce(sum(events), 0)::BIGINT FROM project_counters",
            &[],
        )
        .await?
        .get(0);
    if occurrences != copied || project_events != copied_events {
        return Err(StoreError::Task(format!(
            "counts differ after the copy (issues {occurrences} vs {copied}, projects {project_events} vs {copied_events}); nothing was committed"
        )));
    }
    tx.commit().await?;
    report.occurrences = occurrences;
    report.project_events = project_events;
    Ok(report)
}

async fn insert(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    cols: &[(&str, Col)],
    list: &str,
    batch: &[Box<dyn ToSql + Sync + Send>],
    rows: usize,
    identity: bool,
) -> Result<(), StoreError> {
    let n = cols.len();
    let mut sql = format!(
        "INSERT INTO {table} ({list}) {} VALUES ",
        if identity {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        }
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..n {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * n + c + 1));
        }
        sql.push(')');
    }
    let types: Vec<Type> = (0..rows)
        .flat_map(|_| cols.iter().map(|(_, c)| type_of(*c)))
        .collect();
    let stmt = tx.prepare_typed(&sql, &types).await?;
    let params: Vec<&(dyn ToSql + Sync)> = batch
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    tx.execute(&stmt, &params).await?;
    Ok(())
}
