//! What templates may read at each point of a file: declared inputs and secrets, earlier steps
//! and the fields their kind produces, `run`, `workflow`, `failure` in hooks; template syntax,
//! `if` conditions, unknown filters and tests, and `steps.fetch-user` written for
//! `steps['fetch-user']`.
//!
//! Part of the pure core: no I/O.

use super::Checker;
use super::inputs::DeclaredInput;
use crate::workflow::diagnostic::Code;
use crate::workflow::model::*;
use crate::workflow::suggest::{article, did_you_mean, list};
use crate::workflow::template::{self, Analysis, Then};
use crate::workflow::yaml::{Node, Pos, Value};
use std::collections::HashSet;

pub(super) const ROOTS: &[&str] = &["input", "steps", "secrets", "run", "workflow", "failure"];

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

/// What templates may refer to at one point of the file.
pub(super) struct Scope<'a> {
    pub(super) inputs: &'a [DeclaredInput],
    pub(super) secrets: &'a [String],
    /// (id, kind) of steps that have finished before this point: upstream of the step.
    pub(super) before: &'a [(String, &'static str)],
    /// (id, kind) of the steps written before this one (upstream or not).
    pub(super) earlier: &'a [(String, &'static str)],
    /// What the step being checked needs (as written, or the step before it).
    pub(super) needs: &'a [String],
    /// (id, kind) of every step in the workflow.
    pub(super) all: &'a [(String, &'static str)],
    /// The step being checked, if any.
    pub(super) current: Option<&'a str>,
    /// In a `foreach` step's templates: the item's name (`as`).
    pub(super) item: Option<&'a str>,
    pub(super) in_hook: bool,
    /// Set where a template must not read secrets. Names the place.
    pub(super) no_secrets: Option<NoSecrets>,
    /// Set in `if` conditions, which the engine evaluates with an undefined value as false
    /// (minijinja's chainable undefined) rather than as an error.
    pub(super) undefined_is_false: bool,
}

