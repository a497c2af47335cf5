//! A run's input, checked against the workflow's `inputs` when a run starts (the engine and the
//! API), and when a schedule's `input` is validated.
//!
//! Part of the pure core: no I/O.

use super::model::Workflow;
use super::suggest::{article, did_you_mean, list};

/// Checks a run's input against `inputs`, filling defaults. Errors are sentences for users.
pub fn resolve_input(
    wf: &Workflow,
    input: &serde_json::Value,
) -> Result<serde_json::Value, Vec<String>> {
    let mut errors = Vec::new();
    let empty = serde_json::Map::new();
    let given = match input {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => &empty,
        other => {
            return Err(vec![format!(
                "the input must be a JSON object, not {}",
                json_kind(other)
            )]);
        }
    };
    let mut out = serde_json::Map::new();
    for spec in &wf.inputs {
        match given.get(&spec.name) {
            Some(v) if !v.is_null() => {
                if spec.ty.accepts(v) {
                    out.insert(spec.name.clone(), v.clone());
                } else {
                    errors.push(format!(
                        "input `{}` must be {} {}, not {}",
                        spec.name,
                        article(spec.ty.name()),
                        spec.ty.name(),
                        json_kind(v)
                    ));
                }
            }
            _ => {
                if let Some(d) = &spec.default {
                    out.insert(spec.name.clone(), d.clone());
                } else if spec.required {
                    errors.push(format!("input `{}` is required", spec.name));
                }
            }
        }
    }
    for key in given.keys() {
        if !wf.inputs.iter().any(|s| &s.name == key) {
            let names: Vec<&str> = wf.inputs.iter().map(|s| s.name.as_str()).collect();
            let hint = match did_you_mean(key, names.iter().copied()) {
                Some(m) => format!("; did you mean `{m}`?"),
                None if names.is_empty() => "; this workflow declares no inputs".to_string(),
                None => format!("; declared inputs: {}", list(&names)),
            };
            errors.push(format!("unknown input `{key}`{hint}"));
        }
    }
    if errors.is_empty() {
        Ok(serde_json::Value::Object(out))
    } else {
        Err(errors)
    }
}

/// "a string", "an integer"…: a JSON value's kind, for messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_f64() => "a number",
        serde_json::Value::Number(_) => "an integer",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
