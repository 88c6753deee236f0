//! How graysplit's JSON parser (src/json.rs) is judged against serde_json, the parser it
//! replaced. Shared by tests/prop_json.rs and the fuzz target fuzz/fuzz_targets/json_parse.rs,
//! so both hold it to the same terms.

use graysplit::json::Node;
use serde_json::Value;

/// Where neither parser converts exactly (src/json.rs: `number`), how many units in the last
/// place they may differ by.
pub const ULPS: u64 = 16;

/// Two numbers are the same bits, or finite and at most `ulps` apart (so -0 is not 0, and
/// f64::MAX is not infinity).
pub fn near(x: f64, y: f64, ulps: u64) -> bool {
    x.to_bits() == y.to_bits()
        || (x.is_finite() && y.is_finite() && x.to_bits().abs_diff(y.to_bits()) <= ulps)
}

/// A serde_json value as our tree (serde_json keeps the last of duplicate keys). Its objects
/// come sorted by key.
pub fn tree(v: &Value) -> Node {
    match v {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(*b),
        Value::Number(n) => Node::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Node::Str(s.clone()),
        Value::Array(items) => Node::List(items.iter().map(tree).collect()),
        Value::Object(map) => Node::Obj(map.iter().map(|(k, v)| (k.clone(), tree(v))).collect()),
    }
}

/// The same structure and strings, numbers within `ulps`, objects compared by key.
pub fn close(a: &Node, b: &Node, ulps: u64) -> bool {
    match (a, b) {
        (Node::Num(x), Node::Num(y)) => near(*x, *y, ulps),
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

/// Whether a tree holds a number at the edge of f64's range, where the parsers' roundings may
/// disagree on "out of range" (1.797693134862315650e308 is f64::MAX for std and for us, out of
/// range for serde_json).
pub fn at_range_edge(n: &Node) -> bool {
    match n {
        Node::Num(x) => x.abs() > 1.79e308,
        Node::List(items) => items.iter().any(at_range_edge),
        Node::Obj(fields) => fields.iter().any(|(_, v)| at_range_edge(v)),
        _ => false,
    }
}

/// The byte offset an error's `at line L column C` points at, if it says.
pub fn error_offset(data: &[u8], problem: &str) -> Option<usize> {
    let (line, column) = problem.rsplit(" at line ").next()?.split_once(" column ")?;
    let (line, column): (usize, usize) = (line.parse().ok()?, column.parse().ok()?);
    let line_start = match line {
        0 => return None,
        1 => 0,
        _ => data.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(line - 2)?.0 + 1,
    };
    (line_start + column).checked_sub(1)
}

/// Parses `data` with both and says how they disagree, if they do. They must accept the same
/// documents, bar duplicate keys (graysplit refuses them, serde_json keeps the last) and
/// numbers at the very edge of f64's range; read the same strings, structure and numbers
/// (within `ULPS`); and graysplit's every error must name a path, and a line and column inside
/// the input (or just past its end).
pub fn disagreement(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    match (Node::parse(data), serde_json::from_slice::<Value>(data)) {
        (Ok(ours), Ok(theirs)) => {
            let theirs = tree(&theirs);
            (!close(&ours, &theirs, ULPS)).then(|| format!("{text:?}: read {ours:?}, serde_json {theirs:?}"))
        }
        (Err(e), Ok(theirs)) => {
            let allowed = e.problem.starts_with("duplicate key")
                || (e.problem.starts_with("number out of range") && at_range_edge(&tree(&theirs)));
            (!allowed).then(|| format!("{text:?}: we refuse what serde_json accepts: {e}"))
        }
        (Ok(ours), Err(e)) => {
            let allowed = e.to_string().starts_with("number out of range") && at_range_edge(&ours);
            (!allowed).then(|| format!("{text:?}: we accept {ours:?}, serde_json refuses: {e}"))
        }
        (Err(e), Err(_)) => {
            let inside = error_offset(data, &e.problem).is_some_and(|at| at <= data.len());
            (e.path.is_empty() || !inside).then(|| format!("{text:?}: a path or a place missing in {e:?}"))
        }
    }
}
