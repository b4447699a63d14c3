//! The permission check: every `/api/0/` route is added through [`Routes`] with what it
//! needs (a scope, the project it touches), and one layer checks that before the handler.
//!
//! A route without a rule cannot be added, and the table is public ([`Routes::rules`]) so
//! the tests walk every route with every role and token scope.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use super::{AuthError, Caller, Scope, Via, audit, identify};
use crate::state::AppState;

/// Which project a route touches, read from a path parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// None (the handler filters by [`Caller::sees`] where it lists projects).
    None,
    /// A project id.
    Project(&'static str),
    /// A project id or name (sentry-cli's routes).
    ProjectRef(&'static str),
    /// An issue id: its project.
    Issue(&'static str),
    /// An alert rule id: its project.
    Rule(&'static str),
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The scope; `None`: any signed-in caller (their own tokens, sessions, password).
    pub scope: Option<Scope>,
    /// The project it touches, which the caller must see (else 404).
    pub target: Target,
    /// The audit log's action for a successful request, if it is worth one.
    pub audit: Option<&'static str>,
}

impl Need {
    /// Any signed-in caller.
    pub const SELF: Need = Need {
        scope: None,
        target: Target::None,
        audit: None,
    };

    /// A scope, no project.
    pub const fn org(scope: Scope) -> Need {
        Need {
            scope: Some(scope),
            target: Target::None,
            audit: None,
        }
    }

    /// A scope on a project.
    pub const fn on(scope: Scope, target: Target) -> Need {
        Need {
            scope: Some(scope),
            target,
            audit: None,
        }
    }

    /// With an audit action.
    pub const fn audited(mut self, action: &'static str) -> Need {
        self.audit = Some(action);
        self
    }
}

/// One route and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// `GET`, `POST`, ...
    pub method: Method,
    /// The route as written (`/api/0/issues/{id}/`).
    pub path: &'static str,
    /// What it needs.
    pub need: Need,
}

/// The `/api/0/` router being built, with the rule of each route.
#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    rules: Vec<RouteRule>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("rules", &self.rules)
            .finish()
    }
}

/// The methods of one path, each with what it needs: `get(need, handler).put(need,
/// handler)`, given to [`Routes::route`].
#[must_use]
pub struct Methods(Vec<(Method, Need, MethodRouter<AppState>)>);

macro_rules! method {
    ($name:ident, $method:ident, $route:path) => {
        /// Answers this method with `handler`, which needs `need`.
        pub fn $name<H, T>(need: Need, handler: H) -> Methods
        where
            H: Handler<T, AppState>,
            T: 'static,
        {
            Methods(vec![(Method::$method, need, $route(handler))])
        }

        impl Methods {
            /// Also answers this method with `handler`, which needs `need`.
            pub fn $name<H, T>(mut self, need: Need, handler: H) -> Methods
            where
                H: Handler<T, AppState>,
                T: 'static,
            {
                self.0.push((Method::$method, need, $route(handler)));
                self
            }
        }
    };
}

method!(get, GET, axum::routing::get);
method!(post, POST, axum::routing::post);
method!(put, PUT, axum::routing::put);
method!(delete, DELETE, axum::routing::delete);

impl Methods {
    /// Bounds the request bodies of all these methods.
    pub fn limit(self, bytes: usize) -> Methods {
        Methods(
            self.0
                .into_iter()
                .map(|(m, n, r)| (m, n, r.layer(axum::extract::DefaultBodyLimit::max(bytes))))
                .collect(),
        )
    }
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a path's methods, each with what it needs.
    pub fn route(mut self, path: &'static str, methods: Methods) -> Self {
        for (method, need, route) in methods.0 {
            self.rules.push(RouteRule { method, path, need });
            self.router = self.router.route(path, route);
        }
        self
    }

    /// Every route and its rule, in the order added.
    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }

    /// The router, each request checked against its route's rule.
    pub fn finish(self, state: AppState) -> Router<AppState> {
        let mut table: HashMap<(Method, &'static str), Need> = HashMap::new();
        for r in &self.rules {
            let dup = table.insert((r.method.clone(), r.path), r.need);
            assert!(dup.is_none(), "{} {} added twice", r.method, r.path);
        }
        let guard = Guard {
            state,
            table: Arc::new(table),
        };
        self.router
            .route_layer(axum::middleware::from_fn_with_state(guard, check))
    }
}

