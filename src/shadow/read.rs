//! Reading paired records back (`graysplit compare`): files of OTLP/JSON
//! `ExportLogsServiceRequest`s, as the OpenTelemetry Collector's file exporter writes them (one
//! request per line) or as the filter POSTs them (one body per file, possibly pretty-printed).
//!
//! How a file is read:
//! - When its first non-blank line is a whole JSON document, every non-blank line must be one
//!   (the file exporter's format), and an error names the line.
//! - Otherwise the file is a sequence of JSON documents, each over as many lines as it takes
//!   (saved POST bodies, pretty-printed or not, one after another); a syntax error names the line
//!   where the parser stopped, any other error the line where its document begins.
//!
//! A document must be a JSON object with `resourceLogs` (a traces or metrics export is refused
//! by name). Field names are read as OTLP/JSON writes them (lowerCamelCase) and as protobuf's
//! JSON mapping also allows (the proto names, `resource_logs`); unknown fields are ignored, as
//! OTLP asks of receivers. `intValue` may be a decimal string or a JSON number, `doubleValue` a
//! number or one of protobuf's strings (`"NaN"`, `"Infinity"`, a decimal).
//!
//! Log records without `graysplit.rule` are ignored. A record with it must have a known
//! `graysplit.result`, and the attributes read must have DESIGN's kinds; a second attribute of
//! the same key overrides the first.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize as DeriveDeserialize;

use super::record::Outcome;

/// What `compare` needs of one record (each `None` where the record did not say).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pair {
    /// `graysplit.result`.
    pub result: Option<Outcome>,
    pub primary_status: Option<i64>,
    pub shadow_status: Option<i64>,
    pub primary_total_ms: Option<i64>,
    pub shadow_total_ms: Option<i64>,
    pub primary_output: Option<i64>,
    pub shadow_output: Option<i64>,
    pub primary_finish: Option<String>,
    pub shadow_finish: Option<String>,
    pub similarity: Option<f64>,
}

/// The records read so far, per rule, each rule's in the order read (files in the order given,
/// then documents, then records): the bootstrap resamples them in that order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    pub by_rule: BTreeMap<String, Vec<Pair>>,
}

/// A file that could not be read: `FILE:LINE: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.problem)
    }
}

impl Pairs {
    /// Adds the records of `text`, the content of the file `file` (named in errors). On an
    /// error, the records of the documents before it are kept.
    pub fn read(&mut self, file: &str, text: &str) -> Result<(), ReadError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let error = |line: usize, problem: String| ReadError { file: file.to_string(), line, problem };
        for (line, doc) in documents(text).map_err(|(line, p)| error(line, p))? {
            let request = parse(doc).map_err(|(at, p)| error(line + at - 1, p))?;
            self.add(request).map_err(|p| error(line, p))?;
        }
        Ok(())
    }

    fn add(&mut self, request: Request) -> Result<(), String> {
        let Some(resources) = request.resource_logs else {
            return Err(match (request.resource_spans, request.resource_metrics) {
                (Some(_), _) => "not an OTLP logs request: an OTLP traces export (resourceSpans)".into(),
                (_, Some(_)) => "not an OTLP logs request: an OTLP metrics export (resourceMetrics)".into(),
                _ => "not an OTLP logs request: no resourceLogs".into(),
            });
        };
        for (i, resource) in resources.into_iter().enumerate() {
            for (j, scope) in resource.scope_logs.unwrap_or_default().into_iter().enumerate() {
                for (k, record) in scope.log_records.unwrap_or_default().into_iter().enumerate() {
                    let at = || format!("resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]");
                    let attributes = record.attributes.unwrap_or_default();
                    if let Some((rule, pair)) = pair_of(&attributes).map_err(|p| format!("{}: {p}", at()))? {
                        self.by_rule.entry(rule).or_default().push(pair);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The JSON documents of a file with the line each begins on (see the module's rule), or the
/// line and problem of a syntax error between documents.
fn documents(text: &str) -> Result<Vec<(usize, &str)>, (usize, String)> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let one_per_line = match lines.next() {
        None => return Ok(Vec::new()),
        Some((_, first)) => serde_json::from_str::<IgnoredAny>(first).is_ok(),
    };
    if one_per_line {
        return Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l))
            .collect());
    }
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<IgnoredAny>();
    let mut end = 0;
    while let Some(next) = stream.next() {
        if let Err(e) = next {
            return Err((e.line().max(1), format!("not JSON: {}", message(&e))));
        }
        let start = text.get(end..).map_or(end, |rest| end + (rest.len() - rest.trim_start().len()));
        end = stream.byte_offset();
        let line = 1 + text.get(..start).map_or(0, |before| before.matches('\n').count());
        docs.push((line, text.get(start..end).unwrap_or_default()));
    }
    Ok(docs)
}

/// One document as a request, or the line (within the document, 1-based) and the problem.
fn parse(doc: &str) -> Result<Request, (usize, String)> {
    // serde's derived structs would also take an array, field by field: refuse anything but an
    // object first.
    if !doc.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<IgnoredAny>(doc) {
            Ok(_) => (1, "not an OTLP logs request: not a JSON object".into()),
            Err(e) => (e.line().max(1), format!("not JSON: {}", message(&e))),
        });
    }
    let mut de = serde_json::Deserializer::from_str(doc);
    let request: Request = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        let line = inner.line().max(1);
        match inner.classify() {
            serde_json::error::Category::Data => {
                let path = e.path().to_string();
                let at = if path == "." { String::new() } else { format!("{path}: ") };
                (line, format!("not an OTLP logs request: {at}{}", bare(inner)))
            }
            _ => (line, format!("not JSON: {}", message(inner))),
        }
    })?;
    de.end().map_err(|e| (e.line().max(1), format!("not JSON: {}", message(&e))))?;
    Ok(request)
}

