//! Reads only the fields a plan's JSON pointers name from a JSON body (DESIGN.md "v2
//! corrections": body memory is bounded and small). The body is walked once with serde_json
//! over borrowed text; objects and arrays no pointer goes into are skipped without building
//! anything, and only the values the pointers end at are kept. No `serde_json::Value` tree: the
//! memory beyond the body itself is the kept values and serde_json's scratch for the longest
//! escaped string.
//!
//! The body must be UTF-8 and one JSON document (whitespace around it allowed), nested at most
//! 128 deep (serde_json's recursion limit, as a `Value` parse had); otherwise nothing is read.
//! A key that comes twice in an object: the last one counts (as in a `Value`, and in most JSON
//! readers an upstream app uses).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// What a pointer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A string's decoded UTF-8 bytes; a number's or boolean's JSON text (integers exactly,
    /// other numbers as claims are written: `1.0` is `1`, `1e3` is `1000`).
    Scalar(Vec<u8>),
    /// `null`, an object or an array: present, but no value to compare or to identify by.
    Other,
}

/// The plan's pointers, compiled into a tree of reference tokens (RFC 6901).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pointers {
    /// Every distinct pointer, in the order fields are reported.
    list: Vec<Box<str>>,
    root: Node,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    /// The index in `Pointers::list` of the pointer that ends here.
    leaf: Option<usize>,
    children: Vec<(Box<str>, Node)>,
    /// Every pointer index at or below this node: cleared when a repeated key enters it again.
    below: Vec<usize>,
}

impl Pointers {
    /// Adds `pointer` (validated by the config: `/` then tokens, `~0` and `~1` escapes), and
    /// returns its index.
    pub fn add(&mut self, pointer: &str) -> usize {
        if let Some(i) = self.list.iter().position(|p| &**p == pointer) {
            return i;
        }
        let index = self.list.len();
        self.list.push(pointer.into());
        let mut node = &mut self.root;
        node.below.push(index);
        for token in pointer.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            let at = match node.children.iter().position(|(t, _)| **t == *token) {
                Some(at) => at,
                None => {
                    node.children.push((token.into(), Node::default()));
                    node.children.len() - 1
                }
            };
            let Some((_, child)) = node.children.get_mut(at) else { return index };
            node = child;
            node.below.push(index);
        }
        node.leaf = Some(index);
        index
    }

    /// The index of `pointer`, if it was added.
    pub fn index(&self, pointer: &str) -> Option<usize> {
        self.list.iter().position(|p| &**p == pointer)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The fields of `body` the pointers name, by pointer index; `None` for a body that is not
    /// one UTF-8 JSON document (then every field is absent).
    pub fn extract(&self, body: &[u8]) -> Option<Vec<Option<Field>>> {
        let mut out = Vec::new();
        self.extract_into(body, &mut out).then_some(out)
    }

    /// [`Pointers::extract`] into `out` (its room kept from one body to the next): false, and
    /// every field absent, for a body that is not one UTF-8 JSON document.
    pub fn extract_into(&self, body: &[u8], out: &mut Vec<Option<Field>>) -> bool {
        self.walk(body, out, false)
    }

    /// [`Pointers::extract_into`] for an LLM answer's signals: what no pointer goes into is
    /// passed over without being decoded, and without serde_json's depth limit (the answer is
    /// not refused for it: only its signals are wanted, and it passes whatever they are).
    pub fn extract_signals(&self, body: &[u8], out: &mut Vec<Option<Field>>) -> bool {
        self.walk(body, out, true)
    }

    fn walk(&self, body: &[u8], out: &mut Vec<Option<Field>>, pass: bool) -> bool {
        out.clear();
        out.resize(self.list.len(), None);
        let Ok(text) = std::str::from_utf8(body) else { return false };
        let mut de = serde_json::Deserializer::from_str(text);
        let ok =
            At { node: &self.root, out: &mut *out, pass }.deserialize(&mut de).is_ok() && de.end().is_ok();
        if !ok {
            out.iter_mut().for_each(|f| *f = None);
        }
        ok
    }
}

