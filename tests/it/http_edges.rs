//! The HTTP edges of `runner serve`, against the real binary on 127.0.0.1:0 over raw sockets:
//! floods of connections that never finish their request head (at the usual 1,024-descriptor
//! limit, and at a limit so low that `accept` fails), the header-read timeout, hyper's own
//! answers to requests it cannot parse, bodies and query strings the API refuses, the bearer
//! scheme, `/metrics` behind the token, idempotency keys reused with another input, and the
//! start-up checks of the API token and the public URL. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Daemon, http_request, runner_bin, runner_cmd, temp_dir, write};

const TOKEN: &str = "http-edges-token-0123456789";

const HELLO: &str = "name: hello\non: { webhook: true }\ninputs:\n  who: { type: string, default: world }\nsteps:\n  - id: nap\n    sleep: 1h\n";

/// A workflows directory with `hello.yaml`, and the database path beside it.
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = temp_dir();
    let dir = tmp.path().join("workflows");
    std::fs::create_dir(&dir).expect("workflows dir");
    write(&dir, "hello.yaml", HELLO);
    let db = tmp.path().join("runner.db");
    (tmp, dir, db)
}

/// `runner serve` on 127.0.0.1:0 under `ulimit -n {fds}` (when given), with extra arguments.
fn serve(dir: &Path, db: &Path, fds: Option<u32>, token: Option<&str>, args: &[&str]) -> Daemon {
    let mut cmd = match fds {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(runner_bin());
            c
        }
        None => Command::new(runner_bin()),
    };
    // The environment runner_cmd() clears, cleared here too.
    crate::support::clean_runner_env(&mut cmd);
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--db")
        .arg(db)
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    if let Some(t) = token {
        cmd.args(["--api-token", t]);
    }
    let stderr = db.with_extension(format!("{}.stderr", std::process::id()));
    Daemon::spawn(cmd, stderr, token)
}

fn addr(d: &Daemon) -> SocketAddr {
    d.base
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("daemon base {}", d.base))
}

/// Opens up to `n` connections that each send half a request head, for `budget` at most.
fn half_heads(at: SocketAddr, n: usize, budget: Duration) -> Vec<TcpStream> {
    let deadline = Instant::now() + budget;
    let mut open = Vec::new();
    while open.len() < n && Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&at, Duration::from_secs(1)) {
            let _ = s.write_all(b"GET /api/v1/runs HTTP/1.1\r\nHost: x\r\nAuthoriz");
            open.push(s);
        }
    }
    open
}

/// GET /healthz, bounded: (status, elapsed), or the error.
fn healthz(d: &Daemon) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr(d), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {out:?}"))?;
    Ok((status, started.elapsed()))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn two_thousand_half_sent_heads_do_not_lock_out_the_api_at_1024_descriptors() {
    let (_tmp, dir, db) = setup();
    let d = serve(&dir, &db, Some(1024), Some(TOKEN), &[]);
    let flood = half_heads(addr(&d), 2000, Duration::from_secs(30));
    let fds = open_fds(d.pid());
    let health = healthz(&d);
    let api = d.api().try_call("GET", "/runs", &[], None);
    assert_eq!(
        flood.len(),
        2000,
        "every connection was taken\n{}",
        d.logs()
    );
    match health {
        Ok((200, took)) => assert!(took < Duration::from_secs(5), "/healthz took {took:?}"),
        other => panic!(
            "/healthz with 2,000 half-sent heads open: {other:?}\n{}",
            d.logs()
        ),
    }
    assert!(
        matches!(api, Ok((200, _))),
        "the API with 2,000 half-sent heads open: {api:?}"
    );
    // The cap (512 by default) holds the descriptors, far below the limit.
    assert!(
        fds < 600,
        "the daemon had {fds} descriptors open (now {})",
        open_fds(d.pid())
    );
    assert!(
        d.logs().contains("closed the one idle longest"),
        "the cap is logged\n{}",
        d.logs()
    );
    drop(flood);
}

