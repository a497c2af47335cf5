//! Templates: static analysis for `runner validate`, and rendering at dispatch time.
//!
//! Part of the pure core: no I/O. Rendering takes the context as an argument.
//!
//! A string that is exactly one expression, `"{{ input.days }}"`, renders to the expression's
//! native value (an integer, an object…), as GitHub Actions and Argo do; any other string with
//! template syntax renders to a string; a string without template syntax is left as it is.

use minijinja::{Environment, UndefinedBehavior};
use std::collections::BTreeSet;
use std::sync::OnceLock;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env
    })
}

/// Conditions read steps that may have been skipped: there, a missing value is false, not an error.
/// (The checker has already refused references to undeclared inputs and unknown steps or fields.)
fn condition_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env
    })
}

/// Whether `s` contains template syntax at all.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// If `s` is exactly one `{{ expr }}`, the expression text and its byte offset in `s`.
pub fn single_expression(s: &str) -> Option<(&str, usize)> {
    let t = s.trim();
    let lead = s.len() - s.trim_start().len();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    let start = lead + (t.len() - t.trim_start_matches("{{").len());
    Some((inner, start))
}

/// A syntax error inside a template: message and byte range within the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub offset: usize,
    pub len: usize,
}

/// One chain of lookups rooted at a free variable: `steps['fetch-user'].body.email`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub root: String,
    /// Attribute or constant-subscript names after the root, in order.
    pub path: Vec<Segment>,
    /// Byte offset and length of the whole chain in the template text.
    pub offset: usize,
    pub len: usize,
    /// Text right after the chain (used to spot `steps.fetch-user`).
    pub followed_by_minus: Option<String>,
    /// The filter or test applied to the chain right after it: `input.x | default('a')`,
    /// `input.x is defined` (used to tell a reference that may meet an undefined value).
    pub then: Option<Then>,
}

/// A filter or test applied to a reference chain, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    Filter(String),
    Test(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    /// `.name` (false) or `['name']` (true).
    pub subscript: bool,
    pub offset: usize,
}

/// A filter (`| upper`) or test (`is defined`) name and its byte offset in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub name: String,
    pub offset: usize,
}

/// What `runner validate` needs to know about one template.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Free variables (not assigned inside the template), as minijinja sees them.
    pub free: BTreeSet<String>,
    pub references: Vec<Reference>,
    /// Filters and tests that minijinja does not have: they fail only when rendered.
    pub unknown_filters: Vec<Name>,
    pub unknown_tests: Vec<Name>,
}

/// Names used as filters and tests, found by the same scan as references.
#[derive(Default)]
struct Calls {
    filters: Vec<Name>,
    tests: Vec<Name>,
}

fn syntax_error(e: &minijinja::Error, text: &str) -> SyntaxError {
    let range = e.range().unwrap_or(0..0);
    SyntaxError {
        message: e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_string),
        offset: range.start.min(text.len()),
        len: range.len().max(1),
    }
}

/// Whether minijinja has a filter of this name (it looks filters up only when rendering).
pub fn filter_exists(name: &str) -> bool {
    let probe = env().render_str(&format!("{{{{ none | {name} }}}}"), ());
    !matches!(probe, Err(e) if e.kind() == minijinja::ErrorKind::UnknownFilter)
}

/// Whether minijinja has a test of this name (`x is defined`).
pub fn test_exists(name: &str) -> bool {
    let probe = env().render_str(&format!("{{{{ none is {name} }}}}"), ());
    !matches!(probe, Err(e) if e.kind() == minijinja::ErrorKind::UnknownTest)
}

/// Parses a template and lists the lookups it makes.
pub fn analyze(text: &str) -> Result<Analysis, SyntaxError> {
    let tpl = env()
        .template_from_str(text)
        .map_err(|e| syntax_error(&e, text))?;
    let free: BTreeSet<String> = tpl.undeclared_variables(false).into_iter().collect();
    let mut calls = Calls::default();
    let references = scan_references(text, &mut calls)
        .into_iter()
        .filter(|r| free.contains(&r.root))
        .collect();
    Ok(Analysis {
        free,
        references,
        unknown_filters: calls
            .filters
            .into_iter()
            .filter(|f| !filter_exists(&f.name))
            .collect(),
        unknown_tests: calls
            .tests
            .into_iter()
            .filter(|t| !test_exists(&t.name))
            .collect(),
    })
}

