//! `foreach` steps: one call (or e-mail) per item of a list, at most `max_parallel` at a time,
//! each item with its own attempts, retries and dedup id. The items (key, value, result) are
//! kept by the store as rows of their own (`Effect::SaveItems`, `Effect::ItemDone`); the run's
//! state holds only the counters and the items in flight. When every item has ended the machine
//! asks for their results (`Effect::CollectItems`) and finishes the step on
//! `Event::ItemsCollected`, in the same transaction.
//!
//! Part of the pure core: no I/O.

use super::context::context;
use super::decide::{after_failure, attempt_effect, fail_for_good, later};
use super::effect::{Effect, ItemResult, NewItem};
use super::event::Outcome;
use super::plan::advance;
use super::run::{Failure, Fan, Item, Run, StepStatus};
use crate::workflow::output::{self, FanOutput, ItemOutput};
use crate::workflow::{Foreach, MAX_FOREACH_ITEMS, Step, Workflow, template};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;

/// Starts a `foreach` step: renders its list and the items' keys, has the store keep them, and
/// starts the first items. Err is why the step cannot start (it fails for good).
/// The key of a `foreach` step's item `i` (its `key` template rendered, or the index): it names
/// the item in its dedup id.
fn key_of(
    ctx: &minijinja::Value,
    def: &Step,
    fe: &Foreach,
    value: &Value,
    i: u32,
) -> Result<String, String> {
    let Some(t) = &fe.key else {
        return Ok(i.to_string());
    };
    let item_ctx = template::with_item(ctx, &fe.as_name, value, i);
    let k = template::render_engine_text(t.as_str(), &item_ctx)
        .map_err(|e| format!("rendering `key` of item {i} of step `{}`: {e}", def.id))?;
    if k.is_empty() {
        return Err(format!(
            "the `key` of item {i} of step `{}` is empty",
            def.id
        ));
    }
    Ok(k)
}

/// The key item `index` of `foreach` step `def` would have in `run` (for `runner dry-run`).
pub fn item_key(
    wf: &Workflow,
    run: &Run,
    def: &Step,
    value: &Value,
    index: u32,
) -> Result<String, String> {
    let Some(fe) = &def.foreach else {
        return Ok(index.to_string());
    };
    let ctx = template::context(&context(wf, run, None));
    key_of(&ctx, def, fe, value, index)
}

