//! The SQLite backend against real database files.

use super::tx::RunCache;
use super::writer::{Command, Job, Reply, WriterState, process_batch};
use super::*;
use crate::engine::{self, NewRun, Run, RunStatus, StepStatus, Trigger};
use crate::store::types::{RunFilter, Version};
use rusqlite::params;

/// How the schema before version 8 wrote times.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

const SOURCE: &str =
    "name: one\nsteps:\n  - id: one\n    http:\n      url: http://127.0.0.1:9/one\n";

/// Creates and starts run `id` of the workflow in `source`.
async fn start(store: &SqliteStore, source: &str, id: &str) -> Applied {
    let wf = crate::workflow::check_file("wf.yaml", source).expect("checks");
    let version = Version::new("wf.yaml", source, wf);
    let new = NewRun {
        id: id.into(),
        version: version.hash.clone(),
        trigger: Trigger::Api,
        input: serde_json::json!({}),
        scheduled_for: None,
        schedule_id: None,
    };
    let request = NewRunRequest {
        version,
        new,
        idempotency_key: None,
        slot: None,
        start: true,
        concurrency_key: None,
        parent: None,
    };
    store.start_run(request, Utc::now()).await.expect("starts")
}

/// A database written by the previous schema (version 4): an unfinished run with events
/// numbered globally, a done and a pending outbox row.
fn version_4_database(path: &Path) -> String {
    let mut c = Connection::open(path).expect("open");
    for (i, m) in MIGRATIONS.iter().take(4).enumerate() {
        let tx = c.transaction().expect("tx");
        tx.execute_batch(m).expect("migration");
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .expect("user_version");
        tx.commit().expect("commit");
    }
    let version = Version::new(
        "one.yaml",
        SOURCE,
        crate::workflow::check_file("one.yaml", SOURCE).expect("checks"),
    );
    let now = Utc::now();
    let run = Run::new(
        &version.workflow,
        NewRun {
            id: "r1".into(),
            version: version.hash.clone(),
            trigger: Trigger::Api,
            input: serde_json::json!({}),
            scheduled_for: None,
            schedule_id: None,
        },
        now,
    );
    let (run, effects) = engine::decide(&version.workflow, &run, &Event::Started, now);
    assert_eq!(effects.len(), 1);
    c.execute(
        "INSERT INTO workflow_versions VALUES (?1, 'one', 'one.yaml', ?2, ?3)",
        params![version.hash, SOURCE, ts(now)],
    )
    .expect("version");
    c.execute(
        "INSERT INTO runs(id, workflow, version, status, trigger, created_at, updated_at, state) VALUES ('r1', 'one', ?1, 'running', 'api', ?2, ?2, ?3)",
        params![version.hash, ts(now), serde_json::to_string(&run).expect("json")],
    )
    .expect("run");
    for (seq, run_id, kind) in [
        (7, "r1", "created"),
        (8, "r0", "created"),
        (9, "r1", "started"),
    ] {
        c.execute(
            "INSERT INTO events(seq, run_id, at, kind, data) VALUES (?1, ?2, ?3, ?4, '{}')",
            params![seq, run_id, ts(now), kind],
        )
        .expect("event");
    }
    let effect = serde_json::to_string(&effects[0].clone()).expect("json");
    c.execute(
        "INSERT INTO outbox(id, run_id, effect, created_at, done_at) VALUES (3, 'r1', ?1, ?2, ?2), (5, 'r1', ?1, ?2, NULL)",
        params![effect, ts(now)],
    )
    .expect("outbox");
    c.execute(
        "INSERT INTO attempts(run_id, step, attempt, started_at, outcome) VALUES ('r1', 'one', 1, ?1, 'retry'), ('r1', 'gone', 1, ?1, 'succeeded')",
        params![ts(now - chrono::Duration::seconds(1))],
    )
    .expect("attempts");
    version.hash
}

#[tokio::test]
async fn a_version_4_database_migrates_and_its_pending_work_and_records_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    version_4_database(&path);
    let store = SqliteStore::open(&path).expect("migrates");

    let pending = store.pending_effects().expect("outbox");
    assert_eq!(
        pending.len(),
        1,
        "only the pending row survives: {pending:?}"
    );
    assert_eq!((pending[0].run_id.as_str(), pending[0].id), ("r1", -5));
    let seqs: Vec<i64> = store
        .events("r1")
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [7, 9]);

    let event = Event::AttemptSucceeded {
        step: "one".into(),
        attempt: 1,
        output: serde_json::json!({"status": 200}),
        item: None,
    };
    let record = AttemptRecord {
        step: "one".into(),
        attempt: 1,
        started_at: Some(Utc::now()),
        finished_at: Some(Utc::now()),
        status: Some(200),
        outcome: crate::store::AttemptResult::Succeeded,
        ..AttemptRecord::default()
    };
    let applied = store
        .apply("r1", event, Utc::now(), Some(record), Some(pending[0].id))
        .await
        .expect("applies");
    // Records from before version 6 are still read; a newer record of the same attempt wins.
    let attempts: Vec<(String, u32, String)> = store
        .attempts("r1")
        .expect("attempts")
        .into_iter()
        .map(|a| (a.step, a.attempt, a.outcome.as_str().to_string()))
        .collect();
    assert_eq!(
        attempts,
        [
            ("gone".into(), 1, "succeeded".into()),
            ("one".into(), 1, "succeeded".into())
        ]
    );
    assert_eq!(applied.run.status, RunStatus::Succeeded);
    assert_eq!(applied.run.steps[0].status, StepStatus::Succeeded);
    assert!(store.pending_effects().expect("outbox").is_empty());
    let kinds: Vec<(i64, String)> = store
        .events("r1")
        .expect("events")
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect();
    assert_eq!(kinds.last(), Some(&(10, "attempt_succeeded".to_string())));
}

