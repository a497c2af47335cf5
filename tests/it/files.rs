//! The database file and what lives beside it, with the real daemon: a second name for the file
//! (a symbolic or a hard link) is refused while a daemon runs on it; the file deleted under a
//! running daemon stops it before it performs more; new signing keys are announced; the
//! database, its `-wal`/`-shm`, the lock files and the outbox are the owner's only whatever the
//! umask; and a `runner run` killed beside a daemon is continued by the daemon.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Daemon, QstashReceiver, receiver_log, runner_cmd, runner_cmd_with_umask, temp_dir, test_keys,
    wait_for, write,
};

/// How long a short run may take.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn receiver() -> &'static QstashReceiver {
    static RECEIVER: OnceLock<QstashReceiver> = OnceLock::new();
    RECEIVER.get_or_init(QstashReceiver::start)
}

/// Runs a command to its end, killing it after `limit` (a command that should have been refused
/// and is serving instead).
fn run_for(cmd: &mut std::process::Command, limit: Duration) -> (Output, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runner");
    let deadline = Instant::now() + limit;
    let mut killed = false;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().expect("output"), killed)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn serve_on(db: &Path, dir: &Path) -> std::process::Command {
    let mut cmd = runner_cmd();
    cmd.arg("serve")
        .arg("--db")
        .arg(db)
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"]);
    cmd
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The lock files followed the name given: a second daemon through a symbolic link to the
/// database was not refused, and re-sent the first one's call in flight; through a hard link it
/// even gave the file a second write-ahead log. Both are refused now, and the first daemon goes
/// on.
#[test]
fn a_second_name_for_the_database_is_refused_while_a_daemon_runs_on_it() {
    if crate::pg::sqlite_only("the database file, its names and lock files") {
        return;
    }
    let dir = temp_dir();
    let wf = dir.path().join("wf");
    std::fs::create_dir(&wf).expect("wf");
    write(
        &wf,
        "nap.yaml",
        "name: nap\non: { webhook: true }\nsteps: [{ id: nap, sleep: 10ms }]\n",
    );
    let db = dir.path().join("runner.db");
    let daemon = Daemon::start(&wf, &db, None);

    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &link).expect("symlink");
    let (out, killed) = run_for(&mut serve_on(&link, &wf), Duration::from_secs(10));
    assert!(!killed, "a daemon through a symbolic link was not refused");
    assert!(
        stderr(&out).contains("in use by another runner process (runner serve, pid"),
        "{}",
        stderr(&out)
    );
    let (out, _) = run_for(
        runner_cmd().arg("resume").arg("--db").arg(&link),
        Duration::from_secs(10),
    );
    assert!(
        stderr(&out).contains("in use by another runner process (runner serve, pid"),
        "{}",
        stderr(&out)
    );

    let hard = dir.path().join("hard.db");
    std::fs::hard_link(&db, &hard).expect("hard link");
    let (out, killed) = run_for(&mut serve_on(&hard, &wf), Duration::from_secs(10));
    assert!(!killed, "a daemon through a hard link was not refused");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has 2 names (hard links)"),
        "{}",
        stderr(&out)
    );
    // Any command: a reader through the other name would miss the daemon's write-ahead log.
    let (out, _) = run_for(
        runner_cmd().arg("runs").arg("--db").arg(&hard),
        Duration::from_secs(10),
    );
    assert!(
        !out.status.success() && stderr(&out).contains("has 2 names (hard links)"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("hard.db-wal").exists(),
        "a second write-ahead log was made"
    );

    // The first daemon is unaffected.
    let api = daemon.api();
    let id = api.start_run("nap", "{}");
    assert_eq!(api.wait_run(&id, RUN_LIMIT)["status"], "succeeded");
}

