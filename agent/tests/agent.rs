//! Integration tests of the agent: real SQLite files in temp dirs, real sockets, real
//! child processes.

mod util;

use std::error::Error;
use std::fmt;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use util::{Outbox, contains, functions, options, serial};

/// An upper bound, not a timing: the first event of a test binary loads its debug info,
/// which can take seconds on a busy machine.
const FLUSH: Duration = Duration::from_secs(120);

/// An error of the host application wrapping the I/O error of its LDAP socket.
#[derive(Debug)]
struct LdapError {
    op: &'static str,
    source: io::Error,
}

impl fmt::Display for LdapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ldap {} failed", self.op)
    }
}

impl Error for LdapError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Closes the socket with an RST: SO_LINGER on with a zero timeout.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid open socket fd, a pointer to a live `linger` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_LINGER");
    drop(stream);
}

/// A read from a socket whose loopback peer reset the connection.
fn connection_reset() -> io::Error {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    reset(server);
    // An idle client connection whose server went away: the next read sees the RST
    // (a write first would consume the error and leave the read an EOF).
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Err(e) => e,
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
}

#[inline(never)]
fn ldap_bind() -> Result<(), LdapError> {
    Err(LdapError {
        op: "bind",
        source: connection_reset(),
    })
}

#[test]
fn econnreset_from_a_real_socket_is_stored_with_kind_and_os_code() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let err = ldap_bind().expect_err("the peer reset the socket");
    assert_eq!(err.source.kind(), io::ErrorKind::ConnectionReset);
    let id = errscope::capture_error(&err);
    assert!(!id.is_nil());
    assert!(guard.flush(FLUSH));

    let event = outbox.event(&id.to_string()).expect("event stored");
    assert_eq!(event["level"], "error");
    assert_eq!(event["platform"], "native");
    assert_eq!(event["release"], "shop@1.4.0");
    assert_eq!(event["environment"], "test");
    assert!(event["server_name"].is_string());
    assert!(event["timestamp"].as_f64().is_some_and(|t| t > 1.7e9));
    let values = event["exception"]["values"].as_array().expect("values");
    // Sentry's order: the root cause first, the captured error last (with the stack).
    assert_eq!(values.len(), 2, "{values:#?}");
    let outer = &values[1];
    assert_eq!(outer["type"], "agent::LdapError");
    assert_eq!(outer["value"], "ldap bind failed");
    assert_eq!(
        outer["mechanism"],
        json!({"type": "capture_error", "handled": true})
    );
    let io = &values[0];
    assert_eq!(io["type"], "std::io::Error");
    assert!(
        io["value"]
            .as_str()
            .is_some_and(|v| v.contains("(os error 104)")),
        "{io}"
    );
    assert_eq!(io["mechanism"]["handled"], true);
    assert_eq!(io["mechanism"]["data"]["io_kind"], "ConnectionReset");
    assert_eq!(io["mechanism"]["data"]["os_code"], 104);
    assert_eq!(
        io["mechanism"]["meta"]["errno"],
        json!({"number": 104, "name": "ECONNRESET"})
    );

    // The stack: oldest first, this test's frame in it and in-app, no agent frame on top,
    // hashes stripped.
    assert!(io.get("stacktrace").is_none());
    let frames = outer["stacktrace"]["frames"].as_array().expect("frames");
    let names = functions(outer);
    let top = frames.last().expect("a frame");
    assert_eq!(
        top["function"], "agent::econnreset_from_a_real_socket_is_stored_with_kind_and_os_code",
        "{names:#?}"
    );
    assert_eq!(top["in_app"], true);
    assert!(top["lineno"].as_u64().is_some_and(|l| l > 0));
    assert!(
        top["filename"]
            .as_str()
            .is_some_and(|f| f.ends_with("tests/agent.rs")),
        "{top}"
    );
    assert!(
        top["instruction_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("0x"))
    );
    assert!(
        names.iter().all(|n| !n.starts_with("errscope::capture")),
        "{names:#?}"
    );
    assert!(
        names
            .iter()
            .all(|n| !n.contains("::h") || !n.ends_with(|c: char| c.is_ascii_hexdigit()))
    );
    assert!(
        frames.iter().any(|f| f["in_app"] == false),
        "std frames are not in-app"
    );
    for key in ["os", "runtime", "thread"] {
        assert!(event["contexts"][key].is_object(), "context {key}: {event}");
    }
    assert_eq!(event["sdk"]["name"], "errscope");
    drop(guard);
}

