//! A JSON document as a small tree, and typed reads from it that know their JSON path.
//!
//! serde_json does the parsing; this tree replaces serde's derived structs (and a path-tracking
//! wrapper) because those cost over 100 KB of wasm. It also refuses duplicate keys and names
//! every error by its path (`rules[2].split[0].percent`), which derived structs can't.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::ConfigError;

/// A parsed JSON value. Objects keep their keys in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    List(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

impl Node {
    /// Parses a JSON document. Syntax errors and duplicate keys are reported at `$`, with the
    /// line and column serde_json gives.
    pub fn parse(json: &[u8]) -> Result<Node, ConfigError> {
        serde_json::from_slice(json).map_err(|e| ConfigError::new("$", e.to_string()))
    }

    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Num(_) => "a number",
            Node::Str(_) => "a string",
            Node::List(_) => "a list",
            Node::Obj(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Num(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Num(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Num(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut fields: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format_args!("duplicate key {}", quote(&key))));
            }
            let value = map.next_value()?;
            fields.push((key, value));
        }
        Ok(Node::Obj(fields))
    }
}

/// A value that can be read from a [`Node`] at a JSON path.
pub trait FromNode: Sized {
    fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError>;
}

fn wrong(node: &Node, path: &str, want: &str) -> ConfigError {
    let shown = match node {
        Node::Str(s) => format!(" {}", quote(s)),
        Node::Num(n) => format!(" {}", fmt_num(*n)),
        Node::Bool(b) => format!(" {b}"),
        _ => String::new(),
    };
    ConfigError::new(path, format!("expected {want}, got {}{shown}", node.kind()))
}

impl FromNode for String {
    fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError> {
        match node {
            Node::Str(s) => Ok(s.clone()),
            other => Err(wrong(other, path, "a string")),
        }
    }
}

impl FromNode for bool {
    fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError> {
        match node {
            Node::Bool(b) => Ok(*b),
            other => Err(wrong(other, path, "true or false")),
        }
    }
}

impl FromNode for f64 {
    fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError> {
        match node {
            Node::Num(n) => Ok(*n),
            other => Err(wrong(other, path, "a number")),
        }
    }
}

impl FromNode for u64 {
    fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError> {
        match node {
            // Istio renders pluginConfig numbers as float64, so 3600 may arrive as 3600.0.
            Node::Num(n) if n.fract() == 0.0 && *n >= 0.0 && *n < 9.0e15 => Ok(*n as u64),
            other => Err(wrong(other, path, "a whole number")),
        }
    }
}

impl<T: FromNode> FromNode for Vec<T> {
    fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError> {
        match node {
            Node::List(items) => {
                items.iter().enumerate().map(|(i, n)| T::from_node(n, &format!("{path}[{i}]"))).collect()
            }
            other => Err(wrong(other, path, "a list")),
        }
    }
}

/// The fields of a JSON object, checked against the names the schema allows.
pub struct Fields<'a> {
    path: &'a str,
    fields: &'a [(String, Node)],
}

impl<'a> Fields<'a> {
    /// `node` must be an object whose keys are all in `allowed` (`$` is the document's path).
    pub fn new(node: &'a Node, path: &'a str, allowed: &[&str]) -> Result<Fields<'a>, ConfigError> {
        let Node::Obj(fields) = node else {
            return Err(wrong(node, path, "an object"));
        };
        let f = Fields { path, fields };
        if let Some((key, _)) = fields.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(ConfigError::new(
                f.child(key),
                format!("unknown field `{key}`, expected one of: {}", allowed.join(", ")),
            ));
        }
        Ok(f)
    }

    /// The path of field `key`: `rules[0].when`, or `identity[""]` for a key that is not a
    /// plain name (only unknown fields can be).
    pub fn child(&self, key: &str) -> String {
        let top = self.path == "$" || self.path.is_empty();
        let plain =
            !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        match (top, plain) {
            (true, true) => key.to_string(),
            (false, true) => format!("{}.{key}", self.path),
            (true, false) => format!("$[{}]", quote(key)),
            (false, false) => format!("{}[{}]", self.path, quote(key)),
        }
    }

    /// An optional field; `null` counts as absent.
    pub fn opt<T: FromNode>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.fields.iter().find(|(k, _)| k == key) {
            None | Some((_, Node::Null)) => Ok(None),
            Some((_, node)) => T::from_node(node, &self.child(key)).map(Some),
        }
    }

    /// A required field.
    pub fn req<T: FromNode>(&self, key: &str) -> Result<T, ConfigError> {
        self.opt(key)?.ok_or_else(|| ConfigError::new(self.child(key), "is required"))
    }
}

