//! Reliability scenario 8, the soak: agent processes at a steady rate against a collector
//! process for `ERRSCOPE_SOAK_SECS` (30 s; 600 s with `ERRSCOPE_LONG=1`). Memory of every
//! process stays flat, the database stays within what retention allows, nobody logs an
//! error or a warning, and every event arrives.

mod proc;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proc::{CollectorArgs, CollectorProc, Db, LoadProc};

const AGENTS: usize = 8;
/// Events per second per agent.
const RATE: u32 = 50;
/// Kinds of events, each one issue at the collector.
const KINDS: i64 = 4;
/// The collector's sample cap: retention applies after `KINDS * MAX_PER_ISSUE` events.
const MAX_PER_ISSUE: i64 = 20;
/// Memory may grow by a quarter from the first third of the run to the last, or by this
/// much for small processes (allocator arenas and SQLite's page caches warming up).
const COLLECTOR_RSS_FLOOR_KB: u64 = 16 * 1024;
const AGENT_RSS_FLOOR_KB: u64 = 8 * 1024;
/// What one remembered event id (`event_ids` row and index entry) may cost.
const DEDUP_BYTES_PER_ID: i64 = 256;
/// The collector checkpoints every 16,000 WAL pages: what the WAL may hold beyond that.
const WAL_PAGES: u64 = 16_000 + 4_000;

/// Resident set samples of one process: (seconds since the start, KiB).
#[derive(Default)]
struct Series(Vec<(f64, u64)>);

impl Series {
    /// Peaks of the first and the last third of `[0, span]`.
    fn thirds(&self, span: f64) -> (u64, u64) {
        let peak = |lo: f64, hi: f64| {
            self.0
                .iter()
                .filter(|(t, _)| *t >= lo && *t <= hi)
                .map(|(_, kb)| *kb)
                .max()
                .unwrap_or(0)
        };
        (peak(0.0, span / 3.0), peak(span * 2.0 / 3.0, span))
    }

    fn peak(&self) -> u64 {
        self.0.iter().map(|(_, kb)| *kb).max().unwrap_or(0)
    }

    fn last(&self) -> u64 {
        self.0.last().map_or(0, |(_, kb)| *kb)
    }

    /// Whether the last third stays within the first third's peak plus a quarter (at
    /// least `floor`).
    fn flat(&self, span: f64, floor: u64) -> bool {
        let (first, last) = self.thirds(span);
        first > 0 && last > 0 && last <= first + (first / 4).max(floor)
    }
}

/// One look at the database.
struct DbSample {
    secs: f64,
    /// Main file and WAL, bytes.
    file: u64,
    wal: u64,
    /// Pages in use, bytes: all, and those of the dedup table with its index.
    used: i64,
    dedup: i64,
    dedup_rows: i64,
    samples: i64,
}

impl DbSample {
    fn take(data: &std::path::Path, secs: f64) -> Self {
        let (file, wal) = proc::db_file_bytes(data);
        let db = Db::open(data);
        let by_name = db.bytes_by_name();
        let used = by_name.iter().map(|(_, b)| b).sum();
        let dedup = by_name
            .iter()
            .filter(|(n, _)| n == "event_ids" || n == "event_ids_key")
            .map(|(_, b)| b)
            .sum();
        DbSample {
            secs,
            file,
            wal,
            used,
            dedup,
            dedup_rows: db.int("SELECT count(*) FROM event_ids"),
            samples: db.int("SELECT count(*) FROM events"),
        }
    }

