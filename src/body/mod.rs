//! JSON request bodies (DESIGN.md "JSON request bodies"): which requests have one worth reading
//! ([`is_json_content_type`]), the fields a plan's pointers name ([`extract`]), what a field is
//! to the matchers and the identity, and whether Envoy delivers bodies at all ([`watchdog`]).
//! Pure: the glue hands over bytes and events, nothing here calls the host.

pub mod extract;
pub mod model;
pub mod prompt;
pub mod watchdog;

pub use extract::{Field, Pointers};

use crate::matcher::StringMatch;

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

/// Whether a request body with these headers can be read for the decision (DESIGN.md "JSON
/// request bodies"): JSON, without `content-encoding`, and not announced longer than
/// `max_bytes`. A body whose `content-length` already says it is longer can never be read, so it
/// cannot change the decision and nothing waits for it (and Envoy, which answers 413 when a
/// filter buffers past its buffer limit, never buffers it for graysplit). A chunked body's
/// length is known only as it comes.
pub fn readable(
    content_type: Option<&[u8]>,
    content_encoding: Option<&[u8]>,
    content_length: Option<&[u8]>,
    max_bytes: usize,
) -> bool {
    let too_long = content_length.and_then(length).is_some_and(|n| n > max_bytes as u64);
    content_type.is_some_and(is_json_content_type) && content_encoding.is_none() && !too_long
}

/// A `content-length` value as a number (`None` when it is not one; Envoy refuses such requests).
pub fn length(content_length: &[u8]) -> Option<u64> {
    std::str::from_utf8(content_length).ok()?.trim().parse().ok()
}

/// Whether the field at a pointer (`None`: it resolves to nothing) satisfies `m`: a string is
/// its decoded UTF-8 bytes, a number or boolean its JSON text; null, an object or an array
/// matches only `present: true`.
pub fn matches(v: Option<&Field>, m: &StringMatch) -> bool {
    match (v, m) {
        (None, _) => m.matches(None),
        (Some(_), StringMatch::Present(want)) => *want,
        (Some(Field::Scalar(text)), _) => m.matches(Some(text)),
        (Some(Field::Other), _) => false,
    }
}

/// The field as a user id: a non-empty string or a number's or boolean's text.
pub fn identity(v: &Field) -> Option<&[u8]> {
    match v {
        Field::Scalar(t) if !t.is_empty() => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::type_complexity)]
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
    fn only_json_unencoded_bodies_within_max_bytes_are_read() {
        let json = Some(&b"application/json"[..]);
        let cases: &[(Option<&[u8]>, Option<&[u8]>, Option<&[u8]>, bool, &str)] = &[
            (json, None, None, true, "chunked: its length comes as it does"),
            (json, None, Some(b"4096"), true, "exactly max_bytes"),
            (json, None, Some(b"4097"), false, "announced longer than max_bytes"),
            (json, None, Some(b"0"), true, "empty"),
            (json, None, Some(b"x"), true, "a length Envoy would refuse: not known to be too long"),
            (json, Some(b"gzip"), Some(b"10"), false, "encoded"),
            (Some(b"text/plain"), None, Some(b"10"), false, "not JSON"),
            (None, None, Some(b"10"), false, "no content-type"),
        ];
        for (ct, ce, cl, want, why) in cases {
            assert_eq!(readable(*ct, *ce, *cl, 4096), *want, "{why}");
        }
    }

    #[test]
    fn fields_match_and_identify_as_design_says() {
        let mut p = Pointers::default();
        let names = ["/user", "/model", "/n", "/stream", "/temp", "/metadata", "/none", "/empty", "/missing"];
        for n in names {
            p.add(n);
        }
        let got = p
            .extract(
                br#"{"user": "u-7", "model": "qwen2.5-72b", "n": 3, "stream": true, "temp": 0.5,
                "metadata": {"conversation_id": "c1"}, "none": null, "empty": ""}"#,
            )
            .unwrap();
        let at = |n: &str| got[p.index(n).unwrap()].as_ref();
        let exact = |s: &str| StringMatch::Exact(s.as_bytes().into());
        assert!(matches(at("/model"), &StringMatch::OneOf(vec!["qwen2.5-72b".as_bytes().into()].into())));
        assert!(matches(at("/n"), &exact("3")) && matches(at("/stream"), &exact("true")));
        assert!(matches(at("/temp"), &exact("0.5")));
        assert!(matches(at("/metadata"), &StringMatch::Present(true)));
        assert!(!matches(at("/metadata"), &exact("{}")), "an object matches only present");
        assert!(!matches(at("/none"), &exact("null")) && matches(at("/none"), &StringMatch::Present(true)));
        assert!(
            matches(at("/missing"), &StringMatch::Present(false)) && !matches(at("/missing"), &exact(""))
        );
        assert_eq!(at("/user").and_then(identity), Some(&b"u-7"[..]));
        assert_eq!(at("/n").and_then(identity), Some(&b"3"[..]));
        assert_eq!(at("/empty").and_then(identity), None);
        assert_eq!(at("/metadata").and_then(identity), None);
    }
}
