//! Prometheus metrics, rendered by hand in the text exposition format.
//!
//! A handful of counters and histograms do not need the `metrics` crate family; keeping them here
//! keeps the dependency tree smaller (see ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: LATENCY_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct Metrics {
    runs_finished: Mutex<BTreeMap<String, u64>>,
    runs_started: AtomicU64,
    retries: AtomicU64,
    pub step_latency: Histogram,
    pub schedule_lateness: Histogram,
    schedules_fired: AtomicU64,
    schedules_skipped: AtomicU64,
    leases_lost: AtomicU64,
    takeovers: AtomicU64,
    effects_claimed: AtomicU64,
    /// When this node last renewed its lease (ms since the epoch; 0: not a node).
    pub lease_renewed_ms: std::sync::atomic::AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            runs_finished: Mutex::new(BTreeMap::new()),
            runs_started: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            step_latency: Histogram::new(),
            schedule_lateness: Histogram::new(),
            schedules_fired: AtomicU64::new(0),
            schedules_skipped: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            effects_claimed: AtomicU64::new(0),
            lease_renewed_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

impl Metrics {
    pub fn run_started(&self) {
        self.runs_started.fetch_add(1, Ordering::Relaxed);
    }
    pub fn run_finished(&self, status: &str) {
        *self
            .runs_finished
            .lock()
            .expect("metrics lock")
            .entry(status.to_string())
            .or_default() += 1;
    }
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub fn fired(&self, lateness_seconds: f64) {
        self.schedules_fired.fetch_add(1, Ordering::Relaxed);
        self.schedule_lateness.observe(lateness_seconds);
    }
    pub fn skipped(&self) {
        self.schedules_skipped.fetch_add(1, Ordering::Relaxed);
    }
    pub fn lease_lost(&self) {
        self.leases_lost.fetch_add(1, Ordering::Relaxed);
    }
    pub fn takeover(&self) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
    }
    pub fn claimed(&self, n: usize) {
        self.effects_claimed
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    pub fn lease_renewed(&self, at_ms: i64) {
        self.lease_renewed_ms.store(at_ms, Ordering::Relaxed);
    }

    /// The text exposition; `gauges` are (name, help, value) read at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP runner_runs_started_total Runs created and started.\n# TYPE runner_runs_started_total counter\nrunner_runs_started_total {}",
            self.runs_started.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP runner_runs_finished_total Runs that reached a terminal status, by status.\n# TYPE runner_runs_finished_total counter"
        );
        for status in ["succeeded", "failed", "rejected", "cancelled"] {
            let n = self
                .runs_finished
                .lock()
                .expect("metrics lock")
                .get(status)
                .copied()
                .unwrap_or(0);
            let _ = writeln!(out, "runner_runs_finished_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP runner_step_retries_total Attempts that failed and were scheduled again.\n# TYPE runner_step_retries_total counter\nrunner_step_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        self.step_latency.render(
            "runner_step_attempt_seconds",
            "Duration of HTTP step attempts.",
            &mut out,
        );
        self.schedule_lateness.render(
            "runner_schedule_lateness_seconds",
            "Time from a schedule slot (plus jitter) to its run being started.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP runner_schedule_fires_total Schedule slots fired.\n# TYPE runner_schedule_fires_total counter\nrunner_schedule_fires_total {}",
            self.schedules_fired.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP runner_schedule_skips_total Schedule slots skipped by the overlap policy or a missing workflow.\n# TYPE runner_schedule_skips_total counter\nrunner_schedule_skips_total {}",
            self.schedules_skipped.load(Ordering::Relaxed)
        );
        for (name, help, n) in [
            (
                "runner_node_leases_lost_total",
                "Times this node's lease lapsed and it started over (shared database).",
                &self.leases_lost,
            ),
            (
                "runner_node_takeovers_total",
                "Dead nodes whose work this node took over (shared database).",
                &self.takeovers,
            ),
            (
                "runner_node_effects_claimed_total",
                "Effects no live node owned that this node claimed (shared database).",
                &self.effects_claimed,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let renewed = self.lease_renewed_ms.load(Ordering::Relaxed);
        if renewed > 0 {
            let age = (chrono::Utc::now().timestamp_millis() - renewed).max(0) as f64 / 1e3;
            let _ = writeln!(
                out,
                "# HELP runner_node_lease_age_seconds Seconds since this node last renewed its lease.\n# TYPE runner_node_lease_age_seconds gauge\nrunner_node_lease_age_seconds {age}"
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// The gauges of flow-control keys, one series per key: calls in flight, waiting, started in
/// the key's period, and whether a `Retry-After` holds it closed.
pub(crate) fn flow_text(rows: &[crate::store::FlowKeyRow]) -> String {
    let mut out = String::new();
    type Series = (
        &'static str,
        &'static str,
        fn(&crate::store::FlowKeyRow) -> i64,
    );
    let series: [Series; 4] = [
        (
            "runner_flow_in_flight",
            "Calls in flight per flow-control key.",
            |r| r.in_flight,
        ),
        (
            "runner_flow_waiting",
            "Calls waiting for their flow-control key.",
            |r| r.waiting,
        ),
        (
            "runner_flow_started_in_period",
            "Calls of the key started within its period.",
            |r| r.started_in_period,
        ),
        (
            "runner_flow_closed",
            "1 while a 429 or 503 with Retry-After holds the key closed.",
            |r| i64::from(r.closed_until.is_some()),
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in rows {
            let key = r
                .key
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(out, "{name}{{key=\"{key}\"}} {}", value(r));
        }
    }
    out
}
