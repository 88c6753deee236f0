//! graysplit: an Envoy proxy-wasm HTTP filter that decides, per request, whether the stable or
//! a gray version of an application serves it, and writes the decision into a routing header
//! that Envoy's route table (or an Istio VirtualService) matches on.
//!
//! This file is only the proxy-wasm glue (over the hand-written ABI bindings in `abi.rs`).
//! Everything that decides lives in pure modules that never call the host and are unit-tested
//! on the host: [`config`] (parse, validate, compile),
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
mod abi;

#[cfg(target_arch = "wasm32")]
mod glue {
    //! The callbacks Envoy calls, and only those: `proxy_on_vm_start`, `proxy_on_configure`,
    //! `proxy_on_context_create`, `proxy_on_request_headers`, `proxy_on_response_headers` and
    //! `proxy_on_delete`. Envoy skips a callback the module does not export (proxy-wasm-cpp-host
    //! checks each export once), so a request costs no `proxy_on_log` or `proxy_on_done` call.
    //! `#[no_mangle]` counts as unsafe code (a symbol could clash); each export allows it alone.

    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::hash::{BuildHasherDefault, Hasher};
    use std::rc::Rc;

    use crate::abi::{self, Map};
    use crate::config::{self, Plan, VersionId};
    use crate::decide::decide;
    use crate::request::Host;

    /// proxy-wasm `Action::Continue`.
    const CONTINUE: u32 = 0;

    /// A compiled plan and the host's ids of its counters (same order as `plan.metrics`).
    struct Active {
        plan: Plan,
        metric_ids: Vec<u32>,
    }

    /// One HTTP stream: its plugin's root context, and what the response needs from the
    /// decision.
    struct Stream {
        root: u32,
        version: Option<VersionId>,
        set_cookie: Option<String>,
    }

    /// Context ids are small sequential integers: one multiply spreads them over the table.
    #[derive(Default)]
    struct IdHasher(u64);

