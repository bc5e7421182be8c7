//! The web thread view served at `/`: three static files compiled into the binary (no build
//! step, nothing fetched at run time). The page talks to the same `/api` endpoints as every
//! other client.
//!
//! Access: the files themselves carry no data, so they are served without a token; every API
//! call the page makes still goes through the router's token check. Over TCP the page asks for a
//! token once (pasted, or given in the URL fragment `#token=…`, which browsers never send to a
//! server), keeps it in the browser's `localStorage` for this origin, and sends it only as an
//! `Authorization: Bearer` header, so it never appears in a URL the server sees or logs.
//!
//! Every response forbids framing, sniffing and referrers, and its content security policy lets
//! the page load and contact nothing but this origin.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// The paths of the page's files, each with its content type and body.
const FILES: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    ("/app.js", "text/javascript; charset=utf-8", APP_JS),
    ("/style.css", "text/css; charset=utf-8", STYLE_CSS),
];

/// Only this origin's scripts, styles and connections; no plugins, frames or form posts.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // Revalidated on every load, so a new binary's page is picked up at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, body).into_response()
}

/// The page's routes. They are merged after the API's token check is layered on, so they are
/// reachable without a token (they serve only these constant files).
pub fn router() -> Router {
    FILES
        .into_iter()
        .fold(Router::new(), |router, (path, content_type, body)| {
            router.route(path, get(move || async move { file(content_type, body) }))
        })
}
