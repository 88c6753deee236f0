//! The answer readers' host side (DESIGN.md "Reading LLM answers"): for a request under
//! `llm.paths`, its response is looked at once its headers come; an answer (a JSON or SSE body
//! without content-encoding, or any 5xx) is fed chunk by chunk to the pure [`Reader`] as it
//! passes, every callback continuing at once; when it ends (its body's end, or the stream's
//! log call for a reset) its tokens, ending and first-token time go to the metrics, to the
//! access log's `graysplit_llm` and, for a guarded rule, to its guard.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::root::{now_ns, Active};
use crate::config::MetricId;
use crate::llm::{Answer, Finish, Framing, Reader, Tokens};

/// One answer being read.
pub(super) struct Reading {
    /// None for a 5xx answer of another content type: nothing to read, an `error`.
    reader: Option<Reader>,
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
}

impl Reading {
    /// The response headers of request `context_id` came (a plan with `llm`): an answer to
    /// read, or not one, with the response's status for its guard to count it as a plain
    /// response (the map is read once for both).
    pub(super) fn at_headers(
        active: &Active,
        context_id: u32,
        start_ns: i64,
        metric: MetricId,
        guarded: Option<(usize, usize)>,
    ) -> Result<Reading, Option<u16>> {
        let map = super::ffi::header_pairs(MapType::HttpResponseHeaders);
        let status = map.first(b":status").and_then(super::http::status);
        let Some(llm) = active.plan.llm.as_ref() else { return Err(status) };
        let framing = Framing::of(map.first(b"content-type"), map.first(b"content-encoding"));
        if framing.is_none() && !status.is_some_and(|s| s >= 500) {
            return Err(status);
        }
        if let Some((g, _)) = guarded {
            if let Some(link) = active.guards.get(g) {
                link.book.borrow_mut().answer_headers(context_id);
            }
        }
        Ok(Reading {
            reader: framing.map(|f| Reader::new(f, llm.max_event_bytes)),
            status,
            start_ns,
            first_token_ns: None,
            told_no_token: false,
            metric,
            guarded,
        })
    }

    /// The guard that counts it, if any.
    pub(super) fn guarded(&self) -> Option<(usize, usize)> {
        self.guarded
    }

    /// A body chunk of `size` bytes passed (the host's buffer holds just it: every callback
    /// continues).
    pub(super) fn body(&mut self, active: &Active, context_id: u32, size: usize) {
        let Some(reader) = &mut self.reader else { return };
        if size == 0 {
            return;
        }
        let Ok(Some(chunk)) = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size) else { return };
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

    /// The answer ended (`clean`: its body's end; else the stream was reset): counted.
    pub(super) fn end(self, active: &Active, context_id: u32, clean: bool) {
        let answer = match self.reader {
            Some(r) => r.end(clean, self.status),
            None => Answer { tokens: Tokens::default(), finish: Finish::Error, first_token: false },
        };
        let first_token_ms = self
            .first_token_ns
            .filter(|_| answer.first_token)
            .map(|t| u64::try_from((t - self.start_ns).max(0) / 1_000_000).unwrap_or(0));
        if let Some(Some(m)) = active.plan.answers.get(self.metric) {
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
        let _ = super::ffi::set_property(b"graysplit_llm", answer.log_line(first_token_ms).as_bytes());
        if let Some((g, v)) = self.guarded {
            if let Some(link) = active.guards.get(g) {
                link.book.borrow_mut().count_answer(context_id, v, self.status, &answer);
            }
        }
    }
}
