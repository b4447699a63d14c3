//! The SQL of the debug files' index (`difs` table, created by a migration in
//! `store/sqlite/mod.rs`), and the version counter other processes bump when they change it.

use rusqlite::{Connection, OptionalExtension, params};

use crate::difs::{DifKind, Features};
use crate::store::{DifRow, StoreError};

const COLUMNS: &str = "id, project_id, checksum, name, kind, object_kind, arch, debug_id, code_id, features, size, uploaded, last_used";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DifRow> {
    let kind: String = r.get(4)?;
    let features: String = r.get(9)?;
    Ok(DifRow {
        id: r.get(0)?,
        project_id: r.get(1)?,
        checksum: r.get(2)?,
        name: r.get(3)?,
        kind: DifKind::parse(&kind).unwrap_or(DifKind::Elf),
        object_kind: r.get(5)?,
        arch: r.get(6)?,
        debug_id: r.get(7)?,
        code_id: r.get(8)?,
        features: Features::parse(&features),
        size: r.get(10)?,
        uploaded: r.get(11)?,
        last_used: r.get(12)?,
    })
}

/// Every stored file, by id.
pub fn all(conn: &Connection) -> Result<Vec<DifRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM difs ORDER BY id"))?;
    let rows = stmt.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The file of a project with this checksum.
pub fn by_checksum(
    conn: &Connection,
    project_id: i64,
    checksum: &str,
) -> Result<Option<DifRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM difs WHERE project_id = ?1 AND checksum = ?2"),
            params![project_id, checksum],
            row,
        )
        .optional()?)
}

/// One file by id.
pub fn by_id(conn: &Connection, id: i64) -> Result<Option<DifRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM difs WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?)
}

/// Inserts a file (its `id` is ignored); returns the new id.
pub fn insert(conn: &Connection, d: &DifRow) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO difs (project_id, checksum, name, kind, object_kind, arch, debug_id,
                           code_id, features, size, uploaded, last_used)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            d.project_id,
            d.checksum,
            d.name,
            d.kind.as_str(),
            d.object_kind,
            d.arch,
            d.debug_id,
            d.code_id,
            d.features.to_string(),
            d.size,
            d.uploaded,
            d.last_used
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Deletes a file's row; whether it existed.
pub fn delete(conn: &Connection, id: i64) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM difs WHERE id = ?1", [id])? > 0)
}

/// The bytes all stored files take.
pub fn total_size(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT coalesce(sum(size), 0) FROM difs", [], |r| r.get(0))?)
}

/// The least recently used file other than `keep` (never used: by upload time).
pub fn least_recently_used(conn: &Connection, keep: i64) -> Result<Option<DifRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM difs WHERE id != ?1
                 ORDER BY coalesce(last_used, uploaded), id LIMIT 1"
            ),
            [keep],
            row,
        )
        .optional()?)
}

/// Records when files were last used, in one transaction.
pub fn set_last_used(conn: &Connection, used: &[(i64, i64)]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE difs SET last_used = ?2 WHERE id = ?1 AND coalesce(last_used, 0) < ?2",
    )?;
    for (id, at) in used {
        stmt.execute(params![id, at])?;
    }
    Ok(())
}

/// The index's version: every process that changes the `difs` table bumps it, so a
/// running collector sees uploads made by `errscope-collector debug-files`.
pub fn version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(super::get_setting(conn, "difs_version")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Bumps the index's version.
pub fn bump_version(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES ('difs_version', '1')
         ON CONFLICT (name) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [],
    )?;
    Ok(())
}
