//! Property tests of the hand-written JSON parser (src/json.rs) against references: serde_json
//! for what is a valid document and what it holds, Rust's correctly rounded `str::parse::<f64>`
//! for numbers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use graysplit::json::{Node, MAX_DEPTH};
use proptest::prelude::*;
use serde_json::Value;

/// A serde_json value as our tree (serde_json keeps the last of duplicate keys; the documents
/// compared here have none). Its objects come sorted by key.
fn tree(v: &Value) -> Node {
    match v {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(*b),
        Value::Number(n) => Node::Num(n.as_f64().unwrap()),
        Value::String(s) => Node::Str(s.clone()),
        Value::Array(items) => Node::List(items.iter().map(tree).collect()),
        Value::Object(map) => Node::Obj(map.iter().map(|(k, v)| (k.clone(), tree(v))).collect()),
    }
}

/// Numbers differ by at most `ulps` units in the last place; structure must be equal.
fn close(a: &Node, b: &Node, ulps: u64) -> bool {
    match (a, b) {
        (Node::Num(x), Node::Num(y)) => x == y || x.to_bits().abs_diff(y.to_bits()) <= ulps,
        (Node::List(x), Node::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b, ulps))
        }
        (Node::Obj(x), Node::Obj(y)) => {
            // serde_json's map is sorted by key; ours keeps the document's order.
            let (mut x, mut y) = (x.iter().collect::<Vec<_>>(), y.iter().collect::<Vec<_>>());
            x.sort_by(|a, b| a.0.cmp(&b.0));
            y.sort_by(|a, b| a.0.cmp(&b.0));
            x.len() == y.len() && x.iter().zip(&y).all(|((ka, a), (kb, b))| ka == kb && close(a, b, ulps))
        }
        _ => a == b,
    }
}

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
        prop_assert!(close(&ours, &tree(&theirs), 8), "{doc:?}: {ours:?} vs {theirs:?}");
    }

    /// Numbers: correctly rounded within the fast path, and within a few units in the last
    /// place of the correctly rounded value everywhere else.
    #[test]
    fn numbers_agree_with_rusts_parser(text in number()) {
        let want: f64 = text.parse().unwrap();
        match Node::parse(text.as_bytes()) {
            Ok(Node::Num(got)) => {
                let digits: String = text.split(['e', 'E']).next().unwrap().chars().filter(char::is_ascii_digit).collect();
                let significant = digits.trim_start_matches('0').trim_end_matches('0');
                let exp: i64 = text.split(['e', 'E']).nth(1).map_or(0, |e| e.parse().unwrap());
                if significant.len() <= 15 && exp == 0 && digits.len() <= 22 {
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{}", text);
                } else {
                    prop_assert!(got == want || got.to_bits().abs_diff(want.to_bits()) <= 8, "{}: {:e} vs {:e}", text, got, want);
                }
            }
            Ok(other) => prop_assert!(false, "{}: {:?}", text, other),
            Err(e) => prop_assert!(want.is_infinite() && e.problem.contains("out of range"), "{}: {}", text, e),
        }
    }

    /// Any bytes, or a valid document with one byte changed, cut or doubled: accepted exactly
    /// when serde_json accepts it (bar duplicate keys, which serde_json lets through), never a
    /// panic, and an error always names a path and a line and column.
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
        let theirs = serde_json::from_slice::<Value>(&bytes);
        match (Node::parse(&bytes), theirs) {
            (Ok(ours), Ok(theirs)) => prop_assert!(close(&ours, &tree(&theirs), 8), "{:?}: {:?} vs {:?}", String::from_utf8_lossy(&bytes), ours, theirs),
            (Err(e), Ok(_)) => prop_assert!(e.problem.starts_with("duplicate key"), "{:?}: {}", String::from_utf8_lossy(&bytes), e),
            (Ok(ours), Err(e)) => prop_assert!(false, "{:?}: we accept {:?}, serde_json: {}", String::from_utf8_lossy(&bytes), ours, e),
            (Err(e), Err(_)) => prop_assert!(!e.path.is_empty() && e.problem.contains(" at line "), "{}", e),
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
