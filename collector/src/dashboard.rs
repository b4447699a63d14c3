//! The dashboard: files of `dashboard/static/` embedded in the binary (read from disk in
//! debug builds, so the page can change without a rebuild).

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;
use serde_json::json;

#[derive(RustEmbed)]
#[folder = "../dashboard/static/"]
struct Assets;

/// The Content-Security-Policy of every HTML response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file(path: &str) -> Option<Response> {
    let f = Assets::get(path)?;
    let ct = content_type(path);
    let mut resp = Response::new(Body::from(f.data.into_owned()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if ct.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    Some(resp)
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({ "detail": what }))).into_response()
}

fn index() -> Response {
    file("index.html")
        .unwrap_or_else(|| not_found("the dashboard is not built into this collector"))
}

/// `GET /assets/{*path}`.
pub async fn asset(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches("/assets/");
    if path.split('/').any(|seg| seg == ".." || seg.is_empty()) {
        return not_found("no such asset");
    }
    file(path).unwrap_or_else(|| not_found("no such asset"))
}

/// Everything no route matched: the dashboard's index for client-side routes (GET),
/// a JSON 404 under `/api/`, `/auth/` and for other methods.
pub async fn fallback(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let reserved = ["/api/", "/auth/", "/assets/"]
        .iter()
        .any(|p| path.starts_with(p))
        || ["/api", "/auth", "/healthz", "/metrics"].contains(&path);
    if reserved || !matches!(method, Method::GET | Method::HEAD) {
        return not_found("no such route");
    }
    index()
}

/// `GET /`.
pub async fn root() -> Response {
    index()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn assets_do_not_escape_the_folder() {
        for path in [
            "/assets/../Cargo.toml",
            "/assets/../../collector/Cargo.toml",
            "/assets//etc/passwd",
        ] {
            let r = asset(Uri::from_static(path)).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(
            asset(Uri::from_static("/assets/index.html")).await.status(),
            StatusCode::OK
        );
        assert_eq!(content_type("a/b.js"), "text/javascript; charset=utf-8");
    }
}
