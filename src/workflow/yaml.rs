//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Part of the pure core: no I/O. serde-saphyr parses the text; this module keeps every value's
//! line and column so that the checker can point at it. The checker walks this tree instead of
//! deserializing straight into typed structs because serde stops at the first unknown key, missing
//! key or wrong type, and `runner validate` must report every problem in one pass.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use serde_saphyr::budget::{Budget, BudgetBreach};
use std::fmt;

/// A 1-based line and column (in characters), plus the byte offset when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
    pub offset: Option<usize>,
}

impl Pos {
    pub const START: Pos = Pos {
        line: 1,
        col: 1,
        offset: Some(0),
    };

    fn from_location(loc: serde_saphyr::Location) -> Pos {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX).max(1),
            col: u32::try_from(loc.column()).unwrap_or(u32::MAX).max(1),
            offset: loc
                .span()
                .byte_offset()
                .and_then(|o| usize::try_from(o).ok()),
        }
    }

    /// The position of byte `offset` in `source` (used for places inside a scalar).
    pub fn at_offset(source: &str, offset: usize) -> Pos {
        let offset = offset.min(source.len());
        let before = &source[..floor_char_boundary(source, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(col).unwrap_or(u32::MAX),
            offset: Some(offset),
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A mapping key with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// What a user would call this kind of value, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Converts to JSON, dropping positions.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A YAML syntax error with its position, or a well-formed file past one of the parser's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    /// The file parses but goes past a limit (nesting depth, aliases, …): `message` names the
    /// limit and its value, and the hint says what to do.
    pub over_limit: bool,
    pub hint: Option<String>,
}

impl SyntaxError {
    fn at(pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos,
            message: message.into(),
            over_limit: false,
            hint: None,
        }
    }
}

/// How deep keys, lists and values may nest. serde-saphyr allows 64, but deserializing one
/// level takes several recursive calls: 64 levels overflowed a 2 MiB thread stack in a debug
/// build (the size of the threads that check files), 50 did not. A workflow needs about 5 levels
/// around an HTTP body, so 32 leaves a body 25 or more.
pub const MAX_DEPTH: usize = 32;

/// The parser's limits for one file: serde-saphyr's defaults, with [`MAX_DEPTH`].
fn budget() -> Budget {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget
}

/// Parses one YAML document. An empty document is `Null` at the start.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    if source.trim().is_empty()
        || source
            .lines()
            .all(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
    {
        return Ok(Node {
            pos: Pos::START,
            value: Value::Null,
        });
    }
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.budget = Some(budget());
    match serde_saphyr::from_str_with_options::<Node>(source, options) {
        Ok(node) => Ok(node),
        Err(err) => {
            let pos = err.location().map(Pos::from_location).unwrap_or(Pos::START);
            if let Some(breach) = breach_of(&err) {
                let (message, hint) = over_limit(breach, &budget());
                return Err(SyntaxError {
                    pos,
                    message,
                    over_limit: true,
                    hint: Some(hint.into()),
                });
            }
            let message = clean_message(&err.without_snippet().to_string());
            Err(refine(source, pos, message))
        }
    }
}

/// The limit an error reports, also when it is wrapped (a snippet, an alias being replayed).
fn breach_of(err: &serde_saphyr::Error) -> Option<&BudgetBreach> {
    match err {
        serde_saphyr::Error::Budget { breach, .. } => Some(breach),
        serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } => breach_of(error),
        _ => None,
    }
}