/// serde_json's message with its position as a column only (the line is named in front).
fn message(e: &serde_json::Error) -> String {
    match e.column() {
        0 => bare(e),
        column => format!("{} (column {column})", bare(e)),
    }
}

/// serde_json's message without its position (a data error is placed by its JSON path).
fn bare(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).map_or_else(|| text.clone(), str::to_string)
}

/// A record's pair, when it has `graysplit.rule`.
fn pair_of(attributes: &[KeyValue]) -> Result<Option<(String, Pair)>, String> {
    let mut rule = None;
    let mut pair = Pair::default();
    for kv in attributes {
        let Some(key) = kv.key.as_deref() else { continue };
        if key == "graysplit.rule" {
            rule = Some(string(key, &kv.value)?);
        }
    }
    let Some(rule) = rule else { return Ok(None) };
    for kv in attributes {
        let (Some(key), v) = (kv.key.as_deref(), &kv.value) else { continue };
        match key {
            "graysplit.result" => {
                let s = string(key, v)?;
                let Some(o) = Outcome::parse(&s) else {
                    return Err(format!("graysplit.result {s:?} is not paired, shadow_failed or timed_out"));
                };
                pair.result = Some(o);
            }
            "primary.status" => pair.primary_status = Some(int(key, v)?),
            "shadow.status" => pair.shadow_status = Some(int(key, v)?),
            "primary.total_ms" => pair.primary_total_ms = Some(int(key, v)?),
            "shadow.total_ms" => pair.shadow_total_ms = Some(int(key, v)?),
            "primary.tokens.output" => pair.primary_output = Some(int(key, v)?),
            "shadow.tokens.output" => pair.shadow_output = Some(int(key, v)?),
            "primary.finish" => pair.primary_finish = Some(string(key, v)?),
            "shadow.finish" => pair.shadow_finish = Some(string(key, v)?),
            "graysplit.similarity" => pair.similarity = Some(double(key, v)?),
            _ => {}
        }
    }
    if pair.result.is_none() {
        return Err(format!("record of rule {rule:?} has no graysplit.result"));
    }
    Ok(Some((rule, pair)))
}

fn string(key: &str, v: &Option<AnyValue>) -> Result<String, String> {
    match v {
        Some(AnyValue { string_value: Some(s), .. }) => Ok(s.clone()),
        other => Err(wrong_kind(key, "a stringValue", other)),
    }
}

fn int(key: &str, v: &Option<AnyValue>) -> Result<i64, String> {
    match v {
        Some(AnyValue { int_value: Some(Int(i)), .. }) => Ok(*i),
        other => Err(wrong_kind(key, "an intValue", other)),
    }
}

/// A `doubleValue`, or an `intValue` (a whole number some writer kept as one).
fn double(key: &str, v: &Option<AnyValue>) -> Result<f64, String> {
    match v {
        Some(AnyValue { double_value: Some(Double(x)), .. }) => Ok(*x),
        Some(AnyValue { int_value: Some(Int(i)), .. }) => Ok(*i as f64),
        other => Err(wrong_kind(key, "a doubleValue", other)),
    }
}

