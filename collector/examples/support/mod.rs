//! What the load examples share: the 15 KB event they send, percentiles, and what
//! `/proc` tells of a process (RSS, CPU per thread).

#![allow(dead_code)]

use serde_json::{Value, json};

pub(crate) const FINGERPRINTS: usize = 50;

pub(crate) fn event_template(n: usize) -> String {
    let frames: Vec<Value> = (0..30)
        .map(|i| {
            json!({
                "function": format!("shop::handlers::step_{i}"),
                "module": "shop::handlers",
                "filename": "src/handlers.rs",
                "abs_path": "/srv/shop/src/handlers.rs",
                "lineno": 100 + i,
                "colno": 9,
                "in_app": i > 3,
                "context_line": "    let order = repo.load(order_id).await.context(\"loading the order\")?;",
                "pre_context": ["    // find the order", "    let repo = state.repo();"],
                "post_context": ["    Ok(order)", "}"]
            })
        })
        .collect();
    let mut frames = frames;
    frames.push(json!({"function": format!("shop::ldap::bind_{n}"), "module": "shop::ldap", "lineno": 42, "in_app": true}));
    let crumbs: Vec<Value> = (0..40)
        .map(|i| json!({"timestamp": 1.7e9 + i as f64, "category": "http", "message": format!("GET /api/orders/{i} -> 200"), "level": "info"}))
        .collect();
    let mut ev = json!({
        "event_id": "EVENTIDEVENTIDEVENTIDEVENTIDEVEN",
        "platform": "native",
        "level": "error",
        "environment": "production",
        "release": "shop@2.3.1",
        "server_name": "web-3",
        "tags": {"domain": "ldap", "region": "eu-west-1"},
        "exception": {"values": [{
            "type": "std::io::Error",
            "value": "connection reset by peer (os error 104)",
            "mechanism": {"type": "errscope", "handled": true, "data": {"io_kind": "ConnectionReset", "os_code": 104}},
            "stacktrace": {"frames": frames}
        }]},
        "breadcrumbs": {"values": crumbs},
        "contexts": {"os": {"name": "Linux", "version": "6.1"}, "runtime": {"name": "rustc", "version": "1.88.0"}},
    });
    let size = ev.to_string().len();
    if size < 15_000 {
        ev["extra"] = json!({"padding": "p".repeat(15_000 - size - 20)});
    }
    let mut env = String::from("{}\n{\"type\":\"event\"}\n");
    env.push_str(&ev.to_string());
    env.push('\n');
    env
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds per server thread name, e.g. `errscope-writer 9.1 s, tokio-runtime-w 14.2 s`.
pub(crate) fn thread_cpu(pid: u32) -> String {
    let tick = 100.0; // USER_HZ on Linux
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_owned();
            let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let secs =
                (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / tick;
            *by_name.entry(name).or_default() += secs;
        }
    }
    by_name
        .iter()
        .map(|(n, s)| format!("{n} {s:.1} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn server_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "errscope-collector",
            "--bins",
            "--examples",
        ])
        .status()
        .expect("cargo build");
    assert!(st.success(), "building the collector failed");
    dir.join("errscope-collector")
}
