//! A JSON document as a small tree, and typed reads from it that know their JSON path.
//!
//! The parser is hand-written (RFC 8259) rather than serde_json's: the config is read once per
//! push, and serde_json plus serde's visitor for this tree weighed about 19 KB of a ~185 KB wasm.
//! It also names every error by its JSON path (`rules[2].split[0].percent`), syntax errors and
//! duplicate keys included, with the line and column.

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

/// How deep lists and objects may nest (as with serde_json): a config never comes close, and
/// the parser recurses once per level.
pub const MAX_DEPTH: usize = 127;

impl Node {
    /// Parses a JSON document. An error names the JSON path where the parser was, the problem,
    /// and the line and column (1-based, in bytes) of the byte it is about.
    pub fn parse(json: &[u8]) -> Result<Node, ConfigError> {
        let mut p = Parser { s: json, i: 0, path: Vec::new() };
        p.ws();
        let node = p.value()?;
        p.ws();
        if p.i < p.s.len() {
            return Err(p.fail("trailing characters after the JSON value"));
        }
        Ok(node)
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

/// One step of the path to where the parser is.
enum Step {
    Key(String),
    Index(usize),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    path: Vec<Step>,
}

/// Exact powers of ten as f64 (10^22 is the largest that is).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// An error about the byte at `self.i` (or the end of the document).
    fn fail(&self, problem: &str) -> ConfigError {
        self.fail_at(self.i, problem)
    }

    fn fail_at(&self, at: usize, problem: &str) -> ConfigError {
        let before = self.s.get(..at).unwrap_or(self.s);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        let mut path = String::from("$");
        for step in &self.path {
            path = match step {
                Step::Key(k) => child_path(&path, k),
                Step::Index(i) => format!("{path}[{i}]"),
            };
        }
        ConfigError::new(path, format!("{problem} at line {line} column {column}"))
    }

    /// "expected X, found Y" about the byte at `self.i`.
    fn unexpected(&self, expected: &str) -> ConfigError {
        let found = match self.peek() {
            None => "the end of the document".to_string(),
            Some(b) if b.is_ascii_graphic() => format!("`{}`", char::from(b)),
            Some(b) => format!("byte 0x{b:02x}"),
        };
        self.fail(&format!("expected {expected}, found {found}"))
    }

    fn value(&mut self) -> Result<Node, ConfigError> {
        match self.peek() {
            Some(b'{') => self.nested(Parser::object),
            Some(b'[') => self.nested(Parser::list),
            Some(b'"') => self.string().map(Node::Str),
            Some(b'-' | b'0'..=b'9') => self.number().map(Node::Num),
            Some(b't') => self.word("true", Node::Bool(true)),
            Some(b'f') => self.word("false", Node::Bool(false)),
            Some(b'n') => self.word("null", Node::Null),
            _ => Err(self.unexpected("a value")),
        }
    }

    fn nested(&mut self, parse: fn(&mut Self) -> Result<Node, ConfigError>) -> Result<Node, ConfigError> {
        if self.path.len() >= MAX_DEPTH {
            return Err(self.fail(&format!("lists and objects nest deeper than {MAX_DEPTH} levels")));
        }
        self.i += 1; // `[` or `{`
        self.ws();
        parse(self)
    }

    fn word(&mut self, word: &'static str, node: Node) -> Result<Node, ConfigError> {
        for &b in word.as_bytes() {
            if self.peek() != Some(b) {
                return Err(self.unexpected(&format!("`{word}`")));
            }
            self.i += 1;
        }
        Ok(node)
    }

    /// After `[` and whitespace.
    fn list(&mut self) -> Result<Node, ConfigError> {
        let mut items = Vec::new();
        if self.close(b']') {
            return Ok(Node::List(items));
        }
        loop {
            self.path.push(Step::Index(items.len()));
            items.push(self.value()?);
            self.path.pop();
            if !self.more(b']', "`,` or `]`")? {
                return Ok(Node::List(items));
            }
        }
    }

    /// After `{` and whitespace.
    fn object(&mut self) -> Result<Node, ConfigError> {
        let mut fields: Vec<(String, Node)> = Vec::new();
        if self.close(b'}') {
            return Ok(Node::Obj(fields));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("a key in double quotes"));
            }
            let at = self.i;
            let key = self.string()?;
            self.path.push(Step::Key(key.clone()));
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(self.fail_at(at, "duplicate key"));
            }
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.unexpected("`:`"));
            }
            self.i += 1;
            self.ws();
            fields.push((key, self.value()?));
            self.path.pop();
            if !self.more(b'}', "`,` or `}`")? {
                return Ok(Node::Obj(fields));
            }
        }
    }

    /// Takes `close` if it is next: an empty list or object.
    fn close(&mut self, close: u8) -> bool {
        let found = self.peek() == Some(close);
        if found {
            self.i += 1;
        }
        found
    }

    /// After an item of a list or object: `,` and whitespace (true: another item follows), or
    /// `close` (false: the end).
    fn more(&mut self, close: u8, expected: &str) -> Result<bool, ConfigError> {
        self.ws();
        if self.close(close) {
            return Ok(false);
        }
        if self.peek() != Some(b',') {
            return Err(self.unexpected(expected));
        }
        self.i += 1;
        self.ws();
        Ok(true)
    }

    /// A string, from its opening quote.
    fn string(&mut self) -> Result<String, ConfigError> {
        self.i += 1; // `"`
        let mut out = String::new();
        loop {
            // The run of plain bytes up to the next quote, backslash or control character. It
            // ends on an ASCII byte, so it never splits a UTF-8 sequence and can be checked alone.
            let run = self.s.get(self.i..).unwrap_or_default();
            let n = run.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(run.len());
            match std::str::from_utf8(run.get(..n).unwrap_or_default()) {
                Ok(text) => out.push_str(text),
                Err(e) => return Err(self.fail_at(self.i + e.valid_up_to(), "invalid UTF-8 in a string")),
            }
            self.i += n;
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(_) => return Err(self.fail("control characters must be escaped in a string")),
                None => return Err(self.fail("the document ends inside a string")),
            }
        }
    }

    /// An escape, from its backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), ConfigError> {
        let at = self.i;
        let c = match self.s.get(self.i + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.i += 2;
                let hi = self.hex4()?;
                let c = match hi {
                    0xd800..=0xdbff => {
                        if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                            return Err(self.fail_at(at, "unpaired surrogate in a \\u escape"));
                        }
                        self.i += 2;
                        let lo = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&lo) {
                            return Err(self.fail_at(at, "unpaired surrogate in a \\u escape"));
                        }
                        0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                    }
                    0xdc00..=0xdfff => return Err(self.fail_at(at, "unpaired surrogate in a \\u escape")),
                    c => c,
                };
                out.push(char::from_u32(c).ok_or_else(|| self.fail_at(at, "invalid \\u escape"))?);
                return Ok(());
            }
            Some(_) => return Err(self.fail_at(at + 1, "invalid escape in a string")),
            None => return Err(self.fail_at(at + 1, "the document ends inside a string")),
        };
        out.push(c);
        self.i += 2;
        Ok(())
    }

    /// Four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Result<u32, ConfigError> {
        let mut v = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.fail("a \\u escape needs four hex digits")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    /// A number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    ///
    /// Correctly rounded when it is m·10^k with m <= 2^53 and |k| <= 22 once trailing zeros
    /// are folded into k (`12.5`, `0.01`, `2592000`, `1.5e-3`): every number a config holds.
    /// Beyond that, m·10^k is scaled in steps of at most 10^22, each rounding once: within 16
    /// units in the last place in theory (8 measured), as serde_json's default parsing is not
    /// exact either. Configs never get there: percents have at most two decimals.
    fn number(&mut self) -> Result<f64, ConfigError> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let mut mantissa: u64 = 0;
        let mut exp10: i64 = 0; // value = mantissa * 10^exp10
        let mut digits = |p: &mut Self, fraction: bool| -> usize {
            let from = p.i;
            while let Some(b @ b'0'..=b'9') = p.peek() {
                p.i += 1;
                if mantissa < 1_000_000_000_000_000_000 {
                    mantissa = mantissa * 10 + u64::from(b - b'0');
                    if fraction {
                        exp10 -= 1;
                    }
                } else if !fraction {
                    exp10 += 1; // a digit past the 19th: dropped, its place kept
                }
            }
            p.i - from
        };
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self, false);
            }
            _ => return Err(self.unexpected("a digit")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if digits(self, true) == 0 {
                return Err(self.unexpected("a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            let sign = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    -1
                }
                Some(b'+') => {
                    self.i += 1;
                    1
                }
                _ => 1,
            };
            let mut e: i64 = 0;
            let from = self.i;
            while let Some(b @ b'0'..=b'9') = self.peek() {
                self.i += 1;
                e = (e * 10 + i64::from(b - b'0')).min(1_000_000);
            }
            if self.i == from {
                return Err(self.unexpected("a digit in the exponent"));
            }
            exp10 = exp10.saturating_add(sign * e);
        }
        while mantissa > 1 << 53 && mantissa % 10 == 0 {
            mantissa /= 10; // trailing zeros (`0.570214454207043000`) keep it exact
            exp10 += 1;
        }
        let magnitude = if mantissa == 0 {
            0.0
        } else if mantissa <= 1 << 53 && (-22..=22).contains(&exp10) {
            // Both exact, so one correctly rounded operation.
            let m = mantissa as f64;
            let p = POW10.get(exp10.unsigned_abs() as usize).copied().unwrap_or(1.0);
            if exp10 < 0 {
                m / p
            } else {
                m * p
            }
        } else {
            scale(mantissa as f64, exp10)
        };
        if magnitude.is_infinite() {
            return Err(self.fail_at(start, "number out of range"));
        }
        Ok(if negative { -magnitude } else { magnitude })
    }
}

