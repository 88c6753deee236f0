//! The answer readers' host side (DESIGN.md "Reading LLM answers"): for a request under
//! `llm.paths`, its response is looked at once its headers come; an answer (a JSON or SSE body
//! without content-encoding, or any 5xx) is fed chunk by chunk to the pure [`Reader`] as it
//! passes, every callback continuing at once; when it ends (its body's end, or the stream's
//! log call for a reset) its tokens, ending and first-token time go to the metrics, to the
//! access log's `graysplit_llm` and, for a guarded rule, to its guard. A shadowed request's
//! answer is read the same way, with its text, whether or not the plan has `llm`, for its pair
//! (DESIGN.md "Shadow"); a shadow's answer is read whole by [`read_whole`].

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::root::{now_ns, Active};
use crate::config::MetricId;
use crate::llm::text::RawText;
use crate::llm::{Answer, AnswerText, Finish, Framing, Reader, Tokens};

/// How much of each answer's text a shadowed request keeps, for the similarity (which reads
/// the first 65536 bytes) and the record's `text` (at most 16 KiB of it).
pub(super) const TEXT_KEEP: usize = crate::shadow::similarity::MAX_BYTES;

/// One answer being read.
pub(super) struct Reading {
    /// None for an answer of no format the readers know: for the llm metrics only a 5xx
    /// (an `error`); for a shadowed request's pairing any answer (its body is the text).
    reader: Option<Reader>,
    /// A shadowed request's answer of another kind: its body, as text.
    raw: Option<RawText>,
    status: Option<u16>,
    /// When the request's headers reached the filter, and when the first token came (Unix ns).
    start_ns: i64,
    first_token_ns: Option<i64>,
    /// Its guard was told no first token will come.
    told_no_token: bool,
    /// The decision's metric: its rule and version.
    metric: MetricId,
    /// The guard that counts it at its end, and the version's index in its book.
    guarded: Option<(usize, usize)>,
    /// An answer for the llm metrics and the access log (`llm`, under `llm.paths`).
    counted: bool,
}

/// A shadowed request's own answer, for its pair (DESIGN.md "Shadow").
pub(super) struct Primary {
    pub status: Option<u16>,
    pub total_ms: u64,
    pub first_token_ms: Option<u64>,
    pub answer: Answer,
    pub text: AnswerText,
}

/// An answer read whole (a shadow's, which Envoy hands over in one piece): its signals and
/// text, by its content type as a request's answer is.
pub(super) fn read_whole(
    content_type: Option<&[u8]>,
    content_encoding: Option<&[u8]>,
    status: Option<u16>,
    max_event_bytes: usize,
    body: &[u8],
) -> (Answer, AnswerText) {
    match Framing::of(content_type, content_encoding) {
        Some(f) => {
            let mut r = Reader::with_text(f, max_event_bytes, TEXT_KEEP);
            r.feed(body);
            let (answer, text) = r.end_with_text(true, status);
            (answer, text.unwrap_or_else(|| RawText::new(0).finish()))
        }
        None => {
            let mut raw = RawText::new(TEXT_KEEP);
            raw.push(body);
            (plain(status), raw.finish())
        }
    }
}

/// The signals of an answer of no known format: an `error` for a 5xx, else `unknown`.
fn plain(status: Option<u16>) -> Answer {
    let finish = if status.is_some_and(|s| s >= 500) { Finish::Error } else { Finish::Unknown };
    Answer { tokens: Tokens::default(), finish, first_token: false }
}

impl Reading {
    /// The response headers of request `context_id` came: an answer to read (for the llm
    /// metrics when `answer`: a plan with `llm`, the request under `llm.paths`; for a shadowed
    /// request's pair when `paired` gives its `max_event_bytes`), or none, and the response's
    /// status (for a guard to count it as a plain response when the reading does not; the map
    /// is read once for both).
    pub(super) fn at_headers(
        active: &Active,
        context_id: u32,
        start_ns: i64,
        metric: MetricId,
        guarded: Option<(usize, usize)>,
        answer: bool,
        paired: Option<usize>,
    ) -> (Option<Reading>, Option<u16>) {
        let map = super::ffi::header_pairs(MapType::HttpResponseHeaders);
        let status = map.first(b":status").and_then(super::http::status);
        let framing = Framing::of(map.first(b"content-type"), map.first(b"content-encoding"));
        let llm = active.plan.llm.as_ref().filter(|_| answer);
        let counted = llm.is_some() && (framing.is_some() || status.is_some_and(|s| s >= 500));
        let Some(max) = paired.or_else(|| llm.filter(|_| counted).map(|l| l.max_event_bytes)) else {
            return (None, status);
        };
        let guarded = guarded.filter(|_| counted);
        if let Some((g, _)) = guarded {
            if let Some(link) = active.guards.get(g) {
                link.book.borrow_mut().answer_headers(context_id);
            }
        }
        let reader = framing.map(|f| match paired {
            Some(_) => Reader::with_text(f, max, TEXT_KEEP),
            None => Reader::new(f, max),
        });
        let raw = (paired.is_some() && framing.is_none()).then(|| RawText::new(TEXT_KEEP));
        let reading = Reading {
            reader,
            raw,
            status,
            start_ns,
            first_token_ns: None,
            told_no_token: false,
            metric,
            guarded,
            counted,
        };
        (Some(reading), status)
    }

