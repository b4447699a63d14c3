//! The agent shipping to the real collector over real sockets on 127.0.0.1.
//!
//! The agent is one per process: tests that run it in this process take [`AGENT`];
//! tests that kill or restart a host run `e2e-host` as a child process.
//! [`symbolication`]: a stripped host (the agent's child fixture) and its uploaded debug file.
//! [`sessions`]: release health, the child fixture's sessions ending in every way.

#[path = "../../agent/tests/fixtures/child_builds.rs"]
mod child_builds;
mod sessions;
mod symbolication;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use errscope::{Level, Options};
use errscope_e2e::{Collector, Fault, FaultProxy, outbox};

static AGENT: Mutex<()> = Mutex::new(());

fn agent_lock() -> std::sync::MutexGuard<'static, ()> {
    AGENT.lock().unwrap_or_else(PoisonError::into_inner)
}

fn options(dsn: Option<&str>, db: &std::path::Path) -> Options {
    let options = Options::new()
        .database(db)
        .attach_stacktrace(false)
        .storm(u32::MAX, Duration::from_secs(1))
        .send_timeout(Duration::from_secs(3));
    match dsn {
        Some(dsn) => options.dsn(dsn),
        None => options,
    }
}

/// Rows left in an outbox table (-1 if it cannot be read).
fn rows(db: &std::path::Path, table: &str) -> i64 {
    errscope_e2e::count_rows(db, table).unwrap_or(-1)
}

#[test]
fn storm_counts_follow_their_events_and_the_outbox_empties() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    let db = outbox(dir.path(), "storm");
    let guard =
        errscope::init(options(Some(&collector.dsn()), &db).storm(5, Duration::from_secs(60)));
    let ids: HashSet<_> = (0..50)
        .map(|_| {
            errscope::capture_error(&std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 5, "5 full events, the rest counted against them");
    assert!(guard.flush(Duration::from_secs(30)), "everything delivered");
    let stats = errscope::stats();
    drop(guard);
    assert!(ids.iter().all(|id| collector.has_event(id)));
    assert_eq!(
        collector.event_count(),
        50,
        "the counts make the total exact"
    );
    assert_eq!(stats.sent, 5);
    assert_eq!(stats.outbox_events, 0);
    assert_eq!(rows(&db, "events"), 0);
    assert_eq!(rows(&db, "counts"), 0);
}

#[test]
fn many_events_arrive_once_and_the_outbox_empties() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    let db = outbox(dir.path(), "many");
    let guard = errscope::init(options(Some(&collector.dsn()), &db));
    let ids: Vec<_> = (0..3000)
        .map(|i| errscope::capture_message(&format!("event {i}"), Level::Error))
        .collect();
    assert!(
        ids.iter().all(|id| !id.is_nil()),
        "nothing dropped on capture"
    );
    assert!(guard.flush(Duration::from_secs(60)), "everything delivered");
    let stats = errscope::stats();
    drop(guard);
    assert_eq!(stats.sent, 3000);
    assert_eq!(stats.retried, 0);
    assert_eq!(collector.event_count(), 3000);
    for id in ids.iter().step_by(97) {
        assert!(collector.has_event(&id.to_string()), "{id}");
    }
    assert_eq!(rows(&db, "events"), 0);
}

#[test]
fn what_a_previous_run_left_is_shipped_at_start() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = outbox(dir.path(), "previous");
    // A run without a DSN: events stay in the outbox.
    let guard = errscope::init(options(None, &db));
    let ids: Vec<_> = (0..120)
        .map(|i| errscope::capture_message(&format!("left {i}"), Level::Warning))
        .collect();
    assert!(guard.flush(Duration::from_secs(10)));
    drop(guard);
    assert_eq!(rows(&db, "events"), 120);
    let collector = Collector::start(&dir.path().join("collector"));
    let guard = errscope::init(options(Some(&collector.dsn()), &db));
    assert!(guard.flush(Duration::from_secs(30)), "the outbox drains");
    drop(guard);
    assert_eq!(collector.event_count(), 120);
    assert!(ids.iter().all(|id| collector.has_event(&id.to_string())));
    assert_eq!(rows(&db, "events"), 0);
}

#[test]
fn flush_and_guard_drop_are_bounded_when_nobody_answers() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    // Every request hangs: the proxy accepts and never answers.
    let proxy = FaultProxy::start(collector.addr, &[Fault::NeverAnswer; 50], None);
    let db = outbox(dir.path(), "hang");
    let guard = errscope::init(
        options(Some(&collector.dsn_via(proxy.addr)), &db)
            .send_timeout(Duration::from_secs(30))
            .shutdown_timeout(Duration::from_millis(800)),
    );
    for i in 0..20 {
        errscope::capture_message(&format!("stuck {i}"), Level::Error);
    }
    let started = Instant::now();
    assert!(
        !guard.flush(Duration::from_millis(700)),
        "nothing can be delivered"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "flush took {took:?}");
    let started = Instant::now();
    drop(guard);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "guard drop took {took:?}");
    // What was not delivered stays for the next start.
    assert_eq!(rows(&db, "events"), 20);
    assert_eq!(collector.event_count(), 0);
    proxy.stop();
}

