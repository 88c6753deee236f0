//! Reading the answers of LLM APIs as they pass (DESIGN.md "Reading LLM answers"), sans-I/O:
//! the glue feeds each response body chunk to a [`Reader`] and, when the response ends, takes
//! its [`Answer`]: the token counts the format reported, whether and when the first token came,
//! and how the answer ended. Nothing here holds, changes or delays a byte; the reader keeps at
//! most `max_event_bytes` of the answer (one SSE event, or a whole JSON answer) to read it.
//!
//! Formats are told apart by their shape, event by event ([`shape`]): OpenAI chat completions
//! and completions, the OpenAI Responses API, Anthropic Messages, Dify's app API.

mod bytes;
mod shape;
pub mod sse;
pub mod text;

use shape::*;
use sse::{Event, Splitter};
pub use text::AnswerText;

/// How an answer ended (DESIGN.md): the label `finish` of `graysplit_llm_answers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Error,
    /// The stream ended, or was reset, before its final event.
    Aborted,
    /// Nothing recognised.
    Unknown,
}

impl Finish {
    pub const ALL: [Finish; 7] = [
        Finish::Stop,
        Finish::Length,
        Finish::ToolCalls,
        Finish::ContentFilter,
        Finish::Error,
        Finish::Aborted,
        Finish::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
            Finish::Error => "error",
            Finish::Aborted => "aborted",
            Finish::Unknown => "unknown",
        }
    }

    /// Its index in [`Finish::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Finish> {
        Finish::ALL.into_iter().find(|f| f.name() == s)
    }

    /// OpenAI's `finish_reason`.
    fn from_openai(s: &str) -> Finish {
        match s {
            "stop" => Finish::Stop,
            "length" => Finish::Length,
            "tool_calls" | "function_call" => Finish::ToolCalls,
            "content_filter" => Finish::ContentFilter,
            _ => Finish::Unknown,
        }
    }

    /// Anthropic's `stop_reason`.
    fn from_anthropic(s: &str) -> Finish {
        match s {
            "end_turn" | "stop_sequence" => Finish::Stop,
            "max_tokens" => Finish::Length,
            "tool_use" => Finish::ToolCalls,
            "refusal" => Finish::ContentFilter,
            _ => Finish::Unknown,
        }
    }

    /// The Responses API's `status` (and `incomplete_details.reason` when incomplete).
    fn from_responses(status: &str, reason: Option<&str>) -> Finish {
        match status {
            "completed" => Finish::Stop,
            "incomplete" if reason == Some("content_filter") => Finish::ContentFilter,
            "incomplete" => Finish::Length,
            "failed" | "cancelled" => Finish::Error,
            _ => Finish::Unknown,
        }
    }
}

/// Token counts of one answer, each as its format reported it (none where it said nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cached: Option<u64>,
    pub reasoning: Option<u64>,
}

impl Tokens {
    /// The counts by kind, in the order of the metric's `kind` label: input, output, cached,
    /// reasoning.
    pub fn by_kind(&self) -> [Option<u64>; 4] {
        [self.input, self.output, self.cached, self.reasoning]
    }

    /// Takes what `u` reports; a later report of a count replaces the earlier one (Anthropic's
    /// `message_delta` counts are cumulative: the last value counts).
    fn take(&mut self, u: &Usage) {
        for (slot, v) in [
            (&mut self.input, u.input),
            (&mut self.output, u.output),
            (&mut self.cached, u.cached),
            (&mut self.reasoning, u.reasoning),
        ] {
            if v.is_some() {
                *slot = v;
            }
        }
    }
}

/// What an answer did: what the access log's `graysplit_llm` and the metrics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub tokens: Tokens,
    pub finish: Finish,
    /// Its first token counts: an SSE event carried output, or a JSON body was a recognised
    /// answer below 400 (an error body or another JSON document is no answer to time).
    pub first_token: bool,
}

impl Answer {
    /// The access log's `graysplit_llm`: `in=<n> out=<n> cached=<n> reasoning=<n>
    /// first_token_ms=<n> finish=<kind>`, absent parts left out.
    pub fn log_line(&self, first_token_ms: Option<u64>) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(80);
        let t = &self.tokens;
        for (name, v) in
            [("in", t.input), ("out", t.output), ("cached", t.cached), ("reasoning", t.reasoning)]
                .into_iter()
                .chain(std::iter::once(("first_token_ms", first_token_ms)))
        {
            if let Some(v) = v {
                let _ = write!(s, "{name}={v} ");
            }
        }
        s.push_str("finish=");
        s.push_str(self.finish.name());
        s
    }
}

