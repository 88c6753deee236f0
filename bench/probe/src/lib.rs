//! The six exports a filter like graysplit needs (proxy-wasm ABI 0.2.1, bound by hand: a
//! measuring instrument, not graysplit, which is on the SDK), and in `proxy_on_request_headers`
//! the host calls the cargo features select. Without features it does nothing: `make bench`
//! scenario (f), the least the Wasm layer costs. `make bench-probe` builds it once per feature: each probe minus
//! the no-op is what that call costs Envoy per request.
#![allow(clippy::missing_safety_doc)]

use std::ptr::null_mut;

extern "C" {
    fn proxy_get_header_map_value(map: u32, key: *const u8, key_size: usize, ret: *mut *mut u8, ret_size: *mut usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, ret: *mut *mut u8, ret_size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, ret: *mut *mut u8, ret_size: *mut usize) -> u32;
    fn proxy_set_property(path: *const u8, path_size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, ret: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let ptr = v.as_mut_ptr();
    std::mem::forget(v);
    ptr
}

/// Frees what the host returned (allocated above), as graysplit does.
unsafe fn take(ptr: *mut u8, len: usize) -> usize {
    if ptr.is_null() {
        return 0;
    }
    Vec::from_raw_parts(ptr, len, len).len()
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

static mut COUNTER: u32 = 0;

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root_context_id: u32, _plugin_configuration_size: usize) -> u32 {
    if cfg!(feature = "increment_counter") {
        let name = "graysplit_probe_total";
        unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), std::ptr::addr_of_mut!(COUNTER)) };
    }
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    let mut n = 0;
    let (mut ptr, mut len) = (null_mut(), 0);
    unsafe {
        if cfg!(feature = "read_header") {
            proxy_get_header_map_value(0, b"x-user-id".as_ptr(), 9, &mut ptr, &mut len);
            n += take(ptr, len);
        }
        if cfg!(feature = "read_absent_header") {
            proxy_get_header_map_value(0, b"x-absent".as_ptr(), 8, &mut ptr, &mut len);
            n += take(ptr, len);
        }
        if cfg!(feature = "read_header_map") {
            proxy_get_header_map_pairs(0, &mut ptr, &mut len);
            n += take(ptr, len);
        }
        if cfg!(feature = "read_source_address") {
            proxy_get_property(b"source\0address".as_ptr(), 14, &mut ptr, &mut len);
            n += take(ptr, len);
        }
        if cfg!(feature = "read_clock") {
            let mut t = 0;
            proxy_get_current_time_nanoseconds(&mut t);
            n += t as usize & 1;
        }
        if cfg!(feature = "set_route_header") {
            let (name, value) = ("x-graysplit-version", "v1");
            proxy_replace_header_map_value(0, name.as_ptr(), name.len(), value.as_ptr(), value.len());
        }
        if cfg!(feature = "set_property") {
            let (name, value) = ("graysplit_rule", "ramp");
            proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
        }
        if cfg!(feature = "increment_counter") {
            proxy_increment_metric(COUNTER, 1);
        }
    }
    std::hint::black_box(n);
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}
