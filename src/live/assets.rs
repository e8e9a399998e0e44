//! The push-to-talk page (web/live/), compiled into the binary: the bridge serves
//! it without files on disk and the page loads nothing from anywhere else.
//!
//! It is installable (manifest, icons) and works offline through its service
//! worker, sw.js, which the bridge hands out with the list of the page's files and
//! a hash of their contents filled in (see [`service_worker`]).

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../web/live/index.html");
const SERVICE_WORKER: &str = include_str!("../../web/live/sw.js");

const JS: &str = "text/javascript; charset=utf-8";

/// Every asset besides the page and the service worker: name, content type, bytes.
/// The service worker keeps each of them (and the page) for offline starts.
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../../web/live/app.js")),
    ("device.js", JS, include_bytes!("../../web/live/device.js")),
    (
        "capture-worklet.js",
        JS,
        include_bytes!("../../web/live/capture-worklet.js"),
    ),
    (
        "playback-worklet.js",
        JS,
        include_bytes!("../../web/live/playback-worklet.js"),
    ),
    (
        "scheduler.js",
        JS,
        include_bytes!("../../web/live/scheduler.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/live/style.css"),
    ),
    (
        "manifest.webmanifest",
        "application/manifest+json",
        include_bytes!("../../web/live/manifest.webmanifest"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../web/live/icon.svg"),
    ),
    (
        "icon-192.png",
        "image/png",
        include_bytes!("../../web/live/icon-192.png"),
    ),
    (
        "icon-512.png",
        "image/png",
        include_bytes!("../../web/live/icon-512.png"),
    ),
    (
        "icon-maskable-512.png",
        "image/png",
        include_bytes!("../../web/live/icon-maskable-512.png"),
    ),
];

/// Scripts and styles only from the bridge; connections anywhere, because the
/// page talks to whichever homeserver the user names (and to this bridge's
/// WebSocket). The manifest, the icons and the service worker fall under
/// `default-src 'self'` / `worker-src 'self'`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src * ws: wss:; worker-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// For an image opened on its own (an SVG is a document that could carry script):
/// nothing runs, nothing loads. Not for sw.js: a service worker's policy comes from
/// its own response, and it must fetch.
const IMAGE_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// 64-bit FNV-1a, in const so the version below is computed by the compiler.
const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Changes whenever any file of the page changes (the service worker's own text
/// included), which is what makes browsers install the new service worker.
const ASSETS_VERSION: u64 = {
    let mut hash = fnv1a(0xcbf2_9ce4_8422_2325, INDEX.as_bytes());
    hash = fnv1a(hash, SERVICE_WORKER.as_bytes());
    let mut i = 0;
    while i < FILES.len() {
        hash = fnv1a(hash, FILES[i].0.as_bytes());
        hash = fnv1a(hash, FILES[i].2);
        i += 1;
    }
    hash
};

/// sw.js with the version and the list of files filled in, so the list cannot
/// drift from [`FILES`] and a new bridge's page replaces the cached one.
pub fn service_worker() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        let files = std::iter::once("./")
            .chain(FILES.iter().map(|(name, _, _)| *name))
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ");
        SERVICE_WORKER
            .replacen("'@WALKIE_PAGE_FILES@'", &files, 1)
            .replacen(
                "@WALKIE_ASSETS_VERSION@",
                &format!("{ASSETS_VERSION:016x}"),
                1,
            )
    });
    &TEXT
}

fn headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 3] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // Always revalidated: a new bridge's page is used at the next load (the
        // service worker keeps its own copies for when the bridge is away).
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ]
}

pub async fn index() -> Response {
    (
        headers("text/html; charset=utf-8"),
        [(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        )],
        INDEX,
    )
        .into_response()
}

pub async fn file(Path(name): Path<String>) -> Response {
    if name == "sw.js" {
        // Scope: /live/, the script's own folder, so no Service-Worker-Allowed.
        return (headers(JS), service_worker()).into_response();
    }
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) if content_type.starts_with("image/") => (
            headers(content_type),
            [(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(IMAGE_CSP),
            )],
            *body,
        )
            .into_response(),
        // Scripts get no policy of their own: worklets and modules run under the
        // page's.
        Some((_, content_type, body)) => (headers(content_type), *body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn get(name: &str) -> Response {
        file(Path(name.to_owned())).await
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn each_file_has_its_content_type() {
        for (name, want) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("device.js", "text/javascript; charset=utf-8"),
            ("sw.js", "text/javascript; charset=utf-8"),
            ("manifest.webmanifest", "application/manifest+json"),
            ("icon.svg", "image/svg+xml"),
            ("icon-192.png", "image/png"),
            ("icon-512.png", "image/png"),
            ("icon-maskable-512.png", "image/png"),
        ] {
            let response = get(name).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), want, "{name}");
            assert_eq!(
                header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
                "nosniff"
            );
        }
        assert_eq!(get("nope.js").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_service_worker_lists_every_file_of_the_page() {
        let response = get("sw.js").await;
        let text = String::from_utf8(
            to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body")
                .to_vec(),
        )
        .expect("UTF-8");
        assert!(!text.contains("@WALKIE_"), "a placeholder is left: {text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("const FILES = ["))
            .expect("the FILES line");
        assert!(line.contains("'./'"), "{line}");
        for (name, _, _) in FILES {
            assert!(line.contains(&format!("'{name}'")), "{name} not in {line}");
        }
        let version = format!("const VERSION = '{ASSETS_VERSION:016x}';");
        assert!(text.contains(&version), "no {version}");
    }

    #[test]
    fn the_version_follows_the_contents() {
        let base = fnv1a(0xcbf2_9ce4_8422_2325, b"app.js");
        assert_ne!(base, fnv1a(0xcbf2_9ce4_8422_2325, b"app.jt"));
        // The FNV-1a test vector for "a".
        assert_eq!(fnv1a(0xcbf2_9ce4_8422_2325, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[tokio::test]
    async fn the_page_links_the_manifest_under_a_strict_policy() {
        let response = index().await;
        let csp = header_of(&response, header::CONTENT_SECURITY_POLICY).to_owned();
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-"), "{csp}");
        assert!(INDEX.contains(r#"<link rel="manifest" href="manifest.webmanifest">"#));
        let manifest: serde_json::Value = serde_json::from_slice(
            FILES
                .iter()
                .find(|(name, _, _)| *name == "manifest.webmanifest")
                .expect("manifest")
                .2,
        )
        .expect("the manifest is JSON");
        for icon in manifest["icons"].as_array().expect("icons") {
            let src = icon["src"].as_str().expect("src");
            assert!(
                FILES.iter().any(|(name, _, _)| *name == src),
                "the manifest names {src}, which the bridge does not serve"
            );
        }
    }
}
