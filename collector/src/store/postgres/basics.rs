//! Settings, projects and their keys, dashboard sessions; and the helpers every area of
//! this store runs its SQL through (prepared statements, retried conflicts, 503 mapping).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::PgStore;
use crate::store::{ProjectRow, StoreError, new_key};

/// Attempts at a transaction PostgreSQL aborted for a conflict with another one.
pub(super) const ATTEMPTS: u32 = 5;

/// Query parameters.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Whether PostgreSQL rolled a transaction back for a conflict (serialization failure,
/// deadlock), so running it again may succeed.
pub(super) fn is_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(e) => e.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        }),
        _ => false,
    }
}

/// A lost connection, a server shutting down or out of connections is
/// [`StoreError::Unavailable`] (a 503 the client retries); anything else stays as it is.
pub(super) fn unavailable(e: StoreError) -> StoreError {
    let StoreError::Postgres(pg) = &e else {
        return e;
    };
    if crate::store::pg_unreachable(pg) {
        StoreError::Unavailable(pg.to_string())
    } else {
        e
    }
}

/// Runs `f` (which takes its own connection and, for writes, commits one transaction)
/// again when PostgreSQL aborted it for a conflict, up to [`ATTEMPTS`] times with a short
/// random pause; maps connection failures to [`StoreError::Unavailable`].
pub(super) async fn retry<T, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < ATTEMPTS && is_conflict(&e) => {
                let ms = rand::random_range(1..=10u64 << attempt);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                attempt += 1;
            }
            result => return result.map_err(unavailable),
        }
    }
}

/// The rows of a prepared (and cached) statement.
pub(super) async fn rows<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// At most one row of a prepared (and cached) statement.
pub(super) async fn row<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// Runs a prepared (and cached) statement; the rows it changed.
pub(super) async fn exec<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// Reads a setting.
pub(super) async fn setting<C: GenericClient>(
    c: &C,
    name: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        row(c, "SELECT value FROM settings WHERE name = $1", &[&name])
            .await?
            .map(|r| r.get(0)),
    )
}

pub(super) async fn get_setting(s: &PgStore, name: &str) -> Result<Option<String>, StoreError> {
    retry(|| async move { setting(&s.conn().await?, name).await }).await
}

pub(super) async fn set_setting(s: &PgStore, name: &str, value: &str) -> Result<(), StoreError> {
    retry(|| async move {
        exec(
            &s.conn().await?,
            "INSERT INTO settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&name, &value],
        )
        .await
        .map(drop)
    })
    .await
}

/// Stores the value unless one is there, then reads what is: under READ COMMITTED the
/// insert waits for a concurrent one to commit, and the read (a statement of its own)
/// sees the winner's value.
pub(super) async fn setting_or_insert(
    s: &PgStore,
    name: &str,
    value: &str,
) -> Result<String, StoreError> {
    retry(|| async move {
        let c = s.conn().await?;
        exec(
            &c,
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &value],
        )
        .await?;
        Ok(setting(&c, name).await?.unwrap_or_else(|| value.to_owned()))
    })
    .await
}

pub(super) async fn list_projects(s: &PgStore) -> Result<Vec<ProjectRow>, StoreError> {
    retry(|| async move {
        let found = rows(
            &s.conn().await?,
            "SELECT p.id, p.name, (SELECT public_key FROM keys k WHERE k.project_id = p.id
                                   ORDER BY created, public_key COLLATE \"C\" LIMIT 1)
             FROM projects p ORDER BY p.id",
            &[],
        )
        .await?;
        Ok(found
            .iter()
            .map(|r| ProjectRow {
                id: r.get(0),
                name: r.get(1),
                key: r.get::<_, Option<String>>(2).unwrap_or_default(),
            })
            .collect())
    })
    .await
}

