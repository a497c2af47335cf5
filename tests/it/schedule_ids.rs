//! `Upstash-Schedule-Id`: every fire of a schedule sends the schedule's own, stable id (a
//! programmatic schedule's id, `{workflow}/{index}` for one in a workflow file), the run keeps
//! it, and `runner runs --schedule` and `GET /api/v1/runs?schedule=` find a schedule's runs by
//! it. The real `Scheduler` in-process on a real SQLite file, fired at chosen instants (a
//! restart is a new store, executor and scheduler on the same file), its HTTP steps sent to the
//! real `@upstash/qstash` Receiver.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runner::daemon::scheduler::Scheduler;
use runner::registry::Registry;
use runner::runtime::Executor;
use runner::store::{RunFilter, ScheduleSpec};
use serde_json::{Value, json};

use crate::support::{QstashReceiver, http_request, runner_cmd, temp_dir, write};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad time {s}: {e}"))
        .with_timezone(&Utc)
}

/// A store, executor and scheduler on `db` and `dir`, as a process has them after a start.
async fn parts(db: &Path, dir: &Path) -> (Executor, Scheduler) {
    let (current, next) = crate::support::test_keys();
    let engine = runner::testing::executor(
        crate::pg::open_store(db).await,
        runner::sign::Keys { current, next },
        dir.join("outbox"),
    );
    let mut registry = Registry::new(dir);
    let changes = registry.reload();
    assert!(changes.refused.is_empty(), "{:?}", changes.refused);
    let metrics = engine.metrics();
    let scheduler = Scheduler::new(engine.clone(), Arc::new(RwLock::new(registry)), metrics);
    (engine, scheduler)
}

/// The receiver's records of workflow `sched-ids`, once there are `n`.
async fn records(receiver: &QstashReceiver, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = receiver.url("/__log");
        let log: Vec<Value> = tokio::task::spawn_blocking(move || {
            serde_json::from_str(&crate::support::ureq_get(&url)).expect("/__log answers a list")
        })
        .await
        .expect("log");
        let mine: Vec<Value> = log
            .into_iter()
            .filter(|r| r["headers"]["runner-workflow"] == "sched-ids")
            .collect();
        if mine.len() >= n {
            return mine;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} calls, have {}: {mine:#?}",
            mine.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fire_sends_the_schedules_own_id_and_runs_are_found_by_it() {
    let receiver = QstashReceiver::start();
    let tmp = temp_dir();
    let dir = tmp.path().join("workflows");
    std::fs::create_dir(&dir).expect("workflows dir");
    write(
        &dir,
        "sched-ids.yaml",
        &format!(
            "name: sched-ids\non:\n  schedule:\n    - cron: \"0 9 * * 1\"\n      timezone: Europe/Berlin\n      input: {{ userId: file }}\ninputs:\n  userId: {{ type: string, required: true }}\nconcurrency:\n  overlap: allow_all\nsteps:\n  - id: call\n    http: {{ url: \"{}/echo\" }}\n",
            receiver.base
        ),
    );
    let db = tmp.path().join("runner.db");
    let store = crate::pg::open_store(&db).await;
    for id in ["sum-u1", "sum-u2"] {
        store
            .save_api_schedule(ScheduleSpec {
                id: id.into(),
                workflow: "sched-ids".into(),
                cron: "0 9 * * 1".into(),
                timezone: Some("Europe/Berlin".into()),
                input: json!({ "userId": id }),
                paused: false,
            })
            .await
            .expect("save schedule");
    }
    drop(store);
    // First seen before the first Monday 09:00 in Berlin (07:00Z); then two Mondays.
    let mut kept = Vec::new();
    let (engine, mut s) = parts(&db, &dir).await;
    s.start(t("2026-06-01T06:00:00Z")).await.expect("start");
    kept.push((engine, s));
    for (i, now) in ["2026-06-01T07:00:03Z", "2026-06-08T07:00:03Z"]
        .into_iter()
        .enumerate()
    {
        let (engine, mut s) = parts(&db, &dir).await;
        s.start(t(now)).await.expect("start");
        records(&receiver, 3 * (i + 1)).await;
        kept.push((engine, s));
    }
    let calls = records(&receiver, 6).await;
    assert_eq!(calls.len(), 6, "{calls:#?}");

    // Each schedule's two fires carry its id; the runs are different.
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &calls {
        let id = c["headers"]["upstash-schedule-id"]
            .as_str()
            .unwrap_or_else(|| panic!("no Upstash-Schedule-Id: {c:#}"))
            .to_string();
        let run = c["headers"]["runner-run-id"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        by_id.entry(id).or_default().push(run);
    }
    assert_eq!(
        by_id.keys().collect::<Vec<_>>(),
        ["sched-ids/0", "sum-u1", "sum-u2"],
        "{by_id:#?}"
    );
    for (id, runs) in &by_id {
        assert_eq!(runs.len(), 2, "{id}: {runs:?}");
        assert_ne!(runs[0], runs[1], "{id}: two fires, two runs");
    }

    // The store, the API and the CLI find a schedule's runs by that id.
    let engine = kept.last().map(|(e, _)| e.clone()).expect("an executor");
    for (id, runs) in &by_id {
        let listed = engine
            .store()
            .list_runs(&RunFilter {
                schedule: Some(id.clone()),
                limit: 50,
                ..RunFilter::default()
            })
            .await
            .expect("list");
        let mut got: Vec<String> = listed.iter().map(|r| r.id.clone()).collect();
        let mut want = runs.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{id}");
        assert!(
            listed
                .iter()
                .all(|r| r.schedule_id.as_deref() == Some(id.as_str())),
            "{listed:?}"
        );
    }
    let state = Arc::new(runner::web::AppState {
        exec: engine.clone(),
        daemon: None,
        token: None,
        metrics_public: false,
        metrics: engine.metrics(),
        public_url: "http://127.0.0.1:9".into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(runner::web::serve(
        listener,
        runner::web::router(state),
        runner::web::Limits::default(),
        std::future::pending(),
    ));
    let api_base = base.clone();
    let sum_u2 = by_id["sum-u2"].clone();
    let first_file_run = by_id["sched-ids/0"][0].clone();
    tokio::task::spawn_blocking(move || {
        let get = |path: &str| {
            let r =
                http_request("GET", &format!("{api_base}/api/v1{path}"), &[], None).expect("GET");
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            r.json()
        };
        let listed = get("/runs?schedule=sum-u2");
        let mut got: Vec<&str> = listed
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        got.sort();
        let mut want: Vec<&str> = sum_u2.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(got, want, "{listed:#}");
        assert_eq!(get("/runs?schedule=sum-u3"), json!([]));
        let run = get(&format!("/runs/{first_file_run}"));
        assert_eq!(run["schedule_id"], "sched-ids/0", "{run:#}");
    })
    .await
    .expect("API checks");
    server.abort();

    let out = runner_cmd()
        .args(["runs", "--json", "--schedule", "sched-ids/0", "--db"])
        .arg(&db)
        .stdin(Stdio::null())
        .output()
        .expect("run runner");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["schedule_id"].as_str())
        .collect();
    assert_eq!(ids, ["sched-ids/0", "sched-ids/0"], "{listed:#}");
}
