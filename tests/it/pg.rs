//! The PostgreSQL server of a test run against PostgreSQL (`RUNNER_TEST_BACKEND=postgres`):
//! Debian's `postgresql` package, `initdb` into a temporary folder (as the `postgres` user when
//! the tests run as root), on a free port of 127.0.0.1, started once per test process and
//! stopped when it ends (a watchdog process stops it even when the tests are killed).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether this test run is against PostgreSQL.
pub(crate) fn enabled() -> bool {
    std::env::var("RUNNER_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// For a test that checks what only SQLite has (its files, its lock files): true when the run is
/// against PostgreSQL, after saying that the test does not apply.
pub(crate) fn sqlite_only(what: &str) -> bool {
    if enabled() {
        eprintln!("skipped against PostgreSQL: {what} is about SQLite's database file");
        return true;
    }
    false
}

pub(crate) struct Server {
    /// `postgres://postgres@127.0.0.1:PORT`, without a database.
    pub base: String,
    pub data: PathBuf,
    pub port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().filter(|p| p.join("initdb").is_file()).expect(
        "PostgreSQL is not installed: `apt-get install postgresql` (./scripts/test does it)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when this process is root (PostgreSQL refuses root).
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Server {
    /// A server of its own, for a test that stops or restarts it (the shared one serves every
    /// other test running meanwhile); stopped when dropped.
    pub(crate) fn own() -> Server {
        Server::start()
    }

    fn start() -> Server {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("runner-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot give {} to the postgres user",
                dir.path().display()
            );
        }
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().expect("UTF-8"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let port_s = port.to_string();
        let socket_dir = dir.path().to_str().expect("UTF-8").to_string();
        let log = dir.path().join("postgres.log");
        let child = as_postgres(
            &bin.join("postgres"),
            &[
                "-D",
                data.to_str().expect("UTF-8"),
                "-p",
                &port_s,
                "-k",
                &socket_dir,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=400",
                // A process crash loses nothing without fsync; only an OS crash would.
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=64MB",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start postgres");
        // The server stops when this test process ends, however it ends.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -INT {pg} 2>/dev/null",
                me = std::process::id(),
                pg = child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let base = format!("postgres://postgres@127.0.0.1:{port}");
        let server = Server {
            base,
            data,
            port,
            bin,
            _dir: dir,
        };
        server.wait_ready(Duration::from_secs(30));
        std::mem::forget(child);
        server
    }

    /// Waits until the server accepts connections.
    pub(crate) fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown, or `immediate`: as after a crash) and starts it again
    /// on the same port after `down`.
    pub(crate) fn restart(&self, mode: &str, down: Duration) {
        let data = self.data.to_str().expect("UTF-8");
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data, "-m", mode, "-w", "stop"],
        )
        .output()
        .expect("pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(down);
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off",
            self.port,
            self.data.parent().expect("parent").display()
        );
        let log = self
            .data
            .parent()
            .expect("parent")
            .join("postgres-restart.log");
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data,
                "-o",
                &opts,
                "-l",
                log.to_str().expect("UTF-8"),
                "-w",
                "start",
            ],
        )
        .output()
        .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_ready(Duration::from_secs(30));
    }

    /// A new, empty database; its connection string.
    pub(crate) fn database(&self, name: &str) -> String {
        let out = Command::new("psql")
            .arg(format!("{}/postgres", self.base))
            .args(["-XqAc", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/{name}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(data) = self.data.to_str() {
            let _ = as_postgres(
                &self.bin.join("pg_ctl"),
                &["-D", data, "-m", "immediate", "stop"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        }
    }
}

/// The tests' PostgreSQL server, started on first use (never dropped: a watchdog stops it).
pub(crate) fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

/// What `--db PATH` means in this run: the path (SQLite), or the PostgreSQL database the
/// wrapper `tests/it/pg-runner.sh` makes of it.
pub(crate) fn db_arg(path: &Path) -> String {
    if !enabled() {
        return path.display().to_string();
    }
    db_arg_on(&server().base, path)
}

/// What `--db PATH` means for a daemon whose `RUNNER_TEST_PG` is the server at `base`.
pub(crate) fn db_arg_on(base: &str, path: &Path) -> String {
    let out = Command::new(wrapper())
        .env("RUNNER_TEST_REAL_BIN", "echo")
        .env("RUNNER_TEST_PG", base)
        .arg("--db")
        .arg(path)
        .output()
        .expect("run the wrapper");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("--db ")
        .to_string()
}

pub(crate) fn wrapper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/pg-runner.sh")
}

/// The store a test drives in-process: the SQLite file, or its PostgreSQL database.
pub(crate) async fn open_store(path: &Path) -> runner::store::Store {
    runner::store::Store::connect(&db_arg(path))
        .await
        .expect("open the store")
}

/// The rows of `query` (every column as text), or none when the table is not there yet.
pub(crate) fn rows(url: &str, query: &str) -> Vec<Vec<String>> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-XtAF", "\t", "-c", query])
        .output()
        .expect("psql");
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Everything the database holds, as `pg_dump` writes it.
pub(crate) fn dump(url: &str) -> Vec<u8> {
    let out = Command::new(pg_bin().join("pg_dump"))
        .arg(url)
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