#[test]
fn a_failing_accept_is_logged_and_an_idle_connection_makes_room() {
    // A cap above what the descriptors allow: `accept` fails with EMFILE.
    let (_tmp, dir, db) = setup();
    let d = serve(&dir, &db, Some(64), None, &["--max-connections", "1000"]);
    let flood = half_heads(addr(&d), 200, Duration::from_secs(20));
    let health = healthz(&d);
    assert!(
        matches!(health, Ok((200, _))),
        "/healthz with the descriptors used up: {health:?}\n{}",
        d.logs()
    );
    let logs = d.logs();
    assert!(
        logs.contains("cannot accept a connection")
            && logs.contains("closed the connection idle longest"),
        "the failing accept is logged\n{logs}"
    );
    drop(flood);
}

/// Reads until the server closes the connection; answers what it sent and when it closed.
fn read_until_closed(mut s: TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "still open after {:?} ({e}); got {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_head_that_does_not_arrive_in_time_is_closed() {
    let (_tmp, dir, db) = setup();
    let d = serve(&dir, &db, None, None, &["--header-read-timeout", "1s"]);
    let at = addr(&d);
    let connect = || TcpStream::connect_timeout(&at, Duration::from_secs(5)).expect("connect");
    // Half a head; nothing at all; an idle keep-alive connection after one answer.
    let mut half = connect();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let silent = connect();
    let mut idle = connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    for (what, s) in [
        ("half a head", half),
        ("nothing", silent),
        ("an idle keep-alive", idle),
    ] {
        let (got, took) = read_until_closed(s, Duration::from_secs(5));
        assert!(
            took < Duration::from_secs(4),
            "{what}: closed after {took:?}"
        );
        if what == "an idle keep-alive" {
            assert!(got.starts_with("HTTP/1.1 200"), "{what}: {got:?}");
        }
    }
}

/// Sends raw bytes and reads the whole answer.
fn raw(d: &Daemon, bytes: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr(d), Duration::from_secs(5)).expect("connect");
    s.write_all(bytes).expect("write");
    let (text, _) = read_until_closed(s, Duration::from_secs(10));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not JSON: {head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, body)
}

#[test]
fn requests_the_http_layer_refuses_are_answered_in_json() {
    let (_tmp, dir, db) = setup();
    let d = serve(&dir, &db, None, Some(TOKEN), &[]);
    let long_uri = format!(
        "GET /api/v1/runs?workflow={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let big_head = format!(
        "GET /api/v1/runs HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(150_000)
    );
    let many: String = (0..150).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = format!("GET /api/v1/runs HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (what, req, status, says) in [
        ("a 70 KB URI", long_uri.as_str(), 414, "URI is longer"),
        (
            "a 150 KB header",
            big_head.as_str(),
            431,
            "head is too large",
        ),
        ("150 headers", many.as_str(), 431, "head is too large"),
        (
            "a header name with a space",
            "GET /api/v1/runs HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n",
            400,
            "not valid HTTP/1.1",
        ),
        (
            "a space in the URI",
            "GET /api/v1/runs?a b HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "not valid HTTP/1.1",
        ),
        (
            "two Content-Lengths",
            "POST /api/v1/workflows/hello/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
            400,
            "not valid HTTP/1.1",
        ),
    ] {
        let (got, body) = raw(&d, req.as_bytes());
        assert_eq!(got, status, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{what}: {body}"
        );
    }
    // After an answer on a keep-alive connection, a bad request still gets JSON.
    let mut s = TcpStream::connect_timeout(&addr(&d), Duration::from_secs(5)).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nBad Name: y\r\n\r\n")
        .expect("write");
    let (text, _) = read_until_closed(s, Duration::from_secs(10));
    let (_, second) = text
        .split_once("{\"status\":\"ok\"}")
        .unwrap_or_else(|| panic!("no healthz answer first: {text:?}"));
    assert!(second.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert!(
        second.contains("content-type: application/json"),
        "{text:?}"
    );
    assert!(second.ends_with("nothing was done\"}"), "{text:?}");
}

#[test]
fn the_api_refuses_what_it_would_otherwise_misread() {
    let (_tmp, dir, db) = setup();
    let d = serve(&dir, &db, None, Some(TOKEN), &[]);
    let api = d.api();
    let post = |body: &str| api.post("/workflows/hello/runs", body);

    // `null` is not an input (an empty body is `{}`).
    let (status, v) = post("null");
    assert_eq!(status, 422, "{v}");
    assert!(v["details"].to_string().contains("not null"), "{v}");
    let (status, v) = post("");
    assert_eq!(status, 201, "an empty body is no input: {v}");

    // A key twice: refused, naming it (serde_json would keep the last).
    let (status, v) = post(r#"{"who": "a", "who": "b"}"#);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate key `who`")),
        "{v}"
    );
    let (status, v) = api.put(
        "/schedules/dup",
        r#"{"workflow": "hello", "cron": "0 9 * * *", "cron": "* * * * *"}"#,
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate key `cron`")),
        "{v}"
    );

    // `limit` out of range is refused, not changed.
    for path in ["/runs?limit=0", "/runs?limit=1001", "/schedules?limit=0"] {
        let (status, v) = api.get(path);
        assert_eq!(status, 400, "{path}: {v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("`limit` must be 1 to 1000")),
            "{path}: {v}"
        );
    }
    let (status, v) = api.get("/runs?limit=1");
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(1)), "{v}");

    // The bearer scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {TOKEN}");
        let r = http_request(
            "GET",
            &format!("{}/api/v1/runs", d.base),
            &[("Authorization", &auth)],
            None,
        )
        .expect("request");
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }
    let r = http_request(
        "GET",
        &format!("{}/api/v1/runs", d.base),
        &[("Authorization", "bearer wrong-token-0123456789")],
        None,
    )
    .expect("request");
    assert_eq!(r.status, 401, "{}", r.body);

    // /metrics needs the token too.
    let metrics = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http_request("GET", &format!("{}/metrics", d.base), &headers, None).expect("request")
    };
    let r = metrics(None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("--metrics-public"), "{}", r.body);
    let auth = format!("Bearer {TOKEN}");
    let r = metrics(Some(&auth));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("runner_runs_unfinished"), "{}", r.body);
}