/// Runs are listed newest first by creation (rowid) order, not by id, with the filters and
/// the limit applied.
#[tokio::test]
async fn runs_are_listed_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("list.db")).expect("opens");
    for id in ["z-first", "a-second", "m-third"] {
        start(&store, SOURCE, id).await;
    }
    let list = |filter: RunFilter| -> Vec<String> {
        store
            .list_runs(&filter)
            .expect("lists")
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(
        list(RunFilter::default()),
        ["m-third", "a-second", "z-first"]
    );
    assert_eq!(
        list(RunFilter {
            limit: 2,
            ..RunFilter::default()
        }),
        ["m-third", "a-second"]
    );
    assert_eq!(
        list(RunFilter {
            workflow: Some("one".into()),
            status: Some(RunStatus::Running),
            limit: 0,
            ..RunFilter::default()
        }),
        ["m-third", "a-second", "z-first"]
    );
    assert!(
        list(RunFilter {
            workflow: Some("other".into()),
            ..RunFilter::default()
        })
        .is_empty()
    );
}

/// A batch is first tried without savepoints; when one change in it fails, the batch runs
/// again with a savepoint per change, and the failure undoes only that change.
#[tokio::test]
async fn a_failing_change_in_a_batch_undoes_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("batch.db");
    let store = SqliteStore::open(&path).expect("opens");
    start(&store, SOURCE, "run-1").await;
    // The batch as the writer thread would take it, on a connection of its own.
    let conn = Connection::open(&path).expect("opens");
    configure(&conn).expect("configures");
    let mut state = WriterState {
        conn,
        cache: RunCache::default(),
        versions: Versions::default(),
    };
    let cancel = |run_id: &str| Job::Apply {
        change: Box::new(ApplyEvent {
            run_id: run_id.into(),
            event: Event::CancelRequested { reason: None },
            data: "{}".into(),
            attempt: None,
            done_effect: None,
        }),
        now: Utc::now(),
    };
    let (kv_tx, kv_rx) = oneshot::channel();
    let (missing_tx, missing_rx) = oneshot::channel();
    let (cancel_tx, cancel_rx) = oneshot::channel();
    let batch = vec![
        Command {
            job: Job::Write(Box::new(|c| {
                c.execute("INSERT INTO kv(key, value) VALUES ('k', 'v')", [])
                    .map(|_| Box::new(()) as Box<dyn Any + Send>)
                    .map_err(sql("writing settings"))
            })),
            reply: Reply::Any(kv_tx),
        },
        Command {
            job: cancel("no-such-run"),
            reply: Reply::Applied(missing_tx),
        },
        Command {
            job: cancel("run-1"),
            reply: Reply::Applied(cancel_tx),
        },
    ];
    process_batch(&mut state, batch);
    let conn = &state.conn;
    kv_rx
        .await
        .expect("a reply")
        .expect("the setting is written");
    let missing = missing_rx.await.expect("a reply");
    assert!(
        matches!(missing, Err(StoreError::NoSuchRun(ref id)) if id == "no-such-run"),
        "{missing:?}"
    );
    let cancelled = cancel_rx.await.expect("a reply").expect("cancels");
    assert_eq!(cancelled.run.status, RunStatus::Cancelled);
    assert!(conn.is_autocommit(), "the transaction is closed");
    assert_eq!(store.setting("k").expect("reads").as_deref(), Some("v"));
    let run = store.get_run("run-1").expect("reads").expect("the run");
    assert_eq!(run.status, RunStatus::Cancelled);
    let kinds: Vec<String> = store
        .events("run-1")
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["created", "started", "cancel_requested"]);
}

