//! How the decision reads a request: a small [`Host`] trait (the glue implements it over
//! proxy-wasm; unit tests use a map-backed fake) and [`Facts`], which fetches each thing the
//! plan needs at most once per request and only when a rule actually asks for it.

pub mod claims;
pub mod cookie;
pub mod fake;
pub mod pairs;
pub mod query;

use std::borrow::Cow;
use std::net::IpAddr;

use crate::body::prompt::{self, Prompt};
use crate::body::Field;
use crate::config::{HeaderSlot, Plan, WatchId};
use crate::matcher::cidr::parse_socket_ip;
use claims::{Claim, Claims};
pub use pairs::HeaderPairs;

/// A body fact asked for while the body is still to come: the decision must wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending;

/// What the decision needs from the proxy. Everything returns owned bytes because that is
/// what the proxy-wasm host hands over (values as bytes: never a `String` a client could make
/// invalid UTF-8); nothing here may panic.
pub trait Host {
    /// The first value of request header `name` (lower-case; pseudo-headers such as `:path`
    /// included), `None` when absent.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// The whole request header map, in order, names lower-case (HTTP/1.1 may repeat
    /// `cookie`). One host call and one copy of the map.
    fn header_map(&self) -> HeaderPairs;
    /// Envoy's downstream remote address, property `source.address` (`ip:port`).
    fn source_address(&self) -> Option<Vec<u8>>;
    /// The current time, Unix nanoseconds.
    fn now_unix_nanos(&self) -> i64;
    /// Fills `buf` with random bytes (for minted sticky-cookie ids).
    fn fill_random(&self, buf: &mut [u8]);
    /// Whether the guard has tripped for the version `watch` names (DESIGN.md "Guards"): the
    /// proxy's shared view, kept by the glue. Never, without guards.
    fn tripped(&self, _watch: WatchId) -> bool {
        false
    }
    /// The claims `jwt_authn` verified, from dynamic metadata under `metadata_key`; `None`
    /// when there are none (no token, a bad one, no `jwt_authn`). Never from a header.
    fn claims(&self, _metadata_key: &str) -> Option<Claims> {
        None
    }
    /// The request body, when it is a JSON body the glue held in full within `body.max_bytes`;
    /// `None` otherwise (then every body fact is absent).
    fn body(&self) -> Option<Vec<u8>> {
        None
    }
    /// Whether a JSON body the plan may read is still to come (the glue can hold the request
    /// for it): then a body fact is [`Pending`] instead of absent.
    fn body_pending(&self) -> bool {
        false
    }
}

/// Lazily fetched, cached request facts for one decision.
pub struct Facts<'a, H: Host> {
    pub(crate) plan: &'a Plan,
    pub(crate) host: &'a H,
    /// Headers read one by one, per slot (a plan that reads them so has at most
    /// [`crate::config::PER_HEADER_SLOTS`]: no allocation for the cache itself).
    headers: [Option<Option<Vec<u8>>>; crate::config::PER_HEADER_SLOTS],
    /// The whole header map: read at once when the plan reads many headers (one host call
    /// instead of many, see `Plan::read_whole_map`), or when a cookie is not in the first
    /// `cookie` header.
    map: Option<HeaderMap>,
    source: Option<Option<IpAddr>>,
    now: Option<i64>,
    claims: Option<Option<Claims>>,
    /// What the decision reads of the JSON body, once it is read (`None`: not yet).
    body: Option<BodyFacts>,
}

/// The body's facts, all read from one copy of it (which is not kept).
struct BodyFacts {
    /// The fields the plan's pointers name, by pointer index (`None`: no body to read, or no
    /// pointers).
    fields: Option<Vec<Option<Field>>>,
    /// Its prompt, with a plan that has prompt matchers.
    prompt: Option<Prompt>,
}

impl<'a, H: Host> Facts<'a, H> {
    pub fn new(plan: &'a Plan, host: &'a H) -> Self {
        Facts {
            plan,
            host,
            headers: Default::default(),
            map: None,
            source: None,
            now: None,
            claims: None,
            body: None,
        }
    }

