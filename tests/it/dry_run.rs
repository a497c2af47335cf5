//! `runner dry-run` as a user runs it: the request it prints, sent by hand, is accepted by the
//! real QStash `Receiver` (signature, URL and body exactly as signed); secrets are placeholders
//! unless `--show-secrets`; bad input and steps that send no request get clear errors.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::{http_request, receiver_and_workflows, receiver_log, runner_cmd, test_keys};

const SECRET: &str = "tok-5f0c2a91e7";

fn workflow(dir: &Path, base: &str) {
    crate::support::write(
        dir,
        "notify.yaml",
        &format!(
            r#"name: notify
on: {{ webhook: true }}
inputs:
  user: {{ type: string, required: true }}
  days: {{ type: integer, default: 7 }}
secrets: [CRM_TOKEN]
steps:
  - id: fetch
    http:
      url: "{base}/ok?user={{{{ input.user }}}}"
      headers: {{ Authorization: "Bearer {{{{ secrets.CRM_TOKEN }}}}" }}
      body: {{ user: "{{{{ input.user }}}}", days: "{{{{ input.days }}}}", note: "ünïcode & quotes \"" }}
  - id: each
    foreach: "{{{{ steps.fetch.body.items }}}}"
    http: {{ url: "{base}/ok?item={{{{ item }}}}" }}
  - id: pause
    sleep: 1s
"#
        ),
    );
}

