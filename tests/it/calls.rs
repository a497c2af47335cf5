//! `call` steps against the real daemon and the real QStash Receiver: the called run's
//! `output:` reaches the caller's later steps; a failed called run fails the step; cancelling
//! the caller cancels the called run; a `kill -9` while the called run goes starts no second
//! one and loses neither; `runner validate` checks the target and its inputs.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Daemon, QstashReceiver, receiver_and_workflows, receiver_log, runner_cmd, wait_for, write,
};

/// `invoice` (called: one call, then its `output`) and `order` (calls it, then ships).
fn workflows(dir: &Path, receiver: &QstashReceiver, charge: &str) {
    let base = &receiver.base;
    write(
        dir,
        "invoice.yaml",
        &format!(
            r#"name: invoice
inputs:
  order: {{ type: string, required: true }}
steps:
  - id: charge
    http: {{ url: "{base}{charge}?order={{{{ input.order }}}}" }}
    retry: {{ limit: 0 }}
output:
  invoice: "inv-{{{{ input.order }}}}"
  charged: "{{{{ steps.charge.status }}}}"
"#
        ),
    );
    write(
        dir,
        "order.yaml",
        &format!(
            r#"name: order
on: {{ webhook: true }}
inputs:
  order: {{ type: string, required: true }}
steps:
  - id: bill
    call:
      workflow: invoice
      input: {{ order: "{{{{ input.order }}}}" }}
  - id: ship
    http: {{ url: "{base}/ok?invoice={{{{ steps.bill.output.invoice }}}}&status={{{{ steps.bill.status }}}}&charged={{{{ steps.bill.output.charged }}}}" }}
"#
        ),
    );
}