pub(super) fn start(
    wf: &Workflow,
    run: &mut Run,
    index: usize,
    def: &Step,
    fe: &Foreach,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) -> Result<(), String> {
    let ctx = template::context(&context(wf, run, None));
    let list = template::render_engine_json(&fe.items, &ctx)
        .map_err(|e| format!("rendering `foreach` of step `{}`: {e}", def.id))?;
    let Value::Array(values) = list else {
        return Err(format!(
            "`foreach` of step `{}` rendered {}, not a list",
            def.id,
            kind_of(&list)
        ));
    };
    if values.len() > MAX_FOREACH_ITEMS {
        return Err(format!(
            "`foreach` of step `{}` has {} items, over the limit of {MAX_FOREACH_ITEMS} a step; split the work into several runs",
            def.id,
            values.len()
        ));
    }
    let total = u32::try_from(values.len()).expect("at most MAX_FOREACH_ITEMS");
    let mut items = Vec::with_capacity(values.len());
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for (i, value) in (0..total).zip(values) {
        let key = key_of(&ctx, def, fe, &value, i)?;
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err(format!(
                "items {first} and {i} of step `{}` have the same key `{key}`; a key names one item (it is in the item's dedup id)",
                def.id
            ));
        }
        items.push(NewItem {
            index: i,
            key,
            value,
        });
    }
    effects.push(Effect::SaveItems {
        step: def.id.clone(),
        items,
    });
    let s = &mut run.steps[index];
    s.status = StepStatus::Running;
    s.started_at = Some(now);
    s.fan = Some(Fan {
        total,
        todo: if total > 0 { vec![(0, total)] } else { vec![] },
        started: 0,
        succeeded: 0,
        failed: 0,
        active: Vec::new(),
        halted: false,
        collecting: false,
        resume: false,
        prior: BTreeMap::new(),
    });
    fill(def, fe, run, index, effects);
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The most calls and e-mails one change starts (its outbox rows are numbered within the
/// change: `store::apply::EFFECTS_PER_EVENT`). Items over it start with a later change
/// ([`top_up`]).
pub(super) const MAX_STARTS_PER_CHANGE: usize = 1000;

/// Starts items while fewer than `max_parallel` are in flight; asks for the results once every
/// item has ended.
fn fill(def: &Step, fe: &Foreach, run: &mut Run, index: usize, effects: &mut Vec<Effect>) {
    let s = &mut run.steps[index];
    let Some(fan) = s.fan.as_mut() else { return };
    let mut budget =
        MAX_STARTS_PER_CHANGE.saturating_sub(effects.iter().filter(|e| e.is_external()).count());
    while !fan.halted
        && fan.active.len() < fe.max_parallel as usize
        && fan.started < fan.todo_len()
        && budget > 0
    {
        budget -= 1;
        let i = fan.nth(fan.started).expect("started < todo_len");
        fan.started += 1;
        let before = fan.prior.get(&i).copied().unwrap_or(0);
        fan.active.push(Item {
            index: i,
            status: StepStatus::Running,
            attempts: before + 1,
            round_start: before,
            interrupted: 0,
            wake_at: None,
            error: None,
            last_status: None,
        });
        effects.push(attempt_effect(def, before + 1, Some(i)));
    }
    let done = fan.active.is_empty() && (fan.halted || fan.started == fan.todo_len());
    if done && !fan.collecting {
        fan.collecting = true;
        effects.push(Effect::CollectItems {
            step: def.id.clone(),
        });
    }
    s.wake_at = fan.active.iter().filter_map(|a| a.wake_at).min();
}

/// After any change: a `foreach` step with room for more items in flight starts them (one the
/// start budget of an earlier change left short).
pub(super) fn top_up(wf: &Workflow, run: &mut Run, effects: &mut Vec<Effect>) {
    if run.status.is_terminal() {
        return;
    }
    for index in 0..run.steps.len() {
        let s = &run.steps[index];
        let Some(fan) = &s.fan else { continue };
        if s.status != StepStatus::Running || fan.collecting || fan.resume {
            continue;
        }
        let Some(def) = wf.steps.iter().find(|d| d.id == s.id) else {
            continue;
        };
        let Some(fe) = def.foreach.as_ref() else {
            continue;
        };
        if !fan.halted
            && fan.active.len() < fe.max_parallel as usize
            && fan.started < fan.todo_len()
        {
            fill(def, fe, run, index, effects);
        }
    }
}

/// The step, its definition and `foreach`, and the active item `item` at attempt `attempt`,
/// when the event is about one (else it is late or a duplicate, and absorbed).
fn locate<'w>(
    wf: &'w Workflow,
    run: &Run,
    step: &str,
    item: u32,
    attempt: Option<u32>,
) -> Option<(usize, &'w Step, &'w Foreach, usize)> {
    let index = run.steps.iter().position(|s| s.id == step)?;
    let s = &run.steps[index];
    if s.status != StepStatus::Running {
        return None;
    }
    let def = wf.steps.iter().find(|d| d.id == step)?;
    let fe = def.foreach.as_ref()?;
    let at = s.fan.as_ref()?.active.iter().position(|a| {
        a.index == item
            && attempt.is_none_or(|n| a.status == StepStatus::Running && a.attempts == n)
    })?;
    Some((index, def, fe, at))
}

/// One item ended for good: the store records it, and the next items start.
fn ended(
    run: &mut Run,
    index: usize,
    def: &Step,
    fe: &Foreach,
    at: usize,
    result: ItemResult,
    effects: &mut Vec<Effect>,
) {
    let fan = run.steps[index].fan.as_mut().expect("a fan step");
    fan.active.remove(at);
    if result.status == "succeeded" {
        fan.succeeded += 1;
    } else {
        fan.failed += 1;
        if fe.fail_fast {
            fan.halted = true;
        }
    }
    effects.push(Effect::ItemDone {
        step: def.id.clone(),
        item: result,
    });
    fill(def, fe, run, index, effects);
}

