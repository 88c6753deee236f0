//! A request held in memory: the unit tests' fake [`Host`], and what the operator CLI explains.

use super::claims::Claims;
use super::{HeaderPairs, Host};
use crate::config::WatchId;

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
    /// The guarded versions whose guard has tripped (`Plan::watches` indices).
    pub tripped: Vec<WatchId>,
    /// The claims a `jwt_authn` verified (None: no token).
    pub claims: Option<Claims>,
    /// A JSON body held in full (None: no body, not JSON, or too long).
    pub body: Option<Vec<u8>>,
    /// The body is still to come (the decision at the headers of a request that may be held).
    pub body_pending: bool,
}

impl StaticRequest {
    /// A `GET path` request with the given headers.
    pub fn get(path: &str, headers: &[(&str, &str)]) -> Self {
        let mut all =
            vec![(":method".to_string(), b"GET".to_vec()), (":path".to_string(), path.as_bytes().to_vec())];
        all.extend(headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())));
        StaticRequest {
            headers: all,
            source: Some("127.0.0.1:40000".to_string()),
            now: 0,
            random_byte: 0xab,
            tripped: Vec::new(),
            claims: None,
            body: None,
            body_pending: false,
        }
    }
}

impl Host for StaticRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
    fn header_map(&self) -> HeaderPairs {
        HeaderPairs::parse(HeaderPairs::serialize(self.headers.iter().map(|(k, v)| (k.as_bytes(), &v[..]))))
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
    fn tripped(&self, watch: WatchId) -> bool {
        self.tripped.contains(&watch)
    }
    fn claims(&self, _metadata_key: &str) -> Option<Claims> {
        self.claims.clone()
    }
    fn body(&self) -> Option<Vec<u8>> {
        self.body.clone()
    }
    fn body_pending(&self) -> bool {
        self.body_pending
    }
}
