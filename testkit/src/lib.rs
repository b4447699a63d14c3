//! errscope-testkit: what the test suites need beyond the crates under test: [`pg`], a
//! throwaway PostgreSQL server per test process, and [`store`], which picks the store a
//! collector under test runs on, so one suite runs on both.
//!
//! ```no_run
//! use errscope_testkit::pg::Cluster;
//! // One server for the whole test process (it dies with the process, even on SIGKILL).
//! let url = Cluster::shared().fresh_database()?;
//! // postgres://postgres@127.0.0.1:PORT/errscope_1: an empty database of its own.
//! # Ok::<(), errscope_testkit::pg::Error>(())
//! ```
//!
//! The `errscope-pg` binary starts one, prints its URL and keeps it up until its standard
//! input closes or it is told to stop (SIGTERM, SIGINT): for the dashboard's node tests and
//! manual runs.

#![warn(missing_docs)]

pub mod pg;
pub mod store;
