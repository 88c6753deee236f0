//! How the decision reads a request: a small [`Host`] trait (the glue implements it over
//! proxy-wasm; unit tests use a map-backed fake) and [`Facts`], which fetches each thing the
//! plan needs at most once per request and only when a rule actually asks for it.

use std::borrow::Cow;
use std::net::IpAddr;
use std::ops::Range;

use crate::cidr::parse_socket_ip;
use crate::config::{HeaderSlot, Plan};
use crate::{cookie, query};

/// What the decision needs from the proxy. Everything returns owned bytes because that is
/// what the proxy-wasm host hands over; nothing here may panic.
pub trait Host {
    /// The first value of request header `name` (lower-case; pseudo-headers such as `:path`
    /// included), `None` when absent.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// The whole request header map in the proxy-wasm ABI's serialized form (read it with
    /// [`header_pairs`]), in order, names lower-case (HTTP/1.1 may repeat `cookie`). One host
    /// call, but it copies every header.
    fn header_map(&self) -> Vec<u8>;
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
    /// Headers read one by one, per slot.
    headers: Vec<Option<Option<Vec<u8>>>>,
    /// The whole header map: read at once when the plan reads many headers (one host call
    /// instead of many, see `Plan::read_whole_map`), or when a cookie is not in the first
    /// `cookie` header.
    map: Option<HeaderMap>,
    source: Option<Option<IpAddr>>,
    now: Option<i64>,
}

impl<'a, H: Host> Facts<'a, H> {
    pub fn new(plan: &'a Plan, host: &'a H) -> Self {
        Facts { plan, host, headers: Vec::new(), map: None, source: None, now: None }
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

/// The first value of the header in `slot`, read with its own host call and kept in `cache`.
fn one_header<'c, H: Host>(
    cache: &'c mut Vec<Option<Option<Vec<u8>>>>,
    plan: &Plan,
    host: &H,
    slot: HeaderSlot,
) -> Option<&'c [u8]> {
    if cache.is_empty() {
        cache.resize(plan.headers.len(), None);
    }
    let cached = cache.get_mut(slot)?;
    if cached.is_none() {
        *cached = Some(host.header(plan.headers.get(slot)?));
    }
    cached.as_ref().and_then(|v| v.as_deref())
}

/// The whole header map as the host serialized it, indexed once for the plan's headers: no
/// copy per header, and a header rule finds its value without a search.
struct HeaderMap {
    bytes: Vec<u8>,
    /// Per plan slot, where its first value lies in `bytes`.
    first: Vec<Option<Range<usize>>>,
}

impl HeaderMap {
    fn new(plan: &Plan, bytes: Vec<u8>) -> Self {
        let mut first = vec![None; plan.headers.len()];
        for (name, value) in PairRanges::new(&bytes) {
            let name = bytes.get(name).unwrap_or_default();
            if let Some(slot) = plan.headers.iter().position(|h| h.as_bytes() == name) {
                if let Some(f @ None) = first.get_mut(slot) {
                    *f = Some(value);
                }
            }
        }
        HeaderMap { bytes, first }
    }

    fn first(&self, slot: HeaderSlot) -> Option<&[u8]> {
        self.bytes.get(self.first.get(slot)?.clone()?)
    }

