//! A version's model in a request body (DESIGN.md "Prompt matchers and versions as models"):
//! only the JSON string value of the top-level `model` is replaced; every other byte stays as
//! the client sent it (spacing, key order, escapes, a nested `model`).
//!
//! The body is read once with serde_json over its text; the top-level `model` values are found
//! as raw JSON text borrowed from the body (serde_json's `RawValue`), so their places are known
//! without a tree and without a second scan. A `model` that comes twice: the last one counts
//! (as most JSON readers an upstream uses take it) and must be a string; every top-level
//! `model` string is then replaced, so a reader that takes the first gets the new model too.

use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a body was passed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Not one UTF-8 JSON document.
    NotJson,
    /// No top-level `model` whose (last) value is a string.
    NoModel,
}

/// `body` with every top-level `model` string replaced by `literal` (a JSON string literal,
/// quotes included, as [`literal`] writes it).
pub fn rewrite(body: &[u8], literal: &[u8]) -> Result<Vec<u8>, Skipped> {
    let spans = spans(body)?;
    let removed: usize = spans.iter().map(|s| s.len()).sum();
    let mut out = Vec::with_capacity(body.len() - removed + literal.len() * spans.len());
    let mut at = 0;
    for s in &spans {
        out.extend_from_slice(body.get(at..s.start).unwrap_or_default());
        out.extend_from_slice(literal);
        at = s.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    Ok(out)
}

/// The model `name` as a JSON string literal (serde_json's escaping).
pub fn literal(name: &str) -> Box<[u8]> {
    serde_json::to_vec(name).unwrap_or_default().into()
}

/// The byte ranges of the top-level `model` strings of `body`, in order.
fn spans(body: &[u8]) -> Result<Vec<Range<usize>>, Skipped> {
    let text = std::str::from_utf8(body).map_err(|_| Skipped::NotJson)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Top.deserialize(&mut de).map_err(|_| Skipped::NotJson)?;
    de.end().map_err(|_| Skipped::NotJson)?;
    let base = text.as_ptr() as usize;
    let mut spans = Vec::with_capacity(found.len());
    let mut last_is_string = false;
    for raw in found {
        let v = raw.get();
        last_is_string = v.starts_with('"');
        if last_is_string {
            let start = v.as_ptr() as usize - base;
            spans.push(start..start + v.len());
        }
    }
    if last_is_string {
        Ok(spans)
    } else {
        Err(Skipped::NoModel)
    }
}

/// The document: an object's top-level `model` values, raw.
struct Top;

impl<'de> DeserializeSeed<'de> for Top {
    type Value = Vec<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top {
    type Value = Vec<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    super::extract::scalars_are!(Vec::new());
    super::extract::lists_are!('de, Vec::new());
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key_seed(super::prompt::Key(&["model"]))? {
            if key.is_some() {
                found.push(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rw(body: &str, model: &str) -> Result<String, Skipped> {
        rewrite(body.as_bytes(), &literal(model)).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn only_the_top_level_model_string_changes() {
        let cases = [
            (r#"{"model":"qwen3-72b","messages":[]}"#, r#"{"model":"canary","messages":[]}"#),
            (
                "{\n  \"messages\" : [ {\"role\":\"user\",\"content\":\"hi \\u00e9\"} ],\n  \"model\"  :\t\"qwen3-72b\" ,\"stream\":true }\n",
                "{\n  \"messages\" : [ {\"role\":\"user\",\"content\":\"hi \\u00e9\"} ],\n  \"model\"  :\t\"canary\" ,\"stream\":true }\n",
            ),
            (
                r#"{"metadata": {"model": "nested"}, "model": "q\u0077en", "tools": [{"model": "x"}]}"#,
                r#"{"metadata": {"model": "nested"}, "model": "canary", "tools": [{"model": "x"}]}"#,
            ),
            (r#"{"mod\u0065l": "a"}"#, r#"{"mod\u0065l": "canary"}"#),
            (r#"{"model": "a", "model": "b"}"#, r#"{"model": "canary", "model": "canary"}"#),
            (r#"{"model": 5, "model": "b"}"#, r#"{"model": 5, "model": "canary"}"#),
        ];
        for (body, want) in cases {
            assert_eq!(rw(body, "canary").unwrap(), want, "{body}");
        }
        assert_eq!(rw(r#"{"model":"a"}"#, "a \"quoted\" 模型").unwrap(), r#"{"model":"a \"quoted\" 模型"}"#);
    }

    #[test]
    fn bodies_without_a_top_level_model_string_are_skipped() {
        for (body, why) in [
            (r#"{"messages": []}"#, Skipped::NoModel),
            (r#"{"model": null}"#, Skipped::NoModel),
            (r#"{"model": {"name": "a"}}"#, Skipped::NoModel),
            (r#"{"model": "a", "model": 5}"#, Skipped::NoModel),
            (r#"{"metadata": {"model": "nested"}}"#, Skipped::NoModel),
            (r#"["model", "a"]"#, Skipped::NoModel),
            ("", Skipped::NotJson),
            (r#"{"model": "a"} {}"#, Skipped::NotJson),
            (r#"{"model": "a",}"#, Skipped::NotJson),
            ("model=a", Skipped::NotJson),
        ] {
            assert_eq!(rw(body, "x"), Err(why), "{body}");
        }
        assert_eq!(rewrite(b"{\"model\": \"\xff\"}", b"\"x\""), Err(Skipped::NotJson));
    }
}
