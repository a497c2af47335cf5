//! The cron scheduler, tested two ways.
//!
//! Virtual clock: the real `Scheduler` (store, engine, registry, slot claims) built in-process on a
//! real SQLite file and a real workflows directory, with `start(now)` called at chosen instants. A
//! restart is a new `Store`, `Engine` and `Scheduler` on the same database file. Slot claims are read
//! with rusqlite from the file (`SELECT schedule, slot, outcome FROM slots`). `start` fires in tasks
//! of their own, so each check polls until the expected claims exist and then waits a little longer
//! to see that no extra claim appears. The runs are left unfinished (no timer loop): only claims,
//! and the runs they created, matter here.
//!
//! Real time: `runner serve` with a `* * * * *` workflow, killed with SIGKILL right after its first
//! fire and restarted at once (about two minutes of wall time, mostly waiting for minute boundaries).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runner::daemon::scheduler::Scheduler;
use runner::registry::Registry;
use runner::runtime::Executor as Engine;
use runner::sign::Keys;
use runner::store::ScheduleSpec;
use runner::store::Store;
use serde_json::{Value, json};

use crate::support::{Daemon, runner_cmd, temp_dir, wait_for, write};

/// How long a check waits for claims that `start` fired in tasks of their own.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a check keeps watching after the expected claims appeared, for extra ones.
const SETTLE: Duration = Duration::from_millis(300);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad time {s}: {e}"))
        .with_timezone(&Utc)
}

/// A claimed slot as stored: (schedule, slot key, outcome).
type Claim = (String, String, String);

/// A workflows directory and a database file; each `scheduler()` is a fresh process's view of them.
struct Rig {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
}

impl Rig {
    fn new(workflows: &[(&str, String)]) -> Rig {
        let tmp = temp_dir();
        let dir = tmp.path().join("workflows");
        std::fs::create_dir(&dir).expect("workflows dir");
        for (name, text) in workflows {
            write(&dir, &format!("{name}.yaml"), text);
        }
        let db = tmp.path().join("runner.db");
        Rig { _tmp: tmp, dir, db }
    }

    fn store(&self) -> Store {
        Store::open(&self.db).expect("open store")
    }

    /// A new store, engine, registry and scheduler on the same files, as after a restart.
    fn scheduler(&self) -> Scheduler {
        self.scheduler_on(self.store())
    }

    fn scheduler_on(&self, store: Store) -> Scheduler {
        self.engine_and_scheduler(store).1
    }

    fn engine_and_scheduler(&self, store: Store) -> (Engine, Scheduler) {
        let engine = runner::testing::executor(
            store,
            Keys {
                current: runner::sign::key_from_random([1; 32]),
                next: runner::sign::key_from_random([2; 32]),
            },
            self.dir.join("outbox"),
        );
        let mut registry = Registry::new(&self.dir);
        let changes = registry.reload();
        assert!(
            changes.refused.is_empty() && changes.errors.is_empty(),
            "the test workflows do not load: {:?} {:?}",
            changes.refused,
            changes.errors
        );
        let metrics = engine.metrics();
        let scheduler = Scheduler::new(engine.clone(), Arc::new(RwLock::new(registry)), metrics);
        (engine, scheduler)
    }

    fn conn(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.db).expect("open db");
        c.busy_timeout(Duration::from_secs(10)).expect("timeout");
        c
    }

    fn claims(&self) -> Vec<Claim> {
        let c = self.conn();
        let mut stmt = c
            .prepare("SELECT schedule, slot, outcome FROM slots ORDER BY schedule, slot")
            .expect("query slots");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("read slots")
            .collect::<Result<_, _>>()
            .expect("read slots")
    }

    /// (status, trigger, input, scheduled_for ms) of every run, keyed by run id.
    fn runs(&self) -> BTreeMap<String, (String, String, Value, Option<i64>)> {
        let c = self.conn();
        let mut stmt = c
            .prepare("SELECT id, status, trigger, state FROM runs")
            .expect("query runs");
        stmt.query_map([], |r| {
            let state: String = r.get(3)?;
            let state: Value = serde_json::from_str(&state).unwrap_or(Value::Null);
            let scheduled = state["scheduled_for"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.timestamp_millis());
            Ok((
                r.get::<_, String>(0)?,
                (r.get(1)?, r.get(2)?, state["input"].clone(), scheduled),
            ))
        })
        .expect("read runs")
        .collect::<Result<_, _>>()
        .expect("read runs")
    }

    /// Waits until there are exactly `n` claims (and no more appear for a moment); returns them.
    async fn settle(&self, n: usize) -> Vec<Claim> {
        let deadline = Instant::now() + CLAIM_TIMEOUT;
        loop {
            let claims = self.claims();
            if claims.len() >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} slot claims within {CLAIM_TIMEOUT:?}, have {}: {claims:#?}",
                claims.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(SETTLE).await;
        let claims = self.claims();
        assert_eq!(
            claims.len(),
            n,
            "expected exactly {n} slot claims: {claims:#?}"
        );
        claims
    }
}