fn dry_run(dir: &Path, args: &[&str]) -> Output {
    let (current, next) = test_keys();
    runner_cmd()
        .arg("dry-run")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("RUNNER_SIGNING_KEY", current)
        .env("RUNNER_NEXT_SIGNING_KEY", next)
        .env("CRM_TOKEN", SECRET)
        .output()
        .expect("runner dry-run runs")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn the_request_it_prints_is_accepted_by_the_real_receiver() {
    let (receiver, _tmp, wf) = receiver_and_workflows();
    workflow(&wf, &receiver.base);
    let out = dry_run(
        &wf,
        &[
            "notify",
            "--input",
            r#"{"user": "ada"}"#,
            "--format",
            "json",
            "--show-secrets",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let req: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(req["step"], "fetch");
    assert_eq!(req["method"], "POST");
    let headers: Vec<(String, String)> = req["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("Authorization"), Some(&*format!("Bearer {SECRET}")));
    assert_eq!(header("Upstash-Message-Id"), req["dedup_id"].as_str());
    assert!(header("Upstash-Signature").is_some(), "{req:#}");
    let body = req["body"].as_str().unwrap();
    let sent: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(sent["days"], 7, "the input's default, typed: {body}");
    // Sent by hand, exactly as printed: the Receiver verifies the signature over URL and body.
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let answer = http_request("POST", req["url"].as_str().unwrap(), &pairs, Some(body))
        .expect("the receiver answers");
    assert_eq!(answer.status, 200, "{}", answer.json());
    let log = receiver_log(&receiver);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["valid"], true, "{:#}", log[0]);
    assert_eq!(log[0]["body"], body);

    // A changed body is refused: the signature covers it.
    let tampered = body.replace("ada", "eve");
    let answer = http_request(
        "POST",
        req["url"].as_str().unwrap(),
        &pairs,
        Some(&tampered),
    )
    .expect("the receiver answers");
    assert_eq!(answer.status, 401);
}

#[test]
fn secrets_are_placeholders_unless_asked_and_every_format_shows_the_request() {
    let (receiver, _tmp, wf) = receiver_and_workflows();
    workflow(&wf, &receiver.base);
    for format in ["http", "curl", "json"] {
        let out = dry_run(
            &wf,
            &[
                "notify",
                "--input",
                r#"{"user": "ada"}"#,
                "--format",
                format,
            ],
        );
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            !stdout.contains(SECRET),
            "{format} shows the secret:\n{stdout}"
        );
        assert!(stdout.contains("«secret:CRM_TOKEN»"), "{format}:\n{stdout}");
        assert!(stdout.contains("Upstash-Signature"), "{format}:\n{stdout}");
        assert!(stdout.contains("/ok?user=ada"), "{format}:\n{stdout}");
    }
    let http = text(&dry_run(&wf, &["notify", "--input", r#"{"user": "ada"}"#]).stdout);
    assert!(http.contains("POST /ok?user=ada HTTP/1.1"), "{http}");
    assert!(http.contains("# Upstash-Signature claims:"), "{http}");
    let curl = text(
        &dry_run(
            &wf,
            &[
                "notify",
                "--input",
                r#"{"user": "ada"}"#,
                "--format",
                "curl",
            ],
        )
        .stdout,
    );
    assert!(curl.contains("curl -X POST '"), "{curl}");
    assert!(curl.contains("--data-binary '"), "{curl}");
    // A later step, with an earlier step's output and a `foreach` item.
    let out = dry_run(
        &wf,
        &[
            "notify",
            "--input",
            r#"{"user": "ada"}"#,
            "--step",
            "each",
            "--steps",
            r#"{"fetch": {"status": 200, "headers": {}, "body": {"items": ["x", "y"]}}}"#,
            "--item",
            r#""y""#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("/ok?item=y"),
        "{}",
        text(&out.stdout)
    );
    // No request is sent by a dry run.
    assert!(receiver_log(&receiver).is_empty());
}

#[test]
fn bad_input_and_steps_without_a_request_are_clear_errors() {
    let (receiver, _tmp, wf) = receiver_and_workflows();
    workflow(&wf, &receiver.base);
    let out = dry_run(&wf, &["notify", "--input", r#"{"days": "x"}"#]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not match the inputs"), "{stderr}");
    assert!(stderr.contains("user"), "{stderr}");

    // Refused, saying what to give.
    for (step, says) in [
        ("pause", "is a `sleep` step"),
        ("each", "--item"),
        ("nope", "no step `nope`"),
    ] {
        let out = dry_run(
            &wf,
            &["notify", "--input", r#"{"user": "a"}"#, "--step", step],
        );
        assert!(!out.status.success(), "{step}");
        assert!(
            text(&out.stderr).contains(says),
            "{step}: {}",
            text(&out.stderr)
        );
    }

    // Without keys in the environment and no database file, it says where keys come from (on
    // PostgreSQL the tests' `--db FILE` names a database that is there).
    if crate::pg::enabled() {
        return;
    }
    let out = runner_cmd()
        .args(["dry-run", "notify", "--input", r#"{"user": "a"}"#, "--dir"])
        .arg(&wf)
        .arg("--db")
        .arg(wf.join("missing.db"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("RUNNER_SIGNING_KEY"),
        "{}",
        text(&out.stderr)
    );
    assert!(receiver_log(&receiver).is_empty());
}

#[test]
fn a_stored_runs_request_carries_the_dedup_id_its_attempt_carried() {
    let (receiver, tmp, wf) = receiver_and_workflows();
    crate::support::write(
        &wf,
        "plain.yaml",
        &format!(
            r#"name: plain
on: {{ webhook: true }}
inputs:
  user: {{ type: string, required: true }}
steps:
  - id: fetch
    http: {{ url: "{}/ok?user={{{{ input.user }}}}", body: {{ user: "{{{{ input.user }}}}" }} }}
"#,
            receiver.base
        ),
    );
    let db = tmp.path().join("stored.db");
    let daemon = crate::support::Daemon::start(&wf, &db, None);
    let id = daemon.api().start_run("plain", r#"{"user": "ada"}"#);
    let done = daemon
        .api()
        .wait_run(&id, std::time::Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let log = receiver_log(&receiver);
    let sent = log
        .iter()
        .find(|r| r["path"] == "/ok")
        .expect("the step's call");
    let db_arg = db.to_str().unwrap();
    let out = dry_run(
        &wf,
        &[
            "--run", &id, "--step", "fetch", "--format", "json", "--db", db_arg,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let req: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        req["dedup_id"], sent["headers"]["upstash-message-id"],
        "{req:#}\n{sent:#}"
    );
    assert_eq!(req["body"], sent["body"]);
}
