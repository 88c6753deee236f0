//! The HTTP context: one per request. Decides on the request headers (or, when a JSON body
//! still to come can change the decision, once the body is in), writes the routing header,
//! counts the decision; on the response echoes the version, sends a minted sticky cookie and
//! the session pins, and for a guarded rule counts the response for its guard.
//!
//! Holding a request for its body: `on_http_request_headers` returns Pause, which Envoy honours
//! as "stop here, go on delivering the body" only when the Wasm filter's config sets
//! `allow_on_headers_stop_iteration: true`; otherwise it stops the whole stream and never calls
//! `on_http_request_body` (proxy-wasm-cpp-host turns the Pause into StopAllIterationAndWatermark).
//! Whether that is so is the pure [`crate::body::watchdog`]'s call, from evidence no client
//! controls (body bytes Envoy received for a held request that got no body callback), checked
//! on the root context's tick; a body that is delivered, however slowly, is waited for.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::answers::Reading;
use super::host::WasmHost;
use super::root::{now_ns, Active};
use super::vm::{Held, SharedVm};
use crate::body;
use crate::config::{self, MetricId, VersionId};
use crate::decide::{decide, decide_at_headers, Decision};

pub(super) struct Stream {
    context_id: u32,
    vm: SharedVm,
    active: Option<Rc<Active>>,
    out: Outcome,
    /// The decision waits for the JSON body: the request is held.
    awaiting_body: bool,
    /// Decided for a version with a `model`: the request is held until its body is whole, to
    /// rewrite it.
    rewriting: bool,
    /// How much of the body Envoy holds so far.
    body_size: usize,
    /// With `llm`: when the request's headers reached the filter (Unix ns), and the answer
    /// being read.
    started_ns: i64,
    reading: Option<Reading>,
    /// The copy of this request for its rule's shadow, until the request is whole.
    shadow: Option<super::shadows::Copy>,
    /// A shadowed request's pair (its id, and the `max_event_bytes` its answer is read with),
    /// until its answer is in.
    pair: Option<(u32, usize)>,
}

/// What a request's decision leaves for its response.
#[derive(Default)]
pub(super) struct Outcome {
    version: Option<VersionId>,
    cookies: Vec<String>,
    /// For a guarded rule: the guard and the version's index in its book.
    guarded: Option<(usize, usize)>,
    /// The decision's metric (its rule and version), for the answer's metrics.
    metric: MetricId,
    /// With `llm`, the request is under `llm.paths`: its answer is read.
    answer: bool,
    /// The decision picked the request for its rule's shadow.
    shadow: Option<crate::decide::ShadowPick>,
    /// Decided for a version with a `model`: its body's `model` is still to be rewritten.
    model: Option<VersionId>,
}

impl Stream {
    pub(super) fn new(context_id: u32, vm: SharedVm, active: Option<Rc<Active>>) -> Self {
        Stream {
            context_id,
            vm,
            active,
            out: Outcome::default(),
            awaiting_body: false,
            rewriting: false,
            body_size: 0,
            started_ns: 0,
            reading: None,
            shadow: None,
            pair: None,
        }
    }

    /// A decision that picked a shadow: its copy starts, with the `held` bytes of body Envoy
    /// holds now; `whole`: the request has ended, and the copy is sent.
    fn begin_shadow(&mut self, held: usize, whole: bool) {
        let Some(pick) = self.out.shadow.take() else { return };
        let Some(active) = self.active.clone() else { return };
        let Some(mut copy) = super::shadows::start(&active, &self.vm, pick, self.started_ns) else { return };
        let max = active.plan.shadows.get(pick.shadow).map_or(0, |s| s.max_event_bytes);
        self.pair = Some((copy.pair, max));
        copy.body(&active, held);
        if whole {
            if !copy.send(&active, &self.vm) {
                self.pair = None;
            }
        } else {
            self.shadow = Some(copy);
        }
    }

    /// The request ended: its shadow copy, if any, is sent.
    fn end_shadow(&mut self) {
        if let (Some(copy), Some(active)) = (self.shadow.take(), &self.active) {
            if !copy.send(active, &self.vm) {
                self.pair = None;
            }
        }
    }

    fn max_body(&self) -> usize {
        self.active.as_ref().and_then(|a| a.plan.body.as_ref()).map_or(0, |b| b.max_bytes)
    }

    /// A held request's body is in (`whole`: its size, within `max_bytes`), or too long: decided
    /// now if it waited for its decision, and no longer held.
    fn body_ready(&mut self, whole: Option<usize>) {
        if self.awaiting_body {
            self.decide_held(whole);
        } else if self.rewriting {
            self.rewriting = false;
            self.vm.borrow_mut().release(self.context_id);
        }
    }

