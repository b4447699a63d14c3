//! The traffic driver: calls the demo service at a bounded rate, on 127.0.0.1 only, and
//! prints a tally of the answers every few seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::Method;
use tokio::sync::{Semaphore, watch};

/// One round of calls, repeated: mostly logins, some profile and report views, a few
/// requests for pages that do not exist.
const ROUND: [(Method, &str); 12] = [
    (Method::POST, "/auth"),
    (Method::GET, "/profile/1"),
    (Method::POST, "/auth"),
    (Method::GET, "/profile/3"),
    (Method::POST, "/auth"),
    (Method::GET, "/missing"),
    (Method::POST, "/auth"),
    (Method::POST, "/reports/2026-11"),
    (Method::POST, "/auth"),
    (Method::GET, "/profile/42"),
    (Method::POST, "/auth"),
    (Method::POST, "/reports/2026-12"),
];

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// At most this many requests in flight (a stalled upstream holds requests for 500 ms).
const IN_FLIGHT: u32 = 64;

/// Answers by status code; `0` counts requests that got no HTTP answer.
type Tally = Arc<Mutex<BTreeMap<u16, u64>>>;

/// Sends `rate` requests per second to `service` until `stop` turns true, then waits
/// (at most 2 s) for the requests in flight and prints the final tally.
pub(crate) async fn drive(service: SocketAddr, rate: u32, mut stop: watch::Receiver<bool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let tally = Tally::default();
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT as usize));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(Duration::from_secs(5));
    report.tick().await;
    for n in 0usize.. {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = report.tick() => println!("traffic: {}", summary(&tally)),
            _ = tick.tick() => {
                let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                    continue;
                };
                let (method, path) = &ROUND[n % ROUND.len()];
                let mut request = client.request(method.clone(), format!("http://{service}{path}"));
                if *path == "/auth" {
                    let user = USERS[n % USERS.len()];
                    request = request
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"user":"{user}"}}"#));
                }
                let tally = Arc::clone(&tally);
                tokio::spawn(async move {
                    let status = request.send().await.map_or(0, |r| r.status().as_u16());
                    *tally.lock().unwrap_or_else(PoisonError::into_inner).entry(status).or_default() += 1;
                    drop(permit);
                });
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), in_flight.acquire_many(IN_FLIGHT)).await;
    println!("traffic: done: {}", summary(&tally));
}

/// `240 requests: 200 ×80, 404 ×40, 500 ×60, 502 ×20, …`
fn summary(tally: &Tally) -> String {
    let tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let total: u64 = tally.values().sum();
    let parts: Vec<String> = tally
        .iter()
        .map(|(status, n)| match status {
            0 => format!("no answer ×{n}"),
            status => format!("{status} ×{n}"),
        })
        .collect();
    format!("{total} requests: {}", parts.join(", "))
}
