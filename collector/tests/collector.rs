//! End-to-end tests: a real collector on 127.0.0.1:0 and a real HTTP client.

mod access;
mod alerts;
mod releases;
mod symbolication;
mod util;

use serde_json::{Value, json};
use util::*;

#[tokio::test]
async fn stores_groups_and_serves_gzip_envelopes() {
    let s = server().await;
    let a = event(&event_id(1), "add_item", "'user_1'");
    let b = event(&event_id(2), "add_item", "'user_2'");
    let c = event(&event_id(3), "remove_item", "'user_1'");
    for e in [&a, &b, &c] {
        let r = s
            .http
            .post(format!("{}/api/1/envelope/", s.base))
            .header("x-sentry-auth", s.auth())
            .header("content-encoding", "gzip")
            .body(gzip(&envelope(std::slice::from_ref(e))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-errscope-collector"],
            env!("CARGO_PKG_VERSION")
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["id"], e["event_id"]);
    }
    // Same call site with different ids: one issue; another call site: another issue.
    let (st, issues) = s.api("/api/0/projects/1/issues/").await;
    assert_eq!(st, 200);
    let data = issues["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{issues}");
    let add = data
        .iter()
        .find(|i| i["culprit"] == "shop.cart in add_item")
        .unwrap();
    assert_eq!(add["count"], 2);
    assert_eq!(add["class"], "KeyError");
    assert_eq!(add["kind"], "operational");
    assert_eq!(add["hourly"].as_array().unwrap().len(), 24);
    let (_, classes) = s.api("/api/0/projects/1/classes/").await;
    assert_eq!(classes[0]["class"], "KeyError");
    assert_eq!(classes[0]["issues"], 2);
    assert_eq!(classes[0]["events"], 3);
    // The event round-trips with its issue.
    let (st, ev) = s
        .api(&format!("/api/0/projects/1/events/{}/", event_id(2)))
        .await;
    assert_eq!(st, 200);
    assert_eq!(ev["issue_id"], add["id"]);
    assert_eq!(ev["exception"]["values"][0]["value"], "'user_2'");
    assert_eq!(ev["previous_event_id"], event_id(1));
    assert_eq!(ev["next_event_id"], Value::Null);
    // Issue detail: 14 days of hours and tag values.
    let (_, detail) = s.api(&format!("/api/0/issues/{}/", add["id"])).await;
    assert_eq!(detail["hourly_14d"].as_array().unwrap().len(), 336);
    assert_eq!(
        detail["tags"]["environment"][0],
        json!({"value": "production", "count": 2})
    );
    assert_eq!(detail["tags"]["domain"][0]["value"], "checkout");
    assert_eq!(detail["latest_event_id"], event_id(2));
    let (_, evs) = s.api(&format!("/api/0/issues/{}/events/", add["id"])).await;
    let ids: Vec<&str> = evs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![event_id(2), event_id(1)]);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("errscope_events_accepted_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("errscope_writer_queue_depth 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("errscope_commit_seconds_count "),
        "{metrics}"
    );
    let (_, tags) = s.api("/api/0/projects/1/tags/release/values/").await;
    assert_eq!(tags, json!([{"value": "shop@1.0", "count": 3}]));
    s.stop().await;
}

#[tokio::test]
async fn retries_are_not_counted_twice_and_batches_are_accepted() {
    let s = server().await;
    let e = event(&event_id(7), "pay", "'x'");
    for _ in 0..3 {
        assert_eq!(
            s.post_envelope(envelope(std::slice::from_ref(&e)))
                .await
                .status(),
            200
        );
    }
    // A batch containing the same event again plus two new ones, with counts and a client report.
    let mut body = envelope(&[
        e.clone(),
        event(&event_id(8), "pay", "'y'"),
        event(&event_id(9), "refund", "'y'"),
    ]);
    let counts = json!({"counts": [{"id": "5f0c2b6a9d7e4f1a8b3c2d1e0f9a8b7c", "event_id": event_id(7), "count": 1000, "start": 1.7e9, "end": 1.7e9 + 10.0}]});
    let pending = json!({"counts": [{"id": "6f0c2b6a9d7e4f1a8b3c2d1e0f9a8b7c", "event_id": event_id(10), "count": 5, "start": 1.7e9, "end": 1.7e9}]});
    let report = json!({"timestamp": 1.7e9, "discarded_events": [{"reason": "queue_overflow", "category": "error", "quantity": 12}]});
    for (ty, payload) in [
        ("errscope.counts", &counts),
        ("errscope.counts", &pending),
        ("client_report", &report),
        ("session", &json!({"sid": "x"})),
    ] {
        let p = payload.to_string();
        body.extend_from_slice(
            format!("{}\n{p}\n", json!({"type": ty, "length": p.len()})).as_bytes(),
        );
    }
    body.extend_from_slice(b"{\"type\":\"something_new\"}\n{}\n");
    for _ in 0..2 {
        let r = s.post_envelope(body.clone()).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["ids"], json!([event_id(7), event_id(8), event_id(9)]));
    }
    let (_, stats) = s.api("/api/0/projects/1/stats/").await;
    assert_eq!(stats["events"], 3 + 1000, "{stats}");
    assert_eq!(stats["issues"], 2);
    // The malformed `session` item is dropped alone, counted once per delivery.
    assert_eq!(
        stats["discarded"],
        json!([{"reason": "invalid", "category": "session", "quantity": 2},
               {"reason": "queue_overflow", "category": "error", "quantity": 24}])
    );
    let (_, issues) = s.api("/api/0/projects/1/issues/?sort=count").await;
    assert_eq!(issues["data"][0]["count"], 1002);
    assert_eq!(issues["data"][1]["count"], 1);
    // The held count is applied when its event arrives.
    let late = event(&event_id(10), "refund", "'z'");
    assert_eq!(s.post_envelope(envelope(&[late])).await.status(), 200);
    let (_, issues) = s.api("/api/0/projects/1/issues/?sort=count").await;
    assert_eq!(issues["data"][1]["count"], 1 + 1 + 5);
    let (_, stats2) = s.api("/api/0/projects/1/stats/").await;
    assert!(stats2["seq"].as_i64() > stats["seq"].as_i64());
    s.stop().await;
}

