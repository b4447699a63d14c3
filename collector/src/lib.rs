//! errscope-collector: receives events from errscope agents and Sentry SDKs, groups them
//! into issues, stores them (SQLite or PostgreSQL) and serves the JSON API and the dashboard.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use errscope_collector::{Config, app, serve::serve, start};
//! let started = start(Config::new("./errscope-data")).await?;
//! errscope_collector::alerts::spawn(&started.state)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! let stop = async { tokio::signal::ctrl_c().await.ok(); };
//! let header_timeout = started.state.config.header_timeout;
//! serve(listener, app(started.state.clone()), header_timeout, stop).await;
//! started.state.store.close().await;
//! # Ok(()) }
//! ```
//!
//! The HTTP contract is `collector/API.md`. Architecture, by module:
//!
//! - [`ingest`]: Sentry envelope and store endpoints (auth, bounded decompression,
//!   framing, validation);
//! - [`grouping`]: class, fingerprint and normalization;
//! - [`symbolicate`]: server-side symbolication from debug files, source context;
//! - [`store`]: the storage seam (one trait) and its backends: embedded SQLite (schema,
//!   group-commit writer thread, read queries) and PostgreSQL;
//! - [`api`]: the dashboard's JSON API;
//! - [`auth`]: users, roles, project membership, scoped tokens, sessions, login
//!   throttling, invites, the audit log, and the permission check of every API route;
//! - [`minidump`]: minidumps processed into native events, the raw dumps kept;
//! - [`workflow`]: the issue workflow (assignees, comments);
//! - [`difs`]: debug files (sentry-cli uploads, storage, lookup for symbolication);
//! - [`releases`]: release health (session items, the releases API);
//! - [`alerts`]: alert rules, their decision on ingest and their background delivery;
//! - [`dashboard`]: the embedded web UI;
//! - [`serve`]: the HTTP/1.1 server loop, the connection cap and the deadlines for slow
//!   clients; [`budget`]: the memory budget for request bodies in flight;
//! - [`metrics`]: Prometheus counters; [`state`]: configuration and shared state.
#![warn(missing_docs)]
#![warn(clippy::print_stdout)]

pub mod alerts;
pub mod api;
pub mod auth;
pub mod budget;
pub mod dashboard;
pub mod difs;
pub mod grouping;
pub mod ingest;
pub mod metrics;
pub mod minidump;
pub mod quota;
pub mod releases;
pub mod serve;
pub mod state;
pub mod store;
pub mod symbolicate;
pub mod time;
pub mod workflow;

pub use state::{AppState, Config, Started, start};

/// Starts the collector's background tasks on the current tokio runtime: alert delivery,
/// and the symbolication of retained events when their debug files arrive. Call once,
/// after [`start`], from inside the runtime that serves.
pub fn spawn_background(state: &AppState) -> Result<(), alerts::AlertError> {
    alerts::spawn(state)?;
    symbolicate::spawn_reprocessing(state);
    minidump::spawn_sweeper(&state.minidumps);
    Ok(())
}

