//! The compiled plan: what request handling reads. Everything is checked and compiled once, in
//! `on_configure` ([`super::parse`]): names lower-cased, CIDRs and times parsed, percents turned
//! into integer bucket bounds, metric names interned.

use super::error::quote;
use crate::decide::bucket::BUCKETS;
use crate::decide::matcher::StringMatch;
use crate::request::cidr::Cidr;

/// Index into [`Plan::versions`]; 0 is `stable`.
pub type VersionId = usize;
/// Index into [`Plan::metrics`].
pub type MetricId = usize;
/// Index into [`Plan::headers`]: a request header the plan reads, fetched at most once.
pub type HeaderSlot = usize;

/// From this many distinct request headers a plan may read (cookies and pseudo-headers
/// included), one host call for the whole map is cheaper than one call per header. Measured with
/// callgrind on Envoy 1.40 (`make bench`, scenarios (c) and (d)): one call per header won for a
/// plan that reads 1 header by 13k instructions per request; the whole map won for 12 headers by
/// 39k.
pub const WHOLE_MAP_MIN_HEADERS: usize = 5;

/// Metric index of `graysplit_override_total.result.accepted`.
pub const METRIC_OVERRIDE_ACCEPTED: MetricId = 0;
/// Metric index of `graysplit_override_total.result.rejected`.
pub const METRIC_OVERRIDE_REJECTED: MetricId = 1;

/// A validated, compiled configuration. Request handling only reads it.
#[derive(Debug)]
pub struct Plan {
    /// Lower-case name of the header set on every request to the chosen version.
    pub route_header: String,
    /// Lower-case name of the response header echoing the version, if any.
    pub response_header: Option<String>,
    /// Known versions; `versions[0]` is `stable`.
    pub versions: Vec<String>,
    /// Raw metric names (DESIGN.md "Observability"), defined by the glue in this order.
    pub metrics: Vec<String>,
    /// Lower-case names of the request headers the plan reads (pseudo-headers included).
    pub headers: Vec<String>,
    pub(crate) identity: Vec<IdSource>,
    pub(crate) sticky: Option<Sticky>,
    pub(crate) override_: Option<Override>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) default_metric: MetricId,
    pub(crate) path_slot: HeaderSlot,
    /// The slot of the `cookie` header, when the plan reads cookies.
    pub(crate) cookie_slot: Option<HeaderSlot>,
    /// Read the whole header map in one host call instead of header by header: worth it when
    /// a request may need many headers (see [`WHOLE_MAP_MIN_HEADERS`]).
    pub(crate) read_whole_map: bool,
    pub(crate) method_slot: HeaderSlot,
}

#[derive(Debug)]
pub(crate) enum IdSource {
    Header(HeaderSlot),
    Cookie(Box<[u8]>),
    Query(Box<[u8]>),
}

#[derive(Debug)]
pub(crate) struct Sticky {
    pub name: String,
    pub max_age_s: u64,
    pub scheme_slot: HeaderSlot,
}

#[derive(Debug)]
pub(crate) struct Override {
    pub slot: HeaderSlot,
    pub trusted: Vec<Cidr>,
    /// Metric of `rule=override` for each version, indexed by `VersionId`.
    pub metrics: Vec<MetricId>,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub name: String,
    pub enabled: bool,
    pub starts_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub when: Vec<Cond>,
    pub action: Action,
}

#[derive(Debug)]
pub(crate) enum Cond {
    Methods(Vec<Box<[u8]>>),
    PathPrefix(Box<[u8]>),
    Header(HeaderSlot, StringMatch),
    Cookie(Box<[u8]>, StringMatch),
    Query(Box<[u8]>, StringMatch),
    Sources(Vec<Cidr>),
    /// Sorted, deduplicated: looked up by binary search.
    Users(Vec<Box<[u8]>>),
}

#[derive(Debug)]
pub(crate) enum Action {
    Fixed { version: VersionId, metric: MetricId },
    Split { salt_colon: Box<[u8]>, bands: Vec<Band>, stable_metric: MetricId },
}