/// A workflow with one schedule and a one-step body that keeps its run unfinished here.
fn workflow(name: &str, cron: &str, zone: Option<&str>, concurrency: &str) -> String {
    let zone = zone
        .map(|z| format!("\n      timezone: {z}"))
        .unwrap_or_default();
    format!(
        "name: {name}\non:\n  schedule:\n    - cron: \"{cron}\"{zone}\nconcurrency:\n{concurrency}\nsteps:\n  - id: nap\n    sleep: 1h\n"
    )
}

fn keys_of(claims: &[Claim], schedule: &str) -> Vec<String> {
    claims
        .iter()
        .filter(|c| c.0 == schedule)
        .map(|c| c.1.clone())
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// (a) restarts, catch-up, each slot at most once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fires_missed_slots_only_inside_the_catchup_window_and_never_twice() {
    let rig = Rig::new(&[
        (
            "nocatch",
            workflow("nocatch", "*/10 * * * *", None, "  overlap: allow_all"),
        ),
        (
            "catch",
            workflow(
                "catch",
                "*/10 * * * *",
                None,
                "  overlap: allow_all\n  catchup_window: 25m",
            ),
        ),
    ]);
    let nocatch = "yaml:nocatch:0";
    let catch = "yaml:catch:0";

    // First start at 10:01: the schedules are new; nothing is owed from before they were seen.
    let mut s = rig.scheduler();
    s.start(t("2026-01-05T10:01:00Z")).await.expect("start");
    rig.settle(0).await;
    drop(s);

    // Down from 10:01 to 11:00:20. Without a window only 11:00 (within the 30 s grace) fires; with
    // 25m, 10:40, 10:50 and 11:00 (10:10 to 10:30 are older than the window).
    let mut s = rig.scheduler();
    let now = t("2026-01-05T11:00:20Z");
    s.start(now).await.expect("start");
    let claims = rig.settle(4).await;
    assert_eq!(
        keys_of(&claims, nocatch),
        strs(&["2026-01-05T11:00:00Z@2026-01-05T11:00"])
    );
    assert_eq!(
        keys_of(&claims, catch),
        strs(&[
            "2026-01-05T10:40:00Z@2026-01-05T10:40",
            "2026-01-05T10:50:00Z@2026-01-05T10:50",
            "2026-01-05T11:00:00Z@2026-01-05T11:00",
        ])
    );
    assert!(claims.iter().all(|c| c.2 == "started"), "{claims:#?}");
    assert_eq!(rig.runs().len(), 4);

    // `start` again at the same instant, on the same scheduler and on a new one: nothing new.
    s.start(now).await.expect("start again");
    assert_eq!(rig.settle(4).await, claims);
    drop(s);
    let mut s = rig.scheduler();
    s.start(now).await.expect("start after restart");
    assert_eq!(rig.settle(4).await, claims);
    drop(s);
    // Later within the grace of 11:00: still nothing new.
    let mut s = rig.scheduler();
    s.start(t("2026-01-05T11:00:29Z")).await.expect("start");
    assert_eq!(rig.settle(4).await, claims);
    drop(s);
    assert_eq!(rig.runs().len(), 4, "a slot created a second run");

    // Down again until 11:30:10: 11:10 is 20m10s old (inside 25m), 11:20 missed, 11:30 on time.
    let mut s = rig.scheduler();
    s.start(t("2026-01-05T11:30:10Z")).await.expect("start");
    let claims = rig.settle(8).await;
    assert_eq!(
        keys_of(&claims, nocatch),
        strs(&[
            "2026-01-05T11:00:00Z@2026-01-05T11:00",
            "2026-01-05T11:30:00Z@2026-01-05T11:30",
        ])
    );
    assert_eq!(
        keys_of(&claims, catch),
        strs(&[
            "2026-01-05T10:40:00Z@2026-01-05T10:40",
            "2026-01-05T10:50:00Z@2026-01-05T10:50",
            "2026-01-05T11:00:00Z@2026-01-05T11:00",
            "2026-01-05T11:10:00Z@2026-01-05T11:10",
            "2026-01-05T11:20:00Z@2026-01-05T11:20",
            "2026-01-05T11:30:00Z@2026-01-05T11:30",
        ])
    );
    // Every run is a scheduled one for the slot it claimed.
    let runs = rig.runs();
    assert_eq!(runs.len(), 8);
    assert!(runs.values().all(|r| r.1 == "schedule" && r.3.is_some()));
}

