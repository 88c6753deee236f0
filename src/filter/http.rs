//! The HTTP context: one per request. Decides on the request headers, writes the routing
//! header, counts the decision; on the response echoes the version, sends a minted sticky
//! cookie, and for a guarded rule counts the response for its guard.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::WasmHost;
use super::root::{now_ns, Active};
use crate::config::{self, VersionId};
use crate::decide::decide;

pub(super) struct Stream {
    context_id: u32,
    active: Option<Rc<Active>>,
    /// What the response needs from the decision.
    version: Option<VersionId>,
    set_cookie: Option<String>,
    /// For a guarded rule: the guard and the version's index in its book, and when the request
    /// started (only for guards with `slow_ms`).
    guarded: Option<(usize, usize, Option<i64>)>,
}

impl Stream {
    pub(super) fn new(context_id: u32, active: Option<Rc<Active>>) -> Self {
        Stream { context_id, active, version: None, set_cookie: None, guarded: None }
    }
}

impl Context for Stream {}

impl Drop for Stream {
    fn drop(&mut self) {
        // A guarded request that never got response headers leaves the in-flight list.
        if let (Some(active), Some((g, _, Some(_)))) = (&self.active, self.guarded) {
            if let Some(link) = active.guards.get(g) {
                link.book.borrow_mut().forget(self.context_id);
            }
        }
    }
}

// The host's status on header and property writes is not checked: a request has nothing to fall
// back to when Envoy refuses one (a stream already closed), and the SDK itself fails loudly on
// the statuses it does not expect.
impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(active) = self.active.clone() else {
            // Unreachable in practice (Envoy does not run a plugin whose configure failed),
            // but never let a client-sent routing header through.
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, config::DEFAULT_ROUTE_HEADER);
            return Action::Continue;
        };
        let plan = &active.plan;
        let d = decide(plan, &WasmHost { active: &active });
        let version = d.version_name(plan);
        // Replaces every copy the client sent; Envoy then re-selects the route.
        let _ = hostcalls::set_map_value_bytes(
            MapType::HttpRequestHeaders,
            &plan.route_header,
            Some(version.as_bytes()),
        );
        for m in [Some(d.metric), d.override_metric].into_iter().flatten() {
            if let Some(id) = active.metric_ids.get(m) {
                let _ = hostcalls::increment_metric(*id, 1);
            }
        }
        // The deciding rule, as filter state for the access log:
        // %FILTER_STATE(wasm.graysplit_rule:PLAIN)%. The version needs no property of its own
        // (each costs Envoy ~4k instructions per request): %REQ(x-graysplit-version)% shows
        // the routing header as set here.
        let rule = d.rule_name(plan);
        let _ = hostcalls::set_property(vec!["graysplit_rule"], Some(rule.as_bytes()));
        match d.bucket {
            Some(b) => log::debug!("graysplit: version {version} by rule {rule} (bucket {b})"),
            None => log::debug!("graysplit: version {version} by rule {rule}"),
        }
        if let Some(&(g, v)) = d.watch.and_then(|w| active.watch_slots.get(w)) {
            if let Some(link) = active.guards.get(g) {
                let mut book = link.book.borrow_mut();
                let start = book.slow_ms().map(|_| now_ns());
                if let Some(t) = start {
                    book.start(self.context_id, v, t);
                }
                self.guarded = Some((g, v, start));
            }
        }
        if plan.response_header.is_some() || d.set_cookie.is_some() {
            self.version = Some(d.version);
            self.set_cookie = d.set_cookie;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(active) = &self.active else { return Action::Continue };
        if let Some((g, v, start)) = self.guarded.take() {
            count_response(active, self.context_id, g, v, start);
        }
        let Some(version) = self.version else { return Action::Continue };
        if let Some(name) = &active.plan.response_header {
            if let Some(v) = active.plan.versions.get(version) {
                let _ =
                    hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(v.as_bytes()));
            }
        }
        if let Some(cookie) = self.set_cookie.take() {
            let _ =
                hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", cookie.as_bytes());
        }
        Action::Continue
    }
}

/// Counts a guarded rule's response for its guard: an error when its status is one of the
/// guard's `statuses` (Envoy's own local replies included: they pass here too), or when its
/// headers came later than `slow_ms` after the request's.
fn count_response(active: &Active, context_id: u32, g: usize, v: usize, start: Option<i64>) {
    let Some(link) = active.guards.get(g) else { return };
    let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
    let mut book = link.book.borrow_mut();
    let slow = match (start, book.slow_ms()) {
        (Some(t), Some(ms)) => now_ns() - t > i64::from(ms) * 1_000_000,
        _ => false,
    };
    let error =
        slow || status.is_some_and(|s| active.plan.guards.get(g).is_some_and(|gd| gd.statuses.is_error(s)));
    book.count(context_id, v, error);
}
