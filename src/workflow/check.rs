//! The checker: turns a parsed YAML tree into a validated [`Workflow`], collecting every problem.
//!
//! Part of the pure core: no I/O. `runner validate` and the daemon both call [`check_file`] and
//! [`check_set`], so a file that validates loads, and one that does not is refused with the same
//! messages.

use super::diagnostic::{Code, Diagnostic, did_you_mean};
use super::duration;
use super::model::*;
use super::template::{self, Analysis};
use super::yaml::{self, Key, Node, Pos, Value};
use crate::cron::{CronError, CronSchedule};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "on",
    "inputs",
    "secrets",
    "concurrency",
    "defaults",
    "steps",
    "on_failure",
];
pub const ON_KEYS: &[&str] = &["schedule", "webhook"];
pub const SCHEDULE_KEYS: &[&str] = &["cron", "timezone", "input"];
pub const INPUT_KEYS: &[&str] = &["type", "required", "default", "description"];
pub const CONCURRENCY_KEYS: &[&str] = &["overlap", "catchup_window", "jitter"];
pub const DEFAULTS_KEYS: &[&str] = &["timeout", "retry"];
pub const RETRY_KEYS: &[&str] = &["limit", "backoff", "initial", "max"];
pub const STEP_KEYS: &[&str] = &[
    "id",
    "if",
    "http",
    "approval",
    "sleep",
    "sleep_until",
    "email",
    "timeout",
    "retry",
];
pub const STEP_KINDS: &[&str] = &["http", "approval", "sleep", "sleep_until", "email"];
pub const HOOK_KINDS: &[&str] = &["http", "email"];
pub const HTTP_KEYS: &[&str] = &["url", "method", "headers", "body"];
pub const APPROVAL_KEYS: &[&str] = &["to", "subject", "body", "timeout", "on_timeout"];
pub const EMAIL_KEYS: &[&str] = &["to", "subject", "body"];
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
pub const BACKOFFS: &[&str] = &["exponential", "fixed", "linear"];
const ROOTS: &[&str] = &["input", "steps", "secrets", "run", "workflow", "failure"];

/// Suggestions for a misspelt filter or test (minijinja's built-ins; the check itself asks
/// minijinja, so a name missing here is still accepted). A hint lists the first six.
#[rustfmt::skip]
const KNOWN_FILTERS: &[&str] = &[
    "default", "lower", "upper", "tojson", "join", "length", "abs", "attr", "batch", "bool",
    "capitalize", "count", "d", "dictsort", "escape", "first", "float", "groupby", "indent",
    "int", "items", "last", "lines", "list", "map", "max", "min", "pprint", "reject",
    "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort",
    "split", "string", "sum", "title", "trim", "unique", "urlencode",
];
#[rustfmt::skip]
const KNOWN_TESTS: &[&str] = &[
    "defined", "undefined", "none", "string", "number", "odd", "boolean", "divisibleby",
    "endingwith", "eq", "even", "false", "filter", "float", "ge", "gt", "in", "integer",
    "iterable", "le", "lower", "lt", "mapping", "ne", "safe", "sameas", "sequence",
    "startingwith", "test", "true", "upper",
];
const GLOBALS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "loop",
    "true",
    "false",
    "none",
];

/// Checks one file on its own. `path` is used in diagnostics; `name_from_path` is the file stem.
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
            c.error(
                e.pos,
                1,
                Code::YamlSyntax,
                e.message,
                Some("fix the YAML syntax first; other checks run once the file parses".into()),
            );
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

/// The cross-file part of [`check_set`]: `results[i]` is `check_file` of `files[i]` (the shell may
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
    CheckedSet { results }
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

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
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

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Checker<'s> {
    file: String,
    source: &'s str,
    /// Byte offsets where lines start, to turn offsets into line:col without rescanning.
    line_starts: Vec<usize>,
    diags: Vec<Diagnostic>,
}

