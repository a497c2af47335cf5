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
pub(crate) struct QstashReceiver {
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
    pub(crate) fn start() -> Self {
        Self::start_with_keys(
            &runner::sign::key_from_random([1; 32]),
            &runner::sign::key_from_random([2; 32]),
        )
    }

    /// Starts a receiver that accepts `current` and `next` (as QSTASH_CURRENT/NEXT_SIGNING_KEY).
    pub(crate) fn start_with_keys(current: &str, next: &str) -> Self {
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

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The real Receiver, a temporary folder and its `workflows` folder: what most daemon tests
/// start from.
pub(crate) fn receiver_and_workflows() -> (QstashReceiver, tempfile::TempDir, PathBuf) {
    let receiver = QstashReceiver::start();
    let dir = temp_dir();
    let wf = dir.path().join("workflows");
    std::fs::create_dir_all(&wf).expect("a workflows folder");
    (receiver, dir, wf)
}

/// The path of the built `runner` binary.
pub(crate) fn runner_bin() -> PathBuf {
    if crate::pg::enabled() {
        // Every `--db FILE` becomes a PostgreSQL database of the tests' server.
        return crate::pg::wrapper();
    }
    PathBuf::from(env!("CARGO_BIN_EXE_runner"))
}

/// A `runner` command with a clean environment for runner's own variables.
pub(crate) fn runner_cmd() -> Command {
    let mut c = Command::new(runner_bin());
    clean_runner_env(&mut c);
    c
}

/// A `runner` command run by `sh` with the umask set first (`umask 000` tests file modes).
pub(crate) fn runner_cmd_with_umask(umask: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(runner_bin());
    clean_runner_env(&mut c);
    c
}

/// Removes runner's own variables from a command's environment (and, against PostgreSQL, gives
/// the `--db` wrapper the server and the real binary).
pub(crate) fn clean_runner_env(c: &mut Command) {
    if crate::pg::enabled() {
        c.env("RUNNER_TEST_REAL_BIN", env!("CARGO_BIN_EXE_runner"))
            .env("RUNNER_TEST_PG", &crate::pg::server().base);
    }
    for var in [
        "RUNNER_SIGNING_KEY",
        "RUNNER_NEXT_SIGNING_KEY",
        "RUNNER_DB",
        "RUNNER_DIR",
        "RUNNER_API_TOKEN",
        "RUNNER_SMTP_URL",
        "RUNNER_LOG",
        "RUNNER_LOG_FORMAT",
        "RUNNER_URL",
        "RUNNER_LISTEN",
        "RUNNER_PUBLIC_URL",
        "RUNNER_METRICS_PUBLIC",
        "RUNNER_MAX_CONNECTIONS",
        "RUNNER_HEADER_READ_TIMEOUT",
        "RUNNER_EVENT_RETENTION",
        "RUNNER_CA_FILE",
        "RUNNER_OUTBOX",
    ] {
        c.env_remove(var);
    }
}

/// The receiver's records, oldest first (blocking HTTP, for tests that drive the binary).
pub(crate) fn receiver_log(receiver: &QstashReceiver) -> Vec<Value> {
    let body = ureq_get(&receiver.url("/__log"));
    match serde_json::from_str(&body).expect("/__log answers JSON") {
        Value::Array(records) => records,
        other => panic!("/__log answered {other}"),
    }
}

/// A GET that answers the body (for `/__log`, `/metrics`, pages), failing the test when the
/// server cannot be reached.
pub(crate) fn ureq_get(url: &str) -> String {
    http_request("GET", url, &[], None)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body
}

/// Where a test's files live; removed at the end.
pub(crate) fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// The signing keys `QstashReceiver::start()` accepts, as (current, next).
pub(crate) fn test_keys() -> (String, String) {
    (
        runner::sign::key_from_random([1; 32]),
        runner::sign::key_from_random([2; 32]),
    )
}

/// Milliseconds since the epoch (the receiver's `time` uses the same clock).
/// A random generator for a chaos test, seeded from `var` when set (to replay a failure) or else
/// from the clock; the seed is printed so a failing run can be replayed.
pub(crate) fn chaos_rng(var: &str, what: &str) -> (rand::rngs::StdRng, u64) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos();
            u64::try_from(n % u128::from(u64::MAX)).expect("fits")
        });
    eprintln!("{what} seed: {seed} (replay with {var}={seed})");
    (rand::rngs::StdRng::seed_from_u64(seed), seed)
}

pub(crate) fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_millis()).expect("milliseconds fit in i64")
}

/// Polls `probe` every 50 ms until it answers `Some`, failing the test after `timeout`.
pub(crate) fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One answer of [`http_request`].
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when empty, a string when it is not JSON).
    pub(crate) fn json(&self) -> Value {
        if self.body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.body).unwrap_or_else(|_| Value::String(self.body.clone()))
        }
    }
}

/// The tests' HTTP client (ureq, blocking, so it may be used from sync tests and async ones
/// alike): every status is an answer, not an error; no connection is kept for the next request
/// (the daemon counts connections against its cap).
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into()
    })
}

