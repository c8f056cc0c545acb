//! The outbound side of `invocable_http` bindings: the operator's host allow-list and a
//! deliberately small HTTP/1.1 client (plain `http://` only, one request per connection,
//! `Connection: close`), so the engine pulls in no HTTP or TLS stack.
//!
//! The allow-list holds `HOST` (any port) or `HOST:PORT` entries (`[v6]:PORT` for IPv6),
//! compared case-insensitively with the URL's host as written: a name is not resolved
//! to match an address entry, nor the reverse (`localhost` and `127.0.0.1` are two
//! entries). An empty list allows nothing.

use std::time::Duration;

#[cfg(not(loom))]
use tokio::io::{AsyncReadExt, AsyncWriteExt};
#[cfg(not(loom))]
use tokio::net::TcpStream;

/// Largest response body kept (a bigger one fails the attempt).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Longest request timeout an operation may ask for.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// An `http://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The host as written (brackets dropped for IPv6), lowercase.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as sent in the `Host` header.
    pub authority: String,
    /// Path and query (`/` when empty).
    pub path: String,
}

/// Parses a binding's URL: `http://host[:port][/path][?query]`. Refuses other schemes
/// (`https` included: Keel's client speaks plain HTTP), user info and fragments.
pub fn parse_http_url(url: &str) -> Result<HttpTarget, String> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "scheme '{scheme}' is not supported: Keel calls plain http:// endpoints only"
            ))
        }
        None => return Err("expected an absolute http:// URL".into()),
    };
    if url.contains('#') {
        return Err("a URL fragment is not allowed".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL contains whitespace or control characters".into());
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not allowed".into());
    }
    let (host, port) = split_host_port(authority)?;
    let port = port.unwrap_or(80);
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(HttpTarget {
        authority: authority.to_ascii_lowercase(),
        host,
        port,
        path,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (lowercase host without brackets, port).
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let bad = || format!("'{s}' is not HOST or HOST:PORT");
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad()),
            None => (s, None),
        }
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !valid_host {
        return Err(bad());
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("'{p}' is not a port"))?,
        ),
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Checks one allow-list entry (`HOST` or `HOST:PORT`); the `--service-http-allow` flag
/// refuses what this refuses.
pub fn parse_allow_entry(entry: &str) -> Result<(String, Option<u16>), String> {
    split_host_port(entry.trim())
}

/// Whether the allow-list lets a binding call `target`.
pub fn host_allowed(allow: &[String], target: &HttpTarget) -> bool {
    allow.iter().any(|entry| match parse_allow_entry(entry) {
        Ok((host, port)) => host == target.host && port.is_none_or(|p| p == target.port),
        Err(_) => false,
    })
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Sends one request and reads the whole response, all within `timeout`. `Err` names
/// what went wrong (connect, I/O, timeout, a malformed or oversized response) without
/// quoting any body.
pub async fn send(
    target: &HttpTarget,
    method: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    match tokio::time::timeout(timeout, exchange(target, method, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no response within {} ms", timeout.as_millis())),
    }
}

/// Under `cfg(loom)` (the matching core's model checks) tokio has no network module, and
/// no model sends service calls: every exchange fails.
#[cfg(loom)]
async fn exchange(
    _: &HttpTarget,
    _: &str,
    _: &[(String, String)],
    _: &[u8],
) -> Result<HttpResponse, String> {
    Err("no network in a loom build".into())
}

#[cfg(not(loom))]
async fn exchange(
    target: &HttpTarget,
    method: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        target.path,
        target.authority,
        body.len()
    );
    for (k, v) in headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| format!("request to {} failed: {e}", target.authority);
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let cap = MAX_RESPONSE_BYTES + 64 * 1024;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > cap {
            return Err(format!(
                "the response is larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        // A complete Content-Length response needs no wait for the server's close.
        if let Some(done) = complete_len(&raw) {
            raw.truncate(done);
            break;
        }
    }
    parse_response(&raw)
}

/// The byte length of a complete response with a Content-Length, once all of it is in.
#[cfg_attr(loom, allow(dead_code))] // only the real exchange reads responses
fn complete_len(raw: &[u8]) -> Option<usize> {
    let end = find(raw, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    })?;
    (raw.len() >= end + len).then_some(end + len)
}

#[cfg_attr(loom, allow(dead_code))] // only the real exchange reads responses
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg_attr(loom, allow(dead_code))] // only the real exchange reads responses
fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let malformed = |why: &str| format!("malformed HTTP response: {why}");
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| malformed("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(malformed("no HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| malformed("no status code"))?;
    let mut content_type = None;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.to_ascii_lowercase());
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| malformed("bad Content-Length"))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| malformed("bad chunked body"))?
    } else if let Some(len) = length {
        if rest.len() < len {
            return Err(malformed("the body is shorter than its Content-Length"));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(format!(
            "the response is larger than {MAX_RESPONSE_BYTES} bytes"
        ));
    }
    Ok(HttpResponse {
        status,
        content_type,
        body,
    })
}

#[cfg_attr(loom, allow(dead_code))] // only the real exchange reads responses
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if rest.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::{host_allowed, parse_allow_entry, parse_http_url, parse_response};

    #[test]
    fn urls_parse_into_host_port_and_path() {
        let t = parse_http_url("http://127.0.0.1:8089/charge?x=1").expect("parses");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8089, "/charge?x=1")
        );
        let t = parse_http_url("HTTP://Example.COM").expect("parses");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("example.com", 80, "/")
        );
        let t = parse_http_url("http://[::1]:9000/x").expect("parses");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        for bad in [
            "https://a.example/x",
            "a.example/x",
            "http://user:pw@a.example/",
            "http://a.example:0/",
            "http://a.example:x/",
            "http:///x",
            "http://a.example/#f",
            "http://a b/",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad} refused");
        }
    }

    #[test]
    fn the_allow_list_matches_host_and_optional_port() {
        let t = parse_http_url("http://127.0.0.1:8089/").expect("parses");
        assert!(host_allowed(&["127.0.0.1".into()], &t));
        assert!(host_allowed(&["127.0.0.1:8089".into()], &t));
        assert!(!host_allowed(&["127.0.0.1:8090".into()], &t));
        assert!(!host_allowed(&["localhost".into()], &t));
        assert!(!host_allowed(&[], &t));
        let v6 = parse_http_url("http://[::1]:7/").expect("parses");
        assert!(host_allowed(&["[::1]:7".into()], &v6));
        assert!(parse_allow_entry("a.example:99999").is_err());
        assert!(parse_allow_entry("").is_err());
    }

    #[test]
    fn responses_parse_with_length_chunked_or_until_close() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            .expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .expect("parses");
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.0 503 Busy\r\n\r\nlater").expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"later"[..]));
        assert!(parse_response(b"garbage").is_err());
    }
}
