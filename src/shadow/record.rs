//! The paired record (DESIGN.md "Shadow", the attribute table) and its OTLP/JSON encoding: a
//! batch of records is one `ExportLogsServiceRequest` as OTLP/HTTP carries it in JSON
//! (lowerCamelCase field names, 64-bit integers as decimal strings), written straight into a
//! byte buffer without a JSON tree.

use sha2::{Digest, Sha256};

use crate::llm::Finish;
use crate::text::{hex, push_u64};

/// The most of an answer's text a record carries (`primary.text`, `shadow.text`).
pub const TEXT_CAP: usize = 16 * 1024;

/// How the shadow went (`graysplit.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The shadow answered (5xx included).
    Paired,
    /// No HTTP answer at all: connect failure, reset.
    ShadowFailed,
    /// Not answered within `timeout_ms`.
    TimedOut,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Paired, Outcome::ShadowFailed, Outcome::TimedOut];

    /// Its value of `graysplit.result`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Paired => "paired",
            Outcome::ShadowFailed => "shadow_failed",
            Outcome::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// What one side's answer was: the attributes `primary.*` and `shadow.*` have in common.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    /// The version the side was routed to.
    pub version: String,
    /// From the request's headers to the answer's end, in ms.
    pub total_ms: u64,
    /// `tokens.input`, as the answer reports it; `None` leaves the attribute out.
    pub tokens_input: Option<u64>,
    /// `tokens.output`, as the answer reports it; `None` leaves the attribute out.
    pub tokens_output: Option<u64>,
    /// How the answer ended; `aborted` for a shadow without an answer.
    pub finish: Finish,
    /// Unicode scalar values of the answer text.
    pub answer_chars: u64,
    /// SHA-256 of the answer text's UTF-8 (written as 64 lower-case hex digits).
    pub answer_sha256: [u8; 32],
    /// The answer text, only with `capture_text`; written cut to [`TEXT_CAP`] bytes.
    pub text: Option<String>,
}

/// One shadowed question: exactly DESIGN's attributes, `None` where DESIGN says absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When the primary request arrived (the LogRecord's `timeUnixNano`).
    pub time_unix_nano: u64,
    /// `graysplit.rule`: the rule's name.
    pub rule: String,
    /// `graysplit.result`.
    pub result: Outcome,
    /// `graysplit.user_hash`: [`user_hash`] of the shadow salt and the user id.
    pub user_hash: String,
    /// `graysplit.request_id`: the request's `x-request-id`; absent without one.
    pub request_id: Option<String>,
    /// `primary.status`.
    pub primary_status: u16,
    /// `shadow.status`: absent when the shadow gave no answer.
    pub shadow_status: Option<u16>,
    /// `primary.first_token_ms`: absent when there was none.
    pub first_token_ms: Option<u64>,
    /// `primary.*`.
    pub primary: Side,
    /// `shadow.*`.
    pub shadow: Side,
    /// `graysplit.similarity` ([`super::similarity::similarity`]): absent when the shadow gave
    /// no answer.
    pub similarity: Option<f64>,
}

/// `graysplit.user_hash`: the first 8 bytes of SHA-256 of `salt` + ":" + `user_id`, as 16
/// lower-case hex digits. The id itself never leaves the filter.
pub fn user_hash(salt: &str, user_id: &[u8]) -> String {
    let digest =
        Sha256::new().chain_update(salt.as_bytes()).chain_update(b":").chain_update(user_id).finalize();
    hex(digest.get(..8).unwrap_or_default())
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn text_cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s.get(..end).unwrap_or_default()
}

/// Writes `records` to `out` (appended) as one `ExportLogsServiceRequest` in OTLP/JSON: one
/// resource (`service.name` = `graysplit`), one scope (`graysplit`), a LogRecord per record
/// with its attributes in DESIGN's order.
pub fn encode_batch(records: &[Record], out: &mut Vec<u8>) {
    let mut batch = Batch::default();
    for r in records {
        batch.push(r);
    }
    out.extend_from_slice(&batch.finish());
}