/// Why a place may not read `secrets`.
#[derive(Clone, Copy)]
pub(super) enum NoSecrets {
    /// The engine renders it (`if`, `sleep_until`): it never holds secrets, which only the
    /// dispatcher reads, for requests and e-mails.
    Engine(&'static str),
    /// What it renders is stored with the run and shown to anyone with the link: an approval's
    /// `subject` and `body`, on the approval page and in the e-mail.
    Shown(&'static str),
    /// What it renders is stored and listed by the API: a `flow_control` or concurrency key.
    Stored(&'static str),
}

/// What one template's references have in common.
struct InTemplate<'t> {
    /// A `steps.fetch-user` was reported: the references it breaks into are not reported again.
    had_hyphen: bool,
    /// Inputs this template tests with `is defined` or `is undefined` somewhere (`{% if
    /// input.x is defined %}…{{ input.x }}…`, `{{ input.x if input.x is defined else … }}`):
    /// their other references are taken to be guarded by it.
    tested: HashSet<&'t str>,
}

/// Whether a reference to `input.<name>` still renders when the input is absent: it is passed
/// to `default` (`d`) or tested (`is defined`, `is none`, …), or the template tests it for
/// being defined elsewhere. Other uses of an undefined value fail the step (strict undefined).
fn guarded(r: &template::Reference, t: &InTemplate) -> bool {
    let direct = r.path.len() == 1
        && match &r.then {
            Some(Then::Filter(f)) => f == "default" || f == "d",
            Some(Then::Test(_)) => true,
            None => false,
        };
    direct
        || r.path
            .first()
            .is_some_and(|s| t.tested.contains(s.name.as_str()))
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

impl Checker<'_> {
    /// Checks every template string inside an arbitrary value (an HTTP body).
    pub(super) fn templates_in(&mut self, node: &Node, scope: &Scope) {
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
    pub(super) fn condition(&mut self, node: &Node, text: &str, scope: &Scope) {
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
            no_secrets: Some(NoSecrets::Engine("an `if` condition")),
            undefined_is_false: true,
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

    pub(super) fn template(&mut self, node: &Node, text: &str, scope: &Scope) {
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
        let tested = analysis
            .references
            .iter()
            .filter(|r| r.root == "input" && r.path.len() == 1)
            .filter(
                |r| matches!(&r.then, Some(Then::Test(t)) if t == "defined" || t == "undefined"),
            )
            .map(|r| r.path[0].name.as_str())
            .collect();
        let in_template = InTemplate { had_hyphen, tested };
        for r in &analysis.references {
            let pos = locate(self, r.offset, r.len);
            self.reference(r, pos, scope, &in_template);
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
                    && scope.item != Some(free.as_str())
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
            _ if root == "item" => "`item` is the item of a `foreach` step, in that step's own templates; later steps read `steps.<id>.items`".to_string(),
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

    fn reference(&mut self, r: &template::Reference, pos: Pos, scope: &Scope, t: &InTemplate) {
        let had_hyphen = t.had_hyphen;
        let first = r.path.first();
        let seg_pos = |this: &Self, seg: &template::Segment| {
            Pos {
                col: pos.col + u32::try_from(seg.offset - r.offset).unwrap_or(0),
                offset: pos.offset.map(|o| o + seg.offset - r.offset),
                ..pos
            }
            .relocated(this)
        };
        if scope.item == Some(r.root.as_str()) {
            return; // the item: any shape
        }
        match r.root.as_str() {
            "input" => {
                let Some(seg) = first else { return };
                if let Some(declared) = scope.inputs.iter().find(|d| d.name == seg.name) {
                    if declared.may_be_absent && !scope.undefined_is_false && !guarded(r, t) {
                        let p = seg_pos(self, seg);
                        self.error(
                            p,
                            seg.name.len(),
                            Code::OptionalInputWithoutDefault,
                            format!("input `{}` is optional and has no `default`: a run started without it fails here", seg.name),
                            Some(format!("give it a `default:` (or `required: true`) under `inputs.{0}`, or write `input.{0} | default(…)` here", seg.name)),
                        );
                    }
                } else {
                    let hint = match did_you_mean(
                        &seg.name,
                        scope.inputs.iter().map(|d| d.name.as_str()),
                    ) {
                        Some(m) => format!("did you mean `input.{m}`?"),
                        None => format!(
                            "declare it under `inputs:` as `{}: {{ type: string, required: true }}`",
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
                match scope.no_secrets {
                    Some(NoSecrets::Engine(place)) => {
                        self.error(
                            pos,
                            r.len,
                            Code::UnknownVariable,
                            format!("`secrets` cannot be read in {place}"),
                            Some("secrets are read only when a request or an e-mail is sent, so that they never reach the database".into()),
                        );
                        return;
                    }
                    Some(NoSecrets::Stored(place)) => {
                        self.error(
                            pos,
                            r.len,
                            Code::UnknownVariable,
                            format!("`secrets` cannot be read in {place}"),
                            Some("it is stored in the database and shown by the API; secrets are read only where a request or an e-mail is sent (an `http` step's headers, say)".into()),
                        );
                        return;
                    }
                    Some(NoSecrets::Shown(place)) => {
                        self.error(
                            pos,
                            r.len,
                            Code::SecretInApproval,
                            format!("{place} would show `secrets` to anyone with the approval link"),
                            Some("an approval's subject and body are stored with the run and shown on the approval page and in the e-mail; leave the secret out (say what it is for), or send it in an `http` step's header".into()),
                        );
                        return;
                    }
                    None => {}
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
                    } else if scope.earlier.iter().any(|(id, _)| *id == seg.name) {
                        let mut needs: Vec<&str> = scope.needs.iter().map(String::as_str).collect();
                        needs.push(&seg.name);
                        self.error(
                            p,
                            seg.name.len(),
                            Code::NotUpstream,
                            format!("step `{}` may still be running when this step starts: it is not upstream of it", seg.name),
                            Some(format!("wait for it: `needs: [{}]`", needs.join(", "))),
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
            // Free (not bound by a `{% for %}`), `loop` is the item loop of a `foreach` step.
            "loop" if scope.item.is_none() => {
                self.error(
                    pos,
                    r.root.len(),
                    Code::UnknownVariable,
                    "`loop` is defined only inside `{% for %}` and in a `foreach` step",
                    Some("`loop.index` counts the items of a `foreach` step; add `foreach:` to this step, or use it inside a `{% for %}` loop".into()),
                );
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

#[cfg(test)]
mod tests {
    use super::*;

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
