//! Crash recovery: `kill -9` at random points of `runner run` and `runner resume`, all against one
//! database file, with the real QStash receiver as the endpoint. Afterwards every run must have
//! succeeded, no completed step may have been sent again, an attempt in flight at a crash is recorded
//! as interrupted and sent again as the next attempt (same dedup id, `Upstash-Retried` one higher),
//! and sleeps keep their original deadlines.
//!
//! The kill schedule comes from a seeded RNG; the seed is printed. `CRASH_SEED=<n>` replays a schedule
//! (timing still varies, so a replay is likely, not certain, to hit the same interleaving).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::Value;

use crate::support::{QstashReceiver, receiver_log, runner_cmd, temp_dir, write};

/// Both tests here measure time; they do not run at the same time as each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long any single runner command (other than the final resume) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the final `runner resume` may take to finish everything.
const FINAL_RESUME_TIMEOUT: Duration = Duration::from_secs(60);
fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_millis()).expect("milliseconds fit in i64")
}

/// An RFC 3339 time as milliseconds since the epoch.
fn ms(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// A `runner` process with its output in files; killed when dropped (also when a test panics).
struct Proc {
    label: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    fn spawn<S: AsRef<OsStr>>(logs: &Path, label: &str, args: &[S]) -> Proc {
        let out = logs.join(format!("{label}.out"));
        let err = logs.join(format!("{label}.err"));
        let mut cmd = runner_cmd();
        // Each process serves its approval pages on a free port; the e-mail outbox goes to `logs`.
        for var in [
            "RUNNER_LISTEN",
            "RUNNER_PUBLIC_URL",
            "RUNNER_OUTBOX",
            "RUNNER_MAIL_FROM",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .args(args)
            .current_dir(logs)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn runner");
        Proc {
            label: label.to_string(),
            child,
            out,
            err,
            exited: None,
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits until `deadline` or until the process exits, whichever is first.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }

    /// Waits for the exit, failing the test after `timeout`.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_until(Instant::now() + timeout) {
            Some(s) => s,
            None => panic!(
                "`{}` did not finish within {timeout:?} (hang?)\n{}",
                self.label,
                self.describe()
            ),
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap. Returns the time the process was
    /// known dead, or None when it had already exited by itself.
    fn kill9(&mut self) -> Option<i64> {
        if self.try_wait().is_some() {
            return None;
        }
        self.child.kill().expect("kill -9");
        self.exited = Some(self.child.wait().expect("reap"));
        Some(now_ms())
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!(
            "--- {} stdout:\n{}--- {} stderr:\n{}",
            self.label,
            self.stdout(),
            self.label,
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a short runner command to its end (with a timeout) and returns its stdout.
fn runner_output(logs: &Path, label: &str, args: &[&OsStr]) -> String {
    let mut p = Proc::spawn(logs, label, args);
    let status = p.wait(COMMAND_TIMEOUT);
    assert!(
        status.success(),
        "`{label}` failed: {status}\n{}",
        p.describe()
    );
    p.stdout()
}

fn runner_json(logs: &Path, label: &str, args: &[&OsStr]) -> Value {
    let out = runner_output(logs, label, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("`{label}` printed {out:?}: {e}"))
}

/// Runs the commands of one database, numbering their log files.
struct Runner {
    db: PathBuf,
    logs: PathBuf,
    n: usize,
}

impl Runner {
    fn label(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{:04}-{what}", self.n)
    }

    fn spawn(&mut self, what: &str, args: &[&OsStr]) -> Proc {
        let label = self.label(what);
        let mut all: Vec<&OsStr> = args.to_vec();
        all.push(OsStr::new("--db"));
        all.push(self.db.as_os_str());
        Proc::spawn(&self.logs, &label, &all)
    }

    fn json(&mut self, what: &str, args: &[&OsStr]) -> Value {
        let label = self.label(what);
        let mut all: Vec<&OsStr> = args.to_vec();
        all.push(OsStr::new("--db"));
        all.push(self.db.as_os_str());
        runner_json(&self.logs, &label, &all)
    }

    fn keys(&mut self) -> (String, String) {
        let label = self.label("keys");
        let out = runner_output(
            &self.logs,
            &label,
            &[OsStr::new("keys"), OsStr::new("--db"), self.db.as_os_str()],
        );
        let get = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("`runner keys` printed no {name}: {out:?}"))
                .trim()
                .to_string()
        };
        (
            get("QSTASH_CURRENT_SIGNING_KEY"),
            get("QSTASH_NEXT_SIGNING_KEY"),
        )
    }

    fn runs(&mut self) -> Vec<Value> {
        match self.json(
            "runs",
            &[
                OsStr::new("runs"),
                OsStr::new("--json"),
                OsStr::new("--limit"),
                OsStr::new("1000"),
            ],
        ) {
            Value::Array(a) => a,
            other => panic!("`runner runs --json` printed {other}"),
        }
    }

    fn show(&mut self, id: &str) -> Value {
        self.json(
            "show",
            &[OsStr::new("show"), OsStr::new(id), OsStr::new("--json")],
        )
    }

    /// The state of every unfinished run (taken while no runner process is alive).
    fn snapshot(&mut self) -> HashMap<String, Value> {
        let mut snap = HashMap::new();
        for r in self.runs() {
            if r["status"] != "succeeded" {
                let id = r["id"].as_str().expect("run id").to_string();
                let v = self.show(&id);
                snap.insert(id, v);
            }
        }
        snap
    }
}

fn step<'v>(run: &'v Value, id: &str) -> &'v Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("run {} has no step `{id}`: {run:#}", run["id"]))
}

/// The run id a `runner run` printed, if it got that far.
fn started_id(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let rest = l.strip_prefix("run ")?;
        let (id, tail) = rest.split_once(' ')?;
        tail.starts_with("started").then(|| id.to_string())
    })
}

