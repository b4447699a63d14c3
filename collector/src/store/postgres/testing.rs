//! For this backend's own tests: a fresh database on a test server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::PgStore;
use crate::metrics::Metrics;
use crate::store::Retention;

/// A new, empty database: on the server `ERRSCOPE_TEST_PG_URL` names (a URL whose user
/// may create databases), else on this process's own throwaway server (errscope-testkit).
pub(crate) async fn fresh_database() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let Ok(server) = std::env::var("ERRSCOPE_TEST_PG_URL") else {
        return tokio::task::spawn_blocking(|| {
            errscope_testkit::pg::Cluster::shared()
                .fresh_database()
                .expect("a database on the test server")
        })
        .await
        .expect("the test server's thread");
    };
    let name = format!(
        "errscope_unit_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        crate::time::now_ms()
    );
    let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("ERRSCOPE_TEST_PG_URL has no database part: {server}"),
    }
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