/// The file deleted under a running daemon went unnoticed: new runs "succeeded", all were gone
/// after a restart, and new signing keys were generated silently. Now the daemon stops within
/// seconds, naming the file, before it performs the call that was due next; a start on a file
/// without keys says what receivers must change.
#[test]
fn a_database_deleted_under_the_daemon_stops_it_before_it_performs_more() {
    if crate::pg::sqlite_only("the database file, its names and lock files") {
        return;
    }
    let dir = temp_dir();
    let wf = dir.path().join("wf");
    std::fs::create_dir(&wf).expect("wf");
    write(
        &wf,
        "later.yaml",
        &format!(
            "name: later\non: {{ webhook: true }}\nsteps:\n  - {{ id: nap, sleep: 4s }}\n  - id: call\n    http: {{ url: \"{}/ok\" }}\n",
            receiver().base
        ),
    );
    let db = dir.path().join("runner.db");
    let mut daemon = Daemon::start_with_db_keys(&wf, &db);
    let logs = daemon.logs();
    assert!(
        logs.contains("new signing keys were generated")
            && logs.contains("QSTASH_CURRENT_SIGNING_KEY and QSTASH_NEXT_SIGNING_KEY"),
        "{logs}"
    );
    let api = daemon.api();
    let id = api.start_run("later", "{}");
    let started = Instant::now();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "{status}\n{}", daemon.logs());
    let logs = daemon.logs();
    let path = std::fs::canonicalize(dir.path())
        .expect("dir")
        .join("runner.db");
    assert!(
        logs.contains(&format!(
            "the database file `{}` was deleted",
            path.display()
        )),
        "{logs}"
    );
    assert!(logs.contains("stopped at once"), "{logs}");
    // Past the sleep: the call it was going to make was never made.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    let sent: Vec<Value> = receiver_log(receiver())
        .into_iter()
        .filter(|r| r["headers"]["runner-run-id"] == id.as_str())
        .collect();
    assert!(sent.is_empty(), "{sent:#?}");

    // A database that has runs and no keys (they came from the environment before).
    let db2 = dir.path().join("env-keys.db");
    write(
        &wf,
        "nap.yaml",
        "name: nap\nsteps: [{ id: nap, sleep: 10ms }]\n",
    );
    let mut cmd = runner_cmd();
    cmd.args(["run", "nap", "--db"])
        .arg(&db2)
        .arg("--dir")
        .arg(&wf);
    let (current, next) = test_keys();
    let (out, _) = run_for(
        cmd.env("RUNNER_SIGNING_KEY", current)
            .env("RUNNER_NEXT_SIGNING_KEY", next),
        RUN_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let second = Daemon::start_with_db_keys(&wf, &db2);
    let logs = second.logs();
    assert!(
        logs.contains("the database has runs but no signing key"),
        "{logs}"
    );
}

/// The database (with the signing keys) and the outbox e-mails (with live approval links) were
/// created 0644. With a umask that lets everyone read, they, the `-wal` and `-shm` files and the
/// lock files are 0600 and the folders runner creates 0700.
#[test]
fn the_database_lock_files_and_outbox_are_private_whatever_the_umask() {
    if crate::pg::sqlite_only("the database file, its names and lock files") {
        return;
    }
    let dir = temp_dir();
    let wf = dir.path().join("wf");
    std::fs::create_dir(&wf).expect("wf");
    write(
        &wf,
        "ask.yaml",
        "name: ask\non: { webhook: true }\nsteps:\n  - id: ok\n    approval: { to: [boss@example.com], subject: ok? }\n",
    );
    let db = dir.path().join("private.db");
    let outbox = dir.path().join("mail").join("outbox");
    let mut cmd = runner_cmd_with_umask("000");
    cmd.arg("serve")
        .arg("--dir")
        .arg(&wf)
        .arg("--db")
        .arg(&db)
        .arg("--outbox")
        .arg(&outbox)
        .args(["--listen", "127.0.0.1:0"]);
    let daemon = Daemon::spawn(cmd, dir.path().join("umask.stderr"), None);
    let api = daemon.api();
    api.start_run("ask", "{}");
    let mail = wait_for(RUN_LIMIT, "the approval e-mail in the outbox", || {
        std::fs::read_dir(&outbox)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "eml"))
    });
    // A `runner run` beside it, also with umask 000: its folder of owner files.
    write(
        &wf,
        "nap.yaml",
        "name: nap\nsteps: [{ id: nap, sleep: 10ms }]\n",
    );
    let (out, _) = run_for(
        runner_cmd_with_umask("000")
            .args(["run", "nap", "--db"])
            .arg(&db)
            .arg("--dir")
            .arg(&wf)
            .env("RUNNER_SIGNING_KEY", test_keys().0)
            .env("RUNNER_NEXT_SIGNING_KEY", test_keys().1),
        RUN_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let beside = |suffix: &str| {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let modes: Vec<(String, u32)> = [
        db.clone(),
        beside("-wal"),
        beside("-shm"),
        beside(".lock"),
        beside(".runs.lock"),
        beside(".owners"),
        outbox.parent().expect("mail").to_path_buf(),
        outbox.clone(),
        mail,
    ]
    .iter()
    .map(|p| {
        (
            p.file_name().unwrap().to_string_lossy().into_owned(),
            mode(p),
        )
    })
    .collect();
    let want: Vec<(String, u32)> = modes
        .iter()
        .map(|(name, _)| {
            let dir = name == "mail" || name == "outbox" || name.ends_with(".owners");
            (name.clone(), if dir { 0o700 } else { 0o600 })
        })
        .collect();
    assert_eq!(
        modes
            .iter()
            .map(|(n, m)| format!("{n} {m:04o}"))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(n, m)| format!("{n} {m:04o}"))
            .collect::<Vec<_>>()
    );
}

