//! The web console at `/ui` (`keel_http::ui`): its assets under a strict
//! Content-Security-Policy, served without a token while the API keeps every check, and
//! no route at all when switched off.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{expect, expect_status, send, start, start_configured, CONTROL};
use keel_engine::storage::memory::MemoryStore;
use keel_http::{AuthConfig, ConnectionLimits, Server};
use tokio::net::TcpListener;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' \
data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn secured(r: &common::Resp, path: &str) {
    assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{path}"
    );
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_csp_nosniff_and_its_content_types() {
    let server = start("", None).await;
    for (path, content_type) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/workflows/some-id", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let r = send(server.addr, "GET", path, &[], None).await;
        expect_status(&r, 200);
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        secured(&r, path);
    }
    let shell = send(server.addr, "GET", "/ui", &[], None).await;
    assert!(shell.text.contains("<script src=\"/ui/app.js\""));

    let head = send(server.addr, "HEAD", "/ui/app.js", &[], None).await;
    expect_status(&head, 200);
    assert!(head.text.is_empty(), "HEAD has no body");
    secured(&head, "HEAD /ui/app.js");

    let missing = send(server.addr, "GET", "/ui/vendor.min.js", &[], None).await;
    expect(&missing, 404, "ui_asset_not_found");
    secured(&missing, "/ui/vendor.min.js");

    let post = send(server.addr, "POST", "/ui/", &[], None).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    secured(&post, "POST /ui/");
}

#[tokio::test]
async fn with_tokens_the_assets_need_none_and_the_api_keeps_requiring_one() {
    let server = start("operator:op-token,worker:wk-token", None).await;
    let shell = send(server.addr, "GET", "/ui", &[], None).await;
    expect_status(&shell, 200);
    secured(&shell, "/ui");

    // The console calls the API like any client: no token, a wrong one or a role without
    // the right are refused as before.
    let none = send(server.addr, "GET", "/api/workflows", &[CONTROL], None).await;
    assert_eq!(none.status, 401);
    let wrong = [CONTROL, ("Authorization", "Bearer nope")];
    assert_eq!(
        send(server.addr, "GET", "/api/workflows", &wrong, None)
            .await
            .status,
        401
    );
    let worker = [CONTROL, ("Authorization", "Bearer wk-token")];
    assert_eq!(
        send(server.addr, "GET", "/api/workflows", &worker, None)
            .await
            .status,
        403
    );
    let operator = [CONTROL, ("Authorization", "Bearer op-token")];
    expect_status(
        &send(server.addr, "GET", "/api/workflows", &operator, None).await,
        200,
    );
    // A token sent to the console's paths changes nothing there.
    let with_token = send(server.addr, "GET", "/ui/app.js", &operator, None).await;
    expect_status(&with_token, 200);
}

#[tokio::test]
async fn switched_off_the_console_is_no_route() {
    let server = start_configured(AuthConfig::open(), ConnectionLimits::default(), |s| {
        s.with_ui(false)
    })
    .await;
    for path in ["/ui", "/ui/", "/ui/app.js"] {
        let r = send(server.addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.header("content-security-policy").is_none(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builders_off_switch_turns_the_console_off() {
    for (on, status) in [(true, 200), (false, 404)] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(
            Server::builder()
                .store(Arc::new(MemoryStore::new()))
                .listener(listener)
                .ui(on)
                .shutdown_signal(stop_rx)
                .drain_timeout(Duration::from_secs(1))
                .serve(),
        );
        let r = send(addr, "GET", "/ui", &[], None).await;
        assert_eq!(r.status, status, "ui({on})");
        stop.send(true).expect("stop");
        server.await.expect("joins").expect("serves and stops");
    }
}
