//! The checker: turns a parsed YAML tree into a validated [`Workflow`], collecting every problem.
//!
//! Part of the pure core: no I/O. `runner validate` and the daemon both call [`check_file`] and
//! [`check_set`], so a file that validates loads, and one that does not is refused with the same
//! messages.
//!
//! This file holds the entry points, the [`Checker`] and its shape helpers (mappings and their
//! keys, strings, booleans, durations, choices); each concern has its own file, with its own
//! `impl Checker` block: `triggers` (`on`, schedules, zones, `concurrency`), `inputs` (`inputs`
//! and `secrets`), `steps` (steps, hooks and their kinds, `defaults`, `retry`), `refs` (what
//! templates may read) and `names` (workflow names, across files too, and ids).

mod inputs;
mod names;
mod refs;
mod steps;
mod triggers;
mod waits;

pub use names::{check_names, file_stem};

use super::diagnostic::{Code, Diagnostic};
use super::duration;
use super::model::*;
use super::schema::{RETENTION_KEYS, TOP_KEYS};
use super::suggest::{did_you_mean, list};
use super::yaml::{self, Key, Node, Pos, Value};
use names::valid_name;
use refs::{NoSecrets, Scope};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use steps::step_identity;

/// Checks one file on its own. `path` names the file in diagnostics, and its stem is the
/// workflow's name when the file has no `name:`.
pub fn check_file(path: &str, text: &str) -> Result<Workflow, Vec<Diagnostic>> {
    let mut c = Checker {
        file: path.to_string(),
        source: text,
        line_starts: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        diags: Vec::new(),
    };
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let code = if e.over_limit {
                Code::YamlLimit
            } else {
                Code::YamlSyntax
            };
            let hint = e.hint.unwrap_or_else(|| {
                "fix the YAML syntax first; other checks run once the file parses".into()
            });
            c.error(e.pos, 1, code, e.message, Some(hint));
            return Err(c.diags);
        }
    };
    let workflow = c.workflow(&root, &file_stem(path));
    if c.diags.is_empty() {
        Ok(workflow.expect("a workflow is built whenever there are no diagnostics"))
    } else {
        let mut diags = c.diags;
        super::diagnostic::sort(&mut diags);
        Err(diags)
    }
}

/// A file given to [`check_set`].
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// The outcome of checking a set of files: each file's workflow or diagnostics.
pub struct CheckedSet {
    pub results: Vec<Result<Workflow, Vec<Diagnostic>>>,
}

impl CheckedSet {
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut all: Vec<Diagnostic> = self
            .results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .flatten()
            .cloned()
            .collect();
        super::diagnostic::sort(&mut all);
        all
    }
}

/// Checks a directory's worth of files, including names that must be unique across them.
pub fn check_set(files: &[SourceFile]) -> CheckedSet {
    let results = files.iter().map(|f| check_file(&f.path, &f.text)).collect();
    check_names(files, results)
}

struct Checker<'s> {
    file: String,
    source: &'s str,
    /// Byte offsets where lines start, to turn offsets into line:col without rescanning.
    line_starts: Vec<usize>,
    diags: Vec<Diagnostic>,
}

/// A mapping's entries by key, after unknown and missing keys were reported.
struct Fields<'n> {
    entries: Vec<(&'n Key, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| *v)
    }
    fn key(&self, name: &str) -> Option<&'n Key> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| *k)
    }
}

