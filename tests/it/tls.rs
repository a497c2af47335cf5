//! HTTPS steps against a real TLS server on 127.0.0.1 (Node's `https`) whose certificate is
//! issued by a private certificate authority made here with `openssl`: a certificate runner does
//! not trust fails the step at once with a readable message (it used to print Rust `Debug`
//! text and be retried as if transient); `--ca-file` / `RUNNER_CA_FILE` trusts the authority.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::support::{KillOnDrop, runner_cmd, temp_dir, test_keys, write};

/// A server that answers every request 200 `{"ok":true}`; prints `{"port": N}` when ready and
/// exits when its stdin closes.
const SERVER: &str = r#"
const https = require("node:https");
const fs = require("node:fs");
const server = https.createServer(
  { key: fs.readFileSync(process.argv[1]), cert: fs.readFileSync(process.argv[2]) },
  (req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"ok":true}');
    });
  },
);
server.listen(0, "127.0.0.1", () => console.log(JSON.stringify({ port: server.address().port })));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
"#;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run `openssl` (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA (`ca.pem`) and a server certificate for 127.0.0.1 it issued (`server.pem`,
/// `server.key`).
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=runner test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    write(
        dir,
        "server.ext",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

/// Starts the TLS server; answers it (killed when dropped) and its port.
fn start_server(dir: &Path) -> (KillOnDrop, u16) {
    let mut child = Command::new("node")
        .arg("-e")
        .arg(SERVER)
        .arg(dir.join("server.key"))
        .arg(dir.join("server.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run `node`");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the server's port");
    let port = serde_json::from_str::<Value>(&line)
        .ok()
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("the TLS server printed {line:?}"));
    (KillOnDrop(child), port)
}

/// `runner run FILE --db DB` with `extra` arguments and environment; (output, seconds taken).
fn run(file: &Path, db: &Path, extra: &[&str], env: &[(&str, &Path)]) -> (Output, f64) {
    let (current, next) = test_keys();
    let mut cmd = runner_cmd();
    cmd.arg("run")
        .arg(file)
        .arg("--db")
        .arg(db)
        .args(extra)
        .env("RUNNER_SIGNING_KEY", current)
        .env("RUNNER_NEXT_SIGNING_KEY", next)
        .current_dir(db.parent().expect("dir"))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd.output().expect("runner run");
    (out, started.elapsed().as_secs_f64())
}

/// The step `call` of the only run in `db`, as `runner show --json` prints it.
fn call_step(db: &Path, stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split_once(" started")?.0.into())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no run id in {text}"));
    let out = runner_cmd()
        .args(["show", &id, "--json", "--db"])
        .arg(db)
        .output()
        .expect("runner show");
    let run: Value = serde_json::from_slice(&out.stdout).expect("show --json");
    run["steps"][0].clone()
}

fn workflow(host: &str, port: u16) -> String {
    format!(
        "name: tls\nsteps:\n  - id: call\n    http: {{ url: \"https://{host}:{port}/hi\" }}\n    retry: {{ limit: 3, backoff: fixed, initial: 20s }}\n"
    )
}

#[test]
fn a_private_ca_is_refused_at_once_unless_trusted_with_ca_file() {
    let dir = temp_dir();
    make_certificates(dir.path());
    let (_server, port) = start_server(dir.path());
    let file = write(dir.path(), "tls.yaml", &workflow("127.0.0.1", port));
    let ca = dir.path().join("ca.pem");

    // Not trusted: one attempt (not four, 20 s apart), a sentence, the way out.
    let db = dir.path().join("untrusted.db");
    let (out, secs) = run(&file, &db, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(secs < 15.0, "the step was retried: {secs} s");
    let step = call_step(&db, &out.stdout);
    assert_eq!(step["status"], "failed", "{step:#}");
    assert_eq!(step["attempts"], 1, "{step:#}");
    let error = step["error"].as_str().unwrap_or("");
    assert_eq!(
        error,
        "the TLS certificate of `127.0.0.1` is not issued by a certificate authority runner \
         trusts (self-signed, or a private CA); trust a private certificate authority with \
         --ca-file (RUNNER_CA_FILE)",
        "{step:#}"
    );

    // Trusted with the flag, or with the environment variable.
    let (out, _) = run(
        &file,
        &dir.path().join("flag.db"),
        &["--ca-file", ca.to_str().expect("path")],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let (out, _) = run(
        &file,
        &dir.path().join("env.db"),
        &[],
        &[("RUNNER_CA_FILE", &ca)],
    );
    assert!(out.status.success(), "{out:?}");

    // Trusted, but issued for another name: also at once, and said so.
    let other = write(dir.path(), "name.yaml", &workflow("localhost", port));
    let db = dir.path().join("name.db");
    let (out, secs) = run(&other, &db, &["--ca-file", ca.to_str().expect("path")], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(secs < 15.0, "the step was retried: {secs} s");
    let step = call_step(&db, &out.stdout);
    assert_eq!(step["attempts"], 1, "{step:#}");
    let error = step["error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(
            "the TLS certificate of `localhost` is not valid for the name `localhost`"
        ),
        "{step:#}"
    );

    // A CA file that is not one: refused before anything runs.
    let (out, _) = run(
        &file,
        &dir.path().join("bad.db"),
        &["--ca-file", file.to_str().expect("path")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no certificate"), "{err}");
    assert!(!dir.path().join("bad.db").exists());
}
