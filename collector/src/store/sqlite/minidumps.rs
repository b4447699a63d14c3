//! The SQL of the kept minidumps' index (`minidumps` table): one row per event whose raw
//! dump is kept under `<data>/minidumps/`, dropped oldest first past the disk budget.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{MinidumpRow, StoreError};

/// The migration that adds the table (appended to the migrations list).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE minidumps (
        project_id INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        checksum TEXT NOT NULL,
        name TEXT NOT NULL,
        received INTEGER NOT NULL,
        PRIMARY KEY (project_id, event_id)
    );
    CREATE INDEX minidumps_received ON minidumps (received);
"#;

const COLUMNS: &str = "project_id, event_id, size, checksum, name, received";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MinidumpRow> {
    Ok(MinidumpRow {
        project_id: r.get(0)?,
        event_id: r.get(1)?,
        size: r.get(2)?,
        checksum: r.get(3)?,
        name: r.get(4)?,
        received: r.get(5)?,
    })
}

/// The dump of an event.
pub(super) fn get(
    conn: &Connection,
    project_id: i64,
    event_id: &str,
) -> Result<Option<MinidumpRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM minidumps WHERE project_id = ?1 AND event_id = ?2"),
            params![project_id, event_id],
            row,
        )
        .optional()?)
}

/// Deletes up to `limit` rows whose event is gone and returns them.
pub(super) fn take_orphans(conn: &Connection, limit: i64) -> Result<Vec<MinidumpRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "DELETE FROM minidumps WHERE rowid IN (
             SELECT m.rowid FROM minidumps m WHERE NOT EXISTS (
                 SELECT 1 FROM events e WHERE e.project_id = m.project_id AND e.event_id = m.event_id)
             LIMIT ?1)
         RETURNING {COLUMNS}"
    ))?;
    let rows = stmt
        .query_map([limit], row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Inserts (or replaces) a row, then drops the oldest others past `max_bytes`.
pub(super) fn insert(
    conn: &Connection,
    m: &MinidumpRow,
    max_bytes: u64,
) -> Result<Vec<MinidumpRow>, StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO minidumps (project_id, event_id, size, checksum, name, received)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            m.project_id,
            m.event_id,
            m.size,
            m.checksum,
            m.name,
            m.received
        ],
    )?;
    let mut total: i64 =
        conn.query_row("SELECT coalesce(sum(size), 0) FROM minidumps", [], |r| {
            r.get(0)
        })?;
    let mut dropped = Vec::new();
    while total.max(0) as u64 > max_bytes {
        let Some(old) = conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM minidumps
                     WHERE NOT (project_id = ?1 AND event_id = ?2)
                     ORDER BY received, project_id, event_id LIMIT 1"
                ),
                params![m.project_id, m.event_id],
                row,
            )
            .optional()?
        else {
            break;
        };
        conn.execute(
            "DELETE FROM minidumps WHERE project_id = ?1 AND event_id = ?2",
            params![old.project_id, old.event_id],
        )?;
        total -= old.size;
        dropped.push(old);
    }
    Ok(dropped)
}