impl Pos {
    /// Recomputes line and column from the byte offset when it is known (segments can cross lines).
    fn relocated(self, c: &Checker) -> Pos {
        match self.offset {
            Some(o) if o <= c.source.len() => c.pos_at(o),
            _ => self,
        }
    }
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

/// What templates may refer to at one point of the file.
struct Scope<'a> {
    inputs: &'a [String],
    secrets: &'a [String],
    /// (id, kind) of steps that run before this point.
    before: &'a [(String, &'static str)],
    /// (id, kind) of every step in the workflow.
    all: &'a [(String, &'static str)],
    /// The step being checked, if any.
    current: Option<&'a str>,
    in_hook: bool,
    /// Set where the engine renders the template (`if`, `sleep_until`): it never holds secrets,
    /// which only the dispatcher reads, for requests and e-mails. Names the place.
    no_secrets: Option<&'static str>,
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
        let description = f
            .get("description")
            .and_then(|n| self.string(n, "description").map(str::to_string));
        let inputs = f.get("inputs").map(|n| self.inputs(n)).unwrap_or_default();
        let input_names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
        let secrets = f
            .get("secrets")
            .map(|n| self.secrets(n))
            .unwrap_or_default();
        let (schedules, webhook) = match f.get("on") {
            Some(n) => self.triggers(n, &inputs),
            None => (Vec::new(), false),
        };
        let concurrency = f
            .get("concurrency")
            .map(|n| self.concurrency(n))
            .unwrap_or_default();
        let (default_timeout, default_retry) = match f.get("defaults") {
            Some(n) => self.defaults(n),
            None => (DEFAULT_TIMEOUT, Retry::default()),
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
        let mut seen_ids: BTreeMap<String, Pos> = BTreeMap::new();
        let mut steps = Vec::new();
        let mut before: Vec<(String, &'static str)> = Vec::new();
        for node in &step_nodes {
            let scope = Scope {
                inputs: &input_names,
                secrets: &secrets,
                before: &before,
                all: &all,
                current: None,
                in_hook: false,
                no_secrets: None,
            };
            let step = self.step(
                node,
                &scope,
                &default_timeout,
                &default_retry,
                None,
                &mut seen_ids,
            );
            if let Some(identity) = step_identity(node) {
                before.push(identity);
            }
            if let Some(step) = step {
                steps.push(step);
            }
        }

        let mut on_failure = Vec::new();
        if let Some(n) = f.get("on_failure") {
            match &n.value {
                Value::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let scope = Scope {
                            inputs: &input_names,
                            secrets: &secrets,
                            before: &all,
                            all: &all,
                            current: None,
                            in_hook: true,
                            no_secrets: None,
                        };
                        let default_id = format!("on_failure-{}", i + 1);
                        if let Some(step) = self.step(
                            item,
                            &scope,
                            &default_timeout,
                            &default_retry,
                            Some(default_id),
                            &mut seen_ids,
                        ) {
                            on_failure.push(step);
                        }
                    }
                }
                _ => self.wrong_type(n, "on_failure", "a list of `http` or `email` hooks"),
            }
        }
        let _ = f.key("steps");
        Some(Workflow {
            name: name?,
            description,
            schedules,
            webhook,
            inputs,
            secrets,
            concurrency,
            steps,
            on_failure,
        })
    }

    fn name(&mut self, node: &Node) -> Option<String> {
        let s = self.nonempty_string(node, "name")?;
        if valid_name(s) {
            Some(s.to_string())
        } else {
            let w = self.width(node);
            self.error(node.pos, w, Code::InvalidName, format!("`{s}` is not a valid workflow name"), Some("use letters, digits, `-`, `_` and `.` (it appears in URLs and on the command line)".into()));
            None
        }
    }

    fn inputs(&mut self, node: &Node) -> Vec<InputSpec> {
        let Some(entries) = node.as_map() else {
            if !matches!(node.value, Value::Null) {
                self.wrong_type(node, "inputs", "a mapping of input names to `{ type: … }`");
            }
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, spec) in entries {
            if !valid_identifier(&key.name) {
                self.error(key.pos, key.name.chars().count(), Code::InvalidName, format!("`{}` is not a valid input name", key.name), Some("templates read inputs as `input.NAME`: use letters, digits and `_`, not starting with a digit".into()));
                continue;
            }
            let what = format!("inputs.{}", key.name);
            let Some(f) = self.fields(spec, &what, INPUT_KEYS, &["type"]) else {
                continue;
            };
            let ty = f
                .get("type")
                .and_then(|n| self.one_of(n, "type", &InputType::NAMES))
                .and_then(InputType::parse);
            let required = f
                .get("required")
                .and_then(|n| self.boolean(n, "required"))
                .unwrap_or(false);
            let description = f
                .get("description")
                .and_then(|n| self.string(n, "description").map(str::to_string));
            let default = f.get("default").map(Node::to_json);
            if let (Some(ty), Some(d), Some(n)) = (ty, &default, f.get("default"))
                && !ty.accepts(d)
            {
                let w = self.width(n);
                self.error(
                    n.pos,
                    w,
                    Code::WrongType,
                    format!(
                        "the default of input `{}` must be {} {}, not {}",
                        key.name,
                        article(ty.name()),
                        ty.name(),
                        n.value.kind()
                    ),
                    Some(format!(
                        "give a default of the input's type, or change its `type` from `{}`",
                        ty.name()
                    )),
                );
            }
            if let Some(ty) = ty {
                out.push(InputSpec {
                    name: key.name.clone(),
                    ty,
                    required,
                    default,
                    description,
                });
            }
        }
        out
    }

    fn secrets(&mut self, node: &Node) -> Vec<String> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "secrets", "a list of environment variable names");
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for item in items {
            let Some(s) = self.string(item, "secrets[]") else {
                continue;
            };
            if !valid_identifier(s) {
                let w = self.width(item);
                self.error(
                    item.pos,
                    w,
                    Code::InvalidName,
                    format!("`{s}` is not a valid secret name"),
                    Some("secrets are environment variable names such as `APP_TOKEN`".into()),
                );
            } else if out.iter().any(|o| o == s) {
                let w = self.width(item);
                self.error(
                    item.pos,
                    w,
                    Code::InvalidValue,
                    format!("secret `{s}` is listed twice"),
                    Some("list each secret once".into()),
                );
            } else {
                out.push(s.to_string());
            }
        }
        out
    }

    fn triggers(&mut self, node: &Node, inputs: &[InputSpec]) -> (Vec<Schedule>, bool) {
        let Some(f) = self.fields(node, "on", ON_KEYS, &[]) else {
            return (Vec::new(), false);
        };
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
        (schedules, webhook)
    }

    fn schedule(&mut self, node: &Node, inputs: &[InputSpec]) -> Option<Schedule> {
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
                let probe = Workflow {
                    name: String::new(),
                    description: None,
                    schedules: vec![],
                    webhook: false,
                    inputs: inputs.to_vec(),
                    secrets: vec![],
                    concurrency: Concurrency::default(),
                    steps: vec![],
                    on_failure: vec![],
                };
                if let Err(errors) = resolve_input(&probe, &v) {
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

    fn concurrency(&mut self, node: &Node) -> Concurrency {
        let Some(f) = self.fields(node, "concurrency", CONCURRENCY_KEYS, &[]) else {
            return Concurrency::default();
        };
        Concurrency {
            overlap: f
                .get("overlap")
                .and_then(|n| self.one_of(n, "overlap", &Overlap::NAMES))
                .and_then(Overlap::parse)
                .unwrap_or_default(),
            catchup_window: f
                .get("catchup_window")
                .and_then(|n| self.duration(n, "catchup_window")),
            jitter: f.get("jitter").and_then(|n| self.duration(n, "jitter")),
        }
    }

    fn defaults(&mut self, node: &Node) -> (Duration, Retry) {
        let Some(f) = self.fields(node, "defaults", DEFAULTS_KEYS, &[]) else {
            return (DEFAULT_TIMEOUT, Retry::default());
        };
        let timeout = f
            .get("timeout")
            .and_then(|n| self.positive_duration(n, "timeout"))
            .unwrap_or(DEFAULT_TIMEOUT);
        let retry = match f.get("retry") {
            Some(n) => self.retry(n, &Retry::default()),
            None => Retry::default(),
        };
        (timeout, retry)
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

    fn retry(&mut self, node: &Node, base: &Retry) -> Retry {
        let mut r = base.clone();
        let Some(f) = self.fields(node, "retry", RETRY_KEYS, &[]) else {
            return r;
        };
        if let Some(n) = f.get("limit") {
            match n.value {
                Value::Int(i) if (0..=100).contains(&i) => {
                    r.limit = u32::try_from(i).expect("0..=100 fits u32")
                }
                Value::Int(_) => {
                    let w = self.width(n);
                    self.error(
                        n.pos,
                        w,
                        Code::InvalidValue,
                        "`limit` must be between 0 and 100",
                        Some("`limit` counts retries after the first attempt; 0 means none".into()),
                    );
                }
                _ => self.wrong_type(n, "limit", "an integer"),
            }
        }
        if let Some(n) = f.get("backoff")
            && let Some(b) = self.one_of(n, "backoff", BACKOFFS)
        {
            r.backoff = match b {
                "fixed" => BackoffKind::Fixed,
                "linear" => BackoffKind::Linear,
                _ => BackoffKind::Exponential,
            };
        }
        if let Some(n) = f.get("initial") {
            r.initial = self.positive_duration(n, "initial").or(r.initial);
        }
        if let Some(n) = f.get("max") {
            r.max = self.positive_duration(n, "max").unwrap_or(r.max);
        }
        r
    }

    fn step(
        &mut self,
        node: &Node,
        scope: &Scope,
        default_timeout: &Duration,
        default_retry: &Retry,
        hook_id: Option<String>,
        seen_ids: &mut BTreeMap<String, Pos>,
    ) -> Option<Step> {
        let in_hook = hook_id.is_some();
        let what = if in_hook { "on_failure hook" } else { "step" };
        let required: &[&str] = if in_hook { &[] } else { &["id"] };
        let f = self.fields(node, what, STEP_KEYS, required)?;
        let id = match f.get("id") {
            Some(n) => {
                let s = self.nonempty_string(n, "id")?;
                if !valid_step_id(s) {
                    let w = self.width(n);
                    self.error(
                        n.pos,
                        w,
                        Code::InvalidStepId,
                        format!("`{s}` is not a valid step id"),
                        Some(
                            "use letters, digits, `_` and `-`, starting with a letter or `_`"
                                .into(),
                        ),
                    );
                    return None;
                }
                if let Some(first) = seen_ids.get(s) {
                    let w = self.width(n);
                    let line = first.line;
                    self.error(
                        n.pos,
                        w,
                        Code::DuplicateStepId,
                        format!("step id `{s}` is already used on line {line}"),
                        Some("step ids must be unique in a workflow".into()),
                    );
                    return None;
                }
                seen_ids.insert(s.to_string(), n.pos);
                s.to_string()
            }
            None => hook_id?,
        };
        let scope = Scope {
            current: Some(&id),
            ..*scope
        };
        let kinds: Vec<(&Key, &Node)> = f
            .entries
            .iter()
            .filter(|(k, _)| STEP_KINDS.contains(&k.name.as_str()))
            .copied()
            .collect();
        let allowed_kinds = if in_hook { HOOK_KINDS } else { STEP_KINDS };
        let (kind_key, kind_node) = match kinds.as_slice() {
            [one] => *one,
            [] => {
                self.error(
                    node.pos,
                    1,
                    Code::StepKind,
                    format!("{what} `{id}` does not say what to do"),
                    Some(format!("add one of {}", list(allowed_kinds))),
                );
                return None;
            }
            [_, second, ..] => {
                self.error(
                    second.0.pos,
                    second.0.name.chars().count(),
                    Code::StepKind,
                    format!(
                        "{what} `{id}` has more than one kind: {}",
                        list(
                            &kinds
                                .iter()
                                .map(|(k, _)| k.name.as_str())
                                .collect::<Vec<_>>()
                        )
                    ),
                    Some("a step does one thing; split it into several steps".into()),
                );
                return None;
            }
        };
        if !allowed_kinds.contains(&kind_key.name.as_str()) {
            self.error(
                kind_key.pos,
                kind_key.name.chars().count(),
                Code::StepKind,
                format!("`{}` cannot be used in `on_failure`", kind_key.name),
                Some("on_failure hooks can be `http` or `email`".into()),
            );
            return None;
        }
        let condition = f.get("if").and_then(|n| {
            let s = self.nonempty_string(n, "if")?;
            let text = if template::is_template(s) {
                s.to_string()
            } else {
                format!("{{{{ {s} }}}}")
            };
            self.condition(n, s, &scope);
            Some(Template(text))
        });
        let timeout = f
            .get("timeout")
            .and_then(|n| self.positive_duration(n, "timeout"))
            .unwrap_or(*default_timeout);
        let retry = match f.get("retry") {
            Some(n) => self.retry(n, default_retry),
            None => default_retry.clone(),
        };
        let kind = match kind_key.name.as_str() {
            "http" => StepKind::Http(self.http(kind_node, &scope)?),
            "approval" => StepKind::Approval(self.approval(kind_node, &scope)?),
            "email" => StepKind::Email(self.email(kind_node, &scope)?),
            "sleep" => StepKind::Sleep(self.duration(kind_node, "sleep")?),
            "sleep_until" => {
                let s = self.nonempty_string(kind_node, "sleep_until")?;
                if template::is_template(s) {
                    let scope = Scope {
                        no_secrets: Some("`sleep_until`"),
                        ..scope
                    };
                    self.template(kind_node, s, &scope);
                } else if chrono::DateTime::parse_from_rfc3339(s).is_err() {
                    let w = self.width(kind_node);
                    self.error(kind_node.pos, w, Code::InvalidValue, format!("`{s}` is not an RFC 3339 time"), Some("write a time such as `2026-12-24T09:00:00Z`, or a template that renders one".into()));
                    return None;
                }
                StepKind::SleepUntil(Template(s.to_string()))
            }
            _ => return None,
        };
        Some(Step {
            id,
            condition,
            kind,
            timeout,
            retry,
        })
    }

    fn http(&mut self, node: &Node, scope: &Scope) -> Option<HttpCall> {
        let f = self.fields(node, "http", HTTP_KEYS, &["url"])?;
        let url = f.get("url").and_then(|n| self.url(n, scope));
        let method = match f.get("method") {
            Some(n) => {
                let s = self.string(n, "method")?;
                if METHODS.contains(&s) {
                    Some(s.to_string())
                } else {
                    let upper = s.to_ascii_uppercase();
                    let hint = if METHODS.contains(&upper.as_str()) {
                        format!("write it in capitals: `{upper}`")
                    } else {
                        match did_you_mean(&upper, METHODS.iter().copied()) {
                            Some(m) => format!("did you mean `{m}`?"),
                            None => format!("use one of {}", list(METHODS)),
                        }
                    };
                    let w = self.width(n);
                    self.error(
                        n.pos,
                        w,
                        Code::InvalidMethod,
                        format!("`{s}` is not an HTTP method"),
                        Some(hint),
                    );
                    None
                }
            }
            None => Some("POST".to_string()),
        };
        let mut headers = Vec::new();
        if let Some(n) = f.get("headers") {
            match &n.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        if k.name.is_empty()
                            || !k.name.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
                            })
                        {
                            self.error(
                                k.pos,
                                k.name.chars().count(),
                                Code::InvalidValue,
                                format!("`{}` is not a valid header name", k.name),
                                Some("header names are letters, digits and `-` (`X-Request-Id`), without templates".into()),
                            );
                            continue;
                        }
                        let text = match &v.value {
                            Value::Str(s) => s.clone(),
                            Value::Int(i) => i.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => {
                                self.wrong_type(v, &format!("headers.{}", k.name), "a string");
                                continue;
                            }
                        };
                        self.template(v, &text, scope);
                        headers.push((k.name.clone(), Template(text)));
                    }
                }
                _ => self.wrong_type(n, "headers", "a mapping of header names to values"),
            }
        }
        let body = f.get("body").map(|n| {
            self.templates_in(n, scope);
            n.to_json()
        });
        Some(HttpCall {
            url: url?,
            method: method?,
            headers,
            body,
        })
    }

    fn url(&mut self, node: &Node, scope: &Scope) -> Option<Template> {
        let s = self.nonempty_string(node, "url")?;
        if template::is_template(s) {
            self.template(node, s, scope);
            let starts_with_template = s.trim_start().starts_with("{{");
            if !(starts_with_template || s.starts_with("http://") || s.starts_with("https://")) {
                let w = self.width(node);
                self.error(
                    node.pos,
                    w,
                    Code::InvalidUrl,
                    format!("`{s}` does not start with `http://` or `https://`"),
                    Some("write a full URL (`https://api.example.com/{{ input.id }}`), or a template that renders one from its start (`{{ input.base_url }}/path`)".into()),
                );
                return None;
            }
            return Some(Template(s.to_string()));
        }
        match url::Url::parse(s) {
            Ok(u)
                if (u.scheme() == "http" || u.scheme() == "https")
                    && u.host_str().is_some_and(|h| !h.is_empty()) =>
            {
                Some(Template(s.to_string()))
            }
            Ok(u) => {
                let w = self.width(node);
                self.error(
                    node.pos,
                    w,
                    Code::InvalidUrl,
                    format!(
                        "`{s}` uses `{}:`; steps call `http://` or `https://` URLs",
                        u.scheme()
                    ),
                    Some("write a full URL such as `https://api.example.com/path`".into()),
                );
                None
            }
            Err(e) => {
                let w = self.width(node);
                let hint = if !s.contains("://")
                    && url::Url::parse(&format!("https://{s}"))
                        .is_ok_and(|u| u.host_str().is_some_and(|h| h.contains('.')))
                {
                    format!("did you mean `https://{s}`?")
                } else {
                    "write a full URL such as `https://api.example.com/path`".into()
                };
                self.error(
                    node.pos,
                    w,
                    Code::InvalidUrl,
                    format!("`{s}` is not a valid URL: {e}"),
                    Some(hint),
                );
                None
            }
        }
    }

    fn recipients(&mut self, node: &Node, scope: &Scope) -> Option<Vec<Template>> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) if !items.is_empty() => items.iter().collect(),
            Value::Seq(_) => {
                self.error(
                    node.pos,
                    1,
                    Code::EmptyValue,
                    "`to` has no recipients",
                    Some("list at least one address: `to: [ops@example.com]`".into()),
                );
                return None;
            }
            Value::Str(_) => vec![node],
            _ => {
                self.wrong_type(node, "to", "a list of e-mail addresses");
                return None;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(s) = self.nonempty_string(item, "to") else {
                ok = false;
                continue;
            };
            if template::is_template(s) {
                self.template(item, s, scope);
            } else if let Some((part, why)) = split_addresses(s)
                .into_iter()
                .find_map(|p| check_address(p).err().map(|why| (p, why)))
            {
                // As the engine reads it: commas outside quotes separate addresses.
                let w = self.width(item);
                let (what, hint) = if part == s.trim() {
                    (
                        format!("`{s}`"),
                        "write `name@example.com` or `Name <name@example.com>`",
                    )
                } else {
                    (
                        format!("`{part}` in `{s}`"),
                        "commas separate addresses; a display name with a comma is quoted: `\"Doe, John\" <john@example.com>`",
                    )
                };
                self.error(
                    item.pos,
                    w,
                    Code::InvalidEmail,
                    format!("{what} is not a valid e-mail address: {why}"),
                    Some(hint.into()),
                );
                ok = false;
                continue;
            }
            out.push(Template(s.to_string()));
        }
        ok.then_some(out)
    }

    fn text_template(&mut self, f: &Fields, key: &str, scope: &Scope) -> Option<Option<Template>> {
        match f.get(key) {
            None => Some(None),
            Some(n) => {
                let s = self.string(n, key)?;
                self.template(n, s, scope);
                Some(Some(Template(s.to_string())))
            }
        }
    }

    fn approval(&mut self, node: &Node, scope: &Scope) -> Option<Approval> {
        let f = self.fields(node, "approval", APPROVAL_KEYS, &["to", "subject"])?;
        let to = f.get("to").and_then(|n| self.recipients(n, scope));
        let subject = self.text_template(&f, "subject", scope);
        let body = self.text_template(&f, "body", scope);
        let timeout = match f.get("timeout") {
            Some(n) => self.positive_duration(n, "timeout"),
            None => Some(DEFAULT_APPROVAL_TIMEOUT),
        };
        let on_timeout = match f.get("on_timeout") {
            Some(n) => match self.one_of(n, "on_timeout", &["approve", "reject"]) {
                Some("approve") => Some(Decision::Approved),
                Some(_) => Some(Decision::Rejected),
                None => None,
            },
            None => Some(Decision::Rejected),
        };
        Some(Approval {
            to: to?,
            subject: subject??,
            body: body?,
            timeout: timeout?,
            on_timeout: on_timeout?,
        })
    }

    fn email(&mut self, node: &Node, scope: &Scope) -> Option<Email> {
        let f = self.fields(node, "email", EMAIL_KEYS, &["to", "subject"])?;
        let to = f.get("to").and_then(|n| self.recipients(n, scope));
        let subject = self.text_template(&f, "subject", scope);
        let body = self.text_template(&f, "body", scope);
        Some(Email {
            to: to?,
            subject: subject??,
            body: body?,
        })
    }

    /// Checks every template string inside an arbitrary value (an HTTP body).
    fn templates_in(&mut self, node: &Node, scope: &Scope) {
        match &node.value {
            Value::Str(s) => self.template(node, s, scope),
            Value::Seq(items) => items.iter().for_each(|n| self.templates_in(n, scope)),
            Value::Map(entries) => entries
                .iter()
                .for_each(|(_, n)| self.templates_in(n, scope)),
            _ => {}
        }
    }

    /// Where byte `offset` of the string value of `node` is in the file.
    fn locate(&self, node: &Node, text: &str, offset: usize, fragment: &str) -> Pos {
        let Some(base) = node.pos.offset else {
            return node.pos;
        };
        let Some(rest) = self.source.get(base..) else {
            return node.pos;
        };
        let skip = usize::from(rest.starts_with(['"', '\'']));
        let prefix = text.get(..offset).unwrap_or("");
        if rest[skip..].starts_with(prefix) {
            return self.pos_at(base + skip + prefix.len());
        }
        if !fragment.is_empty()
            && let Some(i) = rest.find(fragment)
        {
            return self.pos_at(base + i);
        }
        node.pos
    }

    /// An `if:` value, checked as the engine evaluates it: one expression, with or without
    /// `{{ }}`, reading what the engine has (no secrets).
    fn condition(&mut self, node: &Node, text: &str, scope: &Scope) {
        let (expr, at) = template::condition_expression_at(text);
        if template::single_expression(text).is_none() && template::is_template(text) {
            let w = self.width(node);
            self.error(
                node.pos,
                w,
                Code::TemplateSyntax,
                "an `if` condition is one expression",
                Some("write `{{ a and b }}` or `a and b`, not `{{ a }} and {{ b }}`".into()),
            );
            return;
        }
        if let Err(e) = template::check_condition(expr) {
            self.template_syntax(node, text, at + e.offset, e.len, &e.message);
            return;
        }
        let scope = Scope {
            no_secrets: Some("an `if` condition"),
            ..*scope
        };
        // Analysed as `{{ expr }}`: offset 3 there is offset `at` in the file's text.
        let wrapped = format!("{{{{ {expr} }}}}");
        self.analyze_template(
            node,
            &wrapped,
            text,
            |offset| (offset + at).saturating_sub(3),
            &scope,
        );
    }

    fn template_syntax(
        &mut self,
        node: &Node,
        text: &str,
        offset: usize,
        len: usize,
        message: &str,
    ) {
        let offset = offset.min(text.len());
        let end = (offset + len).min(text.len());
        let fragment = text.get(offset..end).unwrap_or("");
        let pos = self.locate(node, text, offset, fragment);
        self.error(
            pos,
            len.min(40),
            Code::TemplateSyntax,
            format!("template syntax error: {message}"),
            Some("templates use `{{ expression }}`; see the minijinja syntax".into()),
        );
    }

    fn template(&mut self, node: &Node, text: &str, scope: &Scope) {
        if template::is_template(text) {
            self.analyze_template(node, text, text, |offset| offset, scope);
        }
    }

    /// Checks template `text`, whose byte offset `o` is at `at(o)` in `file_text`, the string as
    /// the file holds it (they differ for a bare `if` expression).
    fn analyze_template(
        &mut self,
        node: &Node,
        text: &str,
        file_text: &str,
        at: impl Fn(usize) -> usize,
        scope: &Scope,
    ) {
        let analysis: Analysis = match template::analyze(text) {
            Ok(a) => a,
            Err(e) => {
                self.template_syntax(node, file_text, at(e.offset), e.len, &e.message);
                return;
            }
        };
        let locate = |this: &Self, offset: usize, len: usize| {
            let o = at(offset).min(file_text.len());
            let fragment = file_text
                .get(o..(o + len).min(file_text.len()))
                .unwrap_or("");
            this.locate(node, file_text, o, fragment)
        };
        for (names, what, exists) in [
            (&analysis.unknown_filters, "filter", KNOWN_FILTERS),
            (&analysis.unknown_tests, "test", KNOWN_TESTS),
        ] {
            for n in names {
                let pos = locate(self, n.offset, n.name.len());
                let hint = match did_you_mean(&n.name, exists.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("minijinja's {what}s include {}, …", list(&exists[..6])),
                };
                self.error(
                    pos,
                    n.name.chars().count(),
                    Code::UnknownFilter,
                    format!("`{}` is not a template {what}", n.name),
                    Some(hint),
                );
            }
        }
        let hyphen_ids: Vec<&str> = scope
            .all
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| id.contains('-'))
            .collect();
        let mut had_hyphen = false;
        for r in &analysis.references {
            let pos = locate(self, r.offset, r.len);
            if r.root == "steps"
                && let (Some(first), Some(minus)) = (r.path.first(), &r.followed_by_minus)
                && r.path.len() == 1
                && !first.subscript
            {
                let joined = format!("{}{}", first.name, minus);
                if let Some(id) = hyphen_ids.iter().find(|id| joined.starts_with(**id)) {
                    had_hyphen = true;
                    self.error(
                        pos,
                        r.len + minus.len(),
                        Code::HyphenatedStepId,
                        format!(
                            "`steps.{joined}` is read as `steps.{}` minus `{}`",
                            first.name,
                            &minus[1..]
                        ),
                        Some(format!(
                            "a step id with a hyphen is reached as `steps['{id}']`"
                        )),
                    );
                    continue;
                }
            }
        }
        for r in &analysis.references {
            let pos = locate(self, r.offset, r.len);
            self.reference(r, pos, scope, had_hyphen);
        }
        if !had_hyphen {
            let referenced: HashSet<&str> = analysis
                .references
                .iter()
                .map(|r| r.root.as_str())
                .collect();
            for free in &analysis.free {
                if !ROOTS.contains(&free.as_str())
                    && !GLOBALS.contains(&free.as_str())
                    && !referenced.contains(free.as_str())
                {
                    let pos = locate(self, text.find(free.as_str()).unwrap_or(0), free.len());
                    self.unknown_root(free, pos, free.len());
                }
            }
        }
    }

    fn unknown_root(&mut self, root: &str, pos: Pos, width: usize) {
        let hint = match did_you_mean(root, ROOTS.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("templates can read {}", list(ROOTS)),
        };
        self.error(
            pos,
            width,
            Code::UnknownVariable,
            format!("`{root}` is not defined in templates"),
            Some(hint),
        );
    }

    fn reference(&mut self, r: &template::Reference, pos: Pos, scope: &Scope, had_hyphen: bool) {
        let first = r.path.first();
        let seg_pos = |this: &Self, seg: &template::Segment| {
            Pos {
                col: pos.col + u32::try_from(seg.offset - r.offset).unwrap_or(0),
                offset: pos.offset.map(|o| o + seg.offset - r.offset),
                ..pos
            }
            .relocated(this)
        };
        match r.root.as_str() {
            "input" => {
                if let Some(seg) = first
                    && !scope.inputs.contains(&seg.name)
                {
                    let hint =
                        match did_you_mean(&seg.name, scope.inputs.iter().map(String::as_str)) {
                            Some(m) => format!("did you mean `input.{m}`?"),
                            None => format!(
                                "declare it under `inputs:` as `{}: {{ type: string }}`",
                                seg.name
                            ),
                        };
                    let p = seg_pos(self, seg);
                    self.error(
                        p,
                        seg.name.len(),
                        Code::UndeclaredInput,
                        format!("input `{}` is not declared", seg.name),
                        Some(hint),
                    );
                }
            }
            "secrets" => {
                if let Some(place) = scope.no_secrets {
                    self.error(
                        pos,
                        r.len,
                        Code::UnknownVariable,
                        format!("`secrets` cannot be read in {place}"),
                        Some("secrets are read only when a request or an e-mail is sent, so that they never reach the database".into()),
                    );
                    return;
                }
                if let Some(seg) = first
                    && !scope.secrets.contains(&seg.name)
                {
                    let hint =
                        match did_you_mean(&seg.name, scope.secrets.iter().map(String::as_str)) {
                            Some(m) => format!("did you mean `secrets.{m}`?"),
                            None => format!("add `{}` to the workflow's `secrets:` list", seg.name),
                        };
                    let p = seg_pos(self, seg);
                    self.error(
                        p,
                        seg.name.len(),
                        Code::UndeclaredSecret,
                        format!("secret `{}` is not declared", seg.name),
                        Some(hint),
                    );
                }
            }
            "steps" => {
                let Some(seg) = first else { return };
                if had_hyphen && r.followed_by_minus.is_some() {
                    return;
                }
                let p = seg_pos(self, seg);
                let Some((_, kind)) = scope.before.iter().find(|(id, _)| *id == seg.name) else {
                    if scope.current == Some(seg.name.as_str()) {
                        self.error(
                            p,
                            seg.name.len(),
                            Code::LaterStep,
                            format!("step `{}` refers to its own result", seg.name),
                            Some("a step can read only the steps before it".into()),
                        );
                    } else if scope.all.iter().any(|(id, _)| *id == seg.name) {
                        self.error(p, seg.name.len(), Code::LaterStep, format!("step `{}` runs after this point, so its result is not available yet", seg.name), Some("a step can read only the steps before it; move this step after it".into()));
                    } else {
                        let hint = match did_you_mean(
                            &seg.name,
                            scope.all.iter().map(|(id, _)| id.as_str()),
                        ) {
                            Some(m) if m.contains('-') => format!("did you mean `steps['{m}']`?"),
                            Some(m) => format!("did you mean `steps.{m}`?"),
                            None => format!(
                                "steps before this point: {}",
                                list(
                                    &scope
                                        .before
                                        .iter()
                                        .map(|(id, _)| id.as_str())
                                        .collect::<Vec<_>>()
                                )
                            ),
                        };
                        self.error(
                            p,
                            seg.name.len(),
                            Code::UnknownStep,
                            format!("there is no step `{}`", seg.name),
                            Some(hint),
                        );
                    }
                    return;
                };
                if let Some(field) = r.path.get(1) {
                    let fields = produced_fields(kind);
                    if !fields.contains(&field.name.as_str()) {
                        let hint = match did_you_mean(&field.name, fields.iter().copied()) {
                            Some(m) => format!(
                                "did you mean `{m}`? {} {kind} step has {}",
                                capitalize(article(kind)),
                                list(fields)
                            ),
                            None => format!(
                                "{} {kind} step has {}",
                                capitalize(article(kind)),
                                list(fields)
                            ),
                        };
                        let fp = seg_pos(self, field);
                        self.error(
                            fp,
                            field.name.len(),
                            Code::UnknownField,
                            format!("step `{}` ({kind}) has no field `{}`", seg.name, field.name),
                            Some(hint),
                        );
                    }
                }
            }
            "run" | "workflow" | "failure" => {
                let fields = match r.root.as_str() {
                    "run" => RUN_FIELDS,
                    "workflow" => WORKFLOW_FIELDS,
                    _ => FAILURE_FIELDS,
                };
                if r.root == "failure" && !scope.in_hook {
                    self.error(
                        pos,
                        r.root.len(),
                        Code::UnknownVariable,
                        "`failure` is only available in `on_failure` hooks",
                        Some("an `on_failure` hook sees `failure.step`, `failure.error` and the rest; move this there".into()),
                    );
                    return;
                }
                if let Some(seg) = first
                    && !fields.contains(&seg.name.as_str())
                {
                    let hint = match did_you_mean(&seg.name, fields.iter().copied()) {
                        Some(m) => format!("did you mean `{}.{m}`?", r.root),
                        None => format!("`{}` has {}", r.root, list(fields)),
                    };
                    let p = seg_pos(self, seg);
                    self.error(
                        p,
                        seg.name.len(),
                        Code::UnknownField,
                        format!("`{}` has no field `{}`", r.root, seg.name),
                        Some(hint),
                    );
                }
            }
            other => {
                if !GLOBALS.contains(&other) && !had_hyphen {
                    self.unknown_root(other, pos, other.len());
                }
            }
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The id and kind of a step node, if it has them (used before the step itself is checked).
fn step_identity(node: &Node) -> Option<(String, &'static str)> {
    let entries = node.as_map()?;
    let id = entries
        .iter()
        .find(|(k, _)| k.name == "id")?
        .1
        .as_str()?
        .to_string();
    let kind = entries
        .iter()
        .find_map(|(k, _)| STEP_KINDS.iter().find(|s| **s == k.name))?;
    Some((id, kind))
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.len() <= 100
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_step_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && s.len() <= 64
}

/// Accepts `name@example.com` and `Name <name@example.com>`.
/// Splits a list of addresses on the commas between them: not those inside a quoted display
/// name (`"Doe, John" <john@example.com>`) or inside `<…>`.
pub fn split_addresses(s: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut angle) = (Vec::new(), 0, false, false);
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

pub fn check_address(s: &str) -> Result<(), &'static str> {
    let s = s.trim();
    let addr = match (s.find('<'), s.ends_with('>')) {
        (Some(i), true) => &s[i + 1..s.len() - 1],
        (None, false) => s,
        _ => return Err("unbalanced `<` `>`"),
    };
    let (local, domain) = addr.rsplit_once('@').ok_or("it has no `@`")?;
    if local.is_empty() || local.contains(char::is_whitespace) || local.contains(['<', '>', '@']) {
        return Err("the part before `@` is not valid");
    }
    if domain.is_empty()
        || !domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err("the domain is not valid");
    }
    if !domain.contains('.') && domain != "localhost" {
        return Err("the domain has no `.`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_split_on_commas_outside_quotes_and_brackets() {
        assert_eq!(
            split_addresses(r#""Doe, John" <john@example.com>, a@b.co ,"x\"y, z" <q@r.st>"#),
            [
                r#""Doe, John" <john@example.com>"#,
                "a@b.co",
                r#""x\"y, z" <q@r.st>"#
            ]
        );
        assert_eq!(
            split_addresses("Doe, John <john@example.com>"),
            ["Doe", "John <john@example.com>"]
        );
        assert_eq!(split_addresses(" , "), Vec::<&str>::new());
        assert!(check_address(r#""Doe, John" <john@example.com>"#).is_ok());
    }

    #[test]
    fn the_suggested_filters_and_tests_exist() {
        for f in KNOWN_FILTERS {
            assert!(template::filter_exists(f), "{f}");
        }
        for t in KNOWN_TESTS {
            assert!(template::test_exists(t), "{t}");
        }
        assert!(!template::filter_exists("nosuch"));
        assert!(!template::test_exists("nosuch"));
    }
}