    /// The first value of the header in `slot`.
    pub fn header(&mut self, slot: HeaderSlot) -> Option<&[u8]> {
        let Facts { plan, host, headers, map, .. } = self;
        if plan.read_whole_map {
            map.get_or_insert_with(|| HeaderMap::new(plan, host.header_map())).first(slot)
        } else {
            one_header(headers, plan, *host, slot)
        }
    }

    /// The value of cookie `name` across every `cookie` header. The first occurrence wins, so
    /// when the first header has the name (or there is no cookie header at all) the others
    /// need not be read.
    pub fn cookie(&mut self, name: &[u8]) -> Option<&[u8]> {
        let Facts { plan, host, headers, map, .. } = self;
        let skip = if plan.read_whole_map {
            0
        } else {
            let first = one_header(headers, plan, *host, plan.cookie_slot?)?;
            if let Some(v) = cookie::find([first], name) {
                return Some(v);
            }
            1
        };
        let map = map.get_or_insert_with(|| HeaderMap::new(plan, host.header_map()));
        cookie::find(map.values(b"cookie").skip(skip), name)
    }

    /// Every value of the header in `slot`, in order, from the whole header map (the host gives
    /// only the first value of a header by name, and a client may send a list header,
    /// `baggage`, several times). Unless `likely`, the first value is read first: when there is
    /// none, that one cheap host call is all.
    pub fn header_values(&mut self, slot: HeaderSlot, likely: bool) -> Vec<&[u8]> {
        if !likely && !self.plan.read_whole_map && self.header(slot).is_none() {
            return Vec::new();
        }
        let Facts { plan, host, map, .. } = self;
        let Some(name) = plan.headers.get(slot) else { return Vec::new() };
        let map = map.get_or_insert_with(|| HeaderMap::new(plan, host.header_map()));
        map.values(name.as_bytes()).collect()
    }

    /// Every cookie of every `cookie` header, in order (reads the whole header map; for the
    /// rare request that needs them all).
    pub fn cookies(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Facts { plan, host, map, .. } = self;
        let map = map.get_or_insert_with(|| HeaderMap::new(plan, host.header_map()));
        cookie::all(map.values(b"cookie")).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
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

    /// [`Facts::now`] in whole Unix seconds (0 before the epoch).
    pub fn now_s(&mut self) -> u64 {
        u64::try_from(self.now() / 1_000_000_000).unwrap_or(0)
    }

    /// Verified claim `name`, the claims read on first need (each decoded when asked for).
    pub fn claim(&mut self, name: &str) -> Option<Claim> {
        let (plan, host) = (self.plan, self.host);
        let claims = self.claims.get_or_insert_with(|| host.claims(plan.claims_key.as_deref()?));
        claims.as_ref()?.get(name)
    }

    /// The field of the JSON body at `pointer`; every pointer's field is read on first need, in
    /// one pass over the body. [`Pending`] while the body is still to come.
    pub fn body_field(&mut self, pointer: &str) -> Result<Option<&Field>, Pending> {
        let plan = self.plan;
        let fields = self.body_facts()?.fields.as_ref();
        Ok(fields.and_then(|f| f.get(plan.body_fields.index(pointer)?)).and_then(Option::as_ref))
    }

    /// The prompt of the JSON body (DESIGN.md "Prompt matchers"). [`Pending`] while the body is
    /// still to come.
    pub fn prompt(&mut self) -> Result<Option<&mut Prompt>, Pending> {
        Ok(self.body_facts()?.prompt.as_mut())
    }

    /// The body's facts: on first need, one copy of the body from the host, read once for the
    /// pointers' fields and once for the prompt (each only when the plan has some), then dropped.
    fn body_facts(&mut self) -> Result<&mut BodyFacts, Pending> {
        let (plan, host) = (self.plan, self.host);
        if self.body.is_none() && host.body_pending() {
            return Err(Pending);
        }
        Ok(self.body.get_or_insert_with(|| {
            let raw = host.body();
            let raw = raw.as_deref();
            BodyFacts {
                fields: raw
                    .filter(|_| !plan.body_fields.is_empty())
                    .and_then(|b| plan.body_fields.extract(b)),
                prompt: raw.filter(|_| plan.reads_prompt).and_then(prompt::extract).map(Prompt::new),
            }
        }))
    }
}

/// The first value of the header in `slot`, read with its own host call and kept in `cache`.
fn one_header<'c, H: Host>(
    cache: &'c mut [Option<Option<Vec<u8>>>],
    plan: &Plan,
    host: &H,
    slot: HeaderSlot,
) -> Option<&'c [u8]> {
    let cached = cache.get_mut(slot)?;
    if cached.is_none() {
        *cached = Some(host.header(plan.headers.get(slot)?));
    }
    cached.as_ref().and_then(|v| v.as_deref())
}