    /// What retention bounds: everything but the dedup ids.
    fn retained(&self) -> i64 {
        self.used - self.dedup
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

#[test]
fn a_steady_load_keeps_memory_and_database_flat_and_delivers_everything() {
    let secs = proc::env_u64("ERRSCOPE_SOAK_SECS").unwrap_or(if errscope_e2e::long_run() {
        600
    } else {
        30
    });
    let span = secs as f64;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = CollectorArgs {
        data: dir.path().join("collector"),
        max_events_per_issue: MAX_PER_ISSUE,
    };
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let collector =
        CollectorProc::start(&args, any, Duration::from_secs(60)).expect("the collector starts");
    let dsn = collector.dsn();
    let started = Instant::now();
    let mut agents: Vec<LoadProc> = (0..AGENTS)
        .map(|a| {
            LoadProc::start(
                &dsn,
                &dir.path().join(format!("agent{a}-outbox.db")),
                &[
                    "--rate".into(),
                    RATE.to_string(),
                    "--secs".into(),
                    secs.to_string(),
                    "--kinds".into(),
                    KINDS.to_string(),
                    "--name".into(),
                    "soak".into(),
                    "--ids".into(),
                    "--flush-secs".into(),
                    "120".into(),
                ],
            )
        })
        .collect();

    // Memory every second; the database about thirty times over the run.
    let mut collector_rss = Series::default();
    let mut agent_rss: Vec<Series> = (0..AGENTS).map(|_| Series::default()).collect();
    let mut db_samples = Vec::new();
    let db_every = (span / 30.0).max(1.0);
    let mut next_db = db_every;
    let load = Duration::from_secs(secs);
    while started.elapsed() < load {
        std::thread::sleep(Duration::from_secs(1).min(load.saturating_sub(started.elapsed())));
        let t = started.elapsed().as_secs_f64();
        if let Some(kb) = proc::rss_kb(collector.pid()) {
            collector_rss.0.push((t, kb));
        }
        for (a, agent) in agents.iter_mut().enumerate() {
            if !agent.exited()
                && let Some(kb) = proc::rss_kb(agent.pid())
            {
                agent_rss[a].0.push((t, kb));
            }
        }
        if t >= next_db {
            db_samples.push(DbSample::take(&args.data, t));
            next_db += db_every;
        }
    }

    let deadline = started + load + Duration::from_secs(180);
    let results: Vec<_> = agents.into_iter().map(|a| a.finish(deadline)).collect();
    let mut captured = HashSet::new();
    let mut peak_agent = 0;
    for (a, r) in results.iter().enumerate() {
        assert!(
            r.success,
            "agent {a} did not flush: {:?}\n{}",
            r.summary, r.stderr
        );
        assert_eq!(r.num("captured"), r.ids.len() as u64, "agent {a}");
        assert_eq!(
            r.num("sent"),
            r.num("captured"),
            "agent {a}: {:?}",
            r.summary
        );
        for zero in [
            "nil",
            "storm_counted",
            "retried",
            "evicted",
            "dropped_queue_full",
            "dropped_send_error",
            "outbox_events",
        ] {
            assert_eq!(r.num(zero), 0, "agent {a} {zero}: {:?}", r.summary);
        }
        assert!(r.stderr.trim().is_empty(), "agent {a} logged: {}", r.stderr);
        peak_agent = peak_agent.max(r.num("peak_rss_kb"));
        captured.extend(r.ids.iter().cloned());
    }
    let captured_n: usize = results.iter().map(|r| r.ids.len()).sum();
    assert_eq!(captured.len(), captured_n, "event ids are distinct");
    let delivered_secs = started.elapsed().as_secs_f64();
    let collector_final = proc::rss_kb(collector.pid()).unwrap_or(0);
    let collector_peak = proc::peak_rss_kb(collector.pid()).unwrap_or(0);

    // Everything arrived, once: the dedup table remembers every id of the last 24 h, and
    // the counters are exact although most samples are gone.
    let end = DbSample::take(&args.data, delivered_secs);
    let db = Db::open(&args.data);
    let remembered = db.event_ids("event_ids");
    let lost = captured.difference(&remembered).count();
    let counted = db.project_events();
    let duplicated = counted - remembered.len() as i64;
    let issues = db.int("SELECT count(*) FROM issues");
    let issue_counts = db.int("SELECT sum(count) FROM issues");
    drop(db);
    let (status, body) = collector.get("/api/0/projects/1/stats/");
    assert_eq!(status, 200, "{body}");
    let api: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
    let rejections = collector.rejections();
    let collector_log = collector.stderr();
    let page_size = {
        let db = Db::open(&args.data);
        db.int("PRAGMA page_size") as u64
    };
    let stopped = collector.stop(Duration::from_secs(60));
    let (file_after_stop, wal_after_stop) = proc::db_file_bytes(&args.data);

    let (c_first, c_last) = collector_rss.thirds(span);
    let over_time: Vec<String> = db_samples
        .iter()
        .step_by((db_samples.len() / 10).max(1))
        .map(|s| format!("{}@{:.0}s", mb(s.file + s.wal), s.secs))
        .collect();
    let rss_over_time: Vec<String> = collector_rss
        .0
        .iter()
        .step_by((collector_rss.0.len() / 10).max(1))
        .map(|(t, kb)| format!("{}@{t:.0}s", mb(kb * 1024)))
        .collect();
    let dedup_per_id = end.dedup / end.dedup_rows.max(1);
    eprintln!(
        "reliability: scenario=soak agents={AGENTS} rate_per_agent={RATE} secs={secs} \
         events={captured_n} events_per_s={:.0} delivered={} lost={lost} duplicated={duplicated} \
         collector_rss_mb(first_third_peak,last_third_peak,peak,final)={},{},{},{} \
         collector_rss_mb_over_time={} \
         agent_rss_mb(peak,max_final)={},{} db_plus_wal_mb_over_time={} \
         db_end_mb(file,wal,used,dedup)={},{},{},{} samples_kept={} dedup_bytes_per_event={} \
         db_after_stop_mb={}",
        captured_n as f64 / span,
        results.iter().map(|r| r.num("sent")).sum::<u64>(),
        mb(c_first * 1024),
        mb(c_last * 1024),
        mb(collector_peak * 1024),
        mb(collector_final * 1024),
        rss_over_time.join(","),
        mb(peak_agent * 1024),
        mb(agent_rss.iter().map(Series::last).max().unwrap_or(0) * 1024),
        over_time.join(","),
        mb(end.file),
        mb(end.wal),
        mb(end.used as u64),
        mb(end.dedup as u64),
        end.samples,
        dedup_per_id,
        mb(file_after_stop + wal_after_stop),
    );

    assert_eq!(lost, 0, "captured events the collector never stored");
    assert_eq!(duplicated, 0, "events counted twice");
    assert_eq!(counted, captured_n as i64);
    assert_eq!(issue_counts, counted);
    assert_eq!(api["events"].as_i64(), Some(counted), "{api}");
    assert_eq!(issues, KINDS, "one issue per kind");
    assert!(rejections.is_empty(), "{rejections:?}");
    assert!(
        collector_log.trim().is_empty(),
        "collector logged: {collector_log}"
    );
    assert!(stopped, "the collector stops cleanly");

    // Memory is flat.
    assert!(
        collector_rss.flat(span, COLLECTOR_RSS_FLOOR_KB),
        "collector RSS grew: {} KiB in the first third, {} KiB in the last: {:?}",
        c_first,
        c_last,
        collector_rss.0
    );
    for (a, series) in agent_rss.iter().enumerate() {
        let (first, last) = series.thirds(span);
        assert!(
            series.flat(span, AGENT_RSS_FLOOR_KB),
            "agent {a} RSS grew: {first} KiB in the first third, {last} KiB in the last (peak {})",
            series.peak()
        );
    }

    // The database: samples capped by retention at every look, the rest of what it keeps
    // flat, the dedup ids cheap, and the files no bigger than the pages in use plus the WAL
    // between checkpoints.
    for s in db_samples.iter().chain([&end]) {
        assert!(
            s.samples <= KINDS * MAX_PER_ISSUE,
            "{} samples kept at {:.0} s",
            s.samples,
            s.secs
        );
        assert!(
            s.file + s.wal <= s.used as u64 + page_size * WAL_PAGES + s.used as u64 / 4,
            "files of {} B for {} B in use at {:.0} s",
            s.file + s.wal,
            s.used,
            s.secs
        );
    }
    let retained = Series(
        db_samples
            .iter()
            .map(|s| (s.secs, s.retained() as u64 / 1024))
            .collect(),
    );
    let (r_first, r_last) = retained.thirds(span);
    assert!(
        retained.flat(span, 1024),
        "what retention bounds grew: {r_first} KiB in the first third, {r_last} KiB in the last"
    );
    assert_eq!(end.dedup_rows, counted, "one dedup id per event");
    assert!(
        dedup_per_id <= DEDUP_BYTES_PER_ID,
        "{dedup_per_id} B per remembered event id"
    );
}
