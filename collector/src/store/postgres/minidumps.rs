//! The kept minidumps' index (`minidumps` table): one row per event whose raw dump is
//! kept under `<data>/minidumps/`, dropped oldest first past the disk budget.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::PgStore;
use super::basics::{exec, retry, row, rows};
use crate::store::{MinidumpRow, StoreError};

/// `pg_advisory_xact_lock` key of the transactions that add rows, so that nodes dropping
/// old dumps at once do not drop twice ("mdmp" in ASCII).
const INDEX_LOCK: i64 = 0x6d_64_6d_70;

/// The migration that adds the table (appended to `schema::MIGRATIONS`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE minidumps (
        project_id BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        size BIGINT NOT NULL,
        checksum TEXT NOT NULL,
        name TEXT NOT NULL,
        received BIGINT NOT NULL,
        PRIMARY KEY (project_id, event_id)
    );
    CREATE INDEX minidumps_received ON minidumps (received);
"#;

const COLUMNS: &str = "project_id, event_id, size, checksum, name, received";

fn of(r: &Row) -> MinidumpRow {
    MinidumpRow {
        project_id: r.get(0),
        event_id: r.get(1),
        size: r.get(2),
        checksum: r.get(3),
        name: r.get(4),
        received: r.get(5),
    }
}

async fn get<C: GenericClient>(
    c: &C,
    project_id: i64,
    event_id: &str,
) -> Result<Option<MinidumpRow>, StoreError> {
    Ok(row(
        c,
        &format!("SELECT {COLUMNS} FROM minidumps WHERE project_id = $1 AND event_id = $2"),
        &[&project_id, &event_id],
    )
    .await?
    .map(|r| of(&r)))
}

pub(super) async fn minidump(
    s: &PgStore,
    project_id: i64,
    event_id: &str,
) -> Result<Option<MinidumpRow>, StoreError> {
    retry(|| async move { get(&s.conn().await?, project_id, event_id).await }).await
}

/// Deletes up to `limit` rows whose event is gone and returns them (under the index's
/// lock, so the budget's accounting in `insert_minidump` sees it whole).
pub(super) async fn take_orphans(s: &PgStore, limit: i64) -> Result<Vec<MinidumpRow>, StoreError> {
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&INDEX_LOCK]).await?;
        let taken = rows(
            &tx,
            &format!(
                "DELETE FROM minidumps WHERE (project_id, event_id) IN (
                     SELECT m.project_id, m.event_id FROM minidumps m WHERE NOT EXISTS (
                         SELECT 1 FROM events e
                         WHERE e.project_id = m.project_id AND e.event_id = m.event_id)
                     LIMIT $1)
                 RETURNING {COLUMNS}"
            ),
            &[&limit],
        )
        .await?;
        tx.commit().await?;
        Ok(taken.iter().map(of).collect())
    })
    .await
}

/// Inserts (or replaces) a row, then drops the oldest others past `max_bytes`: one
/// transaction, under the index's lock.
pub(super) async fn insert_minidump(
    s: &PgStore,
    m_in: MinidumpRow,
    max_bytes: u64,
) -> Result<Vec<MinidumpRow>, StoreError> {
    let m = &m_in;
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&INDEX_LOCK]).await?;
        exec(
            &tx,
            "INSERT INTO minidumps (project_id, event_id, size, checksum, name, received)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (project_id, event_id) DO UPDATE SET size = excluded.size,
                 checksum = excluded.checksum, name = excluded.name,
                 received = excluded.received",
            &[
                &m.project_id,
                &m.event_id,
                &m.size,
                &m.checksum,
                &m.name,
                &m.received,
            ],
        )
        .await?;
        let mut total: i64 = row(
            &tx,
            "SELECT coalesce(sum(size), 0)::BIGINT FROM minidumps",
            &[],
        )
        .await?
        .map_or(0, |r| r.get(0));
        let mut dropped = Vec::new();
        while total.max(0) as u64 > max_bytes {
            let Some(old) = row(
                &tx,
                &format!(
                    "SELECT {COLUMNS} FROM minidumps
                     WHERE NOT (project_id = $1 AND event_id = $2)
                     ORDER BY received, project_id, event_id LIMIT 1"
                ),
                &[&m.project_id, &m.event_id],
            )
            .await?
            .map(|r| of(&r)) else {
                break;
            };
            exec(
                &tx,
                "DELETE FROM minidumps WHERE project_id = $1 AND event_id = $2",
                &[&old.project_id, &old.event_id],
            )
            .await?;
            total -= old.size;
            dropped.push(old);
        }
        tx.commit().await?;
        Ok(dropped)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::testing::twin;
    use crate::store::{MinidumpRow, Store};

    fn dump(n: i64, size: i64) -> MinidumpRow {
        MinidumpRow {
            project_id: 1,
            event_id: format!("{n:032x}"),
            size,
            checksum: format!("{n:040x}"),
            name: format!("crash-{n}.dmp"),
            received: 1000 * n,
        }
    }

    #[tokio::test]
    async fn the_index_drops_the_oldest_dumps_as_sqlite_does() {
        let t = twin().await;
        let mut logs = Vec::new();
        for s in [&t.lite as &dyn Store, &t.pg] {
            let mut log = Vec::new();
            for (n, size) in [(1, 400), (2, 400), (3, 400), (2, 100), (4, 2_000)] {
                let dropped = s.insert_minidump(dump(n, size), 1_000).await.unwrap();
                log.push(format!("{dropped:?}"));
            }
            for n in 1..=4 {
                log.push(format!(
                    "{:?}",
                    s.minidump(1, &format!("{n:032x}")).await.unwrap()
                ));
            }
            log.push(format!(
                "{:?}",
                s.minidump(2, &format!("{:032x}", 4)).await.unwrap()
            ));
            logs.push(log);
        }
        assert_eq!(logs[1], logs[0]);
        // 1 went for 3; replacing 2 dropped nothing; 4, over the budget alone, stays alone.
        assert!(logs[0][2].contains(&format!("{:032x}", 1)), "{:?}", logs[0]);
        assert_eq!(logs[0][3], "[]");
        assert!(logs[0][8].starts_with("Some("), "{:?}", logs[0]);
        assert_eq!(logs[0][5..8], ["None", "None", "None"], "{:?}", logs[0]);
    }
}
