//! Templates: static analysis for `runner validate`, and rendering at dispatch time.
//!
//! Part of the pure core: no I/O. Rendering takes the context as an argument.
//!
//! A string that is exactly one expression, `"{{ input.days }}"`, renders to the expression's
//! native value (an integer, an object…), as GitHub Actions and Argo do; any other string with
//! template syntax renders to a string; a string without template syntax is left as it is.

use minijinja::{Environment, UndefinedBehavior};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// How many template instructions (minijinja fuel) one template may run when a step is sent:
/// its URL, one header, one string of its body, its subject. A 1,000-row table with five filtered
/// columns and an `if` per row uses ~37,000; a `{% for %}` in a `{% for %}` over `range(100000)`
/// would use 10 billion. 1,000,000 runs in ~25 ms (release build, this VM's core).
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// How many an `if` condition or a `sleep_until` template may run. The engine evaluates them
/// while it applies a change, with every other run's change waiting: a real condition uses
/// under 50 (`steps.users.body.items | selectattr('active') | list | length > 0` uses 9).
pub const ENGINE_FUEL: u64 = 10_000;
/// The most text one template may render (minijinja stops writing past it); the request, and
/// the e-mail, as a whole have the same limits (`engine::request`).
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| strict_env(TEMPLATE_FUEL))
}

fn strict_env(fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(fuel));
    env
}

/// `sleep_until`, which the engine renders: strict, with the engine's smaller budget.
fn engine_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| strict_env(ENGINE_FUEL))
}

/// Conditions read steps that may have been skipped: there, a missing value is false, not an error.
/// (The checker has already refused references to undeclared inputs and unknown steps or fields.)
fn condition_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(ENGINE_FUEL));
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
/// Bounded: [`TEMPLATE_FUEL`] instructions and [`MAX_RENDERED_BYTES`] of output.
pub fn render_str(text: &str, ctx: &minijinja::Value) -> Result<serde_json::Value, String> {
    render_in(env(), TEMPLATE_FUEL, text, ctx)
}

fn render_in(
    env: &Environment<'static>,
    fuel: u64,
    text: &str,
    ctx: &minijinja::Value,
) -> Result<serde_json::Value, String> {
    let describe = |e: minijinja::Error| describe_with(e, fuel);
    if !is_template(text) {
        return Ok(serde_json::Value::String(text.to_string()));
    }
    if let Some((expr, _)) = single_expression(text) {
        let compiled = env.compile_expression(expr).map_err(describe)?;
        let value = compiled.eval(ctx).map_err(describe)?;
        if value.is_undefined() {
            return Err(format!("`{}` is undefined", expr.trim()));
        }
        let value = serde_json::to_value(&value).map_err(|e| e.to_string())?;
        let len = json_len(&value);
        if len > MAX_RENDERED_BYTES {
            return Err(too_large(len));
        }
        return Ok(value);
    }
    let tpl = env.template_from_str(text).map_err(describe)?;
    let mut out = Capped {
        buf: Vec::new(),
        over: false,
        stop: STOP.with(|s| s.borrow().clone()),
        stopped: false,
    };
    match tpl.render_captured_to(ctx, &mut out) {
        Ok(_) => {}
        Err(_) if out.over => return Err(too_large(MAX_RENDERED_BYTES + 1)),
        Err(_) if out.stopped => return Err("rendering was stopped".into()),
        Err(e) => return Err(describe(e)),
    }
    String::from_utf8(out.buf)
        .map(serde_json::Value::String)
        .map_err(|e| format!("the template rendered invalid UTF-8: {e}"))
}

/// The length of a value's JSON text, without writing it out.
fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer(&mut n, value).expect("a JSON value serializes");
    n.0
}

fn too_large(len: usize) -> String {
    if len > MAX_RENDERED_BYTES {
        format!(
            "the template renders to more than {} KiB, runner's limit for one template",
            MAX_RENDERED_BYTES / 1024
        )
    } else {
        format!("the template renders to {len} bytes")
    }
}

thread_local! {
    /// Set by [`stoppable`] for the renders it runs on this thread.
    static STOP: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `f` (which renders templates) so that setting `stop` stops it: a template being
/// rendered stops at its next write of output, failing with "rendering was stopped". The shell
/// renders off its async workers and sets it when the step's timeout passes, so that a slow
/// template does not go on using a core for nothing. (A loop that writes nothing runs on until
/// its fuel is spent.)
pub fn stoppable<T>(stop: Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Arc<AtomicBool>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let before = self.0.take();
            STOP.with(|s| *s.borrow_mut() = before);
        }
    }
    let _reset = Reset(STOP.with(|s| s.borrow_mut().replace(stop)));
    f()
}