/// Creates the project and its key in one transaction; a name taken (by an earlier call,
/// or by another node at the same moment) is `None`.
pub(super) async fn create_project(
    s: &PgStore,
    name: &str,
) -> Result<Option<ProjectRow>, StoreError> {
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        let now = crate::time::now_ms();
        // Checked first so that a taken name spends no id (as on SQLite); the insert's
        // ON CONFLICT settles the race of nodes creating one name at once.
        if row(&tx, "SELECT 1 FROM projects WHERE name = $1", &[&name])
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let Some(created) = row(
            &tx,
            "INSERT INTO projects (name, created) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING RETURNING id",
            &[&name, &now],
        )
        .await?
        else {
            return Ok(None);
        };
        let id: i64 = created.get(0);
        let key = new_key();
        exec(
            &tx,
            "INSERT INTO keys (public_key, project_id, created) VALUES ($1, $2, $3)",
            &[&key, &id, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(ProjectRow {
            id,
            name: name.to_owned(),
            key,
        }))
    })
    .await
}

pub(super) async fn project_of_key(s: &PgStore, key: &str) -> Result<Option<i64>, StoreError> {
    retry(|| async move {
        Ok(row(
            &s.conn().await?,
            "SELECT project_id FROM keys WHERE public_key = $1",
            &[&key],
        )
        .await?
        .map(|r| r.get(0)))
    })
    .await
}

