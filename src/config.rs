//! Configuration v1: the raw JSON shape (read from `json::Node`), its validation, and the compiled plan that
//! request handling reads. Everything is checked and compiled here, once, in `on_configure`:
//! names are lower-cased, CIDRs and times parsed, percents turned into integer bucket bounds.
//! A config either compiles whole or is rejected whole with one `ConfigError`.

use crate::cidr::Cidr;
use crate::error::ConfigError;
use crate::hash::BUCKETS;
use crate::json::{fmt_num, quote, Fields, FromNode, Node};
use crate::matcher::StringMatch;
use crate::time::parse_rfc3339;

/// The default routing header (DESIGN.md `route_header`).
pub const DEFAULT_ROUTE_HEADER: &str = "x-graysplit-version";
/// Rule names reserved for the metrics of the override and of the no-rule decision.
const RESERVED_RULE_NAMES: [&str; 2] = ["override", "default"];
const MAX_AGE_RANGE: std::ops::RangeInclusive<u64> = 60..=63_072_000;

// ---------------------------------------------------------------------------------------------
// Raw shape: the schema, field for field. Each struct lists the fields it allows, so unknown
// ones are refused with their path (see `json::Fields`).

struct RawConfig {
    route_header: Option<String>,
    stable: String,
    identity: Option<RawIdentity>,
    override_: Option<RawOverride>,
    response_header: Option<String>,
    rules: Option<Vec<RawRule>>,
}

struct RawIdentity {
    from: Option<Vec<RawSource>>,
    sticky_cookie: Option<RawSticky>,
}

struct RawSource {
    header: Option<String>,
    cookie: Option<String>,
    query: Option<String>,
}

struct RawSticky {
    name: String,
    max_age_s: u64,
}

struct RawOverride {
    header: String,
    trusted_cidrs: Vec<String>,
}

struct RawRule {
    name: String,
    when: Option<RawWhen>,
    version: Option<String>,
    split: Option<Vec<RawSplit>>,
    salt: Option<String>,
    starts_at: Option<String>,
    expires_at: Option<String>,
    enabled: Option<bool>,
}

struct RawWhen {
    headers: Option<Vec<RawMatch>>,
    cookies: Option<Vec<RawMatch>>,
    query: Option<Vec<RawMatch>>,
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    source_cidrs: Option<Vec<String>>,
    users: Option<Vec<String>>,
}

struct RawMatch {
    name: String,
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    one_of: Option<Vec<String>>,
    present: Option<bool>,
}

struct RawSplit {
    version: String,
    percent: f64,
}

impl FromNode for RawConfig {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(
            n,
            path,
            &["route_header", "stable", "identity", "override", "response_header", "rules"],
        )?;
        Ok(RawConfig {
            route_header: f.opt("route_header")?,
            stable: f.req("stable")?,
            identity: f.opt("identity")?,
            override_: f.opt("override")?,
            response_header: f.opt("response_header")?,
            rules: f.opt("rules")?,
        })
    }
}

impl FromNode for RawIdentity {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(n, path, &["from", "sticky_cookie"])?;
        Ok(RawIdentity { from: f.opt("from")?, sticky_cookie: f.opt("sticky_cookie")? })
    }
}

impl FromNode for RawSource {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(n, path, &["header", "cookie", "query"])?;
        Ok(RawSource { header: f.opt("header")?, cookie: f.opt("cookie")?, query: f.opt("query")? })
    }
}

impl FromNode for RawSticky {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(n, path, &["name", "max_age_s"])?;
        Ok(RawSticky { name: f.req("name")?, max_age_s: f.req("max_age_s")? })
    }
}

impl FromNode for RawOverride {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(n, path, &["header", "trusted_cidrs"])?;
        Ok(RawOverride { header: f.req("header")?, trusted_cidrs: f.req("trusted_cidrs")? })
    }
}

impl FromNode for RawRule {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(
            n,
            path,
            &["name", "when", "version", "split", "salt", "starts_at", "expires_at", "enabled"],
        )?;
        Ok(RawRule {
            name: f.req("name")?,
            when: f.opt("when")?,
            version: f.opt("version")?,
            split: f.opt("split")?,
            salt: f.opt("salt")?,
            starts_at: f.opt("starts_at")?,
            expires_at: f.opt("expires_at")?,
            enabled: f.opt("enabled")?,
        })
    }
}

impl FromNode for RawWhen {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(
            n,
            path,
            &["headers", "cookies", "query", "path_prefix", "methods", "source_cidrs", "users"],
        )?;
        Ok(RawWhen {
            headers: f.opt("headers")?,
            cookies: f.opt("cookies")?,
            query: f.opt("query")?,
            path_prefix: f.opt("path_prefix")?,
            methods: f.opt("methods")?,
            source_cidrs: f.opt("source_cidrs")?,
            users: f.opt("users")?,
        })
    }
}

