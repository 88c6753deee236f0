//! Verified JWT claims (DESIGN.md "Verified claims"): what Envoy's `jwt_authn` filter left in
//! dynamic metadata after verifying a token, `filter_metadata["envoy.filters.http.jwt_authn"]
//! [<metadata_key>]`, a `google.protobuf.Struct`. The glue reads the stream's whole dynamic
//! metadata, which Envoy 1.40 hands to the VM as a serialized `envoy.config.core.v3.Metadata`
//! (the one reading that keeps each value's type), and [`Claims::from_metadata`] turns it into
//! this view. Never from a header: no token, a bad token, or no `jwt_authn` means no claims.

use prost::Message;
use prost_types::value::Kind;

use crate::matcher::StringMatch;

/// One claim, as the matchers and the identity see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// A string claim: its UTF-8 bytes.
    Str(Vec<u8>),
    /// A number or boolean: its JSON text (`42`, `1.5`, `true`).
    Text(String),
    /// An array (`groups`): matches when any element does; no identity.
    List(Vec<Claim>),
    /// null or an object: matches only `present: true`; no identity.
    Other,
}

/// The top-level claims of one verified payload, in no particular order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(Vec<(String, Lazy)>);

/// A claim's value: its `google.protobuf.Value` bytes, decoded when asked for, or decoded.
#[derive(Debug, Clone, PartialEq)]
enum Lazy {
    Bytes(Vec<u8>),
    Decoded(Claim),
}

// The protobuf messages, as little of them as graysplit reads, each value kept as its bytes
// until it is needed: a map field is, on the wire, a repeated entry message (key = 1, value =
// 2), so `Metadata.filter_metadata` (map<string, Struct>) and `Struct.fields`
// (map<string, Value>) read as lists of entries without building their maps.

/// `envoy.config.core.v3.Metadata`: `filter_metadata` (1); `typed_filter_metadata` (2) skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct Metadata {
    #[prost(message, repeated, tag = "1")]
    filter_metadata: Vec<Entry>,
}

/// An entry of a `map<string, ...>`, its value not decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.protobuf.Struct`, its values not decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct LazyStruct {
    #[prost(message, repeated, tag = "1")]
    fields: Vec<Entry>,
}

/// `google.protobuf.Value` as a struct value (`struct_value`, 5), the rest skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct StructValue {
    #[prost(bytes = "vec", optional, tag = "5")]
    struct_value: Option<Vec<u8>>,
}

impl Claims {
    /// The claims in a serialized `envoy.config.core.v3.Metadata`: the struct under key `key`
    /// of the filter `filter`'s metadata. `None` when there is none (or the bytes are not one).
    /// Each claim's value stays undecoded until [`Claims::get`] asks for it.
    pub fn from_metadata(bytes: &[u8], filter: &str, key: &str) -> Option<Claims> {
        let md = Metadata::decode(bytes).ok()?;
        // Last wins, as protobuf reads a repeated map key.
        let ns = md.filter_metadata.into_iter().rev().find(|e| e.key == filter)?;
        let ns = LazyStruct::decode(ns.value.as_slice()).ok()?;
        let payload = ns.fields.into_iter().rev().find(|e| e.key == key)?;
        let inner = StructValue::decode(payload.value.as_slice()).ok()?.struct_value?;
        let claims = LazyStruct::decode(inner.as_slice()).ok()?;
        Some(Claims(claims.fields.into_iter().map(|e| (e.key, Lazy::Bytes(e.value))).collect()))
    }

    /// A serialized `google.protobuf.Struct`; `None` when it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Claims> {
        let s = LazyStruct::decode(bytes).ok()?;
        Some(Claims(s.fields.into_iter().map(|e| (e.key, Lazy::Bytes(e.value))).collect()))
    }

    /// Claims from JSON (the operator CLI's `--claim`, tests).
    pub fn from_json(pairs: impl IntoIterator<Item = (String, serde_json::Value)>) -> Claims {
        Claims(pairs.into_iter().map(|(k, v)| (k, Lazy::Decoded(Claim::from_json(&v)))).collect())
    }

    /// Claim `name`, decoded now (the last of a repeated name, as protobuf reads a map).
    pub fn get(&self, name: &str) -> Option<Claim> {
        let (_, v) = self.0.iter().rev().find(|(k, _)| k == name)?;
        Some(match v {
            Lazy::Decoded(c) => c.clone(),
            Lazy::Bytes(b) => Claim::from_value(prost_types::Value::decode(b.as_slice()).ok()?.kind),
        })
    }
}

