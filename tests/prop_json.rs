//! Property tests of the hand-written JSON parser (src/json.rs) against references: serde_json
//! for what is a valid document and what it holds, Rust's correctly rounded `str::parse::<f64>`
//! for numbers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod json_reference;

use graysplit::json::{Node, MAX_DEPTH};
use json_reference::{close, disagreement, near, tree, ULPS};
use proptest::prelude::*;
use serde_json::Value;

/// JSON number text: the grammar's every part, with digit runs long enough to leave the exact
/// fast path sometimes.
fn number() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?"
}

/// Number text that stays within f64's range (what a valid document holds).
fn finite_number() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?([eE][+-]?[0-9]{1,2})?"
}

/// Arbitrary strings as JSON string literals, escaped by serde_json, or with every character
/// written as a \u escape (surrogate pairs beyond the BMP).
fn string_literal() -> impl Strategy<Value = String> {
    (any::<String>(), any::<bool>()).prop_map(|(s, escape_all)| {
        if !escape_all {
            return serde_json::to_string(&s).unwrap();
        }
        let mut out = String::from("\"");
        for unit in s.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
        out
    })
}

/// A JSON document as text, with random whitespace between tokens, and keys unique per object.
fn document() -> impl Strategy<Value = String> {
    let ws = prop::sample::select(vec!["", " ", "\n", "\t", "\r\n", "  "]);
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        finite_number(),
        string_literal(),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        let ws = ws.clone();
        prop_oneof![
            (prop::collection::vec((inner.clone(), ws.clone()), 0..6)).prop_map(|items| {
                let body: Vec<String> = items.into_iter().map(|(v, w)| format!("{w}{v}{w}")).collect();
                format!("[{}]", body.join(","))
            }),
            (prop::collection::btree_map("[a-z_\"\\\\é]{0,6}", (inner, ws), 0..6)).prop_map(|fields| {
                let body: Vec<String> = fields
                    .into_iter()
                    .map(|(k, (v, w))| format!("{w}{}{w}:{w}{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every valid document parses to what serde_json reads from it.
    #[test]
    fn valid_documents_agree_with_serde_json(doc in document()) {
        let ours = Node::parse(doc.as_bytes());
        let theirs: Value = serde_json::from_str(&doc).unwrap();
        let ours = ours.unwrap_or_else(|e| panic!("{doc:?}: {e}"));
        // serde_json's own conversion is not correctly rounded either beyond 2^53 or 10^±22.
        prop_assert!(close(&ours, &tree(&theirs), ULPS), "{doc:?}: {ours:?} vs {theirs:?}");
    }

    /// Numbers: correctly rounded on the exact path (m·10^k, m <= 2^53, |k| <= 22 once
    /// trailing zeros are folded into k), and within `ULPS` of the correctly rounded value
    /// everywhere else.
    #[test]
    fn numbers_agree_with_rusts_parser(text in number()) {
        let want: f64 = text.parse().unwrap();
        match Node::parse(text.as_bytes()) {
            Ok(Node::Num(got)) => {
                let (mantissa, exp) = text.split_once(['e', 'E']).unwrap_or((&text, "0"));
                let (int, frac) = mantissa.trim_start_matches('-').split_once('.').unwrap_or((mantissa.trim_start_matches('-'), ""));
                let mut k: i64 = exp.parse::<i64>().unwrap() - frac.len() as i64;
                let mut digits = format!("{int}{frac}").trim_start_matches('0').to_string();
                while digits.ends_with('0') {
                    digits.pop();
                    k += 1;
                }
                let exact_path = digits.is_empty()
                    || (digits.len() <= 16 && digits.parse::<u64>().unwrap() <= 1 << 53 && k.abs() <= 22);
                if exact_path {
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{}: {:e} vs {:e}", text, got, want);
                } else {
                    prop_assert!(near(got, want, ULPS), "{}: {:e} vs {:e}", text, got, want);
                }
            }
            Ok(other) => prop_assert!(false, "{}: {:?}", text, other),
            Err(e) => prop_assert!(
                e.problem.contains("out of range") && (want.is_infinite() || want.abs() > 1.79e308),
                "{}: {}", text, e
            ),
        }
    }

    /// Any bytes, or a valid document with one byte changed, cut or doubled: accepted exactly
    /// when serde_json accepts it (bar duplicate keys, which serde_json lets through, and
    /// numbers at the very edge of f64's range), never a panic, and an error always names a
    /// path and a line and column inside the document.
    #[test]
    fn damaged_documents_are_judged_like_serde_json(
        doc in document(),
        at in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"{}[]\",:\\ tfn0-.eE\x00\xff\xe7u".to_vec()),
        how in 0..4u8,
        noise in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = doc.into_bytes();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                2 => bytes.insert(i, byte),
                _ => bytes = noise,
            }
        }
        if let Some(why) = disagreement(&bytes) {
            prop_assert!(false, "{}", why);
        }
    }
}

#[test]
fn nesting_is_limited_like_serde_json() {
    for depth in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let doc = open.repeat(depth) + "1" + &close.repeat(depth);
            let ours = Node::parse(doc.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<Value>(&doc).is_ok();
            assert_eq!(ours, theirs, "depth {depth} of {open}");
            assert_eq!(ours, depth <= MAX_DEPTH, "depth {depth} of {open}");
        }
    }
}
