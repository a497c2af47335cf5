//! The steps that wait for something outside the run: `wait_for_event` (an event sent to
//! runner) and `call` (a run of another workflow); and event names, which `on.event` and
//! `cancel_on` use too. Whether a called workflow exists is checked across files (`names`).
//!
//! Part of the pure core: no I/O.

use super::Checker;
use super::refs::{NoSecrets, Scope};
use crate::workflow::diagnostic::Code;
use crate::workflow::model::*;
use crate::workflow::schema::{CALL_KEYS, WAIT_FOR_EVENT_KEYS};
use crate::workflow::yaml::{Node, Value};

impl Checker<'_> {
    /// `call: { workflow, input }`. Whether the workflow exists and takes that input is checked
    /// across the files (`check_set`).
    pub(super) fn call(&mut self, node: &Node, scope: &Scope) -> Option<Call> {
        let f = self.fields(node, "call", CALL_KEYS, &["workflow"])?;
        let workflow = f.get("workflow").and_then(|n| {
            let s = self.nonempty_string(n, "workflow")?;
            if !super::names::valid_name(s) {
                let w = self.width(n);
                self.error(
                    n.pos,
                    w,
                    Code::InvalidName,
                    format!("`{s}` is not a workflow name"),
                    Some(
                        "the `name` of a workflow in this directory (letters, digits, `_.-`)"
                            .into(),
                    ),
                );
                return None;
            }
            Some(s.to_string())
        });
        let input = match f.get("input") {
            Some(n) if !matches!(n.value, Value::Map(_)) => {
                self.wrong_type(n, "input", "a mapping of the called workflow's inputs");
                return None;
            }
            Some(n) => {
                // Stored as the called run's input.
                let scope = Scope {
                    no_secrets: Some(NoSecrets::Stored("a `call` input")),
                    ..*scope
                };
                self.templates_in(n, &scope);
                Some(n.to_json())
            }
            None => None,
        };
        Some(Call {
            workflow: workflow?,
            input,
        })
    }

    pub(super) fn wait_for_event(&mut self, node: &Node, scope: &Scope) -> Option<WaitForEvent> {
        let f = self.fields(node, "wait_for_event", WAIT_FOR_EVENT_KEYS, &["event"])?;
        let event = f.get("event").and_then(|n| self.event_name(n));
        // Rendered by the engine when the step starts, and stored to match events against.
        let key_scope = Scope {
            no_secrets: Some(NoSecrets::Engine("a `wait_for_event` key")),
            ..*scope
        };
        let key = match f.get("key") {
            Some(n) => {
                let s = self.string(n, "key")?;
                self.template(n, s, &key_scope);
                Some(Template(s.to_string()))
            }
            None => None,
        };
        let timeout = match f.get("timeout") {
            Some(n) => self.positive_duration(n, "timeout"),
            None => Some(DEFAULT_EVENT_TIMEOUT),
        };
        let on_timeout_continue = match f.get("on_timeout") {
            Some(n) => self.one_of(n, "on_timeout", &["fail", "continue"])? == "continue",
            None => false,
        };
        Some(WaitForEvent {
            event: event?,
            key,
            timeout: timeout?,
            on_timeout_continue,
        })
    }

    /// An event's name (`order.created`), as `on.event`, `cancel_on` and `wait_for_event` name it.
    pub(super) fn event_name(&mut self, node: &Node) -> Option<String> {
        let s = self.nonempty_string(node, "event")?;
        if !valid_event_name(s) {
            let w = self.width(node);
            self.error(
                node.pos,
                w,
                Code::InvalidValue,
                format!("`{s}` is not a valid event name"),
                Some(
                    "use letters, digits and `.`, `_`, `-`, `:`, `/` (such as `payment.succeeded`), at most 200"
                        .into(),
                ),
            );
            return None;
        }
        Some(s.to_string())
    }
}