#[test]
fn every_network_fault_is_retried_and_the_poisoned_event_reported() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    let poison = "POISONED-7f3a";
    let proxy = FaultProxy::start(
        collector.addr,
        &[
            Fault::ResetMidRequest,
            Fault::NeverAnswer,
            Fault::Unavailable,
            Fault::RateLimited,
            Fault::LoseAnswer,
        ],
        Some(poison),
    );
    let db = outbox(dir.path(), "faults");
    let guard = errscope::init(options(Some(&collector.dsn_via(proxy.addr)), &db));
    let mut good = Vec::new();
    for i in 0..300 {
        good.push(errscope::capture_message(
            &format!("good {i}"),
            Level::Error,
        ));
    }
    let poisoned = errscope::capture_message(&format!("{poison} event"), Level::Error);
    for i in 300..400 {
        good.push(errscope::capture_message(
            &format!("good {i}"),
            Level::Error,
        ));
    }
    assert!(
        guard.flush(Duration::from_secs(60)),
        "delivered through the faults; proxy log: {:#?}",
        proxy.log()
    );
    assert_eq!(proxy.faults_left(), 0, "every fault was injected");
    // Idle keep-alive connections are closed by the proxy after 1 s: the next batch
    // must survive finding its pooled connection dead.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 400..500 {
        good.push(errscope::capture_message(
            &format!("good {i}"),
            Level::Error,
        ));
    }
    assert!(guard.flush(Duration::from_secs(30)), "{:#?}", proxy.log());
    let stats = errscope::stats();
    drop(guard);
    let timed = proxy.timed_log();
    let log = proxy.log();
    assert!(
        log.iter().any(|l| l == "closed an idle connection"),
        "{log:#?}"
    );
    // Retry-After: 2 is honored. Until the first 2xx the agent has one request in
    // flight (it does not know the server yet), and every fault comes before that: the
    // next request after the 429 is a new one and must wait.
    let limited = timed
        .iter()
        .position(|(_, l)| l == "answered 429")
        .expect("a 429 was answered");
    let next = timed[limited..]
        .iter()
        .find(|(_, l)| l == "request")
        .expect("a request after the 429");
    assert!(
        next.0 >= timed[limited].0 + Duration::from_millis(1900),
        "sent during the rate limit: {timed:#?}"
    );
    // Exactly once: the collector holds every good event and nothing else (the batch
    // whose answer was lost was stored once although sent twice).
    assert_eq!(collector.event_count(), good.len() as u64, "{log:#?}");
    for id in good.iter().step_by(7) {
        assert!(collector.has_event(&id.to_string()), "{id}");
    }
    assert!(!collector.has_event(&poisoned.to_string()));
    assert_eq!(
        collector.discarded("send_error"),
        1,
        "{}",
        collector.stats()
    );
    assert_eq!(stats.sent, good.len() as u64);
    assert_eq!(stats.dropped_send_error, 1);
    assert!(stats.retried >= 5, "{stats:?}");
    assert!(!stats.delivery_failing);
    assert_eq!(rows(&db, "events"), 0);
    assert_eq!(rows(&db, "discards"), 0, "the client report was delivered");
    proxy.stop();
}

#[test]
fn a_sentry_server_gets_one_event_per_envelope() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    let proxy = FaultProxy::sentry_like(collector.addr);
    let db = outbox(dir.path(), "sentry");
    let guard = errscope::init(options(Some(&collector.dsn_via(proxy.addr)), &db));
    let ids: Vec<_> = (0..40)
        .map(|i| errscope::capture_message(&format!("to sentry {i}"), Level::Error))
        .collect();
    assert!(guard.flush(Duration::from_secs(30)), "{:#?}", proxy.log());
    drop(guard);
    let log = proxy.log();
    let sizes: Vec<&str> = log
        .iter()
        .filter_map(|l| l.strip_prefix("events: "))
        .collect();
    assert_eq!(sizes.len(), 40, "{log:#?}");
    assert!(sizes.iter().all(|n| *n == "1"), "{log:#?}");
    assert_eq!(collector.event_count(), 40);
    assert!(ids.iter().all(|id| collector.has_event(&id.to_string())));
    proxy.stop();
}

