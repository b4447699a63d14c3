//! Personal data captured through the real agent never reaches the collector's database:
//! the agent scrubs it before the event is stored and shipped.
//!
//! The check reads the collector's files (database, WAL, shared memory) byte for byte, and
//! also every stored event inflated, since events are kept zlib-compressed.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use errscope::{Breadcrumb, Domain, Level, Options};
use errscope_e2e::{Collector, outbox};
use serde_json::json;

/// Secrets a service hands the agent; none may be stored by the collector.
const PASSWORD: &str = "hunter2-pw-7f3a9c";
const BEARER: &str = "sk_live_9f8e7d6c5b4a3f2e";
const CARD_SPACED: &str = "4111 1111 1111 1111";
const CARD: &str = "5555555555554444";
const URL_PASSWORD: &str = "S3cretDbPass-81b2";
const COOKIE: &str = "sess-0b9d8e7f6a5c";

/// What the secrets look like on disk: as given, and the card digits unspaced.
fn secrets() -> Vec<String> {
    vec![
        PASSWORD.into(),
        BEARER.into(),
        CARD_SPACED.into(),
        CARD_SPACED.replace(' ', ""),
        CARD.into(),
        URL_PASSWORD.into(),
        COOKIE.into(),
    ]
}

/// Text from the same events that is not secret: it must be found, or the search proves nothing.
const VISIBLE: [&str; 5] = [
    "login-user-ann",
    "charge declined for card",
    "db.internal:5432",
    "POST /login",
    "checkout-crumb",
];

/// Every byte sequence to search: each file's raw bytes, and every zlib stream found in
/// them inflated (events are stored compressed).
fn searchable(files: &[&Path]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let name = f.display().to_string();
        for i in 0..bytes.len().saturating_sub(2) {
            // A zlib header: deflate, and the 16-bit value a multiple of 31.
            if bytes[i] & 0x0f != 8
                || (u16::from(bytes[i]) << 8 | u16::from(bytes[i + 1])) % 31 != 0
            {
                continue;
            }
            let mut inflated = Vec::new();
            let mut z = flate2::read::ZlibDecoder::new(&bytes[i..]).take(4 * 1024 * 1024);
            // A stream cut by a page boundary still yields its first bytes.
            let _ = z.read_to_end(&mut inflated);
            if inflated.len() >= 64 {
                out.push((format!("{name} (zlib at {i})"), inflated));
            }
        }
        out.push((name, bytes));
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every stored event, inflated, read through SQLite.
fn stored_events(db: &Path) -> Vec<Vec<u8>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the collector's database");
    let mut stmt = conn
        .prepare("SELECT encoding, data FROM events")
        .expect("events table");
    stmt.query_map([], |r| Ok((r.get::<_, u8>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .expect("query")
        .map(|row| {
            let (encoding, data) = row.expect("row");
            match encoding {
                0 => data,
                _ => {
                    let mut out = Vec::new();
                    flate2::read::ZlibDecoder::new(&data[..])
                        .read_to_end(&mut out)
                        .expect("a stored event inflates");
                    out
                }
            }
        })
        .collect()
}

#[test]
fn personal_data_never_reaches_the_collector_database() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("collector");
    let collector = Collector::start(&data);
    let agent_db = outbox(dir.path(), "security");
    // The agent calls the hook it replaces: keep the test's own panic off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let guard = errscope::init(
        Options::new()
            .dsn(&collector.dsn())
            .database(&agent_db)
            .attach_stacktrace(false)
            .storm(u32::MAX, Duration::from_secs(1)),
    );
    let domain = Domain::new("POST /login")
        .tag("user", "login-user-ann")
        .tag("session_id", COOKIE)
        .context(
            "form",
            json!({"username": "login-user-ann", "password": PASSWORD, "remember": true}),
        )
        .context(
            "headers",
            json!({
                "Authorization": format!("Bearer {BEARER}"),
                "Cookie": format!("errscope_session={COOKIE}"),
                "Accept": "text/html"
            }),
        )
        .context("payment", json!({"note": format!("card {CARD} on file")}));
    domain.add_breadcrumb(
        Breadcrumb::new(format!("checkout-crumb paid with {CARD_SPACED}"))
            .category("payment")
            .data("db_password", URL_PASSWORD)
            .data(
                "url",
                format!("https://shop:{URL_PASSWORD}@db.internal:5432/"),
            ),
    );
    // The long run stores many pages' worth, so the WAL grows and checkpoints.
    let rounds = if errscope_e2e::long_run() { 250 } else { 1 };
    let mut ids = Vec::new();
    for _ in 0..rounds {
        let panicked = domain.run_sync(|| {
            ids.push(errscope::capture_error(&std::io::Error::other(format!(
                "charge declined for card {CARD_SPACED}"
            ))));
            ids.push(errscope::capture_message(
                &format!(
                    "could not connect to postgres://shop:{URL_PASSWORD}@db.internal:5432/shop"
                ),
                Level::Error,
            ));
            ids.push(errscope::capture_message(
                &format!("charge declined for card {CARD}, login-user-ann"),
                Level::Warning,
            ));
            panic!(
                "payment for {CARD_SPACED} via https://shop:{URL_PASSWORD}@db.internal:5432/ failed"
            );
        });
        ids.push(panicked.expect_err("the closure panicked").event_id);
    }
    assert!(guard.flush(Duration::from_secs(60)), "everything delivered");
    drop(guard);
    let n = ids.len() as u64;
    assert_eq!(collector.wait_for_events(n, Duration::from_secs(60)), n);
    for id in &ids {
        assert!(collector.has_event(&id.to_string()), "event {id} stored");
    }

    // While the collector runs: its database, WAL and shared memory, and what SQLite
    // returns for each event.
    let db = data.join("errscope.sqlite3");
    let wal = data.join("errscope.sqlite3-wal");
    let shm = data.join("errscope.sqlite3-shm");
    assert!(db.exists(), "{}", db.display());
    let mut haystacks = searchable(&[&db, &wal, &shm]);
    let events = stored_events(&db);
    assert_eq!(events.len() as u64, n);
    haystacks.extend(events.into_iter().map(|e| ("a stored event".to_owned(), e)));
    collector.stop();
    // After a clean stop (the WAL checkpointed into the database), and the agent's outbox.
    haystacks.extend(searchable(&[&db, &wal, &agent_db]));

    let mut leaks = Vec::new();
    for (name, hay) in &haystacks {
        for secret in secrets() {
            if contains(hay, &secret) {
                leaks.push(format!("{secret} in {name}"));
            }
        }
    }
    // The search sees the events' text: what is not secret is there, in the raw file
    // bytes and inflated.
    for visible in VISIBLE {
        assert!(
            haystacks.iter().any(|(_, hay)| contains(hay, visible)),
            "`{visible}` not found: the search does not see the stored events"
        );
    }
    let inflated = haystacks
        .iter()
        .filter(|(n, _)| n.contains("zlib at"))
        .count();
    let bytes: usize = haystacks.iter().map(|(_, h)| h.len()).sum();
    eprintln!(
        "reliability: scenario=pii rounds={rounds} events={n} secrets={} haystacks={} inflated_streams={inflated} bytes_searched={bytes} leaks={} secs={:.1}",
        secrets().len(),
        haystacks.len(),
        leaks.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(leaks.is_empty(), "personal data stored: {leaks:#?}");
}
