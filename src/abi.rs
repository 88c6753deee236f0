//! The proxy-wasm ABI 0.2.1, by hand: the host functions graysplit calls, safe wrappers over
//! them, and the memory export the host allocates return values with.
//!
//! Why not the proxy-wasm SDK crate: it exports every callback of the ABI, and Envoy calls each
//! exported one on every request (`proxy_on_log`, `proxy_on_done`, ... about 1.5k instructions
//! each), and its dispatcher boxes a context per request. With only the callbacks graysplit
//! needs, the Wasm layer costs Envoy 200k instead of 208k instructions per request (native
//! routing: 189k; `make bench` (f) and (g)), and the module is 71 KB smaller (README "Size").
//!
//! Semantics follow the SDK's `hostcalls.rs` (proxy-wasm 0.2.5) and Envoy's host
//! (proxy-wasm-cpp-host `exports.cc`): a value the host returns lives in memory it got from
//! [`proxy_on_memory_allocate`], and becomes ours.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::ptr::null_mut;

/// proxy-wasm `MapType`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
}

/// proxy-wasm `Status::Ok`; everything else is a failure the callers treat as "absent".
const OK: u32 = 0;
/// proxy-wasm `BufferType::PluginConfiguration`.
const PLUGIN_CONFIGURATION: u32 = 7;
/// proxy-wasm `MetricType::Counter`.
const COUNTER: u32 = 0;

mod host {
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_log_level(return_level: *mut u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        /// WASI `random_get`, which Envoy's proxy-wasm host implements.
        pub fn random_get(buf: *mut u8, len: usize) -> u32;
    }
}

/// The host allocates every value it returns with this export (as the SDK's allocator does);
/// [`take`] turns it back into a `Vec`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: MaybeUninit needs no initialisation; the host writes the bytes before we read them.
    unsafe { v.set_len(size) };
    Box::into_raw(v.into_boxed_slice()).cast::<u8>()
}

/// What a host call returns through its (data, size) out-parameters, now ours. `None` when the
/// host said it has nothing (`NotFound` and other failures); an empty value for Ok with a null
/// pointer, which is how the host returns an empty value without allocating (cpp-host
/// `copyToPointerSize`; the SDK reads it the same way).
///
/// SAFETY: `call` hands both pointers to a host function that, on Ok, leaves null or memory it
/// got from [`proxy_on_memory_allocate`]`(size)` in them, and nothing else keeps that memory.
unsafe fn returned(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    if call(&mut data, &mut size) != OK {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: a boxed slice of exactly `size` bytes, taken once (the caller's contract).
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Writes a log line at proxy-wasm `level` (0 trace .. 5 critical).
pub fn log(level: u32, message: &str) {
    // SAFETY: the host reads `message` during the call only.
    unsafe { host::proxy_log(level, message.as_ptr(), message.len()) };
}

/// Envoy's log level for the `wasm` component (proxy-wasm levels, 0 trace .. 5 critical).
pub fn log_level() -> Option<u32> {
    let mut level = 0;
    // SAFETY: the host writes one u32 to a local.
    (unsafe { host::proxy_get_log_level(&mut level) } == OK).then_some(level)
}

/// The host's clock, Unix nanoseconds.
pub fn now_unix_nanos() -> Option<u64> {
    let mut t = 0;
    // SAFETY: the host writes one u64 to a local.
    (unsafe { host::proxy_get_current_time_nanoseconds(&mut t) } == OK).then_some(t)
}

/// The plugin configuration, `size` bytes as announced by `proxy_on_configure`.
pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
    // SAFETY: the host allocates what it returns with `proxy_on_memory_allocate`.
    unsafe { returned(|data, len| host::proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, data, len)) }
}

/// The first value of header `name`, `None` when absent.
pub fn header(map: Map, name: &str) -> Option<Vec<u8>> {
    // SAFETY: as in `plugin_configuration`; `name` is read during the call only.
    unsafe {
        returned(|data, len| {
            host::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, len)
        })
    }
}

/// The whole header map in the ABI's serialized form (see `request::header_pairs`).
pub fn header_pairs(map: Map) -> Option<Vec<u8>> {
    // SAFETY: as in `plugin_configuration`.
    unsafe { returned(|data, len| host::proxy_get_header_map_pairs(map as u32, data, len)) }
}

// The writes below ignore the host's status, as the SDK's callers did: a request has nothing to
// fall back to when Envoy refuses a header or property write (a stream already closed).

/// Sets header `name` to `value`, replacing every value it had.
pub fn replace_header(map: Map, name: &str, value: &[u8]) {
    // SAFETY: the host reads both slices during the call only.
    unsafe {
        host::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
}

/// Removes every value of header `name`.
pub fn remove_header(map: Map, name: &str) {
    // SAFETY: the host reads `name` during the call only.
    unsafe { host::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
}

/// Adds a value of header `name`, keeping the ones it had (`set-cookie`).
pub fn add_header(map: Map, name: &str, value: &[u8]) {
    // SAFETY: the host reads both slices during the call only.
    unsafe {
        host::proxy_add_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    };
}

/// A property; `path` is the ABI's form, parts joined by NUL (`b"source\0address"`).
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: as in `plugin_configuration`; `path` is read during the call only.
    unsafe { returned(|data, len| host::proxy_get_property(path.as_ptr(), path.len(), data, len)) }
}

/// Sets a property (Envoy stores it as filter state `wasm.<path>`).
pub fn set_property(path: &[u8], value: &[u8]) {
    // SAFETY: the host reads both slices during the call only.
    unsafe { host::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) };
}

/// Defines a counter and returns the host's id for it; `Err(status)` when refused.
pub fn define_counter(name: &str) -> Result<u32, u32> {
    let mut id = 0;
    // SAFETY: the host reads `name` and writes one u32 to a local.
    match unsafe { host::proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) } {
        OK => Ok(id),
        status => Err(status),
    }
}

/// Adds `n` to counter `id`.
pub fn increment(id: u32, n: i64) {
    // SAFETY: plain values.
    unsafe { host::proxy_increment_metric(id, n) };
}

/// Fills `buf` from WASI `random_get`; false when the host has no random source.
pub fn random(buf: &mut [u8]) -> bool {
    // SAFETY: the host writes exactly `buf.len()` bytes into the buffer we own.
    unsafe { host::random_get(buf.as_mut_ptr(), buf.len()) == 0 }
}

extern "C" {
    /// The module's static constructors (wasi-libc), as the SDK's `_initialize` runs them.
    fn __wasm_call_ctors();
}

/// WASI reactor entry point: Envoy calls it once, before any other export.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: called once by the host before anything else, as wasi-libc expects.
    unsafe { __wasm_call_ctors() };
}

/// The ABI version this module speaks; Envoy looks for this export by name.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}