    impl Hasher for IdHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
        }
        fn write_u32(&mut self, id: u32) {
            self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    thread_local! {
        /// Root contexts, one per plugin config in this VM (an ECDS update adds one; Envoy
        /// deletes the old one when its last stream is done), with the plan each accepted.
        static ROOTS: RefCell<Vec<(u32, Option<Rc<Active>>)>> = const { RefCell::new(Vec::new()) };
        /// Live HTTP streams by context id. Envoy deletes each (`proxy_on_delete`); one it
        /// never deletes (HTTP/3 may create a context only to log, after its deletion point)
        /// goes with its root.
        static STREAMS: RefCell<HashMap<u32, Stream, BuildHasherDefault<IdHasher>>> =
            RefCell::new(HashMap::default());
        /// Ids minted without a random source, for `fill_random`'s fallback.
        static MINTED: Cell<u64> = const { Cell::new(0) };
    }

    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
        init_logging();
        1
    }

    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
        if parent_context_id == 0 {
            // Envoy may start an existing plugin again (the same root id): keep one row.
            ROOTS.with_borrow_mut(|roots| {
                if !roots.iter().any(|(id, _)| *id == context_id) {
                    roots.push((context_id, None));
                }
            });
            return;
        }
        let stream = Stream { root: parent_context_id, version: None, set_cookie: None };
        STREAMS.with_borrow_mut(|streams| streams.insert(context_id, stream));
    }

    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn proxy_on_delete(context_id: u32) {
        if STREAMS.with_borrow_mut(|streams| streams.remove(&context_id)).is_none() {
            // A root: its plan goes, and any stream of it Envoy never deleted.
            ROOTS.with_borrow_mut(|roots| roots.retain(|(id, _)| *id != context_id));
            STREAMS.with_borrow_mut(|streams| streams.retain(|_, s| s.root != context_id));
        }
    }

    /// The plan root context `root` accepted, if any.
    fn plan_of(root: u32) -> Option<Rc<Active>> {
        ROOTS.with_borrow(|roots| roots.iter().find(|(id, _)| *id == root).and_then(|(_, a)| a.clone()))
    }

    /// One per plugin config. A config update (ECDS) creates a new root context whose
    /// configure either accepts the whole config or returns false, and Envoy then keeps the
    /// previous plugin (DESIGN.md "Behaviour on bad input").
    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn proxy_on_configure(root_context_id: u32, plugin_configuration_size: usize) -> u32 {
        init_logging();
        let raw = abi::plugin_configuration(plugin_configuration_size).unwrap_or_default();
        let Some(active) = configure(&raw) else { return 0 };
        let active = Some(Rc::new(active));
        ROOTS.with_borrow_mut(|roots| match roots.iter_mut().find(|(id, _)| *id == root_context_id) {
            Some((_, slot)) => *slot = active,
            None => roots.push((root_context_id, active)),
        });
        1
    }

    fn configure(raw: &[u8]) -> Option<Active> {
        let plan = match config::parse(raw) {
            Ok(plan) => plan,
            Err(e) => {
                log::error!("graysplit: invalid config: {e}");
                return None;
            }
        };
        let mut metric_ids = Vec::with_capacity(plan.metrics.len());
        for name in &plan.metrics {
            match abi::define_counter(name) {
                Ok(id) => metric_ids.push(id),
                Err(status) => {
                    log::error!("graysplit: invalid config: $: Envoy refused metric {name}: status {status}");
                    return None;
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
        Some(Active { plan, metric_ids })
    }

    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(
        context_id: u32,
        _num_headers: usize,
        _end_of_stream: u32,
    ) -> u32 {
        let root = STREAMS.with_borrow(|streams| streams.get(&context_id).map(|s| s.root));
        let Some(active) = root.and_then(plan_of) else {
            // Unreachable in practice (Envoy does not run a plugin whose configure failed),
            // but never let a client-sent routing header through.
            abi::remove_header(Map::RequestHeaders, config::DEFAULT_ROUTE_HEADER);
            return CONTINUE;
        };
        let plan = &active.plan;
        let d = decide(plan, &WasmHost);
        let version = d.version_name(plan);
        // Replaces every copy the client sent; Envoy then re-selects the route.
        abi::replace_header(Map::RequestHeaders, &plan.route_header, version.as_bytes());
        for m in [Some(d.metric), d.override_metric].into_iter().flatten() {
            if let Some(id) = active.metric_ids.get(m) {
                abi::increment(*id, 1);
            }
        }
        // The deciding rule, as filter state for the access log:
        // %FILTER_STATE(wasm.graysplit_rule:PLAIN)%. The version needs no property of its own
        // (each costs Envoy ~4k instructions per request): %REQ(x-graysplit-version)% shows
        // the routing header as set here.
        let rule = d.rule_name(plan);
        abi::set_property(b"graysplit_rule", rule.as_bytes());
        match d.bucket {
            Some(b) => log::debug!("graysplit: version {version} by rule {rule} (bucket {b})"),
            None => log::debug!("graysplit: version {version} by rule {rule}"),
        }
        if plan.response_header.is_some() || d.set_cookie.is_some() {
            STREAMS.with_borrow_mut(|streams| {
                if let Some(s) = streams.get_mut(&context_id) {
                    s.version = Some(d.version);
                    s.set_cookie = d.set_cookie;
                }
            });
        }
        CONTINUE
    }

    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(
        context_id: u32,
        _num_headers: usize,
        _end_of_stream: u32,
    ) -> u32 {
        let Some((root, version, set_cookie)) = STREAMS.with_borrow_mut(|streams| {
            let s = streams.get_mut(&context_id)?;
            Some((s.root, s.version?, s.set_cookie.take()))
        }) else {
            return CONTINUE;
        };
        let Some(active) = plan_of(root) else { return CONTINUE };
        if let Some(name) = &active.plan.response_header {
            if let Some(v) = active.plan.versions.get(version) {
                abi::replace_header(Map::ResponseHeaders, name, v.as_bytes());
            }
        }
        if let Some(cookie) = set_cookie {
            abi::add_header(Map::ResponseHeaders, "set-cookie", cookie.as_bytes());
        }
        CONTINUE
    }

    /// The request as the proxy-wasm host shows it: bytes, never a String the host could make
    /// invalid.
    struct WasmHost;

    impl Host for WasmHost {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            abi::header(Map::RequestHeaders, name)
        }

        fn header_map(&self) -> Vec<u8> {
            abi::header_pairs(Map::RequestHeaders).unwrap_or_default()
        }

        fn source_address(&self) -> Option<Vec<u8>> {
            abi::property(b"source\0address")
        }

        fn now_unix_nanos(&self) -> i64 {
            abi::now_unix_nanos().and_then(|t| i64::try_from(t).ok()).unwrap_or(0)
        }

        fn fill_random(&self, buf: &mut [u8]) {
            if !abi::random(buf) {
                // No random source (a host that refuses WASI random_get): distinct ids from a
                // hash of a per-VM counter and the clock. Not std's RandomState, whose keys
                // come from the same random_get and which panics without it.
                let n = MINTED.get().wrapping_add(1);
                MINTED.set(n);
                for (i, chunk) in buf.chunks_mut(8).enumerate() {
                    let mut h = std::hash::DefaultHasher::new();
                    h.write_u64(n);
                    h.write_usize(i);
                    h.write_i64(self.now_unix_nanos());
                    let bytes = h.finish().to_le_bytes();
                    chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
                }
            }
        }
    }

    /// `log` records go to Envoy's log (`proxy_log`), filtered at Envoy's level for the `wasm`
    /// component, so per-request debug lines cost nothing unless someone asked for them.
    struct HostLogger;

    static LOGGER: HostLogger = HostLogger;

    fn init_logging() {
        // A second call (the next configure) only refreshes the level.
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(match abi::log_level().unwrap_or(2) {
            0 => log::LevelFilter::Trace,
            1 => log::LevelFilter::Debug,
            2 => log::LevelFilter::Info,
            3 => log::LevelFilter::Warn,
            4 => log::LevelFilter::Error,
            _ => log::LevelFilter::Off,
        });
    }

    impl log::Log for HostLogger {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::max_level()
        }

        fn log(&self, record: &log::Record) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let level = match record.level() {
                log::Level::Trace => 0,
                log::Level::Debug => 1,
                log::Level::Info => 2,
                log::Level::Warn => 3,
                log::Level::Error => 4,
            };
            abi::log(level, &record.args().to_string());
        }

        fn flush(&self) {}
    }
}