fn wrong_kind(key: &str, want: &str, got: &Option<AnyValue>) -> String {
    let got = match got {
        None => "no value",
        Some(v) if v.string_value.is_some() => "a stringValue",
        Some(v) if v.int_value.is_some() => "an intValue",
        Some(v) if v.double_value.is_some() => "a doubleValue",
        Some(v) if v.bool_value.is_some() => "a boolValue",
        Some(v) if v.array_value.is_some() => "an arrayValue",
        Some(v) if v.kvlist_value.is_some() => "a kvlistValue",
        Some(v) if v.bytes_value.is_some() => "a bytesValue",
        Some(_) => "an empty value",
    };
    format!("attribute {key}: {want} expected, got {got}")
}

// The OTLP/JSON messages, as far as they are read. `Option` everywhere: protobuf's JSON mapping
// lets any field be absent or `null`.

#[derive(DeriveDeserialize)]
#[serde(expecting = "an ExportLogsServiceRequest object")]
struct Request {
    #[serde(rename = "resourceLogs", alias = "resource_logs")]
    resource_logs: Option<Vec<ResourceLogs>>,
    #[serde(rename = "resourceSpans", alias = "resource_spans")]
    resource_spans: Option<IgnoredAny>,
    #[serde(rename = "resourceMetrics", alias = "resource_metrics")]
    resource_metrics: Option<IgnoredAny>,
}

#[derive(DeriveDeserialize)]
#[serde(expecting = "a ResourceLogs object")]
struct ResourceLogs {
    #[serde(rename = "scopeLogs", alias = "scope_logs")]
    scope_logs: Option<Vec<ScopeLogs>>,
}

#[derive(DeriveDeserialize)]
#[serde(expecting = "a ScopeLogs object")]
struct ScopeLogs {
    #[serde(rename = "logRecords", alias = "log_records")]
    log_records: Option<Vec<LogRecord>>,
}

#[derive(DeriveDeserialize)]
#[serde(expecting = "a LogRecord object")]
struct LogRecord {
    attributes: Option<Vec<KeyValue>>,
}

#[derive(DeriveDeserialize)]
#[serde(expecting = "a KeyValue object")]
struct KeyValue {
    key: Option<String>,
    value: Option<AnyValue>,
}

#[derive(DeriveDeserialize)]
#[serde(expecting = "an AnyValue object")]
struct AnyValue {
    #[serde(rename = "stringValue", alias = "string_value")]
    string_value: Option<String>,
    #[serde(rename = "intValue", alias = "int_value")]
    int_value: Option<Int>,
    #[serde(rename = "doubleValue", alias = "double_value")]
    double_value: Option<Double>,
    #[serde(rename = "boolValue", alias = "bool_value")]
    bool_value: Option<IgnoredAny>,
    #[serde(rename = "arrayValue", alias = "array_value")]
    array_value: Option<IgnoredAny>,
    #[serde(rename = "kvlistValue", alias = "kvlist_value")]
    kvlist_value: Option<IgnoredAny>,
    #[serde(rename = "bytesValue", alias = "bytes_value")]
    bytes_value: Option<IgnoredAny>,
}

/// An int64 in protobuf's JSON mapping: a decimal string or a number (whole).
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor)
    }
}

struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = Int;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an int64 (a decimal string or a whole number)")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
        Ok(Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
        i64::try_from(v).map(Int).map_err(|_| E::custom(format!("{v} is past int64")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
        if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
            Ok(Int(v as i64))
        } else {
            Err(E::custom(format!("{v} is not a whole int64")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Int, E> {
        v.parse().map(Int).map_err(|_| E::custom(format!("{v:?} is not an int64")))
    }
}

/// A double in protobuf's JSON mapping: a number, or a string (`"NaN"`, `"Infinity"`,
/// `"-Infinity"`, a decimal).
struct Double(f64);

impl<'de> Deserialize<'de> for Double {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DoubleVisitor)
    }
}

struct DoubleVisitor;

impl Visitor<'_> for DoubleVisitor {
    type Value = Double;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a double (a number or a string)")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Double, E> {
        Ok(Double(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Double, E> {
        Ok(Double(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Double, E> {
        Ok(Double(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Double, E> {
        match v {
            "NaN" => Ok(Double(f64::NAN)),
            "Infinity" => Ok(Double(f64::INFINITY)),
            "-Infinity" => Ok(Double(f64::NEG_INFINITY)),
            _ => v.parse().map(Double).map_err(|_| E::custom(format!("{v:?} is not a double"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::llm::Finish;
    use crate::shadow::record::{encode_batch, Record, Side};

    fn read(text: &str) -> Result<Pairs, String> {
        let mut p = Pairs::default();
        p.read("f.jsonl", text).map_err(|e| e.to_string())?;
        Ok(p)
    }

    fn record(rule: &str, result: Outcome, out: (Option<u64>, Option<u64>)) -> Record {
        let side = |v: &str, tokens| Side {
            version: v.into(),
            total_ms: 100,
            tokens_input: Some(3),
            tokens_output: tokens,
            finish: Finish::Stop,
            answer_chars: 4,
            answer_sha256: [7; 32],
            text: Some("text".into()),
        };
        Record {
            time_unix_nano: 1,
            rule: rule.into(),
            result,
            user_hash: "0123456789abcdef".into(),
            request_id: Some("r".into()),
            primary_status: 200,
            shadow_status: Some(500),
            first_token_ms: Some(9),
            primary: side("v1", out.0),
            shadow: Side { total_ms: 250, finish: Finish::Length, ..side("v2", out.1) },
            similarity: Some(0.25),
        }
    }

    fn batch(records: &[Record]) -> String {
        let mut out = Vec::new();
        encode_batch(records, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encoded_records_read_back_as_pairs() {
        let text = format!(
            "{}\n\n{}\n",
            batch(&[record("ramp", Outcome::Paired, (Some(10), Some(12)))]),
            batch(&[record("pilot", Outcome::TimedOut, (None, None))])
        );
        let p = read(&text).unwrap();
        let want = Pair {
            result: Some(Outcome::Paired),
            primary_status: Some(200),
            shadow_status: Some(500),
            primary_total_ms: Some(100),
            shadow_total_ms: Some(250),
            primary_output: Some(10),
            shadow_output: Some(12),
            primary_finish: Some("stop".into()),
            shadow_finish: Some("length".into()),
            similarity: Some(0.25),
        };
        assert_eq!(p.by_rule["ramp"], vec![want]);
        let timed_out = &p.by_rule["pilot"][0];
        assert_eq!((timed_out.result, timed_out.primary_output), (Some(Outcome::TimedOut), None));
    }

    #[test]
    fn the_file_exporter_s_lines_and_pretty_printed_bodies_read_alike() {
        let compact = batch(&[record("a", Outcome::Paired, (Some(1), Some(2)))]);
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&compact).unwrap())
                .unwrap();
        let want = read(&compact).unwrap();
        let cases = [
            (format!("{compact}\r\n"), "a line with CRLF"),
            (pretty.clone(), "one pretty-printed body"),
            (format!("\n{pretty}\n\n{pretty}\n"), "bodies one after another"),
            (format!("\u{feff}{compact}"), "a byte order mark"),
        ];
        for (text, why) in &cases {
            let got = read(text).unwrap();
            let n = if why.contains("after") { 2 } else { 1 };
            assert_eq!(got.by_rule["a"].len(), n, "{why}");
            assert_eq!(got.by_rule["a"][0], want.by_rule["a"][0], "{why}");
        }
        assert_eq!(read("").unwrap(), Pairs::default(), "an empty file has no records");
        assert_eq!(read("\n \n").unwrap(), Pairs::default(), "nor a blank one");
    }

    #[test]
    fn what_the_collector_writes_reads_with_its_extra_fields_and_int_spellings() {
        // As pdata's JSON marshaler writes it: observedTimeUnixNano, an empty body, empty ids,
        // a schemaUrl; plus an intValue as a number and proto field names, which its
        // unmarshaler also accepts.
        let line = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"graysplit"}}]},"scopeLogs":[{"scope":{"name":"graysplit"},"logRecords":[{"timeUnixNano":"5","observedTimeUnixNano":"6","body":{},"attributes":[{"key":"graysplit.rule","value":{"stringValue":"r"}},{"key":"graysplit.result","value":{"stringValue":"paired"}},{"key":"primary.status","value":{"intValue":200}},{"key":"shadow.status","value":{"int_value":"201"}},{"key":"graysplit.similarity","value":{"doubleValue":1}}],"traceId":"","spanId":""},{"timeUnixNano":"7","body":{"stringValue":"some other log"},"attributes":[{"key":"http.method","value":{"stringValue":"GET"}}]}]}],"schemaUrl":"https://opentelemetry.io/schemas/1.6.1"}]}"#;
        let p = read(line).unwrap();
        assert_eq!(p.by_rule.len(), 1, "the record without graysplit.rule is ignored");
        let pair = &p.by_rule["r"][0];
        assert_eq!(
            (pair.primary_status, pair.shadow_status, pair.similarity),
            (Some(200), Some(201), Some(1.0))
        );
        let snake = r#"{"resource_logs":[{"scope_logs":[{"log_records":[{"attributes":[{"key":"graysplit.rule","value":{"string_value":"s"}},{"key":"graysplit.result","value":{"stringValue":"shadow_failed"}},{"key":"graysplit.result","value":{"stringValue":"timed_out"}}]}]}]}]}"#;
        let p = read(snake).unwrap();
        assert_eq!(
            p.by_rule["s"][0].result,
            Some(Outcome::TimedOut),
            "proto names; the last of a repeated key"
        );
    }

    #[test]
    fn a_bad_line_is_an_error_that_names_it() {
        let good = batch(&[record("a", Outcome::Paired, (None, None))]);
        let rec = |attrs: &str| {
            format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"attributes":[{attrs}]}}]}}]}}]}}"#)
        };
        let rule = r#"{"key":"graysplit.rule","value":{"stringValue":"a"}}"#;
        let cases: Vec<(String, &str)> = vec![
            (format!("{good}\n{good}\nnot json\n"), "f.jsonl:3: not JSON: expected ident (column 2)"),
            (format!("{good}\n{{\"resourceLogs\": ["), "f.jsonl:2: not JSON: EOF while parsing a list (column 18)"),
            (format!("{good}\n{{\"resourceLogs\":[]}} {{}}"), "f.jsonl:2: not JSON: trailing characters (column 21)"),
            (format!("{good}\n[1]"), "f.jsonl:2: not an OTLP logs request: not a JSON object"),
            (format!("{good}\n{{\"resourceSpans\":[]}}"), "f.jsonl:2: not an OTLP logs request: an OTLP traces export (resourceSpans)"),
            ("{\"resourceMetrics\":[]}".into(), "f.jsonl:1: not an OTLP logs request: an OTLP metrics export (resourceMetrics)"),
            ("{}".into(), "f.jsonl:1: not an OTLP logs request: no resourceLogs"),
            (
                r#"{"resourceLogs":[{"scopeLogs":{}}]}"#.into(),
                "f.jsonl:1: not an OTLP logs request: resourceLogs[0].scopeLogs: invalid type: map, expected a sequence",
            ),
            (
                rec(&format!(r#"{rule},{{"key":"primary.status","value":{{"intValue":"2x"}}}}"#)),
                "f.jsonl:1: not an OTLP logs request: resourceLogs[0].scopeLogs[0].logRecords[0].attributes[1].value.intValue: \"2x\" is not an int64",
            ),
            (
                rec(&format!(r#"{rule},{{"key":"graysplit.result","value":{{"stringValue":"paired"}}}},{{"key":"primary.status","value":{{"stringValue":"200"}}}}"#)),
                "f.jsonl:1: resourceLogs[0].scopeLogs[0].logRecords[0]: attribute primary.status: an intValue expected, got a stringValue",
            ),
            (rec(rule), "f.jsonl:1: resourceLogs[0].scopeLogs[0].logRecords[0]: record of rule \"a\" has no graysplit.result"),
            (
                rec(&format!(r#"{rule},{{"key":"graysplit.result","value":{{"stringValue":"skipped"}}}}"#)),
                "f.jsonl:1: resourceLogs[0].scopeLogs[0].logRecords[0]: graysplit.result \"skipped\" is not paired, shadow_failed or timed_out",
            ),
            (
                rec(r#"{"key":"graysplit.rule","value":{"intValue":"1"}}"#),
                "f.jsonl:1: resourceLogs[0].scopeLogs[0].logRecords[0]: attribute graysplit.rule: a stringValue expected, got an intValue",
            ),
            ("{\n  \"resourceLogs\": [\n    {\"scopeLogs\": [}\n  ]\n}\n".into(), "f.jsonl:3: not JSON: expected value (column 20)"),
            ("{\n\"resourceLogs\": []\n}\n\n{\n  \"resourceLogs\": 5\n}".into(), "f.jsonl:6: not an OTLP logs request: resourceLogs: invalid type: integer `5`, expected a sequence"),
        ];
        for (text, want) in &cases {
            assert_eq!(read(text).unwrap_err(), *want, "{text}");
        }
    }
}