// ---------------------------------------------------------------------------------------------
// (b) daylight-saving time

/// A schedule seen at `seen`, then a restart at `now` with a catch-up window covering the night:
/// the claimed slot keys, oldest first.
async fn dst_night(cron: &str, zone: &str, seen: &str, now: &str, window: &str) -> Vec<String> {
    let rig = Rig::new(&[(
        "dst",
        workflow(
            "dst",
            cron,
            Some(zone),
            &format!("  overlap: allow_all\n  catchup_window: {window}"),
        ),
    )]);
    let mut s = rig.scheduler();
    s.start(t(seen)).await.expect("start");
    rig.settle(0).await;
    drop(s);
    let mut s = rig.scheduler();
    s.start(t(now)).await.expect("start");
    // Wait for at least one claim, then for the rest to settle.
    let deadline = Instant::now() + CLAIM_TIMEOUT;
    while rig.claims().is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing fired for {cron} in {zone}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut claims = rig.claims();
    loop {
        tokio::time::sleep(SETTLE).await;
        let again = rig.claims();
        if again == claims {
            break;
        }
        claims = again;
    }
    assert!(
        claims
            .iter()
            .all(|c| c.0 == "yaml:dst:0" && c.2 == "started"),
        "{claims:#?}"
    );
    // A restart at the same instant fires nothing again.
    drop(s);
    let mut s = rig.scheduler();
    s.start(t(now)).await.expect("start");
    assert_eq!(rig.settle(claims.len()).await, claims);
    assert_eq!(rig.runs().len(), claims.len());
    // Claims in the order the slots fire (by instant, then wall-clock time).
    let mut keys: Vec<String> = claims.into_iter().map(|c| c.1).collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_new_york_spring_forward_fires_both_gap_slots_at_the_first_instant_after_the_gap() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00Z.
    let keys = dst_night(
        "0,30 2 * * *",
        "America/New_York",
        "2026-03-08T05:00:00Z",
        "2026-03-08T07:10:00Z",
        "3h",
    )
    .await;
    assert_eq!(
        keys,
        strs(&[
            "2026-03-08T07:00:00Z@2026-03-08T02:00",
            "2026-03-08T07:00:00Z@2026-03-08T02:30",
        ])
    );
    // An elapsed schedule fires nothing in the gap.
    let keys = dst_night(
        "*/30 * * * *",
        "America/New_York",
        "2026-03-08T06:10:00Z",
        "2026-03-08T07:40:00Z",
        "3h",
    )
    .await;
    assert_eq!(
        keys,
        strs(&[
            "2026-03-08T06:30:00Z@2026-03-08T01:30",
            "2026-03-08T07:00:00Z@2026-03-08T03:00",
            "2026-03-08T07:30:00Z@2026-03-08T03:30",
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_new_york_fall_back_fires_a_fixed_time_once_and_an_elapsed_schedule_in_both_passes() {
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST at 06:00Z; 01:00–02:00 happens twice.
    let keys = dst_night(
        "30 1 * * *",
        "America/New_York",
        "2026-11-01T04:00:00Z",
        "2026-11-01T07:00:00Z",
        "4h",
    )
    .await;
    assert_eq!(keys, strs(&["2026-11-01T05:30:00Z@2026-11-01T01:30"]));
    let keys = dst_night(
        "*/30 * * * *",
        "America/New_York",
        "2026-11-01T04:50:00Z",
        "2026-11-01T07:01:00Z",
        "4h",
    )
    .await;
    assert_eq!(
        keys,
        strs(&[
            "2026-11-01T05:00:00Z@2026-11-01T01:00",
            "2026-11-01T05:30:00Z@2026-11-01T01:30",
            "2026-11-01T06:00:00Z@2026-11-01T01:00",
            "2026-11-01T06:30:00Z@2026-11-01T01:30",
            "2026-11-01T07:00:00Z@2026-11-01T02:00",
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_berlin_both_transitions() {
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00Z.
    let keys = dst_night(
        "0,30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T23:30:00Z",
        "2026-03-29T01:10:00Z",
        "3h",
    )
    .await;
    assert_eq!(
        keys,
        strs(&[
            "2026-03-29T01:00:00Z@2026-03-29T02:00",
            "2026-03-29T01:00:00Z@2026-03-29T02:30",
        ])
    );
    let keys = dst_night(
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-03-29T00:10:00Z",
        "2026-03-29T01:40:00Z",
        "3h",
    )
    .await;
    assert_eq!(
        keys,
        strs(&[
            "2026-03-29T00:30:00Z@2026-03-29T01:30",
            "2026-03-29T01:00:00Z@2026-03-29T03:00",
            "2026-03-29T01:30:00Z@2026-03-29T03:30",
        ])
    );
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00Z; 02:00–03:00 happens twice.
    let keys = dst_night(
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T23:00:00Z",
        "2026-10-25T02:10:00Z",
        "4h",
    )
    .await;
    assert_eq!(keys, strs(&["2026-10-25T00:30:00Z@2026-10-25T02:30"]));
    let keys = dst_night(
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-10-24T23:50:00Z",
        "2026-10-25T01:40:00Z",
        "4h",
    )
    .await;
    assert_eq!(
        keys,
        strs(&[
            "2026-10-25T00:00:00Z@2026-10-25T02:00",
            "2026-10-25T00:30:00Z@2026-10-25T02:30",
            "2026-10-25T01:00:00Z@2026-10-25T02:00",
            "2026-10-25T01:30:00Z@2026-10-25T02:30",
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// (c) overlap

/// Fires the 10:10, 10:20 and 10:30 slots of a `*/10` schedule, each from a new scheduler, waiting
/// for each claim before the next. Returns the claims and the runs.
async fn three_slots(
    overlap: &str,
) -> (
    Vec<Claim>,
    BTreeMap<String, (String, String, Value, Option<i64>)>,
) {
    let rig = Rig::new(&[(
        "ov",
        workflow("ov", "*/10 * * * *", None, &format!("  overlap: {overlap}")),
    )]);
    let mut s = rig.scheduler();
    s.start(t("2026-01-05T10:01:00Z")).await.expect("start");
    rig.settle(0).await;
    for (i, now) in [
        "2026-01-05T10:10:05Z",
        "2026-01-05T10:20:05Z",
        "2026-01-05T10:30:05Z",
    ]
    .iter()
    .enumerate()
    {
        let mut s = rig.scheduler();
        s.start(t(now)).await.expect("start");
        rig.settle(i + 1).await;
    }
    (rig.claims(), rig.runs())
}

fn outcomes(claims: &[Claim]) -> Vec<(&str, &str)> {
    claims
        .iter()
        .map(|c| (&c.1[..20], c.2.as_str()))
        .collect::<Vec<_>>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_overlap_skip_records_skipped_slots_while_a_run_is_going() {
    let (claims, runs) = three_slots("skip").await;
    assert_eq!(
        outcomes(&claims),
        [
            ("2026-01-05T10:10:00Z", "started"),
            ("2026-01-05T10:20:00Z", "skipped_overlap"),
            ("2026-01-05T10:30:00Z", "skipped_overlap"),
        ]
    );
    assert_eq!(runs.len(), 1, "{runs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_overlap_buffer_one_queues_one_run_and_skips_the_next() {
    let (claims, runs) = three_slots("buffer_one").await;
    assert_eq!(
        outcomes(&claims),
        [
            ("2026-01-05T10:10:00Z", "started"),
            ("2026-01-05T10:20:00Z", "queued"),
            ("2026-01-05T10:30:00Z", "skipped_overlap"),
        ]
    );
    let mut statuses: Vec<&str> = runs.values().map(|r| r.0.as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(
        statuses.contains(&"pending"),
        "the buffered run is queued (pending): {runs:#?}"
    );
    assert!(
        statuses.iter().any(|s| *s != "pending"),
        "the first run is going: {runs:#?}"
    );
    let queued = runs
        .values()
        .find(|r| r.0 == "pending")
        .expect("queued run");
    assert_eq!(queued.3, Some(t("2026-01-05T10:20:00Z").timestamp_millis()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_buffered_run_starts_when_the_running_one_ends() {
    // Slots in the future of the real clock: the scheduler's real-time loop runs here too, and
    // must not fire them by itself.
    let rig = Rig::new(&[(
        "ov",
        workflow("ov", "*/10 * * * *", None, "  overlap: buffer_one"),
    )]);
    let mut s = rig.scheduler();
    s.start(t("2030-01-07T10:01:00Z")).await.expect("start");
    rig.settle(0).await;
    for (i, now) in ["2030-01-07T10:10:05Z", "2030-01-07T10:20:05Z"]
        .iter()
        .enumerate()
    {
        let mut s = rig.scheduler();
        s.start(t(now)).await.expect("start");
        rig.settle(i + 1).await;
    }
    let runs = rig.runs();
    let (first, _) = runs
        .iter()
        .find(|(_, r)| r.0 != "pending")
        .expect("a started run");
    let (queued, _) = runs
        .iter()
        .find(|(_, r)| r.0 == "pending")
        .expect("a queued run");

    // A restarted daemon: the queued run waits while the first is going, and starts (from the
    // scheduler's loop) once the first has ended.
    let (engine, mut s) = rig.engine_and_scheduler(rig.store());
    s.start(t("2030-01-07T10:20:06Z")).await.expect("start");
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let lp = tokio::spawn(s.run(rx));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(rig.runs()[queued].0, "pending");
    engine
        .apply(
            first,
            runner::engine::machine::Event::CancelRequested {
                reason: Some("test".into()),
            },
        )
        .await
        .expect("cancel");
    let deadline = Instant::now() + CLAIM_TIMEOUT;
    loop {
        let runs = rig.runs();
        if runs[queued].0 != "pending" {
            assert_eq!(runs[first].0, "cancelled");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queued run did not start after the first ended: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lp.abort();
    assert_eq!(rig.claims().len(), 2, "{:#?}", rig.claims());
}

/// After downtime, the missed slots that a catch-up window allows must not displace the on-time
/// slot: with `skip` (the default) and `buffer_one`, the stale 20:01–20:06 runs used to take the
/// schedule's one place and the on-time 20:07 was skipped (or queued behind them). Now 20:07
/// starts and the missed slots are recorded as superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_catch_up_never_displaces_the_on_time_slot() {
    let rig = Rig::new(&[
        (
            "skip",
            workflow("skip", "* * * * *", None, "  catchup_window: 10m"),
        ),
        (
            "one",
            workflow(
                "one",
                "* * * * *",
                None,
                "  overlap: buffer_one\n  catchup_window: 10m",
            ),
        ),
    ]);
    let mut s = rig.scheduler();
    s.start(t("2026-01-05T20:00:40Z")).await.expect("start");
    rig.settle(0).await;
    drop(s);
    // Down until 20:07:10: 20:01 to 20:06 are missed (inside the window), 20:07 is on time.
    let mut s = rig.scheduler();
    s.start(t("2026-01-05T20:07:10Z")).await.expect("start");
    let claims = rig.settle(14).await;
    for schedule in ["yaml:skip:0", "yaml:one:0"] {
        let mine: Vec<(&str, &str)> = claims
            .iter()
            .filter(|c| c.0 == schedule)
            .map(|c| (&c.1[11..16], c.2.as_str()))
            .collect();
        assert_eq!(
            mine,
            [
                ("20:01", "skipped_superseded"),
                ("20:02", "skipped_superseded"),
                ("20:03", "skipped_superseded"),
                ("20:04", "skipped_superseded"),
                ("20:05", "skipped_superseded"),
                ("20:06", "skipped_superseded"),
                ("20:07", "started"),
            ],
            "{schedule}"
        );
    }
    let runs = rig.runs();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(
        runs.values()
            .all(|r| r.3 == Some(t("2026-01-05T20:07:00Z").timestamp_millis())),
        "{runs:#?}"
    );
    drop(s);
    // A restart later does not fire the superseded slots.
    let mut s = rig.scheduler();
    s.start(t("2026-01-05T20:07:20Z")).await.expect("start");
    assert_eq!(rig.settle(14).await, claims);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_overlap_allow_all_starts_every_slot() {
    let (claims, runs) = three_slots("allow_all").await;
    assert!(claims.iter().all(|c| c.2 == "started"), "{claims:#?}");
    assert_eq!(runs.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// (d) programmatic schedules

fn api_schedule(
    id: &str,
    cron: &str,
    zone: Option<&str>,
    user: &str,
    paused: bool,
) -> ScheduleSpec {
    ScheduleSpec {
        id: id.into(),
        workflow: "report".into(),
        cron: cron.into(),
        timezone: zone.map(str::to_string),
        input: json!({ "userId": user }),
        paused,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_programmatic_schedules_fire_like_yaml_ones() {
    // `overlap: skip` and hour-long runs: overlap is decided per schedule, so each user's
    // schedule starts its run even while another user's run of the same workflow is going.
    let report = "name: report\ninputs:\n  userId: { type: string, required: true }\nconcurrency:\n  overlap: skip\nsteps:\n  - id: nap\n    sleep: 1h\n";
    let rig = Rig::new(&[("report", report.to_string())]);
    let store = rig.store();
    for s in [
        // Monday 9:00 in Berlin is 07:00Z in summer.
        api_schedule("user-1", "0 9 * * 1", Some("Europe/Berlin"), "u1", false),
        api_schedule("user-2", "0 9 * * 1", Some("Europe/Berlin"), "u2", false),
        api_schedule("user-3", "0 9 * * 1", Some("Europe/Berlin"), "u3", true),
        // 09:00 in New York is 13:00Z: not due at 07:00Z.
        api_schedule("user-4", "0 9 * * 1", Some("America/New_York"), "u4", false),
    ] {
        let (_, created) = store.save_api_schedule(s).await.expect("save schedule");
        assert!(created);
    }
    let mut s = rig.scheduler_on(store);
    s.start(t("2026-06-01T06:00:00Z")).await.expect("start");
    rig.settle(0).await;
    drop(s);

    // Monday 2026-06-01 07:00:03Z: user-1 and user-2 fire; user-3 is paused; user-4 is later.
    let mut s = rig.scheduler();
    s.start(t("2026-06-01T07:00:03Z")).await.expect("start");
    let claims = rig.settle(2).await;
    assert_eq!(
        claims,
        vec![
            (
                "api:user-1".to_string(),
                "2026-06-01T07:00:00Z@2026-06-01T09:00".to_string(),
                "started".to_string()
            ),
            (
                "api:user-2".to_string(),
                "2026-06-01T07:00:00Z@2026-06-01T09:00".to_string(),
                "started".to_string()
            ),
        ]
    );
    let mut inputs: Vec<Value> = rig.runs().values().map(|r| r.2.clone()).collect();
    inputs.sort_by_key(|v| v.to_string());
    assert_eq!(inputs, [json!({"userId": "u1"}), json!({"userId": "u2"})]);
    drop(s);

    // A restart at the same instant fires nothing again; user-4 fires at 13:00Z.
    let mut s = rig.scheduler();
    s.start(t("2026-06-01T07:00:03Z")).await.expect("start");
    rig.settle(2).await;
    drop(s);
    let mut s = rig.scheduler();
    s.start(t("2026-06-01T13:00:01Z")).await.expect("start");
    let claims = rig.settle(3).await;
    assert_eq!(
        keys_of(&claims, "api:user-4"),
        strs(&["2026-06-01T13:00:00Z@2026-06-01T09:00"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_paused_yaml_schedule_does_not_fire_until_resumed_across_restarts() {
    let rig = Rig::new(&[(
        "hourly",
        // A catch-up window wide enough to fire 07:00 late, were it due after the resume.
        workflow(
            "hourly",
            "0 * * * *",
            None,
            "  overlap: allow_all\n  catchup_window: 3h",
        ),
    )]);
    // First seen at 05:30: its slots from then on are due.
    let mut s = rig.scheduler();
    s.start(t("2026-06-01T05:30:00Z")).await.expect("start");
    rig.settle(0).await;
    drop(s);
    let mut s = rig.scheduler();
    s.start(t("2026-06-01T06:00:03Z")).await.expect("start");
    let claims = rig.settle(1).await;
    assert!(
        claims[0].1.starts_with("2026-06-01T06:00:00Z"),
        "{claims:?}"
    );
    drop(s);
    let text = std::fs::read_to_string(rig.dir.join("hourly.yaml")).unwrap();
    let signature = runner::workflow::check_file("hourly.yaml", &text)
        .expect("valid")
        .schedules[0]
        .signature();
    let pause = runner::store::YamlPause {
        workflow: "hourly",
        signature: &signature,
        key: "yaml:hourly:0",
    };
    rig.store()
        .set_yaml_paused(pause, true, t("2026-06-01T06:10:00Z"))
        .await
        .expect("pause");
    // Paused: 07:00 passes without a fire, after a restart too.
    let mut s = rig.scheduler();
    s.start(t("2026-06-01T07:00:03Z")).await.expect("start");
    rig.settle(1).await;
    drop(s);
    rig.store()
        .set_yaml_paused(pause, false, t("2026-06-01T07:30:00Z"))
        .await
        .expect("resume");
    let mut s = rig.scheduler();
    s.start(t("2026-06-01T08:00:03Z")).await.expect("start");
    let claims = rig.settle(2).await;
    assert_eq!(
        claims
            .iter()
            .map(|c| (&c.1[..20], c.2.as_str()))
            .collect::<Vec<_>>(),
        [
            ("2026-06-01T06:00:00Z", "started"),
            ("2026-06-01T08:00:00Z", "started")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon in real time

/// (schedule, slot key, at ms, run id) of every claim.
fn slot_rows(db: &Path) -> Vec<(String, String, i64, Option<String>)> {
    if crate::pg::enabled() {
        return crate::pg::rows(
            &crate::pg::db_arg(db),
            "SELECT schedule, slot, at, coalesce(run_id, '') FROM slots ORDER BY at",
        )
        .into_iter()
        .map(|r| {
            let run = (!r[3].is_empty()).then(|| r[3].clone());
            (r[0].clone(), r[1].clone(), r[2].parse().unwrap_or(0), run)
        })
        .collect();
    }
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let _ = c.busy_timeout(Duration::from_secs(5));
    let Ok(mut stmt) = c.prepare("SELECT schedule, slot, at, run_id FROM slots ORDER BY at") else {
        return Vec::new(); // not migrated yet
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(|rows| rows.collect())
        .unwrap_or_default()
}

fn wait_for_slots(
    db: &Path,
    n: usize,
    timeout: Duration,
    daemon: &Daemon,
) -> Vec<(String, String, i64, Option<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = slot_rows(db);
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} slot claims within {timeout:?}, have {rows:?}\n--- daemon log:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cli_json(args: &[&std::ffi::OsStr]) -> Value {
    let out = runner_cmd()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runner");
    assert!(
        out.status.success(),
        "`runner {args:?}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`runner {args:?}` printed {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ms_of(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.timestamp_millis())
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {v}"))
}

#[test]
fn serve_fires_each_minute_once_across_a_kill_9_and_restart() {
    let tmp = temp_dir();
    let dir = tmp.path().join("workflows");
    std::fs::create_dir(&dir).expect("workflows dir");
    write(
        &dir,
        "tick.yaml",
        "name: tick\non:\n  schedule:\n    - cron: \"* * * * *\"\nsteps:\n  - id: nap\n    sleep: 1s\n",
    );
    let db = tmp.path().join("runner.db");
    let spawned_at = Utc::now().timestamp_millis();
    let mut daemon = Daemon::start(&dir, &db, None);

    // The first fire: the next minute boundary after the daemon started.
    let first = wait_for_slots(&db, 1, Duration::from_secs(75), &daemon);
    daemon.kill9();
    let mut daemon = Daemon::start(&dir, &db, None);
    let (schedule, key, at, run_id) = first[0].clone();
    assert_eq!(schedule, "yaml:tick:0");
    assert_eq!(at % 60_000, 0, "a slot is on a minute boundary: {key}");
    assert!(
        at > spawned_at && at <= spawned_at + 61_000,
        "the first slot after the start fired: {key}"
    );
    let run_id = run_id.expect("the claim names its run");

    // The run: scheduled for the slot, created within a second of it.
    let runs = cli_json(&[
        "runs".as_ref(),
        "--json".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
    ]);
    let listed: Vec<&Value> = runs
        .as_array()
        .expect("runs --json is a list")
        .iter()
        .collect();
    assert_eq!(listed.len(), 1, "{runs:#}");
    assert_eq!(listed[0]["id"], run_id.as_str());
    assert_eq!(listed[0]["trigger"], "schedule");
    let shown = cli_json(&[
        "show".as_ref(),
        run_id.as_ref(),
        "--json".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
    ]);
    assert_eq!(ms_of(&shown["scheduled_for"]), at, "{shown:#}");
    let late = ms_of(&shown["created_at"]) - at;
    assert!(
        (0..=1000).contains(&late),
        "the run was created {late} ms after its slot: {shown:#}"
    );

    // The restarted daemon sees the slot within its grace and must not fire it again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(slot_rows(&db).len(), 1, "{:?}", slot_rows(&db));

    // The next minute fires once.
    let rows = wait_for_slots(&db, 2, Duration::from_secs(70), &daemon);
    std::thread::sleep(Duration::from_secs(2));
    let rows_later = slot_rows(&db);
    assert_eq!(rows, rows_later, "an extra claim appeared");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].2, at + 60_000, "{rows:?}");
    let runs = cli_json(&[
        "runs".as_ref(),
        "--json".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
    ]);
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(2),
        "one run per slot: {runs:#}"
    );
    // The second fire goes through the API as well.
    let second = rows[1].3.clone().expect("run id");
    let api: Value = serde_json::from_str(&crate::support::ureq_get(&format!(
        "{}/api/v1/runs/{second}",
        daemon.base
    )))
    .expect("API answers JSON");
    assert_eq!(ms_of(&api["scheduled_for"]), at + 60_000, "{api:#}");
    let late = ms_of(&api["created_at"]) - (at + 60_000);
    assert!(
        (0..=1000).contains(&late),
        "the second run was created {late} ms after its slot: {api:#}"
    );
    daemon.kill9();
}

#[test]
fn a_yaml_schedule_is_paused_and_resumed_by_the_api_and_the_cli() {
    let tmp = temp_dir();
    let dir = tmp.path().join("workflows");
    std::fs::create_dir(&dir).unwrap();
    write(
        &dir,
        "hourly.yaml",
        &workflow("hourly", "0 * * * *", None, "  overlap: skip"),
    );
    let db = tmp.path().join("pause.db");
    let daemon = Daemon::start(&dir, &db, None);
    let api = daemon.api();
    let schedule = |api: &crate::support::Api| {
        let (status, v) = api.get("/workflows/hourly");
        assert_eq!(status, 200, "{v}");
        v["schedules"][0].clone()
    };
    let before = schedule(&api);
    assert_eq!(before["id"], "hourly/0");
    assert_eq!(before["paused"], false);
    assert_eq!(before["next"].as_array().unwrap().len(), 3);

    let out = runner_cmd()
        .args(["schedule", "pause", "hourly/0", "--server", &daemon.base])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["paused"], true, "{answer}");
    let paused = schedule(&api);
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["next"], json!([]), "no next fire while paused");
    assert!(
        daemon.logs().contains("schedule paused"),
        "the scheduler took it"
    );

    // Kept across a restart.
    drop(daemon);
    let daemon = Daemon::start(&dir, &db, None);
    let api = daemon.api();
    assert_eq!(schedule(&api)["paused"], true);
    let (status, v) = api.post("/workflows/hourly/schedules/0/resume", "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(schedule(&api)["paused"], false);
    assert_eq!(schedule(&api)["next"].as_array().unwrap().len(), 3);

    // A pause follows its schedule, not its place: another schedule put before it is not
    // paused, and it still is.
    let (status, v) = api.post("/workflows/hourly/schedules/0/pause", "");
    assert_eq!(status, 200, "{v}");
    write(
        &dir,
        "hourly.yaml",
        "name: hourly\non:\n  schedule:\n    - cron: \"@daily\"\n    - cron: \"0 * * * *\"\nconcurrency:\n  overlap: skip\nsteps:\n  - id: nap\n    sleep: 1h\n",
    );
    let moved = wait_for(Duration::from_secs(10), "the edit to load", || {
        let (_, v) = api.get("/workflows/hourly");
        (v["schedules"].as_array().map(Vec::len) == Some(2)).then_some(v)
    });
    assert_eq!(moved["schedules"][0]["paused"], false, "{moved:#}");
    assert_eq!(moved["schedules"][1]["cron"], "0 * * * *");
    assert_eq!(moved["schedules"][1]["paused"], true, "{moved:#}");
    let (status, _) = api.post("/workflows/hourly/schedules/1/resume", "");
    assert_eq!(status, 200);

    // Unknown ones are 404s naming what is missing.
    let (status, v) = api.post("/workflows/hourly/schedules/3/pause", "");
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("hourly/3"), "{v}");
    let (status, _) = api.post("/workflows/nope/schedules/0/pause", "");
    assert_eq!(status, 404);
    let (status, _) = api.post("/workflows/hourly/schedules/x/pause", "");
    assert_eq!(status, 404);
}
