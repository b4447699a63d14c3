//! Many collector processes on one PostgreSQL: clients spread events over the nodes, send a
//! third of them to two nodes at once (a retry after a timeout), and keep going while a
//! node is SIGKILLed and restarted twice and PostgreSQL itself restarts once. Afterwards
//! every count is exact, no event is stored twice, each bug is one issue, and every node
//! answers the API the same.
//!
//! Short by default (a few thousand events); `ERRSCOPE_LONG=1` sends 50,000.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use errscope_testkit::pg::Cluster;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};

const TOKEN: &str = "scaleout-admin-token";
/// Distinct bugs (one issue each).
const BUGS: u64 = 50;
/// Client tasks sending at once.
const CLIENTS: u64 = 8;

fn long() -> bool {
    std::env::var("ERRSCOPE_LONG").is_ok_and(|v| v == "1")
}

/// A collector process serving on `addr`.
struct Node {
    addr: SocketAddr,
    child: Child,
}

async fn start_node(data: &Path, database: &str, listen: SocketAddr) -> Option<Node> {
    start_on(data, Some(database), listen).await
}

/// A collector on `database`, or on SQLite under `data` without one.
async fn start_on(data: &Path, database: Option<&str>, listen: SocketAddr) -> Option<Node> {
    start_with(data, database, listen, &[]).await
}

