//! The two host calls graysplit makes past the SDK:
//! - the whole header map as the host's pairs buffer, read with [`HeaderPairs`] (bytes for names
//!   and values). proxy-wasm 0.2.5's `get_map_bytes` decodes each name with
//!   `String::from_utf8(..).unwrap()` and so traps the VM on a header name that is not UTF-8
//!   (DESIGN.md "v2 corrections"), and copies every header into a `String` and a `Vec` of its own;
//! - properties by a path written once: the SDK's `get_property` and `set_property` build a
//!   `Vec` for the path and another for its serialized form on every call, and panic (trap) on a
//!   status they do not expect.
#![allow(unsafe_code)]

use std::ptr::null_mut;

use proxy_wasm::types::MapType;

use crate::request::HeaderPairs;

#[link(wasm_import_module = "env")]
extern "C" {
    // The ABI's `proxy_get_header_map_pairs` (proxy-wasm ABI 0.2.1), as the SDK declares it;
    // the status as a plain integer (0 is Ok).
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_done() -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// Sets property `path` (its parts NUL-separated, as the ABI takes it) to `value`; false when
/// the host refused.
pub(super) fn set_property(path: &[u8], value: &[u8]) -> bool {
    // SAFETY: both slices are valid for their lengths for the duration of the call; the host
    // copies what it keeps.
    unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) == 0 }
}

/// The header map `map` of the current HTTP context; empty when the host has none to give.
pub(super) fn header_pairs(map: MapType) -> HeaderPairs {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes the address and size of a buffer it allocated with the module's
    // `proxy_on_memory_allocate` (the SDK's, a boxed `[u8]` of exactly `size` bytes), which is
    // ours to own and free: the SDK's own readers take it back the same way.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    if status != 0 || data.is_null() {
        return HeaderPairs::default();
    }
    // SAFETY: see above; `size` bytes at `data`, capacity `size`.
    let buf = unsafe { Vec::from_raw_parts(data, size, size) };
    HeaderPairs::parse(buf)
}

/// The ABI's NotFound status.
const NOT_FOUND: u32 = 1;

/// Property `path` (parts NUL-separated, written once): `Ok(None)` when the host has no such
/// property, `Err` with the host's status when it failed the read.
pub(super) fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, u32> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as for `header_pairs`: the host hands over a buffer it allocated with the module's
    // allocator, ours to own.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match status {
        0 if data.is_null() => Ok(Some(Vec::new())),
        // SAFETY: see above; `size` bytes at `data`, capacity `size`.
        0 => Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) })),
        NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

/// Tells the host that the current root context, which answered `on_done` with false, is done
/// now; false when the host did not expect it.
pub(super) fn done() -> bool {
    // SAFETY: no arguments; the host only looks up the current context.
    unsafe { proxy_done() == 0 }
}
