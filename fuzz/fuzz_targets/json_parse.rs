//! Arbitrary bytes as JSON: graysplit's hand-written parser (`json::Node::parse`) must never
//! panic, and must judge every input like serde_json, the reference it replaced: accept exactly
//! what serde_json accepts (bar duplicate keys, which graysplit refuses and serde_json lets
//! through, and numbers at the very edge of f64's range, where their roundings differ), with the
//! same strings, structure and numbers (within 16 units in the last place, where neither
//! converts exactly), and name a path and a line and column inside the input in every error.
#![no_main]

use graysplit::json::Node;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Where neither parser converts exactly, how many units in the last place they may differ by
/// (src/json.rs: `number`).
const ULPS: u64 = 16;

/// The same bits, or finite and at most ULPS apart (so -0 is not 0, and MAX is not infinity).
fn near(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_finite() && b.is_finite() && a.to_bits().abs_diff(b.to_bits()) <= ULPS)
}

/// Equal, numbers near, objects compared by key (serde_json's map is sorted).
fn same(ours: &Node, theirs: &Value) -> bool {
    match (ours, theirs) {
        (Node::Null, Value::Null) => true,
        (Node::Bool(a), Value::Bool(b)) => a == b,
        (Node::Num(a), Value::Number(b)) => b.as_f64().is_some_and(|b| near(*a, b)),
        (Node::Str(a), Value::String(b)) => a == b,
        (Node::List(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
        (Node::Obj(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => false,
    }
}

/// A number at the very edge of f64's range, where the two parsers' roundings may disagree on
/// "out of range" (1.797693134862315650e308 is f64::MAX for std and for us, out of range for
/// serde_json).
fn at_range_edge_ours(n: &Node) -> bool {
    match n {
        Node::Num(x) => x.abs() > 1.79e308,
        Node::List(items) => items.iter().any(at_range_edge_ours),
        Node::Obj(fields) => fields.iter().any(|(_, v)| at_range_edge_ours(v)),
        _ => false,
    }
}

fn at_range_edge_theirs(v: &Value) -> bool {
    match v {
        Value::Number(x) => x.as_f64().is_some_and(|x| x.abs() > 1.79e308),
        Value::Array(items) => items.iter().any(at_range_edge_theirs),
        Value::Object(fields) => fields.values().any(at_range_edge_theirs),
        _ => false,
    }
}

/// The byte offset an error's `at line L column C` points at, if it says.
fn error_offset(data: &[u8], problem: &str) -> Option<usize> {
    let (line, column) = problem.rsplit(" at line ").next()?.split_once(" column ")?;
    let (line, column): (usize, usize) = (line.parse().ok()?, column.parse().ok()?);
    let line_start = match line {
        0 => return None,
        1 => 0,
        _ => data.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(line - 2)?.0 + 1,
    };
    (line_start + column).checked_sub(1)
}

fuzz_target!(|data: &[u8]| {
    let ours = Node::parse(data);
    let theirs = serde_json::from_slice::<Value>(data);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert!(same(a, b), "parsed differently: {a:?} vs {b:?}"),
        (Err(e), Ok(b)) => assert!(
            e.problem.starts_with("duplicate key")
                || (e.problem.starts_with("number out of range") && at_range_edge_theirs(b)),
            "we refuse what serde_json accepts: {e}"
        ),
        (Ok(a), Err(e)) => assert!(
            e.to_string().starts_with("number out of range") && at_range_edge_ours(a),
            "we accept what serde_json refuses ({e}): {a:?}"
        ),
        (Err(e), Err(_)) => {
            assert!(!e.path.is_empty(), "an error without a path: {e:?}");
            let at = error_offset(data, &e.problem);
            assert!(at.is_some_and(|at| at <= data.len()), "the line and column point outside the input: {e:?}");
        }
    }
});
