//! The debug files' index and its version counter (the `difs_version` setting, bumped in
//! every transaction that changes the index, so every node sees another's uploads).

use std::io::{Read as _, Write as _};
use std::path::Path;

use deadpool_postgres::GenericClient;
use futures_util::TryStreamExt as _;
use tokio_postgres::Row;

use super::PgStore;
use super::basics::{exec, retry, row, rows, setting};
use crate::difs::{DifKind, Features};
use crate::store::{DifInsert, DifRow, StoreError};

/// `pg_advisory_xact_lock` key held by the transactions that add or remove files, so
/// that nodes evicting at once do not evict twice ("difs" in ASCII).
const INDEX_LOCK: i64 = 0x64_69_66_73;

/// The bytes of a file are stored in rows of this size.
const CHUNK: usize = 1 << 20;

const COLUMNS: &str = "id, project_id, checksum, name, kind, object_kind, arch, debug_id, code_id, features, size, uploaded, last_used";

fn dif_of(r: &Row) -> DifRow {
    DifRow {
        id: r.get(0),
        project_id: r.get(1),
        checksum: r.get(2),
        name: r.get(3),
        kind: DifKind::parse(r.get(4)).unwrap_or(DifKind::Elf),
        object_kind: r.get(5),
        arch: r.get(6),
        debug_id: r.get(7),
        code_id: r.get(8),
        features: Features::parse(r.get(9)),
        size: r.get(10),
        uploaded: r.get(11),
        last_used: r.get(12),
    }
}

async fn by_id<C: GenericClient>(c: &C, id: i64) -> Result<Option<DifRow>, StoreError> {
    Ok(row(
        c,
        &format!("SELECT {COLUMNS} FROM difs WHERE id = $1"),
        &[&id],
    )
    .await?
    .map(|r| dif_of(&r)))
}

async fn by_checksum<C: GenericClient>(
    c: &C,
    project_id: i64,
    checksum: &str,
) -> Result<Option<DifRow>, StoreError> {
    Ok(row(
        c,
        &format!("SELECT {COLUMNS} FROM difs WHERE project_id = $1 AND checksum = $2"),
        &[&project_id, &checksum],
    )
    .await?
    .map(|r| dif_of(&r)))
}

async fn bump_version<C: GenericClient>(c: &C) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT INTO settings (name, value) VALUES ('difs_version', '1')
         ON CONFLICT (name) DO UPDATE SET value = (settings.value::BIGINT + 1)::TEXT",
        &[],
    )
    .await?;
    Ok(())
}

pub(super) async fn difs_version(s: &PgStore) -> Result<i64, StoreError> {
    retry(|| async move {
        Ok(setting(&s.conn().await?, "difs_version")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    })
    .await
}

pub(super) async fn all_difs(s: &PgStore) -> Result<Vec<DifRow>, StoreError> {
    retry(|| async move {
        Ok(rows(
            &s.conn().await?,
            &format!("SELECT {COLUMNS} FROM difs ORDER BY id"),
            &[],
        )
        .await?
        .iter()
        .map(dif_of)
        .collect())
    })
    .await
}

pub(super) async fn dif(s: &PgStore, id: i64) -> Result<Option<DifRow>, StoreError> {
    retry(|| async move { by_id(&s.conn().await?, id).await }).await
}

pub(super) async fn dif_by_checksum(
    s: &PgStore,
    project_id: i64,
    checksum: &str,
) -> Result<Option<DifRow>, StoreError> {
    retry(|| async move { by_checksum(&s.conn().await?, project_id, checksum).await }).await
}

/// Indexes a file unless its checksum is there, then evicts the least recently used others
/// (never used: by upload time) until all fit in `max_bytes`, and bumps the version: one
/// transaction, under the index's lock.
pub(super) async fn insert_dif(
    s: &PgStore,
    row_in: DifRow,
    max_bytes: u64,
    bytes: Option<&Path>,
) -> Result<DifInsert, StoreError> {
    let d = &row_in;
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&INDEX_LOCK]).await?;
        if let Some(existing) = by_checksum(&tx, d.project_id, &d.checksum).await? {
            tx.commit().await?;
            return Ok(DifInsert {
                row: existing,
                existed: true,
                evicted: Vec::new(),
            });
        }
        let id: i64 = row(
            &tx,
            "INSERT INTO difs (project_id, checksum, name, kind, object_kind, arch, debug_id,
                               code_id, features, size, uploaded, last_used)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            &[
                &d.project_id,
                &d.checksum,
                &d.name,
                &d.kind.as_str(),
                &d.object_kind,
                &d.arch,
                &d.debug_id,
                &d.code_id,
                &d.features.to_string(),
                &d.size,
                &d.uploaded,
                &d.last_used,
            ],
        )
        .await?
        .map_or(0, |r| r.get(0));
        if let Some(path) = bytes {
            put_bytes(&tx, id, path).await?;
        }
        let mut total: u64 = row(&tx, "SELECT coalesce(sum(size), 0)::BIGINT FROM difs", &[])
            .await?
            .map_or(0, |r| r.get::<_, i64>(0).max(0) as u64);
        let mut evicted = Vec::new();
        while total > max_bytes {
            let Some(old) = row(
                &tx,
                &format!(
                    "SELECT {COLUMNS} FROM difs WHERE id <> $1
                     ORDER BY coalesce(last_used, uploaded), id LIMIT 1"
                ),
                &[&id],
            )
            .await?
            .map(|r| dif_of(&r)) else {
                break;
            };
            exec(&tx, "DELETE FROM difs WHERE id = $1", &[&old.id]).await?;
            total = total.saturating_sub(old.size.max(0) as u64);
            evicted.push(old);
        }
        bump_version(&tx).await?;
        tx.commit().await?;
        Ok(DifInsert {
            row: DifRow { id, ..d.clone() },
            existed: false,
            evicted,
        })
    })
    .await
}

