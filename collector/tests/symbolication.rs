//! Server-side symbolication end to end: a host built with the official `sentry` crate
//! (`debug-images`), in release with `debug = 2`, split with `objcopy --only-keep-debug`
//! and stripped with `strip --strip-all`; the stripped binary's envelopes go to a real
//! collector whose debug file lookup holds the `.debug` file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use errscope_collector::symbolicate::{DebugFileLookup, DifMatch, DirectoryLookup};
use serde_json::Value;

use crate::util::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/symbolicate-host"
);

/// The fixture, built once per test run.
struct Host {
    /// The stripped binary, named as the crate (`fixture-host`).
    stripped: PathBuf,
    /// Its debug companion, alone in a directory.
    debug_dir: PathBuf,
    debug_file: PathBuf,
    /// The debug id the collector sees.
    debug_id: String,
}

static HOST: OnceLock<Result<Host, String>> = OnceLock::new();

fn run(cmd: &mut std::process::Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn build_host() -> Result<Host, String> {
    // Kept between test runs, and shared with the agent's child fixture
    // (agent/tests/fixtures/child_builds.rs), whose release profile is this one: the
    // dependencies both have (backtrace, gimli, serde, url, ...) are built once.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-target");
    let started = Instant::now();
    run(std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
        ])
        .arg(Path::new(FIXTURE).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS"))?;
    eprintln!(
        "symbolication fixture: release build took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let built = target.join("release/fixture-host");
    let out = target.join("split");
    let debug_dir = out.join("debug");
    let bin_dir = out.join("bin");
    for d in [&debug_dir, &bin_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let debug_file = debug_dir.join("fixture-host.debug");
    let stripped = bin_dir.join("fixture-host");
    run(std::process::Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&built)
        .arg(&debug_file))?;
    run(std::process::Command::new("strip")
        .arg("--strip-all")
        .arg(&built)
        .arg("-o")
        .arg(&stripped))?;
    let lookup = DirectoryLookup::scan(&debug_dir).map_err(|e| e.to_string())?;
    if lookup.len() != 1 {
        return Err(format!("{} is not a debug file", debug_file.display()));
    }
    let debug_id = debug_id_of(&stripped)?;
    Ok(Host {
        stripped,
        debug_dir,
        debug_file,
        debug_id,
    })
}

fn debug_id_of(path: &Path) -> Result<String, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let obj = symbolic_debuginfo::Object::parse(&data).map_err(|e| e.to_string())?;
    Ok(obj.debug_id().to_string())
}

fn host() -> &'static Host {
    match HOST.get_or_init(build_host) {
        Ok(h) => h,
        Err(e) => panic!("building the fixture host: {e}"),
    }
}

/// Runs the stripped host; returns its envelopes: the error, then the panic.
fn envelopes_of(host: &Host) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&host.stripped)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut list: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    list.sort();
    assert_eq!(list.len(), 2, "an error and a panic: {list:?}");
    list.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// The event JSON of an envelope (its one `event` item).
fn event_of(envelope: &[u8]) -> Value {
    let mut lines = envelope.split(|b| *b == b'\n');
    lines.next();
    while let Some(head) = lines.next() {
        let h: Value = serde_json::from_slice(head).unwrap();
        let payload = lines.next().unwrap();
        if h["type"] == "event" {
            return serde_json::from_slice(payload).unwrap();
        }
    }
    panic!("no event in the envelope");
}

/// The line of `// MARK: <name>` in the fixture's main.rs.
fn mark(name: &str) -> u64 {
    let src = std::fs::read_to_string(Path::new(FIXTURE).join("src/main.rs")).unwrap();
    let tag = format!("// MARK: {name}");
    1 + src.lines().position(|l| l.ends_with(&tag)).unwrap() as u64
}

/// The 1-based column of `text` on the line of `// MARK: <name>`: where the expression
/// the DWARF line table or inlined call points at starts.
fn col(name: &str, text: &str) -> u64 {
    let src = std::fs::read_to_string(Path::new(FIXTURE).join("src/main.rs")).unwrap();
    let line = src.lines().nth(mark(name) as usize - 1).unwrap();
    1 + line.find(text).unwrap() as u64
}