/// A `runner run` killed beside a daemon left its run `sleeping` forever: the daemon did not
/// adopt it, and `runner resume` is refused while the daemon runs. The daemon notices that the
/// run's process is gone and finishes it, the sleep at its original deadline, no completed step
/// sent again.
#[test]
fn a_runner_run_killed_beside_a_daemon_is_finished_by_the_daemon() {
    if crate::pg::sqlite_only("the database file, its names and lock files") {
        return;
    }
    let dir = temp_dir();
    let wf = dir.path().join("wf");
    std::fs::create_dir(&wf).expect("wf");
    let db = dir.path().join("runner.db");
    let daemon = Daemon::start(&wf, &db, None);
    let file = write(
        dir.path(),
        "orphan.yaml",
        &format!(
            "name: orphan\nsteps:\n  - id: first\n    http: {{ url: \"{b}/ok\" }}\n  - {{ id: nap, sleep: 3s }}\n  - id: last\n    http: {{ url: \"{b}/echo\", body: {{ after: nap }} }}\n",
            b = receiver().base
        ),
    );
    let (current, next) = test_keys();
    let out_path = dir.path().join("run.out");
    let mut run = crate::support::KillOnDrop(
        runner_cmd()
            .arg("run")
            .arg(&file)
            .arg("--db")
            .arg(&db)
            .env("RUNNER_SIGNING_KEY", current)
            .env("RUNNER_NEXT_SIGNING_KEY", next)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout"))
            .stderr(Stdio::null())
            .spawn()
            .expect("runner run"),
    );
    let id = wait_for(RUN_LIMIT, "`runner run` to print its run id", || {
        let text = std::fs::read_to_string(&out_path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("run ")?.split_once(" started")?.0.into())
            .map(str::to_string)
    });
    let api = daemon.api();
    let sleeping = wait_for(RUN_LIMIT, "the run to sleep", || {
        let (status, v) = api.get(&format!("/runs/{id}"));
        (status == 200 && v["status"] == "sleeping").then_some(v)
    });
    let wake_at = sleeping["wake_at"].as_str().expect("wake_at").to_string();
    run.0.kill().expect("kill -9 the runner run");
    run.0.wait().expect("reap");

    let done = api.wait_run(&id, RUN_LIMIT);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(
        daemon
            .logs()
            .contains("continuing a run whose `runner run` process has ended"),
        "{}",
        daemon.logs()
    );
    let log = receiver_log(receiver());
    let of = |step: &str| -> Vec<Value> {
        log.iter()
            .filter(|r| r["headers"]["runner-run-id"] == id.as_str())
            .filter(|r| r["headers"]["runner-step"] == step)
            .cloned()
            .collect()
    };
    assert_eq!(of("first").len(), 1, "{:#?}", of("first"));
    let last = of("last");
    assert_eq!(last.len(), 1, "{last:#?}");
    assert!(last[0]["valid"].as_bool().unwrap_or(false), "{last:#?}");
    let wake = chrono::DateTime::parse_from_rfc3339(&wake_at)
        .expect("wake_at")
        .timestamp_millis();
    assert!(
        last[0]["time"].as_i64().expect("time") >= wake,
        "woke before its deadline {wake_at}: {last:#?}"
    );
}
