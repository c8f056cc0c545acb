//! The real `keel` binary as a child process: started with its log on a channel, killed
//! when its handle drops, its port read from the "keel listening" line.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// Kills the server it holds when the test ends, however it ends.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `keel serve ARGS` (no `KEEL_TOKENS`, `RUST_LOG=info`); its log lines arrive on
/// the channel, read on a thread so a wait for one can have a deadline.
pub(crate) fn spawn<I, S>(args: I) -> (Running, Receiver<String>)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .args(args)
        .env_remove("KEEL_TOKENS")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("keel starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), rx)
}

/// The port of a "keel listening on 127.0.0.1:PORT" line.
pub(crate) fn port_in(line: &str) -> u16 {
    let after = &line[line.find("127.0.0.1:").expect("address in line") + 10..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("port")
}

/// Reads the log until the listening line (within 60 s): the port, and the lines before.
pub(crate) fn listening_port(log: &Receiver<String>) -> (u16, Vec<String>) {
    let mut lines = Vec::new();
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no listening line; log so far: {lines:#?}"));
        if line.contains("keel listening") {
            return (port_in(&line), lines);
        }
        lines.push(line);
    }
}

/// Starts `keel serve ARGS --listen 127.0.0.1:0` and returns it, its port, and its log
/// lines before the listening one.
pub(crate) fn serve(args: &[&str]) -> (Running, u16, Vec<String>) {
    let (server, log) = spawn(args.iter().chain(&["--listen", "127.0.0.1:0"]));
    let (port, lines) = listening_port(&log);
    (server, port, lines)
}

/// `GET path` on its own connection; the whole reply, head and body.
pub(crate) fn get(port: u16, path: &str) -> String {
    get_with(port, path, &[])
}

/// [`get`] with extra `headers`.
pub(crate) fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    reply
}