/// A JSON number as its text: whole numbers without a fraction (protobuf keeps every number as
/// a double, so the token's `42` arrives as 42.0 and is `42` again here).
pub fn number_text(n: f64) -> String {
    crate::text::fmt_num(n)
}

impl Claim {
    fn from_value(kind: Option<Kind>) -> Claim {
        match kind {
            Some(Kind::StringValue(s)) => Claim::Str(s.into_bytes()),
            Some(Kind::NumberValue(n)) => Claim::Text(number_text(n)),
            Some(Kind::BoolValue(b)) => Claim::Text(b.to_string()),
            Some(Kind::ListValue(l)) => {
                Claim::List(l.values.into_iter().map(|v| Claim::from_value(v.kind)).collect())
            }
            Some(Kind::NullValue(_)) | Some(Kind::StructValue(_)) | None => Claim::Other,
        }
    }

    fn from_json(v: &serde_json::Value) -> Claim {
        use serde_json::Value;
        match v {
            Value::String(s) => Claim::Str(s.as_bytes().to_vec()),
            Value::Number(n) => Claim::Text(n.as_f64().map_or_else(|| n.to_string(), number_text)),
            Value::Bool(b) => Claim::Text(b.to_string()),
            Value::Array(a) => Claim::List(a.iter().map(Claim::from_json).collect()),
            Value::Null | Value::Object(_) => Claim::Other,
        }
    }

    /// Whether this (present) claim satisfies `m`: a list when any element does.
    pub fn matches(&self, m: &StringMatch) -> bool {
        match (self, m) {
            (_, StringMatch::Present(want)) => *want,
            (Claim::Str(b), _) => m.matches(Some(b)),
            (Claim::Text(t), _) => m.matches(Some(t.as_bytes())),
            (Claim::List(items), _) => items.iter().any(|c| !matches!(c, Claim::List(_)) && c.matches(m)),
            (Claim::Other, _) => false,
        }
    }

