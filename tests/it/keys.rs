//! Rotating the signing keys while the daemon runs, following the README's procedure exactly,
//! with the real `@upstash/qstash` Receiver: receivers hold the current and the next key;
//! `runner keys rotate` while the daemon runs; the daemon signs with the new current key within
//! seconds, and receivers that still have the old pair keep verifying (the new current key was
//! their next one); then receivers get the new pair and keep verifying.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Daemon, QstashReceiver, receiver_log, runner_cmd, temp_dir, write};

const RUN_LIMIT: Duration = Duration::from_secs(30);

/// `runner keys [rotate] --db DB`: (current, next, stderr).
fn keys(db: &std::path::Path, rotate: bool) -> (String, String, String) {
    let mut cmd = runner_cmd();
    cmd.arg("keys");
    if rotate {
        cmd.arg("rotate");
    }
    let out = cmd.arg("--db").arg(db).output().expect("runner keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_string()
    };
    (
        get("QSTASH_CURRENT_SIGNING_KEY"),
        get("QSTASH_NEXT_SIGNING_KEY"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the workflow against `receiver`; answers the receiver's record of the call.
fn call(daemon: &Daemon, receiver: &QstashReceiver) -> Value {
    let api = daemon.api();
    let input = serde_json::json!({ "url": receiver.url("/ok") }).to_string();
    let id = api.start_run("signed", &input);
    let run = api.wait_run(&id, RUN_LIMIT);
    let record = receiver_log(receiver)
        .into_iter()
        .find(|r| r["headers"]["runner-run-id"] == id.as_str())
        .unwrap_or_else(|| panic!("the receiver saw no call of run {id}: {run:#}"));
    assert!(
        record["valid"].as_bool().unwrap_or(false),
        "the receiver refused the call: {record:#}\n{}",
        daemon.logs()
    );
    assert_eq!(run["status"], "succeeded", "{run:#}");
    record
}

/// Whether `key` signed the call (checked with runner's verifier, which follows the Receiver's
/// rules, with this key alone).
fn signed_with(record: &Value, key: &str) -> bool {
    let token = record["headers"]["upstash-signature"]
        .as_str()
        .expect("signature");
    let body = record["body"].as_str().unwrap_or("");
    runner::sign::verify(
        token,
        &[key],
        None,
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
    )
    .is_ok()
}

#[test]
fn rotating_keys_while_the_daemon_runs_follows_the_readme_procedure() {
    let dir = temp_dir();
    let wf = dir.path().join("wf");
    std::fs::create_dir(&wf).expect("wf");
    write(
        &wf,
        "signed.yaml",
        "name: signed\non: { webhook: true }\ninputs:\n  url: { type: string, required: true }\nsteps:\n  - id: call\n    http: { url: \"{{ input.url }}\" }\n",
    );
    let db = dir.path().join("runner.db");
    let daemon = Daemon::start_with_db_keys(&wf, &db);

    // 1. Receivers are configured with both keys `runner keys` prints.
    let (k1, k2, _) = keys(&db, false);
    let old_pair = QstashReceiver::start_with_keys(&k1, &k2);
    let before = call(&daemon, &old_pair);
    assert!(signed_with(&before, &k1), "signed with the current key");

    // 2. `runner keys rotate` while the daemon runs: the next key becomes current.
    let (current, k3, note) = keys(&db, true);
    let rotated = Instant::now();
    assert_eq!(current, k2, "the next key is promoted");
    assert_ne!(k3, k2);
    assert!(
        note.contains(
            "a running daemon on this database signs with the new current key within 2 s"
        ),
        "{note}"
    );

    // 3. Within seconds the daemon signs with the new current key; the receiver that still has
    //    the old pair verifies every call meanwhile (through its next key).
    loop {
        let record = call(&daemon, &old_pair);
        if signed_with(&record, &k2) {
            break;
        }
        assert!(signed_with(&record, &k1), "{record:#}");
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "the daemon still signs with the old key {:?} after the rotation\n{}",
            rotated.elapsed(),
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        daemon
            .logs()
            .contains("the signing keys changed in the database"),
        "{}",
        daemon.logs()
    );

    // 4. Then receivers get the new pair, and keep verifying.
    drop(old_pair);
    let new_pair = QstashReceiver::start_with_keys(&k2, &k3);
    let after = call(&daemon, &new_pair);
    assert!(signed_with(&after, &k2));
    let (c, n, _) = keys(&db, false);
    assert_eq!((c, n), (k2, k3), "`runner keys` shows the pair in use");
}

#[test]
fn keys_of_a_database_that_is_not_there_say_that_a_new_one_was_made() {
    if crate::pg::sqlite_only("a mistyped database path") {
        return;
    }
    let tmp = temp_dir();
    let db = tmp.path().join("wrong.db");
    let out = runner_cmd()
        .arg("keys")
        .arg("--db")
        .arg(&db)
        .output()
        .expect("runner keys");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("there was no database at")
            && err.contains("wrong.db")
            && err.contains("a new one was created"),
        "{err}"
    );
    // Asked again, the database is there: no note.
    let again = runner_cmd()
        .arg("keys")
        .arg("--db")
        .arg(&db)
        .output()
        .expect("runner keys");
    assert_eq!(again.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&again.stderr).contains("no database"));
    assert_eq!(again.stdout, out.stdout, "the same keys the second time");
}

#[test]
fn a_public_url_without_a_scheme_is_refused_before_anything_starts() {
    let tmp = temp_dir();
    for bad in [
        "runner.example.com",
        "localhost:8080",
        "ftp://runner.example.com",
        "https://x.example/?a=1",
    ] {
        let out = runner_cmd()
            .args(["serve", "--dir"])
            .arg(tmp.path())
            .arg("--db")
            .arg(tmp.path().join("r.db"))
            .args(["--listen", "127.0.0.1:0", "--public-url", bad])
            .output()
            .expect("runner serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("--public-url") && err.contains(bad),
            "{bad}: {err}"
        );
    }
}
