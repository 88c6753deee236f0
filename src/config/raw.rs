//! The configuration as written: serde structs, field for field the schema of DESIGN.md.
//! `deny_unknown_fields` everywhere, no `flatten` or `untagged` (their errors say nothing);
//! choices such as "exactly one of `header`, `cookie`, `query`" are plain optional fields that
//! [`super::compile`] checks, so each error names its field.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A JSON object holding a `T`. serde's derived structs also accept a JSON list of their
/// fields in order (`["v1", null, ...]`), which nobody means in a config: this takes objects
/// only, so `"rules": [["a", "v2"]]` is refused as "expected an object".
#[derive(Debug)]
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapOnly<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(MapOnly(PhantomData)).map(Obj)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub route_header: Option<String>,
    pub stable: String,
    pub identity: Option<Obj<RawIdentity>>,
    #[serde(rename = "override")]
    pub override_: Option<Obj<RawOverride>>,
    pub response_header: Option<String>,
    pub rules: Option<Vec<Obj<RawRule>>>,
    pub claims: Option<Obj<RawClaims>>,
    pub body: Option<Obj<RawBody>>,
    pub session_pin: Option<Obj<RawPin>>,
    pub llm: Option<Obj<RawLlm>>,
    pub shadow_sink: Option<Obj<RawSink>>,
    pub lane: Option<Obj<RawLane>>,
    pub versions: Option<Named<RawVersion>>,
}

/// A JSON object whose keys are names, each holding a `T` object, in the order written (a name
/// written twice: the last counts, as in any JSON object).
#[derive(Debug)]
pub struct Named<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some((k, Obj(v))) = map.next_entry::<String, Obj<T>>()? {
                    out.retain(|(n, _)| *n != k);
                    out.push((k, v));
                }
                Ok(Named(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// `versions.<v>`: what a version is besides its name (DESIGN.md "Prompt matchers and versions
/// as models"). A version named here is a known version even when no rule names it yet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    pub model: Option<String>,
}

/// `lane`: the decision carried through the mesh in a signed W3C baggage member (DESIGN.md
/// "Lanes").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLane {
    pub mode: String,
    pub baggage_key: Option<String>,
    pub key: Option<String>,
    /// The environment variable that holds `key` (Istio: a WasmPlugin's `vmConfig.env` with
    /// `valueFrom: HOST`, set on the proxy from a Secret).
    pub key_env: Option<String>,
    pub previous_keys: Option<Vec<String>>,
    pub previous_keys_env: Option<Vec<String>>,
    pub ttl_s: Option<u64>,
    pub trusted_cidrs: Option<Vec<String>>,
}

/// `shadow_sink`: where paired shadow records go, as OTLP/HTTP JSON logs (DESIGN.md "Shadow").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub cluster: String,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub capture_text: Option<bool>,
    pub batch: Option<u64>,
}

/// `llm`: which answers are read, and how much of one event (or JSON answer) is kept to read it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    pub paths: Option<Vec<String>>,
    pub max_event_bytes: Option<u64>,
}

/// `claims`: where `jwt_authn` left the verified payload (its `payload_in_metadata`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    pub metadata_key: Option<String>,
}

/// `body`: how much of a JSON request body is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    pub max_bytes: Option<u64>,
}

/// `session_pin`: `{"cookie", "idle_s", "max_s", "key", "previous_keys"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPin {
    pub cookie: String,
    pub idle_s: u64,
    pub max_s: Option<u64>,
    pub key: String,
    pub previous_keys: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub from: Option<Vec<Obj<RawSource>>>,
    pub sticky_cookie: Option<Obj<RawSticky>>,
}

/// One of `{"header": NAME}`, `{"cookie": NAME}`, `{"query": NAME}`, `{"claim": NAME}`,
/// `{"body": POINTER}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
    pub claim: Option<String>,
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub name: String,
    pub max_age_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub header: String,
    pub trusted_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub when: Option<Obj<RawWhen>>,
    pub version: Option<String>,
    pub split: Option<Vec<Obj<RawSplit>>>,
    pub salt: Option<String>,
    pub starts_at: Option<String>,
    pub expires_at: Option<String>,
    pub enabled: Option<bool>,
    pub guard: Option<Obj<RawGuard>>,
    pub shadow: Option<Obj<RawShadow>>,
}

/// `rules[].shadow` (DESIGN.md "Shadow"): `{"version", "percent", "salt", "cluster",
/// "authority", "path_prefixes", "timeout_ms", "max_in_flight", "max_bytes"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub version: String,
    pub percent: f64,
    pub salt: Option<String>,
    pub cluster: String,
    pub authority: Option<String>,
    pub path_prefixes: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// DESIGN.md "Guards": `{"max_error_percent", "min_requests", "window_s", "statuses",
/// "slow_ms", "attempt"}`, and v3's `first_token_ms`, `finishes`, `max_output_ratio`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub max_error_percent: f64,
    pub min_requests: Option<u64>,
    pub window_s: Option<u64>,
    pub statuses: Option<Vec<RawStatus>>,
    pub slow_ms: Option<u64>,
    pub attempt: Option<u64>,
    // v3, with `llm`: guards on answers.
    pub first_token_ms: Option<u64>,
    pub finishes: Option<Vec<String>>,
    pub max_output_ratio: Option<f64>,
}

/// A `guard.statuses` item: `"5xx"`, `"4xx"` (a class) or a status code. Read by a visitor of
/// its own rather than an `untagged` enum, whose error would say nothing; which strings and codes
/// are allowed is checked by [`super::compile`], at the item's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawStatus {
    Class(String),
    Code(u64),
}

impl fmt::Display for RawStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawStatus::Class(c) => write!(f, "{}", super::error::quote(c)),
            RawStatus::Code(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawStatus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"5xx\", \"4xx\" or a status code")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::Class(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub headers: Option<Vec<Obj<RawMatch>>>,
    pub cookies: Option<Vec<Obj<RawMatch>>>,
    pub query: Option<Vec<Obj<RawMatch>>>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub source_cidrs: Option<Vec<String>>,
    pub users: Option<Vec<String>>,
    pub claims: Option<Vec<Obj<RawMatch>>>,
    pub body: Option<Vec<Obj<RawBodyMatch>>>,
    pub prompt: Option<Vec<Obj<RawPrompt>>>,
}

/// A `when.prompt` matcher: exactly one of `contains_any`, `regex`, `min_chars`, `max_chars`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrompt {
    pub contains_any: Option<Vec<String>>,
    pub regex: Option<String>,
    pub min_chars: Option<u64>,
    pub max_chars: Option<u64>,
}

/// `{"pointer", one of "exact" / "prefix" / "suffix" / "one_of" / "present"}`: a field of a
/// JSON request body by RFC 6901 pointer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBodyMatch {
    pub pointer: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub one_of: Option<Vec<String>>,
    pub present: Option<bool>,
}

impl From<RawBodyMatch> for RawMatch {
    fn from(m: RawBodyMatch) -> Self {
        RawMatch {
            name: m.pointer,
            exact: m.exact,
            prefix: m.prefix,
            suffix: m.suffix,
            one_of: m.one_of,
            present: m.present,
        }
    }
}

/// `{"name", one of "exact" / "prefix" / "suffix" / "one_of" / "present"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub one_of: Option<Vec<String>>,
    pub present: Option<bool>,
}

/// A split entry: `{"version", "percent"}` or `{"version", "schedule"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub version: String,
    pub percent: Option<f64>,
    pub schedule: Option<Vec<Obj<RawStep>>>,
}

/// A schedule step: `{"at": RFC 3339, "percent"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub at: String,
    pub percent: f64,
}
