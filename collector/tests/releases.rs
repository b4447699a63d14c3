//! Release health: sessions from the real Python `sentry-sdk` (aggregates) and single
//! sessions as the Node SDK sends them, counted once however often they arrive, per
//! release and environment; new issues per release and the releases of an issue.

use errscope_collector::time::{now_ms, rfc3339};
use serde_json::{Value, json};

use crate::util::*;

/// An envelope of `(type, payload)` items, with `sent_at` as the JavaScript SDKs stamp it.
fn items(sent_at: &str, items: &[(&str, Value)]) -> Vec<u8> {
    let mut out =
        json!({"sent_at": sent_at, "sdk": {"name": "sentry.javascript.node", "version": "8.42.0"}})
            .to_string()
            .into_bytes();
    out.push(b'\n');
    for (ty, payload) in items {
        let p = payload.to_string();
        out.extend_from_slice(json!({"type": ty}).to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(p.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A session update as `@sentry/node` makes it (`makeSession`/`updateSession` JSON).
fn session(sid: &str, did: &str, env: &str, status: &str, errors: u32, init: bool) -> Value {
    let started = now_ms() - 3_600_000;
    json!({
        "sid": sid, "did": did, "init": init,
        "started": rfc3339(started), "timestamp": rfc3339(now_ms()),
        "status": status, "errors": errors, "duration": 12.5,
        "attrs": {"release": "node@1", "environment": env, "user_agent": "node"}
    })
}

fn release<'a>(list: &'a Value, version: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|r| r["version"] == version))
        .unwrap_or_else(|| panic!("no release {version}: {list}"))
}

async fn post(s: &Server, body: Vec<u8>) {
    let r = s.post_envelope(body).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

#[tokio::test]
async fn single_sessions_and_aggregates_count_once_per_release_and_environment() {
    let s = server().await;
    let now = rfc3339(now_ms());
    // s1 ends healthy, and its final update is delivered twice.
    post(
        &s,
        items(
            &now,
            &[(
                "session",
                session("s1", "user-1", "production", "ok", 0, true),
            )],
        ),
    )
    .await;
    let exited = items(
        &now,
        &[(
            "session",
            session("s1", "user-1", "production", "exited", 0, false),
        )],
    );
    post(&s, exited.clone()).await;
    post(&s, exited).await;
    // s2 errs, then crashes; its first update arrives last and changes nothing.
    let mut update = session("s2", "user-1", "production", "ok", 1, false);
    update["seq"] = json!(1);
    let mut crashed = session("s2", "user-1", "production", "crashed", 1, false);
    crashed["seq"] = json!(2);
    post(
        &s,
        items(&now, &[("session", update), ("session", crashed)]),
    )
    .await;
    post(
        &s,
        items(
            &now,
            &[(
                "session",
                session("s2", "user-1", "production", "ok", 0, true),
            )],
        ),
    )
    .await;
    // s3 in staging; s4 vanished.
    post(
        &s,
        items(
            &now,
            &[(
                "session",
                session("s3", "user-2", "staging", "exited", 0, true),
            )],
        ),
    )
    .await;
    post(
        &s,
        items(
            &now,
            &[(
                "session",
                session("s4", "user-3", "production", "abnormal", 0, true),
            )],
        ),
    )
    .await;
    // One aggregate envelope, retried: counted once.
    let aggregates = items(
        &now,
        &[(
            "sessions",
            json!({"attrs": {"release": "node@1", "environment": "production"},
                   "aggregates": [{"started": rfc3339(now_ms() - 7_200_000), "exited": 3, "crashed": 1}]}),
        )],
    );
    post(&s, aggregates.clone()).await;
    post(&s, aggregates).await;
    // A malformed session beside an event: the event is kept, the session dropped.
    let mut ev = event(&event_id(1), "checkout", "'cart'");
    ev["release"] = json!("node@1");
    ev["timestamp"] = json!(now_ms() as f64 / 1000.0);
    let mut body = envelope(std::slice::from_ref(&ev));
    body.extend_from_slice(b"{\"type\":\"session\"}\n{\"sid\":\"s9\",\"started\":\"yesterday\",\"attrs\":{\"release\":\"node@1\"}}\n");
    let r = s.post_envelope(body).await;
    assert_eq!(r.status(), 200);

    let (st, list) = s.api("/api/0/projects/1/releases/").await;
    assert_eq!(st, 200, "{list}");
    let r = release(&list, "node@1");
    // s1, s2, s3, s4 and the aggregate's four.
    assert_eq!(
        (&r["sessions"], &r["crashed"], &r["abnormal"], &r["errored"]),
        (&json!(8), &json!(2), &json!(1), &json!(0)),
        "{r}"
    );
    assert_eq!(r["crash_free_rate"], 0.75);
    assert_eq!(r["users"], 3);
    assert_eq!(r["adoption"], 1.0);
    assert!(
        r["first_seen"].as_str().unwrap() < r["last_seen"].as_str().unwrap(),
        "{r}"
    );
    let envs = r["environments"].as_array().unwrap();
    let env = |name: &str| envs.iter().find(|e| e["environment"] == name).unwrap();
    assert_eq!(
        (
            &env("production")["sessions"],
            &env("production")["crashed"]
        ),
        (&json!(7), &json!(2))
    );
    assert_eq!(
        (
            &env("staging")["sessions"],
            &env("staging")["crash_free_rate"]
        ),
        (&json!(1), &json!(1.0))
    );
    let series: i64 = r["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sessions"].as_i64().unwrap())
        .sum();
    assert_eq!(series, 8);
    // The event's issue is the release's new issue, and says where it was seen.
    assert_eq!(r["new_issues"], 1, "{r}");
    let issue = r["new_issue_ids"][0].as_i64().unwrap();
    // Tag values may lag their events by up to a second.
    let mut detail = Value::Null;
    for _ in 0..50 {
        detail = s.api(&format!("/api/0/issues/{issue}/")).await.1;
        if detail["releases"] != json!([]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        detail["releases"],
        json!([{"version": "node@1", "count": 1}])
    );
    assert_eq!(detail["first_release"], "node@1");
    let (_, stats) = s.api("/api/0/projects/1/stats/").await;
    assert_eq!(stats["events"], 1, "{stats}");
    assert!(
        stats.to_string().contains("invalid"),
        "the dropped session is counted: {stats}"
    );

    // One environment only.
    let (_, staging) = s
        .api("/api/0/projects/1/releases/?environment=staging")
        .await;
    let r = release(&staging, "node@1");
    assert_eq!(
        (&r["sessions"], &r["crash_free_rate"]),
        (&json!(1), &json!(1.0)),
        "{r}"
    );
    // The release's own page: hourly points and its new issues.
    let (st, one) = s.api("/api/0/projects/1/releases/node@1/").await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["sessions"], 8);
    assert!(one["series"].as_array().unwrap().len() >= 2, "{one}");
    assert_eq!(one["issues"][0]["id"], issue);
    let (st, bad) = s.api("/api/0/projects/1/releases/?days=0").await;
    assert_eq!(st, 400, "{bad}");
    assert!(bad["detail"].as_str().unwrap().contains("days"));
    s.stop().await;
}

#[tokio::test]
async fn session_items_take_their_share_of_the_rate_limit() {
    let s = server_with(|c| c.rate_limit_per_minute = Some(2)).await;
    let now = rfc3339(now_ms());
    let three: Vec<(&str, Value)> = ["a", "b", "c"]
        .iter()
        .map(|sid| {
            (
                "session",
                session(sid, "u", "production", "exited", 0, true),
            )
        })
        .collect();
    let r = s.post_envelope(items(&now, &three)).await;
    assert_eq!(r.status(), 429);
    let (_, list) = s.api("/api/0/projects/1/releases/").await;
    assert_eq!(list, json!([]));
    s.stop().await;
}

/// Python's `sentry-sdk` in request mode (as its web integrations run) sends aggregates.
#[tokio::test]
async fn python_sentry_sdk_session_aggregates() {
    if std::env::var("ERRSCOPE_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        return;
    }
    let s = server().await;
    let dsn = format!(
        "http://{}@{}/1",
        s.key,
        s.base.trim_start_matches("http://")
    );
    let script = r#"
import sys, sentry_sdk
from sentry_sdk.sessions import track_session
sentry_sdk.init(dsn=sys.argv[1], environment="ci", release="py@2", default_integrations=False)
for i in range(4):
    with sentry_sdk.isolation_scope() as scope:
        with track_session(scope, session_mode="request"):
            if i == 1:
                try:
                    {}["cart"]
                except KeyError:
                    sentry_sdk.capture_exception()
            if i == 2:
                sentry_sdk.capture_event({"level": "fatal", "exception": {"values": [
                    {"type": "RuntimeError", "value": "worker died",
                     "mechanism": {"type": "generic", "handled": False}}]}})
sentry_sdk.flush(10)
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&dsn)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, list) = s.api("/api/0/projects/1/releases/").await;
    let r = release(&list, "py@2");
    assert_eq!(
        (&r["sessions"], &r["crashed"], &r["errored"], &r["abnormal"]),
        (&json!(4), &json!(1), &json!(1), &json!(0)),
        "{list}"
    );
    assert_eq!(r["crash_free_rate"], 0.75);
    assert_eq!(r["environments"][0]["environment"], "ci");
    s.stop().await;
}
