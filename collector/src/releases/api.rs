//! `GET /api/0/projects/{pid}/releases/` and `.../releases/{version}/`: sessions,
//! crash-free rates, adoption, users and new issues per release, overall and per environment.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::crash_free_rate;
use crate::api::ApiError;
use crate::state::AppState;
use crate::store::{NewIssue, SessionBucket, SessionQuery};
use crate::time::{now_ms, rfc3339};

/// The period read when `days` is not given.
const DEFAULT_DAYS: i64 = 14;
/// The longest period (sessions are kept 90 days).
const MAX_DAYS: i64 = 90;
/// Releases listed at most (the most recently seen).
const MAX_RELEASES: usize = 100;
/// Issues read to find the new issues of the releases.
const MAX_NEW_ISSUES: i64 = 5000;
/// Issue ids listed per release.
const IDS_PER_RELEASE: usize = 50;
const DAY_MS: i64 = 86_400_000;

type Params = Query<HashMap<String, String>>;

/// `days` (1 to 90) and `environment` from the query.
fn query(
    p: &HashMap<String, String>,
    release: Option<String>,
) -> Result<(SessionQuery, i64), ApiError> {
    let days = match p.get("days").filter(|d| !d.is_empty()) {
        None => DEFAULT_DAYS,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=MAX_DAYS).contains(d))
            .ok_or_else(|| ApiError::BadRequest(format!("days must be 1 to {MAX_DAYS}")))?,
    };
    let since = now_ms() - days * DAY_MS;
    Ok((
        SessionQuery {
            since,
            environment: p.get("environment").cloned(),
            release,
        },
        since,
    ))
}

async fn project_exists(state: &AppState, pid: &str) -> Result<i64, ApiError> {
    let id = pid
        .parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or(ApiError::NotFound("no such project"))?;
    if state.store.stats(id).await?.is_none() {
        return Err(ApiError::NotFound("no such project"));
    }
    Ok(id)
}

/// Counts summed over buckets.
#[derive(Default, Clone, Copy)]
struct Sum {
    sessions: i64,
    crashed: i64,
    abnormal: i64,
    errored: i64,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
}

impl Sum {
    fn add(&mut self, b: &SessionBucket) {
        self.sessions += b.sessions;
        self.crashed += b.crashed;
        self.abnormal += b.abnormal;
        self.errored += b.errored;
        self.seen(b.first_seen);
        self.seen(b.last_seen);
    }

    fn seen(&mut self, at: i64) {
        self.first_seen = Some(self.first_seen.map_or(at, |f| f.min(at)));
        self.last_seen = Some(self.last_seen.map_or(at, |l| l.max(at)));
    }

