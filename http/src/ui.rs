//! The web console at `/ui`: one HTML shell, one script and one stylesheet, compiled
//! into the binary (no CDN, works offline). The console is a hash-routed single page
//! that calls the same `/api/...` routes as the CLI, with the caller's own token, so it
//! can do nothing the API would not let that token do; the assets themselves are served
//! without a token (they hold no data).
//!
//! Every answer under `/ui` carries a strict Content-Security-Policy (scripts and styles
//! from this origin only, no inline code, no framing, no form posts) and
//! `X-Content-Type-Options: nosniff`. Paths under `/ui/` that look like an asset (a
//! dot in the last segment) and are not one get a 404 naming the reason; any other path
//! gets the shell, so a reloaded deep link still opens the console. GET and HEAD only.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

/// The policy on every `/ui` answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

const SHELL: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// The console's assets: path under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", SHELL),
    ("app.js", "text/javascript; charset=utf-8", SCRIPT),
    ("app.css", "text/css; charset=utf-8", STYLE),
];

/// Whether `path` is the console's (`/ui` or under `/ui/`).
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The answer to `method path` for a console path (see [`is_ui_path`]).
pub fn respond(method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the console serves GET and HEAD only",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let rest = path.strip_prefix("/ui").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == rest) {
        return reply(
            StatusCode::OK,
            content_type,
            Bytes::from_static(body.as_bytes()),
        );
    }
    let last = rest.rsplit('/').next().unwrap_or("");
    if last.contains('.') {
        return error(
            StatusCode::NOT_FOUND,
            "ui_asset_not_found",
            "the console has no such asset (it serves /ui/index.html, /ui/app.js and /ui/app.css)",
        );
    }
    reply(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(SHELL.as_bytes()),
    )
}

fn error(status: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"reason": reason, "message": message});
    reply(
        status,
        "application/json",
        Bytes::from(body.to_string().into_bytes()),
    )
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // A new binary's console is picked up on the next load.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::{respond, Method, StatusCode, ALLOW, CONTENT_TYPE, SCRIPT, SHELL};

    #[test]
    fn the_shell_loads_only_its_own_assets() {
        assert!(SHELL.contains("src=\"/ui/app.js\""));
        assert!(SHELL.contains("href=\"/ui/app.css\""));
        assert!(
            !SHELL.contains("<script>"),
            "no inline script (CSP forbids it)"
        );
        assert!(
            !SHELL.contains("style="),
            "no inline style (CSP forbids it)"
        );
    }

    #[test]
    fn the_script_never_writes_markup() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(forbidden), "app.js uses {forbidden}");
        }
    }

    #[test]
    fn asset_like_paths_that_are_no_asset_are_404_and_other_paths_get_the_shell() {
        let missing = respond(&Method::GET, "/ui/missing.js");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let deep = respond(&Method::GET, "/ui/workflows/abc");
        assert_eq!(deep.status(), StatusCode::OK);
        assert_eq!(deep.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let post = respond(&Method::POST, "/ui");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        assert!(post.headers().contains_key("content-security-policy"));
    }
}
