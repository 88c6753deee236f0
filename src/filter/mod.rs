//! The proxy-wasm glue, on the SDK (`proxy-wasm` 0.2.5): one root context per plugin config
//! ([`root`]), one HTTP context per request ([`http`]), and the request as the decision reads it
//! ([`host`]). Nothing here decides: the decision is [`crate::decide`] over [`crate::config`]'s
//! plan, which are pure and tested on the host.

mod answers;
mod ffi;
mod guards;
#[cfg(feature = "heap-stats")]
mod heap;
mod host;
mod http;
mod root;
mod shadows;
mod vm;

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

/// Registers graysplit's root context with the SDK (called once, from `_initialize`).
pub(crate) fn start() {
    // Host calls are not allowed yet in `_initialize`: the level is read in `on_vm_start`.
    proxy_wasm::set_log_level(LogLevel::Info);
    // The VM's state, made once and handed to every root context (STYLE.md 16).
    proxy_wasm::set_root_context(|id| Box::new(root::Root::new(id, vm::shared())));
}

/// Filters `log` records at Envoy's level for the `wasm` component, so per-request debug lines
/// cost nothing unless someone asked for them. Read when a VM starts and at each config push, not
/// per request (that would be a host call more on every request).
fn refresh_log_level() {
    proxy_wasm::set_log_level(hostcalls::get_log_level().unwrap_or(LogLevel::Info));
}