fn runs_of(daemon: &Daemon, workflow: &str) -> Vec<Value> {
    let (status, v) = daemon.api().get(&format!("/runs?workflow={workflow}"));
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .or_else(|| v["runs"].as_array())
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_called_runs_output_reaches_the_callers_later_steps() {
    let (receiver, dir, wf) = receiver_and_workflows();
    workflows(&wf, &receiver, "/ok");
    let daemon = Daemon::start(&wf, &dir.path().join("call.db"), None);
    let id = daemon.api().start_run("order", r#"{"order": "o-7"}"#);
    let done = daemon.api().wait_run(&id, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let bill = &done["steps"][0];
    assert_eq!(bill["kind"], "call");
    assert_eq!(bill["output"]["status"], "succeeded", "{bill:#}");
    assert_eq!(bill["output"]["output"]["invoice"], "inv-o-7", "{bill:#}");
    let child_id = bill["output"]["run_id"].as_str().expect("the called run");
    assert_eq!(bill["child_run"], child_id);
    let (_, child) = daemon.api().get(&format!("/runs/{child_id}"));
    assert_eq!(child["trigger"], "call", "{child:#}");
    assert_eq!(child["parent"]["run_id"], id.as_str(), "{child:#}");
    assert_eq!(child["parent"]["step"], "bill");
    assert_eq!(child["output"]["invoice"], "inv-o-7");
    assert_eq!(child["input"]["order"], "o-7");
    let ship = receiver_log(&receiver)
        .into_iter()
        .find(|r| r["url"].as_str().unwrap_or("").contains("invoice="))
        .expect("the ship call");
    assert!(
        ship["url"]
            .as_str()
            .unwrap()
            .ends_with("invoice=inv-o-7&status=succeeded&charged=200"),
        "{ship:#}"
    );
    assert_eq!(ship["valid"], true);
}

#[test]
fn a_failed_called_run_fails_the_step_and_says_why() {
    let (receiver, dir, wf) = receiver_and_workflows();
    workflows(&wf, &receiver, "/nonretryable");
    let daemon = Daemon::start(&wf, &dir.path().join("fail.db"), None);
    let id = daemon.api().start_run("order", r#"{"order": "o-8"}"#);
    let done = daemon.api().wait_run(&id, Duration::from_secs(30));
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["failure"]["step"], "bill", "{done:#}");
    let error = done["failure"]["error"].as_str().unwrap();
    assert!(
        error.contains("failed at step `charge`") && error.contains("489"),
        "{error}"
    );
    assert_eq!(done["steps"][0]["output"]["status"], "failed");
    assert_eq!(done["steps"][1]["status"], "skipped");
}

#[test]
fn cancelling_the_caller_cancels_the_called_run() {
    let (receiver, dir, wf) = receiver_and_workflows();
    workflows(&wf, &receiver, "/slow/20000");
    let daemon = Daemon::start(&wf, &dir.path().join("cancel.db"), None);
    let api = daemon.api();
    let id = api.start_run("order", r#"{"order": "o-9"}"#);
    let child = wait_for(Duration::from_secs(10), "the called run", || {
        let (_, v) = api.get(&format!("/runs/{id}"));
        v["steps"][0]["child_run"].as_str().map(str::to_string)
    });
    let (_, waiting) = api.get(&format!("/runs/{id}"));
    assert_eq!(
        waiting["waiting_for"],
        format!("the run {child} that step `bill` called to end"),
        "{waiting:#}"
    );
    let (status, v) = api.post(&format!("/runs/{id}/cancel"), "{}");
    assert!(status == 200 || status == 202, "{status} {v}");
    let done = api.wait_run(&child, Duration::from_secs(10));
    assert_eq!(done["status"], "cancelled", "{done:#}");
    assert!(
        done["cancel_reason"]
            .as_str()
            .unwrap()
            .contains("cancelled with the run that called it"),
        "{done:#}"
    );
    assert_eq!(
        api.wait_run(&id, Duration::from_secs(10))["status"],
        "cancelled"
    );
}

#[test]
fn kill_9_while_the_called_run_goes_starts_no_second_one() {
    let (receiver, dir, wf) = receiver_and_workflows();
    workflows(&wf, &receiver, "/slow/1500");
    let db = dir.path().join("kill.db");
    let mut daemon = Daemon::start(&wf, &db, None);
    let id = daemon.api().start_run("order", r#"{"order": "o-10"}"#);
    wait_for(Duration::from_secs(10), "the called run's call", || {
        receiver_log(&receiver)
            .iter()
            .any(|r| r["path"].as_str() == Some("/slow/1500"))
            .then_some(())
    });
    daemon.kill9();
    let daemon = Daemon::start(&wf, &db, None);
    let done = daemon.api().wait_run(&id, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let children = runs_of(&daemon, "invoice");
    assert_eq!(children.len(), 1, "one called run: {children:#?}");
    assert_eq!(done["steps"][0]["output"]["output"]["invoice"], "inv-o-10");
}

#[test]
fn validate_checks_the_called_workflow_and_its_inputs() {
    let tmp = crate::support::temp_dir();
    let dir = tmp.path();
    write(
        dir,
        "invoice.yaml",
        "name: invoice\ninputs:\n  order: { type: string, required: true }\nsteps:\n  - id: a\n    sleep: 1s\n",
    );
    write(
        dir,
        "order.yaml",
        "name: order\non: { webhook: true }\nsteps:\n  - id: bill\n    call:\n      workflow: invoise\n  - id: again\n    call:\n      workflow: invoice\n      input: { ordr: x }\n",
    );
    let out = runner_cmd()
        .arg("validate")
        .arg(dir)
        .output()
        .expect("runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("order.yaml:6:17: error[unknown-workflow]"),
        "{text}"
    );
    assert!(text.contains("did you mean `invoice`?"), "{text}");
    assert!(
        text.contains("error[missing-key]") && text.contains("required input `order`"),
        "{text}"
    );
    assert!(
        text.contains("order.yaml:10:16: error[undeclared-input]"),
        "{text}"
    );
}

#[test]
fn a_workflow_that_calls_itself_stops_at_the_depth_limit() {
    let (_receiver, dir, wf) = receiver_and_workflows();
    write(
        &wf,
        "again.yaml",
        "name: again\non: { webhook: true }\nsteps:\n  - id: deeper\n    call: { workflow: again }\n",
    );
    let daemon = Daemon::start(&wf, &dir.path().join("deep.db"), None);
    let id = daemon.api().start_run("again", "{}");
    let done = daemon.api().wait_run(&id, Duration::from_secs(30));
    assert_eq!(done["status"], "failed", "{done:#}");
    let runs = runs_of(&daemon, "again");
    assert_eq!(runs.len(), 11, "the first run and ten below it");
    let deepest = runs
        .iter()
        .map(|r| {
            daemon
                .api()
                .get(&format!("/runs/{}", r["id"].as_str().unwrap()))
                .1
        })
        .find(|r| r["parent"]["depth"] == 10)
        .expect("the deepest run");
    let error = deepest["failure"]["error"].as_str().unwrap();
    assert!(error.contains("calls nest deeper than 10"), "{error}");
}
