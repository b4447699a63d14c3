//! Debug files end to end: the real sentry-cli against a real collector, the multipart
//! upload, the `debug-files` subcommand while `serve` runs, eviction and bad input; and
//! minidumps, symbolicated with the Breakpad files sentry-cli uploads.

mod minidumps;
#[allow(dead_code, reason = "the helpers other test binaries use")]
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sha1::Digest as _;
use util::*;

/// Tiny C programs built with debug info, split with `objcopy --only-keep-debug`.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hello-<n>` programs (`n` in 1..=4 changes the code, so each has its own build id),
/// each with `hello-<n>.debug`, its debug companion.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        std::fs::write(
            dir.join("hello.c"),
            "#include <stdio.h>\n\
             static int add(int a, int b) { return a + b * VARIANT; }\n\
             int main(int argc, char **argv) {\n\
             \x20   printf(\"%d %s\\n\", add(argc, 2), argv[0]);\n\
             \x20   return 0;\n\
             }\n",
        )
        .unwrap();
        for n in 1..=4 {
            let exe = dir.join(format!("hello-{n}"));
            run(Command::new("gcc")
                .args(["-g", "-O0", "-Wl,--build-id"])
                .arg(format!("-DVARIANT={n}"))
                .arg("-o")
                .arg(&exe)
                .arg(dir.join("hello.c")));
            run(Command::new("objcopy")
                .arg("--only-keep-debug")
                .arg(&exe)
                .arg(dir.join(format!("hello-{n}.debug"))));
        }
        Fixture { dir }
    })
}

/// The real sentry-cli from npm (`scripts/setup` installs it in collector/tests/tools).
fn sentry_cli() -> PathBuf {
    if let Ok(p) = std::env::var("SENTRY_CLI") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/node_modules/.bin/sentry-cli");
    assert!(
        p.exists(),
        "sentry-cli is not installed at {}: run scripts/setup (npm ci in collector/tests/tools)",
        p.display()
    );
    p
}

fn sentry_cli_cmd(base: &str) -> Command {
    let mut c = Command::new(sentry_cli());
    c.args(["--url", base, "--auth-token", TOKEN, "--log-level", "info"])
        .env("SENTRY_DISABLE_UPDATE_CHECK", "true")
        .env("SENTRY_LOAD_DOTENV", "0")
        .env("HOME", std::env::temp_dir())
        .env_remove("SENTRY_ORG")
        .env_remove("SENTRY_PROJECT")
        .env_remove("SENTRY_AUTH_TOKEN");
    c
}