    /// The guard that counts it, if any.
    pub(super) fn guarded(&self) -> Option<(usize, usize)> {
        self.guarded
    }

    /// A body chunk of `size` bytes passed (the host's buffer holds just it: every callback
    /// continues).
    pub(super) fn body(&mut self, active: &Active, context_id: u32, size: usize) {
        if size == 0 || (self.reader.is_none() && self.raw.is_none()) {
            return;
        }
        let Ok(Some(chunk)) = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size) else { return };
        if let Some(raw) = &mut self.raw {
            raw.push(&chunk);
        }
        let Some(reader) = &mut self.reader else { return };
        let link = self.guarded.and_then(|(g, _)| active.guards.get(g));
        if reader.feed(&chunk) {
            let now = now_ns();
            self.first_token_ns = Some(now);
            if let Some(link) = link {
                link.book.borrow_mut().first_token(context_id, now);
            }
        } else if self.first_token_ns.is_none() && !self.told_no_token && reader.unrecognised() {
            // A stream of no known format (an app's own events): its guard waits for no token.
            self.told_no_token = true;
            if let Some(link) = link {
                link.book.borrow_mut().no_token(context_id);
            }
        }
    }

    /// The answer ended (`clean`: its body's end; else the stream was reset): counted, and for
    /// a shadowed request returned for its pair.
    pub(super) fn end(self, active: &Active, context_id: u32, clean: bool) -> Option<Primary> {
        let (answer, text) = match self.reader {
            Some(r) => r.end_with_text(clean, self.status),
            None => (plain(self.status), None),
        };
        let text = text.or_else(|| self.raw.map(RawText::finish));
        let now = now_ns();
        let first_token_ms = self
            .first_token_ns
            .filter(|_| answer.first_token)
            .map(|t| u64::try_from((t - self.start_ns).max(0) / 1_000_000).unwrap_or(0));
        if self.counted {
            count(active, self.metric, &answer, first_token_ms);
            let _ = super::ffi::set_property(b"graysplit_llm", answer.log_line(first_token_ms).as_bytes());
        }
        if let Some((g, v)) = self.guarded {
            if let Some(link) = active.guards.get(g) {
                link.book.borrow_mut().count_answer(context_id, v, self.status, &answer);
            }
        }
        let text = text?;
        let total_ms = u64::try_from((now - self.start_ns).max(0) / 1_000_000).unwrap_or(0);
        Some(Primary { status: self.status, total_ms, first_token_ms, answer, text })
    }
}

/// An answer's llm metrics: its tokens by kind, its ending, its first-token time and output
/// tokens in their histograms.
fn count(active: &Active, metric: MetricId, answer: &Answer, first_token_ms: Option<u64>) {
    let Some(Some(m)) = active.plan.answers.get(metric) else { return };
    let counter = |id: MetricId, n: u64| {
        if let (Some(id), true) = (active.metric_ids.get(id), n > 0) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    };
    for (id, n) in m.tokens.iter().zip(answer.tokens.by_kind()) {
        counter(*id, n.unwrap_or(0));
    }
    if let Some(id) = m.finishes.get(answer.finish.index()) {
        counter(*id, 1);
    }
    let histogram = |h: usize, v: u64| {
        if let Some(id) = active.histogram_ids.get(h) {
            let _ = hostcalls::record_metric(*id, v);
        }
    };
    if let Some(ms) = first_token_ms {
        histogram(m.first_token_ms, ms);
    }
    if let Some(out) = answer.tokens.output {
        histogram(m.output_tokens, out);
    }
}