/// A split entry: buckets below `upper` (and at or above the previous band's) go to `version`.
#[derive(Debug)]
pub(crate) struct Band {
    pub upper: u32,
    pub version: VersionId,
    pub metric: MetricId,
}

impl Plan {
    /// Whether a request can yield a user id (or mint one).
    pub fn has_identity(&self) -> bool {
        !self.identity.is_empty() || self.sticky.is_some()
    }

    /// The known version spelled `name`, if any.
    pub fn version_id(&self, name: &[u8]) -> Option<VersionId> {
        self.versions.iter().position(|v| v.as_bytes() == name)
    }

    /// Number of rules, for the configure-time log line.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The rules' names, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// For a split rule: each band as (version, first bucket, end bucket), then stable's.
    pub fn split_bands(&self, rule: usize) -> Option<Vec<(&str, u32, u32)>> {
        let Some(Action::Split { bands, .. }) = self.rules.get(rule).map(|r| &r.action) else {
            return None;
        };
        let name = |v: VersionId| self.versions.get(v).map_or("", String::as_str);
        let mut lo = 0;
        let mut out = Vec::with_capacity(bands.len() + 1);
        for b in bands {
            out.push((name(b.version), lo, b.upper));
            lo = b.upper;
        }
        out.push((name(0), lo, BUCKETS));
        Some(out)
    }

    /// The name of the override header, if an override is configured.
    pub fn override_header(&self) -> Option<&str> {
        let o = self.override_.as_ref()?;
        self.headers.get(o.slot).map(String::as_str)
    }

    /// Where a user id is read first: `("header" | "cookie" | "query", name)` of the first
    /// `identity.from` source, else the sticky cookie.
    pub fn first_identity_source(&self) -> Option<(&'static str, String)> {
        match self.identity.first() {
            Some(IdSource::Header(slot)) => Some(("header", self.headers.get(*slot)?.clone())),
            Some(IdSource::Cookie(n)) => Some(("cookie", String::from_utf8_lossy(n).into_owned())),
            Some(IdSource::Query(n)) => Some(("query", String::from_utf8_lossy(n).into_owned())),
            None => self.sticky.as_ref().map(|s| ("cookie", s.name.clone())),
        }
    }

    /// A human description of condition `cond` (compiled order) of rule `rule`, for
    /// `graysplit explain`.
    pub fn describe_condition(&self, rule: usize, cond: usize) -> String {
        let Some(c) = self.rules.get(rule).and_then(|r| r.when.get(cond)) else {
            return String::new();
        };
        let text = |b: &[u8]| quote(&String::from_utf8_lossy(b));
        let list = |l: &[Box<[u8]>]| l.iter().map(|x| text(x)).collect::<Vec<_>>().join(", ");
        let m = |sm: &StringMatch| match sm {
            StringMatch::Exact(v) => format!("is exactly {}", text(v)),
            StringMatch::Prefix(v) => format!("starts with {}", text(v)),
            StringMatch::Suffix(v) => format!("ends with {}", text(v)),
            StringMatch::OneOf(l) => format!("is one of [{}]", list(l)),
            StringMatch::Present(true) => "is present".to_string(),
            StringMatch::Present(false) => "is absent".to_string(),
        };
        match c {
            Cond::Methods(l) => format!("method is one of [{}]", list(l)),
            Cond::PathPrefix(p) => format!("path starts with {}", text(p)),
            Cond::Header(slot, sm) => {
                format!("header {} {}", self.headers.get(*slot).map_or("?", String::as_str), m(sm))
            }
            Cond::Cookie(n, sm) => format!("cookie {} {}", text(n), m(sm)),
            Cond::Query(n, sm) => format!("query parameter {} {}", text(n), m(sm)),
            Cond::Sources(l) => format!("source address is in one of {} listed ranges", l.len()),
            Cond::Users(l) => format!("user id is one of {} listed users", l.len()),
        }
    }
}