impl<'s> Checker<'s> {
    /// The position of byte `offset` of the source.
    fn pos_at(&self, offset: usize) -> Pos {
        let offset = offset.min(self.source.len());
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let start = self.line_starts[line - 1];
        let mut end = offset;
        while end > start && !self.source.is_char_boundary(end) {
            end -= 1;
        }
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(self.source[start..end].chars().count() + 1).unwrap_or(u32::MAX),
            offset: Some(offset),
        }
    }

    fn error(
        &mut self,
        pos: Pos,
        width: usize,
        code: Code,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            pos,
            width: width.max(1),
            code,
            message: message.into(),
            hint,
        });
    }

    /// How many characters the value occupies in the source, for the caret.
    fn width(&self, node: &Node) -> usize {
        match &node.value {
            Value::Str(s) => {
                let quoted = node
                    .pos
                    .offset
                    .and_then(|o| self.source.get(o..))
                    .is_some_and(|rest| rest.starts_with(['"', '\'']));
                let first_line = s.lines().next().unwrap_or("").chars().count();
                if quoted { first_line + 2 } else { first_line }
            }
            Value::Int(i) => i.to_string().len(),
            Value::Float(f) => f.to_string().len(),
            Value::Bool(b) => b.to_string().len(),
            _ => 1,
        }
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        let w = self.width(node);
        self.error(
            node.pos,
            w,
            Code::WrongType,
            format!("`{what}` must be {expected}, not {}", node.value.kind()),
            Some(if expected.contains("string") && !matches!(node.value, Value::Map(_) | Value::Seq(_)) {
                format!("put the value in quotes to make it text: `{what}: \"…\"`")
            } else {
                "the format reference is in README.md; `runner schema` prints the JSON schema for editors".into()
            }),
        );
    }

    /// Checks that `node` is a mapping with only `allowed` keys and all `required` keys.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        allowed: &[&str],
        required: &[&str],
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            if matches!(node.value, Value::Null) && required.is_empty() {
                return Some(Fields { entries: vec![] });
            }
            self.wrong_type(node, what, "a mapping");
            return None;
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (k, v) in entries {
            if !seen.insert(k.name.as_str()) {
                self.error(
                    k.pos,
                    k.name.chars().count(),
                    Code::UnknownKey,
                    format!("key `{}` appears twice in `{what}`", k.name),
                    Some("remove one of them".into()),
                );
                continue;
            }
            if allowed.contains(&k.name.as_str()) {
                out.push((k, v));
            } else {
                let hint = match did_you_mean(&k.name, allowed.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("allowed keys: {}", list(allowed)),
                };
                self.error(
                    k.pos,
                    k.name.chars().count(),
                    Code::UnknownKey,
                    format!("unknown key `{}` in `{what}`", k.name),
                    Some(hint),
                );
            }
        }
        for r in required {
            // `step:` written for `steps:` is reported once, as the misspelling.
            let misspelt = entries.iter().any(|(k, _)| {
                !allowed.contains(&k.name.as_str())
                    && did_you_mean(&k.name, allowed.iter().copied()) == Some(*r)
            });
            if !misspelt && !entries.iter().any(|(k, _)| k.name == *r) {
                self.error(
                    node.pos,
                    1,
                    Code::MissingKey,
                    format!("`{what}` is missing the required key `{r}`"),
                    Some(format!("add `{r}:` to this {what}")),
                );
            }
        }
        Some(Fields { entries: out })
    }

    fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    fn nonempty_string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        let s = self.string(node, what)?;
        if s.trim().is_empty() {
            self.error(
                node.pos,
                1,
                Code::EmptyValue,
                format!("`{what}` is empty"),
                Some(format!("give `{what}` a value, or leave the key out")),
            );
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s)
                if matches!(
                    s.to_ascii_lowercase().as_str(),
                    "yes" | "no" | "on" | "off" | "y" | "n" | "true" | "false"
                ) =>
            {
                let word = if matches!(s.to_ascii_lowercase().as_str(), "yes" | "on" | "y" | "true")
                {
                    "true"
                } else {
                    "false"
                };
                let w = self.width(node);
                self.error(
                    node.pos,
                    w,
                    Code::WrongType,
                    format!("`{what}` must be `true` or `false`, not the string `{s}`"),
                    Some(format!(
                        "YAML 1.2 reads `{s}` as text; write `{word}` without quotes"
                    )),
                );
                None
            }
            _ => {
                self.wrong_type(node, what, "`true` or `false`");
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(_) => {
                let w = self.width(node);
                self.error(
                    node.pos,
                    w,
                    Code::InvalidDuration,
                    format!("`{what}` needs a unit"),
                    Some("write durations like `30s`, `15m`, `2h`, `3d` or `1d12h`".into()),
                );
                return None;
            }
            _ => {
                self.wrong_type(node, what, "a duration such as `30s` or `2h`");
                return None;
            }
        };
        match duration::parse(&text) {
            Ok(d) => Some(d),
            Err(message) => {
                let w = self.width(node);
                self.error(
                    node.pos,
                    w,
                    Code::InvalidDuration,
                    message,
                    Some("write durations like `30s`, `15m`, `2h`, `3d` or `1d12h`".into()),
                );
                None
            }
        }
    }

    fn one_of<'n>(&mut self, node: &'n Node, what: &str, options: &[&str]) -> Option<&'n str> {
        let s = self.string(node, what)?;
        if options.contains(&s) {
            return Some(s);
        }
        let hint = match did_you_mean(s, options.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("use one of {}", list(options)),
        };
        let w = self.width(node);
        self.error(
            node.pos,
            w,
            Code::InvalidValue,
            format!("`{s}` is not a valid `{what}`"),
            Some(hint),
        );
        None
    }

    fn workflow(&mut self, root: &Node, stem: &str) -> Option<Workflow> {
        if matches!(root.value, Value::Null) {
            self.error(
                Pos::START,
                1,
                Code::NotAMapping,
                "the file is empty",
                Some("a workflow needs at least `steps:`".into()),
            );
            return None;
        }
        if !matches!(root.value, Value::Map(_)) {
            let w = self.width(root);
            self.error(
                root.pos,
                w,
                Code::NotAMapping,
                format!(
                    "a workflow file must be a mapping, not {}",
                    root.value.kind()
                ),
                Some("start with `name:` and `steps:` keys".into()),
            );
            return None;
        }
        let f = self.fields(root, "workflow", TOP_KEYS, &["steps"])?;

        let name = match f.get("name") {
            Some(n) => self.name(n),
            None => {
                if valid_name(stem) {
                    Some(stem.to_string())
                } else {
                    self.error(
                        Pos::START,
                        1,
                        Code::InvalidName,
                        format!("the file name `{stem}` is not a valid workflow name"),
                        Some("add a `name:` made of letters, digits, `-`, `_` and `.`".into()),
                    );
                    None
                }
            }
        };
        let name = match name {
            Some(n) if n == super::builtin::QSTASH && self.file != super::builtin::QSTASH_PATH => {
                let (pos, w) = f
                    .get("name")
                    .map_or((Pos::START, 1), |n| (n.pos, self.width(n)));
                self.error(
                    pos,
                    w,
                    Code::InvalidName,
                    format!("`{n}` is the name of runner's built-in workflow for messages published through its QStash API"),
                    Some("choose another `name:`".into()),
                );
                None
            }
            other => other,
        };
        let description = f
            .get("description")
            .and_then(|n| self.string(n, "description").map(str::to_string));
        let inputs = f.get("inputs").map(|n| self.inputs(n)).unwrap_or_default();
        let secrets = f
            .get("secrets")
            .map(|n| self.secrets(n))
            .unwrap_or_default();
        let (schedules, webhook, events) = match f.get("on") {
            Some(n) => self.triggers(n, &inputs),
            None => (Vec::new(), false, Vec::new()),
        };
        // What `cancel_on` and `defaults` templates see: the input and the run, no steps.
        let run_scope = Scope {
            inputs: &inputs.declared,
            secrets: &secrets,
            before: &[],
            earlier: &[],
            needs: &[],
            all: &[],
            current: None,
            item: None,
            in_hook: false,
            no_secrets: None,
            undefined_is_false: false,
        };
        let cancel_on = match f.get("cancel_on") {
            Some(n) => self.cancel_on(n, &run_scope),
            None => Vec::new(),
        };
        let concurrency = f
            .get("concurrency")
            .map(|n| self.concurrency(n, &run_scope))
            .unwrap_or_default();
        let run_timeout = f
            .get("timeout")
            .and_then(|n| self.positive_duration(n, "timeout"));
        let retention = f
            .get("retention")
            .map(|n| self.retention(n))
            .unwrap_or_default();
        let defaults = match f.get("defaults") {
            Some(n) => self.defaults(n, &run_scope),
            None => steps::StepDefaults::default(),
        };

        // Step ids and kinds first, so templates can tell "later step" from "unknown step".
        let step_nodes: Vec<&Node> = match f.get("steps") {
            Some(n) => match &n.value {
                Value::Seq(items) if !items.is_empty() => items.iter().collect(),
                Value::Seq(_) => {
                    self.error(
                        n.pos,
                        1,
                        Code::EmptyValue,
                        "`steps` is empty",
                        Some("a workflow needs at least one step".into()),
                    );
                    Vec::new()
                }
                _ => {
                    self.wrong_type(n, "steps", "a list of steps");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let all: Vec<(String, &'static str)> =
            step_nodes.iter().filter_map(|n| step_identity(n)).collect();
        let upstream = upstream_of(&step_nodes);
        let mut seen_ids: BTreeMap<String, Pos> = BTreeMap::new();
        let mut steps = Vec::new();
        let mut before: Vec<(String, &'static str)> = Vec::new();
        for (i, node) in step_nodes.iter().enumerate() {
            let up: Vec<(String, &'static str)> = before
                .iter()
                .filter(|(id, _)| upstream[i].contains(id))
                .cloned()
                .collect();
            let needs = steps::raw_needs(node).unwrap_or_else(|| {
                before
                    .last()
                    .map(|(p, _)| vec![p.clone()])
                    .unwrap_or_default()
            });
            let scope = Scope {
                inputs: &inputs.declared,
                secrets: &secrets,
                before: &up,
                earlier: &before,
                needs: &needs,
                all: &all,
                current: None,
                item: None,
                in_hook: false,
                no_secrets: None,
                undefined_is_false: false,
            };
            let step = self.step(node, &scope, &defaults, None, &mut seen_ids);
            if let Some(identity) = step_identity(node) {
                before.push(identity);
            }
            if let Some(step) = step {
                steps.push(step);
            }
        }

        // What hooks and `output` see: every step, done.
        let after_all = Scope {
            inputs: &inputs.declared,
            secrets: &secrets,
            before: &all,
            earlier: &all,
            needs: &[],
            all: &all,
            current: None,
            item: None,
            in_hook: false,
            no_secrets: None,
            undefined_is_false: false,
        };
        let mut on_failure = Vec::new();
        if let Some(n) = f.get("on_failure") {
            match &n.value {
                Value::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let scope = Scope {
                            in_hook: true,
                            ..after_all
                        };
                        let default_id = format!("on_failure-{}", i + 1);
                        if let Some(step) =
                            self.step(item, &scope, &defaults, Some(default_id), &mut seen_ids)
                        {
                            on_failure.push(step);
                        }
                    }
                }
                _ => self.wrong_type(n, "on_failure", "a list of `http` or `email` hooks"),
            }
        }
        // `output`: rendered once every step is done, so it may read any of them. Stored with
        // the run and handed to the run that called it.
        let output = f.get("output").map(|n| {
            let scope = Scope {
                no_secrets: Some(NoSecrets::Stored("the workflow's `output`")),
                ..after_all
            };
            self.templates_in(n, &scope);
            n.to_json()
        });
        let _ = f.key("steps");
        Some(Workflow {
            name: name?,
            description,
            schedules,
            webhook,
            inputs: inputs.specs,
            secrets,
            concurrency,
            steps,
            on_failure,
            timeout: run_timeout,
            events,
            cancel_on,
            output,
            retention,
        })
    }

    /// `retention: { days, runs }`, each a whole number from 1.
    fn retention(&mut self, node: &Node) -> Retention {
        let mut r = Retention::default();
        let Some(f) = self.fields(node, "retention", RETENTION_KEYS, &[]) else {
            return r;
        };
        for (key, slot) in [("days", &mut r.days), ("runs", &mut r.runs)] {
            let Some(n) = f.get(key) else { continue };
            match n.value {
                Value::Int(i) if i >= 1 && i <= i64::from(MAX_RETENTION) => {
                    *slot = Some(u32::try_from(i).expect("checked to fit"));
                }
                Value::Int(_) => {
                    let w = self.width(n);
                    self.error(
                        n.pos,
                        w,
                        Code::InvalidValue,
                        format!("`{key}` must be between 1 and {MAX_RETENTION}"),
                        Some(
                            "leave `retention` out to keep runs as the daemon's `--retention` says"
                                .into(),
                        ),
                    );
                }
                _ => self.wrong_type(n, key, "a whole number"),
            }
        }
        if f.get("days").is_none() && f.get("runs").is_none() {
            self.error(
                node.pos,
                self.width(node),
                Code::EmptyValue,
                "`retention` says neither `days` nor `runs`",
                Some("add `days: 30` or `runs: 1000`, or leave `retention` out".into()),
            );
        }
        r
    }

    fn positive_duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let d = self.duration(node, what)?;
        if d.is_zero() {
            let w = self.width(node);
            self.error(
                node.pos,
                w,
                Code::InvalidDuration,
                format!("`{what}` must be longer than zero"),
                Some("write a positive duration such as `30s`, `5m` or `2d`".into()),
            );
            return None;
        }
        Some(d)
    }
}

/// For each step node, the ids of every step upstream of it: what it needs, and what those
/// need, transitively (a step without `needs` needs the one before it). Names that are not
/// earlier steps are left out (the checker reports them).
fn upstream_of(nodes: &[&Node]) -> Vec<std::collections::HashSet<String>> {
    let ids: Vec<Option<String>> = nodes
        .iter()
        .map(|n| step_identity(n).map(|(id, _)| id))
        .collect();
    let mut up: Vec<std::collections::HashSet<String>> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let needs = steps::raw_needs(node).unwrap_or_else(|| {
            i.checked_sub(1)
                .and_then(|p| ids[p].clone())
                .into_iter()
                .collect()
        });
        let mut set = std::collections::HashSet::new();
        for n in needs {
            if let Some(j) = ids[..i]
                .iter()
                .position(|id| id.as_deref() == Some(n.as_str()))
            {
                set.extend(up[j].iter().cloned());
                set.insert(n);
            }
        }
        up.push(set);
    }
    up
}