/// How the response body is framed: its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/json`: one JSON answer.
    Json,
    /// `text/event-stream`: server-sent events.
    Sse,
}

impl Framing {
    /// The framing of a response with `content_type` and `content_encoding`: none for anything
    /// else, or an encoded body (DESIGN.md: only `application/json` and `text/event-stream`
    /// without `content-encoding` are read).
    pub fn of(content_type: Option<&[u8]>, content_encoding: Option<&[u8]>) -> Option<Framing> {
        if content_encoding.is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity")) {
            return None;
        }
        let ct = content_type?;
        let essence = ct.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        if essence.eq_ignore_ascii_case(b"application/json") {
            Some(Framing::Json)
        } else if essence.eq_ignore_ascii_case(b"text/event-stream") {
            Some(Framing::Sse)
        } else {
            None
        }
    }
}

/// One answer being read.
#[derive(Debug)]
pub struct Reader {
    framing: Framing,
    max: usize,
    /// SSE: the event stream; JSON: none.
    sse: Option<Splitter>,
    /// JSON: the answer so far (up to `max`).
    json: Vec<u8>,
    /// JSON: the answer grew past `max`.
    json_over: bool,
    tokens: Tokens,
    finish: Option<Finish>,
    /// Some event of a known format was read (else the answer is `unknown`, never `aborted`).
    recognised: bool,
    /// The format's final event came.
    done: bool,
    /// SSE events dispatched so far.
    events: u32,
    /// The last event was longer than `max_event_bytes` (it may have been the final one).
    last_oversized: bool,
    first_token: bool,
    /// The fields of the event being read (room kept from one event to the next).
    shape: Shape,
    /// Events that can change nothing are not parsed ([`may_signal`]); the tests turn it off to
    /// show it changes no answer, and a reader of the text ([`Reader::with_text`]) needs them all.
    skip_quiet: bool,
    /// The answer's text, when asked for.
    text: Option<text::Sink>,
}

impl Reader {
    pub fn new(framing: Framing, max_event_bytes: usize) -> Self {
        Reader {
            framing,
            max: max_event_bytes,
            sse: (framing == Framing::Sse).then(|| Splitter::new(max_event_bytes)),
            json: Vec::new(),
            json_over: false,
            tokens: Tokens::default(),
            finish: None,
            recognised: false,
            done: false,
            events: 0,
            last_oversized: false,
            first_token: false,
            shape: Shape::default(),
            skip_quiet: true,
            text: None,
        }
    }

    /// A reader that also gathers the answer's output text, keeping its first `keep` bytes
    /// (the shadow's pairing: DESIGN.md "Shadow"). It parses every event.
    pub fn with_text(framing: Framing, max_event_bytes: usize, keep: usize) -> Self {
        Reader {
            skip_quiet: false,
            text: Some(text::Sink::new(keep)),
            ..Reader::new(framing, max_event_bytes)
        }
    }

