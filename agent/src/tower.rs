//! [`ErrorLayer`]: a domain per HTTP request for tower/axum/hyper services, the
//! Express/Koa error middleware done with domains.
//!
//! Each request runs inside a [`Domain`] named `METHOD <route template>` (axum's
//! [`MatchedPath`] when the router put one in the request, else the raw path), tagged
//! with `request_id`, `method`, `route`, `user_agent` and, once known, `status`, with the
//! request's method, path and headers in its context under `request`. The values of
//! `Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` never go in (they
//! are replaced with `[Filtered]` here, whatever the scrubbing options say); the rest
//! goes through the scrubber like any domain data.
//!
//! A panic in the handler, or in a task it spawned with [`crate::spawn`], is recorded as
//! a programmer error and answered with a `500` and a JSON body: the client never sees a
//! dropped connection or a hung socket. As with Node's `domain`, a spawned task's panic
//! answers the request at once and drops the handler's future, even if the handler was
//! going to handle the task's `JoinError` itself; a task whose panic the handler wants to
//! handle is spawned with `tokio::spawn(fut.in_current_domain())` instead (it keeps the
//! domain's data but does not end the request). A task that panics after the response
//! was sent is recorded as usual. A response with a recorded status (5xx by default, see
//! [`ErrorLayer::record_status`]) is recorded as an event of type `HTTP <code>`, without a
//! stack (the layer's own says nothing about the handler). Errors of the response body
//! while it streams are not seen by the layer.

use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::MatchedPath;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::assemble::Custom;
use crate::capture::Link;
use crate::domain::{Domain, DomainPanic};
use crate::event::{EventId, Level};
use crate::integration;

/// The header a request id is read from and echoed in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Headers whose values never reach the domain's context.
const SECRET_HEADERS: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
];

/// A tower [`Layer`](::tower::Layer) that runs each request in a domain, turns panics
/// into recorded `500`s and records server-error responses.
///
/// ```
/// use axum::{Router, routing::get};
///
/// async fn order() -> &'static str {
///     // Anywhere below the handler: the request's domain, without passing it around.
///     errscope::with_domain(|d| d.set_context("cart_items", 3));
///     errscope::add_breadcrumb(errscope::Breadcrumb::new("priced the cart"));
///     "ok"
/// }
///
/// let app: Router = Router::new()
///     .route("/orders/{id}", get(order))
///     // `Router::layer` runs after routing: the domain is named `GET /orders/{id}`.
///     .layer(errscope::tower::ErrorLayer::new());
/// ```
#[derive(Clone, Default)]
pub struct ErrorLayer {
    config: Arc<Config>,
}

#[derive(Clone, Default)]
struct Config {
    /// Statuses whose recording differs from the default (record 5xx only).
    overrides: BTreeMap<u16, bool>,
}

impl fmt::Debug for ErrorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorLayer")
            .field("overrides", &self.config.overrides)
            .finish()
    }
}

impl ErrorLayer {
    /// A layer that records every 5xx response and no other (Koa's rule: a 404 or an
    /// error meant for the client is not a server error).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether responses with `status` are recorded: `record_status(StatusCode::NOT_FOUND,
    /// true)` records 404s, `record_status(StatusCode::SERVICE_UNAVAILABLE, false)` stops
    /// recording 503s. Panics are always recorded.
    #[must_use]
    pub fn record_status(mut self, status: StatusCode, record: bool) -> Self {
        Arc::make_mut(&mut self.config)
            .overrides
            .insert(status.as_u16(), record);
        self
    }

    fn records(config: &Config, status: StatusCode) -> bool {
        config
            .overrides
            .get(&status.as_u16())
            .copied()
            .unwrap_or_else(|| status.is_server_error())
    }
}

impl<S> ::tower::Layer<S> for ErrorLayer {
    type Service = ErrorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service of [`ErrorLayer`].
#[derive(Clone)]
pub struct ErrorService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for ErrorService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorService").finish_non_exhaustive()
    }
}

