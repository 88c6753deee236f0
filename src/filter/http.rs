//! The HTTP context: one per request. Decides on the request headers, writes the routing
//! header, counts the decision, and on the response echoes the version and sends a minted
//! sticky cookie.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::WasmHost;
use super::root::Active;
use crate::config::{self, VersionId};
use crate::decide::decide;

pub(super) struct Stream {
    active: Option<Rc<Active>>,
    /// What the response needs from the decision.
    version: Option<VersionId>,
    set_cookie: Option<String>,
}

impl Stream {
    pub(super) fn new(active: Option<Rc<Active>>) -> Self {
        Stream { active, version: None, set_cookie: None }
    }
}

impl Context for Stream {}

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
        let d = decide(plan, &WasmHost);
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
        if plan.response_header.is_some() || d.set_cookie.is_some() {
            self.version = Some(d.version);
            self.set_cookie = d.set_cookie;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(active), Some(version)) = (&self.active, self.version) else {
            return Action::Continue;
        };
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
