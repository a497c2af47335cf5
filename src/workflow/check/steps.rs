//! Steps and `on_failure` hooks: ids, kinds (`http`, `approval`, `sleep`, `sleep_until`,
//! `email`), URLs, methods, headers, recipients, `timeout`, and `retry` with its `defaults`.
//!
//! Part of the pure core: no I/O.

use super::names::valid_step_id;
use super::refs::{NoSecrets, Scope};
use super::{Checker, Fields};
use crate::workflow::address::{check_address, split_addresses};
use crate::workflow::diagnostic::Code;
use crate::workflow::model::*;
use crate::workflow::schema::{
    APPROVAL_KEYS, DEFAULTS_KEYS, EMAIL_KEYS, FLOW_CONTROL_KEYS, HOOK_KEYS, HTTP_KEYS, RETRY_KEYS,
    STEP_KEYS,
};
use crate::workflow::suggest::{did_you_mean, list};
use crate::workflow::template;
use crate::workflow::yaml::{Key, Node, Pos, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub(super) const STEP_KINDS: &[&str] = &[
    "http",
    "approval",
    "sleep",
    "sleep_until",
    "email",
    "wait_for_event",
    "call",
];
pub(super) const HOOK_KINDS: &[&str] = &["http", "email"];
pub(super) const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
pub(super) const BACKOFFS: &[&str] = &["exponential", "fixed", "linear"];

/// What `defaults` gives every step that does not say otherwise.
pub(super) struct StepDefaults {
    pub(super) timeout: Duration,
    pub(super) retry: Retry,
    /// For `http` steps.
    pub(super) flow: Option<FlowControl>,
}

impl Default for StepDefaults {
    fn default() -> Self {
        StepDefaults {
            timeout: DEFAULT_TIMEOUT,
            retry: Retry::default(),
            flow: None,
        }
    }
}

impl Checker<'_> {
    pub(super) fn defaults(&mut self, node: &Node, scope: &Scope) -> StepDefaults {
        let Some(f) = self.fields(node, "defaults", DEFAULTS_KEYS, &[]) else {
            return StepDefaults::default();
        };
        let timeout = f
            .get("timeout")
            .and_then(|n| self.positive_duration(n, "timeout"))
            .unwrap_or(DEFAULT_TIMEOUT);
        let retry = match f.get("retry") {
            Some(n) => self.retry(n, &Retry::default()),
            None => Retry::default(),
        };
        let flow = f
            .get("flow_control")
            .and_then(|n| self.flow_control(n, scope));
        StepDefaults {
            timeout,
            retry,
            flow,
        }
    }

    /// `flow_control: { key, parallelism, rate, period }`.
    fn flow_control(&mut self, node: &Node, scope: &Scope) -> Option<FlowControl> {
        let f = self.fields(node, "flow_control", FLOW_CONTROL_KEYS, &["key"])?;
        let key = f.get("key").and_then(|n| {
            let s = self.nonempty_string(n, "key")?;
            // Stored with the call in the database and listed by the API.
            let scope = Scope {
                no_secrets: Some(NoSecrets::Stored("a `flow_control` key")),
                ..*scope
            };
            self.template(n, s, &scope);
            Some(Template(s.to_string()))
        });
        let count = |this: &mut Self, what: &str, max: u32| -> Option<Option<u32>> {
            let Some(n) = f.get(what) else {
                return Some(None);
            };
            match n.value {
                Value::Int(i) if i >= 1 && i <= i64::from(max) => {
                    Some(Some(u32::try_from(i).expect("checked to fit")))
                }
                Value::Int(_) => {
                    let w = this.width(n);
                    this.error(
                        n.pos,
                        w,
                        Code::InvalidValue,
                        format!("`{what}` must be between 1 and {max}"),
                        Some(match what {
                            "parallelism" => "the calls of the key in flight at once; leave it out for no limit".into(),
                            _ => "the calls of the key started per `period`; leave it out for no limit".into(),
                        }),
                    );
                    None
                }
                _ => {
                    this.wrong_type(n, what, "a whole number");
                    None
                }
            }
        };
        let parallelism = count(self, "parallelism", MAX_FLOW_PARALLELISM);
        let rate = count(self, "rate", MAX_FLOW_RATE);
        let period = match f.get("period") {
            Some(n) => self.positive_duration(n, "period"),
            None => Some(crate::flow::DEFAULT_PERIOD),
        };
        if f.get("period").is_some() && f.get("rate").is_none() {
            let k = f.key("period").expect("the key of a present value");
            self.error(
                k.pos,
                k.name.chars().count(),
                Code::InvalidValue,
                "`period` is the period of `rate`, which is not given",
                Some("add `rate:` (calls started per period), or remove `period`".into()),
            );
        }
        let (parallelism, rate) = (parallelism?, rate?);
        if parallelism.is_none() && rate.is_none() {
            self.error(
                node.pos,
                1,
                Code::MissingKey,
                "`flow_control` limits nothing without `parallelism` or `rate`",
                Some("add `parallelism:` (calls in flight) or `rate:` (calls per `period`)".into()),
            );
            return None;
        }
        Some(FlowControl {
            key: key?,
            parallelism,
            rate,
            period: period?,
        })
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

    pub(super) fn step(
        &mut self,
        node: &Node,
        scope: &Scope,
        defaults: &StepDefaults,
        hook_id: Option<String>,
        seen_ids: &mut BTreeMap<String, Pos>,
    ) -> Option<Step> {
        let in_hook = hook_id.is_some();
        let what = if in_hook { "on_failure hook" } else { "step" };
        let (keys, required): (&[&str], &[&str]) = if in_hook {
            (HOOK_KEYS, &[])
        } else {
            (STEP_KEYS, &["id"])
        };
        let f = self.fields(node, what, keys, required)?;
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
                } else if let Some(first) = seen_ids.get(s) {
                    let w = self.width(n);
                    let line = first.line;
                    self.error(
                        n.pos,
                        w,
                        Code::DuplicateStepId,
                        format!("step id `{s}` is already used on line {line}"),
                        Some("step ids must be unique in a workflow".into()),
                    );
                } else {
                    seen_ids.insert(s.to_string(), n.pos);
                }
                // A step whose id has a problem is still checked through: its other mistakes
                // are reported in the same pass (the workflow is refused either way).
                s.to_string()
            }
            None => hook_id?,
        };
        let item_name: Option<String> = if f.get("foreach").is_some() {
            Some(
                f.get("as")
                    .and_then(|n| self.item_name(n))
                    .unwrap_or_else(|| "item".to_string()),
            )
        } else {
            None
        };
        let outer = Scope {
            current: Some(&id),
            ..*scope
        };
        let scope = Scope {
            item: item_name.as_deref(),
            ..outer
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
        if kind_key.name == "call" {
            // The called run is bounded by its own workflow's `timeout` and retries its own
            // steps; a key here would be silently ignored.
            for key in ["timeout", "retry"] {
                if let Some(k) = f.key(key) {
                    self.error(
                        k.pos,
                        k.name.chars().count(),
                        Code::InvalidValue,
                        format!("a `call` step cannot have `{key}`"),
                        Some(
                            "the called workflow's own `timeout` bounds its run, and its steps' `retry` retry them"
                                .into(),
                        ),
                    );
                }
            }
        }
        let timeout = f
            .get("timeout")
            .and_then(|n| self.positive_duration(n, "timeout"))
            .unwrap_or(defaults.timeout);
        let retry = match f.get("retry") {
            Some(n) => self.retry(n, &defaults.retry),
            None => defaults.retry.clone(),
        };
        let needs = if in_hook {
            Vec::new()
        } else {
            self.needs(f.get("needs"), &id, &scope)
        };
        let when = f
            .get("when")
            .and_then(|n| self.one_of(n, "when", &Join::NAMES))
            .and_then(Join::parse)
            .unwrap_or_default();
        let continue_on_error = f
            .get("continue_on_error")
            .and_then(|n| self.boolean(n, "continue_on_error"))
            .unwrap_or(false);
        let foreach = self.foreach(&f, kind_key, item_name.clone(), &outer, &scope);
        let flow_control = match f.get("flow_control") {
            Some(_) if kind_key.name != "http" => {
                let k = f.key("flow_control").expect("the key of a present value");
                self.error(
                    k.pos,
                    k.name.chars().count(),
                    Code::InvalidValue,
                    format!("a `{}` step cannot have `flow_control`", kind_key.name),
                    Some("`flow_control` limits the calls of `http` steps".into()),
                );
                None
            }
            Some(n) => self.flow_control(n, &scope),
            None if kind_key.name == "http" && !in_hook => defaults.flow.clone(),
            None => None,
        };
        let kind = match kind_key.name.as_str() {
            "http" => StepKind::Http(self.http(kind_node, &scope)?),
            "approval" => StepKind::Approval(self.approval(kind_node, &scope)?),
            "email" => StepKind::Email(self.email(kind_node, &scope)?),
            "wait_for_event" => StepKind::WaitForEvent(self.wait_for_event(kind_node, &scope)?),
            "call" => StepKind::Call(self.call(kind_node, &scope)?),
            "sleep" => StepKind::Sleep(self.duration(kind_node, "sleep")?),
            "sleep_until" => {
                let s = self.nonempty_string(kind_node, "sleep_until")?;
                if template::is_template(s) {
                    let scope = Scope {
                        no_secrets: Some(NoSecrets::Engine("`sleep_until`")),
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
            needs,
            when,
            continue_on_error,
            foreach,
            flow_control,
        })
    }

    /// `as`: a name templates can use for the item (not one of their roots).
    fn item_name(&mut self, node: &Node) -> Option<String> {
        let s = self.nonempty_string(node, "as")?;
        let valid = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let taken = super::refs::ROOTS.contains(&s) || s == "loop";
        if !valid || taken {
            let w = self.width(node);
            let why = if taken {
                format!("`{s}` is already a name templates use")
            } else {
                format!("`{s}` is not a name templates can use")
            };
            self.error(
                node.pos,
                w,
                Code::BadForeach,
                why,
                Some("write a name of letters, digits and `_` such as `user`".into()),
            );
            return None;
        }
        Some(s.to_string())
    }

    /// `foreach` and its keys; they are refused on a kind that cannot fan out, and without
    /// `foreach`.
    fn foreach(
        &mut self,
        f: &Fields,
        kind_key: &Key,
        item_name: Option<String>,
        outer: &Scope,
        inner: &Scope,
    ) -> Option<Foreach> {
        let Some(list) = f.get("foreach") else {
            for key in ["as", "key", "max_parallel", "fail_fast"] {
                if let Some(k) = f.key(key) {
                    self.error(
                        k.pos,
                        k.name.chars().count(),
                        Code::BadForeach,
                        format!("`{key}` belongs to a `foreach` step"),
                        Some("add `foreach:` with the list to go through, or remove it".into()),
                    );
                }
            }
            return None;
        };
        if !matches!(kind_key.name.as_str(), "http" | "email") {
            let k = f.key("foreach").expect("the key of a present value");
            self.error(
                k.pos,
                k.name.chars().count(),
                Code::BadForeach,
                format!("a `{}` step cannot have `foreach`", kind_key.name),
                Some("`foreach` works on `http` and `email` steps".into()),
            );
            return None;
        }
        let items = match &list.value {
            Value::Str(s) if template::is_template(s) => {
                self.template(list, s, outer);
                list.to_json()
            }
            Value::Seq(entries) => {
                if entries.len() > MAX_FOREACH_ITEMS {
                    let w = self.width(list);
                    self.error(
                        list.pos,
                        w,
                        Code::BadForeach,
                        format!(
                            "`foreach` lists {} items, over the limit of {MAX_FOREACH_ITEMS}",
                            entries.len()
                        ),
                        Some("split the work into several runs".into()),
                    );
                    return None;
                }
                self.templates_in(list, outer);
                list.to_json()
            }
            _ => {
                self.wrong_type(
                    list,
                    "foreach",
                    "a list, or a template that renders one (`\"{{ steps.users.body.items }}\"`)",
                );
                return None;
            }
        };
        let key = f.get("key").and_then(|n| {
            let s = self.nonempty_string(n, "key")?;
            self.template(n, s, inner);
            Some(Template(s.to_string()))
        });
        let max_parallel = match f.get("max_parallel") {
            None => DEFAULT_MAX_PARALLEL,
            Some(n) => match n.value {
                Value::Int(i) if (1..=i64::from(MAX_PARALLEL)).contains(&i) => {
                    u32::try_from(i).expect("in range")
                }
                Value::Int(_) => {
                    let w = self.width(n);
                    self.error(
                        n.pos,
                        w,
                        Code::InvalidValue,
                        format!("`max_parallel` must be between 1 and {MAX_PARALLEL}"),
                        None,
                    );
                    DEFAULT_MAX_PARALLEL
                }
                _ => {
                    self.wrong_type(n, "max_parallel", "an integer");
                    DEFAULT_MAX_PARALLEL
                }
            },
        };
        let fail_fast = f
            .get("fail_fast")
            .and_then(|n| self.boolean(n, "fail_fast"))
            .unwrap_or(true);
        Some(Foreach {
            items,
            as_name: item_name.unwrap_or_else(|| "item".into()),
            key,
            max_parallel,
            fail_fast,
        })
    }

    /// A step's `needs`: earlier steps only (so the graph has no cycles). Without the key, the
    /// step before it.
    fn needs(&mut self, node: Option<&Node>, id: &str, scope: &Scope) -> Vec<String> {
        let Some(node) = node else {
            return scope
                .earlier
                .last()
                .map(|(p, _)| vec![p.clone()])
                .unwrap_or_default();
        };
        let Value::Seq(items) = &node.value else {
            self.wrong_type(
                node,
                "needs",
                "a list of step ids (`[fetch, sync]`, or `[]`)",
            );
            return Vec::new();
        };
        let mut needs: Vec<String> = Vec::new();
        for item in items {
            let Some(name) = self.nonempty_string(item, "needs") else {
                continue;
            };
            let w = self.width(item);
            if name == id {
                self.error(
                    item.pos,
                    w,
                    Code::BadNeeds,
                    format!("step `{id}` needs itself"),
                    Some("a step can wait only for steps before it".into()),
                );
            } else if scope.earlier.iter().any(|(e, _)| e == name) {
                if !needs.iter().any(|n| n == name) {
                    needs.push(name.to_string());
                }
            } else if scope.all.iter().any(|(e, _)| e == name) {
                self.error(
                    item.pos,
                    w,
                    Code::BadNeeds,
                    format!("step `{name}` comes after `{id}`, so `{id}` cannot wait for it"),
                    Some(format!(
                        "a step can wait only for steps before it; move `{id}` after `{name}`"
                    )),
                );
            } else {
                let hint = match did_you_mean(name, scope.all.iter().map(|(e, _)| e.as_str())) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!(
                        "steps before this one: {}",
                        list(
                            &scope
                                .earlier
                                .iter()
                                .map(|(e, _)| e.as_str())
                                .collect::<Vec<_>>()
                        )
                    ),
                };
                self.error(
                    item.pos,
                    w,
                    Code::BadNeeds,
                    format!("there is no step `{name}`"),
                    Some(hint),
                );
            }
        }
        needs
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
                        let lower = k.name.to_ascii_lowercase();
                        if lower.starts_with("upstash-")
                            || lower.starts_with("runner-")
                            || lower == "idempotency-key"
                        {
                            let hint = if matches!(
                                lower.as_str(),
                                "upstash-message-id"
                                    | "idempotency-key"
                                    | "upstash-deduplication-id"
                            ) {
                                "runner sends its own deduplication id in `Upstash-Message-Id` and `Idempotency-Key`; to choose it, write `dedup_id:` in `http:` (a template)".to_string()
                            } else {
                                "runner sets `Upstash-*`, `Idempotency-Key` and `Runner-*` headers on every call (the signature, the dedup id, the attempt); use another name".to_string()
                            };
                            self.error(
                                k.pos,
                                k.name.chars().count(),
                                Code::ReservedHeader,
                                format!("`{}` is a header runner sets itself", k.name),
                                Some(hint),
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
        let dedup_id = f.get("dedup_id").and_then(|n| {
            let s = self.nonempty_string(n, "dedup_id")?;
            self.template(n, s, scope);
            Some(Template(s.to_string()))
        });
        Some(HttpCall {
            url: url?,
            method: method?,
            headers,
            body,
            dedup_id,
            published: None,
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
        // Stored with the run and shown on the approval page (`store_approval_links`).
        let shown = |place| Scope {
            no_secrets: Some(NoSecrets::Shown(place)),
            ..*scope
        };
        let subject = self.text_template(&f, "subject", &shown("an approval's `subject`"));
        let body = self.text_template(&f, "body", &shown("an approval's `body`"));
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
        let on_reject_continue = match f.get("on_reject") {
            Some(n) => self.one_of(n, "on_reject", &["end", "continue"])? == "continue",
            None => false,
        };
        Some(Approval {
            to: to?,
            subject: subject??,
            body: body?,
            timeout: timeout?,
            on_timeout: on_timeout?,
            on_reject_continue,
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
}

/// The id and kind of a step node, if it has them (used before the step itself is checked).
/// The step ids a step's `needs` names, read before the steps are checked (so templates can
/// tell an upstream step from a sibling); None without the key. Mistakes are reported later.
pub(super) fn raw_needs(node: &Node) -> Option<Vec<String>> {
    let entries = node.as_map()?;
    let (_, n) = entries.iter().find(|(k, _)| k.name == "needs")?;
    match &n.value {
        Value::Seq(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        ),
        _ => Some(Vec::new()),
    }
}

pub(super) fn step_identity(node: &Node) -> Option<(String, &'static str)> {
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
    // What later templates see of it: the items, when it fans out.
    let kind = if entries.iter().any(|(k, _)| k.name == "foreach") {
        "foreach"
    } else {
        kind
    };
    Some((id, kind))
}