/// For a walker's `Visitor` (here and in the answer readers): the scalars it has no use for,
/// each giving `$value` (serde's default visits would refuse them as the wrong type).
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// Lists a walker passes over (without serde_json's depth limit), giving `$value`.
macro_rules! lists_are {
    ($de:lifetime, $value:expr) => {
        fn visit_seq<A: serde::de::SeqAccess<$de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

/// Objects a walker passes over, giving `$value`.
macro_rules! objects_are {
    ($de:lifetime, $value:expr) => {
        fn visit_map<A: serde::de::MapAccess<$de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

/// Lists and objects a walker passes over, giving `$value`.
macro_rules! containers_are {
    ($de:lifetime, $value:expr) => {
        $crate::body::extract::lists_are!($de, $value);
        $crate::body::extract::objects_are!($de, $value);
    };
}

pub(crate) use {containers_are, lists_are, objects_are, scalars_are};

/// The value at `node`: kept when a pointer ends here, walked into where one goes deeper.
struct At<'a> {
    node: &'a Node,
    out: &'a mut Vec<Option<Field>>,
    /// Skip what no pointer goes into as [`Pass`] does, not as [`Skip`].
    pass: bool,
}

impl At<'_> {
    fn set(&mut self, field: Field) {
        if let Some(slot) = self.node.leaf.and_then(|i| self.out.get_mut(i)) {
            *slot = Some(field);
        }
    }
}

fn child<'n>(node: &'n Node, token: &str) -> Option<&'n Node> {
    node.children.iter().find(|(t, _)| **t == *token).map(|(_, n)| n)
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// `i` in decimal, without allocating.
pub(crate) fn decimal(mut i: usize, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        if let Some(b) = buf.get_mut(at) {
            *b = b'0' + (i % 10) as u8;
        }
        i /= 10;
        if i == 0 || at == 0 {
            break;
        }
    }
    std::str::from_utf8(buf.get(at..).unwrap_or_default()).unwrap_or_default()
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(mut self, v: bool) -> Result<(), E> {
        self.set(Field::Scalar(if v { b"true".to_vec() } else { b"false".to_vec() }));
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.set(Field::Scalar(v.to_string().into_bytes()));
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.set(Field::Scalar(v.to_string().into_bytes()));
        Ok(())
    }

    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        self.set(Field::Scalar(crate::text::fmt_num(v).into_bytes()));
        Ok(())
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        if self.node.leaf.is_some() {
            self.set(Field::Scalar(v.as_bytes().to_vec()));
        }
        Ok(())
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.set(Field::Other);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.set(Field::Other);
        let mut i = 0usize;
        loop {
            // Array indexes are written in decimal without leading zeros (RFC 6901): compare
            // as text, so `/messages/01` never matches.
            let mut buf = [0u8; 20];
            let child =
                if self.node.children.is_empty() { None } else { child(self.node, decimal(i, &mut buf)) };
            let more = match child {
                Some(node) => {
                    clear(node, self.out);
                    seq.next_element_seed(At { node, out: &mut *self.out, pass: self.pass })?.is_some()
                }
                None if self.pass => seq.next_element_seed(Pass)?.is_some(),
                None => seq.next_element_seed(Skip)?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.set(Field::Other);
        while let Some(child) = map.next_key_seed(Key(self.node))? {
            match child {
                Some(node) => {
                    clear(node, self.out);
                    map.next_value_seed(At { node, out: &mut *self.out, pass: self.pass })?;
                }
                None if self.pass => map.next_value_seed(Pass)?,
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(())
    }
}

/// A key entering `node` again (a repeated key): what the earlier value gave is forgotten.
fn clear(node: &Node, out: &mut [Option<Field>]) {
    for i in &node.below {
        if let Some(slot) = out.get_mut(*i) {
            *slot = None;
        }
    }
}

/// An object key: the child node a pointer continues with, if one does.
struct Key<'a>(&'a Node);

impl<'de, 'a> DeserializeSeed<'de> for Key<'a> {
    type Value = Option<&'a Node>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'a> Visitor<'_> for Key<'a> {
    type Value = Option<&'a Node>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.children.iter().find(|(t, _)| **t == *v).map(|(_, n)| n))
    }
}

/// A value no pointer goes into: parsed (so the document is checked whole, with serde_json's
/// depth limit) and dropped, nothing kept.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A value no pointer goes into, skipped by serde_json without decoding its strings (escapes
/// are still checked) and without its depth limit: for answers, whose text is passed over, not
/// copied ([`Pointers::extract_signals`]).
struct Pass;

impl<'de> DeserializeSeed<'de> for Pass {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_ignored_any(serde::de::IgnoredAny).map(|_| ())
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    scalars_are!(());
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn pointers(list: &[&str]) -> Pointers {
        let mut p = Pointers::default();
        for x in list {
            p.add(x);
        }
        p
    }

    fn s(v: &str) -> Option<Field> {
        Some(Field::Scalar(v.as_bytes().to_vec()))
    }

    #[test]
    fn only_the_named_fields_are_read_and_they_agree_with_a_value_parse() {
        let p = pointers(&[
            "/user",
            "/metadata/conversation_id",
            "/metadata",
            "/messages/1/role",
            "/n",
            "/f",
            "/e",
            "/big",
            "/t",
            "/none",
            "/a~1b",
            "/m~0n",
            "/missing",
            "/messages/01/role",
            "/esc",
        ]);
        let body = br#"{"user": "u-7", "metadata": {"conversation_id": "c1", "x": [1, {"y": 2}]},
            "messages": [{"role": "system"}, {"role": "user"}], "n": -3, "f": 1.0, "e": 1e3,
            "big": 12345678901234567890, "t": true, "none": null, "a/b": "slash", "m~n": "tilde",
            "esc": "a\u00e9\n\"b"}"#;
        let got = p.extract(body).unwrap();
        let want = vec![
            s("u-7"),
            s("c1"),
            Some(Field::Other),
            s("user"),
            s("-3"),
            s("1"),
            s("1000"),
            s("12345678901234567890"),
            s("true"),
            Some(Field::Other),
            s("slash"),
            s("tilde"),
            None,
            None,
            s("a\u{e9}\n\"b"),
        ];
        assert_eq!(got, want);
        // The same pointers over a serde_json Value, as v2 read them.
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        for (i, ptr) in p.list.iter().enumerate() {
            let from_value = value.pointer(ptr).map(|v| match v {
                serde_json::Value::String(x) => Field::Scalar(x.as_bytes().to_vec()),
                serde_json::Value::Bool(b) => Field::Scalar(b.to_string().into_bytes()),
                serde_json::Value::Number(n) => Field::Scalar(
                    match (n.as_i64(), n.as_u64()) {
                        (Some(i), _) => i.to_string(),
                        (_, Some(u)) => u.to_string(),
                        _ => crate::text::fmt_num(n.as_f64().unwrap()),
                    }
                    .into_bytes(),
                ),
                _ => Field::Other,
            });
            assert_eq!(got[i], from_value, "{ptr}");
        }
    }

    #[test]
    fn a_body_that_is_not_one_json_document_reads_nothing() {
        let p = pointers(&["/user"]);
        for bad in [
            &b"{\"user\": "[..],
            b"not json",
            b"",
            b"{\"user\": \"a\"} {}",
            b"{\"user\": \"a\", \"x\": \xff}",
            b"{\"user\": \"\xc3\"}",
            b"{\"x\": [1,]}",
        ] {
            assert_eq!(p.extract(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(p.extract(b"  {\"user\": \"a\"}\n"), Some(vec![s("a")]));
        assert_eq!(p.extract(b"[1, 2]"), Some(vec![None]), "not an object: the field is absent");
    }

    #[test]
    fn nesting_past_128_reads_nothing_and_skipped_parts_keep_no_stack() {
        let p = pointers(&["/user"]);
        let deep = |n: usize| format!("{{\"user\": \"u\", \"x\": {}{}}}", "[".repeat(n), "]".repeat(n));
        assert_eq!(p.extract(deep(100).as_bytes()), Some(vec![s("u")]));
        assert_eq!(p.extract(deep(200).as_bytes()), None, "as deep as serde_json refuses");
    }

    #[test]
    fn an_answer_s_signals_are_read_past_what_no_pointer_needs() {
        let p = pointers(&["/user", "/choices/12/x"]);
        let deep = format!("{{\"user\": \"u\", \"x\": {}{}}}", "[".repeat(200), "]".repeat(200));
        let mut out = Vec::new();
        assert!(p.extract_signals(deep.as_bytes(), &mut out), "passed over, not refused");
        assert_eq!(out, vec![s("u"), None]);
        assert!(!p.extract_signals(br#"{"user": "u", "x": "bad \q escape"}"#, &mut out), "still checked");
        assert_eq!(out, vec![None, None], "a refused answer has no fields");
        let list: Vec<String> = (0..13).map(|i| format!("{{\"x\": {i}}}")).collect();
        let body = format!("{{\"choices\": [{}]}}", list.join(","));
        assert!(p.extract_signals(body.as_bytes(), &mut out));
        assert_eq!(out, vec![None, s("12")], "an index of two digits");
        assert_eq!(p.extract(body.as_bytes()), Some(vec![None, s("12")]));
    }

    #[test]
    fn a_repeated_key_counts_its_last_value() {
        let p = pointers(&["/m/a", "/user"]);
        let got = p.extract(br#"{"user": "first", "m": {"a": 1}, "m": {"b": 2}, "user": "last"}"#).unwrap();
        assert_eq!(got, vec![None, s("last")]);
    }

    #[test]
    fn the_same_pointer_twice_is_one_field() {
        let mut p = Pointers::default();
        assert_eq!((p.add("/a"), p.add("/b"), p.add("/a")), (0, 1, 0));
        assert_eq!(p.index("/b"), Some(1));
        assert_eq!(p.index("/c"), None);
    }
}
