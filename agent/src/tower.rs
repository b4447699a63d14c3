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
//! A request that records nothing pays little: the layer keeps the request's method, URI,
//! matched route and a clone of its `HeaderMap` (reference-counted bytes) as they came,
//! and the tags, the name and the `request` context are made from them only when an
//! event is assembled, on the agent's thread. A generated request id comes from a
//! per-thread generator (no system call), the inner service's future is not boxed, and
//! an axum `Body` passes through unchanged.
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
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::MatchedPath;
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use pin_project_lite::pin_project;
use serde_json::{Value, json};

use crate::assemble::Custom;
use crate::capture::Link;
use crate::domain::{Domain, DomainPanic, Source};
use crate::event::{EventId, Level};
use crate::integration;

/// The header a request id is read from and echoed in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Headers whose values never reach the domain's context.
const SECRET_HEADERS: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
];

/// The tags and context entries a request's domain gets from its [`RequestScope`].
const TAG_KEYS: &[&str] = &["request_id", "method", "route", "user_agent", "status"];
const CONTEXT_KEYS: &[&str] = &["request"];

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

impl<S, ReqBody, ResBody> ::tower::Service<Request<ReqBody>> for ErrorService<S>
where
    S: ::tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let scope = Arc::new(RequestScope::new(&req));
        let source: Arc<dyn Source> = Arc::clone(&scope) as Arc<dyn Source>;
        let domain = Domain::with_source(source, TAG_KEYS, CONTEXT_KEYS);
        // `call` itself may panic (a handler that is not async). The inner service is
        // called here, so it need not be cloned into the future.
        let state = match domain.run_sync(|| self.inner.call(req)) {
            Ok(fut) => State::Running { fut },
            Err(panic) => State::Panicked { panic: Some(panic) },
        };
        ResponseFuture {
            state,
            domain,
            scope,
            config: Arc::clone(&self.config),
        }
    }
}

pin_project! {
    /// The future of [`ErrorService`]: the inner service's future, polled inside the
    /// request's domain.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        domain: Domain,
        scope: Arc<RequestScope>,
        config: Arc<Config>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] fut: F },
        // `call` panicked; taken by the first poll.
        Panicked { panic: Option<DomainPanic> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.state.project() {
            StateProj::Panicked { panic } => match panic.take() {
                Some(panic) => Outcome::Panic(panic),
                // Polled after it completed.
                None => return Poll::Pending,
            },
            // The task's panic first: a handler awaiting the dead task would only panic
            // again.
            StateProj::Running { fut } => match this.scope.task_panic(None) {
                Some(panic) => Outcome::Panic(panic),
                None => match this.domain.poll_in(fut, cx) {
                    Poll::Ready(Ok(Ok(res))) => Outcome::Response(res),
                    Poll::Ready(Ok(Err(e))) => Outcome::Failed(e),
                    Poll::Ready(Err(panic)) => Outcome::Panic(panic),
                    Poll::Pending => match this.scope.task_panic(Some(cx.waker())) {
                        Some(panic) => Outcome::Panic(panic),
                        None => return Poll::Pending,
                    },
                },
            },
        };
        let mut res = match outcome {
            Outcome::Failed(e) => return Poll::Ready(Err(e)),
            Outcome::Panic(panic) => {
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                this.domain.set_source_status(status.as_u16());
                panic_response(panic.event_id, this.scope.request_id.as_str())
            }
            Outcome::Response(res) => {
                let status = res.status();
                this.domain.set_source_status(status.as_u16());
                if ErrorLayer::records(this.config, status) {
                    let scope = &**this.scope;
                    let _ = this.domain.run_sync(|| record_status(scope, status));
                }
                // A no-op for axum's `Body` (`Body::new` downcasts it back).
                res.map(Body::new)
            }
        };
        if let Some(value) = this.scope.request_id.header_value() {
            res.headers_mut().insert(REQUEST_ID, value);
        }
        Poll::Ready(Ok(res))
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
    crate::domain::current().and_then(|d| d.snapshot().tag("request_id"))
}

/// A request's id: the client's `x-request-id` when it is a sane token, else a fresh one.
enum RequestId {
    Client(HeaderValue),
    /// 32 lowercase hex digits.
    Generated([u8; 32]),
}

