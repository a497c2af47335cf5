//! What starts a run and how runs of one schedule overlap: `on` (`schedule`, `webhook`), cron
//! expressions and zones, a schedule's `input`, and `concurrency`.
//!
//! Part of the pure core: no I/O.

use super::Checker;
use super::inputs::Inputs;
use super::refs::{NoSecrets, Scope};
use crate::cron::{CronError, CronSchedule};
use crate::workflow::diagnostic::Code;
use crate::workflow::input::resolve_input;
use crate::workflow::model::*;
use crate::workflow::schema::{CANCEL_ON_KEYS, CONCURRENCY_KEYS, ON_KEYS, SCHEDULE_KEYS};
use crate::workflow::suggest::list;
use crate::workflow::yaml::{Node, Value};

impl Checker<'_> {
    pub(super) fn triggers(
        &mut self,
        node: &Node,
        inputs: &Inputs,
    ) -> (Vec<Schedule>, bool, Vec<String>) {
        let Some(f) = self.fields(node, "on", ON_KEYS, &[]) else {
            return (Vec::new(), false, Vec::new());
        };
        let mut events = Vec::new();
        if let Some(n) = f.get("event") {
            match &n.value {
                Value::Seq(items) => {
                    for item in items {
                        if let Some(e) = self.event_name(item) {
                            if events.contains(&e) {
                                let w = self.width(item);
                                self.error(
                                    item.pos,
                                    w,
                                    Code::InvalidValue,
                                    format!("event `{e}` is listed twice"),
                                    Some("list each event once".into()),
                                );
                            } else {
                                events.push(e);
                            }
                        }
                    }
                }
                _ => self.wrong_type(n, "on.event", "a list of event names"),
            }
        }
        let webhook = f
            .get("webhook")
            .and_then(|n| self.boolean(n, "webhook"))
            .unwrap_or(false);
        let mut schedules = Vec::new();
        if let Some(n) = f.get("schedule") {
            match &n.value {
                Value::Seq(items) => {
                    for item in items {
                        if let Some(s) = self.schedule(item, inputs) {
                            schedules.push(s);
                        }
                    }
                }
                _ => self.wrong_type(n, "on.schedule", "a list of `- cron: …` entries"),
            }
        }
        (schedules, webhook, events)
    }

    /// `cancel_on: [{event, key}]`: keys are templates over `input` and `run`, rendered when
    /// the run starts.
    pub(super) fn cancel_on(&mut self, node: &Node, scope: &Scope) -> Vec<CancelOn> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(
                node,
                "cancel_on",
                "a list of `- event: …` entries with a `key`",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let Some(f) = self.fields(item, "cancel_on entry", CANCEL_ON_KEYS, &["event", "key"])
            else {
                continue;
            };
            let event = f.get("event").and_then(|n| self.event_name(n));
            let key = f.get("key").and_then(|n| {
                let s = self.string(n, "key")?;
                let scope = Scope {
                    no_secrets: Some(NoSecrets::Engine("a `cancel_on` key")),
                    ..*scope
                };
                self.template(n, s, &scope);
                Some(Template(s.to_string()))
            });
            if let (Some(event), Some(key)) = (event, key) {
                out.push(CancelOn { event, key });
            }
        }
        out
    }

    fn schedule(&mut self, node: &Node, inputs: &Inputs) -> Option<Schedule> {
        let f = self.fields(node, "schedule", SCHEDULE_KEYS, &["cron"])?;
        let cron_node = f.get("cron")?;
        // Both checked before either can end the check: every problem is reported.
        let expr = self.nonempty_string(cron_node, "cron");
        let tz_node = f.get("timezone");
        let tz = match tz_node {
            Some(n) => self.nonempty_string(n, "timezone").map(|t| (n, t)),
            None => None,
        };
        if tz_node.is_some() && tz.is_none() {
            return None;
        }
        let input = match f.get("input") {
            Some(n) => {
                if !matches!(n.value, Value::Map(_)) {
                    self.wrong_type(n, "input", "a mapping of input values");
                    return None;
                }
                let v = n.to_json();
                // A value for an input whose declaration has a problem cannot be checked yet.
                let mut checkable = v.clone();
                if let serde_json::Value::Object(m) = &mut checkable {
                    m.retain(|name, _| !inputs.is_broken(name));
                }
                let probe = Workflow {
                    name: String::new(),
                    description: None,
                    schedules: vec![],
                    webhook: false,
                    inputs: inputs.specs.clone(),
                    secrets: vec![],
                    concurrency: Concurrency::default(),
                    steps: vec![],
                    on_failure: vec![],
                    timeout: None,
                    events: vec![],
                    cancel_on: vec![],
                    output: None,
                    retention: Default::default(),
                };
                if let Err(errors) = resolve_input(&probe, &checkable) {
                    let Value::Map(entries) = &n.value else {
                        unreachable!("checked to be a mapping above")
                    };
                    for e in errors {
                        // At the key the message names, when it names one of this input's keys.
                        let (pos, width) = entries
                            .iter()
                            .find(|(k, _)| e.contains(&format!("`{}`", k.name)))
                            .map_or((n.pos, 1), |(k, _)| (k.pos, k.name.chars().count()));
                        self.error(
                            pos,
                            width,
                            Code::InvalidInput,
                            format!("this schedule's input does not match `inputs`: {e}"),
                            Some("a schedule's `input` is its runs' input, checked against `inputs` as an API start is".into()),
                        );
                    }
                }
                v
            }
            None => {
                let missing: Vec<&str> = inputs
                    .specs
                    .iter()
                    .filter(|i| i.required && i.default.is_none())
                    .map(|i| i.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    self.error(
                        node.pos,
                        1,
                        Code::InvalidInput,
                        format!(
                            "this schedule gives no input, but {} required",
                            if missing.len() == 1 {
                                format!("input {} is", list(&missing))
                            } else {
                                format!("inputs {} are", list(&missing))
                            }
                        ),
                        Some(
                            "add `input: { … }` to the schedule, or give the input a `default`"
                                .into(),
                        ),
                    );
                }
                serde_json::json!({})
            }
        };
        // A zone checked alone, when the expression is refused for another reason.
        let check_zone_alone = |this: &mut Self| {
            if let Some((n, t)) = tz
                && let Err(e) = crate::cron::parse_timezone(t)
            {
                this.timezone_error(n, &e);
            }
        };
        let Some(expr) = expr else {
            check_zone_alone(self);
            return None;
        };
        match CronSchedule::parse(expr, tz.map(|(_, t)| t)) {
            Ok(cron) => Some(Schedule { cron, input }),
            Err(e @ CronError::UnknownTimezone { .. }) => {
                self.timezone_error(tz_node.unwrap_or(cron_node), &e);
                None
            }
            Err(e) => {
                let (node, code, hint) = match &e {
                    CronError::ConflictingTimezone { .. } => (tz_node.unwrap_or(cron_node), Code::InvalidTimezone, Some("give the zone once: either `CRON_TZ=` or `timezone:`".into())),
                    CronError::SecondsField { .. } => (cron_node, Code::CronSeconds, Some("remove the first field; the smallest unit is one minute".into())),
                    CronError::NeverFires => (cron_node, Code::CronNeverFires, Some("check the day-of-month and month fields".into())),
                    CronError::TzPrefix { zone } => (cron_node, Code::InvalidCron, Some(format!("write `CRON_TZ={zone} …`, or give the zone as `timezone: {zone}`"))),
                    _ => (cron_node, Code::InvalidCron, Some("5 fields: minute hour day-of-month month day-of-week, or @hourly, @daily, @weekly, @monthly, @yearly".into())),
                };
                let w = self.width(node);
                self.error(node.pos, w, code, e.to_string(), hint);
                if !matches!(e, CronError::ConflictingTimezone { .. }) {
                    check_zone_alone(self);
                }
                None
            }
        }
    }

    fn timezone_error(&mut self, node: &Node, e: &CronError) {
        let hint = match e {
            CronError::UnknownTimezone {
                suggestion: Some(s),
                ..
            } => format!("did you mean `{s}`?"),
            _ => "use an IANA zone name such as `Europe/Berlin` or `America/New_York`".into(),
        };
        let w = self.width(node);
        self.error(
            node.pos,
            w,
            Code::InvalidTimezone,
            e.to_string(),
            Some(hint),
        );
    }

    pub(super) fn concurrency(&mut self, node: &Node, scope: &Scope) -> Concurrency {
        let Some(f) = self.fields(node, "concurrency", CONCURRENCY_KEYS, &[]) else {
            return Concurrency::default();
        };
        let key = f.get("key").and_then(|n| {
            let s = self.nonempty_string(n, "key")?;
            // Stored with the run and shown by the API.
            let scope = Scope {
                no_secrets: Some(NoSecrets::Stored("a concurrency `key`")),
                ..*scope
            };
            self.template(n, s, &scope);
            Some(Template(s.to_string()))
        });
        let limit = match f.get("limit") {
            None => Some(1),
            Some(n) => match n.value {
                Value::Int(i) if i >= 1 && i <= i64::from(MAX_RUNS_PER_KEY) => {
                    Some(u32::try_from(i).expect("checked to fit"))
                }
                Value::Int(_) => {
                    let w = self.width(n);
                    self.error(
                        n.pos,
                        w,
                        Code::InvalidValue,
                        format!("`limit` must be between 1 and {MAX_RUNS_PER_KEY}"),
                        Some("the runs with the same key going at once (default 1)".into()),
                    );
                    None
                }
                _ => {
                    self.wrong_type(n, "limit", "a whole number");
                    None
                }
            },
        };
        let on_limit = match f.get("on_limit") {
            None => Some(OnLimit::default()),
            Some(n) => self
                .one_of(n, "on_limit", &OnLimit::NAMES)
                .and_then(OnLimit::parse),
        };
        if f.get("key").is_none() {
            for name in ["limit", "on_limit"] {
                if let Some(k) = f.key(name) {
                    self.error(
                        k.pos,
                        k.name.chars().count(),
                        Code::MissingKey,
                        format!("`{name}` limits the runs that share a `key`, which is not given"),
                        Some(
                            "add `key:` (a template such as `sync-{{ input.userId }}`), or remove it"
                                .into(),
                        ),
                    );
                }
            }
        }
        let per_key = match (key, limit, on_limit) {
            (Some(key), Some(limit), Some(on_limit)) => Some(RunKey {
                key,
                limit,
                on_limit,
            }),
            _ => None,
        };
        Concurrency {
            per_key,
            overlap: f
                .get("overlap")
                .and_then(|n| self.one_of(n, "overlap", &Overlap::NAMES))
                .and_then(Overlap::parse)
                .unwrap_or_default(),
            catchup_window: f
                .get("catchup_window")
                .and_then(|n| self.duration(n, "catchup_window")),
            jitter: f.get("jitter").and_then(|n| self.duration(n, "jitter")),
            queue_timeout: f
                .get("queue_timeout")
                .and_then(|n| self.positive_duration(n, "queue_timeout")),
        }
    }
}
