//! Shared test helpers: the real QStash receiver, the runner binary, workflow files.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const SETUP_HINT: &str = "install Node.js 18 or later and run `npm ci --prefix tests/qstash`";

/// The receiver process; killed when dropped, also when a test panics.
pub struct QstashReceiver {
    child: Child,
    pub base: String,
    pub current_key: String,
    pub next_key: String,
}

impl Drop for QstashReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl QstashReceiver {
    pub fn start() -> Self {
        Self::start_with_keys(
            &runner::sign::key_from_random([1; 32]),
            &runner::sign::key_from_random([2; 32]),
        )
    }

    /// Starts a receiver that accepts `current` and `next` (as QSTASH_CURRENT/NEXT_SIGNING_KEY).
    pub fn start_with_keys(current: &str, next: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qstash");
        assert!(
            dir.join("node_modules/@upstash/qstash/package.json")
                .is_file(),
            "`@upstash/qstash` is not installed in {}: {SETUP_HINT}",
            dir.display()
        );
        let current_key = current.to_string();
        let next_key = next.to_string();
        let mut child = Command::new("node")
            .arg(dir.join("receiver.mjs"))
            .arg("--exit-with-stdin")
            .env("QSTASH_CURRENT_SIGNING_KEY", &current_key)
            .env("QSTASH_NEXT_SIGNING_KEY", &next_key)
            .env_remove("PORT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {SETUP_HINT}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut receiver = QstashReceiver {
            child,
            base: String::new(),
            current_key,
            next_key,
        };

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("receiver.mjs did not print its port within 30 s")
            .expect("reading receiver.mjs's stdout");
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| {
                panic!("receiver.mjs printed {line:?}, not {{\"port\": N}} (see its stderr above): {SETUP_HINT}")
            });
        receiver.base = format!("http://127.0.0.1:{port}");
        receiver
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The path of the built `runner` binary.
pub fn runner_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runner"))
}

/// A `runner` command with a clean environment for runner's own variables.
pub fn runner_cmd() -> Command {
    let mut c = Command::new(runner_bin());
    for var in [
        "RUNNER_SIGNING_KEY",
        "RUNNER_NEXT_SIGNING_KEY",
        "RUNNER_DB",
        "RUNNER_DIR",
        "RUNNER_API_TOKEN",
        "RUNNER_SMTP_URL",
        "RUNNER_LOG",
    ] {
        c.env_remove(var);
    }
    c
}

/// The receiver's records, oldest first (blocking HTTP, for tests that drive the binary).
pub fn receiver_log(receiver: &QstashReceiver) -> Vec<Value> {
    let body = ureq_get(&receiver.url("/__log"));
    match serde_json::from_str(&body).expect("/__log answers JSON") {
        Value::Array(records) => records,
        other => panic!("/__log answered {other}"),
    }
}

/// A minimal blocking GET over a raw TCP socket (keeps tests free of a blocking HTTP client).
pub fn ureq_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read");
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if out.contains("Transfer-Encoding: chunked") || out.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

/// Where a test's files live; removed at the end.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}
