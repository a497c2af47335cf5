//! JSON read strictly: a key given twice in one object is refused, naming it. (serde_json keeps
//! the last one, so `{"amount": 1, "amount": 100}` would silently mean 100 to runner and perhaps
//! 1 to whatever produced or logged it.) Used for every JSON body of the API and for the CLI's
//! `--input`.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as one JSON value; refuses a duplicate key with its line and column.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Strict(value) = Strict::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{key}` (a key may appear once in an object)"
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        for text in [
            r#"{"a": 1, "b": [true, null, -2, 1.5, "x"], "c": {"d": {}}}"#,
            "[]",
            "null",
            "18446744073709551615",
            "-9223372036854775808",
            "1e400",
            r#""\u00e9""#,
        ] {
            let want: Result<Value, _> = serde_json::from_str(text);
            let got = parse_strict(text.as_bytes());
            assert_eq!(got.ok(), want.ok(), "{text}");
        }
    }

    #[test]
    fn a_duplicate_key_is_refused_with_its_name_and_place() {
        for (text, key) in [
            (r#"{"who": "a", "who": "b"}"#, "who"),
            (r#"{"a": {"x": 1, "x": 1}}"#, "x"),
            (r#"[{"k": 1}, {"k": 2, "k": 3}]"#, "k"),
        ] {
            let e = parse_strict(text.as_bytes()).expect_err(text).to_string();
            assert!(e.contains(&format!("duplicate key `{key}`")), "{text}: {e}");
            assert!(e.contains("line 1 column"), "{text}: {e}");
        }
        assert!(parse_strict(br#"{"a": 1} {"#).is_err(), "trailing text");
        assert!(
            parse_strict(br#"{"a": 1, "b": {"a": 2}}"#).is_ok(),
            "the same key in two objects"
        );
    }
}