#[test]
fn an_https_dsn_uses_tls_and_a_failed_handshake_is_retried() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    // The collector speaks plain HTTP: the TLS handshake fails, which is a network
    // failure like any other (and proves the TLS stack and its crypto provider are there).
    let dsn = format!("https://{}@{}/1", collector.key, collector.addr);
    let db = outbox(dir.path(), "https");
    let guard = errscope::init(options(Some(&dsn), &db));
    errscope::capture_message("over tls", Level::Error);
    let deadline = Instant::now() + Duration::from_secs(20);
    while errscope::stats().retried == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = errscope::stats();
    assert!(!guard.flush(Duration::from_millis(200)));
    drop(guard);
    assert!(stats.retried >= 1 && stats.delivery_failing, "{stats:?}");
    assert_eq!(stats.sent, 0);
    assert_eq!(rows(&db, "events"), 1, "the event stays for later");
    assert_eq!(collector.event_count(), 0);
}

#[test]
fn a_wrong_key_is_retried_not_dropped() {
    let _lock = agent_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    // 401 is a configuration problem, not a bad event: keep everything.
    let dsn = format!("http://not-a-key@{}/1", collector.addr);
    let db = outbox(dir.path(), "wrong-key");
    let guard = errscope::init(options(Some(&dsn), &db));
    for i in 0..3 {
        errscope::capture_message(&format!("unauthorized {i}"), Level::Error);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while errscope::stats().retried == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = errscope::stats();
    drop(guard);
    assert!(stats.retried >= 1 && stats.delivery_failing, "{stats:?}");
    assert_eq!((stats.sent, stats.dropped_send_error), (0, 0), "{stats:?}");
    assert_eq!(rows(&db, "events"), 3);
    assert_eq!(rows(&db, "discards"), 0);
}

fn host() -> Command {
    Command::new(env!("CARGO_BIN_EXE_e2e-host"))
}

#[test]
fn a_host_without_tokio_ships() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    let db = outbox(dir.path(), "plain");
    let out = host()
        .args([
            "plain",
            &collector.dsn(),
            db.to_str().expect("utf8"),
            "25",
            "20",
        ])
        .output()
        .expect("run host");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sent=25 "), "{stdout}");
    assert_eq!(collector.event_count(), 25);
}

#[test]
fn a_collector_down_at_start_gets_everything_when_it_comes_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nobody listens on yet: reserved by binding port 0, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let data = dir.path().join("collector");
    // The DSN needs the project key, which the collector makes on its first start.
    let key = {
        let c = Collector::start(&data);
        let key = c.key.clone();
        c.stop();
        key
    };
    let db = outbox(dir.path(), "down");
    let child = host()
        .args([
            "plain",
            &format!("http://{key}@{addr}/1"),
            db.to_str().expect("utf8"),
            "50",
            "90",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run host");
    std::thread::sleep(Duration::from_secs(30));
    let mut collector = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while collector.is_none() && Instant::now() < deadline {
        collector = Collector::start_on(&data, addr).ok();
        if collector.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let collector = collector.expect("the collector starts on its port again");
    let out = child.wait_with_output().expect("host exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("sent=50 "), "{stdout}");
    assert_eq!(collector.event_count(), 50);
    // One line when delivery started failing, one when it recovered; not one per retry.
    let failing = stderr.lines().filter(|l| l.contains("is failing")).count();
    let recovered = stderr
        .lines()
        .filter(|l| l.contains("recovered after"))
        .count();
    assert_eq!((failing, recovered), (1, 1), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn a_host_killed_mid_burst_delivers_what_it_committed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&dir.path().join("collector"));
    let db = outbox(dir.path(), "burst");
    let db_arg = db.to_str().expect("utf8");
    let mut child = host()
        .args(["burst", &collector.dsn(), db_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run host");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut ids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Kill it once some events were delivered and more keep coming.
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(id) = line
            .strip_prefix("id ")
            .filter(|id| !id.bytes().all(|b| b == b'0'))
        {
            ids.insert(id.to_owned());
        }
        // ... and the outbox holds committed events not confirmed yet.
        if ids.len() >= 1500
            && ids.len() % 100 == 0
            && collector.event_count() > 200
            && errscope_e2e::count_rows(&db, "events").unwrap_or(0) > 0
        {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The ids it printed that were still in the pipe.
    for line in lines.map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("id ") {
            ids.insert(id.to_owned());
        }
    }
    let before = collector.event_count();
    let left = errscope_e2e::event_ids(&db);
    assert!(before > 0, "some were delivered before the kill");
    // A restart of the host ships what was committed and not yet confirmed.
    let out = host()
        .args(["drain", &collector.dsn(), db_arg, "30"])
        .output()
        .expect("run host");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for id in &left {
        assert!(collector.has_event(id), "committed event {id} arrived");
    }
    // Each at most once: the collector's count is the number of distinct ids it holds.
    let held = ids.iter().filter(|id| collector.has_event(id)).count() as u64;
    assert_eq!(collector.event_count(), held);
    // Events stored by the collector but not yet deleted from the outbox at the kill
    // are in both `before` and `left`: resent, stored once.
    assert!(
        held >= before.max(left.len() as u64),
        "{held} {before} {}",
        left.len()
    );
    assert_eq!(errscope_e2e::count_rows(&db, "events"), Some(0));
}
