//! What the CLI prints for people: `runner show`.

use crate::views::{RunView, StepView};
use chrono::{DateTime, Utc};
use std::fmt::Write;

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

/// The longest string of an input shown whole; `show --json` has every byte.
const SHOWN_CHARS: usize = 200;

/// A JSON value with its long strings cut (a published message's base64 body is megabytes).
fn shorten(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.chars().count() > SHOWN_CHARS => {
            let head: String = s.chars().take(60).collect();
            Value::String(format!(
                "{head}… ({} bytes; `runner show --json` has them all)",
                s.len()
            ))
        }
        Value::Array(items) => Value::Array(items.iter().map(shorten).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shorten(v))).collect()),
        other => other.clone(),
    }
}

/// A run with every step and attempt, and what it waits for.
pub(super) fn run(v: &RunView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run       {}", v.id);
    let _ = writeln!(out, "workflow  {} (version {})", v.workflow, v.version);
    let _ = writeln!(out, "status    {}", v.status.as_str());
    let _ = match &v.schedule_id {
        Some(id) => writeln!(out, "trigger   {} `{id}`", v.trigger),
        None => writeln!(out, "trigger   {}", v.trigger),
    };
    let _ = writeln!(out, "created   {}", time(Some(v.created_at)));
    let _ = writeln!(out, "finished  {}", time(v.finished_at));
    if let Some(w) = &v.waiting_for {
        let _ = writeln!(out, "waiting   for {w}");
    }
    let _ = writeln!(out, "input     {}", shorten(&v.input));
    if let Some(key) = &v.concurrency_key {
        let _ = writeln!(out, "key       {key}");
    }
    if let Some(reason) = &v.cancel_reason {
        let _ = writeln!(out, "cancelled {reason}");
    }
    if let Some(f) = &v.failure {
        let _ = match f.attempts {
            0 => writeln!(out, "failure   step `{}`: {}", f.step, f.error),
            1 => writeln!(
                out,
                "failure   step `{}` after 1 attempt: {}",
                f.step, f.error
            ),
            n => writeln!(
                out,
                "failure   step `{}` after {n} attempts: {}",
                f.step, f.error
            ),
        };
    }
    for (title, list) in [("steps", &v.steps), ("on_failure", &v.on_failure)] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}:");
        for (i, s) in list.iter().enumerate() {
            let before = i.checked_sub(1).map(|p| list[p].id.as_str());
            step(&mut out, s, before);
        }
    }
    out
}

/// One step's lines; `before` is the step written before it (a step without `needs` waits for
/// it, which goes without saying).
fn step(out: &mut String, s: &StepView, before: Option<&str>) {
    let mut line = format!(
        "  {:<20} {:<12} {:<17}",
        s.id,
        s.kind.as_str(),
        s.status.as_str()
    );
    if s.attempts > 0 {
        let _ = write!(line, " attempts {}", s.attempts);
    }
    if let Some(w) = s.wake_at {
        let _ = write!(line, "  until {}", time(Some(w)));
    }
    // A chain goes without saying: the first step needs nothing, the others the one before.
    let implied = match before {
        Some(b) => s.needs.len() == 1 && s.needs[0] == b,
        None => s.needs.is_empty(),
    };
    if let Some(when) = s.when {
        if !implied {
            let _ = write!(line, "  needs [{}]", s.needs.join(", "));
        }
        if when != crate::workflow::Join::AllSuccess {
            let sep = if implied { "  " } else { " " };
            let _ = write!(line, "{sep}when {}", when.as_str());
        }
    }
    if !s.waiting_for.is_empty() {
        let _ = write!(line, "  waits for {}", s.waiting_for.join(", "));
    }
    if let Some(f) = &s.items {
        let _ = write!(
            line,
            "  items {}: {} succeeded, {} failed, {} in flight, {} waiting",
            f.total, f.succeeded, f.failed, f.in_flight, f.waiting
        );
    }
    let _ = writeln!(out, "{}", line.trim_end());
    if let Some(f) = &s.items {
        // Those that need a look (failed, in flight, retrying), at most 20; `--json` has all.
        const SHOWN: usize = 20;
        let notable: Vec<_> = f
            .list
            .iter()
            .filter(|i| !matches!(i.status.as_str(), "succeeded" | "pending") || i.attempts > 1)
            .collect();
        for i in notable.iter().take(SHOWN) {
            let mut l = format!(
                "    [{}] {:<20} {:<10} attempts {}",
                i.index, i.key, i.status, i.attempts
            );
            if let Some(w) = i.wake_at {
                let _ = write!(l, "  until {}", time(Some(w)));
            }
            if let Some(e) = &i.error {
                let _ = write!(l, "  {e}");
            }
            let _ = writeln!(out, "{l}");
        }
        if notable.len() > SHOWN {
            let _ = writeln!(
                out,
                "    … {} more (runner show --json lists every item)",
                notable.len() - SHOWN
            );
        }
    }
    for a in &s.attempt_log {
        let status = a
            .status
            .map_or_else(|| "---".to_string(), |c| c.to_string());
        let ms = a
            .duration_ms
            .map_or_else(String::new, |m| format!("{m} ms"));
        let mut l = format!(
            "    #{} {}  {status}  {:<9} {ms}",
            a.attempt,
            time(a.started_at),
            a.outcome.as_str()
        );
        if let Some(e) = &a.error {
            let _ = write!(l, "  {e}");
        }
        let _ = writeln!(out, "{l}");
    }
    let waiting = s.status == crate::engine::StepStatus::WaitingApproval;
    for e in s.emails.iter().flatten() {
        if e.current || !waiting {
            let sent = e.sent_at.map_or_else(
                || "not delivered yet (retrying)".to_string(),
                |t| format!("sent {}", time(Some(t))),
            );
            let _ = writeln!(out, "    e-mail to {}: {sent}", e.to);
        }
    }
    // An approval's decision: what, by whom, when, and the comment.
    if s.kind == crate::workflow::model::StepKindName::Approval
        && let Some(o) = &s.output
        && let Some(decision) = o["decision"].as_str()
    {
        let mut l = format!(
            "    {decision} by {} at {}",
            o["approver"].as_str().unwrap_or("?"),
            o["decided_at"].as_str().unwrap_or("?")
        );
        if let Some(c) = o["comment"].as_str().filter(|c| !c.is_empty()) {
            let _ = write!(l, ": {c:?}");
        }
        let _ = writeln!(out, "{l}");
    }
    // An event wait: what it received, or that it timed out.
    if s.kind == crate::workflow::model::StepKindName::WaitForEvent
        && let Some(o) = &s.output
    {
        if o["timed_out"].as_bool() == Some(true) {
            let _ = writeln!(out, "    timed out (on_timeout: continue)");
        } else {
            let _ = writeln!(
                out,
                "    received event {} at {}",
                o["id"].as_str().unwrap_or("?"),
                o["received_at"].as_str().unwrap_or("?")
            );
        }
    }
    if let (Some(e), true) = (&s.error, s.attempt_log.is_empty()) {
        let _ = writeln!(out, "    {e}");
    }
}
