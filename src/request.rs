//! How the decision reads a request: a small [`Host`] trait (the glue implements it over
//! proxy-wasm; unit tests use a map-backed fake) and [`Facts`], which fetches each thing the
//! plan needs at most once per request and only when a rule actually asks for it.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::cidr::parse_socket_ip;
use crate::config::{HeaderSlot, Plan};
use crate::{cookie, query};

/// What the decision needs from the proxy. Everything returns owned bytes because that is
/// what the proxy-wasm host hands over; nothing here may panic.
pub trait Host {
    /// The first value of request header `name` (lower-case; pseudo-headers such as `:path`
    /// included), `None` when absent.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every value of request header `name`, in order (HTTP/1.1 may repeat `cookie`).
    fn header_values(&self, name: &str) -> Vec<Vec<u8>>;
    /// Envoy's downstream remote address, property `source.address` (`ip:port`).
    fn source_address(&self) -> Option<Vec<u8>>;
    /// The current time, Unix nanoseconds.
    fn now_unix_nanos(&self) -> i64;
    /// Fills `buf` with random bytes (for minted sticky-cookie ids).
    fn fill_random(&self, buf: &mut [u8]);
}

/// Lazily fetched, cached request facts for one decision.
pub struct Facts<'a, H: Host> {
    pub(crate) plan: &'a Plan,
    pub(crate) host: &'a H,
    headers: Vec<Option<Option<Vec<u8>>>>,
    cookies: Option<Vec<Vec<u8>>>,
    source: Option<Option<IpAddr>>,
    now: Option<i64>,
}

impl<'a, H: Host> Facts<'a, H> {
    pub fn new(plan: &'a Plan, host: &'a H) -> Self {
        Facts { plan, host, headers: vec![None; plan.headers.len()], cookies: None, source: None, now: None }
    }

    /// The first value of the header in `slot`.
    pub fn header(&mut self, slot: HeaderSlot) -> Option<&[u8]> {
        let cached = self.headers.get_mut(slot)?;
        if cached.is_none() {
            let name = self.plan.headers.get(slot)?;
            *cached = Some(self.host.header(name));
        }
        cached.as_ref().and_then(|v| v.as_deref())
    }

    /// The value of cookie `name` across every `cookie` header.
    pub fn cookie(&mut self, name: &[u8]) -> Option<&[u8]> {
        let host = self.host;
        let all = self.cookies.get_or_insert_with(|| host.header_values("cookie"));
        cookie::find(all.iter().map(Vec::as_slice), name)
    }

    /// `:path` before `?`, as received.
    pub fn path(&mut self) -> &[u8] {
        let slot = self.plan.path_slot;
        query::split_path(self.header(slot).unwrap_or_default()).0
    }

    /// The decoded value of query parameter `name`.
    pub fn query(&mut self, name: &[u8]) -> Option<Cow<'_, [u8]>> {
        let slot = self.plan.path_slot;
        let (_, q) = query::split_path(self.header(slot).unwrap_or_default());
        query::find(q, name)
    }

    /// `:method`.
    pub fn method(&mut self) -> Option<&[u8]> {
        let slot = self.plan.method_slot;
        self.header(slot)
    }

    /// The downstream remote address; `None` when unknown or unparsable.
    pub fn source(&mut self) -> Option<IpAddr> {
        let host = self.host;
        *self.source.get_or_insert_with(|| host.source_address().as_deref().and_then(parse_socket_ip))
    }

    /// The current time, read once per request.
    pub fn now(&mut self) -> i64 {
        let host = self.host;
        *self.now.get_or_insert_with(|| host.now_unix_nanos())
    }
}

/// A request held in memory: the unit tests' fake, and what the operator CLI explains.
#[derive(Debug, Clone, Default)]
pub struct StaticRequest {
    /// Header (name, value) pairs in order, names lower-case; `:path`, `:method` included.
    pub headers: Vec<(String, Vec<u8>)>,
    /// `source.address` as Envoy gives it, e.g. `127.0.0.1:5000`.
    pub source: Option<String>,
    /// Unix nanoseconds.
    pub now: i64,
    /// The byte every "random" byte is set to (deterministic minted ids in tests).
    pub random_byte: u8,
}

impl StaticRequest {
    /// A `GET path` request with the given headers.
    pub fn get(path: &str, headers: &[(&str, &str)]) -> Self {
        let mut all =
            vec![(":method".to_string(), b"GET".to_vec()), (":path".to_string(), path.as_bytes().to_vec())];
        all.extend(headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())));
        StaticRequest { headers: all, source: Some("127.0.0.1:40000".to_string()), now: 0, random_byte: 0xab }
    }
}

impl Host for StaticRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
    fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }
    fn source_address(&self) -> Option<Vec<u8>> {
        self.source.as_ref().map(|s| s.as_bytes().to_vec())
    }
    fn now_unix_nanos(&self) -> i64 {
        self.now
    }
    fn fill_random(&self, buf: &mut [u8]) {
        buf.fill(self.random_byte);
    }
}