/// `s` in double quotes, with `"`, `\` and control characters escaped (a small stand-in for
/// `{:?}`, whose Unicode tables would weigh on the wasm).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number as a person wrote it, for messages, without float formatting code: whole
/// numbers as integers, others with the decimals an f64 can hold (up to 12).
pub fn fmt_num(n: f64) -> String {
    if !n.is_finite() {
        return "a non-finite number".to_string();
    }
    let sign = if n < 0.0 { "-" } else { "" };
    let a = n.abs();
    if a >= 1.0e19 {
        return format!("{sign}1e19 or more");
    }
    if a >= 1.0e15 {
        return format!("{sign}{}", a as u64);
    }
    let mut whole = a.trunc() as u64;
    let int_digits = whole.checked_ilog10().map_or(1, |d| d + 1);
    let decimals = 15u32.saturating_sub(int_digits).min(12);
    let scale = 10u64.pow(decimals);
    let mut frac = ((a - a.trunc()) * scale as f64).round() as u64;
    if frac >= scale {
        whole += 1;
        frac = 0;
    }
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{frac:0width$}", width = decimals as usize);
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn parses_documents_keeping_key_order() {
        let n = Node::parse(br#"{"b": [1, 2.5, -3], "a": {"x": null, "y": true, "z": "s"}}"#).unwrap();
        let Node::Obj(fields) = n else { panic!("not an object") };
        assert_eq!(fields[0].0, "b");
        assert_eq!(fields[0].1, Node::List(vec![Node::Num(1.0), Node::Num(2.5), Node::Num(-3.0)]));
        assert_eq!(fields[1].0, "a");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = Node::parse(br#"{"a": {"k": 1, "k": 2}}"#).unwrap_err().to_string();
        assert!(e.starts_with("$: duplicate key \"k\" at line 1 column"), "{e}");
    }

    #[test]
    fn reads_name_their_path_and_what_was_wrong() {
        let n = Node::parse(br#"{"s": 2, "l": [1, "x"], "u": 1.5, "z": "\u0001\"q"}"#).unwrap();
        let f = Fields::new(&n, "$", &["s", "l", "u", "z", "m"]).unwrap();
        assert_eq!(f.req::<String>("s").unwrap_err().to_string(), "s: expected a string, got a number 2");
        assert_eq!(
            f.req::<Vec<f64>>("l").unwrap_err().to_string(),
            "l[1]: expected a number, got a string \"x\""
        );
        assert_eq!(
            f.req::<u64>("u").unwrap_err().to_string(),
            "u: expected a whole number, got a number 1.5"
        );
        assert_eq!(f.req::<bool>("m").unwrap_err().to_string(), "m: is required");
        assert_eq!(f.opt::<bool>("m").unwrap(), None);
        assert_eq!(
            f.req::<bool>("z").unwrap_err().to_string(),
            "z: expected true or false, got a string \"\\u{1}\\\"q\""
        );
        let odd = Node::parse(br#"{"": 1, "a b": {"": 2}}"#).unwrap();
        let e = Fields::new(&odd, "$", &["x"]).err().unwrap().to_string();
        assert!(e.starts_with("$[\"\"]: unknown field"), "{e}");
        let Node::Obj(inner) = &odd else { panic!() };
        let e = Fields::new(&inner[1].1, "identity", &["x"]).err().unwrap().to_string();
        assert!(e.starts_with("identity[\"\"]: unknown field"), "{e}");
        let e = Fields::new(&n, "rules[0]", &["s"]).err().unwrap().to_string();
        assert_eq!(e, "rules[0].l: unknown field `l`, expected one of: s");
    }

    #[test]
    fn numbers_print_as_written() {
        for (n, s) in [
            (120.0, "120"),
            (-1.0, "-1"),
            (10.555, "10.555"),
            (10.1000000001, "10.1000000001"),
            (100.01, "100.01"),
            (1e17, "100000000000000000"),
            (1e20, "1e19 or more"),
            (0.29, "0.29"),
        ] {
            assert_eq!(fmt_num(n), s);
        }
    }
}
