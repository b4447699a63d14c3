//! The demo service: an axum app behind `errscope::tower::ErrorLayer`, with the kinds of
//! failure the Node.js write-ups describe.
//!
//! - `POST /auth` binds the user at the directory. Its failures are operational errors:
//!   captured with `errscope::capture_anyhow` (the class is the root cause,
//!   `std::io::Error: ConnectionReset`, `…: TimedOut`, `…: ConnectionRefused`) and answered
//!   with a JSON 502, 504 or 503.
//! - `GET /profile/{id}` has a programmer error: it unwraps a field some profiles lack. The
//!   panic is recorded by the layer and answered with its JSON 500.
//! - `POST /reports/{month}` renders in a task spawned with `errscope::spawn`, which panics
//!   (a division by zero) for a month without orders: the layer records it and answers 500.
//! - Anything else is a 404, which the layer does not record (Koa's rule: not a server error).
//!
//! `info!` and `warn!` lines become breadcrumbs of the request's event.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::directory;

/// The service's routes, each request in its own errscope domain.
pub(crate) fn router(directory: SocketAddr) -> Router {
    Router::new()
        .route("/auth", post(auth))
        .route("/profile/{id}", get(profile))
        .route("/reports/{month}", post(report))
        .with_state(directory)
        .layer(
            errscope::tower::ErrorLayer::new()
                // `/auth` captures its upstream failures itself, with their cause; the layer
                // would record each one again as a bare `HTTP 502`.
                .record_status(StatusCode::BAD_GATEWAY, false)
                .record_status(StatusCode::SERVICE_UNAVAILABLE, false)
                .record_status(StatusCode::GATEWAY_TIMEOUT, false),
        )
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn auth(State(directory): State<SocketAddr>, Json(login): Json<Login>) -> Response {
    errscope::with_domain(|d| d.set_context("user", &login.user));
    info!(user = %login.user, "binding at the directory");
    let bound = directory::bind(directory, &login.user)
        .await
        .context("binding the user at the directory");
    match bound {
        Ok(dn) => {
            info!(%dn, "bound");
            Json(json!({ "user": login.user, "dn": dn })).into_response()
        }
        Err(err) => {
            // An operational error: expected now and then, handled, answered, recorded.
            warn!(error = %format!("{err:#}"), "directory bind failed");
            let event_id = errscope::capture_anyhow(&err);
            let status = match err.downcast_ref::<std::io::Error>().map(|e| e.kind()) {
                Some(std::io::ErrorKind::ConnectionRefused) => StatusCode::SERVICE_UNAVAILABLE,
                Some(std::io::ErrorKind::TimedOut) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            let body = json!({
                "error": "directory_unavailable",
                "message": "the user directory could not be reached; try again",
                "event_id": event_id.to_string(),
            });
            (status, Json(body)).into_response()
        }
    }
}

struct Profile {
    id: u32,
    name: &'static str,
    manager: Option<&'static str>,
}

const PROFILES: [Profile; 3] = [
    Profile {
        id: 1,
        name: "Ada",
        manager: Some("Grace"),
    },
    Profile {
        id: 2,
        name: "Linus",
        manager: Some("Ada"),
    },
    // A contractor: no manager on file.
    Profile {
        id: 3,
        name: "Ken",
        manager: None,
    },
];

async fn profile(Path(id): Path<u32>) -> Response {
    let Some(profile) = PROFILES.iter().find(|p| p.id == id) else {
        return (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found" }))).into_response();
    };
    info!(id, "loading profile");
    // The programmer error: every profile was assumed to have a manager.
    let manager = profile.manager.unwrap();
    Json(json!({ "id": id, "name": profile.name, "manager": manager })).into_response()
}

async fn report(Path(month): Path<String>) -> Response {
    info!(%month, "rendering the monthly report in a background task");
    let task = errscope::spawn(async move {
        let orders: &[u64] = if month == "2026-11" {
            &[120, 80, 95]
        } else {
            &[]
        };
        // The programmer error: a month without orders divides by zero.
        orders.iter().sum::<u64>() / orders.len() as u64
    });
    match task.await {
        Ok(average) => Json(json!({ "average_order": average })).into_response(),
        // Not reached for a panic: the layer has already answered the request.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