#[inline(never)]
async fn load_order(id: u32) -> Result<u32, LdapError> {
    tokio::task::yield_now().await;
    errscope::add_breadcrumb(errscope::Breadcrumb::new("looking up order").category("db"));
    let err = LdapError {
        op: "search",
        source: io::Error::from(io::ErrorKind::TimedOut),
    };
    // A nested call deep below the handler reports and carries the request's domain.
    errscope::with_domain(|d| d.set_tag("order_id", id));
    errscope::capture_error(&err);
    Err(err)
}

#[test]
fn domain_data_reaches_spawned_panics_and_nested_captures() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let domain = errscope::Domain::new("GET /orders/:id").tag("request_id", "r-42");
    let result: Result<(), errscope::DomainPanic> = rt.block_on(domain.run(async {
        let spawned = errscope::spawn(async {
            // A nested domain inherits the request's tags.
            let inner = errscope::Domain::new("pricing").tag("step", "tax");
            inner
                .run(async { panic!("tax table missing") })
                .await
                .expect_err("the panic is caught")
        });
        let inner_panic = spawned.await.expect("the task itself returns");
        let _ = load_order(7).await;
        let plain = errscope::spawn(async { panic!("spawned task died") });
        assert!(plain.await.expect_err("panicked").is_panic());
        assert!(!inner_panic.event_id.is_nil());
        panic!("handler bug: {}", inner_panic.message);
    }));
    let panic = result.expect_err("run returns the panic");
    assert_eq!(panic.message, "handler bug: tax table missing");
    assert_eq!(panic.domain, "GET /orders/:id");
    assert!(guard.flush(FLUSH));

    let events = outbox.events();
    let by_value = |v: &str| {
        events
            .iter()
            .find(|e| {
                e["exception"]["values"]
                    .as_array()
                    .and_then(|v| v.last())
                    .is_some_and(|last| last["value"] == v)
            })
            .unwrap_or_else(|| panic!("no event {v:?} in {events:#?}"))
            .clone()
    };
    // run() returned the id of the stored panic event.
    let handler = outbox
        .event(&panic.event_id.to_string())
        .expect("panic event stored");
    assert_eq!(handler["level"], "fatal");
    assert_eq!(handler["exception"]["values"][0]["type"], "panic");
    assert_eq!(
        handler["exception"]["values"][0]["mechanism"]["handled"],
        false
    );
    assert_eq!(handler["tags"]["request_id"], "r-42");
    assert_eq!(handler["tags"]["domain"], "GET /orders/:id");
    assert_eq!(handler["contexts"]["domain"]["name"], "GET /orders/:id");
    assert_eq!(handler["contexts"]["domain"]["tags"]["request_id"], "r-42");

    let nested = by_value("tax table missing");
    assert_eq!(nested["tags"]["request_id"], "r-42");
    assert_eq!(nested["tags"]["step"], "tax");
    assert_eq!(nested["tags"]["domain"], "pricing");

    let spawned = by_value("spawned task died");
    assert_eq!(spawned["tags"]["request_id"], "r-42");
    assert!(
        spawned["contexts"]["thread"]["name"]
            .as_str()
            .is_some_and(|n| n.contains("tokio")),
        "{}",
        spawned["contexts"]["thread"]
    );
    let frames = functions(&spawned["exception"]["values"][0]);
    assert!(
        frames
            .last()
            .is_some_and(|f| f.starts_with("agent::domain_data_reaches")),
        "panic machinery trimmed from the top: {frames:#?}"
    );

    let captured = by_value("ldap search failed");
    assert_eq!(captured["level"], "error");
    assert_eq!(captured["tags"]["request_id"], "r-42");
    assert_eq!(captured["tags"]["order_id"], "7");
    assert_eq!(
        captured["breadcrumbs"]["values"][0]["message"],
        "looking up order"
    );
    let io = &captured["exception"]["values"][0];
    assert_eq!(io["mechanism"]["data"]["io_kind"], "TimedOut");
    assert!(io["mechanism"]["data"].get("os_code").is_none());
    let outer = &captured["exception"]["values"][1];
    assert!(
        functions(outer)
            .iter()
            .any(|f| f == "agent::load_order::{{closure}}"),
        "{:#?}",
        functions(outer)
    );
    drop(guard);
}