/// Logs to stderr what `ERRSCOPE_LOG` selects (an `EnvFilter` directive; default `warn`),
/// as `errscope-collector serve` does. Call once, at the start of a program.
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ERRSCOPE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// The `/api/0/` routes, each with the scope and project it needs (see
/// [`auth::policy`]); [`app`] serves them, the tests walk them.
pub fn api_routes() -> auth::Routes {
    use auth::Scope::{OrgAdmin, ProjectRead, ProjectWrite};
    use auth::policy::{get, post};
    use auth::{Need, Target};
    let pid = Target::Project("pid");
    let issue = Target::Issue("id");
    let rule = Target::Rule("id");
    let read = |t| Need::on(ProjectRead, t);
    let write = |t| Need::on(ProjectWrite, t);
    let routes = auth::Routes::new()
        .route("/api/0/session/", get(Need::SELF, auth::api::session_info))
        .route(
            "/api/0/projects/",
            get(Need::org(ProjectRead), api::list_projects).post(
                Need::org(OrgAdmin).audited("project.create"),
                api::create_project,
            ),
        )
        .route("/api/0/projects/{pid}/", get(read(pid), api::get_project))
        .route(
            "/api/0/projects/{pid}/stats/",
            get(read(pid), api::project_stats),
        )
        .route(
            "/api/0/projects/{pid}/classes/",
            get(read(pid), api::classes),
        )
        .route(
            "/api/0/projects/{pid}/issues/",
            get(read(pid), api::list_issues),
        )
        .route(
            "/api/0/projects/{pid}/events/{event_id}/",
            get(read(pid), api::get_event),
        )
        .route(
            "/api/0/projects/{pid}/events/{event_id}/attachments/minidump/",
            get(read(pid), minidump::api::download),
        )
        .route(
            "/api/0/projects/{pid}/tags/{key}/values/",
            get(read(pid), api::tag_values),
        )
        .route(
            "/api/0/issues/{id}/",
            get(read(issue), api::get_issue)
                .put(write(issue).audited("issue.status"), api::update_issue),
        )
        .route(
            "/api/0/issues/{id}/events/",
            get(read(issue), api::issue_events),
        )
        .route(
            "/api/0/projects/{pid}/alerts/",
            get(read(pid), alerts::api::list_rules)
                .post(write(pid).audited("rule.create"), alerts::api::create_rule),
        )
        .route(
            "/api/0/alerts/{id}/test/",
            post(write(rule), alerts::api::test_rule),
        )
        .route(
            "/api/0/alerts/{id}/deliveries/",
            get(read(rule), alerts::api::deliveries),
        )
        .route(
            "/api/0/alerts/{id}/",
            get(read(rule), alerts::api::get_rule)
                .put(write(rule).audited("rule.update"), alerts::api::update_rule)
                .delete(write(rule).audited("rule.delete"), alerts::api::delete_rule),
        );
    let routes = workflow::routes(auth::api::routes(routes))
        .route(
            "/api/0/projects/{pid}/releases/",
            get(read(pid), releases::api::list_releases),
        )
        .route(
            "/api/0/projects/{pid}/releases/{version}/",
            get(read(pid), releases::api::get_release),
        );
    difs::api::routes(routes)
}

/// The collector's HTTP routes.
pub fn app(state: AppState) -> Router {
    let ingest = Router::new()
        .route(
            "/api/{project_id}/envelope/",
            post(ingest::envelope_handler).options(ingest::preflight),
        )
        .route(
            "/api/{project_id}/envelope",
            post(ingest::envelope_handler).options(ingest::preflight),
        )
        .route(
            "/api/{project_id}/store/",
            post(ingest::store_handler).options(ingest::preflight),
        )
        .route(
            "/api/{project_id}/minidump/",
            post(ingest::minidump::handler)
                .options(ingest::preflight)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/{project_id}/minidump",
            post(ingest::minidump::handler)
                .options(ingest::preflight)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/{project_id}/store",
            post(ingest::store_handler).options(ingest::preflight),
        )
        .layer(axum::middleware::map_response(ingest::ingest_headers));
    let api = api_routes().finish(state.clone());
    Router::new()
        .merge(ingest)
        .merge(api)
        // Unauthenticated, outside the ingestion budget: a login body is a few bytes.
        .route(
            "/auth/login",
            post(auth::login::login).layer(axum::extract::DefaultBodyLimit::max(16 * 1024)),
        )
        .route("/auth/logout", post(auth::login::logout))
        .route(
            "/auth/invite/",
            post(auth::login::accept_invite).layer(axum::extract::DefaultBodyLimit::max(16 * 1024)),
        )
        .route("/auth/invite/{token}", get(auth::login::invite_info))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/", get(dashboard::root))
        .route("/assets/{*path}", get(dashboard::asset))
        .fallback(dashboard::fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            serve::body_deadline,
        ))
        .layer(axum::middleware::map_response(serve::json_errors))
        .with_state(state)
        // A bug must cost one request a 500, never the connection or the process.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "detail": "internal error" })),
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