/// [`start_on`], with more arguments to `serve`.
async fn start_with(
    data: &Path,
    database: Option<&str>,
    listen: SocketAddr,
    args: &[&str],
) -> Option<Node> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_errscope-collector"));
    match database {
        Some(url) => cmd.env("ERRSCOPE_DATABASE_URL", url),
        None => cmd.env_remove("ERRSCOPE_DATABASE_URL"),
    };
    let mut child = cmd
        .args(["serve", "--listen", &listen.to_string(), "--data"])
        .arg(data)
        // One address for all, as behind a load balancer (it goes into the DSNs shown).
        .args(["--public-url", "http://errscope.internal:8000"])
        // Every event is kept as a sample, so the test can count the stored rows.
        .args(["--max-events-per-issue", "1000000"])
        .args(args)
        .env("ERRSCOPE_ADMIN_TOKEN", TOKEN)
        .env("ERRSCOPE_ADMIN_PASSWORD", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the collector");
    let mut lines = tokio::io::BufReader::new(child.stdout.take()?).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut addr = None;
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if let Some(a) = line.strip_prefix("listening on http://") {
            addr = a.parse().ok();
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(Node { addr: addr?, child })
}

/// Starts a node on `addr` again (its port may take a moment to be free).
async fn restart_node(data: &Path, database: &str, addr: SocketAddr) -> Node {
    for _ in 0..100 {
        if let Some(n) = start_node(data, database, addr).await {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the collector did not start again on {addr}");
}

fn event(n: u64) -> (String, Value) {
    let id = format!(
        "{:032x}",
        0x5ca1_e000_0000_0000_u64 as u128 * 1_000_003 + n as u128
    );
    let bug = n % BUGS;
    let ev = json!({
        "event_id": id,
        "timestamp": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64(),
        "platform": "python",
        "level": "error",
        "environment": "production",
        "release": format!("shop@{}", n % 3),
        "tags": {"node_test": format!("t{}", n % 5)},
        "exception": {"values": [{
            "type": format!("Bug{bug}"),
            "value": "it broke",
            "stacktrace": {"frames": [
                {"function": "main", "module": "shop.app", "filename": "app.py", "lineno": 10, "in_app": true},
                {"function": format!("handler_{bug}"), "module": "shop.cart", "filename": "cart.py", "lineno": 42, "in_app": true}
            ]}
        }]}
    });
    (id, ev)
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    retried: AtomicU64,
    unavailable: AtomicU64,
    /// Answers that must never come: 5xx other than 503, 4xx.
    bad: AtomicU64,
}

/// Sends `body` to the nodes starting at `first`, moving on to the next one on a refused
/// connection, a timeout or a 503, until one answers 200.
async fn deliver(
    http: &reqwest::Client,
    nodes: &[SocketAddr],
    key: &str,
    first: usize,
    body: &str,
    seen: &Seen,
) {
    let started = Instant::now();
    for attempt in 0.. {
        let addr = nodes[(first + attempt) % nodes.len()];
        let r = http
            .post(format!("http://{addr}/api/1/store/?sentry_key={key}"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        let status = r.as_ref().map(|r| r.status().as_u16()).ok();
        if let Ok(r) = r
            && !matches!(status, Some(200 | 503))
        {
            let body = r.text().await.unwrap_or_default();
            eprintln!("{addr} answered {status:?}: {body}");
        }
        match status.ok_or(()) {
            Ok(200) => {
                seen.ok.fetch_add(1, Relaxed);
                return;
            }
            Ok(503) => {
                seen.unavailable.fetch_add(1, Relaxed);
            }
            Ok(_) => {
                seen.bad.fetch_add(1, Relaxed);
            }
            Err(_) => {}
        }
        seen.retried.fetch_add(1, Relaxed);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "an event found no node to take it for 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 % 4 + 1))).await;
    }
}

async fn get(http: &reqwest::Client, addr: SocketAddr, path: &str) -> Value {
    let r = http
        .get(format!("http://{addr}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path} on {addr}");
    r.json().await.unwrap()
}

async fn run(nodes_wanted: usize) {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let cluster = Arc::new(cluster);
    let database = cluster.fresh_database().expect("a database");
    let dirs: Vec<tempfile::TempDir> = (0..nodes_wanted)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    // The nodes start at once: the schema and the bootstrap must come out the same.
    let started = futures_join(dirs.iter().map(|d| {
        let db = database.clone();
        let p = d.path().to_owned();
        async move { start_node(&p, &db, "127.0.0.1:0".parse().unwrap()).await }
    }))
    .await;
    let mut nodes: Vec<Node> = started
        .into_iter()
        .map(|n| n.expect("a node started"))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let projects = get(&http, addrs[0], "/api/0/projects/").await;
    assert_eq!(
        projects.as_array().unwrap().len(),
        1,
        "one default project: {projects}"
    );
    let dsn = projects[0]["dsn"].as_str().unwrap().to_owned();
    let key = dsn
        .split("//")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    for a in &addrs[1..] {
        assert_eq!(get(&http, *a, "/api/0/projects/").await, projects);
    }

    let total: u64 = if long() { 50_000 } else { 3_000 };
    let sent = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Seen::default());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, addrs, key, sent, seen) = (
            http.clone(),
            addrs.clone(),
            key.clone(),
            sent.clone(),
            seen.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = c;
            while n < total {
                let (_, ev) = event(n);
                let body = ev.to_string();
                let first = (n as usize * 7 + c as usize) % addrs.len();
                if n % 3 == 0 {
                    // The same event to two nodes at once.
                    let second = (first + 1) % addrs.len();
                    tokio::join!(
                        deliver(&http, &addrs, &key, first, &body, &seen),
                        deliver(&http, &addrs, &key, second, &body, &seen)
                    );
                } else {
                    deliver(&http, &addrs, &key, first, &body, &seen).await;
                }
                sent.fetch_add(1, Relaxed);
                n += CLIENTS;
            }
        }));
    }

    // The faults, at a quarter, half and three quarters of the run.
    let wait_for = |fraction: u64| {
        let sent = sent.clone();
        async move {
            while sent.load(Relaxed) < total * fraction / 4 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(1).await;
    let victim = nodes.remove(0);
    let (victim_addr, mut victim_child) = (victim.addr, victim.child);
    victim_child.start_kill().unwrap();
    let _ = victim_child.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.insert(
        0,
        restart_node(dirs[0].path(), &database, victim_addr).await,
    );

    wait_for(2).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        c.stop().expect("stop PostgreSQL");
        std::thread::sleep(Duration::from_millis(1500));
        c.restart().expect("start PostgreSQL again");
    })
    .await
    .unwrap();

    wait_for(3).await;
    let i = 1 % nodes.len();
    let victim = nodes.remove(i);
    let (victim_addr, mut victim_child) = (victim.addr, victim.child);
    victim_child.start_kill().unwrap();
    let _ = victim_child.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.insert(
        i,
        restart_node(dirs[i].path(), &database, victim_addr).await,
    );

    for c in clients {
        c.await.unwrap();
    }
    println!(
        "scale-out ({nodes_wanted} nodes): {total} events, {} answered 200 (duplicates included), {} retries, {} 503s",
        seen.ok.load(Relaxed),
        seen.retried.load(Relaxed),
        seen.unavailable.load(Relaxed)
    );
    assert_eq!(seen.bad.load(Relaxed), 0, "no answer other than 200 or 503");

    // Exact counts, from every node.
    let mut answers = Vec::new();
    for a in &addrs {
        let stats = get(&http, *a, "/api/0/projects/1/stats/").await;
        assert_eq!(stats["events"], total, "{a}: {stats}");
        assert_eq!(stats["issues"], BUGS, "{a}: {stats}");
        let issues = get(
            &http,
            *a,
            "/api/0/projects/1/issues/?status=all&sort=count&limit=100",
        )
        .await;
        let data = issues["data"].as_array().unwrap();
        assert_eq!(data.len() as u64, BUGS, "one issue per bug: {issues}");
        let mut titles: Vec<&str> = data.iter().map(|i| i["title"].as_str().unwrap()).collect();
        titles.sort_unstable();
        titles.dedup();
        assert_eq!(titles.len() as u64, BUGS, "{titles:?}");
        for i in data {
            assert_eq!(i["count"], total / BUGS, "{i}");
        }
        answers.push(issues);
    }
    for a in &answers[1..] {
        assert_eq!(a, &answers[0], "every node answers the same");
    }
    // Per issue: the hourly buckets and the tag counts add up to the count.
    let first = &answers[0]["data"][0];
    let detail = get(&http, addrs[0], &format!("/api/0/issues/{}/", first["id"])).await;
    let (hourly, tagged) = hourly_and_tagged(&detail);
    assert_eq!(tagged, total / BUGS, "{detail}");
    assert_eq!(hourly, total / BUGS, "{detail}");

    // No event row twice, read from the database itself.
    let (db, conn) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .expect("connect to the database");
    tokio::spawn(conn);
    let all: i64 = db
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let twice: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM events GROUP BY project_id, event_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (all, twice),
        (total as i64, 0),
        "(rows, event ids stored twice)"
    );
    drop(nodes);
}