    /// The counter of a skipped rewrite of this request's model.
    fn skipped_metric(&self) -> Option<crate::config::MetricId> {
        let (active, v) = (self.active.as_ref()?, self.out.model?);
        active.plan.model(v).map(|m| m.skipped)
    }

    /// Decides a held request now (`body`: the size of its whole JSON body, or none).
    fn decide_held(&mut self, body: Option<usize>) {
        self.awaiting_body = false;
        self.vm.borrow_mut().release(self.context_id);
        if let Some(active) = &self.active {
            self.out = decide_now(active, self.context_id, body, &self.vm.borrow().minted, self.started_ns);
        }
        #[cfg(feature = "heap-stats")]
        super::heap::report();
    }

    /// A held request the tick had to decide (Envoy does not deliver its body): its outcome.
    fn picked_up(&mut self) {
        if self.rewriting && self.vm.borrow_mut().take_let_go(self.context_id) {
            // The tick let it go without its body (Envoy does not deliver bodies): counted
            // skipped there.
            self.rewriting = false;
            self.out.model = None;
        }
        if !self.awaiting_body {
            return;
        }
        let decided = self.vm.borrow_mut().take_decided(self.context_id);
        if let Some(mut o) = decided {
            self.awaiting_body = false;
            // Its body never reached the filter: nothing to copy for a shadow, no model to
            // rewrite (counted skipped).
            o.shadow = None;
            self.out = o;
            self.rewrite_model(None);
        }
    }

    /// The body's `model`, for a request decided to a version with one (DESIGN.md "Prompt
    /// matchers and versions as models"): `whole` is the size of the whole body Envoy holds
    /// within `max_bytes`, or none (then, or when the body has no top-level `model` string, the
    /// body passes unchanged, counted `skipped`).
    fn rewrite_model(&mut self, whole: Option<usize>) {
        let Some(v) = self.out.model.take() else { return };
        let Some(active) = &self.active else { return };
        let Some(spec) = active.plan.model(v) else { return };
        let rewritten = whole.and_then(|size| {
            let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()?;
            let new = crate::body::model::rewrite(&body, &spec.literal).ok()?;
            hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, &new).ok()?;
            if hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "content-length")
                .ok()
                .flatten()
                .is_some()
            {
                let mut digits = [0u8; 20];
                let n = crate::body::extract::decimal(new.len(), &mut digits).as_bytes();
                let _ =
                    hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "content-length", Some(n));
            }
            Some(())
        });
        let metric = if rewritten.is_some() { spec.rewritten } else { spec.skipped };
        if let Some(id) = active.metric_ids.get(metric) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    /// A guarded request that will get no response headers leaves its guard's in-flight list.
    fn forget(&self, guarded: Option<(usize, usize)>) {
        if let (Some(active), Some((g, _))) = (&self.active, guarded) {
            if let Some(link) = active.guards.get(g) {
                link.book.borrow_mut().forget(self.context_id);
            }
        }
    }
}

/// Whether a body follows that graysplit may read ([`body::readable`]). The three headers come
/// from one read of the map: cheaper than three reads of present headers.
fn readable_body_follows(end_of_stream: bool, max_bytes: usize) -> bool {
    if end_of_stream {
        return false;
    }
    let map = super::ffi::header_pairs(MapType::HttpRequestHeaders);
    body::readable(
        map.first(b"content-type"),
        map.first(b"content-encoding"),
        map.first(b"content-length"),
        max_bytes,
    )
}

impl Context for Stream {}

impl Drop for Stream {
    fn drop(&mut self) {
        // A guarded request that never got response headers, or whose answer never ended,
        // leaves the in-flight list.
        self.forget(self.out.guarded);
        if let Some(r) = self.reading.take() {
            self.forget(r.guarded());
        }
        if let Some((pair, _)) = self.pair.take() {
            // Its answer never came: no record.
            super::shadows::primary_gone(&self.vm, pair);
        }
        if let Some(copy) = self.shadow.take() {
            // The request never ended (reset while its body came): its copy is not sent, and
            // its pair, answered or not, will have no shadow.
            super::shadows::unsent(&self.vm, copy);
        }
        if self.rewriting {
            self.vm.borrow_mut().release(self.context_id);
        }
        if self.awaiting_body {
            let decided = {
                let mut vm = self.vm.borrow_mut();
                vm.release(self.context_id);
                vm.take_decided(self.context_id)
            };
            // Decided by the tick but never picked up (the client went away): its guard must
            // not wait for a response that will not come either.
            self.forget(decided.and_then(|o| o.guarded));
        }
    }
}