#[test]
fn metrics_public_serves_metrics_without_the_token() {
    let (_tmp, dir, db) = setup();
    for (flag, env) in [(Some("--metrics-public"), None), (None, Some("1"))] {
        let mut args = Vec::new();
        args.extend(flag);
        let d = match env {
            None => serve(&dir, &db, None, Some(TOKEN), &args),
            Some(v) => {
                // The same through RUNNER_METRICS_PUBLIC.
                let mut cmd = runner_cmd();
                cmd.env("RUNNER_METRICS_PUBLIC", v)
                    .arg("serve")
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--db")
                    .arg(&db)
                    .args(["--listen", "127.0.0.1:0", "--api-token", TOKEN]);
                Daemon::spawn(cmd, db.with_extension("env.stderr"), Some(TOKEN))
            }
        };
        let r = http_request("GET", &format!("{}/metrics", d.base), &[], None).expect("request");
        assert_eq!(r.status, 200, "{flag:?} {env:?}: {}", r.body);
        let (status, _) = crate::support::Api {
            base: d.base.clone(),
            token: None,
        }
        .get("/runs");
        assert_eq!(status, 401, "the API still needs the token");
    }
}

#[test]
fn an_idempotency_key_reused_with_another_input_is_refused() {
    let (_tmp, dir, db) = setup();
    let d = serve(&dir, &db, None, Some(TOKEN), &[]);
    let api = d.api();
    let start = |key: &str, body: &str| {
        api.call(
            "POST",
            "/workflows/hello/runs",
            &[("Idempotency-Key", key)],
            Some(body),
        )
    };
    let (status, first) = start("signup-1", r#"{"who": "ann"}"#);
    assert_eq!(status, 201, "{first}");
    // The same input again, also as the defaults make it: the same run.
    let (status, again) = start("signup-1", r#"{"who": "ann"}"#);
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
    let (status, v) = start("defaults", "{}");
    assert_eq!(status, 201, "{v}");
    let (status, same) = start("defaults", r#"{"who": "world"}"#);
    assert_eq!(
        (status, &same["id"]),
        (200, &v["id"]),
        "the default filled in is the same input: {same}"
    );
    // Another input under the same key: 422, naming the key and the run.
    let (status, v) = start("signup-1", r#"{"who": "bob"}"#);
    assert_eq!(status, 422, "{v}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("`signup-1`") && e.contains(first["id"].as_str().unwrap_or("?")),
        "{v}"
    );
    let (_, runs) = api.get("/runs");
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(2),
        "no run was added: {runs}"
    );
}

#[test]
fn runner_run_refuses_a_reused_key_with_another_input() {
    let (tmp, dir, db) = setup();
    write(
        &dir,
        "quick.yaml",
        "name: quick\ninputs:\n  n: { type: number, default: 1 }\nsteps:\n  - id: nap\n    sleep: 1s\n",
    );
    let run = |input: &str| {
        runner_cmd()
            .current_dir(tmp.path())
            .args(["run", "quick", "--idempotency-key", "k1", "--input", input])
            .arg("--dir")
            .arg(&dir)
            .arg("--db")
            .arg(&db)
            .stdin(Stdio::null())
            .output()
            .expect("run runner")
    };
    let first = run(r#"{"n": 1}"#);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let same = run("{}");
    assert!(
        same.status.success(),
        "the default is the same input: {}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(
        String::from_utf8_lossy(&same.stdout).contains("already exists for this idempotency key")
    );
    let other = run(r#"{"n": 2}"#);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("idempotency key `k1` was used for run"),
        "{stderr}"
    );
    // And `--input` is read strictly, and `null` is no input.
    let dup = run(r#"{"n": 1, "n": 2}"#);
    let stderr = String::from_utf8_lossy(&dup.stderr);
    assert_eq!(dup.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("duplicate key `n`"), "{stderr}");
    let null = run("null");
    let stderr = String::from_utf8_lossy(&null.stderr);
    assert_eq!(null.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not null"), "{stderr}");
    // `runner runs --limit 0` is refused rather than read as 50.
    let out = runner_cmd()
        .args(["runs", "--limit", "0", "--db"])
        .arg(&db)
        .output()
        .expect("run runner");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit must be 1 or more"));
}

/// `runner serve` that is expected to exit at once: (exit code, stderr).
fn serve_refused(
    dir: &Path,
    db: &Path,
    listen: &str,
    token: Option<&str>,
) -> (Option<i32>, String) {
    let mut cmd = runner_cmd();
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--db")
        .arg(db)
        .args(["--listen", listen])
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("RUNNER_API_TOKEN", t);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("stderr");
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`runner serve --listen {listen}` with token {token:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn beyond_loopback_the_token_must_be_a_real_secret() {
    let (_tmp, dir, db) = setup();
    for (token, says) in [
        (None, "without an API token"),
        (Some("x"), "is 1 character long"),
        (Some("0123456789abcde"), "is 15 characters long"),
        (Some("                    "), "only whitespace"),
        (Some(" 0123456789abcdef "), "starts or ends with whitespace"),
    ] {
        let (code, err) = serve_refused(&dir, &db, "0.0.0.0:0", token);
        assert_eq!(code, Some(2), "{token:?}: {err}");
        assert!(err.contains(says), "{token:?}: {err}");
    }
    // On loopback a whitespace token is refused too: no client could send it.
    let (code, err) = serve_refused(&dir, &db, "127.0.0.1:0", Some("   "));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("only whitespace"), "{err}");

    // A real secret on 0.0.0.0 starts; without --public-url the links do not name 0.0.0.0.
    let mut cmd = runner_cmd();
    cmd.arg("serve")
        .arg("--dir")
        .arg(&dir)
        .arg("--db")
        .arg(&db)
        .args(["--listen", "0.0.0.0:0", "--api-token", TOKEN]);
    let d = Daemon::spawn(cmd, db.with_extension("any.stderr"), Some(TOKEN));
    let logs = d.logs();
    assert!(logs.contains("no --public-url"), "{logs}");
    let serving = logs
        .lines()
        .find(|l| l.contains("runner is serving"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(!serving.contains("public_url=http://0.0.0.0"), "{serving}");
}