/// The future of [`ErrorService`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, ReqBody, ResBody> ::tower::Service<Request<ReqBody>> for ErrorService<S>
where
    S: ::tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the ready one (`self.inner`) handles this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        let request_id = request_id_of(req.headers());
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
        let method = req.method().as_str().to_owned();
        let domain = request_domain(&req, &method, &route, &request_id);

        let (tx, rx) = tokio::sync::oneshot::channel::<DomainPanic>();
        let tx = Mutex::new(Some(tx));
        domain.watch_task_panics(move |panic| {
            let tx = tx.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(tx) = tx {
                let _ = tx.send(panic);
            }
        });
        // `call` itself may panic (a handler that is not async).
        let fut = domain.run_sync(|| inner.call(req));

        Box::pin(async move {
            let outcome = match fut {
                Err(panic) => Outcome::Panic(panic),
                Ok(fut) => {
                    let mut run = domain.run(fut);
                    let mut rx = rx;
                    poll_fn(|cx| {
                        // The task's panic first: a handler awaiting the dead task would
                        // only panic again.
                        if let Poll::Ready(Ok(panic)) = Pin::new(&mut rx).poll(cx) {
                            return Poll::Ready(Outcome::Panic(panic));
                        }
                        match Pin::new(&mut run).poll(cx) {
                            Poll::Ready(Ok(Ok(res))) => Poll::Ready(Outcome::Response(res)),
                            Poll::Ready(Ok(Err(e))) => Poll::Ready(Outcome::Failed(e)),
                            Poll::Ready(Err(panic)) => Poll::Ready(Outcome::Panic(panic)),
                            Poll::Pending => Poll::Pending,
                        }
                    })
                    .await
                }
            };
            let mut res = match outcome {
                Outcome::Failed(e) => return Err(e),
                Outcome::Panic(panic) => {
                    domain.set_tag("status", StatusCode::INTERNAL_SERVER_ERROR.as_u16());
                    panic_response(panic.event_id, &request_id)
                }
                Outcome::Response(res) => {
                    let status = res.status();
                    domain.set_tag("status", status.as_u16());
                    if ErrorLayer::records(&config, status) {
                        let _ = domain.run_sync(|| record_status(&method, &route, status));
                    }
                    res.map(Body::new)
                }
            };
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                res.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            Ok(res)
        })
    }
}

enum Outcome<R, E> {
    Response(R),
    Failed(E),
    Panic(DomainPanic),
}

/// The id of the current request (the `request_id` tag of the current domain), anywhere
/// below a handler wrapped by [`ErrorLayer`].
#[must_use]
pub fn request_id() -> Option<String> {
    crate::domain::current().and_then(|d| d.snapshot().tags.get("request_id").cloned())
}

/// The client's `x-request-id` when it is a sane token, else a fresh one.
fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        })
        .map_or_else(|| EventId::new().to_string(), str::to_owned)
}

fn request_domain<B>(req: &Request<B>, method: &str, route: &str, request_id: &str) -> Domain {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = if SECRET_HEADERS.contains(name) {
                crate::scrub::FILTERED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), Value::String(value))
        })
        .collect();
    let mut domain = Domain::new(format!("{method} {route}"))
        .tag("request_id", request_id)
        .tag("method", method)
        .tag("route", route)
        .context(
            "request",
            json!({
                "method": method,
                "path": req.uri().path(),
                "query": req.uri().query(),
                "headers": headers,
            }),
        );
    if let Some(agent) = req
        .headers()
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    {
        domain = domain.tag("user_agent", agent);
    }
    domain
}

/// Records a response with a recorded status, in the current (the request's) domain.
fn record_status(method: &str, route: &str, status: StatusCode) -> EventId {
    let code = status.as_u16();
    integration::capture(
        "errscope::tower::status",
        integration::stable_hash((route, code)),
        Level::Error,
        || Custom {
            chain: vec![Link {
                ty: format!("HTTP {code}"),
                value: format!("{method} {route} answered {status}"),
                io: None,
            }],
            mechanism: "tower",
            // The layer's own stack says nothing about the handler that chose the status.
            frames: Some(Vec::new()),
            extra: BTreeMap::from([("status".to_owned(), json!(code))]),
            ..Custom::default()
        },
    )
}

/// The `500` a panicking request gets.
fn panic_response(event_id: EventId, request_id: &str) -> Response<Body> {
    let body = json!({
        "error": "internal_error",
        "message": "the server hit a bug while handling this request; \
                    quote event_id when you report it",
        "event_id": event_id.to_string(),
        "request_id": request_id,
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_taken_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("req-42"));
        assert_eq!(request_id_of(&h), "req-42");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("a b"));
        let generated = request_id_of(&h);
        assert_eq!(generated.len(), 32, "a fresh id: {generated}");
        assert_ne!(request_id_of(&HeaderMap::new()), generated);
    }

    #[test]
    fn five_hundreds_are_recorded_unless_configured() {
        let layer = ErrorLayer::new()
            .record_status(StatusCode::NOT_FOUND, true)
            .record_status(StatusCode::SERVICE_UNAVAILABLE, false);
        let c = &layer.config;
        assert!(ErrorLayer::records(c, StatusCode::INTERNAL_SERVER_ERROR));
        assert!(ErrorLayer::records(c, StatusCode::BAD_GATEWAY));
        assert!(!ErrorLayer::records(c, StatusCode::SERVICE_UNAVAILABLE));
        assert!(ErrorLayer::records(c, StatusCode::NOT_FOUND));
        assert!(!ErrorLayer::records(c, StatusCode::BAD_REQUEST));
        assert!(!ErrorLayer::records(c, StatusCode::OK));
    }
}