#[test]
fn run_sync_returns_the_stored_panic() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let domain = errscope::Domain::new("job: reindex").tag("job_id", 9);
    let err = domain
        .run_sync(|| -> u32 {
            let v: Vec<u32> = Vec::new();
            v[3]
        })
        .expect_err("index out of bounds");
    assert!(
        err.message.contains("index out of bounds"),
        "{}",
        err.message
    );
    // Committed before the hook returned: visible without a flush.
    let event = outbox
        .event(&err.event_id.to_string())
        .expect("committed before return");
    assert_eq!(event["tags"]["job_id"], "9");
    let data = &event["exception"]["values"][0]["mechanism"]["data"];
    assert!(
        data["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("tests/agent.rs")),
        "{data}"
    );
    assert!(data["line"].as_u64().is_some());
    assert_eq!(errscope::stats().panics, 1);
    drop(guard);
}

#[inline(never)]
fn fail_often(n: usize) {
    for _ in 0..n {
        let err = io::Error::from_raw_os_error(libc::ECONNRESET);
        errscope::capture_error(&err);
    }
}

#[test]
fn an_error_storm_is_stored_bounded_and_counted_exactly() {
    let _serial = serial();
    let outbox = Outbox::new();
    // A small queue: exactness must not depend on the queue having room.
    let guard = errscope::init(options(&outbox).queue_size(2));
    // The first occurrence, alone: from then on the fingerprint has a queued event.
    fail_often(1);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| fail_often(3_333));
        }
    });
    assert!(guard.flush(FLUSH));
    let events = outbox.events();
    let counts = outbox.counts();
    let counted: i64 = counts.iter().map(|c| c.2).sum();
    let dropped = outbox.discards("queue_overflow");
    assert!(events.len() <= 10, "{} rows", events.len());
    assert_eq!(events.len() as i64 + counted + dropped, 10_000);
    assert_eq!(
        dropped, 0,
        "once the fingerprint has a queued event, a full queue means counted, not lost"
    );
    for (id, event_id, count, start, end) in &counts {
        assert_eq!(id.len(), 32);
        assert!(*count > 0 && start <= end);
        assert!(
            events.iter().any(|e| e["event_id"] == event_id.as_str()),
            "counts refer to a stored event"
        );
    }
    let stats = errscope::stats();
    assert_eq!(stats.captured, 10_000);
    assert_eq!(stats.storm_counted as i64, counted);
    drop(guard);
}