#[tokio::test]
async fn authenticates_by_header_query_and_dsn() {
    let s = server().await;
    let body = || envelope(&[event(&event_id(1), "f", "v")]);
    let post = |path: String| s.http.post(format!("{}{path}", s.base));
    // No key, unknown key.
    assert_eq!(
        post("/api/1/envelope/".into())
            .body(body())
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = post("/api/1/envelope/?sentry_key=nope".into())
        .body(body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["x-errscope-collector"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        r.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("sentry_key")
    );
    // Query-string key, chunked body (Node's SDK streams without Content-Length).
    let (status, _) = raw_chunked_post(
        &s.base,
        &format!("/api/1/envelope/?sentry_version=7&sentry_key={}", s.key),
        &body(),
        7,
    )
    .await;
    assert_eq!(status, 200);
    // DSN in the envelope header.
    let mut b = format!(
        "{}\n",
        json!({"dsn": format!("http://{}@127.0.0.1/1", s.key)})
    )
    .into_bytes();
    b.extend_from_slice(b"{\"type\":\"event\"}\n{\"message\":\"from dsn\"}\n");
    assert_eq!(
        post("/api/1/envelope/".into())
            .body(b)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Another project's key.
    let r = s
        .http
        .post(format!("{}/api/0/projects/", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "shop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let shop: Value = r.json().await.unwrap();
    assert_eq!(shop["id"], 2);
    let shop_key = shop["dsn"]
        .as_str()
        .unwrap()
        .split("//")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let r = post(format!("/api/1/envelope/?sentry_key={shop_key}"))
        .body(body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(format!("/api/2/store/?sentry_key={shop_key}"))
        .body(event(&event_id(5), "f", "v").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], event_id(5));
    s.stop().await;
}

/// Builds an envelope with one item of the given type and raw payload.
fn one_item(ty: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = b"{}\n".to_vec();
    b.extend_from_slice(format!("{{\"type\":\"{ty}\"}}\n").as_bytes());
    b.extend_from_slice(payload);
    b.push(b'\n');
    b
}

fn ev_with(field: &str, value: &str) -> Vec<u8> {
    one_item(
        "event",
        format!(r#"{{"message":"m",{field}:{value}}}"#).as_bytes(),
    )
}

#[tokio::test]
async fn malformed_bodies_get_400_and_the_server_keeps_serving() {
    let s = server().await;
    let deep = format!(
        r#"{{"extra":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_tags = format!(
        r#"{{"tags":{{"a":{}1{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let long_header = format!(
        "{{\"x\":\"{}\"}}\n{{\"type\":\"event\"}}\n{{}}\n",
        "a".repeat(70_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", b"".to_vec()),
        ("whitespace only", b"  \n\n".to_vec()),
        ("header not JSON", b"garbage\n{\"type\":\"event\"}\n{}\n".to_vec()),
        ("header is an array", b"[1]\n{\"type\":\"event\"}\n{}\n".to_vec()),
        ("header invalid UTF-8", b"{\"dsn\":\"\xff\xfe\"}\n".to_vec()),
        ("header too long", long_header.into_bytes()),
        ("item header not JSON", b"{}\nnope\n{}\n".to_vec()),
        ("item header without type", b"{}\n{\"length\":2}\n{}\n".to_vec()),
        ("item type is a number", b"{}\n{\"type\":5}\n{}\n".to_vec()),
        ("length past the end", b"{}\n{\"type\":\"event\",\"length\":999}\n{}\n".to_vec()),
        ("negative length", b"{}\n{\"type\":\"event\",\"length\":-1}\n{}\n".to_vec()),
        ("length is a string", b"{}\n{\"type\":\"event\",\"length\":\"2\"}\n{}\n".to_vec()),
        ("no newline after payload", b"{}\n{\"type\":\"event\",\"length\":2}\n{}{}\n".to_vec()),
        ("event not JSON", one_item("event", b"{oops")),
        ("event is an array", one_item("event", b"[1,2]")),
        ("event is a string", one_item("event", b"\"boom\"")),
        ("event is null", one_item("event", b"null")),
        ("event truncated", one_item("event", b"{\"message\": \"abc")),
        ("event invalid UTF-8", one_item("event", b"{\"message\":\"\xc3\x28\"}")),
        ("event NaN", one_item("event", b"{\"timestamp\":NaN}")),
        ("empty event payload", one_item("event", b"")),
        ("event_id not hex", ev_with("\"event_id\"", "\"not-an-id\"")),
        ("event_id a number", ev_with("\"event_id\"", "12")),
        ("timestamp garbage", ev_with("\"timestamp\"", "\"yesterday\"")),
        ("timestamp a bool", ev_with("\"timestamp\"", "true")),
        ("timestamp negative", ev_with("\"timestamp\"", "-5")),
        ("level a number", ev_with("\"level\"", "3")),
        ("level unknown", ev_with("\"level\"", "\"loud\"")),
        ("environment a number", ev_with("\"environment\"", "3")),
        ("message a number", one_item("event", b"{\"message\":42}")),
        ("exception a string", ev_with("\"exception\"", "\"boom\"")),
        ("exception values an object", ev_with("\"exception\"", "{\"values\":{}}")),
        ("exception type a number", ev_with("\"exception\"", "{\"values\":[{\"type\":1}]}")),
        ("frames an object", ev_with("\"exception\"", "{\"values\":[{\"stacktrace\":{\"frames\":{}}}]}")),
        ("frame a string", ev_with("\"exception\"", "{\"values\":[{\"stacktrace\":{\"frames\":[\"f\"]}}]}")),
        ("lineno a string", ev_with("\"exception\"", "{\"values\":[{\"stacktrace\":{\"frames\":[{\"lineno\":\"x\"}]}}]}")),
        ("in_app a string", ev_with("\"exception\"", "{\"values\":[{\"stacktrace\":{\"frames\":[{\"in_app\":\"yes\"}]}}]}")),
        ("handled a string", ev_with("\"exception\"", "{\"values\":[{\"mechanism\":{\"handled\":\"no\"}}]}")),
        ("fingerprint a string", ev_with("\"fingerprint\"", "\"x\"")),
        ("fingerprint of objects", ev_with("\"fingerprint\"", "[{}]")),
        ("tag value an object", ev_with("\"tags\"", "{\"a\":{}}")),
        ("tag pair too short", ev_with("\"tags\"", "[[\"a\"]]")),
        ("absurd nesting", one_item("event", deep.as_bytes())),
        ("nesting in tags", one_item("event", deep_tags.as_bytes())),
        ("duplicate field", one_item("event", b"{\"level\":\"error\",\"level\":\"info\"}")),
        ("client_report quantity a string", one_item("client_report", br#"{"discarded_events":[{"reason":"r","category":"c","quantity":"1"}]}"#)),
        ("client_report without fields", one_item("client_report", br#"{"discarded_events":[{}]}"#)),
        ("counts with a bad id", one_item("errscope.counts", br#"{"counts":[{"id":"x","event_id":"0123456789abcdef0123456789abcdef","count":1,"start":1,"end":2}]}"#)),
        ("counts negative", one_item("errscope.counts", br#"{"counts":[{"id":"5f0c2b6a9d7e4f1a8b3c2d1e0f9a8b7c","event_id":"0123456789abcdef0123456789abcdef","count":-1,"start":1,"end":2}]}"#)),
        ("counts missing", one_item("errscope.counts", b"{}")),
    ];
    assert!(cases.len() >= 40);
    for (what, body) in cases {
        let r = s.post_envelope(body).await;
        assert_eq!(r.status(), 400, "{what}");
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert!(
            !v["detail"].as_str().unwrap_or("").is_empty(),
            "{what}: {v}"
        );
    }
    // One bad item rejects the envelope: the good event before it is not stored.
    let mut mixed = envelope(&[event(&event_id(41), "f", "v")]);
    mixed.extend_from_slice(b"{\"type\":\"event\"}\n{\"level\":7}\n");
    assert_eq!(s.post_envelope(mixed).await.status(), 400);
    // Transport-level errors.
    let post = |path: &str| {
        s.http
            .post(format!("{}{path}", s.base))
            .header("x-sentry-auth", s.auth())
    };
    let r = post("/api/1/envelope/")
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("/api/1/envelope/")
        .header("content-encoding", "zstd")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = post("/api/abc/envelope/")
        .body(envelope(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("/api/1/store/")
        .body(envelope(&[event(&event_id(42), "f", "v")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The server still serves and stores, and stored nothing from the bad requests.
    assert_eq!(
        s.post_envelope(envelope(&[event(&event_id(43), "f", "v")]))
            .await
            .status(),
        200
    );
    let (_, stats) = s.api("/api/0/projects/1/stats/").await;
    assert_eq!(stats["events"], 1);
    let (st, _) = s
        .api(&format!("/api/0/projects/1/events/{}/", event_id(41)))
        .await;
    assert_eq!(st, 404);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("errscope_requests_rejected_total{reason=\"malformed\"} 5"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let s = server().await;
    // A gzip bomb: 200 MiB of zeros in a few hundred KiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..200 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1024 * 1024);
    let r = s
        .http
        .post(format!("{}/api/1/envelope/", s.base))
        .header("x-sentry-auth", s.auth())
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("exceeds")
    );
    // A 2 MiB event, in an envelope and on the store endpoint.
    let mut big = event(&event_id(1), "f", "v");
    big["extra"] = json!({"blob": "x".repeat(2 * 1024 * 1024)});
    assert_eq!(
        s.post_envelope(envelope(&[big.clone()])).await.status(),
        413
    );
    let r = s
        .http
        .post(format!("{}/api/1/store/", s.base))
        .header("x-sentry-auth", s.auth())
        .body(big.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // More than 20 MiB on the wire.
    let r = s.post_envelope(vec![b' '; 21 * 1024 * 1024]).await;
    assert_eq!(r.status(), 413);
    // Still serving.
    assert_eq!(
        s.post_envelope(envelope(&[event(&event_id(2), "f", "v")]))
            .await
            .status(),
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn api_requires_token_or_session_and_csrf_header() {
    let s = server().await;
    let url = |p: &str| format!("{}{p}", s.base);
    assert_eq!(
        s.http
            .get(url("/api/0/projects/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        s.http
            .get(url("/api/0/projects/"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        s.http
            .get(url("/api/0/session/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let (st, projects) = s.api("/api/0/projects/").await;
    assert_eq!(st, 200);
    assert_eq!(projects[0]["name"], "default");
    assert_eq!(
        projects[0]["dsn"],
        format!(
            "http://{}@{}/1",
            s.key,
            s.base.trim_start_matches("http://")
        )
    );
    // Login.
    let bad = s
        .http
        .post(url("/auth/login"))
        .json(&json!({"username": "admin", "password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let ok = s
        .http
        .post(url("/auth/login"))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    let set_cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Strict")
            && set_cookie.contains("Path=/")
    );
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let r = s
        .http
        .get(url("/api/0/session/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"username": "admin"})
    );
    // Cookie + state change without the header: 403; with it: allowed.
    let r = s
        .http
        .post(url("/api/0/projects/"))
        .header("cookie", &cookie)
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .http
        .post(url("/api/0/projects/"))
        .header("cookie", &cookie)
        .header("x-errscope-request", "1")
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .http
        .post(url("/api/0/projects/"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Logout ends the session.
    let r = s
        .http
        .post(url("/auth/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        s.http
            .get(url("/api/0/session/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    s.stop().await;
}

#[tokio::test]
async fn session_cookie_is_secure_behind_https() {
    let s = server_with(|c| c.public_url = "https://errors.example.com".into()).await;
    let r = s
        .http
        .post(format!("{}/auth/login", s.base))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
    let (_, projects) = s.api("/api/0/projects/").await;
    assert_eq!(
        projects[0]["dsn"],
        format!("https://{}@errors.example.com/1", s.key)
    );
    s.stop().await;
}

#[tokio::test]
async fn resolved_issues_reopen_as_regressions() {
    let s = server().await;
    assert_eq!(
        s.post_envelope(envelope(&[event(&event_id(1), "f", "v")]))
            .await
            .status(),
        200
    );
    let (_, issues) = s.api("/api/0/projects/1/issues/").await;
    let id = issues["data"][0]["id"].as_i64().unwrap();
    let put = |status: &str| {
        s.http
            .put(format!("{}/api/0/issues/{id}/", s.base))
            .bearer_auth(TOKEN)
            .json(&json!({ "status": status }))
            .send()
    };
    let r = put("resolved").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "resolved");
    assert_eq!(put("bogus").await.unwrap().status(), 400);
    let (_, unresolved) = s.api("/api/0/projects/1/issues/").await;
    assert_eq!(unresolved["data"], json!([]));
    let (_, resolved) = s.api("/api/0/projects/1/issues/?status=resolved").await;
    assert_eq!(resolved["data"][0]["id"], id);
    assert_eq!(
        s.post_envelope(envelope(&[event(&event_id(2), "f", "v")]))
            .await
            .status(),
        200
    );
    let (_, issue) = s.api(&format!("/api/0/issues/{id}/")).await;
    assert_eq!(issue["status"], "unresolved");
    assert_eq!(issue["is_regression"], true);
    assert_eq!(issue["count"], 2);
    // Muted issues stay muted.
    assert_eq!(put("muted").await.unwrap().status(), 200);
    assert_eq!(
        s.post_envelope(envelope(&[event(&event_id(3), "f", "v")]))
            .await
            .status(),
        200
    );
    let (_, issue) = s.api(&format!("/api/0/issues/{id}/")).await;
    assert_eq!(issue["status"], "muted");
    assert_eq!(s.api("/api/0/issues/999/").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn issue_pages_cover_every_issue_once() {
    let s = server().await;
    let events: Vec<Value> = (0..250)
        .map(|i| event(&event_id(1000 + i), &format!("handler_{i}"), "v"))
        .collect();
    assert_eq!(s.post_envelope(envelope(&events)).await.status(), 200);
    for sort in ["last_seen", "first_seen", "count"] {
        let mut seen = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let q = match &cursor {
                Some(c) => format!("/api/0/projects/1/issues/?sort={sort}&limit=100&cursor={c}"),
                None => format!("/api/0/projects/1/issues/?sort={sort}&limit=100"),
            };
            let (st, page) = s.api(&q).await;
            assert_eq!(st, 200);
            pages += 1;
            for i in page["data"].as_array().unwrap() {
                assert!(
                    seen.insert(i["id"].as_i64().unwrap()),
                    "duplicate on {sort}"
                );
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 250, "{sort}");
        assert_eq!(pages, 3);
    }
    let (_, filtered) = s
        .api("/api/0/projects/1/issues/?query=HANDLER_17&limit=100")
        .await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1 + 10);
    let (_, none) = s.api("/api/0/projects/1/issues/?environment=staging").await;
    assert_eq!(none["data"], json!([]));
    let (_, prod) = s
        .api("/api/0/projects/1/issues/?environment=production&class=KeyError&level=error&limit=5")
        .await;
    assert_eq!(prod["data"].as_array().unwrap().len(), 5);
    assert_eq!(s.api("/api/0/projects/1/issues/?cursor=zzz").await.0, 400);
    assert_eq!(s.api("/api/0/projects/1/issues/?sort=size").await.0, 400);
    s.stop().await;
}

#[tokio::test]
async fn serves_the_dashboard_with_csp() {
    let s = server().await;
    for path in ["/", "/issues/12", "/login"] {
        let r = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(
            r.headers()["content-security-policy"],
            errscope_collector::dashboard::CSP
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let expected = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../dashboard/static/index.html"
        ))
        .unwrap();
        assert_eq!(r.text().await.unwrap(), expected);
    }
    let r = s
        .http
        .get(format!("{}/assets/index.html", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/assets/nope.js", "/api/0/nothing/", "/auth/nothing"] {
        let r = s
            .http
            .get(format!("{}{path}", s.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = s
        .http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    s.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_sentry_headers() {
    let s = server_with(|c| c.rate_limit_per_minute = Some(2)).await;
    let batch: Vec<Value> = (0..2).map(|i| event(&event_id(i + 1), "f", "v")).collect();
    assert_eq!(s.post_envelope(envelope(&batch)).await.status(), 200);
    let r = s
        .post_envelope(envelope(&[event(&event_id(9), "f", "v")]))
        .await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(
        r.headers()["x-sentry-rate-limits"],
        format!("{retry}::project").as_str()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_killed_collector_keeps_every_event_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = spawn_binary(dir.path(), &["--max-events-per-issue", "100000"]).await;
    assert!(
        c.stdout
            .iter()
            .any(|l| l.starts_with("dashboard: http://127.0.0.1:")),
        "{:?}",
        c.stdout
    );
    assert!(
        c.stdout
            .iter()
            .any(|l| l.starts_with("admin login: user admin")),
        "{:?}",
        c.stdout
    );
    let dsn = c.dsn.clone().expect("first start prints the DSN");
    let key = dsn
        .split("//")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (http, base, key, acked) = (http.clone(), c.base.clone(), key.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000u64 {
                let id = event_id(t << 32 | i);
                let r = http
                    .post(format!("{base}/api/1/envelope/?sentry_key={key}"))
                    .body(envelope(&[event(&id, "f", "v")]))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(id),
                    _ => break,
                }
            }
        }));
    }
    // Let a few hundred land, then kill -9 in the middle of the stream.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    c.child.start_kill().unwrap();
    c.child.wait().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let c2 = spawn_binary(dir.path(), &[]).await;
    assert!(
        c2.dsn.is_none(),
        "a restart must not print a new DSN: {:?}",
        c2.stdout
    );
    for id in &acked {
        let r = http
            .get(format!("{}/api/0/projects/1/events/{id}/", c2.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "event {id} was acknowledged but is gone");
    }
    let (_, stats) = api_at(&http, &c2.base, "/api/0/projects/1/stats/").await;
    assert!(stats["events"].as_u64().unwrap() >= acked.len() as u64);
}

#[tokio::test]
async fn sigterm_commits_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = spawn_binary(dir.path(), &[]).await;
    let key = c
        .dsn
        .clone()
        .unwrap()
        .split("//")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/1/envelope/?sentry_key={key}", c.base))
        .body(envelope(&[event(&event_id(77), "f", "v")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pid = c.child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), c.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let c2 = spawn_binary(dir.path(), &[]).await;
    let r = http
        .get(format!(
            "{}/api/0/projects/1/events/{}/",
            c2.base,
            event_id(77)
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Real events from Python's `sentry-sdk` (installed by `scripts/setup`). Set
/// `ERRSCOPE_SKIP_PYTHON=1` to skip on a machine without it; otherwise a missing SDK fails.
#[tokio::test]
async fn python_sentry_sdk_events_are_stored_and_grouped() {
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
sentry_sdk.init(dsn=sys.argv[1], environment="ci", release="py@1", default_integrations=False)
def lookup(users, uid):
    return users[uid]
for uid in ("u-1", "u-2"):
    try:
        lookup({}, uid)
    except KeyError:
        sentry_sdk.capture_exception()
sentry_sdk.capture_message("payment 42 declined")
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
    let (_, issues) = s.api("/api/0/projects/1/issues/?sort=count").await;
    let data = issues["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{issues}");
    assert_eq!(data[0]["class"], "KeyError");
    assert_eq!(data[0]["count"], 2);
    assert!(
        data[0]["culprit"].as_str().unwrap().contains("lookup"),
        "{}",
        data[0]
    );
    assert_eq!(data[1]["class"], "message");
    assert_eq!(data[1]["title"], "payment 42 declined");
    let (_, detail) = s.api(&format!("/api/0/issues/{}/", data[0]["id"])).await;
    assert_eq!(detail["tags"]["environment"][0]["value"], "ci");
    assert_eq!(detail["tags"]["release"][0]["value"], "py@1");
    s.stop().await;
}

/// One anyhow chain (an io error under `.context(..)`) from three builds of one service:
/// with debug info (DWARF names via linkage names, inlined frames, files), the default
/// release profile (symbol-table names, no files or lines) and stripped, symbolicated on
/// the server (v0-style names). One issue, titled by its root cause; another root cause
/// is another issue with another title.
#[tokio::test]
async fn one_bug_from_three_builds_is_one_issue_titled_by_its_root_cause() {
    let s = server().await;
    let chain = |id: u64, kind: &str, msg: &str, frames: Value| {
        json!({
            "event_id": event_id(id), "timestamp": 1.7e9, "level": "error", "platform": "native",
            "exception": {"values": [
                {"type": "std::io::Error", "value": msg,
                 "mechanism": {"type": "anyhow", "handled": true, "data": {"io_kind": kind}}},
                {"type": "anyhow::Context", "value": "binding the user at the directory",
                 "mechanism": {"type": "anyhow", "handled": true},
                 "stacktrace": {"frames": frames}}
            ]}
        })
    };
    let debug_info = json!([
        {"function": "shop::main", "module": "shop", "filename": "src/main.rs", "lineno": 43, "in_app": true, "instruction_addr": "0x55d0c1a0f000"},
        {"function": "shop::service::handle::{{closure}}", "module": "shop::service", "filename": "src/service.rs", "lineno": 60, "in_app": true, "instruction_addr": "0x55d0c1a0f000"},
        {"function": "shop::Directory<C>::bind", "module": "shop::Directory", "filename": "src/directory.rs", "lineno": 12, "in_app": true, "instruction_addr": "0x55d0c1a0e100"},
        {"function": "<errscope::domain::DomainRun<F> as core::future::future::Future>::poll", "in_app": false, "instruction_addr": "0x55d0c1a3a000"}
    ]);
    let default_profile = json!([
        {"function": "shop::main", "module": "shop", "in_app": true, "instruction_addr": "0x5600aa000200"},
        {"function": "shop::Directory<C>::bind", "module": "shop::Directory", "in_app": true, "instruction_addr": "0x5600aa000300"},
        {"function": "<errscope::domain::DomainRun<F> as core::future::future::Future>::poll", "in_app": true, "instruction_addr": "0x5600aa000400"}
    ]);
    let symbolicated = json!([
        {"function": "shop::main", "filename": "src/main.rs", "lineno": 43, "in_app": true, "instruction_addr": "0x7f0000002000"},
        {"function": "shop::service::handle::{async_fn#0}", "filename": "src/service.rs", "lineno": 60, "in_app": true, "instruction_addr": "0x7f0000002000"},
        {"function": "<shop::Directory<shop::ldap::Client>>::bind", "filename": "src/directory.rs", "lineno": 12, "in_app": true, "instruction_addr": "0x7f0000003000"}
    ]);
    let reset = "connection reset by peer (os error 104)";
    let body = envelope(&[
        chain(1, "ConnectionReset", reset, debug_info.clone()),
        chain(2, "ConnectionReset", reset, default_profile),
        chain(3, "ConnectionReset", reset, symbolicated),
        chain(
            4,
            "ConnectionRefused",
            "connection refused (os error 111)",
            debug_info,
        ),
    ]);
    assert_eq!(s.post_envelope(body).await.status(), 200);
    let (_, issues) = s.api("/api/0/projects/1/issues/?sort=count").await;
    let data = issues["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{issues}");
    assert_eq!(data[0]["count"], 3, "{issues}");
    assert_eq!(
        data[0]["title"],
        "binding the user at the directory: ConnectionReset: connection reset by peer (os error 104)"
    );
    assert_eq!(data[0]["class"], "std::io::Error: ConnectionReset");
    // The culprit is displayed as the event spelled it, never an agent frame.
    let culprit = data[0]["culprit"].as_str().unwrap();
    assert!(
        [
            "shop::Directory<C>::bind",
            "<shop::Directory<shop::ldap::Client>>::bind"
        ]
        .contains(&culprit),
        "{culprit}"
    );
    assert_eq!(data[1]["count"], 1);
    assert_eq!(
        data[1]["title"],
        "binding the user at the directory: ConnectionRefused: connection refused (os error 111)"
    );
    s.stop().await;
}

/// Events shaped the way the errscope agent sends them (see `agent/src/lib.rs`).
#[tokio::test]
async fn errscope_agent_events_get_their_class_and_kind() {
    let s = server().await;
    let frames = json!([
        {"function": "shop::main", "module": "shop", "filename": "src/main.rs", "lineno": 10, "in_app": true, "instruction_addr": "0x55d1c0a0"},
        {"function": "shop::ldap::bind", "module": "shop::ldap", "filename": "src/ldap.rs", "lineno": 42, "in_app": true, "instruction_addr": "0x55d1c0f0"},
        {"function": "errscope::capture_error", "module": "errscope", "in_app": false}
    ]);
    let io_error = |id: u64, os: &str| {
        json!({
            "event_id": event_id(id), "timestamp": 1.7e9, "level": "error", "platform": "native",
            "tags": {"domain": "ldap"},
            "exception": {"values": [
                {"type": "std::io::Error", "value": format!("connection reset by peer (os error {os})"),
                 "mechanism": {"type": "capture_error", "handled": true,
                               "data": {"io_kind": "ConnectionReset", "os_code": 104},
                               "meta": {"errno": {"number": 104, "name": "ECONNRESET"}}}},
                {"type": "shop::ldap::BindError", "value": "bind failed",
                 "mechanism": {"type": "capture_error", "handled": true},
                 "stacktrace": {"frames": frames}}
            ]}
        })
    };
    let panic = json!({
        "event_id": event_id(3), "timestamp": 1.7e9, "level": "fatal", "platform": "native",
        "exception": {"values": [{"type": "panic", "value": "index out of bounds: the len is 3 but the index is 7",
            "mechanism": {"type": "panic", "handled": false, "data": {"file": "src/cart.rs", "line": 12, "column": 5}},
            "stacktrace": {"frames": [{"function": "shop::cart::total", "module": "shop::cart", "in_app": true}]}}]}
    });
    let mut body = envelope(&[io_error(1, "104"), io_error(2, "104"), panic]);
    let counts = json!({"counts": [{"id": "00000000000000000000000000000abc", "event_id": event_id(1), "count": 9990, "start": 1.7e9, "end": 1.7e9 + 10.0}]});
    let p = counts.to_string();
    body.extend_from_slice(
        format!(
            "{}\n{p}\n",
            json!({"type": "errscope.counts", "length": p.len()})
        )
        .as_bytes(),
    );
    let r = s.post_envelope(body).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-errscope-collector"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["ids"],
        json!([event_id(1), event_id(2), event_id(3)])
    );
    let (_, classes) = s.api("/api/0/projects/1/classes/").await;
    let by_class = |c: &str| {
        classes
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["class"] == c)
            .cloned()
            .unwrap_or_else(|| panic!("{c} in {classes}"))
    };
    let io = by_class("std::io::Error: ConnectionReset");
    assert_eq!(io["kind"], "operational");
    assert_eq!(
        (io["issues"].clone(), io["events"].clone()),
        (json!(1), json!(2 + 9990))
    );
    let p = by_class("panic");
    assert_eq!(p["kind"], "programmer");
    let (_, issues) = s
        .api("/api/0/projects/1/issues/?class=std::io::Error:%20ConnectionReset")
        .await;
    let issue = &issues["data"][0];
    assert_eq!(issue["culprit"], "shop::ldap::bind");
    assert_eq!(issue["title"], "shop::ldap::BindError: bind failed");
    let (_, panics) = s.api("/api/0/projects/1/issues/?level=fatal").await;
    assert_eq!(panics["data"][0]["culprit"], "shop::cart::total");
    assert_eq!(panics["data"][0]["kind"], "programmer");
    s.stop().await;
}

#[tokio::test]
async fn project_create_prints_a_working_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn_binary(dir.path(), &[]).await;
    drop(first);
    let out = collector_command_blocking(dir.path())
        .args([
            "project",
            "create",
            "shop",
            "--public-url",
            "http://127.0.0.1:9",
        ])
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let dsn = text
        .lines()
        .find_map(|l| l.strip_prefix("DSN: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        dsn.starts_with("http://") && dsn.ends_with("@127.0.0.1:9/2"),
        "{dsn}"
    );
    let key = dsn.split("//").nth(1).unwrap().split('@').next().unwrap();
    let c = spawn_binary(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/2/store/?sentry_key={key}", c.base))
        .body(event(&event_id(1), "f", "v").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again = collector_command_blocking(dir.path())
        .args(["project", "create", "shop", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success(), "a duplicate name must fail");
}

/// A `sentry` transport that serializes envelopes with the crate's own writer and POSTs them
/// like its HTTP transports do (`X-Sentry-Auth`, `Content-Type: application/x-sentry-envelope`).
struct PostTransport {
    addr: String,
    key: String,
    statuses: std::sync::Mutex<Vec<u16>>,
}

impl sentry::Transport for PostTransport {
    fn send_envelope(&self, envelope: sentry::Envelope) {
        use std::io::{Read, Write};
        let mut body = Vec::new();
        envelope.to_writer(&mut body).unwrap();
        let mut sock = std::net::TcpStream::connect(&self.addr).unwrap();
        let head = format!(
            "POST /api/1/envelope/ HTTP/1.1\r\nHost: {}\r\nX-Sentry-Auth: Sentry sentry_version=7, sentry_key={}, sentry_client=sentry.rust/0.49\r\nContent-Type: application/x-sentry-envelope\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.key,
            body.len()
        );
        sock.write_all(head.as_bytes()).unwrap();
        sock.write_all(&body).unwrap();
        let mut resp = String::new();
        sock.read_to_string(&mut resp).unwrap();
        let status = resp
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        self.statuses.lock().unwrap().push(status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sentry_crate_events_are_stored_and_grouped() {
    let s = server().await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let transport = std::sync::Arc::new(PostTransport {
        addr: addr.clone(),
        key: s.key.clone(),
        statuses: Default::default(),
    });
    let t = transport.clone();
    let dsn = format!("http://{}@{addr}/1", s.key);
    tokio::task::spawn_blocking(move || {
        let options = sentry::ClientOptions::new()
            .dsn(&dsn)
            .environment("staging")
            .transport(t);
        let hub = sentry::Hub::new(
            Some(std::sync::Arc::new(sentry::Client::from(options))),
            Default::default(),
        );
        for _ in 0..2 {
            let err = std::io::Error::from_raw_os_error(104);
            hub.capture_error(&err);
        }
        hub.capture_message("cache miss for user 42", sentry::Level::Warning);
        hub.capture_message("cache miss for user 43", sentry::Level::Warning);
    })
    .await
    .unwrap();
    assert_eq!(
        *transport.statuses.lock().unwrap(),
        vec![200, 200, 200, 200]
    );
    let (_, classes) = s.api("/api/0/projects/1/classes/").await;
    let names: Vec<&str> = classes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"std::io::Error: ConnectionReset"),
        "{classes}"
    );
    assert!(names.contains(&"message"), "{classes}");
    let (_, issues) = s.api("/api/0/projects/1/issues/").await;
    let data = issues["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{issues}");
    assert!(data.iter().all(|i| i["count"] == 2), "{issues}");
    let msg = data.iter().find(|i| i["class"] == "message").unwrap();
    assert_eq!(msg["level"], "warning");
    s.stop().await;
}

#[tokio::test]
async fn every_content_encoding_is_accepted() {
    use std::io::Write as _;
    let s = server().await;
    let body = |n: u64| envelope(&[event(&event_id(n), "f", "v")]);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&body(2)).unwrap();
    let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    raw.write_all(&body(3)).unwrap();
    let cases = [
        ("gzip", gzip(&body(1))),
        ("deflate", zlib.finish().unwrap()),
        ("deflate", raw.finish().unwrap()),
        ("br", brotli_stored(&body(4))),
        ("identity", body(5)),
    ];
    for (n, (encoding, bytes)) in cases.into_iter().enumerate() {
        let r = s
            .http
            .post(format!("{}/api/1/envelope/", s.base))
            .header("x-sentry-auth", s.auth())
            .header("content-encoding", encoding)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{encoding}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["id"],
            event_id(n as u64 + 1),
            "{encoding}"
        );
    }
    let (_, stats) = s.api("/api/0/projects/1/stats/").await;
    assert_eq!(stats["events"], 5);
    s.stop().await;
}

#[tokio::test]
async fn dashboard_sessions_survive_a_restart_and_logout() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut c = spawn_binary(dir.path(), &[]).await;
    let r = http
        .post(format!("{}/auth/login", c.base))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    c.child.start_kill().unwrap();
    c.child.wait().await.unwrap();
    let c2 = spawn_binary(dir.path(), &[]).await;
    let session = |base: String, cookie: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/api/0/session/"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(session(c2.base.clone(), cookie.clone()).await, 200);
    assert_eq!(
        session(c2.base.clone(), "errscope_session=forged".into()).await,
        401
    );
    let r = http
        .post(format!("{}/auth/logout", c2.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(session(c2.base.clone(), cookie.clone()).await, 401);
    // Only a hash of the session id is in the database.
    let raw_id = cookie.trim_start_matches("errscope_session=");
    assert!(
        !appears_in_files(dir.path(), raw_id),
        "the raw session id must not be stored"
    );
}

/// Whether `needle` occurs in any file of `dir` (the database, its WAL and shm).
fn appears_in_files(dir: &std::path::Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}