    fn counts(&self) -> serde_json::Map<String, Value> {
        let v = json!({
            "sessions": self.sessions,
            "crashed": self.crashed,
            "abnormal": self.abnormal,
            "errored": self.errored,
            "crash_free_rate": crash_free_rate(self.sessions, self.crashed),
        });
        match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

/// One release's summary.
#[derive(Default)]
struct Release {
    total: Sum,
    envs: BTreeMap<String, Sum>,
    /// Day (epoch ms) → counts.
    days: BTreeMap<i64, Sum>,
    /// Hour → counts (the detail route only).
    hours: BTreeMap<i64, Sum>,
    new: Vec<NewIssue>,
}

fn summarize(buckets: &[SessionBucket], new: Vec<NewIssue>) -> BTreeMap<String, Release> {
    let mut out: BTreeMap<String, Release> = BTreeMap::new();
    for b in buckets {
        let r = out.entry(b.release.clone()).or_default();
        r.total.add(b);
        r.envs.entry(b.environment.clone()).or_default().add(b);
        r.days
            .entry(b.hour.div_euclid(DAY_MS) * DAY_MS)
            .or_default()
            .add(b);
        r.hours.entry(b.hour).or_default().add(b);
    }
    for issue in new {
        let r = out.entry(issue.release.clone()).or_default();
        r.total.seen(issue.first_seen);
        r.new.push(issue);
    }
    out
}

fn series(points: &BTreeMap<i64, Sum>, key: &str) -> Vec<Value> {
    points
        .iter()
        .map(|(at, s)| {
            let mut m = s.counts();
            m.insert(key.into(), json!(rfc3339(*at)));
            Value::Object(m)
        })
        .collect()
}

fn release_json(
    version: &str,
    r: &Release,
    users: Option<i64>,
    all_sessions: i64,
    since: i64,
) -> serde_json::Map<String, Value> {
    let mut m = r.total.counts();
    m.insert("version".into(), json!(version));
    m.insert("first_seen".into(), json!(r.total.first_seen.map(rfc3339)));
    m.insert("last_seen".into(), json!(r.total.last_seen.map(rfc3339)));
    m.insert("users".into(), json!(users));
    m.insert(
        "adoption".into(),
        json!((all_sessions > 0).then(|| r.total.sessions as f64 / all_sessions as f64)),
    );
    let new: Vec<&NewIssue> = r.new.iter().filter(|i| i.first_seen >= since).collect();
    m.insert("new_issues".into(), json!(new.len()));
    m.insert(
        "new_issue_ids".into(),
        json!(
            new.iter()
                .take(IDS_PER_RELEASE)
                .map(|i| i.id)
                .collect::<Vec<_>>()
        ),
    );
    m.insert(
        "environments".into(),
        json!(
            r.envs
                .iter()
                .map(|(env, s)| {
                    let mut e = s.counts();
                    e.insert(
                        "environment".into(),
                        json!((!env.is_empty()).then_some(env)),
                    );
                    Value::Object(e)
                })
                .collect::<Vec<_>>()
        ),
    );
    m
}

async fn read(
    state: &AppState,
    pid: i64,
    q: SessionQuery,
) -> Result<(BTreeMap<String, Release>, HashMap<String, i64>), ApiError> {
    let buckets = state.store.session_buckets(pid, q.clone()).await?;
    let users: HashMap<String, i64> = state
        .store
        .release_users(pid, q.clone())
        .await?
        .into_iter()
        .collect();
    let mut new = state.store.new_issues(pid, MAX_NEW_ISSUES).await?;
    if let Some(v) = &q.release {
        new.retain(|i| &i.release == v);
    }
    Ok((summarize(&buckets, new), users))
}

/// `GET /api/0/projects/{pid}/releases/`.
pub async fn list_releases(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let pid = project_exists(&state, &pid).await?;
    let (q, since) = query(&p, None)?;
    let (releases, users) = read(&state, pid, q).await?;
    let all: i64 = releases.values().map(|r| r.total.sessions).sum();
    let mut list: Vec<(&String, &Release)> = releases
        .iter()
        .filter(|(_, r)| r.total.sessions > 0 || r.new.iter().any(|i| i.first_seen >= since))
        .collect();
    list.sort_by(|a, b| {
        b.1.total
            .last_seen
            .cmp(&a.1.total.last_seen)
            .then(a.0.cmp(b.0))
    });
    let out: Vec<Value> = list
        .into_iter()
        .take(MAX_RELEASES)
        .map(|(v, r)| {
            let mut m = release_json(v, r, users.get(v).copied(), all, since);
            m.insert("series".into(), json!(series(&r.days, "day")));
            Value::Object(m)
        })
        .collect();
    Ok(Json(out).into_response())
}

/// `GET /api/0/projects/{pid}/releases/{version}/`.
pub async fn get_release(
    State(state): State<AppState>,
    Path((pid, version)): Path<(String, String)>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let pid = project_exists(&state, &pid).await?;
    let (all_q, since) = query(&p, None)?;
    let mut q = all_q.clone();
    q.release = Some(version.clone());
    let (releases, users) = read(&state, pid, q).await?;
    let all: i64 = state
        .store
        .session_buckets(pid, all_q)
        .await?
        .iter()
        .map(|b| b.sessions)
        .sum();
    let r = releases.get(&version);
    let mut m = match r {
        Some(r) => release_json(&version, r, users.get(&version).copied(), all, since),
        None => release_json(&version, &Release::default(), None, all, since),
    };
    if let Some(r) = r {
        m.insert("series".into(), json!(series(&r.hours, "hour")));
        m.insert(
            "issues".into(),
            json!(r
                .new
                .iter()
                .filter(|i| i.first_seen >= since)
                .map(|i| json!({"id": i.id, "title": i.title, "first_seen": rfc3339(i.first_seen)}))
                .collect::<Vec<_>>()),
        );
    } else {
        m.insert("series".into(), json!([]));
        m.insert("issues".into(), json!([]));
    }
    Ok(Json(Value::Object(m)).into_response())
}