/// One HTTP request; errors only when the server cannot be reached or the connection breaks.
/// A body without a `Content-Type` is sent as JSON.
pub(crate) fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.unwrap_or("");
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("Content-Type", "application/json");
    }
    let sent = if body.is_empty() {
        req.body(()).map(|r| agent().run(r))
    } else {
        req.body(body.to_string()).map(|r| agent().run(r))
    };
    let mut answer = sent
        .map_err(std::io::Error::other)?
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let headers = answer
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = answer
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(HttpResponse {
        status: answer.status().as_u16(),
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// A client of the daemon's JSON API (`/api/v1`), with or without a bearer token.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    /// `path` is below `/api/v1` (e.g. `/runs`); answers (status, JSON body).
    pub(crate) fn try_call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::io::Result<(u16, Value)> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("Authorization", a));
        }
        let r = http_request(method, &format!("{}/api/v1{path}", self.base), &all, body)?;
        Ok((r.status, r.json()))
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Value) {
        self.try_call(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} at {}: {e}", self.base))
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, &[], None)
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("POST", path, &[], Some(body))
    }

    pub(crate) fn put(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("PUT", path, &[], Some(body))
    }

    pub(crate) fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, &[], None)
    }

    /// Starts a run and answers its id, failing the test unless the daemon says 201.
    pub(crate) fn start_run(&self, workflow: &str, input: &str) -> String {
        let (status, v) = self.post(&format!("/workflows/{workflow}/runs"), input);
        assert_eq!(status, 201, "starting a run of `{workflow}`: {v}");
        v["id"].as_str().expect("run id").to_string()
    }

    /// Polls a run until its status is terminal; answers the run.
    pub(crate) fn wait_run(&self, id: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok((200, v)) = self.try_call("GET", &format!("/runs/{id}"), &[], None) {
                if matches!(
                    v["status"].as_str(),
                    Some("succeeded" | "failed" | "rejected" | "cancelled")
                ) {
                    return v;
                }
                last = v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} did not finish within {timeout:?}; last seen:\n{last:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `runner serve` on 127.0.0.1:0 with the test signing keys; killed (SIGKILL) when dropped.
pub(crate) struct Daemon {
    child: Child,
    pub base: String,
    pub token: Option<String>,
    pub stderr: PathBuf,
    exited: Option<std::process::ExitStatus>,
}

static DAEMONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Daemon {
    /// Starts the daemon on `dir` and `db` and waits (30 s at most) until it listens. Its stderr
    /// goes to a file next to `db`.
    pub(crate) fn start(dir: &Path, db: &Path, token: Option<&str>) -> Daemon {
        let mut cmd = runner_cmd();
        cmd.arg("serve")
            .arg("--dir")
            .arg(dir)
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(t) = token {
            cmd.args(["--api-token", t]);
        }
        let n = DAEMONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Daemon::spawn(cmd, db.with_extension(format!("daemon-{n}.stderr")), token)
    }

    /// `runner serve` on 127.0.0.1:0 that signs with the keys kept in the database (generated on
    /// its first start), as with zero configuration.
    pub(crate) fn start_with_db_keys(dir: &Path, db: &Path) -> Daemon {
        let mut cmd = runner_cmd();
        cmd.arg("serve")
            .arg("--dir")
            .arg(dir)
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"]);
        let n = DAEMONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Daemon::spawn_with(
            cmd,
            db.with_extension(format!("daemon-{n}.stderr")),
            None,
            false,
        )
    }

    /// Starts `cmd` (a `runner serve` with its arguments) with the test signing keys, its stderr
    /// in `stderr`, and waits (30 s at most) until it prints `listening on …`.
    pub(crate) fn spawn(cmd: Command, stderr: PathBuf, token: Option<&str>) -> Daemon {
        Daemon::spawn_with(cmd, stderr, token, true)
    }

    /// [`Daemon::spawn`], with the test signing keys in its environment or (`env_keys` false)
    /// with the keys in its database.
    pub(crate) fn spawn_with(
        mut cmd: Command,
        stderr: PathBuf,
        token: Option<&str>,
        env_keys: bool,
    ) -> Daemon {
        if env_keys {
            let (current, next) = test_keys();
            cmd.env("RUNNER_SIGNING_KEY", current)
                .env("RUNNER_NEXT_SIGNING_KEY", next);
        }
        let mut child = cmd
            .env("RUNNER_LOG", "runner=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn runner serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                    sent = true;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            base: String::new(),
            token: token.map(str::to_string),
            stderr,
            exited: None,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => daemon.base = url,
            Err(_) => panic!(
                "`runner serve` did not print `listening on …` within 30 s (exit: {:?})\n{}",
                daemon.try_wait(),
                daemon.logs()
            ),
        }
        daemon
    }

    pub(crate) fn api(&self) -> Api {
        Api {
            base: self.base.clone(),
            token: self.token.clone(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's log so far.
    pub(crate) fn logs(&self) -> String {
        format!(
            "--- runner serve stderr ({}):\n{}",
            self.stderr.display(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    pub(crate) fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Sends a signal by name (`TERM`, `HUP`, …) with the `kill` command.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run `kill`");
        assert!(status.success(), "`kill -s {name}` failed: {status}");
    }

    /// SIGKILL and reap; answers when the process was known dead (ms since the epoch).
    pub(crate) fn kill9(&mut self) -> i64 {
        if self.try_wait().is_none() {
            self.child.kill().expect("kill -9");
            self.exited = Some(self.child.wait().expect("reap"));
        }
        now_ms()
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`runner serve` did not exit within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child process killed (and reaped) when dropped: a test's servers end with the test.
pub(crate) struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
