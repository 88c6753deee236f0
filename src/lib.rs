//! graysplit: an Envoy proxy-wasm HTTP filter that decides, per request, whether the stable or
//! a gray version of an application serves it, and writes the decision into a routing header
//! that Envoy's route table (or an Istio VirtualService) matches on.
//!
//! This file is only the proxy-wasm glue. Everything that decides lives in pure modules that
//! never call the host and are unit-tested on the host: [`config`] (parse, validate, compile),
//! [`decide`] (the decision), [`request`] (how a request is read), [`hash`] (the bucketing
//! contract), and the small parsers they use.

pub mod cidr;
pub mod config;
pub mod cookie;
pub mod decide;
pub mod error;
pub mod hash;
pub mod json;
pub mod matcher;
pub mod query;
pub mod request;
pub mod time;

#[cfg(target_arch = "wasm32")]
mod glue {
    use std::rc::Rc;
    use std::time::UNIX_EPOCH;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

    use crate::config::{self, Plan, VersionId};
    use crate::decide::decide;
    use crate::request::Host;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { active: None }) });
    }}

    /// A compiled plan and the host's ids of its counters (same order as `plan.metrics`).
    struct Active {
        plan: Plan,
        metric_ids: Vec<u32>,
    }

    /// One per plugin config. A config update (ECDS) creates a new root context whose
    /// `on_configure` either accepts the whole config or returns false, and Envoy then keeps
    /// the previous plugin (DESIGN.md "Behaviour on bad input").
    struct Root {
        active: Option<Rc<Active>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            // Follow Envoy's log level for the `wasm` component, so per-request debug lines
            // cost nothing unless someone asked for them.
            if let Ok(level) = hostcalls::get_log_level() {
                proxy_wasm::set_log_level(level);
            }
            let raw = self.get_plugin_configuration().unwrap_or_default();
            let plan = match config::parse(&raw) {
                Ok(plan) => plan,
                Err(e) => {
                    log::error!("graysplit: invalid config: {e}");
                    return false;
                }
            };
            let mut metric_ids = Vec::with_capacity(plan.metrics.len());
            for name in &plan.metrics {
                match hostcalls::define_metric(MetricType::Counter, name) {
                    Ok(id) => metric_ids.push(id),
                    Err(status) => {
                        log::error!("graysplit: invalid config: $: Envoy refused metric {name}: {status:?}");
                        return false;
                    }
                }
            }
            log::info!(
                "graysplit: config applied: stable {}, {} rules, versions [{}], route header {}",
                plan.versions.first().map_or("", String::as_str),
                plan.rule_count(),
                plan.versions.join(", "),
                plan.route_header
            );
            self.active = Some(Rc::new(Active { plan, metric_ids }));
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Http { active: self.active.clone(), version: None, set_cookie: None }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        active: Option<Rc<Active>>,
        version: Option<VersionId>,
        set_cookie: Option<String>,
    }

    impl Context for Http {}

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let Some(active) = self.active.as_deref() else {
                // Unreachable in practice (Envoy does not run a plugin whose configure failed),
                // but never let a client-sent routing header through.
                let _ =
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, config::DEFAULT_ROUTE_HEADER, None);
                return Action::Continue;
            };
            let plan = &active.plan;
            let d = decide(plan, &WasmHost);
            let version = d.version_name(plan);
            // Replaces every copy the client sent; Envoy then re-selects the route.
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, &plan.route_header, Some(version));
            for m in [Some(d.metric), d.override_metric].into_iter().flatten() {
                if let Some(id) = active.metric_ids.get(m) {
                    let _ = hostcalls::increment_metric(*id, 1);
                }
            }
            // The deciding rule, as filter state for the access log:
            // %FILTER_STATE(wasm.graysplit_rule:PLAIN)%. The version needs no property of its own
            // (each costs Envoy ~4.5k instructions per request): %REQ(x-graysplit-version)%
            // shows the routing header as set here.
            let rule = d.rule_name(plan);
            let _ = hostcalls::set_property(vec!["graysplit_rule"], Some(rule.as_bytes()));
            log::debug!("graysplit: version {version} by rule {rule} (bucket {:?})", d.bucket);
            self.version = Some(d.version);
            self.set_cookie = d.set_cookie;
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            let Some(active) = &self.active else {
                return Action::Continue;
            };
            if let (Some(name), Some(v)) = (&active.plan.response_header, self.version) {
                if let Some(version) = active.plan.versions.get(v) {
                    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(version));
                }
            }
            if let Some(cookie) = self.set_cookie.take() {
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, "set-cookie", &cookie);
            }
            Action::Continue
        }
    }

    /// The request as the proxy-wasm host shows it. Every getter uses the `_bytes` variants:
    /// the String ones panic on non-UTF-8 values.
    struct WasmHost;

    impl Host for WasmHost {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
        }

        fn headers(&self) -> Vec<(String, Vec<u8>)> {
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
        }

        fn source_address(&self) -> Option<Vec<u8>> {
            hostcalls::get_property(vec!["source", "address"]).ok().flatten()
        }

        fn now_unix_nanos(&self) -> i64 {
            hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_nanos()).ok())
                .unwrap_or(0)
        }

        fn fill_random(&self, buf: &mut [u8]) {
            wasi_random(buf);
        }
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        /// WASI `random_get`, which Envoy's proxy-wasm host implements.
        fn random_get(buf: *mut u8, len: usize) -> u16;
    }

    #[allow(unsafe_code)]
    fn wasi_random(buf: &mut [u8]) {
        // SAFETY: the host writes exactly `buf.len()` bytes into the buffer we own.
        let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
        if errno != 0 {
            // No random source: fall back to std's per-VM random SipHash keys over a counter
            // and the clock, which still gives distinct, unguessable ids.
            use std::hash::{BuildHasher, Hasher};
            let keys = std::collections::hash_map::RandomState::new();
            for (i, chunk) in buf.chunks_mut(8).enumerate() {
                let mut h = keys.build_hasher();
                h.write_usize(i);
                h.write_i64(WasmHost.now_unix_nanos());
                let bytes = h.finish().to_le_bytes();
                chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
            }
        }
    }
}