/// Stores the bytes of file `id` from `path`, a [`CHUNK`] at a time.
pub(super) async fn put_bytes<C: GenericClient>(
    c: &C,
    id: i64,
    path: &Path,
) -> Result<(), StoreError> {
    // Plain file reads: the debug files' store runs these futures on a blocking thread.
    let mut file = std::fs::File::open(path).map_err(|e| StoreError::Io(path.to_owned(), e))?;
    let stmt = c
        .prepare_cached("INSERT INTO dif_chunks (dif_id, seq, data) VALUES ($1, $2, $3)")
        .await?;
    let mut buf = vec![0; CHUNK];
    for seq in 0i64.. {
        let mut len = 0;
        while len < CHUNK {
            let n = file
                .read(&mut buf[len..])
                .map_err(|e| StoreError::Io(path.to_owned(), e))?;
            if n == 0 {
                break;
            }
            len += n;
        }
        if len == 0 && seq > 0 {
            break;
        }
        c.execute(&stmt, &[&id, &seq, &&buf[..len]]).await?;
        if len < CHUNK {
            break;
        }
    }
    Ok(())
}

/// Writes the bytes of file `id` to `dest` as they stream in; false if there are none.
/// (Plain file writes, as in [`put_bytes`].)
pub(super) async fn dif_bytes(s: &PgStore, id: i64, dest: &Path) -> Result<bool, StoreError> {
    let c = s.conn().await?;
    let stream = c
        .query_raw(
            "SELECT data FROM dif_chunks WHERE dif_id = $1 ORDER BY seq",
            [&id as &(dyn tokio_postgres::types::ToSql + Sync)],
        )
        .await?;
    futures_util::pin_mut!(stream);
    let io = |e| StoreError::Io(dest.to_owned(), e);
    let mut out = std::fs::File::create(dest).map_err(io)?;
    let mut any = false;
    while let Some(r) = stream.try_next().await? {
        any = true;
        out.write_all(r.get::<_, &[u8]>(0)).map_err(io)?;
    }
    out.sync_all().map_err(io)?;
    Ok(any)
}

/// Removes a file's row and bumps the version, in one transaction.
pub(super) async fn delete_dif(s: &PgStore, id: i64) -> Result<Option<DifRow>, StoreError> {
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&INDEX_LOCK]).await?;
        let Some(found) = by_id(&tx, id).await? else {
            return Ok(None);
        };
        exec(&tx, "DELETE FROM difs WHERE id = $1", &[&id]).await?;
        bump_version(&tx).await?;
        tx.commit().await?;
        Ok(Some(found))
    })
    .await
}

