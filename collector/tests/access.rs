//! Teams and access end to end: every `/api/0/` route with every role and token scope,
//! project membership (404 for other projects), invites, login throttling from one and
//! from twenty addresses, the `user` command line while the server runs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::*;

/// A way of calling the API: a bearer token or a session cookie.
#[derive(Clone, Debug)]
struct Who {
    name: String,
    bearer: Option<String>,
    cookie: Option<String>,
    username: String,
    password: String,
    scopes: Vec<&'static str>,
    /// Sees only project A (a member or viewer).
    only_a: bool,
}

const ALL: [&str; 5] = [
    "project:read",
    "project:write",
    "project:admin",
    "debugfiles:write",
    "org:admin",
];

async fn call(
    s: &Server,
    who: &Who,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s
        .http
        .request(method.parse().unwrap(), format!("{}{path}", s.base));
    if let Some(t) = &who.bearer {
        req = req.bearer_auth(t);
    }
    if let Some(c) = &who.cookie {
        req = req.header("cookie", c).header("x-errscope-request", "1");
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn admin() -> Who {
    Who {
        name: "owner (admin token)".into(),
        bearer: Some(TOKEN.into()),
        cookie: None,
        username: "admin".into(),
        password: PASSWORD.into(),
        scopes: ALL.to_vec(),
        only_a: false,
    }
}

fn session_cookie(r: &reqwest::Response) -> String {
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn login(s: &Server, user: &str, password: &str) -> reqwest::Response {
    s.http
        .post(format!("{}/auth/login", s.base))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
}

/// An invited user who accepted: their session.
async fn invited(s: &Server, username: &str, role: &str, projects: Value) -> (i64, String) {
    let (st, created) = call(
        s,
        &admin(),
        "POST",
        "/api/0/users/",
        Some(json!({"username": username, "role": role, "projects": projects})),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    let token = created["invite"]["token"].as_str().unwrap().to_owned();
    assert!(created["invite"]["url"].as_str().unwrap().ends_with(&token));
    // Not yet able to log in: no password.
    assert_eq!(login(s, username, "secret-pass-1").await.status(), 401);
    let info = s
        .http
        .get(format!("{}/auth/invite/{token}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["username"], username);
    let r = s
        .http
        .post(format!("{}/auth/invite/", s.base))
        .json(&json!({"token": token, "password": "secret-pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cookie = session_cookie(&r);
    // One time only.
    let again = s
        .http
        .post(format!("{}/auth/invite/", s.base))
        .json(&json!({"token": token, "password": "secret-pass-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    (created["user"]["id"].as_i64().unwrap(), cookie)
}

/// What the walk knows of a project: its id, an event, an issue, a rule.
#[derive(Clone, Debug)]
struct Fixture {
    pid: i64,
    event: String,
    issue: i64,
    rule: i64,
}

async fn rule_in(s: &Server, pid: i64) -> i64 {
    let (st, r) = call(
        s,
        &admin(),
        "POST",
        &format!("/api/0/projects/{pid}/alerts/"),
        Some(json!({"name": "r", "trigger": "new_issue",
            "channel": {"type": "webhook", "url": "http://127.0.0.1:9/"}})),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    r["id"].as_i64().unwrap()
}

async fn fixture(s: &Server, pid: i64, key: &str, n: u64) -> Fixture {
    let r = s
        .http
        .post(format!("{}/api/{pid}/envelope/", s.base))
        .header(
            "x-sentry-auth",
            format!("Sentry sentry_version=7, sentry_key={key}, sentry_client=t/1"),
        )
        .body(envelope(&[event(&event_id(n), "f", "v")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, issues) = call(
        s,
        &admin(),
        "GET",
        &format!("/api/0/projects/{pid}/issues/"),
        None,
    )
    .await;
    Fixture {
        pid,
        event: event_id(n),
        issue: issues["data"][0]["id"].as_i64().unwrap(),
        rule: rule_in(s, pid).await,
    }
}

/// The spec of one route: the scope it needs (`""`: any signed-in caller) and what a
/// call that gets past the check answers.
struct Spec {
    scope: &'static str,
    /// The statuses a caller allowed in gets (`GET`s: 200).
    ok: &'static [u16],
}

fn specs() -> HashMap<(&'static str, &'static str), Spec> {
    let s = |scope, ok| Spec { scope, ok };
    HashMap::from([
        (("GET", "/api/0/session/"), s("", &[200])),
        (("GET", "/api/0/user/"), s("", &[200])),
        (("GET", "/api/0/projects/"), s("project:read", &[200])),
        (("POST", "/api/0/projects/"), s("org:admin", &[201])),
        (("GET", "/api/0/projects/{pid}/"), s("project:read", &[200])),
        (
            ("GET", "/api/0/projects/{pid}/stats/"),
            s("project:read", &[200]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/classes/"),
            s("project:read", &[200]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/issues/"),
            s("project:read", &[200]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/events/{event_id}/"),
            s("project:read", &[200]),
        ),
        (
            (
                "GET",
                "/api/0/projects/{pid}/events/{event_id}/attachments/minidump/",
            ),
            s("project:read", &[404]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/tags/{key}/values/"),
            s("project:read", &[200]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/releases/"),
            s("project:read", &[200]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/releases/{version}/"),
            s("project:read", &[200]),
        ),
        (("GET", "/api/0/issues/{id}/"), s("project:read", &[200])),
        (("PUT", "/api/0/issues/{id}/"), s("project:write", &[200])),
        (
            ("GET", "/api/0/issues/{id}/events/"),
            s("project:read", &[200]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/alerts/"),
            s("project:read", &[200]),
        ),
        (
            ("POST", "/api/0/projects/{pid}/alerts/"),
            s("project:write", &[201]),
        ),
        (
            ("POST", "/api/0/alerts/{id}/test/"),
            s("project:write", &[200]),
        ),
        (
            ("GET", "/api/0/alerts/{id}/deliveries/"),
            s("project:read", &[200]),
        ),
        (("GET", "/api/0/alerts/{id}/"), s("project:read", &[200])),
        (("PUT", "/api/0/alerts/{id}/"), s("project:write", &[200])),
        (
            ("DELETE", "/api/0/alerts/{id}/"),
            s("project:write", &[204]),
        ),
        (
            ("PUT", "/api/0/issues/{id}/assignee/"),
            s("project:write", &[200]),
        ),
        (
            ("GET", "/api/0/issues/{id}/comments/"),
            s("project:read", &[200]),
        ),
        (
            ("POST", "/api/0/issues/{id}/comments/"),
            s("project:write", &[201]),
        ),
        (
            ("DELETE", "/api/0/issues/{id}/comments/{comment}/"),
            s("project:write", &[204]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/members/"),
            s("project:read", &[200]),
        ),
        (("GET", "/api/0/users/"), s("org:admin", &[200])),
        (("POST", "/api/0/users/"), s("org:admin", &[201])),
        (("PUT", "/api/0/users/{id}/"), s("org:admin", &[200])),
        (
            ("POST", "/api/0/users/{id}/invite/"),
            s("org:admin", &[201]),
        ),
        (("GET", "/api/0/audit/"), s("org:admin", &[200])),
        (("PUT", "/api/0/user/password/"), s("", &[204])),
        (("GET", "/api/0/tokens/"), s("", &[200])),
        (("POST", "/api/0/tokens/"), s("", &[201])),
        (("DELETE", "/api/0/tokens/{id}/"), s("", &[204])),
        (("GET", "/api/0/sessions/"), s("", &[200])),
        (("DELETE", "/api/0/sessions/{id}/"), s("", &[204])),
        (
            ("GET", "/api/0/organizations/{org}/chunk-upload/"),
            s("debugfiles:write", &[200]),
        ),
        // No chunks in the body: a 400 that says so, past the check.
        (
            ("POST", "/api/0/organizations/{org}/chunk-upload/"),
            s("debugfiles:write", &[200, 400]),
        ),
        (
            (
                "POST",
                "/api/0/projects/{pid}/{project}/files/difs/assemble/",
            ),
            s("debugfiles:write", &[200]),
        ),
        (
            ("GET", "/api/0/projects/{pid}/{project}/files/dsyms/"),
            s("project:read", &[200]),
        ),
        // No such file: the handler's 404, past the check (its detail says so).
        (
            ("DELETE", "/api/0/projects/{pid}/{project}/files/dsyms/"),
            s("project:admin", &[404]),
        ),
        // Not multipart: the handler's 400.
        (
            ("POST", "/api/0/projects/{pid}/{project}/files/dsyms/"),
            s("debugfiles:write", &[400]),
        ),
    ])
}

/// The concrete path and body of a route for a caller, making what a destructive call
/// uses up (a rule, a token, a session) first.
async fn prepare(
    s: &Server,
    who: &Who,
    method: &str,
    template: &str,
    f: &Fixture,
    viewer_id: i64,
) -> (String, Option<Value>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rule = f.rule;
    if method == "DELETE" && template == "/api/0/alerts/{id}/" {
        rule = rule_in(s, f.pid).await;
    }
    let mut id = match template {
        t if t.starts_with("/api/0/issues/") => f.issue,
        t if t.starts_with("/api/0/alerts/") => rule,
        t if t.starts_with("/api/0/users/") => viewer_id,
        _ => 0,
    };
    if template == "/api/0/tokens/{id}/" {
        // A token of the caller's own to revoke.
        let (st, t) = call(
            s,
            who,
            "POST",
            "/api/0/tokens/",
            Some(json!({"name": "x", "scopes": [who.scopes[0]]})),
        )
        .await;
        assert_eq!(st, 201, "{t}");
        id = t["id"].as_i64().unwrap();
    }
    if template == "/api/0/sessions/{id}/" {
        // Another session of the caller's user to end.
        assert_eq!(login(s, &who.username, &who.password).await.status(), 204);
        let (_, list) = call(s, who, "GET", "/api/0/sessions/", None).await;
        id = list.as_array().unwrap().last().unwrap()["id"]
            .as_i64()
            .unwrap();
    }
    let mut comment = 0;
    if template == "/api/0/issues/{id}/comments/{comment}/" {
        // A comment of the caller's own to delete (an admin's for a caller who cannot
        // write: the check refuses them before the handler looks).
        let author = if who.scopes.contains(&"project:write") && (!who.only_a || f.pid == 1) {
            who.clone()
        } else {
            admin()
        };
        let (st, c) = call(
            s,
            &author,
            "POST",
            &format!("/api/0/issues/{}/comments/", f.issue),
            Some(json!({"body": "to delete"})),
        )
        .await;
        assert_eq!(st, 201, "{c}");
        comment = c["id"].as_i64().unwrap();
    }
    let path = template
        .replace("{pid}/{project}", &format!("errscope/{}", f.pid))
        .replace("{pid}", &f.pid.to_string())
        .replace("{org}", "errscope")
        .replace("{event_id}", &f.event)
        .replace("{key}", "environment")
        .replace("{version}", "shop@1.0")
        .replace("{comment}", &comment.to_string())
        .replace("{id}", &id.to_string());
    let path = if method == "DELETE" && template.ends_with("/dsyms/") {
        format!("{path}?id=999999")
    } else {
        path
    };
    let body = match (method, template) {
        ("POST", "/api/0/projects/") => json!({"name": format!("p{n}")}),
        ("PUT", "/api/0/issues/{id}/") => json!({"status": "resolved"}),
        ("PUT", "/api/0/issues/{id}/assignee/") => json!({"assignee": "me"}),
        ("POST", "/api/0/issues/{id}/comments/") => json!({"body": "**looked at it**"}),
        ("POST", "/api/0/users/") => json!({"username": format!("u{n}"), "role": "viewer"}),
        ("PUT", "/api/0/users/{id}/") => json!({"display_name": format!("V{n}")}),
        ("PUT", "/api/0/user/password/") => {
            json!({"current_password": who.password, "new_password": who.password})
        }
        ("POST", "/api/0/tokens/") => json!({"name": "t", "scopes": [who.scopes[0]]}),
        ("POST", t) if t.ends_with("/assemble/") => json!({}),
        (_, t) if t.contains("/alerts/") => json!({"name": "r", "trigger": "new_issue",
            "channel": {"type": "webhook", "url": "http://127.0.0.1:9/"}}),
        _ => json!({}),
    };
    (path, (method != "GET").then_some(body))
}

#[tokio::test]
async fn every_route_with_every_role_and_token_scope() {
    let s = server().await;
    let a_key = s.key.clone();
    let (st, b) = call(
        &s,
        &admin(),
        "POST",
        "/api/0/projects/",
        Some(json!({"name": "b"})),
    )
    .await;
    assert_eq!(st, 201);
    let b_id = b["id"].as_i64().unwrap();
    let projects = s.state.store.list_projects().await.unwrap();
    let b_key = projects.iter().find(|p| p.id == b_id).unwrap().key.clone();
    let fa = fixture(&s, 1, &a_key, 1).await;
    let fb = fixture(&s, b_id, &b_key, 2).await;
    let (_member_id, member_cookie) = invited(&s, "mia", "member", json!(["default"])).await;
    let (viewer_id, viewer_cookie) = invited(&s, "vic", "viewer", json!([1])).await;

    let mut callers = vec![
        admin(),
        Who {
            name: "member session".into(),
            bearer: None,
            cookie: Some(member_cookie),
            username: "mia".into(),
            password: "secret-pass-1".into(),
            scopes: vec!["project:read", "project:write", "debugfiles:write"],
            only_a: true,
        },
        Who {
            name: "viewer session".into(),
            bearer: None,
            cookie: Some(viewer_cookie),
            username: "vic".into(),
            password: "secret-pass-1".into(),
            scopes: vec!["project:read"],
            only_a: true,
        },
    ];
    for scope in ALL {
        let (st, t) = call(
            &s,
            &admin(),
            "POST",
            "/api/0/tokens/",
            Some(json!({"name": scope, "scopes": [scope]})),
        )
        .await;
        assert_eq!(st, 201, "{t}");
        assert_eq!(t["scopes"], json!([scope]));
        let secret = t["token"].as_str().unwrap().to_owned();
        callers.push(Who {
            name: format!("owner token with {scope}"),
            bearer: Some(secret),
            cookie: None,
            username: "admin".into(),
            password: PASSWORD.into(),
            scopes: vec![scope],
            only_a: false,
        });
    }
    // A viewer's token never gets more than the viewer's role.
    let viewer = callers[2].clone();
    let (st, t) = call(
        &s,
        &viewer,
        "POST",
        "/api/0/tokens/",
        Some(json!({"scopes": ["project:write"]})),
    )
    .await;
    assert_eq!(st, 403, "{t}");
    assert!(t["detail"].as_str().unwrap().contains("project:write"));

    let specs = specs();
    let routes = errscope_collector::api_routes();
    let rules = routes.rules();
    assert!(rules.len() >= 30, "{rules:?}");
    let mut checked = 0;
    for rule in rules {
        let key = (rule.method.as_str(), rule.path);
        let spec = specs
            .get(&key)
            .unwrap_or_else(|| panic!("{} {} has no entry in this test's table", key.0, key.1));
        let scope = rule.need.scope.map_or("", |s| s.as_str());
        assert_eq!(scope, spec.scope, "{} {}: the scope it needs", key.0, key.1);
        for who in &callers {
            let (path, body) = prepare(&s, who, key.0, rule.path, &fa, viewer_id).await;
            let (st, got) = call(&s, who, key.0, &path, body).await;
            let what = format!("{} {path} as {}: {got}", key.0, who.name);
            if spec.scope.is_empty() || who.scopes.contains(&spec.scope) {
                assert!(spec.ok.contains(&st), "{st}, wanted {:?}: {what}", spec.ok);
                if st == 404 {
                    assert!(
                        ["no debug file", "no minidump"]
                            .iter()
                            .any(|d| got["detail"].as_str().unwrap().contains(d)),
                        "{what}"
                    );
                }
            } else {
                assert_eq!(st, 403, "{what}");
                assert!(
                    got["detail"].as_str().unwrap().contains(spec.scope),
                    "the 403 names the scope: {what}"
                );
            }
            checked += 1;
            // Project B, which members and viewers of A do not see: 404, whatever scope.
            if who.only_a && rule.need.target != errscope_collector::auth::Target::None {
                let (path, body) = prepare(&s, who, key.0, rule.path, &fb, viewer_id).await;
                let (st, got) = call(&s, who, key.0, &path, body).await;
                assert_eq!(
                    st, 404,
                    "{} {path} as {} (project B): {got}",
                    key.0, who.name
                );
                checked += 1;
            }
        }
    }
    assert!(
        specs.len() == rules.len(),
        "the table has routes the router lost"
    );
    // The projects list is filtered to memberships.
    let (_, list) = call(&s, &callers[1], "GET", "/api/0/projects/", None).await;
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1]);
    let (_, me) = call(&s, &callers[1], "GET", "/api/0/user/", None).await;
    assert_eq!(
        (me["username"].clone(), me["role"].clone()),
        (json!("mia"), json!("member"))
    );
    // A revoked token stops at once; its last use was noted.
    let (_, tokens) = call(&s, &admin(), "GET", "/api/0/tokens/", None).await;
    let t = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "project:read")
        .unwrap()
        .clone();
    assert!(t["last_used"].is_i64(), "{t}");
    assert!(t.get("token").is_none() && t.get("hash").is_none(), "{t}");
    let reader = callers
        .iter()
        .find(|c| c.name.ends_with("project:read"))
        .unwrap();
    assert_eq!(
        call(&s, reader, "GET", "/api/0/projects/", None).await.0,
        200
    );
    let (st, _) = call(
        &s,
        &admin(),
        "DELETE",
        &format!("/api/0/tokens/{}/", t["id"]),
        None,
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        call(&s, reader, "GET", "/api/0/projects/", None).await.0,
        401
    );
    // The audit log saw it all.
    let (_, log) = call(&s, &admin(), "GET", "/api/0/audit/?limit=500", None).await;
    let actions: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "user.create",
        "invite.accept",
        "token.create",
        "token.revoke",
        "issue.status",
        "rule.delete",
        "login",
        "session.revoke",
        "issue.assign",
        "comment.create",
        "comment.delete",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    eprintln!("access: routes={} calls={checked}", rules.len());
    s.stop().await;
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login_from(
    http: &reqwest::Client,
    s: &Server,
    user: &str,
    password: &str,
) -> (u16, Option<u64>) {
    let r = http
        .post(format!("{}/auth/login", s.base))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (r.status().as_u16(), retry)
}

#[tokio::test]
async fn wrong_passwords_from_one_and_from_twenty_addresses_are_throttled() {
    // A window long enough for five verifications in a row on a busy machine.
    let s = server_with(|c| c.access.login_window = Duration::from_secs(3)).await;
    let (_, _) = invited(&s, "ann", "member", json!([1])).await;
    // 200 wrong passwords from one address, ingestion going on meanwhile.
    let one = client_from("127.0.0.2");
    let mut statuses = HashMap::new();
    let mut last_retry = 0;
    for i in 0..200u64 {
        let (st, retry) = login_from(&one, &s, "admin", "wrong").await;
        *statuses.entry(st).or_insert(0) += 1;
        if i < 5 {
            assert_eq!(st, 401, "attempt {i}");
        } else {
            assert_eq!(st, 429, "attempt {i}");
            let r = retry.expect("Retry-After");
            assert!(
                r >= 1 && r >= last_retry,
                "Retry-After {r} after {last_retry}"
            );
            last_retry = r;
        }
        if i % 20 == 0 {
            let r = s
                .post_envelope(envelope(&[event(&event_id(100 + i), "f", "v")]))
                .await;
            assert_eq!(r.status(), 200, "ingestion while logins are throttled");
        }
    }
    assert!(last_retry > 1, "the wait grew: {last_retry}");
    // The right password: still throttled, from this address and from another.
    assert_eq!(login_from(&one, &s, "admin", PASSWORD).await.0, 429);
    let other = client_from("127.0.0.3");
    assert_eq!(login_from(&other, &s, "admin", PASSWORD).await.0, 429);

    // 200 wrong passwords for one user from 20 addresses: the username's count holds.
    // The invite's check before a password was set left a failure on ann's count, still
    // in the window or not depending on how long the loop above took; a success starts
    // the count over.
    assert_eq!(login(&s, "ann", "secret-pass-1").await.status(), 204);
    let mut throttled = 0;
    for a in 0..20 {
        let http = client_from(&format!("127.0.0.{}", 10 + a));
        for _ in 0..10 {
            let (st, _) = login_from(&http, &s, "ann", "wrong").await;
            assert!(st == 401 || st == 429, "{st}");
            throttled += usize::from(st == 429);
        }
    }
    assert_eq!(throttled, 195, "all but the first 5 got 429");
    let fresh = client_from("127.0.0.40");
    let (st, retry) = login_from(&fresh, &s, "ann", "secret-pass-1").await;
    assert_eq!(
        st, 429,
        "the right password from a new address, still throttled"
    );
    // An address trying many names is throttled too.
    let spray = client_from("127.0.0.41");
    for i in 0..5 {
        assert_eq!(login_from(&spray, &s, &format!("x{i}"), "w").await.0, 401);
    }
    assert_eq!(login_from(&spray, &s, "x9", "w").await.0, 429);

    // Once the wait passes, the right password logs in.
    tokio::time::sleep(Duration::from_secs(retry.unwrap() + 1)).await;
    assert_eq!(login_from(&fresh, &s, "ann", "secret-pass-1").await.0, 204);
    assert_eq!(login_from(&other, &s, "admin", PASSWORD).await.0, 204);
    let (_, log) = call(&s, &admin(), "GET", "/api/0/audit/?limit=500", None).await;
    let throttled_logged = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "login.throttled")
        .count();
    assert!(throttled_logged > 100, "{throttled_logged}");
    s.stop().await;
}

#[tokio::test]
async fn the_user_command_works_while_serving_and_disabling_ends_sessions() {
    let s = server_with(|c| c.public_url = c.public_url.replace("http://", "https://")).await;
    let data = s.data_dir().to_owned();
    let run = |args: Vec<String>, stdin: Option<&'static str>| {
        let data = data.clone();
        async move {
            let mut cmd = collector_command(&data);
            cmd.arg("user")
                .args(&args)
                .arg("--data")
                .arg(&data)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            if let Some(input) = stdin {
                use tokio::io::AsyncWriteExt as _;
                let mut i = child.stdin.take().unwrap();
                i.write_all(input.as_bytes()).await.unwrap();
            } else {
                drop(child.stdin.take());
            }
            let out = child.wait_with_output().await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            text
        }
    };
    let out = run(
        vec![
            "add".into(),
            "bob".into(),
            "--role".into(),
            "viewer".into(),
            "--project".into(),
            "default".into(),
            "--password-stdin".into(),
        ],
        Some("bobs-password\n"),
    )
    .await;
    assert!(out.contains("user bob added"), "{out}");
    let r = login(&s, "bob", "bobs-password").await;
    assert_eq!(r.status(), 204);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("; Secure"),
        "https public URL: {set_cookie}"
    );
    let bob = Who {
        name: "bob".into(),
        bearer: None,
        cookie: Some(session_cookie(&r)),
        username: "bob".into(),
        password: "bobs-password".into(),
        scopes: vec!["project:read"],
        only_a: true,
    };
    let (st, me) = call(&s, &bob, "GET", "/api/0/user/", None).await;
    assert_eq!((st, me["role"].clone()), (200, json!("viewer")));
    let (st, _) = call(
        &s,
        &bob,
        "PUT",
        "/api/0/issues/1/",
        Some(json!({"status": "resolved"})),
    )
    .await;
    assert!(st == 403 || st == 404, "a viewer cannot resolve: {st}");
    let list = run(vec!["list".into()], None).await;
    assert!(list.contains("bob\tviewer\tactive"), "{list}");
    assert!(list.contains("admin\towner\tactive"), "{list}");
    run(vec!["disable".into(), "bob".into()], None).await;
    assert_eq!(call(&s, &bob, "GET", "/api/0/session/", None).await.0, 401);
    assert_eq!(login(&s, "bob", "bobs-password").await.status(), 401);
    // The last owner cannot be disabled; a lost password is reset.
    let mut cmd = collector_command(&data);
    let out = cmd
        .args(["user", "disable", "admin", "--data"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last enabled owner"));
    let out = run(vec!["reset-password".into(), "admin".into()], None).await;
    let pw = out
        .split("new password for admin: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_eq!(login(&s, "admin", PASSWORD).await.status(), 401);
    assert_eq!(login(&s, "admin", &pw).await.status(), 204);
    s.stop().await;
}

fn session(name: &str, cookie: String, scopes: Vec<&'static str>) -> Who {
    Who {
        name: name.into(),
        bearer: None,
        cookie: Some(cookie),
        username: name.into(),
        password: "secret-pass-1".into(),
        scopes,
        only_a: true,
    }
}

#[tokio::test]
async fn issues_are_assigned_and_commented_by_members_not_viewers_nor_outsiders() {
    let s = server().await;
    let (st, b) = call(
        &s,
        &admin(),
        "POST",
        "/api/0/projects/",
        Some(json!({"name": "b"})),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    for (n, f) in [(1, "checkout"), (2, "refund")] {
        let r = s
            .post_envelope(envelope(&[event(&event_id(n), f, "boom")]))
            .await;
        assert_eq!(r.status(), 200);
    }
    let (_, list) = call(&s, &admin(), "GET", "/api/0/projects/1/issues/", None).await;
    let ids: Vec<i64> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(list["data"][0]["assignee"].is_null(), "{list}");
    let (one, two) = (ids[0], ids[1]);
    let (mia_id, mia) = invited(&s, "mia", "member", json!([1])).await;
    let (vic_id, vic) = invited(&s, "vic", "viewer", json!([1])).await;
    let (bob_id, bob) = invited(&s, "bob", "member", json!(["b"])).await;
    let mia = session("mia", mia, vec!["project:read", "project:write"]);
    let vic = session("vic", vic, vec!["project:read"]);
    let bob = session("bob", bob, vec!["project:read", "project:write"]);
    let assignee = |u: Value| Some(json!({ "assignee": u }));

    // A member assigns an issue of her project to herself; the issue says so.
    let path = format!("/api/0/issues/{one}/assignee/");
    let (st, got) = call(&s, &mia, "PUT", &path, assignee(json!("me"))).await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(
        got["assignee"],
        json!({"id": mia_id, "username": "mia", "display_name": "mia"})
    );
    let (_, issue) = call(&s, &vic, "GET", &format!("/api/0/issues/{one}/"), None).await;
    assert_eq!(issue["assignee"]["username"], "mia", "{issue}");
    // "Assigned to me" lists it, and only it; by id too; nobody else's list has it.
    let mine = |who: Who, q: &'static str| {
        let s = &s;
        async move {
            let (st, l) = call(
                s,
                &who,
                "GET",
                &format!("/api/0/projects/1/issues/?{q}"),
                None,
            )
            .await;
            assert_eq!(st, 200, "{l}");
            l["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(mine(mia.clone(), "assigned=me").await, vec![one]);
    assert_eq!(mine(vic.clone(), "assigned=me").await, Vec::<i64>::new());
    let by_id: &'static str = Box::leak(format!("assigned={mia_id}&status=all").into_boxed_str());
    assert_eq!(mine(admin(), by_id).await, vec![one]);
    let (st, bad) = call(
        &s,
        &mia,
        "GET",
        "/api/0/projects/1/issues/?assigned=someone",
        None,
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        bad["detail"].as_str().unwrap().contains("assigned"),
        "{bad}"
    );

    // Only owners and members of the project can be assigned.
    for (who, why) in [
        (json!(vic_id), "viewer"),
        (json!(bob_id), "member"),
        (json!(999_999), "no enabled user"),
        (json!(true), "assignee must be"),
    ] {
        let (st, got) = call(&s, &admin(), "PUT", &path, assignee(who)).await;
        assert_eq!(st, 400, "{got}");
        assert!(got["detail"].as_str().unwrap().contains(why), "{got}");
    }
    let (st, got) = call(
        &s,
        &admin(),
        "PUT",
        &format!("/api/0/issues/{two}/assignee/"),
        assignee(json!(mia_id)),
    )
    .await;
    assert_eq!(
        (st, got["assignee"]["id"].clone()),
        (200, json!(mia_id)),
        "{got}"
    );
    assert_eq!(mine(mia.clone(), "assigned=me").await.len(), 2);

    // A viewer reads but cannot assign or comment: 403 naming the scope.
    for (method, p, body) in [
        ("PUT", path.clone(), assignee(json!("me"))),
        (
            "POST",
            format!("/api/0/issues/{one}/comments/"),
            Some(json!({"body": "x"})),
        ),
    ] {
        let (st, got) = call(&s, &vic, method, &p, body).await;
        assert_eq!(st, 403, "{method} {p}: {got}");
        assert!(
            got["detail"].as_str().unwrap().contains("project:write"),
            "{got}"
        );
    }
    let comments = format!("/api/0/issues/{one}/comments/");
    assert_eq!(call(&s, &vic, "GET", &comments, None).await.0, 200);
    // A member of another project: not found, whatever she asks.
    for (method, p, body) in [
        ("GET", comments.clone(), None),
        ("POST", comments.clone(), Some(json!({"body": "x"}))),
        ("PUT", path.clone(), assignee(json!("me"))),
    ] {
        let (st, got) = call(&s, &bob, method, &p, body).await;
        assert_eq!(st, 404, "{method} {p}: {got}");
    }

    // Comments: stored as written (the dashboard renders them safely), listed oldest first.
    let text = "<img src=x onerror=alert(1)> **bold**\nsecond line";
    let (st, c1) = call(&s, &mia, "POST", &comments, Some(json!({"body": text}))).await;
    assert_eq!(st, 201, "{c1}");
    assert_eq!(
        (c1["body"].as_str(), c1["author"]["username"].as_str()),
        (Some(text), Some("mia"))
    );
    assert!(c1["created"].as_str().unwrap().ends_with('Z'), "{c1}");
    let (_, c2) = call(
        &s,
        &admin(),
        "POST",
        &comments,
        Some(json!({"body": "  owner note  "})),
    )
    .await;
    assert_eq!(c2["body"], "owner note");
    let (_, listed) = call(&s, &vic, "GET", &comments, None).await;
    let bodies: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec![text, "owner note"]);
    for (body, why) in [
        (json!("   "), "needs some text"),
        (json!("x".repeat(10_001)), "at most 10000"),
        (json!(5), "expected"),
    ] {
        let (st, got) = call(&s, &mia, "POST", &comments, Some(json!({"body": body}))).await;
        assert_eq!(st, 400, "{got}");
        assert!(got["detail"].as_str().unwrap().contains(why), "{got}");
    }
    // Only the author or an owner deletes a comment.
    let del = |id: &Value| format!("/api/0/issues/{one}/comments/{id}/");
    let (st, got) = call(&s, &mia, "DELETE", &del(&c2["id"]), None).await;
    assert_eq!(st, 403, "{got}");
    assert_eq!(call(&s, &mia, "DELETE", &del(&c1["id"]), None).await.0, 204);
    assert_eq!(call(&s, &mia, "DELETE", &del(&c1["id"]), None).await.0, 404);
    // The comment is of issue one, not of issue two.
    let (st, _) = call(
        &s,
        &admin(),
        "DELETE",
        &format!("/api/0/issues/{two}/comments/{}/", c2["id"]),
        None,
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(
        call(&s, &admin(), "DELETE", &del(&c2["id"]), None).await.0,
        204
    );
    let (_, listed) = call(&s, &vic, "GET", &comments, None).await;
    assert_eq!(listed, json!([]));

    // Unassigned: off the list.
    let (st, got) = call(&s, &mia, "PUT", &path, assignee(Value::Null)).await;
    assert_eq!((st, got["assignee"].clone()), (200, Value::Null), "{got}");
    assert_eq!(mine(mia.clone(), "assigned=me").await, vec![two]);

    // Who can be assigned in project 1: the owner and the member; the viewer is listed,
    // not assignable; the member of B is not listed.
    let (_, members) = call(&s, &mia, "GET", "/api/0/projects/1/members/", None).await;
    let names: Vec<(String, bool)> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().to_owned(),
                m["assignable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("admin".into(), true),
            ("mia".into(), true),
            ("vic".into(), false)
        ]
    );

    let (_, log) = call(&s, &admin(), "GET", "/api/0/audit/?limit=500", None).await;
    let entries: Vec<(String, String, String)> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("mia", "issue.assign", "to mia".to_owned()),
        ("admin", "issue.assign", "to mia".to_owned()),
        ("mia", "issue.assign", "unassigned".to_owned()),
        ("mia", "comment.create", format!("comment {}", c1["id"])),
        (
            "mia",
            "comment.delete",
            format!("comment {} by mia", c1["id"]),
        ),
        (
            "admin",
            "comment.delete",
            format!("comment {} by admin", c2["id"]),
        ),
    ] {
        assert!(
            entries
                .iter()
                .any(|(a, b, c)| (a.as_str(), b.as_str(), c) == (want.0, want.1, &want.2)),
            "{want:?} in {entries:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn two_owners_demoting_each_other_at_once_leave_one_owner() {
    use errscope_collector::store::{UserChanged, UserUpdate};
    let s = server().await;
    let (ann_id, _) = invited(&s, "ann", "owner", json!([])).await;
    let (_, me) = call(&s, &admin(), "GET", "/api/0/user/", None).await;
    let admin_id = me["id"].as_i64().unwrap();
    let store = s.state.store.clone();
    let demote = |role: &str| UserUpdate {
        role: Some(role.into()),
        ..Default::default()
    };
    let owners = || {
        let store = store.clone();
        async move {
            store
                .users()
                .await
                .unwrap()
                .into_iter()
                .filter(|u| u.role == "owner" && !u.disabled)
                .map(|u| u.username)
                .collect::<Vec<_>>()
        }
    };
    for round in 0..20 {
        // Each demotes the other at the same moment (one disables instead, every other round).
        let other = if round % 2 == 0 {
            demote("member")
        } else {
            UserUpdate {
                disabled: Some(true),
                ..Default::default()
            }
        };
        let (a, b) = tokio::join!(
            store.update_user(ann_id, demote("viewer")),
            store.update_user(admin_id, other),
        );
        let mut got = [a.unwrap(), b.unwrap()];
        got.sort_by_key(|c| *c == UserChanged::LastOwner);
        assert_eq!(
            got,
            [UserChanged::Done, UserChanged::LastOwner],
            "round {round}"
        );
        let left = owners().await;
        assert_eq!(left.len(), 1, "round {round}: {left:?}");
        // Back to two owners for the next round.
        let back = UserUpdate {
            role: Some("owner".into()),
            disabled: Some(false),
            ..Default::default()
        };
        let demoted = if left[0] == "ann" { admin_id } else { ann_id };
        assert_eq!(
            store.update_user(demoted, back).await.unwrap(),
            UserChanged::Done
        );
    }
    // Over HTTP: the last owner cannot demote herself (409), and the detail says why.
    let (st, _) = call(
        &s,
        &admin(),
        "PUT",
        &format!("/api/0/users/{ann_id}/"),
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, got) = call(
        &s,
        &admin(),
        "PUT",
        &format!("/api/0/users/{admin_id}/"),
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(st, 409, "{got}");
    assert!(
        got["detail"]
            .as_str()
            .unwrap()
            .contains("last enabled owner"),
        "{got}"
    );
    assert_eq!(owners().await, vec!["admin".to_owned()]);
    s.stop().await;
}