/// Awaits every future, in order.
/// An issue's detail JSON: the sum of its hourly buckets and of its `node_test` tag counts.
fn hourly_and_tagged(detail: &Value) -> (u64, u64) {
    let hourly = detail["hourly_14d"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let tagged = detail["tags"]["node_test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    (hourly, tagged)
}

async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_on_one_postgres_count_exactly_through_kills_and_a_database_restart() {
    run(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_collectors_on_one_postgres_count_exactly_through_kills_and_a_database_restart() {
    run(4).await;
}

/// A storm on one issue from four collectors (two writers each), every event with a
/// tag value of its own: the counts, hours and tags that every batch of every node adds
/// to (insert-only deltas, folded by one node at a time) come out exact, and the
/// per-issue and per-project caps on tag values hold exactly across all writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_on_one_issue_from_four_collectors_counts_exactly_and_caps_tags_exactly() {
    let (cluster, database, _dirs, nodes) = postgres_nodes(4, &[]).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let key = default_key(&http, addrs[0]).await;
    let total: u64 = 1_500;
    let seen = Arc::new(Seen::default());
    let clients = (0..CLIENTS).map(|c| {
        let (http, addrs, key, seen) = (http.clone(), addrs.clone(), key.clone(), seen.clone());
        async move {
            let mut n = c;
            while n < total {
                // Bug 0 every time, and a value of `request` no other event has.
                let (_, mut ev) = event(n * BUGS);
                ev["tags"]["request"] = json!(format!("r{n}"));
                let body = ev.to_string();
                deliver(&http, &addrs, &key, n as usize % addrs.len(), &body, &seen).await;
                n += CLIENTS;
            }
        }
    });
    futures_join(clients).await;
    assert_eq!(seen.ok.load(Relaxed), total);
    assert_eq!(seen.bad.load(Relaxed), 0);

    // Every node reads the same exact counts (each read folds what is pending first).
    let mut answers = Vec::new();
    for a in &addrs {
        let stats = get(&http, *a, "/api/0/projects/1/stats/").await;
        assert_eq!(
            (stats["events"].as_u64(), stats["issues"].as_u64()),
            (Some(total), Some(1))
        );
        let issues = get(&http, *a, "/api/0/projects/1/issues/?status=all").await;
        assert_eq!(issues["data"][0]["count"], total, "{a}: {issues}");
        let id = &issues["data"][0]["id"];
        let detail = get(&http, *a, &format!("/api/0/issues/{id}/")).await;
        let (hourly, tagged) = hourly_and_tagged(&detail);
        assert_eq!(hourly, total, "{detail}");
        assert_eq!(tagged, total, "{detail}");
        answers.push((issues, detail));
    }
    for a in &answers[1..] {
        assert_eq!(a, &answers[0], "every node answers the same");
    }
    // The caps, from the database (folded by the reads above; nothing is in flight).
    let (db, conn) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .expect("connect to the database");
    tokio::spawn(conn);
    let tags = |table: &'static str| {
        let db = &db;
        async move {
            let r = db
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE value <> '(other)'), coalesce(sum(count) FILTER (WHERE value = '(other)'), 0)::int8, sum(count)::int8
                         FROM {table} WHERE key = 'request'"
                    ),
                    &[],
                )
                .await
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2))
        }
    };
    // 100 values per issue and 1,000 per project (store::MAX_TAG_VALUES_*), the rest
    // counted as `(other)`.
    let t = total as i64;
    assert_eq!(tags("issue_tags").await, (100, t - 100, t));
    assert_eq!(tags("project_tags").await, (1000, t - 1000, t));
    let pending: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM issue_deltas) + (SELECT count(*) FROM hourly_deltas) + (SELECT count(*) FROM tag_deltas)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "every delta folded");
    drop(nodes);
    drop(cluster);
}