impl FromNode for RawMatch {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(n, path, &["name", "exact", "prefix", "suffix", "one_of", "present"])?;
        Ok(RawMatch {
            name: f.req("name")?,
            exact: f.opt("exact")?,
            prefix: f.opt("prefix")?,
            suffix: f.opt("suffix")?,
            one_of: f.opt("one_of")?,
            present: f.opt("present")?,
        })
    }
}

impl FromNode for RawSplit {
    fn from_node(n: &Node, path: &str) -> Result<Self, ConfigError> {
        let f = Fields::new(n, path, &["version", "percent"])?;
        Ok(RawSplit { version: f.req("version")?, percent: f.req("percent")? })
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled plan.

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

// ---------------------------------------------------------------------------------------------
// Parsing and validation.

/// Parses, validates and compiles a plugin configuration.
pub fn parse(json: &[u8]) -> Result<Plan, ConfigError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(
            "$",
            "the configuration is empty; graysplit needs at least {\"stable\": \"<version>\"}",
        ));
    }
    let doc = Node::parse(json)?;
    compile(RawConfig::from_node(&doc, "$")?)
}

/// Sorts `v` by heapsort: O(n log n) and in place like `sort_unstable`, whose monomorphized
/// code weighs ~4 KB of wasm for this one config-time use (the `users` list).
#[allow(clippy::indexing_slicing)] // every index is below `end` <= v.len()
fn heapsort<T: Ord>(v: &mut [T]) {
    fn sift<T: Ord>(v: &mut [T], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    for i in (0..v.len() / 2).rev() {
        sift(v, i, v.len());
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

struct Builder {
    versions: Vec<String>,
    metrics: Vec<String>,
    headers: Vec<String>,
}

/// The index of `name` in `list`, added at the end the first time.
fn intern(list: &mut Vec<String>, name: &str) -> usize {
    list.iter().position(|x| x == name).unwrap_or_else(|| {
        list.push(name.to_string());
        list.len() - 1
    })
}

impl Builder {
    fn slot(&mut self, name: &str) -> HeaderSlot {
        intern(&mut self.headers, name)
    }

    fn version(&mut self, name: &str) -> VersionId {
        intern(&mut self.versions, name)
    }

    fn metric(&mut self, rule: &str, version: VersionId) -> MetricId {
        let v = self.versions.get(version).map_or("", String::as_str);
        intern(&mut self.metrics, &format!("graysplit_decisions_total.rule.{rule}.version.{v}"))
    }
}

fn compile(raw: RawConfig) -> Result<Plan, ConfigError> {
    let mut b = Builder {
        versions: Vec::new(),
        metrics: vec![
            "graysplit_override_total.result.accepted".to_string(),
            "graysplit_override_total.result.rejected".to_string(),
        ],
        headers: Vec::new(),
    };
    let path_slot = b.slot(":path");
    let method_slot = b.slot(":method");

    let route_header = match raw.route_header {
        Some(h) => header_name("route_header", h)?,
        None => DEFAULT_ROUTE_HEADER.to_string(),
    };
    let response_header = raw.response_header.map(|h| header_name("response_header", h)).transpose()?;
    check_version("stable", &raw.stable)?;
    b.version(&raw.stable);

    // Identity.
    let mut identity = Vec::new();
    let mut sticky = None;
    if let Some(id) = raw.identity {
        for (i, src) in id.from.unwrap_or_default().into_iter().enumerate() {
            let path = format!("identity.from[{i}]");
            identity.push(match (src.header, src.cookie, src.query) {
                (Some(h), None, None) => IdSource::Header(b.slot(&header_name(&(path + ".header"), h)?)),
                (None, Some(c), None) => {
                    IdSource::Cookie(cookie_name(&(path + ".cookie"), c)?.into_bytes().into())
                }
                (None, None, Some(q)) => {
                    IdSource::Query(non_empty(&(path + ".query"), q)?.into_bytes().into())
                }
                _ => return Err(ConfigError::new(path, "give exactly one of `header`, `cookie`, `query`")),
            });
        }
        if let Some(s) = id.sticky_cookie {
            let name = cookie_name("identity.sticky_cookie.name", s.name)?;
            if !MAX_AGE_RANGE.contains(&s.max_age_s) {
                return Err(ConfigError::new(
                    "identity.sticky_cookie.max_age_s",
                    format!(
                        "must be between {} and {} seconds, got {}",
                        MAX_AGE_RANGE.start(),
                        MAX_AGE_RANGE.end(),
                        s.max_age_s
                    ),
                ));
            }
            sticky = Some(Sticky { name, max_age_s: s.max_age_s, scheme_slot: b.slot(":scheme") });
        }
    }
    let has_identity = !identity.is_empty() || sticky.is_some();

    // Rules, first pass: everything but metrics, so every version is known before the
    // override's metrics are named.
    let raw_rules = raw.rules.unwrap_or_default();
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (i, r) in raw_rules.into_iter().enumerate() {
        let at = |field: &str| format!("rules[{i}].{field}");
        check_rule_name(&at("name"), &r.name)?;
        if let Some(j) = rules.iter().position(|x: &Rule| x.name == r.name) {
            return Err(ConfigError::new(
                at("name"),
                format!("duplicate rule name {} (also rules[{j}])", quote(&r.name)),
            ));
        }
        let time = |field: &str, t: Option<&str>| {
            t.map(|t| parse_rfc3339(t).map_err(|e| ConfigError::new(at(field), e))).transpose()
        };
        let starts_at = time("starts_at", r.starts_at.as_deref())?;
        let expires_at = time("expires_at", r.expires_at.as_deref())?;
        if let (Some(s), Some(e)) = (starts_at, expires_at) {
            if e <= s {
                return Err(ConfigError::new(at("expires_at"), "must be later than starts_at"));
            }
        }
        let when = match r.when {
            Some(w) => compile_when(&mut b, i, w, has_identity)?,
            None => Vec::new(),
        };
        let salt = match r.salt {
            Some(s) => non_empty(&at("salt"), s)?,
            None => r.name.clone(),
        };
        let action = match (r.version, r.split) {
            (Some(v), None) => {
                check_version(&at("version"), &v)?;
                Action::Fixed { version: b.version(&v), metric: 0 }
            }
            (None, Some(split)) => {
                if !has_identity {
                    return Err(ConfigError::new(
                        at("split"),
                        "a split needs a user id: set identity.from or identity.sticky_cookie",
                    ));
                }
                compile_split(&mut b, i, split, salt)?
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("rules[{i}]"),
                    "has both `version` and `split`; give exactly one",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(format!("rules[{i}]"), "needs `version` or `split`"))
            }
        };
        rules.push(Rule {
            name: r.name,
            enabled: r.enabled.unwrap_or(true),
            starts_at,
            expires_at,
            when,
            action,
        });
    }

    // Metrics: every (rule, version) a decision can produce, named once, up front.
    for rule in &mut rules {
        match &mut rule.action {
            Action::Fixed { version, metric } => *metric = b.metric(&rule.name, *version),
            Action::Split { bands, stable_metric, .. } => {
                for band in bands.iter_mut() {
                    band.metric = b.metric(&rule.name, band.version);
                }
                *stable_metric = b.metric(&rule.name, 0);
            }
        }
    }
    let default_metric = b.metric("default", 0);

    let override_ = match raw.override_ {
        Some(o) => {
            let name = header_name("override.header", o.header)?;
            if name == route_header {
                return Err(ConfigError::new(
                    "override.header",
                    format!(
                        "must differ from route_header {}, which is always replaced",
                        quote(&route_header)
                    ),
                ));
            }
            if o.trusted_cidrs.is_empty() {
                return Err(ConfigError::new(
                    "override.trusted_cidrs",
                    "must list at least one range (write 0.0.0.0/0 and ::/0 to trust everyone)",
                ));
            }
            let trusted = cidrs("override.trusted_cidrs", &o.trusted_cidrs)?;
            let metrics = (0..b.versions.len()).map(|v| b.metric("override", v)).collect();
            Some(Override { slot: b.slot(&name), trusted, metrics })
        }
        None => None,
    };

    let read = headers_read(&b.headers, &identity, sticky.is_some(), override_.as_ref(), &rules);
    let read_whole_map = read.len() >= WHOLE_MAP_MIN_HEADERS;
    let reads_cookies = read.contains(&"cookie");
    let cookie_slot = reads_cookies.then(|| b.slot("cookie"));
    Ok(Plan {
        read_whole_map,
        route_header,
        response_header,
        versions: b.versions,
        metrics: b.metrics,
        headers: b.headers,
        identity,
        sticky,
        override_,
        rules,
        default_metric,
        path_slot,
        cookie_slot,
        method_slot,
    })
}

/// The distinct request headers a decision may read.
fn headers_read<'h>(
    names: &'h [String],
    identity: &[IdSource],
    sticky: bool,
    override_: Option<&Override>,
    rules: &[Rule],
) -> Vec<&'h str> {
    let slot = |s: &HeaderSlot| names.get(*s).map_or("", String::as_str);
    // A handful of names: a linear check instead of sort + dedup, whose code for &str costs
    // several KB of wasm.
    let mut read: Vec<&str> = Vec::new();
    let mut add = |name: &'h str| {
        if !read.contains(&name) {
            read.push(name);
        }
    };
    for src in identity {
        add(match src {
            IdSource::Header(s) => slot(s),
            IdSource::Cookie(_) => "cookie",
            IdSource::Query(_) => ":path",
        });
    }
    if sticky {
        add("cookie");
    }
    if let Some(o) = override_ {
        add(slot(&o.slot));
    }
    for cond in rules.iter().flat_map(|r| &r.when) {
        add(match cond {
            Cond::Methods(_) => ":method",
            Cond::PathPrefix(_) | Cond::Query(..) => ":path",
            Cond::Header(s, _) => slot(s),
            Cond::Cookie(..) => "cookie",
            Cond::Sources(_) | Cond::Users(_) => continue,
        });
    }
    read
}

