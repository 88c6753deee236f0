//! The no-op proxy-wasm SDK filter of `make bench` scenario (g): an HTTP context per request
//! whose callbacks all keep the SDK's defaults (`Action::Continue`), so what it costs Envoy is
//! what the Wasm layer costs a filter built on the SDK.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Noop) });
}}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