/// The whole header map, indexed once for the plan's headers: a header rule finds its value
/// without a search.
struct HeaderMap {
    pairs: HeaderPairs,
    /// Per plan slot, the index in `pairs` of its first value.
    first: Vec<Option<usize>>,
}

impl HeaderMap {
    fn new(plan: &Plan, pairs: HeaderPairs) -> Self {
        let mut first = vec![None; plan.headers.len()];
        for (i, (name, _)) in pairs.iter().enumerate() {
            if let Some(slot) = plan.headers.iter().position(|h| h.as_bytes() == name) {
                if let Some(f @ None) = first.get_mut(slot) {
                    *f = Some(i);
                }
            }
        }
        HeaderMap { pairs, first }
    }

    fn first(&self, slot: HeaderSlot) -> Option<&[u8]> {
        let i = (*self.first.get(slot)?)?;
        self.pairs.get(i).map(|(_, v)| v)
    }

    /// Every value of header `name`, in order.
    fn values<'m>(&'m self, name: &'m [u8]) -> impl Iterator<Item = &'m [u8]> + 'm {
        self.pairs.iter().filter(move |(k, _)| *k == name).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::cell::Cell;

    use super::*;
    use crate::config::parse;
    use crate::request::fake::StaticRequest;

    /// Counts how often the whole header map is read.
    struct Counting {
        inner: StaticRequest,
        full_reads: Cell<usize>,
        single_reads: Cell<usize>,
    }