/// Why an empty list in a condition is refused.
const NEVER_MATCHES: &str = "must not be empty (it would never match)";

fn compile_when(b: &mut Builder, i: usize, w: RawWhen, has_identity: bool) -> Result<Vec<Cond>, ConfigError> {
    let at = |field: &str| format!("rules[{i}].when.{field}");
    let mut conds = Vec::new();
    // Cheapest checks first: all must hold, so the order only changes the cost.
    if let Some(methods) = w.methods {
        if methods.is_empty() {
            return Err(ConfigError::new(at("methods"), NEVER_MATCHES));
        }
        for (j, m) in methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|c| is_tchar(c) && !c.is_ascii_lowercase()) {
                return Err(ConfigError::new(
                    format!("rules[{i}].when.methods[{j}]"),
                    format!("must be an upper-case HTTP method like GET, got {}", quote(m)),
                ));
            }
        }
        conds.push(Cond::Methods(methods.into_iter().map(|m| m.into_bytes().into()).collect()));
    }
    if let Some(p) = w.path_prefix {
        if !p.starts_with('/') {
            return Err(ConfigError::new(at("path_prefix"), format!("must start with /, got {}", quote(&p))));
        }
        conds.push(Cond::PathPrefix(p.into_bytes().into()));
    }
    for (j, m) in w.headers.unwrap_or_default().into_iter().enumerate() {
        let path = format!("rules[{i}].when.headers[{j}]");
        let name = header_name(&format!("{path}.name"), m.name.clone())?;
        let sm = string_match(&path, m)?;
        conds.push(Cond::Header(b.slot(&name), sm));
    }
    for (j, m) in w.cookies.unwrap_or_default().into_iter().enumerate() {
        let path = format!("rules[{i}].when.cookies[{j}]");
        let name = cookie_name(&format!("{path}.name"), m.name.clone())?;
        conds.push(Cond::Cookie(name.into_bytes().into(), string_match(&path, m)?));
    }
    for (j, m) in w.query.unwrap_or_default().into_iter().enumerate() {
        let path = format!("rules[{i}].when.query[{j}]");
        let name = non_empty(&format!("{path}.name"), m.name.clone())?;
        conds.push(Cond::Query(name.into_bytes().into(), string_match(&path, m)?));
    }
    if let Some(list) = w.source_cidrs {
        if list.is_empty() {
            return Err(ConfigError::new(at("source_cidrs"), NEVER_MATCHES));
        }
        conds.push(Cond::Sources(cidrs(&at("source_cidrs"), &list)?));
    }
    if let Some(users) = w.users {
        if users.is_empty() {
            return Err(ConfigError::new(at("users"), NEVER_MATCHES));
        }
        if !has_identity {
            return Err(ConfigError::new(
                at("users"),
                "a users condition needs a user id: set identity.from or identity.sticky_cookie",
            ));
        }
        let mut users: Vec<Box<[u8]>> = users.into_iter().map(|u| u.into_bytes().into()).collect();
        heapsort(&mut users);
        users.dedup();
        conds.push(Cond::Users(users));
    }
    Ok(conds)
}

