//! Token rotation as an operator does it, on the real binary: tokens reload on SIGHUP
//! and on an edit of the auth file, old and new overlap while both are listed, hashed
//! tokens work, a malformed file is refused with a log line and the old set stays, and
//! no secret ever reaches the log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::process;

const OLD: &str = "old-secret-4f1c9a";
const NEW: &str = "new-secret-8b2d7e";
const DEADLINE: Duration = Duration::from_secs(20);

/// The status of an authenticated control-plane read with `token`.
fn status_with(port: u16, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    let headers = [
        ("X-Durable-Workflow-Control-Plane-Version", "2"),
        ("Authorization", bearer.as_str()),
    ];
    process::get_with(port, "/api/cluster/info", &headers)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Log lines read so far, and the next ones as they come.
struct Log {
    lines: Vec<String>,
    rx: Receiver<String>,
}

impl Log {
    fn wait_for_line(&mut self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.lines.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(_) => panic!("no log line with {needle:?}; log: {:#?}", self.lines),
            }
        }
    }

    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.rx.try_recv() {
            self.lines.push(line);
        }
        &self.lines
    }
}

fn write_tokens(path: &Path, body: &str) {
    // Written whole under another name, then renamed: the server never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("write auth file");
    std::fs::rename(&tmp, path).expect("rename auth file");
}

fn hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn tokens_rotate_on_sighup_and_file_change_and_a_bad_file_keeps_the_old_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth.toml");
    let plain = |name: &str, token: &str| {
        format!("[[tokens]]\nname = \"{name}\"\nrole = \"admin\"\ntoken = \"{token}\"\n")
    };
    write_tokens(&file, &plain("old", OLD));
    let (server, rx) = process::spawn([
        "--storage".as_ref(),
        "memory".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--auth-file".as_ref(),
        file.as_os_str(),
    ]);
    let mut log = Log {
        lines: Vec::new(),
        rx,
    };
    let port = process::port_in(&log.wait_for_line("keel listening"));
    assert_eq!(status_with(port, OLD), 200);
    assert_eq!(status_with(port, NEW), 401);

    // Rotation, step 1: both listed, signalled with SIGHUP; both work (the overlap).
    write_tokens(&file, &(plain("old", OLD) + &plain("new", NEW)));
    hangup(&server.0);
    let reloaded = log.wait_for_line("sighup");
    assert!(reloaded.contains("tokens reloaded"), "{reloaded}");
    wait_for("the new token to be accepted", || {
        status_with(port, NEW) == 200
    });
    assert_eq!(
        status_with(port, OLD),
        200,
        "the old token works during the overlap"
    );

    // Step 2: only the new token, given as its SHA-256 digest; the edit alone reloads.
    let digest: String = Sha256::digest(NEW.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_tokens(
        &file,
        &format!("[[tokens]]\nname = \"new\"\nrole = \"admin\"\ntoken_sha256 = \"{digest}\"\n"),
    );
    wait_for("the old token to be refused", || {
        status_with(port, OLD) == 401
    });
    assert_eq!(status_with(port, NEW), 200, "the hashed token is accepted");

    // A malformed file (with a secret in the broken line) is refused; the set stays.
    write_tokens(
        &file,
        &format!("[[tokens]]\nrole = \"admin\"\ntoken = \"{OLD}\" oops\n"),
    );
    hangup(&server.0);
    let refused = log.wait_for_line("token reload refused");
    assert!(refused.contains("line 3"), "{refused}");
    assert_eq!(
        status_with(port, NEW),
        200,
        "the previous set stays in force"
    );
    assert_eq!(status_with(port, OLD), 401);

    // An empty set would open the server: refused too.
    write_tokens(&file, "tokens = []\n");
    hangup(&server.0);
    let refused = log.wait_for_line("refusing to open an authenticated server");
    assert!(refused.contains("token reload refused"), "{refused}");
    assert_eq!(
        status_with(port, NEW),
        200,
        "the server stays authenticated"
    );
    assert_eq!(status_with(port, OLD), 401);

    for line in log.drain() {
        assert!(
            !line.contains(OLD) && !line.contains(NEW),
            "a secret reached the log: {line}"
        );
    }

    // Every reload is in the audit trail's system scope: applied ones with the token
    // counts, refused ones with `reload_refused`; never a secret.
    let mut trail = String::new();
    wait_for("the reloads in the audit trail", || {
        trail = get_with(port, NEW, "/api/v2/admin/audit?scope=system&limit=200");
        trail.matches("\"token_reload\"").count() >= 2 * 4
    });
    assert!(trail.contains("\"reload_refused\""), "{trail}");
    assert!(trail.contains("\"by_role\""), "{trail}");
    assert!(!trail.contains(OLD) && !trail.contains(NEW), "{trail}");
}

/// The body of an authenticated GET of `path` with `token`.
fn get_with(port: u16, token: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    reply
}