    impl Host for Counting {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.single_reads.set(self.single_reads.get() + 1);
            self.inner.header(name)
        }
        fn header_map(&self) -> HeaderPairs {
            self.full_reads.set(self.full_reads.get() + 1);
            self.inner.header_map()
        }
        fn source_address(&self) -> Option<Vec<u8>> {
            self.inner.source_address()
        }
        fn now_unix_nanos(&self) -> i64 {
            0
        }
        fn fill_random(&self, buf: &mut [u8]) {
            buf.fill(0);
        }
    }

    #[test]
    fn later_cookie_headers_are_read_only_when_the_first_lacks_the_name() {
        // A plan that reads cookies and few headers (one by one), and one that reads enough
        // headers to take the whole map at once.
        let few = parse(
            br#"{"stable": "v1", "rules": [{"name": "c", "when": {"cookies": [{"name": "x", "present": true}]}, "version": "v2"}]}"#,
        )
        .unwrap();
        let many = parse(
            br#"{"stable": "v1", "rules": [{"name": "c", "when": {"cookies": [{"name": "x", "present": true}],
                "headers": [{"name": "h1", "present": true}, {"name": "h2", "present": true},
                            {"name": "h3", "present": true}, {"name": "h4", "present": true}]}, "version": "v2"}]}"#,
        )
        .unwrap();
        assert!(!few.read_whole_map && many.read_whole_map);
        // (cookie headers, name, value, whole-map reads with `few`)
        let cases: &[(&[&str], &str, Option<&str>, usize)] = &[
            (&[], "uid", None, 0),
            (&[""], "uid", None, 1),
            (&["uid=a; x=1"], "uid", Some("a"), 0),
            (&["x=1; uid=a"], "uid", Some("a"), 0),
            (&["x=1"], "uid", None, 1),
            (&["x=1", "uid=b"], "uid", Some("b"), 1),
            (&["uid=a", "uid=b"], "uid", Some("a"), 0),
            (&["x=1", "y=2"], "uid", None, 1),
            (&["x=1", "y=2", "uid=c; uid=d"], "uid", Some("c"), 1),
            (&["", "uid=e"], "uid", Some("e"), 1),
        ];
        for (plan, whole) in [(&few, false), (&many, true)] {
            for (headers, name, want, full_reads) in cases {
                let mut pairs: Vec<(&str, &str)> = vec![("h1", "1"), ("h2", "2")];
                pairs.extend(headers.iter().map(|h| ("cookie", *h)));
                pairs.push(("h3", "3"));
                let host = Counting {
                    inner: StaticRequest::get("/", &pairs),
                    full_reads: Cell::new(0),
                    single_reads: Cell::new(0),
                };
                let mut facts = Facts::new(plan, &host);
                let why = format!("{headers:?}, whole map {whole}");
                assert_eq!(facts.cookie(name.as_bytes()), want.map(str::as_bytes), "{why}");
                assert_eq!(facts.cookie(name.as_bytes()), want.map(str::as_bytes), "cached: {why}");
                let full_reads = if whole { 1 } else { *full_reads };
                assert_eq!(host.full_reads.get(), full_reads, "full header map reads for {why}");
            }
        }
    }

    #[test]
    fn every_value_of_a_list_header_is_read_and_none_costs_one_call() {
        let plan = parse(
            br#"{"stable": "v1", "lane": {"mode": "follow", "key": "a secret of at least 32 characters, shared"}}"#,
        )
        .unwrap();
        let slot = plan.lane.as_ref().unwrap().slot;
        let cases: &[(&[&str], usize)] = &[(&[], 0), (&["a=1"], 1), (&["a=1", "b=2,c=3"], 1)];
        for (values, full_reads) in cases {
            let mut pairs: Vec<(&str, &str)> = vec![("h1", "1")];
            pairs.extend(values.iter().map(|v| ("baggage", *v)));
            let host = Counting {
                inner: StaticRequest::get("/", &pairs),
                full_reads: Cell::new(0),
                single_reads: Cell::new(0),
            };
            let mut facts = Facts::new(&plan, &host);
            let got: Vec<&[u8]> = facts.header_values(slot, false);
            let want: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            assert_eq!(got, want);
            assert_eq!((host.single_reads.get(), host.full_reads.get()), (1, *full_reads), "{values:?}");
            // Likely there: the whole map at once, no single read first.
            let mut facts = Facts::new(&plan, &host);
            assert_eq!(facts.header_values(slot, true), want);
            assert_eq!((host.single_reads.get(), host.full_reads.get()), (1, *full_reads + 1), "{values:?}");
        }
    }

    #[test]
    fn a_plan_reading_many_headers_reads_the_map_once() {
        let many = parse(
            br#"{"stable": "v1", "identity": {"from": [{"header": "x-user-id"}]}, "rules": [
            {"name": "a", "when": {"headers": [{"name": "x-a", "present": true}]}, "version": "v2"},
            {"name": "b", "when": {"headers": [{"name": "x-b", "present": true}]}, "version": "v2"},
            {"name": "c", "when": {"cookies": [{"name": "c", "present": true}]}, "version": "v2"},
            {"name": "d", "when": {"path_prefix": "/d"}, "version": "v2"},
            {"name": "r", "split": [{"version": "v2", "percent": 50}]}]}"#,
        )
        .unwrap();
        let few = parse(
            br#"{"stable": "v1", "identity": {"from": [{"header": "x-user-id"}]},
            "rules": [{"name": "r", "split": [{"version": "v2", "percent": 50}]}]}"#,
        )
        .unwrap();
        let request =
            || StaticRequest::get("/x", &[("x-user-id", "u1"), ("cookie", "a=1"), ("cookie", "c=2")]);
        for (plan, full, single, why) in [(&many, 1, 0, "many headers"), (&few, 0, 1, "one header")] {
            let host = Counting { inner: request(), full_reads: Cell::new(0), single_reads: Cell::new(0) };
            let d = crate::decide::decide(plan, &host);
            assert_eq!(d.rule_name(plan), if full == 1 { "c" } else { "r" }, "{why}: decided by");
            assert_eq!((host.full_reads.get(), host.single_reads.get()), (full, single), "{why}: reads");
        }
    }
}