    /// Every value of header `name`, in order.
    fn values<'m>(&'m self, name: &'m [u8]) -> impl Iterator<Item = &'m [u8]> + 'm {
        header_pairs(&self.bytes).filter(move |(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// The (name, value) pairs of a header map in the proxy-wasm ABI's serialized form (what
/// `proxy_get_header_map_pairs` returns): a little-endian u32 count, then a (name length,
/// value length) u32 pair per header, then each name and value followed by a NUL. A map that
/// does not add up ends at the first header that does not fit: what the host sends cannot make
/// the filter panic.
pub fn header_pairs(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    PairRanges::new(bytes).map(|(k, v)| (bytes.get(k).unwrap_or_default(), bytes.get(v).unwrap_or_default()))
}

/// The inverse of [`header_pairs`]: how Envoy serializes a header map for the filter.
pub fn serialize_header_pairs<'p>(pairs: impl Iterator<Item = (&'p [u8], &'p [u8])> + Clone) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = len(pairs.clone().count()).to_vec();
    for (k, v) in pairs.clone() {
        out.extend(len(k.len()));
        out.extend(len(v.len()));
    }
    for (k, v) in pairs {
        out.extend(k);
        out.push(0);
        out.extend(v);
        out.push(0);
    }
    out
}

/// Where each name and value of a serialized header map lies (see [`header_pairs`]).
struct PairRanges<'b> {
    bytes: &'b [u8],
    next: usize,
    count: usize,
    data: usize,
}

impl<'b> PairRanges<'b> {
    fn new(bytes: &'b [u8]) -> Self {
        let count = word(bytes, 0).unwrap_or(0);
        // The length table must fit, or nothing is read (a count far beyond the bytes).
        match count.checked_mul(8).and_then(|n| n.checked_add(4)).filter(|&d| d <= bytes.len()) {
            Some(data) => PairRanges { bytes, next: 0, count, data },
            None => PairRanges { bytes, next: 0, count: 0, data: 0 },
        }
    }

    fn read(&mut self) -> Option<(Range<usize>, Range<usize>)> {
        let n = self.next;
        let (name_len, value_len) = (word(self.bytes, 4 + n * 8)?, word(self.bytes, 8 + n * 8)?);
        let name = self.data..self.data.checked_add(name_len)?;
        let start = name.end.checked_add(1)?;
        let value = start..start.checked_add(value_len)?;
        if value.end >= self.bytes.len() {
            return None;
        }
        self.data = value.end + 1;
        self.next = n + 1;
        Some((name, value))
    }
}

impl Iterator for PairRanges<'_> {
    type Item = (Range<usize>, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let pair = self.read();
        if pair.is_none() {
            self.count = 0;
        }
        pair
    }
}

/// The little-endian u32 at `at`.
fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
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
    fn header_map(&self) -> Vec<u8> {
        serialize_header_pairs(self.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::cell::Cell;

    use super::*;
    use crate::config::parse;

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
        fn header_map(&self) -> Vec<u8> {
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

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        serialize_header_pairs(pairs.iter().map(|(k, v)| (*k, *v)))
    }

    fn pairs(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        header_pairs(bytes).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn header_pairs_round_trip_in_order_with_repeats_and_odd_bytes() {
        let map: &[(&[u8], &[u8])] =
            &[(b":path", b"/a?b"), (b"cookie", b"a=1"), (b"cookie", b""), (b"x-\xff", b"\xff\x00z")];
        let want: Vec<(Vec<u8>, Vec<u8>)> = map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(pairs(&serialize(map)), want);
        assert_eq!(pairs(&serialize(&[])), vec![]);
    }

    #[test]
    fn header_pairs_that_do_not_add_up_end_early_not_a_panic() {
        let full = serialize(&[(b"a", b"1"), (b"bb", b"22")]);
        assert_eq!(pairs(&full).len(), 2);
        for cut in 0..full.len() {
            let got = pairs(&full[..cut]);
            // 20 bytes of counts and lengths, then `a`, NUL, `1`, NUL (to 24), then `bb`, NUL,
            // `22`, NUL (to 30): a pair counts once its value's NUL is there.
            let want = match cut {
                0..24 => 0,
                24..30 => 1,
                _ => 2,
            };
            assert_eq!(got.len(), want, "cut at {cut}: {got:?}");
            if let Some((k, v)) = got.first() {
                assert_eq!((k.as_slice(), v.as_slice()), (&b"a"[..], &b"1"[..]), "cut at {cut}");
            }
        }
        // A count far beyond the bytes, and lengths that overflow.
        assert_eq!(pairs(&u32::MAX.to_le_bytes()), vec![]);
        let mut huge = 1u32.to_le_bytes().to_vec();
        huge.extend(u32::MAX.to_le_bytes());
        huge.extend(u32::MAX.to_le_bytes());
        assert_eq!(pairs(&huge), vec![]);
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