/// The index of the host's own image in `debug_meta.images`.
fn main_image(ev: &Value) -> usize {
    ev["debug_meta"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .position(|i| {
            i["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("/fixture-host"))
        })
        .unwrap_or_else(|| panic!("no fixture-host image: {:#}", ev["debug_meta"]))
}

fn frames_of(ev: &Value) -> Vec<Value> {
    let from_exc = ev
        .pointer("/exception/values/0/stacktrace/frames")
        .and_then(Value::as_array);
    let from_thread = ev
        .pointer("/threads/values/0/stacktrace/frames")
        .and_then(Value::as_array);
    from_exc.or(from_thread).cloned().unwrap_or_default()
}

/// Whether the host's own frames are bare addresses (libc's may have names and lines:
/// it is not stripped).
fn unresolved(ev: &Value) -> bool {
    let frames = frames_of(ev);
    frames.iter().any(|f| f["function"] == "<unknown>")
        && !frames.iter().any(|f| {
            f["function"]
                .as_str()
                .is_some_and(|n| n.starts_with("fixture_host::"))
        })
}

fn find<'a>(frames: &'a [Value], function: &str) -> &'a Value {
    frames
        .iter()
        .find(|f| f["function"] == function)
        .unwrap_or_else(|| panic!("no frame {function} in {frames:#?}"))
}

/// A lookup whose files can appear later, as uploads do.
#[derive(Debug, Default)]
struct Later(Mutex<Option<DirectoryLookup>>);

impl DebugFileLookup for Later {
    fn find(&self, debug_id: &str, code_id: Option<&str>) -> Option<DifMatch> {
        self.0.lock().unwrap().as_ref()?.find(debug_id, code_id)
    }
    fn find_sources(&self, debug_id: &str) -> Option<PathBuf> {
        self.0.lock().unwrap().as_ref()?.find_sources(debug_id)
    }
}

