//! JSON request bodies (DESIGN.md "JSON request bodies"): which requests have one worth reading,
//! and what a field of it is to the matchers and the identity. The glue holds a request only
//! for a plan that reads its body, and only while the body is JSON, unencoded and within
//! `body.max_bytes`.

use std::borrow::Cow;

use serde_json::Value;

use crate::decide::matcher::StringMatch;

/// `content-type` is `application/json` or `<type>/<subtype>+json`, parameters ignored, case
/// insensitive (`application/json; charset=utf-8`, `application/vnd.api+json`).
pub fn is_json_content_type(value: &[u8]) -> bool {
    let media = value.split(|&c| c == b';').next().unwrap_or_default();
    let media = media.trim_ascii().to_ascii_lowercase();
    let Some(slash) = media.iter().position(|&c| c == b'/') else { return false };
    let (kind, sub) = media.split_at(slash);
    let sub = sub.get(1..).unwrap_or_default();
    !kind.is_empty() && (media == b"application/json" || (sub.ends_with(b"+json") && sub.len() > 5))
}

/// A body's JSON, or `None` when it does not parse.
pub fn parse(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// Whether the field at a pointer (`None`: it resolves to nothing) satisfies `m`: a string is
/// its decoded UTF-8 bytes, a number or boolean its JSON text; null, an object or an array
/// matches only `present: true`.
pub fn matches(v: Option<&Value>, m: &StringMatch) -> bool {
    match v {
        None => m.matches(None),
        Some(v) => match (scalar(v), m) {
            (_, StringMatch::Present(want)) => *want,
            (Some(text), _) => m.matches(Some(&text)),
            (None, _) => false,
        },
    }
}

/// The field as a user id: a non-empty string or a number's or boolean's text.
pub fn identity(v: &Value) -> Option<Cow<'_, [u8]>> {
    scalar(v).filter(|t| !t.is_empty())
}

fn scalar(v: &Value) -> Option<Cow<'_, [u8]>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_bytes())),
        // Integers exactly as written; other numbers as claims are (`1.0` is `1`, `1e3` is
        // `1000`): one text per value, whichever way it came.
        Value::Number(n) => Some(Cow::Owned(
            match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i.to_string(),
                (_, Some(u), _) => u.to_string(),
                (_, _, Some(f)) => crate::config::error::fmt_num(f),
                _ => n.to_string(),
            }
            .into_bytes(),
        )),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { b"true" } else { b"false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_content_types_only() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
            " application/json ",
        ] {
            assert!(is_json_content_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "+json",
            "application/+json",
            "",
            "json",
        ] {
            assert!(!is_json_content_type(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn fields_match_and_identify_as_design_says() {
        let body = parse(br#"{"user": "u-7", "model": "qwen2.5-72b", "n": 3, "stream": true, "temp": 0.5,
            "metadata": {"conversation_id": "c1"}, "messages": [{"role": "user"}], "none": null, "empty": ""}"#)
        .unwrap();
        let exact = |s: &str| StringMatch::Exact(s.as_bytes().into());
        let at = |p: &str| body.pointer(p);
        assert!(matches(at("/model"), &StringMatch::OneOf(vec!["qwen2.5-72b".as_bytes().into()].into())));
        assert!(matches(at("/n"), &exact("3")) && matches(at("/stream"), &exact("true")));
        assert!(matches(at("/temp"), &exact("0.5")));
        let numbers = parse(br#"{"f": 1.0, "e": 1e3, "big": 12345678901234567890}"#).unwrap();
        let id = |p: &str| identity(numbers.pointer(p).unwrap()).map(|c| c.into_owned());
        assert_eq!(id("/f"), Some(b"1".to_vec()), "as claims are");
        assert_eq!(id("/e"), Some(b"1000".to_vec()));
        assert_eq!(id("/big"), Some(b"12345678901234567890".to_vec()), "exact");
        assert!(matches(at("/metadata/conversation_id"), &exact("c1")));
        assert!(matches(at("/messages/0/role"), &exact("user")));
        assert!(matches(at("/metadata"), &StringMatch::Present(true)));
        assert!(!matches(at("/metadata"), &exact("{}")), "an object matches only present");
        assert!(!matches(at("/none"), &exact("null")) && matches(at("/none"), &StringMatch::Present(true)));
        assert!(
            matches(at("/missing"), &StringMatch::Present(false)) && !matches(at("/missing"), &exact(""))
        );
        assert_eq!(identity(at("/user").unwrap()).as_deref(), Some(&b"u-7"[..]));
        assert_eq!(identity(at("/n").unwrap()).as_deref(), Some(&b"3"[..]));
        assert_eq!(identity(at("/empty").unwrap()), None);
        assert_eq!(identity(at("/messages").unwrap()), None);
        assert_eq!(parse(b"{\"user\": "), None);
        assert_eq!(parse(b"\xff"), None);
    }
}
