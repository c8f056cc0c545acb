//! `keel serve --storage ...` as an operator meets it: the real binary, its exit status
//! and its messages, and a memory-backed server naming its backend.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .args(args)
        .env_remove("KEEL_TOKENS")
        .output()
        .expect("keel runs")
}

fn refused_with(args: &[&str]) -> String {
    let out = keel(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn memory_storage_on_a_public_address_exits_2() {
    let stderr = refused_with(&["--storage", "memory", "--listen", "0.0.0.0:0"]);
    assert!(stderr.contains("not durable"), "{stderr}");
}

#[test]
fn unknown_storage_exits_2_naming_the_accepted_forms() {
    let stderr = refused_with(&["--storage", "s3:bucket"]);
    assert!(
        stderr.contains("rocksdb:PATH, fdb[:CLUSTER_FILE] or memory"),
        "{stderr}"
    );
}

#[cfg(not(feature = "fdb"))]
#[test]
fn fdb_storage_without_the_feature_exits_2_with_one_line() {
    let stderr = refused_with(&["--storage", "fdb"]);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features fdb"), "{stderr}");
    assert!(stderr.contains("libfdb_c"), "{stderr}");
}

/// Kills the server it holds when the test ends, however it ends.
pub(crate) struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    reply
}

/// Starts `keel serve ARGS --listen 127.0.0.1:0` and returns it, its port, and its log
/// lines before the listening one.
pub(crate) fn serve(args: &[&str]) -> (Running, u16, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("KEEL_TOKENS")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("keel starts");
    let stderr = child.stderr.take().expect("stderr");
    let server = Running(child);
    // Log lines until the listening one, read on a thread so the wait has a deadline.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let port = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no listening line; log so far: {log:#?}"));
        if line.contains("keel listening") {
            let after = &line[line.find("127.0.0.1:").expect("address in line") + 10..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse::<u16>().expect("port");
        }
        log.push(line);
    };
    (server, port, log)
}

#[test]
fn memory_storage_warns_and_names_its_backend() {
    let (_server, port, log) = serve(&["--storage", "memory"]);
    assert!(
        log.iter().any(|l| l.contains("NOT DURABLE")),
        "no durability warning in {log:#?}"
    );
    let ready = get(port, "/api/ready");
    assert!(ready.contains(r#""backend":"memory""#), "{ready}");
    assert!(ready.contains(r#""durable":false"#), "{ready}");
    let info = get(port, "/api/cluster/info");
    assert!(
        info.contains(r#""storage":{"backend":"memory","durable":false,"multi_node":false}"#),
        "{info}"
    );
    let metrics = get(port, "/metrics");
    assert!(
        metrics.contains(
            r#"keel_storage_backend_info{backend="memory",durable="false",multi_node="false"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn rocksdb_metrics_report_its_memory_within_the_configured_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("rocksdb:{}", dir.path().join("store").display());
    let (_server, port, _log) = serve(&["--storage", &storage, "--rocksdb-cache-mb", "8"]);
    let metrics = get(port, "/metrics");
    assert!(
        metrics.contains("keel_storage_block_cache_capacity_bytes 8388608"),
        "{metrics}"
    );
    for kind in ["memtables", "table_readers", "block_cache"] {
        assert!(
            metrics.contains(&format!("keel_storage_memory_bytes{{kind=\"{kind}\"}} ")),
            "no {kind} in {metrics}"
        );
    }
}