    /// A reader that parses every event (the tests' and the fuzzer's reference for
    /// [`may_signal`]).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn exhaustive(framing: Framing, max_event_bytes: usize) -> Self {
        Reader { skip_quiet: false, ..Reader::new(framing, max_event_bytes) }
    }

    /// Whether events came and none was of a known format (a stream that is no LLM answer, whose
    /// first token will never come).
    pub fn unrecognised(&self) -> bool {
        self.events > 0 && !self.recognised
    }

    /// Reads the next piece of the body. True when the answer's first token came with it (once
    /// per answer): for SSE the first event carrying output text or a tool call, for JSON the
    /// first body byte.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let had = self.first_token;
        match self.sse.take() {
            Some(mut s) => {
                s.feed(chunk, |e| self.event(e));
                self.sse = Some(s);
            }
            None => {
                if chunk.is_empty() {
                    return false;
                }
                self.first_token = true;
                if !self.json_over {
                    if self.json.len() + chunk.len() > self.max {
                        self.json_over = true;
                        self.json = Vec::new();
                    } else {
                        self.json.extend_from_slice(chunk);
                    }
                }
            }
        }
        !had && self.first_token
    }

    /// The answer ended: `clean` when the body ended (else the stream was reset), `status` its
    /// HTTP status.
    pub fn end(self, clean: bool, status: Option<u16>) -> Answer {
        self.end_with_text(clean, status).0
    }

    /// [`Reader::end`], and the answer's text for a reader made [`Reader::with_text`].
    pub fn end_with_text(mut self, clean: bool, status: Option<u16>) -> (Answer, Option<AnswerText>) {
        if self.framing == Framing::Json && !self.json_over && clean {
            let json = std::mem::take(&mut self.json);
            self.json_answer(&json);
        }
        let finish = if status.is_some_and(|s| s >= 500) {
            Finish::Error
        } else if match self.framing {
            // A JSON answer cut short; a stream of a known format without its final event.
            Framing::Json => !clean,
            // A stream whose last event was too long to read may have ended well: its ending
            // is what was known before it (DESIGN.md: such an event loses only its signals).
            // (A reset before any event is aborted too: a client that gave up waiting.)
            Framing::Sse => !self.done && (!clean || (self.recognised && !self.last_oversized)),
        } {
            Finish::Aborted
        } else {
            self.finish.unwrap_or(Finish::Unknown)
        };
        let first_token = match self.framing {
            Framing::Sse => self.first_token,
            Framing::Json => self.first_token && self.recognised && status.is_some_and(|s| s < 400),
        };
        (Answer { tokens: self.tokens, finish, first_token }, self.text.map(text::Sink::finish))
    }

    /// A JSON answer, whole: an OpenAI chat completion or completion, a Responses API response,
    /// an Anthropic message, a Dify blocking answer.
    fn json_answer(&mut self, json: &[u8]) {
        if let Some(sink) = &mut self.text {
            text::json_text(json, sink);
        }
        let mut s = std::mem::take(&mut self.shape);
        if s.read(json, false) {
            if let Some(u) = s.usage() {
                self.tokens.take(&u);
            }
            self.recognised = true;
            if s.present(CHOICES) {
                self.finish = s.str(FINISH_REASON).filter(|r| !r.is_empty()).map(Finish::from_openai);
            } else if s.is(OBJECT, "response") {
                self.finish = s.str(STATUS).map(|st| Finish::from_responses(st, s.str(INCOMPLETE_REASON)));
            } else if s.is(TYPE, "message") {
                self.finish = s.str(STOP_REASON).map(Finish::from_anthropic);
            } else if matches!(s.str(EVENT), Some("message" | "agent_message" | "message_end")) {
                self.finish = Some(Finish::Stop);
            } else {
                self.recognised = false;
            }
        }
        self.shape = s;
    }

    fn event(&mut self, e: Event<'_>) {
        self.events = self.events.saturating_add(1);
        let Event::Data { name, data } = e else {
            self.last_oversized = true;
            return;
        };
        self.last_oversized = false;
        if data == b"[DONE]" {
            // OpenAI's end of stream.
            self.recognised = true;
            self.done = true;
            return;
        }
        // Once the format and the first token are known, most events (the answer's text, a
        // delta at a time) can change nothing: only those a byte search says may are parsed.
        if self.skip_quiet && self.recognised && self.first_token && !may_signal(name, data) {
            return;
        }
        let mut s = std::mem::take(&mut self.shape);
        // Once the first token came, only the signals are read (the text is skipped).
        if s.read(data, !(self.skip_quiet && self.first_token)) {
            self.fields(&s, name);
        }
        self.shape = s;
    }

    /// The string at pointer `i`, for a reader of the text.
    fn text_of(&mut self, s: &Shape, i: usize) {
        if let (Some(sink), Some(t)) = (&mut self.text, s.str(i)) {
            sink.push(t);
        }
    }

    /// What one event's fields say.
    fn fields(&mut self, s: &Shape, name: &[u8]) {
        if let Some(u) = s.usage() {
            self.tokens.take(&u);
        }
        if s.present(CHOICES) {
            // OpenAI chat completion and completion chunks.
            self.recognised = true;
            self.text_of(s, DELTA_CONTENT);
            self.text_of(s, CHOICE_TEXT);
            self.first_token |= s.any_output(CHOICE_OUTPUT);
            // Some OpenAI-compatible servers write `"finish_reason": ""` on every chunk.
            if let Some(r) = s.str(FINISH_REASON).filter(|r| !r.is_empty()) {
                self.finish = Some(Finish::from_openai(r));
            }
            return;
        }
        // The event's type: Anthropic and the Responses API write it in the data too; Dify in
        // the data only.
        let kind = s.str(TYPE).or(s.str(EVENT)).or_else(|| std::str::from_utf8(name).ok());
        match kind.unwrap_or_default() {
            // Anthropic Messages.
            "message_start" | "content_block_stop" | "ping" => self.recognised = true,
            "content_block_start" => {
                self.recognised = true;
                self.first_token |=
                    matches!(s.str(BLOCK_TYPE), Some("tool_use" | "server_tool_use")) || s.output(BLOCK_TEXT);
            }
            "content_block_delta" => {
                self.recognised = true;
                if s.is(DELTA_TYPE, "text_delta") {
                    self.text_of(s, DELTA_TEXT);
                }
                // Thinking deltas are not the answer's output.
                self.first_token |= match s.str(DELTA_TYPE) {
                    Some("text_delta") => s.output(DELTA_TEXT),
                    Some("input_json_delta") => s.output(DELTA_PARTIAL_JSON),
                    _ => false,
                };
            }
            "message_delta" => {
                self.recognised = true;
                if let Some(r) = s.str(DELTA_STOP_REASON) {
                    self.finish = Some(Finish::from_anthropic(r));
                }
            }
            "message_stop" => {
                self.recognised = true;
                self.done = true;
            }
            // Anthropic's and the Responses API's error event; Dify's.
            "error" => {
                self.recognised = true;
                self.finish = Some(Finish::Error);
                self.done = true;
            }
            // The Responses API.
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta" => {
                self.recognised = true;
                if kind == Some("response.output_text.delta") {
                    self.text_of(s, DELTA);
                }
                self.first_token |= s.output(DELTA);
            }
            "response.output_item.added" => {
                self.recognised = true;
                self.first_token |= s.is(ITEM_TYPE, "function_call");
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.recognised = true;
                self.done = true;
                if let Some(st) = s.str(RESPONSE_STATUS) {
                    self.finish = Some(Finish::from_responses(st, s.str(RESPONSE_INCOMPLETE_REASON)));
                }
            }
            k if k.starts_with("response.") => self.recognised = true,
            // Dify's app API.
            "message" | "agent_message" => {
                self.recognised = true;
                self.text_of(s, ANSWER);
                self.first_token |= s.output(ANSWER);
            }
            "message_end" => {
                self.recognised = true;
                self.done = true;
                self.finish = Some(Finish::Stop);
            }
            _ => {}
        }
    }
}