/// The decision for request `context_id` (the host's current context), applied: the routing
/// header written (Envoy then selects the route again), the counters, the access log's rule,
/// the guard told; returns what the response needs.
fn apply(active: &Active, context_id: u32, d: Decision, started_ns: i64) -> Outcome {
    let plan = &active.plan;
    let version = d.version_name(plan);
    // Replaces every copy the client sent.
    let _ = hostcalls::set_map_value_bytes(
        MapType::HttpRequestHeaders,
        &plan.route_header,
        Some(version.as_bytes()),
    );
    let count = |m: Option<usize>| {
        if let Some(id) = m.and_then(|m| active.metric_ids.get(m)) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    };
    count(Some(d.metric));
    count(d.override_metric);
    if let Some(lane) = &d.lane {
        // DESIGN.md "Lanes": the baggage the request goes on with (every `baggage` header
        // replaced by one, or removed), and what the lane did.
        count(Some(lane.metric));
        match &lane.baggage {
            Some(Some(v)) => {
                let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "baggage", Some(v));
            }
            Some(None) => {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "baggage");
            }
            None => {}
        }
    }
    if let (Some(outcome), Some(spec)) = (d.pin, &plan.pin) {
        let (kept, issued, ignored) = outcome.counts();
        count(kept.then_some(spec.kept_metric));
        count(issued.then_some(spec.issued_metric));
        count(ignored.then_some(spec.ignored_metric));
    }
    // The deciding rule, as filter state for the access log:
    // %FILTER_STATE(wasm.graysplit_rule:PLAIN)%, set without the SDK's two allocations per
    // call. The version needs no property of its own: %REQ(x-graysplit-version)% shows the
    // routing header as set here.
    let rule = d.rule_name(plan);
    let _ = super::ffi::set_property(b"graysplit_rule", rule.as_bytes());
    match d.bucket {
        Some(b) => log::debug!("graysplit: version {version} by rule {rule} (bucket {b})"),
        None => log::debug!("graysplit: version {version} by rule {rule}"),
    }
    let mut out = Outcome { metric: d.metric, shadow: d.shadow, ..Outcome::default() };
    if plan.model(d.version).is_some() {
        out.model = Some(d.version);
    }
    if let Some(llm) = &plan.llm {
        out.answer = llm.paths.is_empty()
            || hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path")
                .ok()
                .flatten()
                .is_some_and(|p| llm.reads(&p));
    }
    if let Some(&(g, v)) = d.watch.and_then(|w| active.watch_slots.get(w)) {
        if let Some(link) = active.guards.get(g) {
            link.book.borrow_mut().start(context_id, v, out.answer, started_ns);
            out.guarded = Some((g, v));
        }
    }
    if plan.response_header.is_some() || d.set_cookie.is_some() || !d.pin_cookies.is_empty() {
        out.version = Some(d.version);
        out.cookies = d.pin_cookies;
        out.cookies.extend(d.set_cookie);
    }
    out
}

/// Decides request `context_id` now and applies it (`body`: the size of its whole JSON body
/// Envoy holds, or none: a held request whose body came whole or too long, or whose body Envoy
/// does not deliver, the tick's call).
pub(super) fn decide_now(
    active: &Active,
    context_id: u32,
    body: Option<usize>,
    minted: &Cell<u64>,
    started_ns: i64,
) -> Outcome {
    let host = WasmHost { active, body, body_pending: false, minted };
    apply(active, context_id, decide(&active.plan, &host), started_ns)
}