/// `m * 10^exp10` by steps of at most 10^22 (rounding at each step).
fn scale(mut m: f64, mut exp10: i64) -> f64 {
    while exp10 > 0 && m.is_finite() {
        let step = exp10.min(22);
        m *= POW10.get(step as usize).copied().unwrap_or(1.0);
        exp10 -= step;
    }
    while exp10 < 0 && m != 0.0 {
        let step = (-exp10).min(22);
        m /= POW10.get(step as usize).copied().unwrap_or(1.0);
        exp10 += step;
    }
    m
}

/// A key that needs no quoting: letters, digits, `_` and `-`.
fn is_plain(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// A key for a message: `colour` in backticks, or quoted and escaped when it is not plain.
fn shown_key(key: &str) -> String {
    if is_plain(key) {
        format!("`{key}`")
    } else {
        quote(key)
    }
}

/// The path of key `key` under `parent`: `rules[0].when`, `stable` at the top, or
/// `identity[""]` for a key that is not a plain name.
pub fn child_path(parent: &str, key: &str) -> String {
    let top = parent == "$" || parent.is_empty();
    match (top, is_plain(key)) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (true, false) => format!("$[{}]", quote(key)),
        (false, false) => format!("{parent}[{}]", quote(key)),
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
                let mut out = Vec::with_capacity(items.len());
                for (i, n) in items.iter().enumerate() {
                    out.push(T::from_node(n, &format!("{path}[{i}]"))?);
                }
                Ok(out)
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
                format!("unknown field {}, expected one of: {}", shown_key(key), allowed.join(", ")),
            ));
        }
        Ok(f)
    }

    /// The path of field `key`: `rules[0].when`, or `identity[""]` for a key that is not a
    /// plain name (only unknown fields can be).
    pub fn child(&self, key: &str) -> String {
        child_path(self.path, key)
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
            // Control characters, and the invisible ones that could hide or reorder text in a
            // log line (zero-width, bidi overrides, line and paragraph separators, BOM).
            c if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)))
            }
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
    fn duplicate_keys_are_refused_at_their_path() {
        let e = Node::parse(br#"{"a": {"k": 1, "k": 2}}"#).unwrap_err().to_string();
        assert_eq!(e, "a.k: duplicate key at line 1 column 16");
    }

    fn err(json: &str) -> String {
        Node::parse(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn syntax_errors_name_the_path_the_problem_and_the_place() {
        for (json, want) in [
            ("", "$: expected a value, found the end of the document at line 1 column 1"),
            ("{", "$: expected a key in double quotes, found the end of the document at line 1 column 2"),
            ("{\"a\" 1}", "a: expected `:`, found `1` at line 1 column 6"),
            ("{\"a\": 1,}", "$: expected a key in double quotes, found `}` at line 1 column 9"),
            ("[1, 2,]", "$[2]: expected a value, found `]` at line 1 column 7"),
            ("[1 2]", "$: expected `,` or `]`, found `2` at line 1 column 4"),
            ("{\"a\": 1 \"b\": 2}", "$: expected `,` or `}`, found `\"` at line 1 column 9"),
            ("{\"rules\": [{\"n\":\n  tru}]}", "rules[0].n: expected `true`, found `}` at line 2 column 6"),
            ("{\"a b\": [x]}", "$[\"a b\"][0]: expected a value, found `x` at line 1 column 10"),
            ("{\"a\": {\"\": nul}}", "a[\"\"]: expected `null`, found `}` at line 1 column 15"),
            ("{1: 2}", "$: expected a key in double quotes, found `1` at line 1 column 2"),
            ("\u{feff}{}", "$: expected a value, found byte 0xef at line 1 column 1"),
            ("{} {}", "$: trailing characters after the JSON value at line 1 column 4"),
            ("[\"a\tb\"]", "$[0]: control characters must be escaped in a string at line 1 column 4"),
            ("[\"ab", "$[0]: the document ends inside a string at line 1 column 5"),
            ("[\"a\\x\"]", "$[0]: invalid escape in a string at line 1 column 5"),
            ("[\"\\u12\"]", "$[0]: a \\u escape needs four hex digits at line 1 column 7"),
            ("[\"\\ud800\"]", "$[0]: unpaired surrogate in a \\u escape at line 1 column 3"),
            ("[\"\\udc00\"]", "$[0]: unpaired surrogate in a \\u escape at line 1 column 3"),
            ("[\"\\ud800\\u0041\"]", "$[0]: unpaired surrogate in a \\u escape at line 1 column 3"),
            ("[01]", "$: expected `,` or `]`, found `1` at line 1 column 3"),
            ("[-]", "$[0]: expected a digit, found `]` at line 1 column 3"),
            ("[+1]", "$[0]: expected a value, found `+` at line 1 column 2"),
            ("[.5]", "$[0]: expected a value, found `.` at line 1 column 2"),
            ("[1.]", "$[0]: expected a digit after the decimal point, found `]` at line 1 column 4"),
            ("[1e]", "$[0]: expected a digit in the exponent, found `]` at line 1 column 4"),
            ("[1e400]", "$[0]: number out of range at line 1 column 2"),
            ("[-1e400]", "$[0]: number out of range at line 1 column 2"),
            ("{\"a\":\r\n\r\n  \"b\" }x", "$: trailing characters after the JSON value at line 3 column 8"),
        ] {
            assert_eq!(err(json), want, "{json:?}");
        }
        let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(Node::parse(deep.as_bytes()).is_ok());
        let deeper = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(err(&deeper).contains("nest deeper than 127 levels"), "{}", err(&deeper));
        let bad_utf8 = Node::parse(b"{\"a\": \"ok \xe7\x94\xa8 \xff\"}").unwrap_err().to_string();
        assert_eq!(bad_utf8, "a: invalid UTF-8 in a string at line 1 column 15");
        let bad_key = Node::parse(b"{\"\xc3\": 1}").unwrap_err().to_string();
        assert_eq!(bad_key, "$: invalid UTF-8 in a string at line 1 column 3");
    }

    #[test]
    fn strings_decode_every_escape() {
        let n = Node::parse(r#"["\"\\\/\b\f\n\r\t", "\u00e9\u7528\ud83d\ude00", "é用😀", ""]"#.as_bytes())
            .unwrap();
        let want = ["\"\\/\u{8}\u{c}\n\r\t", "é用😀", "é用😀", ""];
        assert_eq!(n, Node::List(want.iter().map(|s| Node::Str(s.to_string())).collect()));
    }

    #[test]
    fn numbers_are_read_exactly_where_configs_need_them() {
        for (text, want) in [
            ("0", 0.0_f64),
            ("-0", -0.0),
            ("10", 10.0),
            ("12.5", 12.5),
            ("0.01", 0.01),
            ("10.555", 10.555),
            ("99.99", 99.99),
            ("2592000", 2_592_000.0),
            ("3600.0", 3600.0),
            ("1e2", 100.0),
            ("1E+2", 100.0),
            ("125e-3", 0.125),
            ("-7.25", -7.25),
            ("0.1000000001", 0.1000000001),
            ("9007199254740993", 9_007_199_254_740_992.0),
            ("123456789012345678901234567890", 1.2345678901234568e29),
            ("0.000000000000000000000000000001", 1e-30),
            ("1e-400", 0.0),
        ] {
            let Node::Num(got) = Node::parse(text.as_bytes()).unwrap() else { panic!("{text}") };
            assert_eq!(got.to_bits(), want.to_bits(), "{text}: {got:e} vs {want:e}");
        }
        // Beyond 2^53 or 10^±22: within 16 units in the last place of the exact value.
        for text in [
            "1.7976931348623157e308",
            "1.797693134862315650e308",
            "4.9e-324",
            "2.2250738585072014e-308",
            "1234567890123456789e-40",
        ] {
            let Node::Num(got) = Node::parse(text.as_bytes()).unwrap() else { panic!("{text}") };
            let want: f64 = text.parse().unwrap();
            assert!(
                got.is_finite() && got.to_bits().abs_diff(want.to_bits()) <= 16,
                "{text}: {got:e} vs {want:e}"
            );
        }
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
    fn messages_escape_what_could_break_or_disguise_a_log_line() {
        assert_eq!(quote("a\nb\u{202e}c\u{200b}\u{feff}é用"), "\"a\\u{a}b\\u{202e}c\\u{200b}\\u{feff}é用\"");
        let n = Node::parse(br#"{"x\ny": 1}"#).unwrap();
        let e = Fields::new(&n, "$", &["x"]).err().unwrap().to_string();
        assert_eq!(e, "$[\"x\\u{a}y\"]: unknown field \"x\\u{a}y\", expected one of: x");
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
