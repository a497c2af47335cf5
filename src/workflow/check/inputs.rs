//! `inputs:` (the shape of a run's input) and `secrets:` (names read from the environment):
//! what a workflow declares for its templates to read.
//!
//! Part of the pure core: no I/O.

use super::Checker;
use super::names::valid_identifier;
use crate::workflow::diagnostic::Code;
use crate::workflow::model::*;
use crate::workflow::schema::INPUT_KEYS;
use crate::workflow::suggest::article;
use crate::workflow::yaml::{Node, Value};

/// What `inputs:` declares: the specs of the inputs declared without a problem, and every
/// declared name as templates see it.
#[derive(Default)]
pub(super) struct Inputs {
    pub(super) specs: Vec<InputSpec>,
    pub(super) declared: Vec<DeclaredInput>,
}

/// An input as templates see it. An input whose declaration has a problem is still declared:
/// that problem is reported once, at the declaration, not again at every reference.
pub(super) struct DeclaredInput {
    pub(super) name: String,
    /// Optional and without a `default`: a run may start without it, and then `input.NAME` is
    /// undefined. False when the declaration has a problem (it is reported there).
    pub(super) may_be_absent: bool,
}

impl Inputs {
    /// Declared, but not checkable against a run's input: its declaration has a problem.
    pub(super) fn is_broken(&self, name: &str) -> bool {
        self.declared.iter().any(|d| d.name == name) && !self.specs.iter().any(|s| s.name == name)
    }
}

impl Checker<'_> {
    pub(super) fn inputs(&mut self, node: &Node) -> Inputs {
        let mut out = Inputs::default();
        let Some(entries) = node.as_map() else {
            if !matches!(node.value, Value::Null) {
                self.wrong_type(node, "inputs", "a mapping of input names to `{ type: … }`");
            }
            return out;
        };
        for (key, spec) in entries {
            if !valid_identifier(&key.name) {
                self.error(key.pos, key.name.chars().count(), Code::InvalidName, format!("`{}` is not a valid input name", key.name), Some("templates read inputs as `input.NAME`: use letters, digits and `_`, not starting with a digit".into()));
                continue;
            }
            let problems_before = self.diags.len();
            let mut declared = DeclaredInput {
                name: key.name.clone(),
                may_be_absent: false,
            };
            let what = format!("inputs.{}", key.name);
            let Some(f) = self.fields(spec, &what, INPUT_KEYS, &["type"]) else {
                out.declared.push(declared);
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
            declared.may_be_absent =
                self.diags.len() == problems_before && !required && default.is_none();
            out.declared.push(declared);
            if let Some(ty) = ty {
                out.specs.push(InputSpec {
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

    pub(super) fn secrets(&mut self, node: &Node) -> Vec<String> {
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
}
