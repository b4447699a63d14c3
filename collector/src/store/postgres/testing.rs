//! For this backend's own tests: a fresh database on the test server.
//!
//! The server is named by `ERRSCOPE_TEST_PG_URL` (a URL whose user may create databases,
//! e.g. `postgres://postgres@127.0.0.1:5433/postgres`); `scripts/test` starts one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::PgStore;
use crate::metrics::Metrics;
use crate::store::Retention;

/// The test server's URL; panics, saying what to do, when it is not set.
pub(crate) fn server_url() -> String {
    std::env::var("ERRSCOPE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("ERRSCOPE_TEST_PG_URL is not set: run the tests with scripts/test, which starts PostgreSQL")
    })
}

/// A new, empty database on the test server; returns its URL.
pub(crate) async fn fresh_database() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = server_url();
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
