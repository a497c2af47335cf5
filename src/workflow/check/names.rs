//! Workflow names (unique across the files of a directory) and the shapes of names and ids.
//!
//! Part of the pure core: no I/O.

use super::Checker;
use super::{CheckedSet, SourceFile};
use crate::workflow::diagnostic::{Code, Diagnostic};
use crate::workflow::model::Workflow;
use crate::workflow::yaml::{self, Node, Pos};
use std::collections::BTreeMap;

/// The cross-file part of [`check_set`](super::check_set): `results[i]` is `check_file` of `files[i]` (the shell may
/// compute them on several threads).
pub fn check_names(
    files: &[SourceFile],
    results: Vec<Result<Workflow, Vec<Diagnostic>>>,
) -> CheckedSet {
    let mut results = results;
    let mut first_by_name: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..files.len() {
        let Ok(wf) = &results[i] else { continue };
        let name = wf.name.clone();
        match first_by_name.get(&name) {
            None => {
                first_by_name.insert(name, i);
            }
            Some(&first) => {
                let (pos, width) = name_position(&files[i].text);
                let d = Diagnostic {
                    file: files[i].path.clone(),
                    pos,
                    width,
                    code: Code::DuplicateName,
                    message: format!("workflow name `{name}` is already used by `{}`", files[first].path),
                    hint: Some("workflow names must be unique in the directory; rename one of them with `name:`".into()),
                };
                results[i] = Err(vec![d]);
            }
        }
    }
    check_calls(files, &mut results, &first_by_name);
    CheckedSet { results }
}

/// Every `call` step names a workflow of the set, and gives it the inputs it declares: the
/// required ones without a default, and no others. A file whose call is wrong is refused (as
/// a file that names an unknown step is), so a daemon keeps its last good version.
fn check_calls(
    files: &[SourceFile],
    results: &mut [Result<Workflow, Vec<Diagnostic>>],
    by_name: &BTreeMap<String, usize>,
) {
    for i in 0..files.len() {
        let Ok(wf) = &results[i] else { continue };
        let mut diags = Vec::new();
        for step in wf.steps.iter() {
            let crate::workflow::StepKind::Call(call) = &step.kind else {
                continue;
            };
            let (workflow_at, input_keys) = call_nodes(&files[i].text, &step.id);
            let target = by_name
                .get(&call.workflow)
                .and_then(|&t| results[t].as_ref().ok());
            let Some(target) = target else {
                let known: Vec<&str> = by_name.keys().map(String::as_str).collect();
                let hint = match crate::workflow::suggest::did_you_mean(&call.workflow, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "the `name` of a workflow in the same directory (validate the directory, not one file, to check calls)".into(),
                };
                diags.push(Diagnostic {
                    file: files[i].path.clone(),
                    pos: workflow_at.0,
                    width: workflow_at.1,
                    code: Code::UnknownWorkflow,
                    message: format!(
                        "step `{}` calls workflow `{}`, which is not in the directory (or is invalid)",
                        step.id, call.workflow
                    ),
                    hint: Some(hint),
                });
                continue;
            };
            let given: Vec<&str> = input_keys.iter().map(|(k, _)| k.as_str()).collect();
            for spec in &target.inputs {
                if spec.required && spec.default.is_none() && !given.contains(&spec.name.as_str()) {
                    diags.push(Diagnostic {
                        file: files[i].path.clone(),
                        pos: workflow_at.0,
                        width: workflow_at.1,
                        code: Code::MissingKey,
                        message: format!(
                            "step `{}` calls `{}` without its required input `{}`",
                            step.id, call.workflow, spec.name
                        ),
                        hint: Some(format!("add `{}:` under `call.input`", spec.name)),
                    });
                }
            }
            for (key, (pos, width)) in &input_keys {
                if !target.inputs.iter().any(|s| &s.name == key) {
                    let names: Vec<&str> = target.inputs.iter().map(|s| s.name.as_str()).collect();
                    diags.push(Diagnostic {
                        file: files[i].path.clone(),
                        pos: *pos,
                        width: *width,
                        code: Code::UndeclaredInput,
                        message: format!("`{key}` is not an input of `{}`", call.workflow),
                        hint: Some(
                            match crate::workflow::suggest::did_you_mean(key, names.iter().copied())
                            {
                                Some(s) => format!("did you mean `{s}`?"),
                                None if names.is_empty() => {
                                    format!("`{}` declares no inputs", call.workflow)
                                }
                                None => format!(
                                    "its inputs: {}",
                                    crate::workflow::suggest::list(&names)
                                ),
                            },
                        ),
                    });
                }
            }
        }
        if !diags.is_empty() {
            results[i] = Err(diags);
        }
    }
}

/// Where a `call` step's `workflow` value is, and its `input` keys with their positions.
#[allow(clippy::type_complexity)]
fn call_nodes(text: &str, step_id: &str) -> ((Pos, usize), Vec<(String, (Pos, usize))>) {
    let found = (|| {
        let root = yaml::parse(text).ok()?;
        let steps = root
            .as_map()?
            .iter()
            .find(|(k, _)| k.name == "steps")?
            .1
            .clone();
        let yaml::Value::Seq(items) = &steps.value else {
            return None;
        };
        let step = items.iter().find(|s| {
            s.as_map().is_some_and(|m| {
                m.iter()
                    .any(|(k, v)| k.name == "id" && v.as_str() == Some(step_id))
            })
        })?;
        let call = step
            .as_map()?
            .iter()
            .find(|(k, _)| k.name == "call")?
            .1
            .clone();
        let fields = call.as_map()?;
        let workflow = fields
            .iter()
            .find(|(k, _)| k.name == "workflow")
            .map(|(_, v)| (v.pos, v.as_str().map_or(1, |s| s.chars().count())))?;
        let keys = fields
            .iter()
            .find(|(k, _)| k.name == "input")
            .and_then(|(_, v)| v.as_map())
            .map(|m| {
                m.iter()
                    .map(|(k, _)| (k.name.clone(), (k.pos, k.name.chars().count())))
                    .collect()
            })
            .unwrap_or_default();
        Some((workflow, keys))
    })();
    found.unwrap_or(((Pos::START, 1), Vec::new()))
}

fn name_position(text: &str) -> (Pos, usize) {
    if let Ok(root) = yaml::parse(text)
        && let Some(entries) = root.as_map()
        && let Some((_, v)) = entries.iter().find(|(k, _)| k.name == "name")
    {
        return (v.pos, v.as_str().map_or(1, |s| s.chars().count()));
    }
    (Pos::START, 1)
}

/// The file name without directories and extension.
pub fn file_stem(path: &str) -> String {
    let base = path.rsplit(['/', '\\']).next().unwrap_or(path);
    base.strip_suffix(".yaml")
        .or_else(|| base.strip_suffix(".yml"))
        .unwrap_or(base)
        .to_string()
}

impl Checker<'_> {
    pub(super) fn name(&mut self, node: &Node) -> Option<String> {
        let s = self.nonempty_string(node, "name")?;
        if valid_name(s) {
            Some(s.to_string())
        } else {
            let w = self.width(node);
            self.error(node.pos, w, Code::InvalidName, format!("`{s}` is not a valid workflow name"), Some("use letters, digits, `-`, `_` and `.` (it appears in URLs and on the command line)".into()));
            None
        }
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.len() <= 100
}

pub(super) fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn valid_step_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && s.len() <= 64
}
