//! For this backend's own tests: a fresh database on a test server.

use std::sync::Arc;

use super::PgStore;
use crate::metrics::Metrics;
use crate::store::Retention;

/// The test server's URL (its superuser, its default database): this process's own
/// throwaway server (errscope-testkit).
pub(crate) fn server_url() -> String {
    errscope_testkit::pg::Cluster::shared().url()
}

/// A new, empty database on the test server.
pub(crate) async fn fresh_database() -> String {
    tokio::task::spawn_blocking(|| {
        errscope_testkit::pg::Cluster::shared()
            .fresh_database()
            .expect("a database on the test server")
    })
    .await
    .expect("the test server's thread")
}

/// A store on a fresh database.
pub(crate) async fn fresh_store() -> PgStore {
    let url = fresh_database().await;
    PgStore::open(
        &url,
        1024,
        Retention::default(),
        Arc::new(Metrics::default()),
        None,
    )
    .await
    .expect("open the store")
}

/// One PostgreSQL and one SQLite store (in a temp dir), to run the same calls against
/// both and compare the answers.
pub(crate) struct Twin {
    pub(crate) pg: PgStore,
    pub(crate) lite: crate::store::sqlite::SqliteStore,
    _dir: tempfile::TempDir,
}

/// A fresh [`Twin`].
pub(crate) async fn twin() -> Twin {
    let dir = tempfile::tempdir().expect("temp dir");
    let lite = crate::store::sqlite::SqliteStore::open(
        dir.path(),
        1024,
        Retention::default(),
        Arc::new(Metrics::default()),
        None,
    )
    .expect("open the SQLite store");
    Twin {
        pg: fresh_store().await,
        lite,
        _dir: dir,
    }
}

/// `(table, columns, kinds)`; a kind per column: `i` BIGINT, `n` BIGINT or NULL,
/// `s` SMALLINT, `b` BOOLEAN, `t` TEXT, `T` TEXT or NULL, `B` BYTEA.
const MIRRORED: &[(&str, &str, &str)] = &[
    (
        "issues",
        "id, project_id, fingerprint, class, kind, title, culprit, level, status, is_regression, count, first_seen, last_seen, latest_event_id",
        "iitttttttbiiiT",
    ),
    (
        "events",
        "id, project_id, event_id, issue_id, timestamp, received, level, message, environment, release, encoding, data",
        "iitiiittTTsB",
    ),
    ("issue_hourly", "issue_id, hour, count", "iii"),
    ("issue_tags", "issue_id, key, value, count", "itti"),
    ("project_tags", "project_id, key, value, count", "itti"),
    (
        "event_ids",
        "project_id, event_id, issue_id, received",
        "itii",
    ),
];

impl Twin {
    /// Copies what SQLite's ingest stored (issues, events, hourly counts, tags) into
    /// PostgreSQL, replacing what was there, so the reads can be compared on equal rows.
    pub(crate) async fn mirror(&self) {
        use rusqlite::types::Value as V;
        use tokio_postgres::types::ToSql;
        let mut c = self.pg.conn().await.expect("a connection");
        let tx = c.transaction().await.expect("a transaction");
        // Deltas of PostgreSQL's own ingest would be folded onto the copied rows.
        tx.batch_execute(
            "DELETE FROM issue_deltas; DELETE FROM hourly_deltas; DELETE FROM tag_deltas",
        )
        .await
        .expect("empty the deltas");
        for (table, cols, kinds) in MIRRORED {
            let sql = format!("SELECT {cols} FROM {table}");
            let n = kinds.len();
            let data: Vec<Vec<V>> = self
                .lite
                .read(move |c| {
                    let mut stmt = c.prepare(&sql)?;
                    let rows = stmt
                        .query_map([], |r| (0..n).map(|i| r.get::<_, V>(i)).collect())?
                        .collect::<Result<Vec<Vec<V>>, _>>()?;
                    Ok(rows)
                })
                .await
                .expect("read SQLite");
            tx.execute(&format!("DELETE FROM {table}"), &[])
                .await
                .expect("empty the table");
            let marks: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
            let insert = format!("INSERT INTO {table} ({cols}) VALUES ({})", marks.join(", "));
            for r in data {
                let args: Vec<Box<dyn ToSql + Sync + Send>> = r
                    .into_iter()
                    .zip(kinds.chars())
                    .map(|(v, k)| -> Box<dyn ToSql + Sync + Send> {
                        match (k, v) {
                            ('i', V::Integer(i)) => Box::new(i),
                            ('n', V::Integer(i)) => Box::new(Some(i)),
                            ('n', V::Null) => Box::new(None::<i64>),
                            ('s', V::Integer(i)) => Box::new(i as i16),
                            ('b', V::Integer(i)) => Box::new(i != 0),
                            ('t', V::Text(s)) => Box::new(s),
                            ('T', V::Text(s)) => Box::new(Some(s)),
                            ('T', V::Null) => Box::new(None::<String>),
                            ('B', V::Blob(b)) => Box::new(b),
                            ('B', V::Text(s)) => Box::new(s.into_bytes()),
                            (k, v) => panic!("{table}: {v:?} is not of kind {k}"),
                        }
                    })
                    .collect();
                let refs: Vec<&(dyn ToSql + Sync)> = args
                    .iter()
                    .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                tx.execute(&insert, &refs).await.expect("copy a row");
            }
        }
        tx.commit().await.expect("commit the copy");
    }
}

/// Events of six classes, two levels, environments and releases, spread over hours
/// before `now`: what the read tests store through SQLite's ingest and mirror.
pub(crate) fn sample_job(project_id: i64, now: i64) -> crate::store::IngestJob {
    let events = (0..18u64)
        .map(|n| {
            let (i2, i3) = (n as usize % 2, n as usize % 3);
            let class = ["TypeA", "TypeB", "TypeC", "TypeD", "TypeE", "TypeF"][n as usize % 6];
            let (level, env) = (["error", "warning"][i2], ["prod", "staging"][i2]);
            let domain = ["ldap", "db", "Ünïcode"][i3];
            let json = serde_json::json!({
                "event_id": format!("{:032x}", n + 1),
                "timestamp": (now - n as i64 * 1_700_000) as f64 / 1000.0,
                "level": level,
                "environment": env,
                "release": format!("1.{}", n % 4),
                "tags": {"domain": domain},
                "exception": {"values": [{"type": class, "value": format!("boom {}", n % 6)}]},
            });
            crate::ingest::prepare_event(json.to_string().as_bytes(), now, None)
                .expect("a valid event")
        })
        .collect();
    crate::store::IngestJob {
        project_id,
        events,
        ..Default::default()
    }
}