async fn post(s: &Server, envelope: Vec<u8>) -> String {
    let r = s.post_envelope(envelope).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn stored(s: &Server, id: &str) -> Value {
    let (st, ev) = s.api(&format!("/api/0/projects/1/events/{id}/")).await;
    assert_eq!(st, 200, "{ev}");
    ev
}

#[tokio::test]
async fn sentry_events_from_a_stripped_binary_are_symbolicated() {
    let host = tokio::task::spawn_blocking(host).await.unwrap();
    let lookup = DirectoryLookup::scan(&host.debug_dir).unwrap();
    let s = server_with(|c| c.debug_files = Some(Arc::new(lookup))).await;
    let envs = envelopes_of(host);
    // As the stripped host sent it: addresses, no names.
    let raw = event_of(&envs[0]);
    assert!(unresolved(&raw), "{raw:#}");
    let main_image = main_image(&raw);
    assert_eq!(
        raw["debug_meta"]["images"][main_image]["id"],
        host.debug_id.as_str()
    );

    let error = stored(&s, &post(&s, envs[0].clone()).await).await;
    let frames = frames_of(&error);
    let validate = find(&frames, "fixture_host::validate");
    let checkout = find(&frames, "fixture_host::checkout");
    let main = find(&frames, "fixture_host::main");
    // `validate` is inlined into `checkout`: two frames at one address, caller first.
    assert_eq!(validate["instruction_addr"], checkout["instruction_addr"]);
    let pos = |f: &Value| frames.iter().position(|x| x == f).unwrap();
    assert_eq!(pos(checkout) + 1, pos(validate), "{frames:#?}");
    assert!(pos(main) < pos(checkout));
    // Columns: of the call that captured (the address's line-table row), of the call to
    // the inlined `validate` (its DW_AT_call_column) and of the call to `checkout`.
    for (f, line, column) in [
        (
            validate,
            mark("capture"),
            col("capture", "sentry::capture_error"),
        ),
        (
            checkout,
            mark("validate"),
            col("validate", "validate(order)"),
        ),
        (main, mark("main"), col("main", "checkout(")),
    ] {
        assert_eq!(f["lineno"], line, "{f:#}");
        assert_eq!(f["colno"], column, "{f:#}");
        assert_eq!(f["filename"], "src/main.rs", "{f:#}");
        assert!(
            f["abs_path"]
                .as_str()
                .unwrap()
                .ends_with("symbolicate-host/src/main.rs"),
            "{f:#}"
        );
        assert_eq!(f["in_app"], true, "{f:#}");
        assert_eq!(f["data"]["symbolicator_status"], "symbolicated");
    }
    // The SDK's and std's frames are not the application's.
    let others: Vec<&Value> = frames
        .iter()
        .filter(|f| {
            let name = f["function"].as_str().unwrap_or("");
            name.starts_with("sentry_core::") || name.starts_with("std::")
        })
        .collect();
    assert!(!others.is_empty(), "{frames:#?}");
    assert!(others.iter().all(|f| f["in_app"] == false), "{others:#?}");
    assert!(
        error.get("errscope").is_none(),
        "nothing missing: {error:#}"
    );

    // The panic in the spawned thread: its exception's trace, symbolicated too.
    let panic = stored(&s, &post(&s, envs[1].clone()).await).await;
    let frames = frames_of(&panic);
    let reconcile = find(&frames, "fixture_host::reconcile");
    assert_eq!(reconcile["lineno"], mark("panic"));
    assert_eq!(reconcile["colno"], col("panic", "expect("), "{reconcile:#}");
    assert_eq!(reconcile["in_app"], true);

    // Grouping ran on the symbolicated frames: the culprits are the host's functions.
    let (_, issues) = s.api("/api/0/projects/1/issues/").await;
    let mut culprits: Vec<&str> = issues["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["culprit"].as_str().unwrap())
        .collect();
    culprits.sort();
    assert_eq!(
        culprits,
        ["fixture_host::reconcile", "fixture_host::validate"],
        "{issues:#}"
    );

    // The agent's in-app rules (contexts.errscope) win over the executable's name.
    let mut agent = raw.clone();
    agent["event_id"] = event_id(77).into();
    agent["debug_meta"]["images"][main_image]["name"] = "/opt/renamed-binary".into();
    agent["contexts"]["errscope"] =
        serde_json::json!({"type": "errscope", "in_app_include": ["fixture_host"]});
    let with_rules = stored(&s, &post(&s, envelope(&[agent.clone()])).await).await;
    assert_eq!(
        find(&frames_of(&with_rules), "fixture_host::validate")["in_app"],
        true
    );
    agent["event_id"] = event_id(78).into();
    agent["contexts"]["errscope"]["in_app_include"] = serde_json::json!([]);
    let by_name = stored(&s, &post(&s, envelope(&[agent])).await).await;
    assert_eq!(
        find(&frames_of(&by_name), "fixture_host::validate")["in_app"],
        false,
        "the host crate is named after the executable, renamed-binary"
    );
    s.stop().await;
}

#[tokio::test]
async fn events_sent_before_their_debug_file_are_symbolicated_when_it_arrives() {
    let host = tokio::task::spawn_blocking(host).await.unwrap();
    let lookup = Arc::new(Later::default());
    let l = lookup.clone();
    let s = server_with(move |c| c.debug_files = Some(l)).await;
    let envs = envelopes_of(host);
    let first = event_of(&envs[0]);
    let mut second = first.clone();
    second["event_id"] = event_id(9).into();
    let a = post(&s, envelope(&[first])).await;
    let b = post(&s, envelope(&[second])).await;

    // No debug file yet: stored as sent, with the image that lacks one.
    let before = stored(&s, &a).await;
    assert!(unresolved(&before), "{before:#}");
    let missing = before["errscope"]["missing_debug_files"]
        .as_array()
        .unwrap();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["debug_id"], host.debug_id.as_str());
    assert!(
        missing[0]["code_file"]
            .as_str()
            .unwrap()
            .ends_with("/fixture-host")
    );
    assert!(missing[0]["code_id"].as_str().unwrap().len() >= 32);
    let issue = before["issue_id"].clone();

    // The file arrives. Viewing an event symbolicates it...
    *lookup.0.lock().unwrap() = Some(DirectoryLookup::scan(&host.debug_dir).unwrap());
    let viewed = stored(&s, &a).await;
    assert_eq!(
        find(&frames_of(&viewed), "fixture_host::validate")["lineno"],
        mark("capture")
    );
    assert_eq!(viewed["errscope"]["symbolicated_after_ingest"], true);
    assert!(viewed["errscope"].get("missing_debug_files").is_none());
    assert_eq!(viewed["issue_id"], issue, "it stays in its issue");

    // ...and reprocessing the image rewrites the others (only `b` still waited).
    let n = errscope_collector::symbolicate::reprocess_image(&s.state, &host.debug_id)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let (_, rows) = {
        let state = s.state.clone();
        let id = host.debug_id.clone();
        let rows = state.store.waiting_for_image(&id, 0, 10).await.unwrap();
        ((), rows)
    };
    assert!(rows.is_empty(), "nothing waits any more");
    let redone = stored(&s, &b).await;
    let frames = frames_of(&redone);
    assert_eq!(
        find(&frames, "fixture_host::checkout")["lineno"],
        mark("validate")
    );
    assert_eq!(find(&frames, "fixture_host::main")["in_app"], true);
    assert_eq!(redone["issue_id"], issue);
    // A second run finds nothing to do.
    let n = errscope_collector::symbolicate::reprocess_image(&s.state, &host.debug_id)
        .await
        .unwrap();
    assert_eq!(n, 0);
    s.stop().await;
}

/// A lookup with the debug file and a source bundle that can be swapped.
#[derive(Debug)]
struct WithBundle(DirectoryLookup, Mutex<PathBuf>);

impl DebugFileLookup for WithBundle {
    fn find(&self, debug_id: &str, code_id: Option<&str>) -> Option<DifMatch> {
        self.0.find(debug_id, code_id)
    }
    fn find_sources(&self, _: &str) -> Option<PathBuf> {
        Some(self.1.lock().unwrap().clone())
    }
}

/// A source bundle as `sentry-cli` makes it: SYSB header, then a zip with a manifest.
fn bundle(dir: &Path, name: &str, manifest: &[u8], file: &[u8]) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut out = std::fs::File::create(&path).unwrap();
    out.write_all(b"SYSB\x02\x00\x00\x00").unwrap();
    let mut zip = zip::ZipWriter::new(out);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("manifest.json", opts).unwrap();
    zip.write_all(manifest).unwrap();
    zip.start_file("files/main.rs", opts).unwrap();
    zip.write_all(file).unwrap();
    zip.finish().unwrap();
    path
}