/// What a limit is, with its value, and what to do about it.
fn over_limit(breach: &BudgetBreach, b: &Budget) -> (String, &'static str) {
    const ALIASES: &str = "each alias (`*name`) repeats its anchor's value (`&name`); write the values out, or repeat fewer";
    const SMALLER: &str = "a workflow file describes one workflow in a few hundred lines; move generated data out of it";
    match breach {
        BudgetBreach::Depth { .. } => (
            format!(
                "the values here are nested deeper than a workflow file may go ({} levels)",
                b.max_depth
            ),
            "flatten this part: a workflow needs a few levels, an HTTP body rarely more than ten",
        ),
        // Counted as parsed, each alias adding its anchor's values again: large files and alias
        // bombs both end here.
        BudgetBreach::Nodes { .. } => (
            format!(
                "the file holds more than {} values, counting those its aliases (`*name`) repeat",
                thousands(b.max_nodes)
            ),
            "a workflow file describes one workflow in a few hundred lines: move generated data out of it, and repeat anchors (`&name`) less",
        ),
        BudgetBreach::Aliases { .. } => (
            format!(
                "the file uses more than {} aliases (`*name`)",
                thousands(b.max_aliases)
            ),
            ALIASES,
        ),
        BudgetBreach::AliasAnchorRatio { aliases, anchors } => (
            format!(
                "the file uses {} aliases of {} anchor{}, more than {} per anchor",
                thousands(*aliases),
                thousands(*anchors),
                if *anchors == 1 { "" } else { "s" },
                b.alias_anchor_ratio_multiplier
            ),
            "many aliases of few anchors is how a YAML alias bomb is built; write the values out",
        ),
        BudgetBreach::Anchors { .. } => (
            format!(
                "the file defines more than {} anchors (`&name`)",
                thousands(b.max_anchors)
            ),
            SMALLER,
        ),
        BudgetBreach::RecordedAnchorEvents { .. } | BudgetBreach::RecordedAnchorBytes { .. } => (
            format!(
                "the anchored values here are too large to repeat: at most {} items or {} MiB in all",
                thousands(b.max_recorded_anchor_events),
                b.max_recorded_anchor_bytes >> 20
            ),
            ALIASES,
        ),
        BudgetBreach::MergeKeys { .. } => (
            format!(
                "the file uses more than {} merge keys (`<<`)",
                thousands(b.max_merge_keys)
            ),
            SMALLER,
        ),
        BudgetBreach::Events { .. } => (
            format!(
                "the file holds more than {} YAML items (keys, values, lists and mappings)",
                thousands(b.max_events)
            ),
            SMALLER,
        ),
        BudgetBreach::Documents { .. } => (
            format!(
                "the file holds more than {} YAML documents",
                thousands(b.max_documents)
            ),
            "a workflow file holds one workflow: one document, without `---` between others",
        ),
        BudgetBreach::ScalarBytes { .. } => (
            format!(
                "the file's text values add up to more than {} MiB",
                b.max_total_scalar_bytes >> 20
            ),
            SMALLER,
        ),
        BudgetBreach::InputBytes { .. } => (
            format!(
                "the file is larger than {} MiB",
                b.max_reader_input_bytes.unwrap_or(usize::MAX) >> 20
            ),
            SMALLER,
        ),
        other => (
            format!("the file goes past a limit of the YAML parser: {other:?}"),
            SMALLER,
        ),
    }
}

/// `250000` → `250,000`.
fn thousands(n: usize) -> String {
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

fn clean_message(raw: &str) -> String {
    // serde-saphyr appends " at line X column Y"; the diagnostic carries the position itself.
    let first = raw.lines().next().unwrap_or(raw).trim();
    let cut = first.find(" at line ").map_or(first, |i| &first[..i]);
    cut.trim_end_matches('.').to_string()
}

/// The parser's words for a few mistakes name its own API, and some of its positions are past
/// the mistake: say them in the file's terms, where the mistake is.
fn refine(source: &str, pos: Pos, message: String) -> SyntaxError {
    let at_line_start = |line: usize| {
        let offset: usize = source
            .split_inclusive('\n')
            .take(line - 1)
            .map(str::len)
            .sum();
        Pos::at_offset(source, offset)
    };
    let lines: Vec<&str> = source.lines().collect();
    let reported = usize::try_from(pos.line).unwrap_or(usize::MAX);
    if let Some(key) = message
        .strip_prefix("duplicate mapping key: ")
        .and_then(|rest| rest.split(", set DuplicateKeyPolicy").next())
    {
        return SyntaxError::at(
            pos,
            format!("duplicate key `{key}`: a mapping gives each key once"),
        );
    }
    if message.starts_with("multiple YAML documents") {
        // At the `---` that starts the second document, not the line after it.
        let line = (1..=reported.min(lines.len()))
            .rev()
            .find(|&l| lines[l - 1].trim_end() == "---" || lines[l - 1].starts_with("--- "))
            .unwrap_or(reported);
        return SyntaxError::at(
            at_line_start(line.max(1)),
            "a second YAML document starts here (`---`); a workflow file holds one workflow",
        );
    }
    if message.contains("tabs") {
        // At the tab itself.
        if let Some(line) = lines.get(reported.saturating_sub(1))
            && let Some(i) = line.find('\t')
        {
            let start = at_line_start(reported);
            return SyntaxError::at(
                Pos::at_offset(source, start.offset.unwrap_or(0) + i),
                "a tab is used for indentation; YAML indents with spaces",
            );
        }
    }
    if message.contains("quoted scalar") {
        // An unclosed quote makes the parser stop further on (often past the end of the file):
        // point at the quote that opens it, on the last line before with an odd count of them.
        let quote_at = |line: &str| {
            let (mut open, mut escaped) = (None, false);
            for (i, c) in line.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if open.is_some() => escaped = true,
                    '"' => open = if open.is_some() { None } else { Some(i) },
                    _ => {}
                }
            }
            open
        };
        if let Some((line, i)) = (1..=reported.min(lines.len()))
            .rev()
            .find_map(|l| quote_at(lines[l - 1]).map(|i| (l, i)))
        {
            let start = at_line_start(line);
            return SyntaxError::at(
                Pos::at_offset(source, start.offset.unwrap_or(0) + i),
                "this quoted string is not closed",
            );
        }
    }
    SyntaxError::at(pos, message)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Node {
            pos: Pos::from_location(spanned.referenced),
            value: spanned.value,
        })
    }
}