fn compile_split(
    b: &mut Builder,
    i: usize,
    split: Vec<RawSplit>,
    salt: String,
) -> Result<Action, ConfigError> {
    if split.is_empty() {
        return Err(ConfigError::new(format!("rules[{i}].split"), "must list at least one version"));
    }
    let mut bands = Vec::with_capacity(split.len());
    let mut upper: u32 = 0;
    for (j, s) in split.into_iter().enumerate() {
        let at = |field: &str| format!("rules[{i}].split[{j}].{field}");
        check_version(&at("version"), &s.version)?;
        let version = b.version(&s.version);
        if bands.iter().any(|x: &Band| x.version == version) {
            return Err(ConfigError::new(
                at("version"),
                format!("{} is listed twice in this split", quote(&s.version)),
            ));
        }
        let basis_points =
            percent_to_basis_points(s.percent).map_err(|e| ConfigError::new(at("percent"), e))?;
        upper += basis_points;
        if upper > BUCKETS {
            return Err(ConfigError::new(
                at("percent"),
                format!("the percents of rules[{i}].split add up to {}, more than 100", fmt_bp(upper)),
            ));
        }
        bands.push(Band { upper, version, metric: 0 });
    }
    let mut salt_colon = salt.into_bytes();
    salt_colon.push(b':');
    Ok(Action::Split { salt_colon: salt_colon.into(), bands, stable_metric: 0 })
}

