//! Minidumps from other producers (Breakpad on Windows, Linux, macOS; see
//! fixtures/minidumps/README.md): the multipart endpoint with Crashpad's form fields, the
//! envelope attachment, Breakpad `.sym` files uploaded by the real sentry-cli, the
//! download of the kept dump, and bad dumps.

use super::*;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/minidumps")
        .join(name)
}

fn dump(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// `POST /api/1/minidump/?sentry_key=...` with `upload_file_minidump` and text fields.
async fn post_minidump(s: &Server, data: Vec<u8>, fields: &[(&str, &str)]) -> (u16, String) {
    let mut form = reqwest::multipart::Form::new().part(
        "upload_file_minidump",
        reqwest::multipart::Part::bytes(data).file_name("crash.dmp"),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let r = s
        .http
        .post(format!("{}/api/1/minidump/?sentry_key={}", s.base, s.key))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn stored(s: &Server, id: &str) -> Value {
    let (st, ev) = s.api(&format!("/api/0/projects/1/events/{id}/")).await;
    assert_eq!(st, 200, "{ev}");
    ev
}

fn crash_frames(ev: &Value) -> Vec<Value> {
    ev["exception"]["values"][0]["stacktrace"]["frames"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_windows_dump_is_symbolicated_with_the_sym_file_sentry_cli_uploaded() {
    let s = server().await;
    // Before its `.sym` file: addresses only, the module listed as missing its file.
    let raw = dump("test.dmp");
    let (st, early) = post_minidump(&s, raw.clone(), &[]).await;
    assert_eq!(st, 200, "{early}");
    let ev = stored(&s, &early).await;
    assert!(
        crash_frames(&ev).last().unwrap()["function"].is_null(),
        "{ev}"
    );
    let base = s.base.clone();
    let sym = fixture("test_app.sym");
    let out = tokio::task::spawn_blocking(move || {
        sentry_cli_cmd(&base)
            .args([
                "debug-files",
                "upload",
                "--org",
                "o",
                "--project",
                "default",
            ])
            .arg(&sym)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = dsyms(&s).await;
    let f = files
        .iter()
        .find(|f| f["kind"] == "breakpad")
        .unwrap_or_else(|| panic!("no breakpad file in {files:?}"));
    // The debug id of the MODULE line (`5A9832E5287241C1838ED98914E9B7FF1`).
    assert_eq!(
        f["debugId"], "5a9832e5-2872-41c1-838e-d98914e9b7ff-1",
        "{f}"
    );

    // The early event is symbolicated now that the file is there.
    let ev = stored(&s, &early).await;
    assert_eq!(
        crash_frames(&ev).last().unwrap()["function"],
        "`anonymous namespace'::CrashFunction",
        "{ev}"
    );

    let (st, id) = post_minidump(
        &s,
        raw.clone(),
        &[
            ("sentry[release]", "test_app@1.0"),
            ("sentry[environment]", "staging"),
            ("sentry[tags][gpu]", "nv"),
            ("sentry[user][id]", "42"),
            ("prod", "TestApp"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{id}");
    let ev = stored(&s, &id).await;
    let ex = &ev["exception"]["values"][0];
    assert_eq!(ex["type"], "EXCEPTION_ACCESS_VIOLATION_WRITE", "{ex}");
    assert_eq!(ex["mechanism"]["data"]["crash_address"], "0x45", "{ex}");
    assert_eq!(ev["level"], "fatal");
    assert_eq!(ev["platform"], "native");
    assert_eq!(ev["release"], "test_app@1.0");
    assert_eq!(ev["environment"], "staging");
    assert_eq!(ev["tags"]["gpu"], "nv");
    assert_eq!(ev["user"]["id"], "42");
    assert_eq!(ev["extra"]["prod"], "TestApp");
    assert_eq!(ev["contexts"]["os"]["name"], "Windows");
    // Newest frame last: the crashing function, its caller, the CRT start, walked by
    // the `.sym` file's CFI.
    let frames = crash_frames(&ev);
    let names: Vec<&str> = frames
        .iter()
        .rev()
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert_eq!(
        names[..3],
        [
            "`anonymous namespace'::CrashFunction",
            "main",
            "__tmainCRTStartup"
        ],
        "{frames:?}"
    );
    assert_eq!(frames.last().unwrap()["lineno"], 58);
    assert!(
        ev["threads"]["values"].as_array().unwrap().len() >= 2,
        "{}",
        ev["threads"]
    );
    let images = ev["debug_meta"]["images"].as_array().unwrap();
    assert!(
        images.iter().any(
            |i| i["code_file"].as_str().unwrap().ends_with("test_app.exe") && i["type"] == "pe"
        ),
        "{images:?}"
    );
    // Grouped like any crash: an issue titled by the crash reason.
    let (_, issues) = s.api("/api/0/projects/1/issues/?status=all").await;
    let issue = issues["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == ev["issue_id"])
        .unwrap();
    assert!(
        issue["title"]
            .as_str()
            .unwrap()
            .contains("EXCEPTION_ACCESS_VIOLATION_WRITE"),
        "{issue}"
    );
    // The raw dump comes back as it was sent.
    let r = s
        .http
        .get(format!(
            "{}/api/0/projects/1/events/{id}/attachments/minidump/",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("crash.dmp")
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), raw);

    // The `.sym` file was parsed once for the stackwalks: another dump of the same build
    // parses nothing.
    let symbols = s.state.minidumps.symbol_files();
    assert_eq!(symbols.parses(), 1);
    let (st, again) = post_minidump(&s, raw.clone(), &[]).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(
        crash_frames(&stored(&s, &again).await).last().unwrap()["function"],
        "`anonymous namespace'::CrashFunction"
    );
    assert_eq!(symbols.parses(), 1);
    // Deleted: its parsed copy goes, and the next dump has addresses only.
    let r = s
        .http
        .delete(format!(
            "{}/api/0/projects/any/default/files/dsyms/?id={}",
            s.base,
            f["id"].as_str().unwrap()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(symbols.usage(), (0, 0));
    let (st, after) = post_minidump(&s, raw.clone(), &[]).await;
    assert_eq!(st, 200, "{after}");
    let ev = stored(&s, &after).await;
    assert!(
        crash_frames(&ev).last().unwrap()["function"].is_null(),
        "{ev}"
    );
    assert_eq!(symbols.parses(), 1);
    s.stop().await;
}

/// The line of `MARK: <name>` in the Linux fixture's source.
fn spin_line(name: &str) -> u64 {
    let src = std::fs::read_to_string(fixture_c()).unwrap();
    let tag = format!("MARK: {name} */");
    1 + src.lines().position(|l| l.ends_with(&tag)).unwrap() as u64
}

fn fixture_c() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minidump-host/spin.c")
}

/// A real Linux dump: a process of our own, built with DWARF, dumped by rust-minidump's
/// `minidump-writer` (over ptrace) while it spins in a known function; its ELF debug file
/// uploaded (the build id is the dump's code id); the dumped thread symbolicated from it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_linux_dump_of_a_live_process_is_symbolicated_with_its_elf_debug_file() {
    use tokio::io::AsyncBufReadExt as _;

    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    let debug = dir.path().join("spin.debug");
    let built = Command::new("gcc")
        .args([
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-Wl,--build-id",
            "-o",
        ])
        .arg(&exe)
        .arg(fixture_c())
        .status()
        .unwrap()
        .success()
        && Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&exe)
            .arg(&debug)
            .status()
            .unwrap()
            .success();
    assert!(
        built,
        "gcc and objcopy build the fixture and its debug file"
    );

    let mut child = tokio::process::Command::new(&exe)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), out.next_line()).await;
    assert_eq!(ready.unwrap().unwrap().as_deref(), Some("ready"));
    let pid = child.id().unwrap() as i32;
    // Past "ready" it may still be returning from `write`: wait until it has spun for
    // 50 ms of user time, which only the loop in `wait_here` can take.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let utime: u64 = after_name.split(' ').nth(11).unwrap().parse().unwrap();
        if utime >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fixture never spun"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = tokio::task::spawn_blocking(move || {
        let mut file = std::io::Cursor::new(Vec::new());
        minidump_writer::minidump_writer::MinidumpWriterConfig::new(pid, pid)
            .write(&mut file)
            .map(|_| file.into_inner())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    child.kill().await.unwrap();
    let raw = written.unwrap_or_else(|e| panic!("minidump-writer could not dump {pid}: {e}"));

    let s = server().await;
    let (st, body) = upload_multipart(
        &s.http,
        &s.base,
        "spin.debug",
        std::fs::read(&debug).unwrap(),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let (st, id) = post_minidump(&s, raw, &[]).await;
    assert_eq!(st, 200, "{id}");
    let ev = stored(&s, &id).await;
    assert_eq!(ev["contexts"]["os"]["name"], "Linux", "{ev}");
    let thread = ev["threads"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == pid)
        .unwrap_or_else(|| panic!("no thread {pid}: {}", ev["threads"]));
    let frames = thread["stacktrace"]["frames"].as_array().unwrap();
    // Newest last: the spinning function, then its caller, named from the debug file.
    let newest: Vec<&Value> = frames.iter().rev().take(2).collect();
    for (f, function, line) in [
        (newest[0], "wait_here", spin_line("spin")),
        (newest[1], "main", spin_line("call")),
    ] {
        assert_eq!(f["function"], function, "{frames:#?}");
        assert_eq!(f["lineno"], line, "{f:#}");
        assert!(
            f["abs_path"]
                .as_str()
                .is_some_and(|p| p.ends_with("minidump-host/spin.c")),
            "{f:#}"
        );
        assert_eq!(f["data"]["symbolicator_status"], "symbolicated", "{f:#}");
    }
    assert!(
        ev.get("errscope")
            .is_none_or(|e| e.get("missing_debug_files").is_none_or(|m| !m
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["code_file"] == exe.to_str().unwrap()))),
        "{ev:#}"
    );
    s.stop().await;
}

#[tokio::test]
async fn linux_and_macos_dumps_and_the_envelope_attachment() {
    let s = server().await;
    // sentry-native's shape: an event item and the dump as an `event.minidump` attachment.
    let linux = dump("linux-mini.dmp");
    let eid = event_id(7001);
    let mut body = format!("{{\"event_id\":\"{eid}\"}}\n").into_bytes();
    let event =
        json!({"release": "native@2", "tags": {"shard": "b"}, "level": "error"}).to_string();
    body.extend(
        format!(
            "{{\"type\":\"event\",\"length\":{}}}\n{event}\n",
            event.len()
        )
        .bytes(),
    );
    body.extend(
        format!(
            "{{\"type\":\"attachment\",\"length\":{},\"attachment_type\":\"event.minidump\",\"filename\":\"linux.dmp\"}}\n",
            linux.len()
        )
        .bytes(),
    );
    body.extend(&linux);
    body.push(b'\n');
    let r = s.post_envelope(body).await;
    assert_eq!(r.status(), 200);
    let ev = stored(&s, &eid).await;
    assert_eq!(
        ev["exception"]["values"][0]["type"], "SIGSEGV",
        "{}",
        ev["exception"]
    );
    assert_eq!(ev["release"], "native@2");
    assert_eq!(ev["tags"]["shard"], "b");
    assert_eq!(ev["level"], "error", "the SDK's level stands");
    assert_eq!(ev["contexts"]["os"]["name"], "Linux");
    assert!(!crash_frames(&ev).is_empty());
    let images = ev["debug_meta"]["images"].as_array().unwrap();
    assert!(images.iter().all(|i| i["type"] == "elf"), "{images:?}");
    assert!(
        images.iter().any(|i| i["code_id"].is_string()),
        "{images:?}"
    );
    assert_eq!(ev["errscope"]["minidump"]["name"], "linux.dmp");
    let r = s
        .http
        .get(format!(
            "{}/api/0/projects/1/events/{eid}/attachments/minidump/",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), linux);

    // A raw body (no form) from a macOS client.
    let r = s
        .http
        .post(format!("{}/api/1/minidump/?sentry_key={}", s.base, s.key))
        .body(dump("pipeline-inlines-macos-segv.dmp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = stored(&s, &r.text().await.unwrap()).await;
    assert_eq!(
        ev["exception"]["values"][0]["type"], "EXC_BAD_ACCESS",
        "{}",
        ev["exception"]
    );
    assert!(
        ev["exception"]["values"][0]["value"]
            .as_str()
            .unwrap()
            .contains("KERN_INVALID_ADDRESS")
    );
    assert_eq!(ev["debug_meta"]["images"][0]["type"], "macho");
    s.stop().await;
}

#[tokio::test]
async fn bad_minidumps_are_refused_or_stored_as_unprocessable() {
    let s = server_with(|c| c.minidumps.max_bytes = 64 * 1024).await;
    let detail = |body: &str| -> String {
        serde_json::from_str::<Value>(body).unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (st, body) = post_minidump(&s, Vec::new(), &[]).await;
    assert_eq!((st, detail(&body).contains("empty")), (400, true), "{body}");
    let (st, body) = post_minidump(&s, b"GIF89a not a dump at all".to_vec(), &[]).await;
    assert_eq!((st, detail(&body).contains("MDMP")), (400, true), "{body}");
    let mut huge = b"MDMP".to_vec();
    huge.resize(64 * 1024 + 1, 0);
    let (st, body) = post_minidump(&s, huge, &[]).await;
    assert_eq!(
        (st, detail(&body).contains("minidump-max-mb")),
        (413, true),
        "{body}"
    );
    // No file field; no key.
    let r = s
        .http
        .post(format!("{}/api/1/minidump/?sentry_key={}", s.base, s.key))
        .multipart(reqwest::multipart::Form::new().text("sentry[release]", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(detail(&r.text().await.unwrap()).contains("upload_file_minidump"));
    let r = s
        .http
        .post(format!("{}/api/1/minidump/", s.base))
        .body(dump("test.dmp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Truncated: the header is there, its streams are not; the event says why.
    let mut cut = dump("test.dmp");
    cut.truncate(2000);
    let (st, id) = post_minidump(&s, cut.clone(), &[("sentry[release]", "r1")]).await;
    assert_eq!(st, 200, "{id}");
    let ev = stored(&s, &id).await;
    let msg = ev["message"].as_str().unwrap_or_else(|| panic!("{ev}"));
    assert!(msg.starts_with("Unprocessable minidump: "), "{ev}");
    assert!(msg.contains("truncated"), "{msg}");
    assert_eq!(ev["errscope"]["minidump"]["processed"], false);
    assert_eq!(ev["release"], "r1");
    // Garbage after a valid signature: stored as unprocessable too, and downloadable.
    let mut junk = b"MDMP".to_vec();
    junk.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let (st, id) = post_minidump(&s, junk.clone(), &[]).await;
    assert_eq!(st, 200, "{id}");
    let ev = stored(&s, &id).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .starts_with("Unprocessable minidump"),
        "{ev}"
    );
    let r = s
        .http
        .get(format!(
            "{}/api/0/projects/1/events/{id}/attachments/minidump/",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), junk);
    s.stop().await;
}

/// `POST`s `data` as Crashpad does; the status, `Retry-After` and body.
async fn post_raw(s: &Server, data: Vec<u8>) -> (u16, Option<String>, String) {
    let form = reqwest::multipart::Form::new().part(
        "upload_file_minidump",
        reqwest::multipart::Part::bytes(data).file_name("crash.dmp"),
    );
    let r = s
        .http
        .post(format!("{}/api/1/minidump/?sentry_key={}", s.base, s.key))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), retry, r.text().await.unwrap())
}

/// The kept dump of an event, as the event page's link downloads it.
async fn download(s: &Server, id: &str) -> (u16, Vec<u8>) {
    let r = s
        .http
        .get(format!(
            "{}/api/0/projects/1/events/{id}/attachments/minidump/",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn concurrent_uploads_are_processed_at_most_workers_at_a_time_and_all_answered() {
    // Waiting for a worker (10 s by default): every upload is processed, two at a time.
    let s = server_with(|c| c.minidumps.workers = 2).await;
    let raw = dump("linux-mini.dmp");
    let answers = futures_util::future::join_all((0..8).map(|_| post_raw(&s, raw.clone()))).await;
    let mut ids = std::collections::HashSet::new();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        ids.insert(body.clone());
    }
    assert_eq!(ids.len(), 8, "{answers:?}");
    for id in &ids {
        assert_eq!(stored(&s, id).await["level"], "fatal");
        assert_eq!(download(&s, id).await, (200, raw.clone()));
    }
    let peak = s.state.minidumps.peak_processing();
    assert!((1..=2).contains(&peak), "at most 2 at once, saw {peak}");
    s.stop().await;

    // No wait at all: an upload that finds the one worker taken is answered 503 with
    // Retry-After, and goes through when the client retries.
    let s = server_with(|c| {
        c.minidumps.workers = 1;
        c.minidumps.queue_wait = Duration::ZERO;
    })
    .await;
    let answers = futures_util::future::join_all((0..8).map(|_| post_raw(&s, raw.clone()))).await;
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for (status, retry, body) in answers {
        match status {
            200 => accepted.push(body),
            503 => {
                refused += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                let detail: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(detail["detail"], "the collector is busy; retry after 1 s");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        !accepted.is_empty() && refused > 0,
        "{} accepted",
        accepted.len()
    );
    assert_eq!(s.state.minidumps.peak_processing(), 1);
    for _ in 0..refused {
        let (status, _, body) = post_raw(&s, raw.clone()).await;
        assert_eq!(status, 200, "{body}");
        accepted.push(body);
    }
    for id in &accepted {
        assert_eq!(download(&s, id).await, (200, raw.clone()));
    }
    s.stop().await;
}

#[tokio::test]
async fn a_dump_goes_with_its_event_when_the_sample_cap_prunes_it() {
    let s = server_with(|c| c.retention.max_events_per_issue = 2).await;
    let raw = dump("linux-mini.dmp");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, _, id) = post_raw(&s, raw.clone()).await;
        assert_eq!(status, 200, "{id}");
        ids.push(id);
    }
    // One crash, one issue: the third event pushed the second out of the samples (the
    // first and the newest are kept).
    let (st, _) = s
        .api(&format!("/api/0/projects/1/events/{}/", ids[1]))
        .await;
    assert_eq!(st, 404);
    let file = |id: &str| s.data_dir().join("minidumps/1").join(format!("{id}.dmp"));
    assert!(file(&ids[1]).exists(), "the disk budget alone left it");
    assert_eq!(s.state.minidumps.sweep().await.unwrap(), 1);
    assert!(!file(&ids[1]).exists());
    assert_eq!(download(&s, &ids[1]).await.0, 404);
    for id in [&ids[0], &ids[2]] {
        assert!(file(id).exists());
        assert_eq!(download(&s, id).await, (200, raw.clone()));
    }
    assert_eq!(s.state.minidumps.sweep().await.unwrap(), 0, "nothing more");
    s.stop().await;
}