/// A batch being written as records come: each record is encoded when it is pushed (the wasm
/// keeps the bytes, not the records), the request closed when it is sent.
#[derive(Debug, Default)]
pub struct Batch {
    body: Vec<u8>,
    records: usize,
}

impl Batch {
    const OPEN: &'static [u8] = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"graysplit"}}]},"scopeLogs":[{"scope":{"name":"graysplit"},"logRecords":["#;

    pub fn push(&mut self, r: &Record) {
        if self.records == 0 {
            self.body.extend_from_slice(Self::OPEN);
        } else {
            self.body.push(b',');
        }
        encode_record(r, &mut self.body);
        self.records += 1;
    }

    /// Records pushed.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// The whole `ExportLogsServiceRequest`.
    pub fn finish(mut self) -> Vec<u8> {
        if self.records == 0 {
            self.body.extend_from_slice(Self::OPEN);
        }
        self.body.extend_from_slice(b"]}]}]}");
        self.body
    }
}

fn encode_record(r: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timeUnixNano\":\"");
    push_u64(out, r.time_unix_nano);
    out.extend_from_slice(b"\",\"attributes\":[");
    let mut a = Attrs { out, first: true };
    a.string("graysplit.rule", &r.rule);
    a.string("graysplit.result", r.result.name());
    a.string("graysplit.user_hash", &r.user_hash);
    if let Some(id) = &r.request_id {
        a.string("graysplit.request_id", id);
    }
    a.string("primary.version", &r.primary.version);
    a.string("shadow.version", &r.shadow.version);
    a.int("primary.status", u64::from(r.primary_status));
    if let Some(s) = r.shadow_status {
        a.int("shadow.status", u64::from(s));
    }
    a.int("primary.total_ms", r.primary.total_ms);
    a.int("shadow.total_ms", r.shadow.total_ms);
    if let Some(ms) = r.first_token_ms {
        a.int("primary.first_token_ms", ms);
    }
    let tokens = [
        ("primary.tokens.input", r.primary.tokens_input),
        ("primary.tokens.output", r.primary.tokens_output),
        ("shadow.tokens.input", r.shadow.tokens_input),
        ("shadow.tokens.output", r.shadow.tokens_output),
    ];
    for (key, n) in tokens {
        if let Some(n) = n {
            a.int(key, n);
        }
    }
    a.string("primary.finish", r.primary.finish.name());
    a.string("shadow.finish", r.shadow.finish.name());
    a.int("primary.answer_chars", r.primary.answer_chars);
    a.int("shadow.answer_chars", r.shadow.answer_chars);
    a.string("primary.answer_sha256", &hex(&r.primary.answer_sha256));
    a.string("shadow.answer_sha256", &hex(&r.shadow.answer_sha256));
    if let Some(x) = r.similarity {
        a.double("graysplit.similarity", x);
    }
    if let Some(t) = &r.primary.text {
        a.string("primary.text", text_cap(t, TEXT_CAP));
    }
    if let Some(t) = &r.shadow.text {
        a.string("shadow.text", text_cap(t, TEXT_CAP));
    }
    out.extend_from_slice(b"]}");
}

/// A LogRecord's attribute list being written: `{"key":...,"value":{...}}` items.
struct Attrs<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Attrs<'_> {
    fn key(&mut self, key: &str, kind: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        // The keys are DESIGN's names: ASCII with nothing to escape.
        self.out.extend_from_slice(b"{\"key\":\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\",\"value\":{\"");
        self.out.extend_from_slice(kind.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key, "stringValue");
        json_string(value, self.out);
        self.out.extend_from_slice(b"}}");
    }

    /// An `intValue` (OTLP's int64, a decimal string in JSON); past `i64::MAX`, `i64::MAX`.
    fn int(&mut self, key: &str, value: u64) {
        self.key(key, "intValue");
        self.out.push(b'"');
        push_u64(self.out, value.min(i64::MAX as u64));
        self.out.extend_from_slice(b"\"}}");
    }

    /// A `doubleValue`, by serde_json's shortest round-trip formatting; a value that is not
    /// finite (JSON has no number for it) is left out.
    fn double(&mut self, key: &str, value: f64) {
        let Some(n) = serde_json::Number::from_f64(value) else { return };
        self.key(key, "doubleValue");
        self.out.extend_from_slice(n.to_string().as_bytes());
        self.out.extend_from_slice(b"}}");
    }
}