/// Where a template's output goes: refuses to grow past [`MAX_RENDERED_BYTES`], or to go on
/// once `stop` is set, which makes minijinja stop rendering.
struct Capped {
    buf: Vec<u8>,
    over: bool,
    stop: Option<Arc<AtomicBool>>,
    stopped: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            self.stopped = true;
            return Err(std::io::Error::other("rendering was stopped"));
        }
        if self.buf.len() + b.len() > MAX_RENDERED_BYTES {
            self.over = true;
            return Err(std::io::Error::other("the rendering limit is reached"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders a string template to text (a native value is turned into its JSON text, strings as is).
pub fn render_text(text: &str, ctx: &minijinja::Value) -> Result<String, String> {
    Ok(match render_str(text, ctx)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// [`render_text`] for a template the engine renders itself (`sleep_until`), within
/// [`ENGINE_FUEL`].
pub fn render_engine_text(text: &str, ctx: &minijinja::Value) -> Result<String, String> {
    Ok(match render_in(engine_env(), ENGINE_FUEL, text, ctx)? {
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

/// [`render_json`] for what the engine renders itself (a `foreach` list), each string within
/// [`ENGINE_FUEL`].
pub fn render_engine_json(
    value: &serde_json::Value,
    ctx: &minijinja::Value,
) -> Result<serde_json::Value, String> {
    Ok(match value {
        serde_json::Value::String(s) => render_in(engine_env(), ENGINE_FUEL, s, ctx)?,
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| render_engine_json(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_engine_json(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// A context that also has a `foreach` item as `name` and `loop.index` (from 0), over `base`
/// (merged lazily: `base` is not copied).
pub fn with_item(
    base: &minijinja::Value,
    name: &str,
    value: &serde_json::Value,
    index: u32,
) -> minijinja::Value {
    let mut loop_ = std::collections::BTreeMap::new();
    loop_.insert("index".to_string(), minijinja::Value::from(index));
    let mut item = std::collections::BTreeMap::new();
    item.insert(
        name.to_string(),
        minijinja::Value::from(minijinja::value::Serde(value)),
    );
    item.insert("loop".to_string(), minijinja::Value::from(loop_));
    minijinja::value::merge_maps([minijinja::Value::from(item), base.clone()])
}

#[cfg(test)]
#[test]
fn an_item_is_seen_beside_the_run_context() {
    let base = context(&serde_json::json!({ "input": { "a": 1 } }));
    let ctx = with_item(&base, "user", &serde_json::json!({ "id": "u7" }), 3);
    let out = render_text("{{ user.id }} {{ loop.index }} {{ input.a }}", &ctx).expect("renders");
    assert_eq!(out, "u7 3 1");
}

/// Evaluates an `if:` condition. A bare expression (`steps.a.status == 200`) is accepted too.
pub fn eval_condition(text: &str, ctx: &minijinja::Value) -> Result<bool, String> {
    let expr = condition_expression(text);
    let describe = |e| describe_with(e, ENGINE_FUEL);
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

fn describe_with(e: minijinja::Error, fuel: u64) -> String {
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        return format!(
            "the template runs more than {} template instructions, runner's limit (a loop that \
             never ends, or one over far more items than any request needs)",
            thousands(fuel)
        );
    }
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// `1000000` as `1,000,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

    /// A realistic big template: a 1,000-row table from a response, five filtered columns and
    /// an `if` per row. It must render well within the budget (it uses ~37,000 of 1,000,000).
    fn big_report() -> (String, minijinja::Value) {
        let items: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                json!({"id": i, "email": format!("user{i}@example.com"), "name": format!("user {i}"),
                       "amount": f64::from(i) * 1.5, "tags": ["a", "b", "c"]})
            })
            .collect();
        let ctx = context(&json!({"steps": {"users": {"status": 200, "body": {"items": items}}}}));
        let text = "{% for u in steps.users.body.items %}| {{ loop.index }} | {{ u.name | title }} \
                    | {{ u.email | lower }} | {{ '%.2f' | format(u.amount) }} | {{ u.tags | join(', ') }} \
                    |{% if u.amount > 100 %} big{% endif %}\n{% endfor %}";
        (text.to_string(), ctx)
    }

    #[test]
    fn a_big_real_template_renders_within_the_budget() {
        let (text, ctx) = big_report();
        let out = render_text(&text, &ctx).expect("renders");
        assert_eq!(out.lines().count(), 1000);
        // With a twentieth of the budget it still renders: the default leaves room for 25×.
        let env = strict_env(TEMPLATE_FUEL / 20);
        assert!(render_in(&env, TEMPLATE_FUEL / 20, &text, &ctx).is_ok());
    }

    /// The template bomb of issue 18: nested loops over `range(100000)` stop at the budget with
    /// an error that says so, in well under a second, instead of running for hours.
    #[test]
    fn a_template_bomb_runs_out_of_fuel_with_a_clear_error() {
        let ctx = context(&json!({}));
        let bomb =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let started = std::time::Instant::now();
        let err = render_str(bomb, &ctx).expect_err("out of fuel");
        assert!(
            err.contains("more than 1,000,000 template instructions"),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // The engine's templates have the smaller budget.
        let err = render_engine_text(
            "{% for i in range(100000) %}{% endfor %}2026-01-01T00:00:00Z",
            &ctx,
        )
        .expect_err("out of the engine's fuel");
        assert!(
            err.contains("more than 10,000 template instructions"),
            "{err}"
        );
    }

    /// A template cannot build a 300 MB string: its output stops at 1 MiB, and a single
    /// expression's value is measured too.
    #[test]
    fn rendered_text_is_capped() {
        let ctx = context(&json!({}));
        for text in [
            "{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}",
            "{{ 'x' * 2000000 }}",
            "a {{ 'x' * 2000000 }}",
        ] {
            let err = render_str(text, &ctx).expect_err(text);
            assert!(err.contains("more than 1024 KiB"), "{text}: {err}");
        }
        let ok = render_text("{{ 'x' * 1000000 }}", &ctx).expect("under the cap");
        assert_eq!(ok.len(), 1_000_000);
    }

    /// The shell stops a slow render when the step's timeout passes (here: before it starts).
    #[test]
    fn a_render_can_be_stopped() {
        let ctx = context(&json!({}));
        let stop = Arc::new(AtomicBool::new(true));
        let err = stoppable(stop, || {
            render_str("{% for i in range(10) %}x{% endfor %}", &ctx)
        })
        .expect_err("stopped");
        assert_eq!(err, "rendering was stopped");
        assert!(render_str("{% for i in range(10) %}x{% endfor %}", &ctx).is_ok());
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
