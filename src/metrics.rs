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
        self.render_series(name, "", out);
    }

    /// The series of one label set (`labels`: `a="x",b="y"` or empty), without HELP and TYPE.
    fn render_series(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// The most label sets one metric keeps: workflow and step names come from files, but files
/// come and go; past this, new label sets are counted under `workflow="_other"`.
const MAX_SERIES: usize = 500;

/// The label value counted for label sets past [`MAX_SERIES`].
const OTHER: &str = "_other";

/// A family of series keyed by label values, bounded by [`MAX_SERIES`].
struct Family<T> {
    series: Mutex<BTreeMap<Vec<String>, std::sync::Arc<T>>>,
}

impl<T: Default> Family<T> {
    fn new() -> Self {
        Family {
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn get(&self, labels: &[&str]) -> std::sync::Arc<T> {
        let mut series = self.series.lock().expect("metrics lock");
        let key: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        if let Some(s) = series.get(&key) {
            return s.clone();
        }
        let key = if series.len() >= MAX_SERIES {
            labels.iter().map(|_| OTHER.to_string()).collect()
        } else {
            key
        };
        series.entry(key).or_default().clone()
    }

    fn each(&self) -> Vec<(Vec<String>, std::sync::Arc<T>)> {
        let series = self.series.lock().expect("metrics lock");
        series.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// `a="x",b="y"`, values escaped for the text format.
fn label_text(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter_family(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&str],
    family: &Family<AtomicU64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (values, n) in family.each() {
        let _ = writeln!(
            out,
            "{name}{{{}}} {}",
            label_text(names, &values),
            n.load(Ordering::Relaxed)
        );
    }
}

pub struct Metrics {
    /// By workflow and status.
    runs_finished: Family<AtomicU64>,
    /// By workflow.
    runs_started: Family<AtomicU64>,
    /// By workflow and step.
    retries: Family<AtomicU64>,
    /// By workflow and step.
    step_latency: Family<Histogram>,
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
            runs_finished: Family::new(),
            runs_started: Family::new(),
            retries: Family::new(),
            step_latency: Family::new(),
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
    pub fn run_started(&self, workflow: &str) {
        self.runs_started
            .get(&[workflow])
            .fetch_add(1, Ordering::Relaxed);
    }
    pub fn run_finished(&self, workflow: &str, status: &str) {
        self.runs_finished
            .get(&[workflow, status])
            .fetch_add(1, Ordering::Relaxed);
    }
    pub fn retry(&self, workflow: &str, step: &str) {
        self.retries
            .get(&[workflow, step])
            .fetch_add(1, Ordering::Relaxed);
    }
    pub fn attempt_took(&self, workflow: &str, step: &str, seconds: f64) {
        self.step_latency.get(&[workflow, step]).observe(seconds);
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
        counter_family(
            &mut out,
            "runner_runs_started_total",
            "Runs created, by workflow.",
            &["workflow"],
            &self.runs_started,
        );
        counter_family(
            &mut out,
            "runner_runs_finished_total",
            "Runs that reached a terminal status, by workflow and status.",
            &["workflow", "status"],
            &self.runs_finished,
        );
        counter_family(
            &mut out,
            "runner_step_retries_total",
            "Attempts that failed and were scheduled again, by workflow and step.",
            &["workflow", "step"],
            &self.retries,
        );
        let name = "runner_step_attempt_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of HTTP step attempts, by workflow and step.\n# TYPE {name} histogram"
        );
        for (values, h) in self.step_latency.each() {
            h.render_series(name, &label_text(&["workflow", "step"], &values), &mut out);
        }
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

/// The gauges of flow-control keys, one series per key (at most [`MAX_SERIES`]): calls in
/// flight, waiting, started in the key's period, and whether a `Retry-After` holds it closed.
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
    // Keys may come from run input (one per tenant, per order): the busiest MAX_SERIES keys
    // get series of their own, the rest are summed under `_other`.
    let mut rows: Vec<&crate::store::FlowKeyRow> = rows.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse((r.in_flight + r.waiting, r.started_in_period)));
    let (own, rest) = rows.split_at(rows.len().min(MAX_SERIES));
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in own {
            let key = escape(&r.key);
            let _ = writeln!(out, "{name}{{key=\"{key}\"}} {}", value(r));
        }
        if !rest.is_empty() {
            let sum: i64 = rest.iter().map(|r| value(r)).sum();
            let _ = writeln!(out, "{name}{{key=\"{OTHER}\"}} {sum}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_workflow_and_step_and_stay_bounded() {
        let m = Metrics::default();
        m.run_started("report");
        m.run_finished("report", "succeeded");
        m.retry("report", "fetch \"user\"");
        m.attempt_took("report", "fetch", 0.02);
        let text = m.render(&[]);
        assert!(
            text.contains("runner_runs_started_total{workflow=\"report\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("runner_runs_finished_total{workflow=\"report\",status=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "runner_step_retries_total{workflow=\"report\",step=\"fetch \\\"user\\\"\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "runner_step_attempt_seconds_bucket{workflow=\"report\",step=\"fetch\",le=\"0.025\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "runner_step_attempt_seconds_count{workflow=\"report\",step=\"fetch\"} 1"
            ),
            "{text}"
        );
        for i in 0..(MAX_SERIES + 50) {
            m.run_started(&format!("wf-{i}"));
        }
        let text = m.render(&[]);
        let series = text
            .lines()
            .filter(|l| l.starts_with("runner_runs_started_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "bounded, with one `_other`");
        assert!(
            text.contains("runner_runs_started_total{workflow=\"_other\"} 51"),
            "{text}"
        );
    }

    #[test]
    fn flow_keys_past_the_limit_are_summed_under_other() {
        let rows: Vec<crate::store::FlowKeyRow> = (0..MAX_SERIES + 10)
            .map(|i| crate::store::FlowKeyRow {
                key: format!("tenant-{i}"),
                parallelism: Some(4),
                rate: None,
                period_ms: 1000,
                // The busiest keys first keep their own series.
                in_flight: if i < 5 { 3 } else { 1 },
                waiting: 0,
                started_in_period: 0,
                closed_until: None,
            })
            .collect();
        let text = flow_text(&rows);
        let in_flight: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("runner_flow_in_flight{"))
            .collect();
        assert_eq!(in_flight.len(), MAX_SERIES + 1);
        assert!(text.contains("runner_flow_in_flight{key=\"tenant-3\"} 3"));
        assert!(
            text.contains("runner_flow_in_flight{key=\"_other\"} 10"),
            "{text}"
        );
    }
}
