//! End-to-end tests: a real collector on 127.0.0.1:0 and a real HTTP client.

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
    assert_eq!(
        stats["discarded"],
        json!([{"reason": "queue_overflow", "category": "error", "quantity": 24}])
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