#[test]
fn secrets_in_a_domain_never_reach_the_file() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox).scrub_key("pin"));
    let domain = errscope::Domain::new("POST /login")
        .context(
            "request",
            json!({
                "url": "https://ann:pa55word@shop.example/login",
                "headers": {"Authorization": "Bearer tok-SEKRIT-123", "Accept": "text/html"},
                "form": {"user": "ann", "password": "hunter2-SEKRIT", "card_PIN": "SEKRIT-4321"},
                "note": "card 4111 1111 1111 1111"
            }),
        )
        .tag("session_id", "sess-SEKRIT");
    let id = domain
        .run_sync(|| errscope::capture_message("login failed", errscope::Level::Warning))
        .expect("no panic");
    assert!(guard.flush(FLUSH));
    let event = outbox.event(&id.to_string()).expect("stored");
    let request = &event["contexts"]["domain"]["data"]["request"];
    assert_eq!(request["headers"]["Authorization"], "[Filtered]");
    assert_eq!(request["headers"]["Accept"], "text/html");
    assert_eq!(request["form"]["password"], "[Filtered]");
    assert_eq!(request["form"]["user"], "ann");
    assert_eq!(request["form"]["card_PIN"], "[Filtered]", "an extra key");
    assert_eq!(request["url"], "https://ann:[Filtered]@shop.example/login");
    assert_eq!(request["note"], "card [Filtered]");
    assert_eq!(event["tags"]["session_id"], "[Filtered]");
    assert_eq!(event["level"], "warning");
    assert_eq!(event["message"], "login failed");
    drop(guard);
    let raw = outbox.raw_bytes();
    assert!(!raw.is_empty());
    for secret in ["SEKRIT", "pa55word", "4111 1111"] {
        assert!(!contains(&raw, secret), "{secret} reached the file");
    }
}

#[test]
fn a_full_store_evicts_the_oldest_and_counts_the_loss() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(
        options(&outbox)
            .max_events(20)
            .storm(1_000, Duration::from_secs(60)),
    );
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(errscope::capture_message(
            &format!("event {i}"),
            errscope::Level::Info,
        ));
        if i % 10 == 9 {
            assert!(guard.flush(FLUSH));
        }
    }
    let events = outbox.events();
    assert_eq!(events.len(), 20);
    assert_eq!(events[0]["message"], "event 80", "the oldest went first");
    assert_eq!(outbox.discards("cache_overflow"), 80);
    assert_eq!(errscope::stats().evicted, 80);
    drop(guard);
}

#[test]
fn an_unusable_store_degrades_to_memory_and_the_host_keeps_running() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    for path in [not_a_dir.join("outbox.db"), {
        let corrupt = dir.path().join("corrupt.db");
        std::fs::write(&corrupt, vec![0x42; 16 * 1024]).expect("write");
        corrupt
    }] {
        let guard = errscope::init(errscope::Options::new().database(&path));
        let id = errscope::capture_error(&io::Error::other("still running"));
        assert!(!id.is_nil());
        assert!(guard.flush(FLUSH));
        let stats = errscope::stats();
        assert!(stats.degraded, "{path:?}");
        assert_eq!(stats.stored, 1);
        drop(guard);
    }
}

#[test]
fn before_send_can_edit_drop_and_panic_without_harm() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard =
        errscope::init(
            options(&outbox).before_send(|mut event| match event.message.as_deref() {
                Some("drop me") => None,
                Some("panic") => panic!("before_send bug"),
                _ => {
                    event.tags.insert("edited".into(), "yes".into());
                    Some(event)
                }
            }),
        );
    let kept = errscope::capture_message("keep me", errscope::Level::Info);
    let dropped = errscope::capture_message("drop me", errscope::Level::Info);
    let survived = errscope::capture_message("panic", errscope::Level::Info);
    assert!(guard.flush(FLUSH));
    let kept = outbox.event(&kept.to_string()).expect("kept");
    assert_eq!(kept["tags"]["edited"], "yes");
    // With a hook the frames are typed (not the resolver's cached JSON): still there.
    let frames = &kept["threads"]["values"][0]["stacktrace"]["frames"];
    assert!(
        frames
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["in_app"] == true)),
        "{kept}"
    );
    assert!(outbox.event(&dropped.to_string()).is_none());
    assert!(
        outbox.event(&survived.to_string()).is_some(),
        "stored unchanged"
    );
    assert_eq!(outbox.discards("before_send"), 1);
    assert_eq!(errscope::stats().dropped_before_send, 1);
    // The hook's own panic, on the agent's thread, is recorded too (written directly).
    let hook_panic = outbox
        .events()
        .into_iter()
        .find(|e| e["level"] == "fatal")
        .expect("the before_send panic is an event");
    assert_eq!(
        hook_panic["exception"]["values"][0]["value"],
        "before_send bug"
    );
    assert_eq!(hook_panic["contexts"]["thread"]["name"], "errscope-worker");
    drop(guard);
}

