//! `keel storage export` / `keel storage import` on the real binary: a RocksDB data
//! directory a real `keel serve` wrote (then stopped) is exported, imported into a fresh
//! directory (and into a memory store, read back through the engine), and a `keel serve`
//! there answers with the same workflows; a truncated file,
//! another schema version, a target that holds the namespace and an unfinished import
//! are refused with their own exit statuses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use std::sync::Arc;

use keel_engine::clock::{Clock, SystemClock};
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::KvStore;
use keel_engine::tables;
use keel_engine::transfer::{self, IMPORT_MARKER_KEY};
use keel_engine::{Engine, EngineConfig};
use keel_storage_rocksdb::{RocksOptions, RocksStore};
use serde_json::{json, Value};

use crate::process;

/// Stops (SIGTERM, then waits) the server it holds when dropped.
struct Running {
    server: process::Running,
    port: u16,
}

impl Running {
    fn start(dir: &Path) -> Running {
        let (server, log) = process::spawn([
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
        ]);
        let (port, _) = process::listening_port(&log);
        Running { server, port }
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.server.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
    }

    /// A control-plane request in namespace `default`: (status, body).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             X-Durable-Workflow-Control-Plane-Version: 2\r\nX-Namespace: default\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("request");
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).expect("reply");
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let (_, body) = reply.split_once("\r\n\r\n").expect("head and body");
        // Connection: close replies come whole; a chunked one is unwrapped by its JSON.
        let start = body.find(['{', '[']).unwrap_or(0);
        let end = body.rfind(['}', ']']).map_or(body.len(), |i| i + 1);
        let json = serde_json::from_str(&body[start..end]).unwrap_or(Value::Null);
        (status, json)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.server.0.try_wait() {
            self.terminate();
        }
    }
}

fn keel(args: &[&str], dirs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["storage"]).args(args).env_remove("KEEL_TOKENS");
    for (flag, path) in dirs {
        cmd.arg(flag).arg(path);
    }
    cmd.output().expect("keel runs")
}

fn export(source: &Path, file: &Path) -> Output {
    keel(&["export"], &[("--data-dir", source), ("--output", file)])
}

fn import(target: &Path, file: &Path) -> Output {
    keel(&["import"], &[("--data-dir", target), ("--input", file)])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What the API shows of the workflows: each one's description and the list.
fn picture(server: &Running, ids: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        let (status, body) = server.call("GET", &format!("/api/workflows/{id}"), None);
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["workflow_id"], *id, "{body}");
        out.push(body);
    }
    let (status, list) = server.call("GET", "/api/workflows?page_size=50", None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list.to_string().matches("\"workflow_id\"").count(),
        ids.len(),
        "{list}"
    );
    out.push(list);
    out
}

