//! The HTTP context: one per request. Decides on the request headers (or, for a plan that
//! reads JSON bodies, once the body is in), writes the routing header, counts the decision; on
//! the response echoes the version, sends a minted sticky cookie and a session pin, and for a
//! guarded rule counts the response for its guard.
//!
//! Holding a request for its body: `on_http_request_headers` returns Pause, which Envoy honours
//! as "stop here, go on delivering the body" only when the Wasm filter's config sets
//! `allow_on_headers_stop_iteration: true`; otherwise it stops the whole stream and never calls
//! `on_http_request_body` (proxy-wasm-cpp-host turns the Pause into StopAllIterationAndWatermark).
//! So nothing is held on trust ([`mod@held`]): a held request whose body makes no progress for a
//! second (no body callback: that setting is missing, or the client is slow, or its JSON
//! stream never ends) is decided without its body and resumed from the root context's tick.
//! After three held requests in a row that never got a body callback at all, the VM takes the
//! setting to be missing: it says so once (an error line) and decides at the headers until the
//! next config is applied. Nothing stalls.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::WasmHost;
use super::root::Active;
use crate::config::{self, VersionId};
use crate::decide::decide;
use crate::request::body;

/// Ticks a held request's body may make no progress for before it is decided without it: the
/// third tick after the last progress, 1 to 1.5 s later at 500 ms a tick (later, never sooner,
/// when ticks run late). Counted in ticks, so a body callback reads no clock.
const IDLE_TICKS: u32 = 3;
const TICK_NS: i64 = super::guards::TICK_MS as i64 * 1_000_000;
/// Held requests in a row without a single body callback after which this VM concludes that
/// Envoy does not deliver bodies to it (no `allow_on_headers_stop_iteration`).
const MISSES_TO_GIVE_UP: u32 = 3;

pub(super) struct Stream {
    context_id: u32,
    active: Option<Rc<Active>>,
    out: Outcome,
    /// The decision waits for the JSON body (a plan that reads it): the request is held.
    awaiting_body: bool,
    /// How much of the body Envoy holds so far.
    body_size: usize,
}

/// What a request's decision leaves for its response.
#[derive(Default)]
pub(super) struct Outcome {
    version: Option<VersionId>,
    set_cookie: Option<String>,
    pin_cookie: Option<String>,
    /// For a guarded rule: the guard and the version's index in its book.
    guarded: Option<(usize, usize)>,
}

/// A request held for its body.
struct Held {
    context_id: u32,
    /// Ticks since it was held or its body last made progress.
    idle_ticks: u32,
    /// Whether a body callback came at all.
    got_body: bool,
    active: Rc<Active>,
}

thread_local! {
    /// Requests this VM holds for their body.
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    /// Held requests the tick decided without their body, for their streams to pick up.
    static DECIDED: RefCell<Vec<(u32, Outcome)>> = const { RefCell::new(Vec::new()) };
    /// Held requests in a row that never got a body callback.
    static MISSES: Cell<u32> = const { Cell::new(0) };
    /// This VM takes Envoy not to deliver bodies after a Pause (until the next config).
    static NO_BODIES: Cell<bool> = const { Cell::new(false) };
    /// When this VM's held requests were last checked (Unix ns): each root context with a
    /// tick calls the check, and the requests count one tick however many roots there are.
    static LAST_CHECK_NS: Cell<i64> = const { Cell::new(0) };
}

impl Stream {
    pub(super) fn new(context_id: u32, active: Option<Rc<Active>>) -> Self {
        Stream { context_id, active, out: Outcome::default(), awaiting_body: false, body_size: 0 }
    }

    fn max_body(&self) -> usize {
        self.active.as_ref().and_then(|a| a.plan.body.as_ref()).map_or(0, |b| b.max_bytes)
    }

    fn decide(&mut self, body: Option<usize>) {
        self.awaiting_body = false;
        held::release(self.context_id);
        if let Some(active) = &self.active {
            self.out = decide_request(active, self.context_id, body);
        }
    }