/// One `kill -9`.
struct Crash {
    /// When the killed process was known dead (ms since the epoch).
    at_ms: i64,
    /// The run the killed process was executing, when known (`runner run` that printed its id);
    /// None for `runner resume` (all runs) or a `runner run` killed before it printed.
    run: Option<String>,
    /// The snapshot taken after this kill, before any runner process started again.
    snapshot: usize,
    label: String,
}

/// The workflows of the chaos test: (file name, text). `{B}` is the receiver's base URL.
const WORKFLOWS: &[(&str, &str)] = &[
    (
        "crash-a.yaml",
        r#"name: crash-a
steps:
  - id: first
    http: { url: "{B}/slow/300", body: { n: 1 } }
  - id: nap
    sleep: 2s
  - id: second
    http: { url: "{B}/slow/800" }
  - id: last
    http: { url: "{B}/ok" }
"#,
    ),
    (
        "crash-b.yaml",
        r#"name: crash-b
steps:
  - id: hello
    http: { url: "{B}/echo", body: { run: "{{ run.id }}" } }
  - id: slow
    http: { url: "{B}/slow/600" }
  - id: nap
    sleep: 3s
  - id: bye
    http: { url: "{B}/slow/400", body: { hello: "{{ steps.hello.body.received.run }}" } }
"#,
    ),
    (
        "crash-c.yaml",
        r#"name: crash-c
steps:
  - id: flaky
    http: { url: "{B}/flaky/1" }
    retry: { limit: 3, backoff: fixed, initial: 400ms }
  - id: slow
    http: { url: "{B}/slow/500" }
  - id: nap
    sleep: 2s
  - id: after
    http: { url: "{B}/echo", body: { from: "{{ steps.slow.status }}" } }
  - id: tail
    http: { url: "{B}/slow/700" }
"#,
    ),
];

/// Sleep steps of the workflows above and their lengths in ms.
fn sleep_ms(workflow: &str, step: &str) -> Option<i64> {
    match (workflow, step) {
        ("crash-a", "nap") | ("crash-c", "nap") => Some(2000),
        ("crash-b", "nap") => Some(3000),
        _ => None,
    }
}

/// Steps that may legitimately need more than one attempt.
fn may_retry(workflow: &str, step: &str) -> bool {
    (workflow, step) == ("crash-c", "flaky")
}