/// `percent` as hundredths of a percent. At most two decimals means `percent * 100` is an
/// integer; checked exactly: the f64 nearest `n / 100` must be the very f64 that was parsed
/// (division is correctly rounded), so 10.555 and 10.1000000001 are rejected, 0.29 is not.
fn percent_to_basis_points(p: f64) -> Result<u32, String> {
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("must be between 0 and 100, got {}", fmt_num(p)));
    }
    let n = (p * 100.0).round();
    if n / 100.0 != p {
        return Err(format!("at most two decimals are allowed, got {}", fmt_num(p)));
    }
    // In 0..=10000 after the range check above.
    Ok(n as u32)
}

fn fmt_bp(bp: u32) -> String {
    if bp % 100 == 0 {
        format!("{}", bp / 100)
    } else {
        format!("{}.{:02}", bp / 100, bp % 100).trim_end_matches('0').to_string()
    }
}

fn string_match(path: &str, m: RawMatch) -> Result<StringMatch, ConfigError> {
    let kinds =
        [m.exact.is_some(), m.prefix.is_some(), m.suffix.is_some(), m.one_of.is_some(), m.present.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(ConfigError::new(
            path,
            format!(
                "{}: give exactly one of `exact`, `prefix`, `suffix`, `one_of`, `present`",
                quote(&m.name)
            ),
        ));
    }
    let bytes = |s: String| -> Box<[u8]> { s.into_bytes().into() };
    Ok(if let Some(v) = m.exact {
        StringMatch::Exact(bytes(v))
    } else if let Some(v) = m.prefix {
        StringMatch::Prefix(bytes(v))
    } else if let Some(v) = m.suffix {
        StringMatch::Suffix(bytes(v))
    } else if let Some(list) = m.one_of {
        if list.is_empty() {
            return Err(ConfigError::new(format!("{path}.one_of"), NEVER_MATCHES));
        }
        StringMatch::OneOf(list.into_iter().map(bytes).collect())
    } else {
        StringMatch::Present(m.present.unwrap_or(true))
    })
}

fn cidrs(path: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        out.push(Cidr::parse(c).map_err(|e| ConfigError::new(format!("{path}[{j}]"), e))?);
    }
    Ok(out)
}

/// RFC 9110 `tchar`: the characters of a token (header names, methods, cookie names).
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn header_name(path: &str, name: String) -> Result<String, ConfigError> {
    if name.starts_with(':') {
        return Err(ConfigError::new(path, format!("pseudo-headers cannot be used, got {}", quote(&name))));
    }
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(ConfigError::new(
            path,
            format!("must be a valid HTTP header name, got {}", quote(&name)),
        ));
    }
    if name.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(ConfigError::new(
            path,
            format!(
                "must be lower-case (header names match case-insensitively), got {}; write {}",
                quote(&name),
                quote(&name.to_ascii_lowercase())
            ),
        ));
    }
    Ok(name)
}

fn cookie_name(path: &str, name: String) -> Result<String, ConfigError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(ConfigError::new(
            path,
            format!("must be a valid cookie name (an HTTP token), got {}", quote(&name)),
        ));
    }
    Ok(name)
}

fn non_empty(path: &str, s: String) -> Result<String, ConfigError> {
    if s.is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(s)
}

/// Versions: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
fn check_version(path: &str, v: &str) -> Result<(), ConfigError> {
    let b = v.as_bytes();
    let ok = matches!(b.first(), Some(c) if c.is_ascii_alphanumeric())
        && b.len() <= 64
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "must be a version name: a letter or digit, then up to 63 of [A-Za-z0-9._-], got {}",
                quote(v)
            ),
        ))
    }
}

