//! Retention: `runner prune` deletes finished runs by age or beyond a workflow's newest N, and
//! says how many; a daemon with `--retention` deletes them by itself, except those of a workflow
//! with a `retention` of its own; an unfinished run is never deleted.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Daemon, QstashReceiver, receiver_and_workflows, runner_cmd, wait_for, write};

fn files(wf: &Path, receiver: &QstashReceiver) {
    write(
        wf,
        "quick.yaml",
        &format!(
            "name: quick\non: {{ webhook: true }}\nsteps:\n  - id: ping\n    http: {{ url: \"{}/ok\" }}\n",
            receiver.base
        ),
    );
    write(
        wf,
        "kept.yaml",
        &format!(
            "name: kept\non: {{ webhook: true }}\nretention: {{ days: 30 }}\nsteps:\n  - id: ping\n    http: {{ url: \"{}/ok\" }}\n",
            receiver.base
        ),
    );
    write(
        wf,
        "sleepy.yaml",
        "name: sleepy\non: { webhook: true }\nsteps:\n  - id: nap\n    sleep: 1h\n",
    );
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = runner_cmd().args(args).output().expect("run runner");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_ids(db: &Path, workflow: &str) -> Vec<String> {
    let (ok, text) = cli(&[
        "runs",
        "--workflow",
        workflow,
        "--json",
        "--limit",
        "100",
        "--db",
        db.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "{text}");
    let runs: Value = serde_json::from_str(&text).expect("runs --json");
    runs.as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect()
}

/// 5 runs of `quick` and 2 of `kept` finished, one of `sleepy` asleep; the daemon stopped.
fn some_runs() -> (
    QstashReceiver,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
) {
    let (receiver, dir, wf) = receiver_and_workflows();
    files(&wf, &receiver);
    let db = dir.path().join("runner.db");
    let mut daemon = Daemon::start(&wf, &db, None);
    let api = daemon.api();
    for _ in 0..5 {
        let id = api.start_run("quick", "{}");
        api.wait_run(&id, Duration::from_secs(20));
    }
    for _ in 0..2 {
        let id = api.start_run("kept", "{}");
        api.wait_run(&id, Duration::from_secs(20));
    }
    let sleeping = api.start_run("sleepy", "{}");
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(20));
    (receiver, dir, wf, db, sleeping)
}

#[test]
fn runner_prune_deletes_finished_runs_by_age_and_beyond_the_newest() {
    let (_receiver, _dir, _wf, db, sleeping) = some_runs();
    let dbs = db.to_str().expect("utf-8 path");
    let (ok, text) = cli(&["prune", "--older-than", "1h", "--db", dbs]);
    assert!(ok, "{text}");
    assert!(
        text.contains("deleted 0 runs finished more than 1h ago"),
        "{text}"
    );

    let before = run_ids(&db, "quick");
    assert_eq!(before.len(), 5);
    let (ok, text) = cli(&[
        "prune",
        "--workflow",
        "quick",
        "--keep",
        "2",
        "--dry-run",
        "--db",
        dbs,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("would delete 3 runs"), "{text}");
    assert_eq!(run_ids(&db, "quick").len(), 5, "a dry run deletes nothing");
    let (ok, text) = cli(&["prune", "--workflow", "quick", "--keep", "2", "--db", dbs]);
    assert!(ok, "{text}");
    assert!(text.contains("deleted 3 runs"), "{text}");
    assert_eq!(run_ids(&db, "quick"), before[..2], "the newest two stay");
    let (ok, text) = cli(&["show", &before[4], "--db", dbs]);
    assert!(!ok, "a deleted run is gone: {text}");

    std::thread::sleep(Duration::from_millis(1100));
    let (ok, text) = cli(&["prune", "--older-than", "1s", "--db", dbs]);
    assert!(ok, "{text}");
    assert!(
        text.contains("deleted 4 runs"),
        "2 quick and 2 kept: {text}"
    );
    assert_eq!(
        run_ids(&db, "sleepy"),
        [sleeping],
        "an unfinished run stays"
    );

    let (ok, text) = cli(&["prune", "--db", dbs]);
    assert!(!ok && text.contains("--older-than"), "{text}");
}

#[test]
fn a_daemon_with_retention_deletes_old_runs_but_not_those_a_workflow_keeps() {
    let (_receiver, _dir, wf, db, sleeping) = some_runs();
    std::thread::sleep(Duration::from_millis(1100));
    let mut cmd = runner_cmd();
    cmd.arg("serve")
        .arg("--dir")
        .arg(&wf)
        .arg("--db")
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--retention", "1s"]);
    let daemon = Daemon::spawn(cmd, db.with_extension("retention.stderr"), None);
    wait_for(
        Duration::from_secs(20),
        "old runs of `quick` deleted",
        || run_ids(&db, "quick").is_empty().then_some(()),
    );
    assert_eq!(
        run_ids(&db, "kept").len(),
        2,
        "`retention: {{ days: 30 }}` keeps them"
    );
    assert_eq!(run_ids(&db, "sleepy"), [sleeping]);
    wait_for(Duration::from_secs(10), "the deletion in the log", || {
        daemon
            .logs()
            .contains("deleted finished runs past their retention")
            .then_some(())
    });
}