/// Whether an event can still change an answer's signals once its format and first token are
/// known: its name is one of the formats' ending or usage events, or its data has a key or a
/// type that carries an ending, a count or an error (a key whose value is `null` carries
/// nothing). A false "yes" costs a parse; a "no" must never hide a signal, so every ending,
/// count and error of every format is searched for. Quotes inside JSON strings are escaped, so
/// the answer's own text cannot spell `"usage"` and the like.
fn may_signal(name: &[u8], data: &[u8]) -> bool {
    const EVENTS: [&[u8]; 7] = [
        b"message_delta",
        b"message_stop",
        b"message_end",
        b"error",
        b"response.completed",
        b"response.incomplete",
        b"response.failed",
    ];
    if EVENTS.contains(&name) {
        return true;
    }
    // A key whose value is not `null` (OpenAI writes `"usage": null` in every chunk).
    let key = |rest: &[u8], k: &[u8]| {
        rest.strip_prefix(k).and_then(|r| r.strip_prefix(b"\"")).is_some_and(|after| {
            let value = after.trim_ascii_start().strip_prefix(b":").unwrap_or(b"n").trim_ascii_start();
            !value.starts_with(b"n")
        })
    };
    let word = |rest: &[u8], w: &[u8]| rest.strip_prefix(w).is_some_and(|r| r.starts_with(b"\""));
    let mut rest = data;
    while let Some(i) = bytes::find(rest, b'"') {
        rest = rest.get(i + 1..).unwrap_or_default();
        // One byte tells most strings apart from every word searched for.
        let hit = match rest.first() {
            Some(b'u') => key(rest, b"usage"),
            Some(b'f') => key(rest, b"finish_reason"),
            Some(b's') => key(rest, b"stop_reason"),
            Some(b'm') => {
                word(rest, b"message_delta") || word(rest, b"message_stop") || word(rest, b"message_end")
            }
            Some(b'e') => word(rest, b"error"),
            Some(b'r') => EVENTS[4..].iter().any(|e| word(rest, e)),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