/// Records last-use times (never moving one back), in one transaction; rows in id order,
/// so two nodes touching the same files cannot deadlock.
pub(super) async fn touch_difs(s: &PgStore, used: Vec<(i64, i64)>) -> Result<(), StoreError> {
    let mut used = used;
    used.sort_unstable();
    let used = &used;
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "UPDATE difs SET last_used = $2 WHERE id = $1 AND coalesce(last_used, 0) < $2",
            )
            .await?;
        for (id, at) in used {
            tx.execute(&stmt, &[id, at]).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testing::{fresh_database, twin};
    use crate::difs::{DifKind, Features};
    use crate::metrics::Metrics;
    use crate::store::{DifRow, Retention, Store};

    fn file(n: i64, size: i64, uploaded: i64) -> DifRow {
        DifRow {
            id: 0,
            project_id: 1,
            checksum: format!("{n:040x}"),
            name: format!("lib{n}.so"),
            kind: DifKind::Elf,
            object_kind: "dbg".into(),
            arch: "x86_64".into(),
            debug_id: format!("{n:032x}-0"),
            code_id: (n % 2 == 0).then(|| format!("{n:040x}")),
            features: Features::parse("debug,symtab"),
            size,
            uploaded,
            last_used: None,
        }
    }

    #[tokio::test]
    async fn the_index_evicts_and_counts_versions_as_sqlite_does() {
        let t = twin().await;
        for s in [&t.lite as &dyn Store, &t.pg] {
            s.create_project("default").await.unwrap().unwrap();
        }
        let max = 1_000;
        let (mut log, mut evictions) = (Vec::new(), Vec::new());
        for s in [&t.lite as &dyn Store, &t.pg] {
            let mut seen = Vec::new();
            let mut evicted = Vec::new();
            seen.push(format!("{:?}", s.difs_version().await.unwrap()));
            for n in 1..=4 {
                let done = s.insert_dif(file(n, 300, 10 * n), max, None).await.unwrap();
                seen.push(format!("{:?} {}", done.row, done.existed));
                evicted.push(done.evicted.iter().map(|d| d.id).collect::<Vec<_>>());
            }
            // File 1 is gone; 2 used last, and a use is never moved back.
            s.touch_difs(vec![(2, 500), (1, 20), (3, 400)])
                .await
                .unwrap();
            s.touch_difs(vec![(2, 100)]).await.unwrap();
            let again = s.insert_dif(file(2, 300, 99), max, None).await.unwrap();
            assert!(again.existed, "same checksum");
            seen.push(format!("{:?}", again.row));
            evicted.push(again.evicted.iter().map(|d| d.id).collect());
            for (n, size) in [(5, 450), (6, 450), (7, 5_000)] {
                let done = s
                    .insert_dif(file(n, size, 10 * n), max, None)
                    .await
                    .unwrap();
                seen.push(format!("{:?}", done.row));
                evicted.push(done.evicted.iter().map(|d| d.id).collect());
            }
            seen.push(format!("{:?}", s.all_difs().await.unwrap()));
            seen.push(format!("{:?}", s.dif(7).await.unwrap()));
            seen.push(format!("{:?}", s.dif(1).await.unwrap()));
            seen.push(format!(
                "{:?}",
                s.dif_by_checksum(1, &format!("{:040x}", 7)).await.unwrap()
            ));
            seen.push(format!(
                "{:?}",
                s.dif_by_checksum(2, &format!("{:040x}", 7)).await.unwrap()
            ));
            seen.push(format!("{:?}", s.delete_dif(7).await.unwrap()));
            seen.push(format!("{:?}", s.delete_dif(7).await.unwrap()));
            seen.push(format!("{:?}", s.difs_version().await.unwrap()));
            seen.push(format!("{:?}", s.all_difs().await.unwrap()));
            log.push(seen);
            evictions.push(evicted);
        }
        assert_eq!(log[1], log[0]);
        assert_eq!(evictions[1], evictions[0]);
        let want: Vec<Vec<i64>> = vec![
            vec![],
            vec![],
            vec![],
            vec![1],
            vec![],
            vec![4, 3],
            vec![5],
            vec![6, 2],
        ];
        assert_eq!(
            evictions[1], want,
            "least recently used first; a file over the budget stays alone"
        );
        let pg = &t.pg;
        assert_eq!(
            pg.difs_version().await.unwrap(),
            8,
            "7 inserts and a delete changed it"
        );
        assert!(pg.all_difs().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn nodes_uploading_at_once_stay_within_the_budget() {
        let url = fresh_database().await;
        let url = url.as_str();
        let open = || async move {
            Arc::new(
                super::PgStore::open(
                    url,
                    8,
                    Retention::default(),
                    Arc::new(Metrics::default()),
                    None,
                )
                .await
                .unwrap(),
            )
        };
        let (a, b) = (open().await, open().await);
        a.create_project("default").await.unwrap().unwrap();
        let mut tasks = Vec::new();
        for n in 1..=24 {
            let s = if n % 2 == 0 { a.clone() } else { b.clone() };
            // Files 1-12 uploaded twice (same checksum), by both nodes.
            let f = file(1 + n % 12, 100, n);
            tasks.push(tokio::spawn(async move {
                s.insert_dif(f, 550, None).await.unwrap()
            }));
        }
        let mut evicted = 0;
        let mut added = 0;
        for t in tasks {
            let done = t.await.unwrap();
            evicted += done.evicted.len();
            added += usize::from(!done.existed);
        }
        let left = a.all_difs().await.unwrap();
        assert!(left.iter().map(|d| d.size).sum::<i64>() <= 550, "{left:?}");
        assert_eq!(left.len(), 5);
        assert_eq!(
            added - evicted,
            5,
            "each file evicted once: {added} added, {evicted} evicted"
        );
        assert_eq!(b.difs_version().await.unwrap(), added as i64);
    }
}
