//! Reliability scenario 2: the collector process is SIGKILLed and restarted on the same
//! port and data directory, at seeded random moments, while agent processes keep
//! capturing. The collector answers 200 only after a commit and the agents delete only
//! after a 2xx, so every captured event must end up stored exactly once.
//!
//! SHORT by default; `ERRSCOPE_LONG=1` runs more events and restarts over a longer load.
//! `ERRSCOPE_SEED` repeats a run's kill moments.

mod proc;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use errscope_e2e::XorShift;
use proc::{CollectorArgs, CollectorProc, Db, LoadProc};

/// How hard and how long.
struct Plan {
    agents: usize,
    /// Events per second per agent.
    rate: u32,
    load: Duration,
    restarts: usize,
}

impl Plan {
    fn new() -> Self {
        if errscope_e2e::long_run() {
            Plan {
                agents: 8,
                rate: 150,
                load: Duration::from_secs(240),
                restarts: 24,
            }
        } else {
            Plan {
                agents: 8,
                rate: 100,
                load: Duration::from_secs(25),
                restarts: 5,
            }
        }
    }

    /// One kill per slot of the load, at a random moment inside it, and how long the
    /// collector stays down after it.
    fn kills(&self, rng: &mut XorShift) -> Vec<(Duration, Duration)> {
        // Leave the first and last second of the load alone: the last restart is up
        // before the agents stop capturing.
        let window = self.load.saturating_sub(Duration::from_secs(3));
        let slot = window / self.restarts as u32;
        (0..self.restarts as u32)
            .map(|i| {
                let start = Duration::from_secs(1) + slot * i;
                let at = rng.between(start, start + slot.mul_f64(0.6));
                let down = rng.between(Duration::ZERO, Duration::from_millis(1500));
                (at, down)
            })
            .collect()
    }
}

#[test]
fn collector_killed_and_restarted_under_load_loses_and_duplicates_nothing() {
    let plan = Plan::new();
    let seed = errscope_e2e::seed();
    let mut rng = XorShift::new(seed);
    let kills = plan.kills(&mut rng);
    eprintln!("restarts: seed={seed} kills (at, down): {kills:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let args = CollectorArgs {
        data: dir.path().join("collector"),
        // Keep every sample: the test looks each event up.
        max_events_per_issue: 1_000_000_000,
    };
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut collector =
        CollectorProc::start(&args, any, Duration::from_secs(60)).expect("the collector starts");
    let addr = collector.addr;
    let dsn = collector.dsn();
    let started = Instant::now();
    let load_secs = plan.load.as_secs_f64().to_string();
    let agents: Vec<LoadProc> = (0..plan.agents)
        .map(|a| {
            LoadProc::start(
                &dsn,
                &dir.path().join(format!("agent{a}-outbox.db")),
                &[
                    "--rate".into(),
                    plan.rate.to_string(),
                    "--secs".into(),
                    load_secs.clone(),
                    "--kinds".into(),
                    "8".into(),
                    "--name".into(),
                    "restarts".into(),
                    "--ids".into(),
                    "--flush-secs".into(),
                    "120".into(),
                ],
            )
        })
        .collect();

    let mut stderr = Vec::new();
    // Retries of events already stored (their answer was lost to a kill), as each run of
    // the collector counted them until just before it was killed: a lower bound.
    let mut deduped = 0;
    for &(at, down) in &kills {
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        deduped += collector.metric("errscope_events_duplicate_total");
        stderr.push(collector.stderr());
        collector.kill();
        std::thread::sleep(down);
        collector = CollectorProc::restart(&args, addr, Duration::from_secs(30));
    }

    // The agents stop capturing, flush what is left and exit.
    let deadline = started + plan.load + Duration::from_secs(180);
    let results: Vec<_> = agents.into_iter().map(|a| a.finish(deadline)).collect();
    let secs = started.elapsed().as_secs_f64();

    let mut captured = HashSet::new();
    let mut delivered = 0;
    let mut retried = 0;
    for (a, r) in results.iter().enumerate() {
        let db = dir.path().join(format!("agent{a}-outbox.db"));
        assert!(
            r.success,
            "agent {a} did not flush: {:?}\n{}",
            r.summary, r.stderr
        );
        assert_eq!(
            r.value("flushed"),
            Some("true"),
            "agent {a}: {:?}",
            r.summary
        );
        assert_eq!(r.num("captured"), r.ids.len() as u64, "agent {a}");
        for zero in [
            "nil",
            "storm_counted",
            "evicted",
            "dropped_queue_full",
            "dropped_send_error",
            "outbox_events",
        ] {
            assert_eq!(r.num(zero), 0, "agent {a} {zero}: {:?}", r.summary);
        }
        assert_eq!(
            r.num("sent"),
            r.num("captured"),
            "agent {a}: {:?}",
            r.summary
        );
        assert_eq!(
            errscope_e2e::count_rows(&db, "events"),
            Some(0),
            "agent {a}"
        );
        // Only the lines about delivery failing and recovering.
        for line in proc::lines_of(&r.stderr) {
            assert!(
                line.contains("is failing") || line.contains("recovered after"),
                "agent {a}: {line}"
            );
        }
        delivered += r.num("sent");
        retried += r.num("retried");
        captured.extend(r.ids.iter().cloned());
    }
    let captured_n: usize = results.iter().map(|r| r.ids.len()).sum();
    assert_eq!(captured.len(), captured_n, "event ids are distinct");

    // Every id the agents captured is stored, once.
    let db = Db::open(&args.data);
    let stored = db.event_ids("events");
    let lost: Vec<_> = captured.difference(&stored).collect();
    let unknown: Vec<_> = stored.difference(&captured).collect();
    let counted = db.project_events();
    let issue_counts = db.int("SELECT sum(count) FROM issues WHERE project_id = 1");
    let rows = db.int("SELECT count(*) FROM events WHERE project_id = 1");
    let duplicated = counted - stored.len() as i64;
    let (status, body) = collector.get("/api/0/projects/1/stats/");
    assert_eq!(status, 200, "{body}");
    let api: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
    deduped += collector.metric("errscope_events_duplicate_total");
    stderr.push(collector.stderr());
    assert!(collector.stop(Duration::from_secs(30)), "a clean stop");

    eprintln!(
        "reliability: scenario=collector-restarts agents={} rate_per_agent={} load_secs={} \
         restarts={} seed={seed} captured={captured_n} delivered={delivered} stored={} \
         lost={} duplicated={duplicated} deduped_retries_min={deduped} agent_retries={retried} \
         secs={secs:.1}",
        plan.agents,
        plan.rate,
        plan.load.as_secs(),
        kills.len(),
        stored.len(),
        lost.len(),
    );
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(unknown.is_empty(), "stored but never captured: {unknown:?}");
    assert_eq!(rows, captured_n as i64);
    assert_eq!(duplicated, 0, "events counted twice");
    assert_eq!(issue_counts, counted);
    assert_eq!(api["events"].as_i64(), Some(counted), "{api}");
    assert_eq!(delivered, captured_n as u64);
    for (i, text) in stderr.iter().enumerate() {
        assert!(text.trim().is_empty(), "collector run {i} wrote: {text}");
    }
}