/// A data directory a real server wrote three workflows into (one terminated), and
/// what the API showed of them before it stopped.
fn served_store(dir: &Path) -> Vec<Value> {
    let server = Running::start(dir);
    for id in ["alpha", "beta", "gamma"] {
        let (status, body) = server.call(
            "POST",
            "/api/workflows",
            Some(
                &json!({"workflow_id": id, "workflow_type": "wf", "task_queue": "q",
                         "input": {"codec": "avro", "blob": "AA=="}}),
            ),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = server.call(
        "POST",
        "/api/workflows/gamma/terminate",
        Some(&json!({"reason": "test"})),
    );
    assert!(status < 300, "{status} {body}");
    let seen = picture(&server, &["alpha", "beta", "gamma"]);
    server.stop();
    seen
}

#[test]
fn a_served_rocksdb_store_exported_and_imported_into_a_fresh_dir_serves_the_same_workflows() {
    let root = tempfile::tempdir().expect("tempdir");
    let (source, target, file) = (
        root.path().join("source"),
        root.path().join("target"),
        root.path().join("default.keel-export"),
    );
    let before = served_store(&source);

    let out = export(&source, &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("exported"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).expect("file");
    let header: Value = serde_json::from_str(text.lines().next().expect("header")).expect("json");
    assert_eq!(header["format"], "keel-export");
    assert_eq!(header["scope"], "store");
    assert_eq!(header["namespaces"], json!(["default"]));

    let out = import(&target, &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("imported"), "{}", stderr(&out));

    // The same file into a memory store, read back through the engine.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bytes = std::fs::read(&file).expect("file");
        let memory = Arc::new(MemoryStore::new());
        let verified = transfer::verify(&mut bytes.as_slice()).expect("verify");
        transfer::import(memory.as_ref(), &mut bytes.as_slice(), &verified)
            .await
            .expect("import");
        let engine = Engine::open(
            memory as Arc<dyn KvStore>,
            Arc::new(SystemClock) as Arc<dyn Clock>,
            EngineConfig::default(),
        )
        .await
        .expect("engine");
        for (id, shown) in ["alpha", "beta", "gamma"].iter().zip(&before) {
            let view = engine
                .describe("default", id, None)
                .await
                .expect("describe");
            assert_eq!(view.run.run_id, shown["run_id"].as_str().expect("run_id"));
        }
        engine.stop().await;
    });

    let server = Running::start(&target);
    let after = picture(&server, &["alpha", "beta", "gamma"]);
    assert_eq!(after, before);
    server.stop();

    // A second import into the (now served) target is refused: it holds `default`.
    let out = import(&target, &file);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already holds namespace 'default'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn damaged_files_other_schema_versions_and_unfinished_imports_are_refused_by_exit_status() {
    let root = tempfile::tempdir().expect("tempdir");
    let source = root.path().join("source");
    served_store(&source);
    let file = root.path().join("ns.keel-export");
    let out = keel(
        &["export", "--namespace", "default"],
        &[("--data-dir", &source), ("--output", &file)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).expect("file");

    // Truncated: the trailer is gone. Exit 4, and the target is left untouched.
    let truncated = root.path().join("truncated");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(&truncated, lines.join("\n") + "\n").expect("write");
    let fresh = root.path().join("fresh-1");
    let out = import(&fresh, &truncated);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert!(
        !fresh.exists(),
        "the target is not created for a refused file"
    );

    // Another schema version in the header. Exit 3.
    let (head, rest) = text.split_once('\n').expect("header");
    let mut header: Value = serde_json::from_str(head).expect("json");
    header["schema_version"] = json!(999);
    let newer = root.path().join("newer");
    std::fs::write(&newer, format!("{header}\n{rest}")).expect("write");
    let out = import(&root.path().join("fresh-2"), &newer);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("schema version 999"),
        "{}",
        stderr(&out)
    );

    // The source itself holds the namespace. Exit 5.
    let out = import(&source, &file);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));

    // A namespace the source lacks. Exit 1, naming it.
    let out = keel(
        &["export", "--namespace", "nope"],
        &[
            ("--data-dir", &source),
            ("--output", &root.path().join("x")),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("'nope'"), "{}", stderr(&out));

    // An import that stopped part way keeps its marker: the server will not start on it,
    // and running the import again finishes it.
    let target = root.path().join("target");
    let out = import(&target, &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let store = RocksStore::open(&target, RocksOptions::default()).expect("open");
            let mut txn = store.begin().await.expect("txn");
            tables::put(
                txn.as_mut(),
                &tables::meta_key(IMPORT_MARKER_KEY),
                &json!({"sha256": "0", "namespaces": ["default"], "source": "elsewhere"}),
            )
            .expect("put");
            txn.commit().await.expect("commit");
            store.shutdown().await.expect("shutdown");
        });
    }
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&target)
        .env_remove("KEEL_TOKENS")
        .output()
        .expect("keel runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unfinished"), "{}", stderr(&out));
    let out = keel(&["check", "--output", "json"], &[("--data-dir", &target)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["unfinished_import"]["source"], "elsewhere",
        "{report}"
    );
    // The marker is another file's: this file's import is refused until that one ends.
    let out = import(&target, &file);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unfinished import"),
        "{}",
        stderr(&out)
    );
}