#[tokio::test]
async fn source_bundles_give_context_and_bombs_are_refused() {
    let host = tokio::task::spawn_blocking(host).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A real bundle, written by symbolic from the debug file (sources read from disk).
    let good = dir.path().join("fixture.src.zip");
    {
        let data = std::fs::read(&host.debug_file).unwrap();
        let obj = symbolic_debuginfo::Object::parse(&data).unwrap();
        let w = symbolic_debuginfo::sourcebundle::SourceBundleWriter::create(&good).unwrap();
        assert!(w.write_object(&obj, "fixture-host").unwrap());
    }
    let envs = envelopes_of(host);
    let lookup = Arc::new(WithBundle(
        DirectoryLookup::scan(&host.debug_dir).unwrap(),
        Mutex::new(good),
    ));
    let l = lookup.clone();
    let s = server_with(move |c| c.debug_files = Some(l)).await;
    let ev = stored(&s, &post(&s, envs[0].clone()).await).await;
    let frames = frames_of(&ev);
    let src = std::fs::read_to_string(Path::new(FIXTURE).join("src/main.rs")).unwrap();
    let lines: Vec<&str> = src.lines().collect();
    let line = mark("capture") as usize;
    let f = find(&frames, "fixture_host::validate");
    assert_eq!(f["context_line"], lines[line - 1]);
    assert_eq!(
        f["pre_context"],
        serde_json::json!(lines[line - 6..line - 1])
    );
    assert_eq!(f["post_context"], serde_json::json!(lines[line..line + 5]));

    // Bombs: a manifest and a source file that inflate far past the bounds. The frames
    // are still symbolicated, without context, and the collector keeps ingesting.
    let abs = Path::new(FIXTURE).join("src/main.rs");
    let manifest = serde_json::json!({"files": {"files/main.rs": {
        "type": "source", "path": abs.to_str().unwrap()}}, "debug_id": host.debug_id});
    let big_file = vec![b'\n'; 16 << 20];
    let mut big_manifest = serde_json::to_vec(&manifest).unwrap();
    big_manifest.extend(std::iter::repeat_n(b' ', 20 << 20));
    let sym = s.state.symbolicator.clone();
    for (n, (name, m, file)) in [
        (
            "file-bomb.zip",
            serde_json::to_vec(&manifest).unwrap(),
            &big_file[..],
        ),
        ("manifest-bomb.zip", big_manifest, &b"fn main() {}\n"[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let path = bundle(dir.path(), name, &m, file);
        assert!(
            std::fs::metadata(&path).unwrap().len() < 1 << 20,
            "{name} is small on disk"
        );
        *lookup.1.lock().unwrap() = path;
        sym.forget_sources(&host.debug_id);
        let mut ev = event_of(&envs[0]);
        ev["event_id"] = event_id(100 + n as u64).into();
        let ev = stored(&s, &post(&s, envelope(&[ev])).await).await;
        let f = find(&frames_of(&ev), "fixture_host::validate").clone();
        assert_eq!(f["lineno"], mark("capture"), "{name}");
        assert!(f.get("context_line").is_none(), "{name}: {f:#}");
    }
    // And the collector keeps ingesting.
    let again = post(&s, envs[1].clone()).await;
    assert_eq!(stored(&s, &again).await["event_id"], again.as_str());
    s.stop().await;
}

/// The collector's own debug-file store feeds symbolication: an event that came before its
/// debug file is rewritten when the file is uploaded, without anyone viewing it.
#[tokio::test]
async fn an_uploaded_debug_file_symbolicates_the_events_that_waited_for_it() {
    let host = tokio::task::spawn_blocking(host).await.unwrap();
    let s = server().await;
    let envs = envelopes_of(host);
    let id = post(&s, envelope(&[event_of(&envs[0])])).await;
    let waiting = |s: &Server| {
        let state = s.state.clone();
        let debug_id = host.debug_id.clone();
        async move {
            state
                .store
                .waiting_for_image(&debug_id, 0, 10)
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(waiting(&s).await, 1, "the event waits for its image's file");

    let upload = || async {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(&host.debug_file).unwrap())
                .file_name("fixture-host.debug"),
        );
        let r = s
            .http
            .post(format!("{}/api/0/projects/any/1/files/dsyms/", s.base))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    };
    upload().await;

    // Rewritten in the background: poll the queue, not the event (a view would do it too).
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while waiting(&s).await > 0 {
        assert!(Instant::now() < deadline, "the event was not reprocessed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let ev = stored(&s, &id).await;
    assert_eq!(ev["errscope"]["symbolicated_after_ingest"], true, "{ev:#}");
    assert_eq!(
        find(&frames_of(&ev), "fixture_host::validate")["lineno"],
        mark("capture")
    );

    // Deleted: its SymCache leaves memory, and the next event of the image is stored as
    // sent, listing the image as missing its debug file.
    assert_eq!(s.state.symbolicator.cache_usage().0, 1);
    let (_, files) = s.api("/api/0/projects/any/1/files/dsyms/").await;
    let file_id = files[0]["id"].as_str().unwrap().to_owned();
    let r = s
        .http
        .delete(format!(
            "{}/api/0/projects/any/1/files/dsyms/?id={file_id}",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(s.state.symbolicator.cache_usage(), (0, 0));
    let mut later = event_of(&envs[0]);
    later["event_id"] = event_id(201).into();
    let after_delete = stored(&s, &post(&s, envelope(&[later.clone()])).await).await;
    assert!(unresolved(&after_delete), "{after_delete:#}");
    let missing = after_delete["errscope"]["missing_debug_files"]
        .as_array()
        .unwrap();
    assert_eq!(
        missing[0]["debug_id"],
        host.debug_id.as_str(),
        "{missing:?}"
    );

    // Uploaded again: the next event is symbolicated at ingest.
    upload().await;
    later["event_id"] = event_id(202).into();
    let reuploaded = stored(&s, &post(&s, envelope(&[later])).await).await;
    assert_eq!(
        find(&frames_of(&reuploaded), "fixture_host::validate")["lineno"],
        mark("capture"),
        "{reuploaded:#}"
    );
    assert!(reuploaded.get("errscope").is_none(), "{reuploaded:#}");
    s.stop().await;
}