/// Outbox ids stay unique within a run across many transitions, and marking one done
/// removes that row only.
#[tokio::test]
async fn effects_get_ids_that_are_never_reused_and_done_rows_leave_the_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("new.db")).expect("opens");
    let mut ids = Vec::new();
    for n in 0..3 {
        let applied = start(&store, SOURCE, &format!("run-{n}")).await;
        let id = applied.effects[0].0.expect("an outbox row");
        ids.push((applied.run.id.clone(), id));
    }
    assert_eq!(store.pending_effects().expect("outbox").len(), 3);
    let (run, id) = ids[1].clone();
    store.mark_done(&run, id).await.expect("done");
    let left: Vec<String> = store
        .pending_effects()
        .expect("outbox")
        .into_iter()
        .map(|p| p.run_id)
        .collect();
    assert_eq!(left, ["run-0", "run-2"]);
    // A cancel ends run-0: its outbox closes, and its events keep counting from where they were.
    let applied = store
        .apply(
            "run-0",
            Event::CancelRequested { reason: None },
            Utc::now(),
            None,
            None,
        )
        .await
        .expect("cancels");
    assert!(applied.run.status.is_terminal());
    let left: Vec<String> = store
        .pending_effects()
        .expect("outbox")
        .into_iter()
        .map(|p| p.run_id)
        .collect();
    assert_eq!(left, ["run-2"]);
    let seqs: Vec<i64> = store
        .events("run-0")
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

/// Two processes on one file: each writer drops its cached states when the other has
/// committed (`PRAGMA data_version`), so a change made by the other is never overwritten
/// with a stale state.
#[tokio::test]
async fn a_writer_never_uses_a_state_another_process_has_changed() {
    const TWO: &str = "name: two\nsteps:\n  - id: one\n    http:\n      url: http://127.0.0.1:9/one\n  - id: two\n    http:\n      url: http://127.0.0.1:9/two\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let (a, b) = (
        SqliteStore::open(&path).expect("a"),
        SqliteStore::open(&path).expect("b"),
    );
    start(&a, TWO, "shared").await;
    let ok = |step: &str| Event::AttemptSucceeded {
        step: step.into(),
        attempt: 1,
        output: serde_json::json!({"status": 200}),
        item: None,
    };
    let after_b = b
        .apply("shared", ok("one"), Utc::now(), None, None)
        .await
        .expect("b applies");
    assert_eq!(after_b.run.steps[1].status, StepStatus::Running);
    let after_a = a
        .apply("shared", ok("two"), Utc::now(), None, None)
        .await
        .expect("a applies");
    assert_eq!(
        after_a.run.status,
        RunStatus::Succeeded,
        "a used a stale state: {:?}",
        after_a.run
    );
    let seqs: Vec<i64> = a
        .events("shared")
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

/// A flow-control slot is the call's own outbox row: it is in flight once admitted and free
/// once the row goes (here: the run is cancelled), and an idle key is forgotten.
#[tokio::test]
async fn a_flow_control_slot_goes_with_its_effect_and_idle_keys_are_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("flow.db")).expect("opens");
    let limits = crate::flow::Limits {
        parallelism: Some(1),
        rate: None,
        period: std::time::Duration::from_secs(1),
    };
    let ask = |run: &str, effect: i64| crate::store::FlowAsk {
        run_id: run.into(),
        effect_id: effect,
        key: "k".into(),
        limits,
    };
    let a = start(&store, SOURCE, "run-a").await;
    let b = start(&store, SOURCE, "run-b").await;
    let (ea, eb) = (a.effects[0].0.unwrap(), b.effects[0].0.unwrap());
    let now = Utc::now();
    assert_eq!(
        store.flow_admit(ask("run-a", ea), now).await.unwrap(),
        crate::store::FlowAnswer::Admitted
    );
    assert!(matches!(
        store.flow_admit(ask("run-b", eb), now).await.unwrap(),
        crate::store::FlowAnswer::Wait {
            admission: crate::flow::Admission::WhenOneEnds,
            ..
        }
    ));
    let keys = store.flow_keys(now).unwrap();
    assert_eq!((keys[0].in_flight, keys[0].waiting), (1, 1));
    store
        .apply(
            "run-a",
            Event::CancelRequested { reason: None },
            now,
            None,
            None,
        )
        .await
        .expect("cancels");
    assert_eq!(
        store.flow_admit(ask("run-b", eb), now).await.unwrap(),
        crate::store::FlowAnswer::Admitted,
        "the cancelled run's slot went with its outbox row"
    );
    assert_eq!(
        store.flow_admit(ask("run-a", ea), now).await.unwrap(),
        crate::store::FlowAnswer::Gone
    );
    let later = now + chrono::Duration::days(2);
    assert_eq!(
        store.prune_flow_keys(later, later).await.unwrap(),
        0,
        "b is in flight"
    );
    store
        .apply(
            "run-b",
            Event::CancelRequested { reason: None },
            now,
            None,
            None,
        )
        .await
        .expect("cancels");
    assert_eq!(
        store.prune_flow_keys(now, now).await.unwrap(),
        0,
        "asked for just now"
    );
    assert_eq!(store.prune_flow_keys(later, later).await.unwrap(), 1);
    assert!(store.flow_keys(later).unwrap().is_empty());
}