/// A mapping key: any scalar, kept as its text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Value, D2::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let value = map.next_value::<Node>()?;
                    entries.push((
                        Key {
                            pos: Pos::from_location(key.referenced),
                            name: key.value.0,
                        },
                        value,
                    ));
                }
                Ok(Value::Map(entries))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let src = "name: x\non:\n  webhook: true\nsteps:\n  - id: a\n    sleep: 3d\n";
        let root = parse(src).expect("valid yaml");
        let map = root.as_map().expect("map");
        assert_eq!(map[0].0.name, "name");
        assert_eq!((map[0].0.pos.line, map[0].0.pos.col), (1, 1));
        assert_eq!((map[0].1.pos.line, map[0].1.pos.col), (1, 7));
        assert_eq!(map[1].0.name, "on");
        let steps = &map[2].1;
        let Value::Seq(items) = &steps.value else {
            panic!("seq")
        };
        let step = items[0].as_map().expect("map");
        assert_eq!((step[1].0.pos.line, step[1].0.pos.col), (6, 5));
        assert_eq!((step[1].1.pos.line, step[1].1.pos.col), (6, 12));
        assert_eq!(step[1].1.pos.offset, Some(src.find("3d").expect("3d")));
    }

    #[test]
    fn scalars_keep_their_types() {
        let root = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: on\n").expect("yaml");
        let kinds: Vec<_> = root
            .as_map()
            .expect("map")
            .iter()
            .map(|(_, v)| v.value.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "an integer",
                "a string",
                "a boolean",
                "nothing (null)",
                "a number",
                "a string"
            ]
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").expect_err("broken");
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// `a: [[…1…]]` with `depth` levels in all (the root mapping is one).
    fn nested(depth: usize) -> String {
        format!("a: {}1{}\n", "[".repeat(depth - 1), "]".repeat(depth - 1))
    }

    #[test]
    fn each_limit_is_reported_as_what_it_is_with_its_value() {
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        let e = parse(&nested(MAX_DEPTH + 1)).expect_err("too deep");
        assert!(e.over_limit);
        assert_eq!(
            e.message,
            "the values here are nested deeper than a workflow file may go (32 levels)"
        );
        assert_eq!(
            (e.pos.line, e.pos.col),
            (1, 35),
            "at the bracket past the limit"
        );

        let ratio = format!("a: &a x\nb: [{}]\n", vec!["*a"; 200].join(", "));
        let e = parse(&ratio).expect_err("alias bomb");
        assert_eq!(
            e.message,
            "the file uses 200 aliases of 1 anchor, more than 10 per anchor"
        );

        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (name, prev) in ["b", "c", "d", "e", "f", "g"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f"])
        {
            laughs.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            ));
        }
        let e = parse(&laughs).expect_err("billion laughs");
        assert!(e.over_limit, "{e:?}");
        assert_eq!(
            e.message,
            "the file holds more than 250,000 values, counting those its aliases (`*name`) repeat"
        );

        let many = format!("a: [{}]\n", vec!["1"; 250_000].join(","));
        let big = parse(&many).expect_err("too many values");
        assert_eq!(
            big.message, e.message,
            "a large file without aliases is the same limit"
        );
        assert!(big.hint.is_some_and(|h| !h.is_empty()));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(250_000), "250,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