impl RequestId {
    fn of(headers: &HeaderMap) -> Self {
        headers
            .get(&REQUEST_ID)
            .filter(|v| {
                let v = v.as_bytes();
                !v.is_empty()
                    && v.len() <= 128
                    && v.iter()
                        .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            })
            .map_or_else(
                || {
                    // The per-thread generator of event ids: no system call per request.
                    let mut id = [0u8; 32];
                    crate::rand::uuid_v4().simple().encode_lower(&mut id);
                    Self::Generated(id)
                },
                |v| Self::Client(v.clone()),
            )
    }

    fn as_str(&self) -> &str {
        match self {
            // Checked above: visible ASCII only.
            Self::Client(v) => v.to_str().unwrap_or_default(),
            Self::Generated(id) => std::str::from_utf8(id).unwrap_or_default(),
        }
    }

    /// The value echoed in the response.
    fn header_value(&self) -> Option<HeaderValue> {
        match self {
            Self::Client(v) => Some(v.clone()),
            Self::Generated(id) => HeaderValue::from_bytes(id).ok(),
        }
    }
}

#[cfg(test)]
fn request_id_of(headers: &HeaderMap) -> String {
    RequestId::of(headers).as_str().to_owned()
}

/// What a request's domain knows about the request, kept as it came: the tags and the
/// `request` context are made from it only when an event is assembled.
struct RequestScope {
    method: Method,
    uri: Uri,
    /// axum's route template, when the router matched one.
    route: Option<MatchedPath>,
    headers: HeaderMap,
    request_id: RequestId,
    /// Whether `task` holds a panic (checked before each poll without the lock).
    task_panicked: AtomicBool,
    task: Mutex<TaskSlot>,
}

/// The first panic of a task spawned in the request's domain, and the request future's
/// waker to tell it.
#[derive(Default)]
struct TaskSlot {
    panic: Option<DomainPanic>,
    waker: Option<Waker>,
}

impl RequestScope {
    fn new<B>(req: &Request<B>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            route: req.extensions().get::<MatchedPath>().cloned(),
            headers: req.headers().clone(),
            request_id: RequestId::of(req.headers()),
            task_panicked: AtomicBool::new(false),
            task: Mutex::new(TaskSlot::default()),
        }
    }

    /// The route template, else the raw path.
    fn route(&self) -> &str {
        self.route
            .as_ref()
            .map_or_else(|| self.uri.path(), MatchedPath::as_str)
    }

    fn user_agent(&self) -> Option<String> {
        self.headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// A spawned task's panic, if one came; else `waker` (of a pending poll) is kept to
    /// be woken by one. Requests whose handler finishes in its first poll never lock.
    fn task_panic(&self, waker: Option<&Waker>) -> Option<DomainPanic> {
        if waker.is_none() && !self.task_panicked.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(panic) = slot.panic.take() {
            return Some(panic);
        }
        if let Some(waker) = waker
            && !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker))
        {
            slot.waker = Some(waker.clone());
        }
        None
    }
}

impl Source for RequestScope {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.route())
    }

    fn tag(&self, key: &str, status: Option<u16>) -> Option<String> {
        match key {
            "request_id" => Some(self.request_id.as_str().to_owned()),
            "method" => Some(self.method.as_str().to_owned()),
            "route" => Some(self.route().to_owned()),
            "user_agent" => self.user_agent(),
            "status" => status.map(|s| s.to_string()),
            _ => None,
        }
    }

    fn tags(&self, status: Option<u16>, add: &mut dyn FnMut(&'static str, String)) {
        for key in TAG_KEYS {
            if let Some(value) = self.tag(key, status) {
                add(key, value);
            }
        }
    }

    fn name_parts(&self, add: &mut dyn FnMut(&str)) {
        // `Method::as_str`, `MatchedPath::as_str` and `Uri::path` borrow what the request
        // brought: no allocation.
        add(self.method.as_str());
        add(" ");
        add(self.route());
    }

    fn context(&self, add: &mut dyn FnMut(&'static str, Value)) {
        let headers: serde_json::Map<String, Value> = self
            .headers
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
        add(
            "request",
            json!({
                "method": self.method.as_str(),
                "path": self.uri.path(),
                "query": self.uri.query(),
                "headers": headers,
            }),
        );
    }

    fn task_panicked(&self, panic: DomainPanic) {
        let waker = {
            let mut slot = self.task.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.panic.is_none() {
                slot.panic = Some(panic);
            }
            slot.waker.take()
        };
        self.task_panicked.store(true, Ordering::Release);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Records a response with a recorded status, in the current (the request's) domain.
fn record_status(scope: &RequestScope, status: StatusCode) -> EventId {
    let code = status.as_u16();
    let (method, route) = (&scope.method, scope.route());
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
