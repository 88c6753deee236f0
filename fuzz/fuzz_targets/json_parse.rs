//! Arbitrary bytes as JSON: graysplit's hand-written parser (`json::Node::parse`) must never
//! panic, and must judge every input like serde_json, the reference it replaced: accept exactly
//! what serde_json accepts (bar duplicate keys, which graysplit refuses and serde_json lets
//! through), with the same strings, structure and numbers (within a few units in the last place,
//! where neither converts exactly), and name a path, a line and a column in every error.
#![no_main]

use graysplit::json::Node;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Equal, numbers within `ulps`, objects compared by key (serde_json's map is sorted).
fn same(ours: &Node, theirs: &Value) -> bool {
    match (ours, theirs) {
        (Node::Null, Value::Null) => true,
        (Node::Bool(a), Value::Bool(b)) => a == b,
        (Node::Num(a), Value::Number(b)) => {
            let b = b.as_f64().unwrap_or(f64::NAN);
            *a == b || a.to_bits().abs_diff(b.to_bits()) <= 8
        }
        (Node::Str(a), Value::String(b)) => a == b,
        (Node::List(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
        (Node::Obj(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = Node::parse(data);
    let theirs = serde_json::from_slice::<Value>(data);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert!(same(a, b), "parsed differently: {a:?} vs {b:?}"),
        (Err(e), Ok(_)) => assert!(e.problem.starts_with("duplicate key"), "we refuse what serde_json accepts: {e}"),
        (Ok(a), Err(e)) => panic!("we accept what serde_json refuses ({e}): {a:?}"),
        (Err(e), Err(_)) => assert!(!e.path.is_empty() && e.problem.contains(" at line "), "bad error {e:?}"),
    }
});