#[derive(Clone)]
struct Guard {
    state: AppState,
    table: Arc<HashMap<(Method, &'static str), Need>>,
}

/// The client's address as the socket gives it (never a forwarded header).
pub fn client_address(req: &axum::http::Extensions) -> String {
    req.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

async fn project_of(
    state: &AppState,
    target: Target,
    params: &RawPathParams,
) -> Result<Option<i64>, AuthError> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default()
    };
    let id = |name: &str, what: &str| {
        param(name)
            .parse::<i64>()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| AuthError::NotFound(format!("no such {what}")))
    };
    Ok(match target {
        Target::None => None,
        Target::Project(p) => Some(id(p, "project")?),
        Target::ProjectRef(p) => {
            let raw = param(p);
            let all = state.store.list_projects().await?;
            let found = all
                .iter()
                .find(|p| p.id.to_string() == raw)
                .or_else(|| all.iter().find(|p| p.name == raw))
                .ok_or_else(|| {
                    AuthError::NotFound(format!("no project with the id or name `{raw}`"))
                })?;
            Some(found.id)
        }
        Target::Issue(p) => {
            let i = state.store.issue(id(p, "issue")?, 0).await?;
            Some(
                i.ok_or_else(|| AuthError::NotFound("no such issue".into()))?
                    .project_id,
            )
        }
        Target::Rule(p) => {
            let r = state.store.alert_rule(id(p, "alert rule")?).await?;
            Some(
                r.ok_or_else(|| AuthError::NotFound("no such alert rule".into()))?
                    .project_id,
            )
        }
    })
}

/// Who may do this: 401 without a valid token or session; 403 for a cookie-authenticated
/// state-changing request without `X-Errscope-Request: 1`; 404 for a project (or its
/// issue, rule, debug file) the caller is not a member of; 403 naming a missing scope.
async fn authorize(
    g: &Guard,
    method: &Method,
    path: &str,
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
    params: Option<&RawPathParams>,
) -> Result<Option<(Caller, Need)>, AuthError> {
    let m = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    let Some(need) = g.table.get(&(m, path)).copied() else {
        // The path is routed for other methods: let the router answer 405.
        if g.table.keys().any(|(_, p)| *p == path) {
            return Ok(None);
        }
        return Err(AuthError::Internal(format!("{path} has no access rule")));
    };
    let address = client_address(extensions);
    let caller = identify(&g.state, headers, &address)
        .await?
        .ok_or(AuthError::Unauthorized(
            "authentication required: a bearer token or a dashboard session",
        ))?;
    if matches!(caller.via, Via::Session(_))
        && !matches!(*method, Method::GET | Method::HEAD)
        && headers.get("x-errscope-request").map(|v| v.as_bytes()) != Some(b"1")
    {
        return Err(AuthError::Forbidden(
            "requests authenticated by cookie must carry the header X-Errscope-Request: 1".into(),
        ));
    }
    if need.target != Target::None {
        let params = params.ok_or_else(|| AuthError::Internal("no path parameters".into()))?;
        if let Some(pid) = project_of(&g.state, need.target, params).await?
            && !caller.sees(pid)
        {
            let what = match need.target {
                Target::Issue(_) => "no such issue",
                Target::Rule(_) => "no such alert rule",
                _ => "no such project",
            };
            return Err(AuthError::NotFound(what.into()));
        }
    }
    if let Some(scope) = need.scope
        && !caller.scopes.has(scope)
    {
        return Err(AuthError::missing(scope));
    }
    Ok(Some((caller, need)))
}

async fn check(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let Some(path) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    let params = axum::RequestExt::extract_parts::<RawPathParams>(&mut req)
        .await
        .ok();
    let (caller, need) = match authorize(
        &g,
        &method,
        &path,
        req.headers(),
        req.extensions(),
        params.as_ref(),
    )
    .await
    {
        Ok(Some(found)) => found,
        Ok(None) => return next.run(req).await,
        Err(e) => return e.into_response(),
    };
    let target = req.uri().path().to_owned();
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    if let Some(action) = need.audit
        && resp.status().is_success()
    {
        audit(
            &*g.state.store,
            Some(&caller.user.username),
            action,
            &target,
            &caller.address,
            "",
        )
        .await;
    }
    resp
}

/// The client's address (from the socket), as an extractor.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_address(&parts.extensions)))
    }
}