pub(super) fn succeeded(
    wf: &Workflow,
    run: &mut Run,
    step: &str,
    item: u32,
    attempt: u32,
    output: &Value,
    effects: &mut Vec<Effect>,
) {
    let Some((index, def, fe, at)) = locate(wf, run, step, item, Some(attempt)) else {
        return;
    };
    let result = ItemResult {
        index: item,
        status: "succeeded".into(),
        attempts: attempt,
        output: Some(output.clone()),
        error: None,
    };
    ended(run, index, def, fe, at, result, effects);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn failed(
    wf: &Workflow,
    run: &mut Run,
    step: &str,
    item: u32,
    attempt: u32,
    error: &str,
    status: Option<u16>,
    outcome: &Outcome,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    let Some((index, def, fe, at)) = locate(wf, run, step, item, Some(attempt)) else {
        return;
    };
    let fan = run.steps[index].fan.as_mut().expect("a fan step");
    let a = &mut fan.active[at];
    a.error = Some(error.to_string());
    a.last_status = status;
    let round_attempts = a.round_attempts();
    match after_failure(
        def,
        def.retry.limit,
        outcome,
        a.attempts,
        round_attempts,
        error,
    ) {
        Ok(delay) => {
            a.status = StepStatus::Retrying;
            a.wake_at = Some(later(now, delay));
            let s = &mut run.steps[index];
            s.wake_at = s
                .fan
                .as_ref()
                .and_then(|f| f.active.iter().filter_map(|a| a.wake_at).min());
        }
        Err(why) => {
            let result = ItemResult {
                index: item,
                status: "failed".into(),
                attempts: attempt,
                output: None,
                error: Some(why),
            };
            ended(run, index, def, fe, at, result, effects);
        }
    }
}

pub(super) fn interrupted(
    wf: &Workflow,
    run: &mut Run,
    step: &str,
    item: u32,
    attempt: u32,
    effects: &mut Vec<Effect>,
) {
    let Some((index, def, _, at)) = locate(wf, run, step, item, Some(attempt)) else {
        return;
    };
    let fan = run.steps[index].fan.as_mut().expect("a fan step");
    let a = &mut fan.active[at];
    a.interrupted += 1;
    a.attempts += 1;
    a.error = Some(format!(
        "attempt {attempt} was interrupted (the process performing it stopped); sent again as attempt {}",
        a.attempts
    ));
    effects.push(attempt_effect(def, a.attempts, Some(item)));
}

/// The step's timer: every item whose retry is due is sent again.
pub(super) fn timer(
    wf: &Workflow,
    run: &mut Run,
    index: usize,
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    let Some(def) = wf.steps.iter().find(|d| d.id == run.steps[index].id) else {
        return;
    };
    let s = &mut run.steps[index];
    let Some(fan) = s.fan.as_mut() else { return };
    for a in fan.active.iter_mut() {
        if a.status == StepStatus::Retrying && a.wake_at.is_some_and(|w| w <= now) {
            a.status = StepStatus::Running;
            a.wake_at = None;
            a.attempts += 1;
            effects.push(attempt_effect(def, a.attempts, Some(a.index)));
        }
    }
    s.wake_at = fan.active.iter().filter_map(|a| a.wake_at).min();
}

/// Every item ended and here are their results: the step succeeds when none failed; else it
/// failed for good (and the run with it, unless something takes the failure up).
pub(super) fn collected(
    wf: &Workflow,
    run: &mut Run,
    step: &str,
    items: &[ItemOutput],
    now: DateTime<Utc>,
    effects: &mut Vec<Effect>,
) {
    let Some(index) = run.steps.iter().position(|s| s.id == step) else {
        return;
    };
    let s = &mut run.steps[index];
    let Some(fan) = s.fan.as_mut() else { return };
    if s.status != StepStatus::Running || !fan.collecting {
        return;
    }
    fan.collecting = false;
    if fan.resume {
        // A retried run: go again through the items that did not succeed.
        fan.resume = false;
        fan.todo.clear();
        fan.prior.clear();
        fan.started = 0;
        fan.failed = 0;
        fan.succeeded = 0;
        for (i, it) in (0..fan.total).zip(items) {
            if it.status == "succeeded" {
                fan.succeeded += 1;
                continue;
            }
            if let Some(n) = it.attempts.filter(|n| *n > 0) {
                fan.prior.insert(i, n);
            }
            match fan.todo.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => fan.todo.push((i, i + 1)),
            }
        }
        s.output = None;
        if let Some(def) = wf.steps.iter().find(|d| d.id == step)
            && let Some(fe) = def.foreach.as_ref()
        {
            fill(def, fe, run, index, effects);
        }
        return;
    }
    let succeeded =
        u32::try_from(items.iter().filter(|i| i.status == "succeeded").count()).unwrap_or(u32::MAX);
    let failed =
        u32::try_from(items.iter().filter(|i| i.status == "failed").count()).unwrap_or(u32::MAX);
    s.finished_at = Some(now);
    s.wake_at = None;
    // The bodies are kept up to a total size: this output is carried in the run's state.
    let mut kept = 0usize;
    let mut omitted = 0u32;
    let kept_items: Vec<ItemOutput> = items
        .iter()
        .map(|it| {
            let size = serde_json::to_vec(&it.body).map_or(0, |b| b.len())
                + serde_json::to_vec(&it.headers).map_or(0, |b| b.len());
            if kept + size <= output::MAX_ITEMS_OUTPUT_BYTES {
                kept += size;
                it.clone()
            } else {
                omitted += 1;
                ItemOutput {
                    body: Value::Null,
                    headers: Value::Null,
                    ..it.clone()
                }
            }
        })
        .collect();
    s.output = Some(output::to_value(&FanOutput {
        items: kept_items,
        total: fan.total,
        succeeded,
        failed,
        bodies_omitted: omitted,
    }));
    if failed == 0 && succeeded == fan.total {
        s.status = StepStatus::Succeeded;
        s.error = None;
        advance(wf, run, now, effects);
        return;
    }
    let first = items.iter().find(|i| i.status == "failed");
    let skipped = fan.total - succeeded - failed;
    let mut error = format!("{failed} of {} items failed", fan.total);
    if skipped > 0 {
        error.push_str(&format!(" ({skipped} not started: `fail_fast`)"));
    }
    if let Some(f) = first {
        error.push_str(&format!(
            "; item `{}`: {}",
            f.key,
            f.error.as_deref().unwrap_or("failed")
        ));
    }
    s.status = StepStatus::Failed;
    s.error = Some(error.clone());
    let failure = Failure {
        step: step.to_string(),
        error,
        status: None,
        body: None,
        attempts: failed,
    };
    fail_for_good(wf, run, failure, now, effects);
    advance(wf, run, now, effects);
}

/// A failed run is retried and this `foreach` step runs again with the same list (nothing
/// upstream of it runs again): it first reads its items back, to go again through those that did
/// not succeed (see [`collected`]). With `fresh`, something upstream runs again, so the list is
/// rendered anew when the step starts.
pub(super) fn retry(run: &mut Run, index: usize, fresh: bool) {
    let s = &mut run.steps[index];
    let old = s.fan.take();
    *s = super::run::StepState::new_from(s);
    if !fresh && let Some(old) = old {
        s.fan = Some(Fan {
            resume: true,
            active: Vec::new(),
            collecting: false,
            halted: false,
            ..old
        });
    }
}

/// Starts a `foreach` step set up again by [`retry`]: its items are read back first.
pub(super) fn resume(run: &mut Run, index: usize, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
    let s = &mut run.steps[index];
    s.status = StepStatus::Running;
    s.started_at = Some(now);
    if let Some(fan) = s.fan.as_mut() {
        fan.collecting = true;
        effects.push(Effect::CollectItems { step: s.id.clone() });
    }
}