#[test]
fn a_panic_is_written_directly_when_the_agent_is_stuck() {
    let _serial = serial();
    let outbox = Outbox::new();
    let (release, stuck) = crossbeam_channel::bounded::<()>(0);
    let guard = errscope::init(
        options(&outbox)
            .panic_timeout(Duration::from_millis(200))
            .before_send(move |event| {
                if event.message.as_deref() == Some("block the agent") {
                    let _ = stuck.recv_timeout(Duration::from_secs(20));
                }
                Some(event)
            }),
    );
    errscope::capture_message("block the agent", errscope::Level::Info);
    let panic = errscope::Domain::new("stuck")
        .tag("k", "v")
        .run_sync(|| panic!("while the agent is stuck"))
        .expect_err("panicked");
    // Committed by the panicking thread itself, before the hook returned.
    let event = outbox
        .event(&panic.event_id.to_string())
        .expect("written directly");
    assert_eq!(event["tags"]["k"], "v");
    assert_eq!(event["level"], "fatal");
    release.send(()).expect("release the agent");
    assert!(guard.flush(FLUSH));
    // The agent's own copy of the record is ignored as a duplicate id.
    let copies = outbox
        .events()
        .iter()
        .filter(|e| e["event_id"] == panic.event_id.to_string().as_str())
        .count();
    assert_eq!(copies, 1);
    assert!(
        outbox
            .events()
            .iter()
            .any(|e| e["message"] == "block the agent")
    );
    drop(guard);
}

#[test]
fn a_second_init_does_not_break_the_first() {
    let _serial = serial();
    let first = Outbox::new();
    let second = Outbox::new();
    let guard = errscope::init(options(&first));
    let inert = errscope::init(options(&second));
    let id = errscope::capture_message("to the first", errscope::Level::Info);
    assert!(
        inert.flush(FLUSH),
        "an inert guard flushes the running agent"
    );
    drop(inert);
    let later = errscope::capture_message("still the first", errscope::Level::Info);
    assert!(guard.flush(FLUSH));
    assert!(first.event(&id.to_string()).is_some());
    assert!(first.event(&later.to_string()).is_some());
    assert!(!second.path.exists());
    drop(guard);
    assert!(errscope::capture_message("after shutdown", errscope::Level::Info).is_nil());
    assert!(!errscope::flush(FLUSH), "nothing to flush");
    assert_eq!(errscope::stats(), errscope::Stats::default());
}

#[test]
fn sampling_drops_and_counts() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox).sample_rate(0.0));
    assert!(errscope::capture_message("never", errscope::Level::Info).is_nil());
    assert!(
        errscope::flush(FLUSH),
        "the free function flushes the running agent"
    );
    assert!(outbox.events().is_empty());
    assert_eq!(outbox.discards("sample_rate"), 1);
    drop(guard);
}

#[test]
fn dyn_errors_are_accepted() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let boxed: Box<dyn Error + Send + Sync> = Box::new("x".parse::<u8>().expect_err("nan"));
    let id = errscope::capture_error(&*boxed);
    assert!(guard.flush(FLUSH));
    let event = outbox.event(&id.to_string()).expect("stored");
    assert_eq!(event["exception"]["values"][0]["type"], "ParseIntError");
    let _: Value = event;
    drop(guard);
}