/// `s` as a JSON string (serde_json's escaping).
fn json_string(s: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn side(version: &str) -> Side {
        Side {
            version: version.into(),
            total_ms: 10,
            tokens_input: None,
            tokens_output: None,
            finish: Finish::Stop,
            answer_chars: 5,
            answer_sha256: Sha256::digest(b"hello").into(),
            text: None,
        }
    }

    fn minimal() -> Record {
        Record {
            time_unix_nano: 1_700_000_000_123_456_789,
            rule: "ramp".into(),
            result: Outcome::ShadowFailed,
            user_hash: user_hash("shadow-2.1", b"alice"),
            request_id: None,
            primary_status: 200,
            shadow_status: None,
            first_token_ms: None,
            primary: side("v2.0"),
            shadow: Side {
                finish: Finish::Aborted,
                answer_chars: 0,
                answer_sha256: Sha256::digest(b"").into(),
                ..side("v2.1")
            },
            similarity: None,
        }
    }

    #[test]
    fn user_hashes_match_python_hashlib() {
        // hashlib.sha256(f"{salt}:{user}".encode()).hexdigest()[:16]
        let cases: &[(&str, &[u8], &str)] = &[
            ("shadow-2.1", b"alice", "b7473093dcbf5dc0"),
            ("ramp:shadow", b"user-42", "9e4d006f024402fe"),
            ("s", "用户-7".as_bytes(), "4aec1a4cd7d5064f"),
        ];
        for (salt, user, want) in cases {
            assert_eq!(user_hash(salt, user), *want, "{salt}:{}", String::from_utf8_lossy(user));
        }
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let cases: &[(&str, usize, &str)] = &[
            ("héllo", 1, "h"),
            ("héllo", 2, "h"),
            ("héllo", 3, "hé"),
            ("héllo", 6, "héllo"),
            ("héllo", 100, "héllo"),
            ("幻灯", 5, "幻"),
            ("😀", 3, ""),
            ("", 0, ""),
        ];
        for (s, max, want) in cases {
            assert_eq!(text_cap(s, *max), *want, "{s:?} to {max} bytes");
        }
        let long = "é".repeat(TEXT_CAP);
        assert_eq!(text_cap(&long, TEXT_CAP).len(), TEXT_CAP, "an even cut of 2-byte characters");
        let odd = format!("a{long}");
        assert_eq!(text_cap(&odd, TEXT_CAP).len(), TEXT_CAP - 1, "one byte short of a whole é");
    }

    #[test]
    fn a_small_batch_is_this_exact_otlp_json() {
        let mut out = Vec::new();
        encode_batch(&[minimal()], &mut out);
        let want = concat!(
            r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"graysplit"}}]},"#,
            r#""scopeLogs":[{"scope":{"name":"graysplit"},"logRecords":[{"timeUnixNano":"1700000000123456789","attributes":["#,
            r#"{"key":"graysplit.rule","value":{"stringValue":"ramp"}},"#,
            r#"{"key":"graysplit.result","value":{"stringValue":"shadow_failed"}},"#,
            r#"{"key":"graysplit.user_hash","value":{"stringValue":"b7473093dcbf5dc0"}},"#,
            r#"{"key":"primary.version","value":{"stringValue":"v2.0"}},"#,
            r#"{"key":"shadow.version","value":{"stringValue":"v2.1"}},"#,
            r#"{"key":"primary.status","value":{"intValue":"200"}},"#,
            r#"{"key":"primary.total_ms","value":{"intValue":"10"}},"#,
            r#"{"key":"shadow.total_ms","value":{"intValue":"10"}},"#,
            r#"{"key":"primary.finish","value":{"stringValue":"stop"}},"#,
            r#"{"key":"shadow.finish","value":{"stringValue":"aborted"}},"#,
            r#"{"key":"primary.answer_chars","value":{"intValue":"5"}},"#,
            r#"{"key":"shadow.answer_chars","value":{"intValue":"0"}},"#,
            r#"{"key":"primary.answer_sha256","value":{"stringValue":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}},"#,
            r#"{"key":"shadow.answer_sha256","value":{"stringValue":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#,
            r#"]}]}]}]}"#,
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut empty = b"[".to_vec();
        encode_batch(&[], &mut empty);
        assert!(empty.starts_with(b"[{\"resourceLogs\""), "appended to what the buffer held");
        assert!(empty.ends_with(b"\"logRecords\":[]}]}]}"));
    }

    /// The attributes of the first LogRecord of `json`, as (key, kind, value) in order.
    fn attributes(json: &[u8]) -> Vec<(String, String, serde_json::Value)> {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let list = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"];
        list.as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let (kind, value) = kv["value"].as_object().unwrap().iter().next().unwrap();
                (kv["key"].as_str().unwrap().to_string(), kind.clone(), value.clone())
            })
            .collect()
    }

    #[test]
    fn every_attribute_has_its_design_name_and_kind() {
        let mut r = minimal();
        r.result = Outcome::Paired;
        r.request_id = Some("req-\"1\"".into());
        r.shadow_status = Some(503);
        r.first_token_ms = Some(42);
        r.primary.tokens_input = Some(12);
        r.primary.tokens_output = Some(u64::MAX);
        r.shadow.tokens_input = Some(0);
        r.shadow.tokens_output = Some(7);
        r.shadow.finish = Finish::ToolCalls;
        r.similarity = Some(1.0 / 3.0);
        r.primary.text = Some("héllo\n".into());
        r.shadow.text = Some(format!("{}é", "a".repeat(TEXT_CAP - 1)));
        let mut out = Vec::new();
        encode_batch(&[r.clone(), minimal()], &mut out);
        let s = |v: &str| serde_json::Value::String(v.into());
        let want: Vec<(&str, &str, serde_json::Value)> = vec![
            ("graysplit.rule", "stringValue", s("ramp")),
            ("graysplit.result", "stringValue", s("paired")),
            ("graysplit.user_hash", "stringValue", s("b7473093dcbf5dc0")),
            ("graysplit.request_id", "stringValue", s("req-\"1\"")),
            ("primary.version", "stringValue", s("v2.0")),
            ("shadow.version", "stringValue", s("v2.1")),
            ("primary.status", "intValue", s("200")),
            ("shadow.status", "intValue", s("503")),
            ("primary.total_ms", "intValue", s("10")),
            ("shadow.total_ms", "intValue", s("10")),
            ("primary.first_token_ms", "intValue", s("42")),
            ("primary.tokens.input", "intValue", s("12")),
            ("primary.tokens.output", "intValue", s("9223372036854775807")),
            ("shadow.tokens.input", "intValue", s("0")),
            ("shadow.tokens.output", "intValue", s("7")),
            ("primary.finish", "stringValue", s("stop")),
            ("shadow.finish", "stringValue", s("tool_calls")),
            ("primary.answer_chars", "intValue", s("5")),
            ("shadow.answer_chars", "intValue", s("0")),
            ("primary.answer_sha256", "stringValue", s(&hex(&r.primary.answer_sha256))),
            ("shadow.answer_sha256", "stringValue", s(&hex(&r.shadow.answer_sha256))),
            ("graysplit.similarity", "doubleValue", serde_json::json!(1.0 / 3.0)),
            ("primary.text", "stringValue", s("héllo\n")),
            ("shadow.text", "stringValue", s(&"a".repeat(TEXT_CAP - 1))),
        ];
        let got = attributes(&out);
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, (key, kind, value)) in got.iter().zip(&want) {
            assert_eq!((g.0.as_str(), g.1.as_str(), &g.2), (*key, *kind, value), "attribute {key}");
        }
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_similarity_that_is_not_a_number_is_left_out() {
        let mut r = minimal();
        r.similarity = Some(f64::NAN);
        let mut out = Vec::new();
        encode_batch(&[r], &mut out);
        assert!(attributes(&out).iter().all(|(k, _, _)| k != "graysplit.similarity"));
    }

    #[test]
    fn outcomes_read_back_by_name() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.name()), Some(o), "{o:?}");
        }
        assert_eq!(Outcome::parse("skipped_busy"), None);
    }
}