// The host's status on header and property writes is not checked: a request has nothing to fall
// back to when Envoy refuses one (a stream already closed), and the SDK itself fails loudly on
// the statuses it does not expect.
impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(active) = self.active.clone() else {
            // Unreachable in practice (Envoy does not run a plugin whose configure failed),
            // but never let a client-sent routing header through.
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, config::DEFAULT_ROUTE_HEADER);
            return Action::Continue;
        };
        #[cfg(feature = "heap-stats")]
        super::heap::mark();
        if active.plan.llm.is_some() || !active.plan.shadows.is_empty() {
            self.started_ns = now_ns();
        }
        let vm = self.vm.clone();
        let max = active.plan.body.as_ref().map(|b| b.max_bytes);
        let may_hold = max.is_some() && vm.borrow().watchdog.may_hold();
        let pending = may_hold && readable_body_follows(end_of_stream, max.unwrap_or(0));
        let decided = {
            let vm = vm.borrow();
            let host = WasmHost { active: &active, body: None, body_pending: pending, minted: &vm.minted };
            if pending {
                decide_at_headers(&active.plan, &host)
            } else {
                Some(decide(&active.plan, &host))
            }
        };
        match decided {
            Some(d) => {
                self.out = apply(&active, self.context_id, d, self.started_ns);
                if self.out.model.is_some() {
                    if pending {
                        // Its body's `model` is rewritten once the body is whole: held until then
                        // (its headers too: `content-length` changes).
                        self.rewriting = true;
                        let held =
                            Held { active, started_ns: self.started_ns, rewrite: self.skipped_metric() };
                        vm.borrow_mut().watchdog.hold(self.context_id, held);
                        return Action::Pause;
                    }
                    // No body to rewrite (none, not JSON, encoded, announced too long).
                    self.rewrite_model(None);
                }
                self.begin_shadow(0, end_of_stream);
                Action::Continue
            }
            None => {
                // The body can still change the decision: hold the request (its headers too:
                // the routing header is set once the body says) until the body ends or
                // max_bytes arrived.
                self.awaiting_body = true;
                let held = Held { active, started_ns: self.started_ns, rewrite: None };
                vm.borrow_mut().watchdog.hold(self.context_id, held);
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.picked_up();
        if !self.awaiting_body && !self.rewriting {
            // Decided: the body passes, and a shadow's copy takes each chunk.
            if let (Some(copy), Some(active)) = (&mut self.shadow, &self.active) {
                copy.body(active, body_size);
            }
            if end_of_stream {
                self.end_shadow();
            }
            return Action::Continue;
        }
        if self.vm.borrow_mut().watchdog.body(self.context_id) {
            log::info!("graysplit: request bodies are delivered to the filter again");
        }
        self.body_size = body_size;
        let max = self.max_body();
        if !end_of_stream && body_size <= max {
            // Keep buffering: at most max_bytes plus one chunk. (HTTP/1.1 ends a body with an
            // empty callback, so a body of exactly max_bytes is still read whole.)
            return Action::Pause;
        }
        // The whole body within max_bytes, or none (longer: the decision goes on without it).
        let whole = (end_of_stream && body_size <= max).then_some(body_size);
        self.body_ready(whole);
        // The shadow's copy is of the body as the client sent it.
        self.begin_shadow(body_size, end_of_stream);
        self.rewrite_model(whole);
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // The body ended with trailers: decide with what is held.
        self.picked_up();
        if self.awaiting_body || self.rewriting {
            let (size, max) = (self.body_size, self.max_body());
            let whole = (size <= max).then_some(size);
            self.body_ready(whole);
            self.begin_shadow(size, true);
            self.rewrite_model(whole);
        }
        self.end_shadow();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.picked_up();
        let Some(active) = &self.active else { return Action::Continue };
        let guarded = self.out.guarded.take();
        let paired = self.pair.map(|(_, max)| max);
        let (reading, status) = if self.out.answer || paired.is_some() {
            let (start, metric) = (self.started_ns, self.out.metric);
            Reading::at_headers(active, self.context_id, start, metric, guarded, self.out.answer, paired)
        } else if guarded.is_some() {
            let s = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok().flatten();
            (None, s.as_deref().and_then(status))
        } else {
            (None, None)
        };
        if let Some((g, v)) = guarded.filter(|_| reading.as_ref().map_or(true, |r| r.guarded().is_none())) {
            // Not an answer its guard counts at its end: counted as a response now.
            count_response(active, self.context_id, g, v, status);
        }
        if let Some(r) = reading {
            self.reading = Some(r);
            if end_of_stream {
                self.answer_ended(true);
            }
        }
        let Some(active) = &self.active else { return Action::Continue };
        let Some(version) = self.out.version else { return Action::Continue };
        if let Some(name) = &active.plan.response_header {
            if let Some(v) = active.plan.versions.get(version) {
                let _ =
                    hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(v.as_bytes()));
            }
        }
        for cookie in std::mem::take(&mut self.out.cookies) {
            let _ =
                hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", cookie.as_bytes());
        }
        Action::Continue
    }

    // An answer is read as it passes: every callback continues at once, nothing is held.
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let (Some(r), Some(active)) = (&mut self.reading, &self.active) {
            r.body(active, self.context_id, body_size);
            if end_of_stream {
                self.answer_ended(true);
            }
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.answer_ended(true);
        Action::Continue
    }

    /// The stream is done; an answer that has not ended was cut (upstream reset, client gone).
    fn on_log(&mut self) {
        self.answer_ended(false);
    }
}

impl Stream {
    /// The answer being read ended (`clean`: its body ended; else the stream was reset).
    fn answer_ended(&mut self, clean: bool) {
        if let (Some(r), Some(active)) = (self.reading.take(), &self.active) {
            if let (Some(primary), Some((pair, _))) =
                (r.end(active, self.context_id, clean), self.pair.take())
            {
                super::shadows::primary_done(&self.vm, pair, primary);
            }
        }
    }
}

/// Counts a guarded rule's response for its guard (Envoy's own local replies pass here too).
fn count_response(active: &Active, context_id: u32, g: usize, v: usize, status: Option<u16>) {
    if let Some(link) = active.guards.get(g) {
        link.book.borrow_mut().count_response(context_id, v, status);
    }
}

/// A `:status` value as a number.
pub(super) fn status(value: &[u8]) -> Option<u16> {
    std::str::from_utf8(value).ok()?.parse().ok()
}