fn sha1_hex(data: &[u8]) -> String {
    sha1::Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn dsyms(s: &Server) -> Vec<Value> {
    let (st, body) = s.api("/api/0/projects/any/default/files/dsyms/").await;
    assert_eq!(st, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn upload_multipart(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    data: Vec<u8>,
) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(data).file_name(name.to_owned()),
    );
    let r = http
        .post(format!("{base}/api/0/projects/any/default/files/dsyms/"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn stored_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(data_dir.join("difs")) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if name == "tmp" || name == "chunks" || !e.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_cli_uploads_a_debug_file_and_its_sources() {
    let f = fixture();
    let s = server().await;
    let mut news = s.state.difs.subscribe();
    let debug = f.path("hello-1.debug");
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        sentry_cli_cmd(&base)
            .args([
                "debug-files",
                "upload",
                "--org",
                "anything",
                "--project",
                "default",
                "--include-sources",
            ])
            .arg(&debug)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sentry-cli failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}\n{stderr}");

    let files = dsyms(&s).await;
    assert_eq!(files.len(), 2, "{files:?}");
    let elf = files
        .iter()
        .find(|d| d["kind"] == "elf")
        .expect("the ELF file");
    let bundle = files
        .iter()
        .find(|d| d["kind"] == "sourcebundle")
        .expect("the source bundle");
    assert_eq!(elf["objectName"], "hello-1.debug");
    assert_eq!(elf["cpuName"], "x86_64");
    assert_eq!(elf["data"]["type"], "dbg");
    let features = elf["features"].as_array().unwrap();
    assert!(features.contains(&"debug".into()), "{elf}");
    assert_eq!(elf["hasSources"], false);
    assert_eq!(bundle["hasSources"], true);
    assert_eq!(bundle["debugId"], elf["debugId"]);
    let bytes = std::fs::read(f.path("hello-1.debug")).unwrap();
    assert_eq!(elf["sha1"], sha1_hex(&bytes));
    assert_eq!(elf["size"], bytes.len());

    // The code id is the GNU build id, the debug id derived from it as Sentry does.
    let code_id = elf["codeId"].as_str().unwrap().to_owned();
    assert_eq!(code_id.len(), 40, "{elf}");
    let debug_id = elf["debugId"].as_str().unwrap().to_owned();
    let le = |s: &str| {
        (0..s.len())
            .step_by(2)
            .rev()
            .map(|i| &s[i..i + 2])
            .collect::<String>()
    };
    let expect = format!(
        "{}-{}-{}-{}-{}",
        le(&code_id[0..8]),
        le(&code_id[8..12]),
        le(&code_id[12..16]),
        &code_id[16..20],
        &code_id[20..32]
    );
    assert_eq!(debug_id, expect);

    // The symbolication interface.
    let m = s
        .state
        .difs
        .find(&debug_id, None)
        .expect("found by debug id");
    assert!(m.has_debug_info);
    assert_eq!(m.kind, errscope_collector::difs::DifKind::Elf);
    assert_eq!(std::fs::read(&m.path).unwrap(), bytes);
    let by_code = s
        .state
        .difs
        .find("00000000-0000-0000-0000-000000000000", Some(&code_id))
        .expect("found by code id");
    assert_eq!(by_code.path, m.path);
    let bundle_path = s.state.difs.find_sources(&debug_id).expect("source bundle");
    let zip = std::fs::read(&bundle_path).unwrap();
    assert!(zip.starts_with(b"SYSB"), "a symbolic source bundle");
    assert!(
        s.state
            .difs
            .find(&debug_id.replace('-', "").to_uppercase(), None)
            .is_some(),
        "the Breakpad spelling of the id matches too"
    );
    let mut announced = Vec::new();
    while let Ok(n) = news.try_recv() {
        announced.push(n);
    }
    assert!(
        announced
            .iter()
            .any(|n| n.debug_id == debug_id && n.code_id.as_deref() == Some(&code_id)),
        "{announced:?}"
    );

    // Uploading again stores nothing new.
    let base = s.base.clone();
    let debug = f.path("hello-1.debug");
    let again = tokio::task::spawn_blocking(move || {
        sentry_cli_cmd(&base)
            .args(["debug-files", "upload", "--org", "o", "--project", "1"])
            .arg(&debug)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(dsyms(&s).await.len(), 2);
    // `debug-files check` reads the file locally.
    let debug = f.path("hello-1.debug");
    let base = s.base.clone();
    let check = tokio::task::spawn_blocking(move || {
        sentry_cli_cmd(&base)
            .args(["debug-files", "check"])
            .arg(&debug)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(text.contains(&debug_id), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn curl_upload_list_delete_and_the_cli_while_serve_runs() {
    let f = fixture();
    let data = tempfile::tempdir().unwrap();
    let mut child = spawn_binary(data.path(), &[]).await;
    let http = reqwest::Client::new();
    let base = child.base.clone();

    // curl -F file=@hello-1.debug
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-H", &format!("Authorization: Bearer {TOKEN}"), "-F"])
        .arg(format!("file=@{}", f.path("hello-1.debug").display()))
        .arg(format!("{base}/api/0/projects/any/default/files/dsyms/"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body[0]["objectName"], "hello-1.debug", "{body}");
    assert_eq!(body[0]["kind"], "elf");
    let first_id = body[0]["id"].as_str().unwrap().to_owned();

    // The subcommand writes to the same data dir; the running collector sees it.
    let cli = collector_command(data.path())
        .args(["debug-files", "upload", "--project", "default", "--data"])
        .arg(data.path())
        .arg(f.path("hello-2.debug"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(text.contains("stored hello-2.debug"), "{text}");
    let mut listed = Vec::new();
    for _ in 0..50 {
        let (_, b) = api_at(&http, &base, "/api/0/projects/x/default/files/dsyms/").await;
        listed = b.as_array().cloned().unwrap_or_default();
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["objectName"], "hello-2.debug");
    let second_id = listed[0]["id"].as_str().unwrap().to_owned();

    let cli_list = collector_command_blocking(data.path())
        .args(["debug-files", "list", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cli_list.stdout);
    assert!(
        text.contains("hello-1.debug") && text.contains("hello-2.debug"),
        "{text}"
    );

    // DELETE through the API, then the other one through the subcommand.
    let r = http
        .delete(format!(
            "{base}/api/0/projects/x/default/files/dsyms/?id={first_id}"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .delete(format!(
            "{base}/api/0/projects/x/default/files/dsyms/?id={first_id}"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert!(
        b["detail"].as_str().unwrap().contains("no debug file"),
        "{b}"
    );
    let del = collector_command_blocking(data.path())
        .args(["debug-files", "delete", &second_id, "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(del.status.success());
    for _ in 0..50 {
        let (_, b) = api_at(&http, &base, "/api/0/projects/x/default/files/dsyms/").await;
        listed = b.as_array().cloned().unwrap_or_default();
        if listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed.is_empty(), "{listed:?}");
    assert!(stored_files(data.path()).is_empty());

    // Without the token: 401, as for the rest of the API.
    let r = http
        .get(format!("{base}/api/0/projects/x/default/files/dsyms/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let _ = child.child.kill().await;
}

#[tokio::test]
async fn least_recently_used_files_are_evicted_beyond_the_budget() {
    let f = fixture();
    let read = |n: u32| std::fs::read(f.path(&format!("hello-{n}.debug"))).unwrap();
    let sizes: Vec<u64> = (1..=3).map(|n| read(n).len() as u64).collect();
    let budget = sizes[0] + sizes[1] + sizes[2] / 2;
    let s = server_with(|c| c.difs_max_bytes = budget).await;
    let (st, a) = upload_multipart(&s.http, &s.base, "a.debug", read(1)).await;
    assert_eq!(st, 201, "{a}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (st, b) = upload_multipart(&s.http, &s.base, "b.debug", read(2)).await;
    assert_eq!(st, 201, "{b}");
    // `a` is older but was used since: `b` is the least recently used.
    let a_id: i64 = a[0]["id"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.state.difs.mark_used(a_id);
    let (st, c) = upload_multipart(&s.http, &s.base, "c.debug", read(3)).await;
    assert_eq!(st, 201, "{c}");
    let names: Vec<String> = dsyms(&s)
        .await
        .iter()
        .map(|d| d["objectName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["c.debug", "a.debug"]);
    let listed = dsyms(&s).await;
    assert!(listed[1]["lastUsed"].is_string(), "{listed:?}");
    assert_eq!(stored_files(&s.state.config.data_dir).len(), 2);
    assert!(
        s.state
            .difs
            .find(b[0]["debugId"].as_str().unwrap(), None)
            .is_none()
    );
    // A file larger than the whole budget is refused.
    let mut big = read(4);
    big.resize(budget as usize + 1, 0);
    let (st, body) = upload_multipart(&s.http, &s.base, "big.debug", big).await;
    assert_eq!(st, 413, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("budget"),
        "{body}"
    );
    assert_eq!(dsyms(&s).await.len(), 2);
    s.stop().await;
}

/// A source bundle (symbolic's `SYSB` header, then a zip) that inflates to 200 MB.
fn zip_bomb() -> Vec<u8> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    w.start_file("manifest.json", opts).unwrap();
    w.write_all(
        br#"{"files":{},"attributes":{"debug_id":"3b25f3a8-4a2c-4c0d-8b1d-9f8e7d6c5b4a"}}"#,
    )
    .unwrap();
    w.start_file("files/zeros.c", opts).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        w.write_all(&zeros).unwrap();
    }
    let mut out = b"SYSB\x02\0\0\0".to_vec();
    out.extend(w.finish().unwrap().into_inner());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_4xx_and_store_nothing() {
    let f = fixture();
    let s = server().await;
    let good = std::fs::read(f.path("hello-1.debug")).unwrap();
    let detail = |b: &Value| b["detail"].as_str().unwrap_or_default().to_owned();

    // A truncated ELF file, a text file, a zip bomb.
    let (st, b) = upload_multipart(
        &s.http,
        &s.base,
        "cut.debug",
        good[..good.len() / 2].to_vec(),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    assert!(detail(&b).contains("truncated"), "{b}");
    let (st, b) =
        upload_multipart(&s.http, &s.base, "notes.txt", b"just some notes\n".to_vec()).await;
    assert_eq!(st, 400, "{b}");
    assert!(detail(&b).contains("not a debug file"), "{b}");
    let bomb = zip_bomb();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let (st, b) = upload_multipart(&s.http, &s.base, "bomb.src.zip", bomb).await;
    assert_eq!(st, 400, "{b}");
    assert!(detail(&b).contains("zip bomb"), "{b}");

    // A chunk whose content does not match its name.
    let chunk_url = format!("{}/api/0/organizations/o/chunk-upload/", s.base);
    let (st, opts) = s.api("/api/0/organizations/o/chunk-upload/").await;
    assert_eq!(st, 200);
    assert_eq!(opts["hashAlgorithm"], "sha1");
    assert_eq!(opts["url"], chunk_url);
    let chunk_size = opts["chunkSize"].as_u64().unwrap() as usize;
    let post_chunk = |name: String, data: Vec<u8>| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name(name),
        );
        s.http
            .post(&chunk_url)
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
    };
    let r = post_chunk(sha1_hex(b"something else"), good.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert!(detail(&b).contains("SHA-1"), "{b}");
    // An oversize chunk and an oversize request.
    let r = post_chunk(sha1_hex(b"x"), vec![7u8; chunk_size + 1])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let b: Value = r.json().await.unwrap();
    assert!(detail(&b).contains("chunk size"), "{b}");
    let max_request = opts["maxRequestSize"].as_u64().unwrap() as usize;
    // Refused on its announced length, before the body is read: the head alone gets the
    // answer (a client writing the whole body may see the connection close under it).
    let answer = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = s.base.trim_start_matches("http://").to_owned();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /api/0/organizations/o/chunk-upload/ HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {TOKEN}\r\n\
             Content-Type: multipart/form-data; boundary=x\r\n\
             Content-Length: {}\r\n\r\n",
            max_request + 1024
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.contains("\"detail\""), "{answer}");

    // Assemble for chunks never sent: `not_found` with every chunk missing (the
    // protocol's answer, which sentry-cli needs to know what to send).
    let assemble_url = format!("{}/api/0/projects/o/default/files/difs/assemble/", s.base);
    let sum = sha1_hex(&good);
    let req = serde_json::json!({ sum.clone(): {"name": "hello.debug", "chunks": [sum.clone()]} });
    let r = s
        .http
        .post(&assemble_url)
        .bearer_auth(TOKEN)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b[&sum]["state"], "not_found", "{b}");
    assert_eq!(b[&sum]["missingChunks"], serde_json::json!([sum.clone()]));
    // Chunks that do not make up the announced file: `error`, with the reason.
    let half = &good[..good.len() / 2];
    let r = post_chunk(sha1_hex(half), half.to_vec()).await.unwrap();
    assert_eq!(r.status(), 200);
    let req =
        serde_json::json!({ sum.clone(): {"name": "hello.debug", "chunks": [sha1_hex(half)]} });
    let r = s
        .http
        .post(&assemble_url)
        .bearer_auth(TOKEN)
        .json(&req)
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b[&sum]["state"], "error", "{b}");
    assert!(b[&sum]["detail"].as_str().unwrap().contains("SHA-1"), "{b}");
    // A malformed assemble body, an unknown project.
    let r = s
        .http
        .post(&assemble_url)
        .bearer_auth(TOKEN)
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (st, b) = s.api("/api/0/projects/o/nope/files/dsyms/").await;
    assert_eq!(st, 404, "{b}");

    assert!(dsyms(&s).await.is_empty());
    assert!(stored_files(&s.state.config.data_dir).is_empty());
    // The collector still ingests.
    let r = s
        .post_envelope(envelope(&[event(&event_id(1), "f", "v")]))
        .await;
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[test]
fn find_prefers_debug_info_to_a_symbol_table_and_ignores_source_bundles() {
    use errscope_collector::difs::{DifKind, Difs};
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    // The store's futures run on this runtime; `Difs`' blocking methods are called from
    // this thread, outside it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (store, difs) = rt.block_on(async {
        let store = errscope_collector::state::open_store_for_tools(
            dir.path(),
            errscope_testkit::store::database_for(dir.path()),
        )
        .await
        .unwrap();
        store.create_project("default").await.unwrap();
        let difs = Difs::open(dir.path(), 1 << 30, store.clone())
            .await
            .unwrap();
        (store, difs)
    });
    // The same build twice: with its symbol table only, and its debug companion.
    let symtab_only = f.path("hello-1.symtab");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&symtab_only)
        .arg(f.path("hello-1")));
    let lean = difs
        .add_bytes(1, "hello-1", &std::fs::read(&symtab_only).unwrap())
        .unwrap();
    assert!(lean.features.symtab && !lean.features.debug, "{lean:?}");
    let m = difs.find(&lean.debug_id, None).unwrap();
    assert!(!m.has_debug_info);
    let full = difs
        .add_bytes(
            1,
            "hello-1.debug",
            &std::fs::read(f.path("hello-1.debug")).unwrap(),
        )
        .unwrap();
    assert_eq!(full.debug_id, lean.debug_id);
    let m = difs.find(&lean.debug_id, full.code_id.as_deref()).unwrap();
    assert_eq!(m.id, full.id);
    assert!(m.has_debug_info);
    assert_eq!(m.kind, DifKind::Elf);
    assert!(difs.find_sources(&lean.debug_id).is_none());
    assert!(difs.find("not an id", None).is_none());
    // Deleting the better file falls back to the other one.
    assert!(difs.delete(None, full.id).unwrap());
    assert_eq!(difs.find(&lean.debug_id, None).unwrap().id, lean.id);
    assert!(!difs.delete(None, full.id).unwrap());
    rt.block_on(store.close());
}