/// Checks an `if:` expression as the engine compiles it ([`eval_condition`]).
pub fn check_condition(expr: &str) -> Result<(), SyntaxError> {
    condition_env()
        .compile_expression(expr)
        .map(drop)
        .map_err(|e| syntax_error(&e, expr))
}

/// Finds identifier chains inside `{{ }}` and `{% %}` blocks, skipping string literals.
fn scan_references(text: &str, calls: &mut Calls) -> Vec<Reference> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'{' || !matches!(bytes[i + 1], b'{' | b'%') {
            i += 1;
            continue;
        }
        let close = if bytes[i + 1] == b'{' { "}}" } else { "%}" };
        let start = i + 2;
        let end = find_outside_strings(text, start, close).unwrap_or(text.len());
        scan_block(text, start, end, &mut out, calls);
        i = end + 2;
    }
    out
}

fn find_outside_strings(text: &str, from: usize, needle: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if b == b'\'' || b == b'"' {
                    quote = Some(b);
                } else if bytes[i..].starts_with(needle.as_bytes()) {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn scan_block(text: &str, start: usize, end: usize, out: &mut Vec<Reference>, calls: &mut Calls) {
    let bytes = text.as_bytes();
    let mut i = start;
    let mut prev_significant: u8 = b' ';
    // The last two words, while nothing but words came between: `is` and `is not` start a test.
    let mut words: (&str, &str) = ("", "");
    while i < end {
        let b = bytes[i];
        if b == b'\'' || b == b'"' {
            i = skip_string(bytes, i, end);
            prev_significant = b'"';
            words = ("", "");
            continue;
        }
        if is_ident_start(b) && !(i > start && (is_ident(bytes[i - 1]) || bytes[i - 1] == b'.')) {
            let root_start = i;
            while i < end && is_ident(bytes[i]) {
                i += 1;
            }
            let root = &text[root_start..i];
            let name = || Name {
                name: root.to_string(),
                offset: root_start,
            };
            let after_is = words.1 == "is" || (words.0 == "is" && words.1 == "not");
            words = (words.1, root);
            // Filter names (`| upper`) and test names (`is defined`) are not variables.
            if prev_significant == b'|' {
                calls.filters.push(name());
                prev_significant = b'a';
                continue;
            }
            if after_is && root != "not" {
                calls.tests.push(name());
                prev_significant = b'a';
                continue;
            }
            let mut path = Vec::new();
            loop {
                if i < end && bytes[i] == b'.' && i + 1 < end && is_ident_start(bytes[i + 1]) {
                    let s = i + 1;
                    let mut j = s;
                    while j < end && is_ident(bytes[j]) {
                        j += 1;
                    }
                    path.push(Segment {
                        name: text[s..j].to_string(),
                        subscript: false,
                        offset: s,
                    });
                    i = j;
                } else if i < end && bytes[i] == b'[' {
                    let mut j = i + 1;
                    while j < end && bytes[j] == b' ' {
                        j += 1;
                    }
                    if j < end && (bytes[j] == b'\'' || bytes[j] == b'"') {
                        let q = bytes[j];
                        let s = j + 1;
                        let close = skip_string(bytes, j, end);
                        let mut k = close;
                        while k < end && bytes[k] == b' ' {
                            k += 1;
                        }
                        if k < end && bytes[k] == b']' && close > s && bytes[close - 1] == q {
                            path.push(Segment {
                                name: text[s..close - 1].to_string(),
                                subscript: true,
                                offset: s,
                            });
                            i = k + 1;
                            continue;
                        }
                    }
                    break;
                } else {
                    break;
                }
            }
            let followed_by_minus = if i < end && bytes[i] == b'-' {
                let s = i;
                let mut j = i;
                while j < end && (is_ident(bytes[j]) || bytes[j] == b'-') {
                    j += 1;
                }
                Some(text[s..j].to_string())
            } else {
                None
            };
            out.push(Reference {
                root: root.to_string(),
                path,
                offset: root_start,
                len: i - root_start,
                followed_by_minus,
                then: then(&text[i..end]),
            });
            prev_significant = b'a';
            continue;
        }
        if !b.is_ascii_whitespace() {
            prev_significant = b;
            words = ("", "");
        }
        i += 1;
    }
}

/// The filter (`| name`) or test (`is name`, `is not name`) that `rest`, the text right after a
/// chain, starts with.
fn then(rest: &str) -> Option<Then> {
    let word = |s: &str| -> String {
        s.bytes()
            .take_while(|b| is_ident(*b))
            .map(char::from)
            .collect()
    };
    let rest = rest.trim_start();
    if let Some(after) = rest.strip_prefix('|')
        && !after.starts_with('|')
    {
        let name = word(after.trim_start());
        return (!name.is_empty()).then_some(Then::Filter(name));
    }
    let after = rest.strip_prefix("is")?;
    if !after.starts_with(char::is_whitespace) {
        return None;
    }
    let after = after.trim_start();
    let after = match after.strip_prefix("not") {
        Some(a) if a.starts_with(char::is_whitespace) => a.trim_start(),
        _ => after,
    };
    let name = word(after);
    (!name.is_empty()).then_some(Then::Test(name))
}

fn skip_string(bytes: &[u8], at: usize, end: usize) -> usize {
    let q = bytes[at];
    let mut i = at + 1;
    while i < end {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == q {
            return i + 1;
        }
        i += 1;
    }
    end
}

/// Renders one string. Exactly one `{{ expr }}` gives the expression's native JSON value.
pub fn render_str(text: &str, ctx: &minijinja::Value) -> Result<serde_json::Value, String> {
    if !is_template(text) {
        return Ok(serde_json::Value::String(text.to_string()));
    }
    if let Some((expr, _)) = single_expression(text) {
        let compiled = env().compile_expression(expr).map_err(describe)?;
        let value = compiled.eval(ctx).map_err(describe)?;
        if value.is_undefined() {
            return Err(format!("`{}` is undefined", expr.trim()));
        }
        return serde_json::to_value(&value).map_err(|e| e.to_string());
    }
    env()
        .render_str(text, ctx)
        .map(serde_json::Value::String)
        .map_err(describe)
}

/// Renders a string template to text (a native value is turned into its JSON text, strings as is).
pub fn render_text(text: &str, ctx: &minijinja::Value) -> Result<String, String> {
    Ok(match render_str(text, ctx)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// Renders every string inside a JSON value.
pub fn render_json(
    value: &serde_json::Value,
    ctx: &minijinja::Value,
) -> Result<serde_json::Value, String> {
    Ok(match value {
        serde_json::Value::String(s) => render_str(s, ctx)?,
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| render_json(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates an `if:` condition. A bare expression (`steps.a.status == 200`) is accepted too.
pub fn eval_condition(text: &str, ctx: &minijinja::Value) -> Result<bool, String> {
    let expr = condition_expression(text);
    let compiled = condition_env().compile_expression(expr).map_err(describe)?;
    let value = compiled.eval(ctx).map_err(describe)?;
    Ok(value.is_true())
}

/// The expression inside an `if:` value, with or without `{{ }}`.
pub fn condition_expression(text: &str) -> &str {
    condition_expression_at(text).0
}

/// [`condition_expression`] and its byte offset in `text`.
pub fn condition_expression_at(text: &str) -> (&str, usize) {
    single_expression(text).unwrap_or_else(|| (text.trim(), text.len() - text.trim_start().len()))
}

fn describe(e: minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// The context object templates see, from a JSON object.
pub fn context(value: &serde_json::Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_through_attributes_and_subscripts() {
        let a = analyze("Hi {{ steps['fetch-user'].body.email | lower }} {{ input.days }}")
            .expect("parses");
        let refs: Vec<(String, Vec<String>)> = a
            .references
            .iter()
            .map(|r| {
                (
                    r.root.clone(),
                    r.path.iter().map(|s| s.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            refs,
            [
                (
                    "steps".to_string(),
                    vec!["fetch-user".into(), "body".into(), "email".into()]
                ),
                ("input".to_string(), vec!["days".into()]),
            ]
        );
    }

    #[test]
    fn filters_strings_and_loop_variables_are_not_references() {
        let a =
            analyze("{% for x in input.items %}{{ x.name | upper }}{% endfor %}{{ 'input.nope' }}")
                .expect("parses");
        let roots: Vec<&str> = a.references.iter().map(|r| r.root.as_str()).collect();
        assert_eq!(roots, ["input"]);
    }

    #[test]
    fn unknown_filters_and_tests_are_found_known_ones_are_not() {
        let a = analyze(
            "{{ input.x | lower | nosuch(1) }}{% if input.y is not defined and input.z is oddd %}\
             {{ 'a | fake' }}{% endif %}{{ input.w | default('x') is string }}",
        )
        .expect("parses");
        let names = |v: &[Name]| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a.unknown_filters), ["nosuch"]);
        assert_eq!(names(&a.unknown_tests), ["oddd"]);
        assert_eq!(a.unknown_filters[0].offset, 21);
        // Filters and tests are not variables.
        let roots: Vec<&str> = a.references.iter().map(|r| r.root.as_str()).collect();
        assert_eq!(roots, ["input", "input", "input", "input"]);
    }

    #[test]
    fn condition_expressions_are_checked_as_the_engine_compiles_them() {
        assert_eq!(condition_expression_at("  a == 1 "), ("a == 1", 2));
        assert_eq!(condition_expression_at("{{ a == 1 }}"), (" a == 1 ", 2));
        assert!(check_condition("steps.a.status == 200").is_ok());
        // Text around `{{ }}` is not one expression: the engine cannot evaluate it.
        assert!(check_condition("{{ a }} and {{ b }}").is_err());
        assert!(check_condition("a == 200 }}").is_err());
    }

    #[test]
    fn the_filter_or_test_right_after_a_chain_is_kept() {
        let a = analyze(
            "{{ input.a | default('x') }}{{ input.b|d(1) | upper }}{{ input.c is not defined }}\
             {{ input.d is defined }}{{ input.e }}{{ input.f ~ 'x' }}{{ input.g in [1] }}",
        )
        .expect("parses");
        let then: Vec<Option<Then>> = a.references.iter().map(|r| r.then.clone()).collect();
        assert_eq!(
            then,
            [
                Some(Then::Filter("default".into())),
                Some(Then::Filter("d".into())),
                Some(Then::Test("defined".into())),
                Some(Then::Test("defined".into())),
                None,
                None,
                None,
            ]
        );
    }

    #[test]
    fn spots_a_hyphenated_id_written_with_a_dot() {
        let a = analyze("{{ steps.fetch-user.body }}").expect("parses");
        let r = &a.references[0];
        assert_eq!(r.path[0].name, "fetch");
        assert_eq!(r.followed_by_minus.as_deref(), Some("-user"));
    }

    #[test]
    fn syntax_errors_carry_a_range() {
        let e = analyze("hello {{ input.x ").expect_err("unclosed");
        assert!(e.offset <= 17, "{e:?}");
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let ctx = context(&json!({"input": {"days": 7, "user": {"a": 1}}}));
        assert_eq!(render_str("{{ input.days }}", &ctx), Ok(json!(7)));
        assert_eq!(render_str("{{ input.user }}", &ctx), Ok(json!({"a": 1})));
        assert_eq!(
            render_str("days: {{ input.days }}", &ctx),
            Ok(json!("days: 7"))
        );
        assert_eq!(render_str("plain", &ctx), Ok(json!("plain")));
        assert!(render_str("{{ input.missing }}", &ctx).is_err());
        assert!(render_str("x {{ input.missing }}", &ctx).is_err());
    }

    #[test]
    fn conditions() {
        let ctx = context(&json!({"steps": {"review": {"decision": "approved"}}}));
        assert_eq!(
            eval_condition("{{ steps.review.decision == 'approved' }}", &ctx),
            Ok(true)
        );
        assert_eq!(
            eval_condition("steps.review.decision == 'rejected'", &ctx),
            Ok(false)
        );
    }
}
