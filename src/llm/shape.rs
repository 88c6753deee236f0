//! The JSON fields of the answers graysplit reads, by RFC 6901 pointer, for every format at
//! once (OpenAI chat completions, completions and Responses, Anthropic Messages, Dify): read
//! with the body extractor ([`crate::body::extract`]), which walks an event once and keeps only
//! the values these pointers end at (the answer's text is skipped, never built). One walker for
//! request bodies and answers: the wasm carries one JSON reader, not one per shape.

use std::sync::OnceLock;

use crate::body::extract::{Field, Pointers};

/// The pointers, in this order: each constant below is its index.
const POINTERS: [&str; 32] = [
    "/type",
    "/object",
    "/event",
    "/choices",
    "/choices/0/finish_reason",
    "/choices/0/text",
    "/choices/0/delta/content",
    "/choices/0/delta/tool_calls/0/index",
    "/choices/0/delta/function_call/name",
    "/choices/0/delta/refusal",
    "/choices/0/message/content",
    "/choices/0/message/tool_calls/0/id",
    "/choices/0/message/function_call/name",
    "/choices/0/message/refusal",
    "/delta",
    "/delta/type",
    "/delta/text",
    "/delta/partial_json",
    "/delta/stop_reason",
    "/content_block/type",
    "/content_block/text",
    "/item/type",
    "/stop_reason",
    "/status",
    "/incomplete_details/reason",
    "/response/status",
    "/response/incomplete_details/reason",
    "/answer",
    // Where each format keeps its usage: the counts below under each.
    "/usage",
    "/message/usage",
    "/response/usage",
    "/metadata/usage",
];

pub(super) const TYPE: usize = 0;
pub(super) const OBJECT: usize = 1;
pub(super) const EVENT: usize = 2;
pub(super) const CHOICES: usize = 3;
pub(super) const FINISH_REASON: usize = 4;
/// A completion choice's `text`, a chat chunk's `delta.content`.
pub(super) const CHOICE_TEXT: usize = 5;
pub(super) const DELTA_CONTENT: usize = 6;
/// The choice fields that carry output: text, content, tool calls, refusals.
pub(super) const CHOICE_OUTPUT: std::ops::RangeInclusive<usize> = 5..=13;
pub(super) const DELTA: usize = 14;
pub(super) const DELTA_TYPE: usize = 15;
pub(super) const DELTA_TEXT: usize = 16;
pub(super) const DELTA_PARTIAL_JSON: usize = 17;
pub(super) const DELTA_STOP_REASON: usize = 18;
pub(super) const BLOCK_TYPE: usize = 19;
pub(super) const BLOCK_TEXT: usize = 20;
pub(super) const ITEM_TYPE: usize = 21;
pub(super) const STOP_REASON: usize = 22;
pub(super) const STATUS: usize = 23;
pub(super) const INCOMPLETE_REASON: usize = 24;
pub(super) const RESPONSE_STATUS: usize = 25;
pub(super) const RESPONSE_INCOMPLETE_REASON: usize = 26;
pub(super) const ANSWER: usize = 27;
const USAGE_AT: [usize; 4] = [28, 29, 30, 31];

/// The counts under a usage object, each format's names (DESIGN.md: each as the format reports
/// it, no arithmetic across fields).
const COUNTS: [&str; 9] = [
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "prompt_tokens_details/cached_tokens",
    "input_tokens_details/cached_tokens",
    "completion_tokens_details/reasoning_tokens",
    "output_tokens_details/reasoning_tokens",
];

struct Table {
    pointers: Pointers,
    /// Per pointer of [`POINTERS`] (by the constants above), its field in this table, if the
    /// table has it.
    at: [Option<usize>; POINTERS.len()],
    /// Per usage place, the field of each of [`COUNTS`].
    counts: [[usize; 9]; 4],
}