    /// The claim as a user id: a string's bytes, a number's or boolean's text; nothing for an
    /// empty string, a list, null or an object.
    pub fn identity(&self) -> Option<&[u8]> {
        match self {
            Claim::Str(b) if !b.is_empty() => Some(b),
            Claim::Text(t) => Some(t.as_bytes()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use prost_types::{ListValue, Struct, Value};

    use super::*;

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    fn payload() -> Vec<u8> {
        let mut fields = BTreeMap::new();
        fields.insert("sub".to_string(), v(Kind::StringValue("alice@corp.example".into())));
        fields.insert("department".to_string(), v(Kind::StringValue("legal".into())));
        fields.insert("level".to_string(), v(Kind::NumberValue(42.0)));
        fields.insert("ratio".to_string(), v(Kind::NumberValue(1.5)));
        fields.insert("admin".to_string(), v(Kind::BoolValue(true)));
        fields.insert(
            "groups".to_string(),
            v(Kind::ListValue(ListValue {
                values: vec![v(Kind::StringValue("eng".into())), v(Kind::StringValue("beta-testers".into()))],
            })),
        );
        fields.insert("nothing".to_string(), v(Kind::NullValue(0)));
        fields.insert("address".to_string(), v(Kind::StructValue(Struct::default())));
        fields.insert("empty".to_string(), v(Kind::StringValue(String::new())));
        Struct { fields }.encode_to_vec()
    }

    fn exact(s: &str) -> StringMatch {
        StringMatch::Exact(s.as_bytes().into())
    }

    #[test]
    fn claims_keep_their_types_as_design_says() {
        let c = Claims::decode(&payload()).unwrap();
        let cases: &[(&str, StringMatch, bool, &str)] = &[
            ("department", exact("legal"), true, "a string claim is its bytes"),
            ("level", exact("42"), true, "a whole number is its JSON text"),
            ("ratio", exact("1.5"), true, "a fraction too"),
            ("admin", exact("true"), true, "a boolean is true/false"),
            ("groups", exact("beta-testers"), true, "a list matches when any element does"),
            ("groups", StringMatch::Prefix("be".as_bytes().into()), true, "any element, prefix"),
            ("groups", exact("ops"), false, "no element matches"),
            ("nothing", StringMatch::Present(true), true, "null is present"),
            ("nothing", exact("null"), false, "null matches only present: true"),
            ("address", exact(""), false, "an object matches only present: true"),
            ("address", StringMatch::Present(false), false, "an object is present"),
        ];
        for (name, m, want, why) in cases {
            assert_eq!(c.get(name).unwrap().matches(m), *want, "{why}");
        }
        assert_eq!(c.get("sub").unwrap().identity(), Some(&b"alice@corp.example"[..]));
        assert_eq!(c.get("level").unwrap().identity(), Some(&b"42"[..]));
        for no_id in ["groups", "nothing", "address", "empty"] {
            assert_eq!(c.get(no_id).unwrap().identity(), None, "{no_id} is no identity");
        }
        assert!(c.get("missing").is_none());
    }

    #[test]
    fn claims_come_from_jwt_authn_s_entry_of_the_metadata() {
        let claims = Struct::decode(payload().as_slice()).unwrap();
        let mut jwt = BTreeMap::new();
        jwt.insert("payload".to_string(), v(Kind::StructValue(claims)));
        let mut other = BTreeMap::new();
        other.insert("department".to_string(), v(Kind::StringValue("sales".into())));
        /// The whole message, the way Envoy serializes it (prost's own map encoding).
        #[derive(Clone, PartialEq, prost::Message)]
        struct FullMetadata {
            #[prost(btree_map = "string, message", tag = "1")]
            filter_metadata: BTreeMap<String, Struct>,
        }
        let md = FullMetadata {
            filter_metadata: [
                ("envoy.filters.http.jwt_authn".to_string(), Struct { fields: jwt }),
                ("envoy.lb".to_string(), Struct { fields: other }),
            ]
            .into(),
        }
        .encode_to_vec();
        let c = Claims::from_metadata(&md, "envoy.filters.http.jwt_authn", "payload").unwrap();
        assert_eq!(
            c.get("department"),
            Some(Claim::Str(b"legal".to_vec())),
            "jwt_authn's, not another filter's"
        );
        assert_eq!(
            Claims::from_metadata(&md, "envoy.filters.http.jwt_authn", "jwt"),
            None,
            "another metadata_key"
        );
        assert_eq!(Claims::from_metadata(&md, "envoy.filters.http.ext_authz", "payload"), None);
        assert_eq!(
            Claims::from_metadata(&[], "envoy.filters.http.jwt_authn", "payload"),
            None,
            "no token: no metadata"
        );
        // What Envoy 1.40 handed the VM for property `metadata` after jwt_authn verified a
        // token {"sub": "alice", "department": "legal", "aud", "iss", "iat", "exp"} (captured
        // from tests/it_claims.py's Envoy), and a typed_filter_metadata field after it, skipped.
        let mut real = hex(concat!(
            "0abb010a1c656e766f792e66696c746572732e687474702e6a77745f617574686e129a010a97010a07706179",
            "6c6f6164128b012a88010a150a0a6465706172746d656e7412071a056c6567616c0a160a03617564120f1a0d",
            "7261672d617373697374616e740a100a0369617412091100008099a5c3da410a0e0a0373756212071a05616c",
            "6963650a230a03697373121c1a1a68747470733a2f2f73736f2e6772617973706c69742e746573740a100a03",
            "6578701209110000802ca9c3da41",
        ));
        real.extend(hex("1200"));
        let c = Claims::from_metadata(&real, "envoy.filters.http.jwt_authn", "payload").unwrap();
        assert_eq!(c.get("sub").as_ref().and_then(Claim::identity), Some(&b"alice"[..]));
        assert_eq!(c.get("department"), Some(Claim::Str(b"legal".to_vec())));
        assert_eq!(
            c.get("exp").as_ref().and_then(Claim::identity),
            Some(&b"1796121778"[..]),
            "a number claim's text"
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn what_is_not_a_struct_gives_no_claims() {
        assert_eq!(Claims::decode(&[0xff, 0xff, 0xff]), None);
        assert_eq!(Claims::decode(&[]), Some(Claims::default()), "an empty payload has no claims");
    }

    #[test]
    fn numbers_read_as_json_text() {
        assert_eq!(number_text(42.0), "42");
        assert_eq!(number_text(-7.0), "-7");
        assert_eq!(number_text(1796083200.0), "1796083200");
        assert_eq!(number_text(0.25), "0.25");
        assert_eq!(
            Claims::from_json([("n".into(), serde_json::json!(42))]).get("n"),
            Some(Claim::Text("42".into()))
        );
    }
}
