//! The request as the proxy-wasm host shows it, for the decision ([`crate::request::Host`]).
//! Values are read with the SDK's `_bytes` calls: its `String` getters unwrap `from_utf8` and
//! would panic on a non-UTF-8 header value (DESIGN.md "Real components").

use std::cell::Cell;
use std::hash::Hasher;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::ffi::header_pairs;
use super::root::{now_ns, Active};
use crate::config::WatchId;
use crate::request::claims::Claims;
use crate::request::{HeaderPairs, Host};

/// The filter name under which Envoy's jwt_authn keeps what it verified.
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

/// The request being decided, under the plan `active` holds.
pub(super) struct WasmHost<'a> {
    pub active: &'a Active,
    /// The size of the whole JSON body Envoy holds for the decision, if it holds one.
    pub body: Option<usize>,
    /// At the headers of a request that may be held: its JSON body is still to come.
    pub body_pending: bool,
    /// The VM's count of ids minted without a random source.
    pub minted: &'a Cell<u64>,
}

impl Host for WasmHost<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn header_map(&self) -> HeaderPairs {
        header_pairs(MapType::HttpRequestHeaders)
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        super::ffi::get_property(b"source\0address").ok().flatten()
    }

    fn now_unix_nanos(&self) -> i64 {
        now_ns()
    }

    fn tripped(&self, watch: WatchId) -> bool {
        self.active.tripped(watch)
    }

    fn claims(&self, metadata_key: &str) -> Option<Claims> {
        // The whole dynamic metadata, a serialized envoy.config.core.v3.Metadata: the one
        // reading that keeps each claim's type (a path below it comes back in the untyped
        // pairs format, and fails outright on a null claim). No token: no metadata.
        let bytes = super::ffi::get_property(b"metadata").ok().flatten()?;
        Claims::from_metadata(&bytes, JWT_AUTHN, metadata_key)
    }

    fn body(&self) -> Option<Vec<u8>> {
        let size = self.body?;
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()
    }

    fn body_pending(&self) -> bool {
        self.body_pending
    }

    fn fill_random(&self, buf: &mut [u8]) {
        if getrandom::fill(buf).is_ok() {
            return;
        }
        // No random source (a host that refuses WASI random_get; Envoy has one): distinct ids
        // from a hash of a per-VM counter and the clock. Not std's RandomState, whose keys come
        // from the same random_get and which panics without it. Such ids are guessable, which
        // a sticky id may be (it only picks a bucket); nothing secret is derived from them.
        let n = self.minted.get().wrapping_add(1);
        self.minted.set(n);
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