/// A PostgreSQL server of the test's own, a fresh database on it, and `n` collectors on
/// that database, each with a data directory of its own and `args`.
async fn postgres_nodes(
    n: usize,
    args: &[&str],
) -> (Cluster, String, Vec<tempfile::TempDir>, Vec<Node>) {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let database = cluster.fresh_database().expect("a database");
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        let listen = "127.0.0.1:0".parse().unwrap();
        nodes.push(
            start_with(d.path(), Some(&database), listen, args)
                .await
                .unwrap(),
        );
    }
    (cluster, database, dirs, nodes)
}

/// Uploads a debug file to `addr` as `curl -F file=@hello.debug` would; the stored files.
async fn upload_debug_file(http: &reqwest::Client, addr: SocketAddr, bytes: &[u8]) -> Value {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("hello.debug"),
    );
    let r = http
        .post(format!(
            "http://{addr}/api/0/projects/any/default/files/dsyms/"
        ))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_two_collectors() {
    let (cluster, _, _dirs, nodes) = postgres_nodes(2, &["--rate-limit", "300"]).await;
    let http = reqwest::Client::new();
    let key = default_key(&http, nodes[0].addr).await;
    // The limit is per minute of the wall clock: start early in one.
    let second = || {
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
            .unwrap()
            .as_secs()
    };
    if second() % 60 > 40 {
        tokio::time::sleep(Duration::from_secs(61 - second() % 60)).await;
    }
    let minute = second() / 60;
    let (mut ok, mut limited) = (0, 0);
    for n in 0..600u64 {
        let addr = nodes[(n % 2) as usize].addr;
        let r = http
            .post(format!("http://{addr}/api/1/store/?sentry_key={key}"))
            .header("content-type", "application/json")
            .body(event(n).1.to_string())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("{other}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!(second() / 60, minute, "the sends took under a minute");
    // Each node may hold up to a 64th of the limit unspent (quota.rs), never more.
    assert!(
        (300 - 2 * 5..=300).contains(&ok),
        "{ok} admitted of a limit of 300"
    );
    assert_eq!(ok + limited, 600);
    let stats = get(&http, nodes[1].addr, "/api/0/projects/1/stats/").await;
    assert_eq!(stats["events"], ok, "{stats}");
    for mut n in nodes {
        n.child.kill().await.unwrap();
    }
    drop(cluster);
}

/// A small ELF debug file (gcc, objcopy), and its bytes.
fn debug_file(dir: &Path) -> Vec<u8> {
    let c = dir.join("hello.c");
    std::fs::write(&c, "int main(void) { return 0; }\n").unwrap();
    let exe = dir.join("hello");
    let debug = dir.join("hello.debug");
    let ok = std::process::Command::new("gcc")
        .args(["-g", "-O0", "-Wl,--build-id", "-o"])
        .arg(&exe)
        .arg(&c)
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&exe)
            .arg(&debug)
            .status()
            .unwrap()
            .success();
    assert!(ok, "gcc and objcopy build the debug file");
    std::fs::read(debug).unwrap()
}

/// A native event of the debug file's program (`bytes`), its one frame in `main`, as a
/// stripped build sends it: an address and the image. Its id.
async fn send_native(http: &reqwest::Client, addr: SocketAddr, bytes: &[u8], n: u64) -> String {
    const BASE: u64 = 0x5555_0000_0000;
    let obj = symbolic_debuginfo::Object::parse(bytes).unwrap();
    let main = obj
        .symbols()
        .find(|s| s.name() == Some("main"))
        .expect("main in the debug file");
    let id = format!("{:032x}", 0xd1f_0000 + n);
    let ev = json!({
        "event_id": id,
        "platform": "native",
        "level": "error",
        "exception": {"values": [{"type": "Crash", "value": "in main", "stacktrace": {"frames": [
            {"function": "<unknown>", "instruction_addr":
                format!("{:#x}", BASE + main.address - obj.load_address() + 4)}
        ]}}]},
        "debug_meta": {"images": [{
            "type": "elf",
            "debug_id": obj.debug_id().to_string(),
            "code_id": obj.code_id().map(|c| c.to_string()),
            "code_file": "/srv/hello",
            "image_addr": format!("{BASE:#x}"),
            "image_size": 0x10000
        }]}
    });
    let key = default_key(http, addr).await;
    let r = http
        .post(format!("http://{addr}/api/1/store/?sentry_key={key}"))
        .header("content-type", "application/json")
        .body(ev.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    id
}

/// The files a node keeps under `<data>/difs/<project>/`.
fn node_difs(data: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(data.join("difs/1"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.push(std::fs::read(e.path()).unwrap());
    }
    out
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_file_uploaded_to_one_collector_reaches_the_others() {
    let (cluster, database, dirs, mut nodes) = postgres_nodes(2, &[]).await;
    let work = tempfile::tempdir().unwrap();
    let bytes = debug_file(work.path());
    let http = reqwest::Client::new();
    let uploaded = upload_debug_file(&http, nodes[0].addr, &bytes).await;
    let id = uploaded[0]["id"].as_str().unwrap().to_owned();

    // The other node lists it and holds a copy of the same bytes, fetched from the database.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = get(
            &http,
            nodes[1].addr,
            "/api/0/projects/any/default/files/dsyms/",
        )
        .await;
        if listed[0]["id"] == id.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not listed on the other node: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("a copy on the other node", || {
        node_difs(dirs[1].path()) == [bytes.clone()]
    })
    .await;
    // ...and symbolicates with it.
    let first = send_native(&http, nodes[1].addr, &bytes, 1).await;
    let ev = get(
        &http,
        nodes[1].addr,
        &format!("/api/0/projects/1/events/{first}/"),
    )
    .await;
    let frame = &ev["exception"]["values"][0]["stacktrace"]["frames"][0];
    assert_eq!(frame["function"], "main", "{ev:#}");

    // A node that starts with an empty data directory fetches it too.
    let third = tempfile::tempdir().unwrap();
    let mut n3 = start_node(third.path(), &database, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    wait_for("a copy on a new node", || {
        node_difs(third.path()) == [bytes.clone()]
    })
    .await;

    // Deleted on the first node: gone from the others' disks.
    let r = http
        .delete(format!(
            "http://{}/api/0/projects/any/default/files/dsyms/?id={id}",
            nodes[0].addr
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    wait_for("the copies removed", || {
        node_difs(dirs[1].path()).is_empty() && node_difs(third.path()).is_empty()
    })
    .await;
    // The other node dropped its SymCache too (in the refresh that stops listing the
    // file): a new event of the image is stored as sent, listing the image as missing its
    // debug file.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(
        &http,
        nodes[1].addr,
        "/api/0/projects/any/default/files/dsyms/",
    )
    .await
    .as_array()
    .is_some_and(|l| !l.is_empty())
    {
        assert!(Instant::now() < deadline, "still listed on the other node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = send_native(&http, nodes[1].addr, &bytes, 2).await;
    let ev = get(
        &http,
        nodes[1].addr,
        &format!("/api/0/projects/1/events/{later}/"),
    )
    .await;
    let frame = &ev["exception"]["values"][0]["stacktrace"]["frames"][0];
    assert_eq!(frame["function"], "<unknown>", "{ev:#}");
    assert_eq!(
        ev["errscope"]["missing_debug_files"][0]["code_file"], "/srv/hello",
        "{ev:#}"
    );
    for n in nodes.iter_mut().chain([&mut n3]) {
        n.child.kill().await.unwrap();
    }
    drop(cluster);
}

/// `migrate --from-sqlite`: an installation used on SQLite (events, a resolved issue, a
/// regression, tags) answers the same on PostgreSQL after the copy, and goes on counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_an_sqlite_installation_with_exact_counts() {
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let lite = start_sqlite_node(data.path()).await;
    let key = default_key(&http, lite.addr).await;
    for n in 0..400 {
        let (_, ev) = event(n);
        let r = http
            .post(format!(
                "http://{}/api/1/store/?sentry_key={key}",
                lite.addr
            ))
            .body(ev.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Resolve one issue, then see it again (a regression).
    let r = http
        .put(format!("http://{}/api/0/issues/1/", lite.addr))
        .bearer_auth(TOKEN)
        .json(&json!({"status": "resolved"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, again) = event(400);
    http.post(format!(
        "http://{}/api/1/store/?sentry_key={key}",
        lite.addr
    ))
    .body(again.to_string())
    .send()
    .await
    .unwrap();
    let paths = [
        "/api/0/projects/",
        "/api/0/projects/1/stats/",
        "/api/0/projects/1/issues/?status=all&sort=count&limit=100",
        "/api/0/issues/1/",
        "/api/0/projects/1/classes/",
        "/api/0/projects/1/tags/release/values/",
    ];
    // A debug file, whose bytes the copy takes into the database.
    let work = tempfile::tempdir().unwrap();
    let dif = debug_file(work.path());
    upload_debug_file(&http, lite.addr, &dif).await;
    let mut before = Vec::new();
    for p in paths {
        before.push(get(&http, lite.addr, p).await);
    }
    let mut child = lite.child;
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let database = cluster.fresh_database().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_errscope-collector"))
        .args(["migrate", "--from-sqlite"])
        .arg(data.path())
        .args(["--to", &database])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("events: 401 rows"), "{text}");
    assert!(text.contains("debug files: 1 copied"), "{text}");
    // A second copy into the same database is refused, and changes nothing.
    let twice = Command::new(env!("CARGO_BIN_EXE_errscope-collector"))
        .args(["migrate", "--from-sqlite"])
        .arg(data.path())
        .args(["--to", &database])
        .output()
        .await
        .unwrap();
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("empty database"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );

    let other = tempfile::tempdir().unwrap();
    let pg = start_node(other.path(), &database, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("a collector on the copy");
    wait_for("the debug file on the new node", || {
        node_difs(other.path()) == [dif.clone()]
    })
    .await;
    for (p, b) in paths.iter().zip(&before) {
        let mut a = get(&http, pg.addr, p).await;
        let mut b = b.clone();
        // DSNs name the node's own address.
        for v in [&mut a, &mut b] {
            if let Some(list) = v.as_array_mut() {
                for p in list {
                    p["dsn"] = Value::Null;
                }
            }
        }
        assert_eq!(a, b, "{p} differs after the copy");
    }
    // The same key still works, ids go on after the copied ones, and counts go on.
    let (_, next) = event(401);
    let r = http
        .post(format!("http://{}/api/1/store/?sentry_key={key}", pg.addr))
        .body(next.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stats = get(&http, pg.addr, "/api/0/projects/1/stats/").await;
    assert_eq!(stats["events"], 402, "{stats}");
    let r = http
        .post(format!("http://{}/api/0/projects/", pg.addr))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["id"], 2, "{p}");
}

/// A collector on SQLite under `data`.
async fn start_sqlite_node(data: &Path) -> Node {
    start_on(data, None, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("a collector on SQLite")
}

async fn default_key(http: &reqwest::Client, addr: SocketAddr) -> String {
    let projects = get(http, addr, "/api/0/projects/").await;
    let dsn = projects[0]["dsn"].as_str().unwrap();
    dsn.split("//")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned()
}