#[test]
fn concurrent_panics_are_each_committed_before_their_hook_returns() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let barrier = std::sync::Barrier::new(8);
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let barrier = &barrier;
                let outbox = &outbox;
                s.spawn(move || {
                    let domain = errscope::Domain::new("worker").tag("n", i);
                    barrier.wait();
                    let panic = domain
                        .run_sync(|| panic!("worker {i} failed"))
                        .expect_err("panicked");
                    // Visible to another connection as soon as run_sync returns.
                    let event = outbox
                        .event(&panic.event_id.to_string())
                        .expect("committed before the hook returned");
                    assert_eq!(event["tags"]["n"], i.to_string());
                    panic.event_id.to_string()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8);
    assert_eq!(errscope::stats().panics, 8);
    drop(guard);
}

#[inline(never)]
fn capture_kind(kind: io::ErrorKind) {
    errscope::capture_error(&io::Error::from(kind));
}

#[test]
fn a_full_queue_drops_are_stored_and_totals_stay_exact() {
    use io::ErrorKind::*;
    let _serial = serial();
    let outbox = Outbox::new();
    // One slot: most first occurrences of a fingerprint find the queue full.
    let guard = errscope::init(options(&outbox).queue_size(1));
    let kinds = [
        NotFound,
        PermissionDenied,
        ConnectionRefused,
        ConnectionReset,
        ConnectionAborted,
        NotConnected,
        AddrInUse,
        AddrNotAvailable,
        BrokenPipe,
        AlreadyExists,
        WouldBlock,
        InvalidInput,
        InvalidData,
        TimedOut,
        WriteZero,
        Interrupted,
        Unsupported,
        UnexpectedEof,
        OutOfMemory,
        Other,
    ];
    for _ in 0..100 {
        for kind in kinds {
            capture_kind(kind);
        }
    }
    assert!(guard.flush(FLUSH));
    let stored = outbox.events().len() as i64;
    let counted: i64 = outbox.counts().iter().map(|c| c.2).sum();
    let dropped = outbox.discards("queue_overflow");
    assert_eq!(
        stored + counted + dropped,
        2_000,
        "{stored} + {counted} + {dropped}"
    );
    let stats = errscope::stats();
    assert_eq!(stats.dropped_queue_full as i64, dropped);
    assert_eq!(stats.captured as i64, stored + counted);
    drop(guard);
}

/// An error whose `Display` panics: the host's bug, met inside the agent's capture.
#[derive(Debug)]
struct BadDisplay;

impl fmt::Display for BadDisplay {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("Display of BadDisplay is broken")
    }
}

impl Error for BadDisplay {}

#[test]
fn a_panic_inside_a_capture_neither_escapes_nor_deadlocks() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    // The panic runs the hook (which records it) while the capture is in progress.
    let id = errscope::capture_error(&BadDisplay);
    assert!(!id.is_nil());
    assert!(guard.flush(FLUSH));
    let event = outbox
        .event(&id.to_string())
        .expect("the capture is stored");
    assert_eq!(
        event["exception"]["values"][0]["type"],
        "errscope::CaptureFailed"
    );
    let panics: Vec<_> = outbox
        .events()
        .into_iter()
        .filter(|e| e["level"] == "fatal")
        .collect();
    assert_eq!(panics.len(), 1);
    assert_eq!(
        panics[0]["exception"]["values"][0]["value"],
        "Display of BadDisplay is broken"
    );
    drop(guard);
}

#[test]
fn a_locked_store_degrades_in_time_for_a_panic() {
    let _serial = serial();
    // Load this binary's debug info first (the cache is process-wide), so the panic below
    // waits for the locked file only, not for symbols on a busy machine.
    drop(backtrace::Backtrace::new());
    let outbox = Outbox::new();
    // Another process (here: connection) holds the file exclusively.
    let holder = rusqlite::Connection::open(&outbox.path).expect("open");
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; CREATE TABLE t (x);")
        .expect("lock");
    let guard = errscope::init(options(&outbox));
    let err = errscope::Domain::new("locked")
        .run_sync(|| panic!("while the outbox is locked"))
        .expect_err("panicked");
    // Committed (to memory) before the hook returned: no flush needed.
    let stats = errscope::stats();
    assert!(stats.degraded);
    assert_eq!(stats.stored, 1);
    assert!(!err.event_id.is_nil());
    drop(guard);
    drop(holder);
}