    /// A held request the tick had to decide (no body callback came): its outcome.
    fn picked_up(&mut self) {
        if !self.awaiting_body {
            return;
        }
        if let Some(o) = take_decided(self.context_id) {
            self.awaiting_body = false;
            self.out = o;
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

/// The outcome the tick decided for held request `context_id`, if it did.
fn take_decided(context_id: u32) -> Option<Outcome> {
    DECIDED.with_borrow_mut(|d| {
        let i = d.iter().position(|(id, _)| *id == context_id)?;
        Some(d.swap_remove(i).1)
    })
}

/// Whether the request has a JSON body graysplit may read (DESIGN.md "JSON request bodies"):
/// a body follows, its `content-type` is JSON, and it has no `content-encoding`.
fn json_body_follows(end_of_stream: bool) -> bool {
    let header = |name| hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten();
    !end_of_stream
        && header("content-type").is_some_and(|ct| body::is_json_content_type(&ct))
        && header("content-encoding").is_none()
}

impl Context for Stream {}

impl Drop for Stream {
    fn drop(&mut self) {
        // A guarded request that never got response headers leaves the in-flight list.
        self.forget(self.out.guarded);
        if self.awaiting_body {
            held::release(self.context_id);
            // Decided by the tick but never picked up (the client went away): its guard must
            // not wait for a response that will not come either.
            self.forget(take_decided(self.context_id).and_then(|o| o.guarded));
        }
    }
}

/// Decides the request `context_id` (the host's current context), writes the routing header
/// (Envoy then selects the route again), counts, and returns what the response needs. `body`:
/// the size of a whole JSON body Envoy holds.
fn decide_request(active: &Active, context_id: u32, body: Option<usize>) -> Outcome {
    let plan = &active.plan;
    let d = decide(plan, &WasmHost { active, body });
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
    if let (Some(outcome), Some(spec)) = (d.pin, &plan.pin) {
        let (kept, issued, ignored) = outcome.counts();
        count(kept.then_some(spec.kept_metric));
        count(issued.then_some(spec.issued_metric));
        count(ignored.then_some(spec.ignored_metric));
    }
    // The deciding rule, as filter state for the access log:
    // %FILTER_STATE(wasm.graysplit_rule:PLAIN)%. The version needs no property of its own
    // (each costs Envoy ~4k instructions per request): %REQ(x-graysplit-version)% shows the
    // routing header as set here.
    let rule = d.rule_name(plan);
    let _ = hostcalls::set_property(vec!["graysplit_rule"], Some(rule.as_bytes()));
    match d.bucket {
        Some(b) => log::debug!("graysplit: version {version} by rule {rule} (bucket {b})"),
        None => log::debug!("graysplit: version {version} by rule {rule}"),
    }
    let mut out = Outcome::default();
    if let Some(&(g, v)) = d.watch.and_then(|w| active.watch_slots.get(w)) {
        if let Some(link) = active.guards.get(g) {
            link.book.borrow_mut().start(context_id, v);
            out.guarded = Some((g, v));
        }
    }
    if plan.response_header.is_some() || d.set_cookie.is_some() || d.pin_cookie.is_some() {
        out.version = Some(d.version);
        out.set_cookie = d.set_cookie;
        out.pin_cookie = d.pin_cookie;
    }
    out
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
        if active.plan.body.is_some() && !NO_BODIES.get() && json_body_follows(end_of_stream) {
            // Hold the request (its headers too: the routing header is set once the body
            // says) until the body ends or max_bytes arrived.
            self.awaiting_body = true;
            held::hold(self.context_id, active);
            return Action::Pause;
        }
        self.out = decide_request(&active, self.context_id, None);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.picked_up();
        if !self.awaiting_body {
            return Action::Continue;
        }
        held::progress(self.context_id);
        self.body_size = body_size;
        let max = self.max_body();
        if !end_of_stream && body_size <= max {
            // Keep buffering: at most max_bytes plus one chunk. (HTTP/1.1 ends a body with an
            // empty callback, so a body of exactly max_bytes is still read whole.)
            return Action::Pause;
        }
        // The whole body within max_bytes, or none (longer: the decision goes on without it).
        let whole = end_of_stream && body_size <= max;
        self.decide(whole.then_some(body_size));
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // The body ended with trailers: decide with what is held.
        self.picked_up();
        if self.awaiting_body {
            let (size, max) = (self.body_size, self.max_body());
            self.decide((size <= max).then_some(size));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.picked_up();
        let Some(active) = &self.active else { return Action::Continue };
        if let Some((g, v)) = self.out.guarded.take() {
            count_response(active, self.context_id, g, v);
        }
        let Some(version) = self.out.version else { return Action::Continue };
        if let Some(name) = &active.plan.response_header {
            if let Some(v) = active.plan.versions.get(version) {
                let _ =
                    hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(v.as_bytes()));
            }
        }
        for cookie in [self.out.set_cookie.take(), self.out.pin_cookie.take()].into_iter().flatten() {
            let _ =
                hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", cookie.as_bytes());
        }
        Action::Continue
    }
}

/// Counts a guarded rule's response for its guard (Envoy's own local replies pass here too).
fn count_response(active: &Active, context_id: u32, g: usize, v: usize) {
    let Some(link) = active.guards.get(g) else { return };
    let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
    link.book.borrow_mut().count_response(context_id, v, status);
}

/// The requests this VM holds for their bodies, watched from the root context's tick.
pub(super) mod held {
    use super::*;

    pub(super) fn hold(context_id: u32, active: Rc<Active>) {
        HELD.with_borrow_mut(|h| h.push(Held { context_id, idle_ticks: 0, got_body: false, active }));
    }

    /// A body callback for a held request: Envoy delivers bodies, and this one moves.
    pub(super) fn progress(context_id: u32) {
        MISSES.set(0);
        HELD.with_borrow_mut(|h| {
            if let Some(e) = h.iter_mut().find(|e| e.context_id == context_id) {
                e.idle_ticks = 0;
                e.got_body = true;
            }
        });
    }

    pub(super) fn release(context_id: u32) {
        HELD.with_borrow_mut(|h| h.retain(|e| e.context_id != context_id));
    }

    /// A config was applied: try holding again.
    pub(in crate::filter) fn reset() {
        MISSES.set(0);
        NO_BODIES.set(false);
    }

    /// On a tick: every held request whose body made no progress for [`IDLE_TICKS`] ticks is
    /// decided without its body and resumed; after [`MISSES_TO_GIVE_UP`] in a row that got no
    /// body callback at all, this VM stops holding requests (and says why).
    pub(in crate::filter) fn check(now: i64) {
        if now - LAST_CHECK_NS.get() < TICK_NS / 2 {
            return; // another root context of this VM checked at this tick
        }
        LAST_CHECK_NS.set(now);
        let stale: Vec<Held> = HELD.with_borrow_mut(|h| {
            if h.is_empty() {
                return Vec::new();
            }
            for e in h.iter_mut() {
                e.idle_ticks += 1;
            }
            let (stale, keep) = std::mem::take(h).into_iter().partition(|e| e.idle_ticks >= IDLE_TICKS);
            *h = keep;
            stale
        });
        for e in stale {
            if !e.got_body {
                MISSES.set(MISSES.get() + 1);
            }
            if hostcalls::set_effective_context(e.context_id).is_ok() {
                let out = decide_request(&e.active, e.context_id, None);
                DECIDED.with_borrow_mut(|d| d.push((e.context_id, out)));
                let _ = hostcalls::resume_http_request();
            }
        }
        if MISSES.get() >= MISSES_TO_GIVE_UP && !NO_BODIES.replace(true) {
            log::error!(
                "graysplit: request bodies are not delivered to the filter: set allow_on_headers_stop_iteration: true in the Wasm filter's config (envoy.extensions.wasm.v3.PluginConfig); until a config is applied again, body conditions and body identities see no body"
            );
        }
    }
}