#[test]
fn kill9_at_random_points_loses_no_run_and_repeats_no_completed_step() {
    let _serial = serial();
    let began = Instant::now();
    let (mut rng, seed) = crate::support::chaos_rng("CRASH_SEED", "crash test");

    let dir = temp_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs dir");
    let mut runner = Runner {
        db: dir.path().join("crash.db"),
        logs,
        n: 0,
    };
    let (current, next) = runner.keys();
    let receiver = QstashReceiver::start_with_keys(&current, &next);
    let files: Vec<PathBuf> = WORKFLOWS
        .iter()
        .map(|(name, text)| write(dir.path(), name, &text.replace("{B}", &receiver.base)))
        .collect();

    let mut crashes: Vec<Crash> = Vec::new();
    let mut snapshots: Vec<HashMap<String, Value>> = Vec::new();
    let mut printed: Vec<String> = Vec::new();
    let mut resumes_finished = 0usize;
    const MIN_WAVES: usize = 3;
    const MAX_WAVES: usize = 6;
    const RESUMES_PER_WAVE: usize = 5;
    const TARGET_KILLS: usize = 22;

    for wave in 0..MAX_WAVES {
        if wave >= MIN_WAVES && crashes.len() >= TARGET_KILLS {
            break;
        }
        if began.elapsed() > Duration::from_secs(50) {
            eprintln!("crash test: stopping after {wave} waves to stay within its time budget");
            break;
        }
        // Several `runner run` processes on one database, each killed at a random point.
        let mut procs: Vec<(Proc, Instant)> = Vec::new();
        for f in &files {
            let p = runner.spawn("run", &[OsStr::new("run"), f.as_os_str()]);
            let kill_at = Instant::now() + Duration::from_millis(rng.random_range(50..=1500));
            procs.push((p, kill_at));
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=80)));
        }
        procs.sort_by_key(|(_, at)| *at);
        let first_crash = crashes.len();
        for (p, at) in &mut procs {
            if let Some(status) = p.wait_until(*at) {
                panic!(
                    "`runner run` ended by itself before its kill ({status}); the workflows are longer than that\n{}",
                    p.describe()
                );
            }
            let at_ms = p.kill9().expect("the process was running");
            crashes.push(Crash {
                at_ms,
                run: started_id(&p.stdout()),
                snapshot: usize::MAX,
                label: p.label.clone(),
            });
        }
        for (p, _) in &procs {
            if let Some(id) = started_id(&p.stdout()) {
                printed.push(id);
            }
        }
        snapshots.push(runner.snapshot());
        for c in &mut crashes[first_crash..] {
            c.snapshot = snapshots.len() - 1;
        }

        // `runner resume`, itself killed at random points, until it finishes by itself.
        for _ in 0..RESUMES_PER_WAVE {
            let mut p = runner.spawn("resume", &[OsStr::new("resume")]);
            let kill_at = Instant::now() + Duration::from_millis(rng.random_range(50..=1500));
            if let Some(status) = p.wait_until(kill_at) {
                assert!(
                    status.success(),
                    "`runner resume` ended with {status}\n{}",
                    p.describe()
                );
                resumes_finished += 1;
                break;
            }
            let at_ms = p.kill9().expect("the process was running");
            snapshots.push(runner.snapshot());
            crashes.push(Crash {
                at_ms,
                run: None,
                snapshot: snapshots.len() - 1,
                label: p.label.clone(),
            });
        }
    }

    // The last resume finishes everything.
    let mut last = runner.spawn("resume-final", &[OsStr::new("resume")]);
    let status = last.wait(FINAL_RESUME_TIMEOUT);
    assert!(
        status.success(),
        "the final `runner resume` ended with {status}\n{}",
        last.describe()
    );
    let chaos_time = began.elapsed();

    // ---- verification ----
    let runs = runner.runs();
    let mut finals: BTreeMap<String, Value> = BTreeMap::new();
    for r in &runs {
        let id = r["id"].as_str().expect("id").to_string();
        let v = runner.show(&id);
        finals.insert(id, v);
    }
    for id in &printed {
        assert!(
            finals.contains_key(id),
            "run {id} was started (its id was printed) but is not in the database: a lost run"
        );
    }
    assert!(
        finals.len() >= 3,
        "only {} runs were created before the kills; the test did not exercise much",
        finals.len()
    );
    for (id, run) in &finals {
        assert_eq!(
            run["status"], "succeeded",
            "run {id} did not succeed:\n{run:#}"
        );
    }

    let log = receiver_log(&receiver);
    // Requests by (run, step); every run that sent a request exists.
    let mut requests: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    let mut owner_of_dedup: HashMap<String, (String, String)> = HashMap::new();
    for r in &log {
        let h = &r["headers"];
        assert_eq!(r["valid"], true, "the receiver refused a request: {r:#}");
        let run = h["runner-run-id"]
            .as_str()
            .expect("runner-run-id")
            .to_string();
        let st = h["runner-step"].as_str().expect("runner-step").to_string();
        assert!(
            finals.contains_key(&run),
            "a request was sent for run {run}, which is not in the database: a lost run ({r:#})"
        );
        let dedup = h["upstash-message-id"]
            .as_str()
            .expect("upstash-message-id")
            .to_string();
        let prev = owner_of_dedup
            .entry(dedup.clone())
            .or_insert_with(|| (run.clone(), st.clone()));
        assert_eq!(
            *prev,
            (run.clone(), st.clone()),
            "dedup id {dedup} is used by two steps"
        );
        requests.entry((run, st)).or_default().push(r);
    }

    let mut http_steps = 0usize;
    let mut resent = 0usize;
    let mut sleeps_seen_at_crash = 0usize;
    let mut inflight_at_crash = 0usize;
    for (id, run) in &finals {
        let wf = run["workflow"].as_str().expect("workflow");
        for s in run["steps"].as_array().expect("steps") {
            let sid = s["id"].as_str().expect("step id");
            let what = format!("step `{sid}` of run {id} ({wf})");
            assert_eq!(s["status"], "succeeded", "{what}:\n{s:#}");
            let attempts = s["attempts"].as_u64().expect("attempts");
            let attempt_log = s["attempt_log"].as_array().expect("attempt_log");

            // What the crash snapshots saw of this step must agree with the end.
            let mut wakes = Vec::new();
            for (i, snap) in snapshots.iter().enumerate() {
                let Some(then) = snap.get(id) else { continue };
                let t = step(then, sid);
                match t["status"].as_str().expect("status") {
                    "succeeded" => {
                        for field in [
                            "attempts",
                            "started_at",
                            "finished_at",
                            "output",
                            "attempt_log",
                        ] {
                            assert_eq!(
                                t[field], s[field],
                                "{what} had completed at crash snapshot {i}, then its `{field}` changed: it was done again"
                            );
                        }
                    }
                    "sleeping" => {
                        sleeps_seen_at_crash += 1;
                        wakes.push(t["wake_at"].clone());
                        assert_eq!(
                            t["started_at"], s["started_at"],
                            "{what}: the sleep was started again after crash snapshot {i}"
                        );
                    }
                    "running" => {
                        inflight_at_crash += 1;
                        let n = t["attempts"].as_u64().expect("attempts");
                        assert!(
                            attempt_log.iter().any(|a| a["attempt"] == n),
                            "{what}: attempt {n} was in flight at crash snapshot {i} but was never recorded: {s:#}"
                        );
                    }
                    "retrying" => {
                        let n = t["attempts"].as_u64().expect("attempts");
                        let due = ms(&t["wake_at"]).expect("a retrying step has wake_at");
                        let next = attempt_log
                            .iter()
                            .find(|a| a["attempt"] == n + 1)
                            .unwrap_or_else(|| {
                                panic!(
                                    "{what}: attempt {} after the retry is missing: {s:#}",
                                    n + 1
                                )
                            });
                        assert!(
                            ms(&next["started_at"]).expect("started_at") >= due,
                            "{what}: attempt {} started before its retry time {}",
                            n + 1,
                            t["wake_at"]
                        );
                    }
                    _ => {}
                }
            }

            if let Some(len) = sleep_ms(wf, sid) {
                let started = ms(&s["started_at"]).expect("sleep started_at");
                let finished = ms(&s["finished_at"]).expect("sleep finished_at");
                let deadline = started + len;
                for w in &wakes {
                    assert_eq!(
                        ms(w),
                        Some(deadline),
                        "{what}: wake_at {w} at a crash is not its original deadline (started {} + {len} ms)",
                        s["started_at"]
                    );
                }
                assert!(
                    finished >= deadline,
                    "{what}: woke at {} before its deadline {deadline} ms",
                    s["finished_at"]
                );
                continue;
            }

            // An http step.
            http_steps += 1;
            let dedup = s["dedup_id"].as_str().expect("dedup_id");
            let reqs = requests
                .get(&(id.clone(), sid.to_string()))
                .cloned()
                .unwrap_or_default();
            assert!(!reqs.is_empty(), "{what}: the endpoint saw no request");
            let interrupted: Vec<u64> = attempt_log
                .iter()
                .filter(|a| a["outcome"] == "interrupted")
                .filter_map(|a| a["attempt"].as_u64())
                .collect();
            if !may_retry(wf, sid) {
                assert_eq!(
                    attempts - interrupted.len() as u64,
                    1,
                    "{what}: needed {attempts} attempts ({} interrupted) although its endpoint always answers 2xx:\n{s:#}",
                    interrupted.len()
                );
            }
            let wins: Vec<&Value> = attempt_log
                .iter()
                .filter(|a| a["outcome"] == "succeeded")
                .collect();
            assert_eq!(
                wins.len(),
                1,
                "{what}: not exactly one successful attempt:\n{s:#}"
            );
            assert_eq!(
                wins[0]["attempt"], attempts,
                "{what}: the success is not the last attempt"
            );
            // The step completed when its successful attempt finished; the run state records that
            // a moment later. Take the earlier of the two.
            let done_at = ms(&wins[0]["finished_at"])
                .expect("finished_at")
                .min(ms(&s["finished_at"]).expect("step finished_at"));
            for n in 1..=attempts {
                assert!(
                    attempt_log.iter().any(|a| a["attempt"] == n),
                    "{what}: attempt {n} is not recorded:\n{s:#}"
                );
            }

            let mut by_retried: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
            for r in &reqs {
                let h = &r["headers"];
                assert_eq!(
                    h["upstash-message-id"], dedup,
                    "{what}: wrong Upstash-Message-Id"
                );
                assert_eq!(h["idempotency-key"], dedup, "{what}: wrong Idempotency-Key");
                let retried: u64 = h["upstash-retried"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{what}: bad Upstash-Retried in {r:#}"));
                assert!(
                    retried < attempts,
                    "{what}: a request with Upstash-Retried {retried}, but only {attempts} attempts were made"
                );
                let t = r["time"].as_i64().expect("time");
                assert!(
                    t <= done_at,
                    "{what}: a request (Upstash-Retried {retried}) arrived at {t}, after the step had completed at {} ({done_at}): a completed step was sent again",
                    wins[0]["finished_at"]
                );
                by_retried.entry(retried).or_default().push(t);
            }
            // Each attempt is sent at most once: one caught in flight by a kill is recorded as
            // interrupted and sent again as the next attempt.
            for (retried, times) in &by_retried {
                assert_eq!(
                    times.len(),
                    1,
                    "{what}: attempt {} (Upstash-Retried {retried}) was sent {} times",
                    retried + 1,
                    times.len()
                );
            }
            // An attempt is interrupted only by a kill that caught it in flight.
            for n in &interrupted {
                let explained = crashes.iter().any(|c| {
                    c.run.as_deref().is_none_or(|r| r == id)
                        && snapshots[c.snapshot].get(id).is_some_and(|then| {
                            let t = step(then, sid);
                            t["status"] == "running" && t["attempts"] == *n
                        })
                });
                assert!(
                    explained,
                    "{what}: attempt {n} is recorded as interrupted, but no kill caught it in flight (kills: {:?})",
                    crashes
                        .iter()
                        .map(|c| (c.label.as_str(), c.at_ms))
                        .collect::<Vec<_>>()
                );
                resent += 1;
            }
        }
    }
    assert!(
        sleeps_seen_at_crash > 0,
        "no kill caught a run sleeping; the sleep checks did not run"
    );

    let total = began.elapsed();
    eprintln!(
        "crash test: seed {seed}, {} kills ({} of `runner run`, {} of `runner resume`), {} resumes finished by themselves before the final one, {} runs, {} http steps, {} requests, {} in-flight attempts re-sent, {} steps caught in flight and {} sleeps caught sleeping at crash snapshots; chaos {:.1} s, total {:.1} s",
        crashes.len(),
        crashes.iter().filter(|c| c.label.ends_with("-run")).count(),
        crashes
            .iter()
            .filter(|c| c.label.ends_with("-resume"))
            .count(),
        resumes_finished,
        finals.len(),
        http_steps,
        log.len(),
        resent,
        inflight_at_crash,
        sleeps_seen_at_crash,
        chaos_time.as_secs_f64(),
        total.as_secs_f64()
    );
    assert!(
        crashes.len() >= 20,
        "only {} kills; the test wants at least 20",
        crashes.len()
    );
}

#[test]
fn a_sleep_killed_and_resumed_later_wakes_at_its_original_deadline() {
    let _serial = serial();
    let dir = temp_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs dir");
    let mut runner = Runner {
        db: dir.path().join("sleep.db"),
        logs,
        n: 0,
    };
    let (current, next) = runner.keys();
    let receiver = QstashReceiver::start_with_keys(&current, &next);
    let file = write(
        dir.path(),
        "crash-sleep.yaml",
        &format!(
            r#"name: crash-sleep
steps:
  - id: before
    http: {{ url: "{b}/ok" }}
  - id: nap
    sleep: 3s
  - id: after
    http: {{ url: "{b}/ok" }}
"#,
            b = receiver.base
        ),
    );

    let mut run = runner.spawn("run", &[OsStr::new("run"), file.as_os_str()]);
    // Wait until the run sleeps, then kill it.
    let limit = Instant::now() + Duration::from_secs(20);
    let (id, wake_at, started) = loop {
        assert!(
            Instant::now() < limit,
            "the run did not reach its sleep within 20 s\n{}",
            run.describe()
        );
        if let Some(status) = run.try_wait() {
            panic!(
                "`runner run` ended ({status}) before it was killed\n{}",
                run.describe()
            );
        }
        if let Some(id) = started_id(&run.stdout()) {
            let v = runner.show(&id);
            let nap = step(&v, "nap");
            if nap["status"] == "sleeping" {
                let started = ms(&nap["started_at"]).expect("started_at");
                break (id, nap["wake_at"].clone(), started);
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    };
    // Kill it 700 ms into the sleep and resume 1 s later: a sleep restarted by the resume would
    // then wake at least 1.7 s after the original deadline, and one that kept it wakes on time.
    let kill_at = started + 700;
    while now_ms() < kill_at {
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_at = run.kill9().expect("the run was still sleeping");
    let at_kill = runner.show(&id);
    assert_eq!(at_kill["status"], "sleeping", "{at_kill:#}");
    assert_eq!(step(&at_kill, "nap")["wake_at"], wake_at);
    let deadline = ms(&wake_at).expect("wake_at");
    assert_eq!(deadline - started, 3000, "wake_at is not start + 3 s");

    std::thread::sleep(Duration::from_secs(1));
    let resumed_at = now_ms();
    let mut resume = runner.spawn("resume", &[OsStr::new("resume"), OsStr::new(id.as_str())]);
    let status = resume.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "`runner resume` ended with {status}\n{}",
        resume.describe()
    );
    assert!(
        resume.stdout().contains(&format!("run {id} succeeded")),
        "{}",
        resume.describe()
    );

    let done = runner.show(&id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let nap = step(&done, "nap");
    assert_eq!(nap["status"], "succeeded");
    assert_eq!(
        nap["started_at"],
        step(&at_kill, "nap")["started_at"],
        "the sleep was restarted"
    );
    let finished = ms(&nap["finished_at"]).expect("finished_at");
    let late = finished - deadline;
    eprintln!(
        "sleep test: killed {} ms into a 3 s sleep, resumed {} ms before its deadline, woke {late} ms after it",
        killed_at - started,
        deadline - resumed_at
    );
    assert!(
        finished >= deadline,
        "woke {} ms before the deadline",
        -late
    );
    assert!(
        late < 1500,
        "woke {late} ms after the original deadline (resume started {} ms before it)",
        deadline - resumed_at
    );
    assert!(
        finished < resumed_at + 3000,
        "woke 3 s or more after the resume: the sleep was restarted instead of keeping its deadline"
    );
    // The step after the sleep ran once.
    let after_reqs = receiver_log(&receiver)
        .into_iter()
        .filter(|r| r["headers"]["runner-step"] == "after")
        .count();
    assert_eq!(after_reqs, 1);
}