/// Rule names: `[a-z0-9][a-z0-9_-]{0,63}`, not a reserved metric name.
fn check_rule_name(path: &str, n: &str) -> Result<(), ConfigError> {
    let b = n.as_bytes();
    let ok = matches!(b.first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 64
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !ok {
        return Err(ConfigError::new(
            path,
            format!("must be a lower-case letter or digit, then up to 63 of [a-z0-9_-], got {}", quote(n)),
        ));
    }
    if RESERVED_RULE_NAMES.contains(&n) {
        return Err(ConfigError::new(
            path,
            format!("{} is reserved for metrics; pick another name", quote(n)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]
    use super::*;

    fn err(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("accepted but should be rejected: {json}"),
            Err(e) => e.to_string(),
        }
    }

    const ID: &str = r#""identity": {"from": [{"header": "x-user-id"}]}"#;

    #[test]
    fn design_example_compiles() {
        let json = r#"{
          "route_header": "x-graysplit-version",
          "stable": "v2.0",
          "identity": {
            "from": [{"header": "x-user-id"}, {"cookie": "uid"}, {"query": "uid"}],
            "sticky_cookie": {"name": "graysplit_uid", "max_age_s": 2592000}
          },
          "override": {"header": "x-gray-release", "trusted_cidrs": ["10.0.0.0/8", "127.0.0.1/32"]},
          "response_header": "x-graysplit-version",
          "rules": [
            {"name": "vip-stay-stable", "when": {"users": ["ceo@example.com"]}, "version": "v2.0"},
            {"name": "legal-pilot", "when": {"headers": [{"name": "x-department", "exact": "legal"}]},
             "version": "v2.1"},
            {"name": "office", "when": {"source_cidrs": ["192.168.0.0/16"], "path_prefix": "/api/"},
             "version": "v2.1"},
            {"name": "ramp", "split": [{"version": "v2.1", "percent": 10}], "salt": "release-2.1",
             "expires_at": "2026-12-01T00:00:00Z"}
          ]
        }"#;
        let plan = parse(json.as_bytes()).unwrap();
        assert_eq!(plan.versions, ["v2.0", "v2.1"]);
        assert_eq!(plan.rule_count(), 4);
        for m in [
            "graysplit_override_total.result.accepted",
            "graysplit_override_total.result.rejected",
            "graysplit_decisions_total.rule.vip-stay-stable.version.v2.0",
            "graysplit_decisions_total.rule.legal-pilot.version.v2.1",
            "graysplit_decisions_total.rule.ramp.version.v2.1",
            "graysplit_decisions_total.rule.ramp.version.v2.0",
            "graysplit_decisions_total.rule.default.version.v2.0",
            "graysplit_decisions_total.rule.override.version.v2.1",
        ] {
            assert!(plan.metrics.iter().any(|x| x == m), "missing metric {m}");
        }
        assert_eq!(plan.metrics[METRIC_OVERRIDE_ACCEPTED], "graysplit_override_total.result.accepted");
        assert_eq!(plan.metrics[METRIC_OVERRIDE_REJECTED], "graysplit_override_total.result.rejected");
    }

    #[test]
    fn minimal_config_defaults() {
        let plan = parse(br#"{"stable": "v1"}"#).unwrap();
        assert_eq!(plan.route_header, DEFAULT_ROUTE_HEADER);
        assert_eq!(plan.response_header, None);
        assert!(!plan.has_identity());
    }

    #[test]
    fn heapsort_sorts_like_the_standard_sort() {
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..200 {
            let mut v: Vec<u32> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed % 50
                })
                .collect();
            let mut want = v.clone();
            want.sort_unstable();
            heapsort(&mut v);
            assert_eq!(v, want, "len {len}");
        }
    }

    #[test]
    fn errors_name_the_json_path_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "$: the configuration is empty"),
            ("[]", "$: expected an object, got a list"),
            (r#"{"stable": "v1", "rules": [["a", null, "v2"]]}"#, "rules[0]: expected an object, got a list"),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [["x"]]}}]}"#,
                "rules[0].when.headers[0]: expected an object, got a list",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": ["g", 600]}}"#,
                "identity.sticky_cookie: expected an object, got a list",
            ),
            ("{\"stable\": \"v1\"} x", "$: trailing characters after the JSON value at line 1 column 18"),
            ("{\"stable\": ", "stable: expected a value, found the end of the document at line 1 column 12"),
            ("{}", "stable: is required"),
            (r#"{"stable": "v1", "colour": 1}"#, "colour: unknown field `colour`"),
            (r#"{"stable": "v1", "stable": "v2"}"#, "stable: duplicate key at line 1 column 18"),
            (r#"{"stable": ""}"#, "stable: must be a version name"),
            (r#"{"stable": "-v1"}"#, "stable: must be a version name"),
            (r#"{"stable": "v1/x"}"#, "stable: must be a version name"),
            (r#"{"stable": 2}"#, "stable: expected a string, got a number 2"),
            (r#"{"stable": "v1", "route_header": "X-Version"}"#, "route_header: must be lower-case"),
            (
                r#"{"stable": "v1", "route_header": ":authority"}"#,
                "route_header: pseudo-headers cannot be used",
            ),
            (r#"{"stable": "v1", "route_header": "a b"}"#, "route_header: must be a valid HTTP header name"),
            (
                r#"{"stable": "v1", "response_header": ""}"#,
                "response_header: must be a valid HTTP header name",
            ),
            (r#"{"stable": "v1", "identity": {"from": [{}]}}"#, "identity.from[0]: give exactly one of"),
            (
                r#"{"stable": "v1", "identity": {"from": [{"header": "a", "cookie": "b"}]}}"#,
                "identity.from[0]: give exactly one of",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"header": "x", "nope": 1}]}}"#,
                "identity.from[0].nope: unknown field `nope`",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"cookie": "a;b"}]}}"#,
                "identity.from[0].cookie: must be a valid cookie name",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"query": ""}]}}"#,
                "identity.from[0].query: must not be empty",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g"}}}"#,
                "identity.sticky_cookie.max_age_s: is required",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g", "max_age_s": 59}}}"#,
                "identity.sticky_cookie.max_age_s: must be between 60 and 63072000 seconds, got 59",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g", "max_age_s": 63072001}}}"#,
                "identity.sticky_cookie.max_age_s: must be between",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g", "max_age_s": -1}}}"#,
                "identity.sticky_cookie.max_age_s: expected a whole number, got a number -1",
            ),
            (r#"{"stable": "v1", "override": {"header": "x-o"}}"#, "override.trusted_cidrs: is required"),
            (
                r#"{"stable": "v1", "override": {"header": "x-o", "trusted_cidrs": []}}"#,
                "override.trusted_cidrs: must list at least one range",
            ),
            (
                r#"{"stable": "v1", "override": {"header": "x-o", "trusted_cidrs": ["10.0.0.0/8", "300.1.1.1/8"]}}"#,
                "override.trusted_cidrs[1]: must be a CIDR",
            ),
            (
                r#"{"stable": "v1", "override": {"header": "x-graysplit-version", "trusted_cidrs": ["::/0"]}}"#,
                "override.header: must differ from route_header",
            ),
            (r#"{"stable": "v1", "rules": {}}"#, "rules: expected a list, got an object"),
            (r#"{"stable": "v1", "rules": [{"version": "v2"}]}"#, "rules[0].name: is required"),
            (
                r#"{"stable": "v1", "rules": [{"name": "A", "version": "v2"}]}"#,
                "rules[0].name: must be a lower-case letter or digit",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "default", "version": "v2"}]}"#,
                "rules[0].name: \"default\" is reserved",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "override", "version": "v2"}]}"#,
                "rules[0].name: \"override\" is reserved",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2"}, {"name": "a", "version": "v3"}]}"#,
                "rules[1].name: duplicate rule name \"a\" (also rules[0])",
            ),
            (r#"{"stable": "v1", "rules": [{"name": "a"}]}"#, "rules[0]: needs `version` or `split`"),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "version": "v2", "split": []}]}"#,
                "rules[0]: has both `version` and `split`",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v 2"}]}"#,
                "rules[0].version: must be a version name",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "split": [{"version": "v2", "percent": 10}]}]}"#,
                "rules[0].split: a split needs a user id",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "when": {"users": ["x"]}, "version": "v2"}]}"#,
                "rules[0].when.users: a users condition needs a user id",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": []}]}"#,
                "rules[0].split: must list at least one version",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "r", "version": "v2"}, {"name": "a", "split": [{"version": "v2", "percent": 10}, {"version": "v3", "percent": 120}]}]}"#,
                "rules[1].split[1].percent: must be between 0 and 100, got 120",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": -1}]}]}"#,
                "rules[0].split[0].percent: must be between 0 and 100, got -1",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 10.555}]}]}"#,
                "rules[0].split[0].percent: at most two decimals are allowed, got 10.555",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 10.1000000001}]}]}"#,
                "rules[0].split[0].percent: at most two decimals",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": "10"}]}]}"#,
                "rules[0].split[0].percent: expected a number, got a string \"10\"",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 60}, {"version": "v3", "percent": 40.01}]}]}"#,
                "rules[0].split[1].percent: the percents of rules[0].split add up to 100.01, more than 100",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 6}, {"version": "v2", "percent": 4}]}]}"#,
                "rules[0].split[1].version: \"v2\" is listed twice",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2"}]}]}"#,
                "rules[0].split[0].percent: is required",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "salt": "", "split": [{"version": "v2", "percent": 1}]}]}"#,
                "rules[0].salt: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "expires_at": "2026-12-01"}]}"#,
                "rules[0].expires_at: must be an RFC 3339 time",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "starts_at": "soon"}]}"#,
                "rules[0].starts_at: must be an RFC 3339 time",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "starts_at": "2026-12-01T00:00:00Z", "expires_at": "2026-12-01T00:00:00Z"}]}"#,
                "rules[0].expires_at: must be later than starts_at",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "enabled": "no"}]}"#,
                "rules[0].enabled: expected true or false, got a string \"no\"",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"hdrs": []}}]}"#,
                "rules[0].when.hdrs: unknown field `hdrs`",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x"}]}}]}"#,
                "rules[0].when.headers[0]: \"x\": give exactly one of",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x", "exact": "1", "prefix": "2"}]}}]}"#,
                "rules[0].when.headers[0]: \"x\": give exactly one of",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "X-Dept", "exact": "1"}]}}]}"#,
                "rules[0].when.headers[0].name: must be lower-case",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": ":path", "exact": "1"}]}}]}"#,
                "rules[0].when.headers[0].name: pseudo-headers cannot be used",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x", "one_of": []}]}}]}"#,
                "rules[0].when.headers[0].one_of: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x", "regex": ".*"}]}}]}"#,
                "rules[0].when.headers[0].regex: unknown field `regex`",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"cookies": [{"name": "a b", "exact": "1"}]}}]}"#,
                "rules[0].when.cookies[0].name: must be a valid cookie name",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"query": [{"name": "", "exact": "1"}]}}]}"#,
                "rules[0].when.query[0].name: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"path_prefix": "api"}}]}"#,
                "rules[0].when.path_prefix: must start with /",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"methods": ["get"]}}]}"#,
                "rules[0].when.methods[0]: must be an upper-case HTTP method",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"methods": []}}]}"#,
                "rules[0].when.methods: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"source_cidrs": ["10.0.0.0/8", "fe80::/200"]}}]}"#,
                "rules[0].when.source_cidrs[1]: prefix length must be 0..=128",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"source_cidrs": []}}]}"#,
                "rules[0].when.source_cidrs: must not be empty",
            ),
        ];
        let mut wrong = Vec::new();
        for (json, want) in cases {
            let json = json.replace("ID", ID);
            let got = err(&json);
            if !got.starts_with(want) {
                wrong.push(format!("config {json}\n  want prefix: {want}\n  got:         {got}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn percents_with_two_decimals_are_exact_bucket_counts() {
        for (p, want) in
            [(0.0, 0), (0.01, 1), (0.29, 29), (10.0, 1000), (33.33, 3333), (99.99, 9999), (100.0, 10000)]
        {
            assert_eq!(percent_to_basis_points(p), Ok(want), "{p}");
        }
        for p in [0.001, 10.555, 10.1000000001, 100.01, -0.01, f64::NAN] {
            assert!(percent_to_basis_points(p).is_err(), "{p} should be rejected");
        }
    }

    #[test]
    fn split_bands_are_cumulative_bucket_bounds() {
        let plan = parse(
            format!(r#"{{"stable": "v1", {ID}, "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 10}}, {{"version": "v3", "percent": 5.5}}, {{"version": "v4", "percent": 0}}]}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        let Action::Split { bands, salt_colon, .. } = &plan.rules[0].action else { panic!("not a split") };
        let uppers: Vec<u32> = bands.iter().map(|b| b.upper).collect();
        assert_eq!(uppers, [1000, 1550, 1550]);
        assert_eq!(&salt_colon[..], b"r:", "salt defaults to the rule name");
    }

    #[test]
    fn known_versions_include_disabled_and_expired_rules() {
        let plan = parse(
            br#"{"stable": "v1", "rules": [
            {"name": "off", "version": "v2", "enabled": false},
            {"name": "old", "version": "v3", "expires_at": "2000-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(plan.versions, ["v1", "v2", "v3"]);
        assert_eq!(plan.version_id(b"v3"), Some(2));
        assert_eq!(plan.version_id(b"v9"), None);
    }

    #[test]
    fn only_needed_headers_are_read() {
        let plan = parse(br#"{"stable": "v1", "rules": [
            {"name": "a", "version": "v2", "when": {"headers": [{"name": "x-dept", "exact": "legal"}, {"name": "x-dept", "prefix": "l"}]}}]}"#)
        .unwrap();
        assert_eq!(plan.headers, [":path", ":method", "x-dept"], "one slot per distinct name");
    }
}