#[test]
fn counts_never_refer_to_an_event_before_send_dropped() {
    let _serial = serial();
    let outbox = Outbox::new();
    // The host filters out connection resets; a storm of them must not leave counts
    // pointing at events that were never stored.
    let guard = errscope::init(options(&outbox).before_send(|event| {
        let reset = event
            .exception
            .as_ref()
            .is_some_and(|e| e.values.iter().any(|x| x.value.contains("os error 104")));
        (!reset).then_some(event)
    }));
    for i in 0..1_000 {
        fail_often(1);
        if i % 100 == 0 {
            // Let the agent's thread drop the representatives mid-storm.
            assert!(guard.flush(FLUSH));
        }
    }
    assert!(guard.flush(FLUSH));
    let events = outbox.events();
    let counts = outbox.counts();
    for (_, event_id, ..) in &counts {
        assert!(
            events.iter().any(|e| e["event_id"] == event_id.as_str()),
            "a count refers to a dropped event"
        );
    }
    let counted: i64 = counts.iter().map(|c| c.2).sum();
    let total = events.len() as i64
        + counted
        + outbox.discards("before_send")
        + outbox.discards("queue_overflow");
    assert_eq!(total, 1_000);
    assert!(events.is_empty());
    drop(guard);
}

#[inline(never)]
fn capture_dyn(err: &(dyn Error + Send + Sync + 'static)) {
    errscope::capture_error(err);
}

#[test]
fn dyn_errors_of_different_types_at_one_call_site_are_counted_apart() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox));
    let parse: Box<dyn Error + Send + Sync> = Box::new("x".parse::<u8>().expect_err("nan"));
    let ldap: Box<dyn Error + Send + Sync> = Box::new(LdapError {
        op: "bind",
        source: io::Error::other("refused"),
    });
    for _ in 0..100 {
        capture_dyn(&*parse);
        capture_dyn(&*ldap);
    }
    assert!(guard.flush(FLUSH));
    let events = outbox.events();
    let type_of = |id: &str| {
        events
            .iter()
            .find(|e| e["event_id"] == id)
            .and_then(|e| e["exception"]["values"].as_array()?.last()?["type"].as_str())
            .map(str::to_owned)
            .expect("a stored event")
    };
    let mut totals = std::collections::BTreeMap::<String, i64>::new();
    for e in &events {
        let id = e["event_id"].as_str().expect("id");
        *totals.entry(type_of(id)).or_default() += 1;
    }
    for (_, event_id, count, ..) in outbox.counts() {
        *totals.entry(type_of(&event_id)).or_default() += count;
    }
    assert_eq!(
        totals,
        [
            ("LdapError".to_owned(), 100),
            ("ParseIntError".to_owned(), 100)
        ]
        .into()
    );
    drop(guard);
}

#[test]
fn stack_traces_of_captures_can_be_turned_off() {
    let _serial = serial();
    let outbox = Outbox::new();
    let guard = errscope::init(options(&outbox).attach_stacktrace(false));
    let id = errscope::capture_error(&LdapError {
        op: "bind",
        source: io::Error::from(io::ErrorKind::ConnectionRefused),
    });
    let panic = errscope::Domain::new("d")
        .run_sync(|| panic!("still traced"))
        .expect_err("panicked");
    assert!(guard.flush(FLUSH));
    let event = outbox.event(&id.to_string()).expect("stored");
    let values = event["exception"]["values"].as_array().expect("values");
    assert!(
        values.iter().all(|v| v.get("stacktrace").is_none()),
        "{event}"
    );
    assert_eq!(
        values[0]["mechanism"]["data"]["io_kind"],
        "ConnectionRefused"
    );
    let panic = outbox.event(&panic.event_id.to_string()).expect("stored");
    assert!(!functions(&panic["exception"]["values"][0]).is_empty());
    drop(guard);
}