pub(super) async fn take_quota(
    s: &PgStore,
    project_id: i64,
    window: i64,
    want: u64,
    limit: u64,
) -> Result<u64, StoreError> {
    let (want, limit) = (want as i64, limit as i64);
    // `asked` counts what was asked for, granted or not: one atomic add, and each caller
    // knows what stood before its own (`asked - want`), so no row lock is held.
    let asked: i64 = retry(|| async move {
        Ok(s.conn()
            .await?
            .query_one(
                "INSERT INTO rate_windows (project_id, window_start, asked) VALUES ($1, $2, $3)
                 ON CONFLICT (project_id, window_start)
                 DO UPDATE SET asked = rate_windows.asked + excluded.asked
                 RETURNING asked",
                &[&project_id, &window, &want],
            )
            .await?
            .get(0))
    })
    .await?;
    Ok((limit - (asked - want)).clamp(0, want) as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::testing::{fresh_database, twin};
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{Retention, Store};

    async fn node(url: &str) -> Arc<PgStore> {
        Arc::new(
            PgStore::open(
                url,
                64,
                Retention::default(),
                Arc::new(Metrics::default()),
                None,
            )
            .await
            .expect("open"),
        )
    }

    #[tokio::test]
    async fn settings_projects_and_quotas_behave_as_on_sqlite() {
        let t = twin().await;
        for s in [&t.lite as &dyn Store, &t.pg] {
            assert_eq!(s.get_setting("a").await.unwrap(), None);
            s.set_setting("a", "1").await.unwrap();
            s.set_setting("a", "2").await.unwrap();
            assert_eq!(s.get_setting("a").await.unwrap().as_deref(), Some("2"));
            assert_eq!(s.setting_or_insert("b", "first").await.unwrap(), "first");
            assert_eq!(s.setting_or_insert("b", "second").await.unwrap(), "first");
            assert_eq!(s.setting_or_insert("a", "3").await.unwrap(), "2");

            let shop = s.create_project("shop").await.unwrap().expect("created");
            assert!(
                s.create_project("shop").await.unwrap().is_none(),
                "name taken"
            );
            let web = s.create_project("web").await.unwrap().expect("created");
            assert_eq!((shop.id, web.id), (1, 2));
            assert_eq!(shop.key.len(), 32);
            assert_eq!(
                s.list_projects().await.unwrap(),
                vec![shop.clone(), web.clone()]
            );
            assert_eq!(s.project_of_key(&web.key).await.unwrap(), Some(2));
            assert_eq!(s.project_of_key("0123").await.unwrap(), None);

            assert_eq!(s.take_quota(1, 7, 60, 100).await.unwrap(), 60);
            assert_eq!(s.take_quota(1, 7, 60, 100).await.unwrap(), 40, "the rest");
            assert_eq!(s.take_quota(1, 7, 5, 100).await.unwrap(), 0, "spent");
            assert_eq!(s.take_quota(1, 8, 5, 100).await.unwrap(), 5, "a new window");
            assert_eq!(
                s.take_quota(2, 7, 5, 100).await.unwrap(),
                5,
                "another project"
            );
        }
    }

    #[tokio::test]
    async fn nodes_taking_quota_at_once_share_one_limit() {
        let url = fresh_database().await;
        let nodes = [node(&url).await, node(&url).await, node(&url).await];
        // Next minute's window: pruning drops the past ones.
        let m = crate::time::now_ms() / 60_000 + 1;
        let mut tasks = Vec::new();
        for n in nodes.iter().cycle().take(30) {
            let n = n.clone();
            tasks.push(tokio::spawn(async move {
                n.take_quota(1, m, 7, 100).await.unwrap()
            }));
        }
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        assert_eq!(granted, 100, "30 asks of 7 share a limit of 100");
    }

    #[tokio::test]
    async fn nodes_bootstrapping_at_once_make_one_project_and_one_secret() {
        let url = fresh_database().await;
        let nodes = [node(&url).await, node(&url).await, node(&url).await];
        let mut tasks = Vec::new();
        for (i, n) in nodes.iter().cycle().take(12).enumerate() {
            let n = n.clone();
            tasks.push(tokio::spawn(async move {
                let created = n.create_project("default").await.unwrap();
                let secret = n
                    .setting_or_insert("secret", &format!("s{i}"))
                    .await
                    .unwrap();
                (created, secret)
            }));
        }
        let mut made = Vec::new();
        let mut secrets = std::collections::HashSet::new();
        for t in tasks {
            let (created, secret) = t.await.unwrap();
            made.extend(created);
            secrets.insert(secret);
        }
        assert_eq!(made.len(), 1, "exactly one node created it: {made:?}");
        assert_eq!(secrets.len(), 1, "all agree on one secret: {secrets:?}");
        let stored = nodes[2].get_setting("secret").await.unwrap().unwrap();
        assert!(secrets.contains(&stored));
        let all = nodes[1].list_projects().await.unwrap();
        assert_eq!(all, made);
        assert_eq!(
            nodes[0].project_of_key(&made[0].key).await.unwrap(),
            Some(made[0].id)
        );
    }

    #[tokio::test]
    async fn conflicts_are_retried_and_other_errors_are_not() {
        let s = super::super::testing::fresh_store().await;
        let raise = |code: &'static str| {
            format!("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{code}'; END $$")
        };
        for (code, fails, want_ok, want_calls) in [
            ("40001", 2, true, 3),
            ("40P01", 1, true, 2),
            ("40001", 99, false, ATTEMPTS),
            ("23505", 1, false, 1),
        ] {
            let calls = AtomicU32::new(0);
            let (calls, s, sql) = (&calls, &s, raise(code));
            let sql = &sql;
            let result = retry(|| async move {
                let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
                let c = s.conn().await?;
                if n <= fails {
                    c.batch_execute(sql).await?;
                }
                Ok(n)
            })
            .await;
            assert_eq!(result.is_ok(), want_ok, "{code}: {result:?}");
            assert_eq!(calls.load(Ordering::Relaxed), want_calls, "{code}");
            if let Err(e) = result {
                assert!(!e.is_busy(), "a database error is no 503: {e}");
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
        let e = PgStore::open(
            &url,
            8,
            Retention::default(),
            Arc::new(Metrics::default()),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(e.is_busy());
    }

    #[tokio::test]
    async fn connections_the_server_dropped_are_replaced() {
        let url = fresh_database().await;
        let s = node(&url).await;
        s.set_setting("k", "v").await.unwrap();
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let killed = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(
            !killed.is_empty(),
            "the store's pooled connection was dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The pool notices the closed connection and opens another; had the call raced
        // the close, it would be a 503 (Unavailable), never a 500.
        match s.get_setting("k").await {
            Ok(v) => assert_eq!(v.as_deref(), Some("v")),
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
        assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("v"));
        assert_eq!(s.setting_or_insert("k", "w").await.unwrap(), "v");
    }
}