/// The pointers that only tell whether an event carries output: not needed once the first
/// token came, nor in a JSON answer (whose first token is its first byte). Left out, the text
/// they point at is skipped instead of copied out.
fn is_output(i: usize) -> bool {
    CHOICE_OUTPUT.contains(&i) || [DELTA, DELTA_TEXT, DELTA_PARTIAL_JSON, BLOCK_TEXT, ANSWER].contains(&i)
}

fn build(with_output: bool) -> Table {
    let mut pointers = Pointers::default();
    let mut at = [None; POINTERS.len()];
    for ((i, p), slot) in POINTERS.iter().enumerate().zip(at.iter_mut()) {
        if with_output || !is_output(i) {
            *slot = Some(pointers.add(p));
        }
    }
    let counts =
        USAGE_AT.map(|u| COUNTS.map(|c| pointers.add(&format!("{}/{c}", POINTERS.get(u).unwrap_or(&"")))));
    Table { pointers, at, counts }
}

/// Every pointer; or (`with_output` false) those of the signals alone.
fn table(with_output: bool) -> &'static Table {
    static FULL: OnceLock<Table> = OnceLock::new();
    static SIGNALS: OnceLock<Table> = OnceLock::new();
    if with_output {
        FULL.get_or_init(|| build(true))
    } else {
        SIGNALS.get_or_init(|| build(false))
    }
}

/// One event's fields, or a whole JSON answer's; its room is kept from one event to the next.
#[derive(Default)]
pub(super) struct Shape {
    fields: Vec<Option<Field>>,
    /// The table the fields were read with.
    table: Option<&'static Table>,
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shape").field("fields", &self.fields).finish()
    }
}

/// A usage object's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cached: Option<u64>,
    pub reasoning: Option<u64>,
}

impl Shape {
    /// Reads `json` (`with_output`: the fields that carry output too): false when it is not one
    /// JSON document (every field then absent).
    pub fn read(&mut self, json: &[u8], with_output: bool) -> bool {
        let t = table(with_output);
        self.table = Some(t);
        t.pointers.extract_signals(json, &mut self.fields)
    }

    /// The field of pointer `i` (one of the constants above).
    fn field(&self, i: usize) -> Option<&Field> {
        let at = self.table?.at.get(i).copied().flatten()?;
        self.fields.get(at)?.as_ref()
    }

    /// The string at pointer `i` (a number's or boolean's text too).
    pub fn str(&self, i: usize) -> Option<&str> {
        text(self.field(i))
    }

    pub fn is(&self, i: usize, s: &str) -> bool {
        self.str(i) == Some(s)
    }

    /// Something is at pointer `i` (null included).
    pub fn present(&self, i: usize) -> bool {
        self.field(i).is_some()
    }

    /// The fields that carry output, any of them.
    pub fn any_output(&self, range: std::ops::RangeInclusive<usize>) -> bool {
        range.into_iter().any(|i| self.output(i))
    }

    /// Pointer `i` carries output: a non-empty string (or a number: a tool call's index).
    /// Every output pointer ends at a scalar, so a null or an empty list is nothing.
    pub fn output(&self, i: usize) -> bool {
        matches!(self.field(i), Some(Field::Scalar(b)) if !b.is_empty())
    }

    /// The usage at any of the formats' places: the first place that has one.
    pub fn usage(&self) -> Option<Usage> {
        let t = self.table?;
        let (_, c) =
            USAGE_AT.iter().zip(&t.counts).find(|(u, _)| matches!(self.field(**u), Some(Field::Other)))?;
        let n = |k: usize| {
            text(self.fields.get(*c.get(k)?).and_then(Option::as_ref)).and_then(|s| s.parse::<u64>().ok())
        };
        Some(Usage {
            input: n(0).or(n(2)),
            output: n(1).or(n(3)),
            cached: n(5).or(n(6)).or(n(4)),
            reasoning: n(7).or(n(8)),
        })
    }
}

/// A field's string (a number's or boolean's text too).
fn text(f: Option<&Field>) -> Option<&str> {
    match f? {
        Field::Scalar(b) => std::str::from_utf8(b).ok(),
        Field::Other => None,
    }
}
