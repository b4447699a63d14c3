//! Release health: one Sentry session per run, opened by `init` (`ok`), ended `exited`
//! when the [`Guard`](crate::Guard) drops (`crashed` if it drops while panicking).
//!
//! The open session lives in the outbox (`open_sessions`), its error count and panic flag
//! noted as the writer commits. A run that died without ending it is found by the next
//! `init`: `crashed` if it left a crash record or recorded a panic, else `abnormal`. The
//! run's first error sends an update at once (`ok`, `errors` ≥ 1), as Sentry's SDKs do, so
//! the server counts the session errored while the process runs. Every update carries the
//! installation's `did` (the outbox's install id). Updates wait in `session_updates` and go
//! out with the shipper's other items.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::shared::Shared;
use crate::store::{OpenSession, SqliteStore};
use crate::warn;

/// What the writer thread does for sessions.
pub(crate) enum SessionOp {
    /// Ends what dead runs left (`crashed_runs`: their run ids with a crash record),
    /// then opens this run's session.
    Start { crashed_runs: Vec<String> },
    /// Ends this run's session with this status.
    End(&'static str),
}

/// This run's open session as the writer last noted it.
#[derive(Default)]
pub(crate) struct Tracker {
    open: Option<OpenSession>,
    /// The installation's distinct id (see `SqliteStore::install_id`).
    did: Option<String>,
}

/// An update's place among the updates of one session (`seq`): the server keeps the one
/// with the highest (a final status wins over any `ok` regardless).
const SEQ_INIT: u64 = 0;
const SEQ_FIRST_ERROR: u64 = 1;
const SEQ_FINAL: u64 = 2;

/// Whether this run tracks a session: sessions on and a release set (a session without a
/// release means nothing to a server).
pub(crate) fn enabled(shared: &Shared) -> bool {
    shared.options.sessions && shared.options.release.is_some()
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Epoch seconds as RFC 3339 UTC with milliseconds, as Sentry's session protocol wants.
pub(crate) fn rfc3339(epoch: f64) -> String {
    let ms = (epoch * 1000.0) as i64;
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// One session update: what it says of a session at one moment.
struct Update<'a> {
    init: bool,
    status: &'a str,
    errors: u64,
    seq: u64,
    now: f64,
}

/// A session update's JSON (Sentry's `session` item).
fn update(s: &OpenSession, did: Option<&str>, u: &Update<'_>) -> Vec<u8> {
    let Update {
        init,
        status,
        errors,
        seq,
        now,
    } = *u;
    let mut attrs = json!({ "release": s.release });
    if let Some(env) = &s.environment {
        attrs["environment"] = json!(env);
    }
    let mut body = json!({
        "sid": s.sid,
        "init": init,
        "started": rfc3339(s.started),
        "timestamp": rfc3339(now),
        "duration": (now - s.started).max(0.0),
        "status": status,
        "errors": errors,
        "seq": seq,
        "attrs": attrs,
    });
    if let Some(did) = did {
        body["did"] = json!(did);
    }
    body.to_string().into_bytes()
}

impl Tracker {
    /// Runs one operation on the outbox; a failure costs the session, never the host.
    pub(crate) fn apply(&mut self, shared: &Shared, store: &mut SqliteStore, op: SessionOp) {
        let r = match op {
            SessionOp::Start { crashed_runs } => self.start(shared, store, &crashed_runs),
            SessionOp::End(status) => self.end(shared, store, status),
        };
        if let Err(e) = r {
            warn(format_args!(
                "cannot record the release-health session: {e}"
            ));
        }
    }

    fn start(
        &mut self,
        shared: &Shared,
        store: &mut SqliteStore,
        crashed_runs: &[String],
    ) -> Result<(), crate::store::StoreError> {
        let now = crate::time::now_epoch();
        let database = shared.options.database_path();
        // Without an install id the sessions go without `did`; they still count.
        self.did = store
            .install_id()
            .map_err(|e| warn(format_args!("cannot read the install id: {e}")))
            .ok();
        let did = self.did.as_deref();
        let mut closed = Vec::new();
        for s in store.open_sessions()? {
            // Another process sharing the outbox, still running, keeps its session.
            if s.run_id == shared.run_id || crate::crash_report::run_alive(&database, &s.run_id) {
                continue;
            }
            let status = if s.panicked || crashed_runs.contains(&s.run_id) {
                "crashed"
            } else {
                "abnormal"
            };
            let payload = update(
                &s,
                did,
                &Update {
                    init: false,
                    status,
                    errors: s.errors,
                    seq: SEQ_FINAL,
                    now,
                },
            );
            closed.push((s.sid.clone(), payload));
        }
        let open = enabled(shared).then(|| OpenSession {
            sid: crate::rand::uuid_v4().simple().to_string(),
            run_id: shared.run_id.clone(),
            started: now,
            errors: 0,
            panicked: false,
            release: shared.options.release.clone().unwrap_or_default(),
            environment: shared.options.environment.clone(),
        });
        let first = open.as_ref().map(|s| {
            let init = Update {
                init: true,
                status: "ok",
                errors: 0,
                seq: SEQ_INIT,
                now,
            };
            (s, update(s, did, &init))
        });
        store.session_changes(&closed, first)?;
        self.open = open;
        Ok(())
    }

    /// After each commit: notes new errors and a recorded panic on the open session, so a
    /// run that dies next leaves them for the next `init`. The first errors of the run
    /// also queue an update (`ok` with the count so far, usually 1); later ones wait for
    /// the final update.
    pub(crate) fn note(&mut self, shared: &Shared, store: &mut SqliteStore) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let c = &shared.counters;
        let errors = c.session_errors.load(Ordering::Relaxed);
        let panicked = c.panics.load(Ordering::Relaxed) > 0;
        if errors == open.errors && panicked == open.panicked {
            return;
        }
        let first_error = (open.errors == 0 && errors > 0).then(|| {
            let u = Update {
                init: false,
                status: "ok",
                errors,
                seq: SEQ_FIRST_ERROR,
                now: crate::time::now_epoch(),
            };
            update(open, self.did.as_deref(), &u)
        });
        match store.note_session(&open.sid, errors, panicked, first_error.as_deref()) {
            Ok(()) => {
                open.errors = errors;
                open.panicked = panicked;
            }
            Err(e) => warn(format_args!("cannot note the session's errors: {e}")),
        }
    }

    fn end(
        &mut self,
        shared: &Shared,
        store: &mut SqliteStore,
        status: &'static str,
    ) -> Result<(), crate::store::StoreError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let errors = shared.counters.session_errors.load(Ordering::Relaxed);
        let u = Update {
            init: false,
            status,
            errors,
            seq: SEQ_FINAL,
            now: crate::time::now_epoch(),
        };
        let payload = update(&open, self.did.as_deref(), &u);
        store.session_changes(&[(open.sid.clone(), payload)], None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;
    use crate::store::Bounds;

    fn shared(db: &std::path::Path, run_id: &str) -> Shared {
        let options = Options::new()
            .database(db)
            .release("shop@2")
            .environment("prod");
        Shared {
            in_app: crate::trace::InApp::default(),
            storm: crate::storm::Storm::new(5, std::time::Duration::from_secs(10)),
            counters: crate::shared::Counters::default(),
            server_name: None,
            scrubber: crate::scrub::Scrubber::new(&options.scrub_keys),
            init_trace: crate::trace::RawTrace::default(),
            run_id: run_id.to_owned(),
            options,
        }
    }

    fn updates(store: &SqliteStore) -> Vec<serde_json::Value> {
        store
            .pending_session_updates(100)
            .expect("updates")
            .iter()
            .map(|(_, p)| serde_json::from_slice(p).expect("json"))
            .collect()
    }

    #[test]
    fn the_next_start_ends_a_dead_runs_session_abnormal_or_crashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("outbox.db");
        let bounds = Bounds {
            max_events: 100,
            max_bytes: 1 << 20,
        };
        let mut store = SqliteStore::open(&db, bounds, false).expect("open");
        // Run a opens its session and counts three errors, then vanishes.
        let a = shared(&db, "run-a");
        let mut ta = Tracker::default();
        ta.apply(
            &a,
            &mut store,
            SessionOp::Start {
                crashed_runs: vec![],
            },
        );
        a.counters.session_errors.store(3, Ordering::Relaxed);
        ta.note(&a, &mut store);
        assert_eq!(store.open_sessions().expect("open")[0].errors, 3);
        // Later errors update the open session, and queue nothing until its end.
        a.counters.session_errors.store(4, Ordering::Relaxed);
        ta.note(&a, &mut store);
        // Run b ends it abnormal (no crash record, no panic), and dies by a signal.
        let b = shared(&db, "run-b");
        Tracker::default().apply(
            &b,
            &mut store,
            SessionOp::Start {
                crashed_runs: vec![],
            },
        );
        // Run c: b left a crash record.
        let c = shared(&db, "run-c");
        let mut tc = Tracker::default();
        tc.apply(
            &c,
            &mut store,
            SessionOp::Start {
                crashed_runs: vec!["run-b".into()],
            },
        );
        tc.apply(&c, &mut store, SessionOp::End("exited"));
        let all = updates(&store);
        let did = all[0]["did"].as_str().expect("a did").to_owned();
        assert_eq!(did.len(), 32, "{did}");
        assert!(
            all.iter().all(|u| u["did"] == did.as_str()),
            "one installation, one did: {all:#?}"
        );
        let seqs: Vec<u64> = all.iter().filter_map(|u| u["seq"].as_u64()).collect();
        assert_eq!(seqs, [0, 1, 2, 0, 2, 0, 2]);
        let got: Vec<(bool, String, u64)> = all
            .iter()
            .map(|u| {
                assert_eq!(
                    u["attrs"],
                    serde_json::json!({"release": "shop@2", "environment": "prod"})
                );
                (
                    u["init"].as_bool().unwrap_or(false),
                    u["status"].as_str().unwrap_or("").to_owned(),
                    u["errors"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        let expect = [
            (true, "ok", 0),
            (false, "ok", 3),
            (false, "abnormal", 4),
            (true, "ok", 0),
            (false, "crashed", 0),
            (true, "ok", 0),
            (false, "exited", 0),
        ];
        let expect: Vec<(bool, String, u64)> = expect
            .iter()
            .map(|(i, s, e)| (*i, (*s).to_owned(), *e))
            .collect();
        assert_eq!(got, expect);
        assert!(store.open_sessions().expect("open").is_empty());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_036_645.25), "2026-11-30T11:04:05.250Z");
    }
}
