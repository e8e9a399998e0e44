//! The push-to-talk page (web/live/), compiled into the binary: the bridge serves
//! it without files on disk and the page loads nothing from anywhere else.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../web/live/index.html");

/// Every asset besides the page: name, content type, bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/live/app.js"),
    ),
    (
        "capture-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/live/capture-worklet.js"),
    ),
    (
        "playback-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/live/playback-worklet.js"),
    ),
    (
        "scheduler.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/live/scheduler.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/live/style.css"),
    ),
];

/// Scripts and styles only from the bridge; connections anywhere, because the
/// page talks to whichever homeserver the user names (and to this bridge's
/// WebSocket).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src * ws: wss:; worker-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn index() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        INDEX,
    )
        .into_response()
}

pub async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
