//! The compiled plan: what request handling reads. Everything is checked and compiled once, in
//! `on_configure` ([`super::parse`]): names lower-cased, CIDRs and times parsed, percents turned
//! into integer bucket bounds, metric names interned.

use super::error::quote;
pub use crate::body::prompt::PromptMatch;
use crate::bucket::BUCKETS;
use crate::matcher::cidr::Cidr;
use crate::matcher::StringMatch;

/// Index into [`Plan::versions`]; 0 is `stable`.
pub type VersionId = usize;
/// Index into [`Plan::metrics`].
pub type MetricId = usize;
/// Index into [`Plan::headers`]: a request header the plan reads, fetched at most once.
pub type HeaderSlot = usize;
/// Index into [`Plan::gauges`].
pub type GaugeId = usize;
/// Index into [`Plan::guards`].
pub type GuardId = usize;
/// Index into [`Plan::histograms`].
pub type HistogramId = usize;
/// Index into [`Plan::watches`]: one version of a guarded rule, whose responses its guard counts.
pub type WatchId = usize;
/// Index into [`Plan::shadows`].
pub type ShadowId = usize;

/// From this many distinct request headers a plan may read (cookies and pseudo-headers
/// included), one host call for the whole map is cheaper than one call per header. Measured with
/// callgrind on Envoy 1.40 (`make bench`, scenarios (c) and (d)): one call per header won for a
/// plan that reads 1 header by 13k instructions per request; the whole map won for 12 headers by
/// 39k.
pub const WHOLE_MAP_MIN_HEADERS: usize = 5;

/// The most header slots a plan that reads headers one by one has (the pseudo-headers it always
/// names, and fewer than [`WHOLE_MAP_MIN_HEADERS`] others); a plan with more reads the map.
pub const PER_HEADER_SLOTS: usize = 8;

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
    /// Raw counter names (DESIGN.md "Observability"), defined by the glue in this order.
    pub metrics: Vec<String>,
    /// Raw gauge names, defined by the glue in this order (only for configs with a schedule or a
    /// guard: the metrics of a feature exist only in configs that use it).
    pub gauges: Vec<String>,
    /// The guards of guarded split rules.
    pub guards: Vec<Guard>,
    /// Every version a guarded rule can give, stable included: what its guard counts.
    pub watches: Vec<Watch>,
    /// Each entry of a scheduled or guarded split, for its live-percent gauge.
    pub split_gauges: Vec<SplitGauge>,
    /// `claims.metadata_key`, when the plan reads claims (else claims are never fetched).
    pub claims_key: Option<String>,
    /// When the plan reads the body (else no request is ever held for it).
    pub body: Option<BodySpec>,
    /// Every JSON pointer the plan reads from a body (identity and conditions).
    pub body_fields: crate::body::Pointers,
    /// With `versions.<v>.model`: per version (by `VersionId`), the model a request decided to
    /// it asks for. Empty when no version has one (then nothing is rewritten, nothing held).
    pub models: Vec<Option<ModelSpec>>,
    /// Some rule has a `when.prompt` matcher: a body read for the decision yields its prompt.
    pub reads_prompt: bool,
    pub pin: Option<PinSpec>,
    /// Lower-case names of the request headers the plan reads (pseudo-headers included).
    pub headers: Vec<String>,
    /// When the plan reads the answers of LLM APIs (else no response body is ever looked at).
    pub llm: Option<LlmSpec>,
    /// Raw histogram names, defined by the glue in this order (configs with `llm`).
    pub histograms: Vec<String>,
    /// With `llm`, per decision metric (by [`MetricId`]: `None` for other metrics): the answer
    /// metrics of that rule and version.
    pub answers: Vec<Option<AnswerMetrics>>,
    /// The shadows of split rules (DESIGN.md "Shadow"), in rule order.
    pub shadows: Vec<ShadowSpec>,
    /// Where paired records go: only in a config with a shadow (a `shadow_sink` that no rule
    /// uses is checked, then left out: nothing is ever sent).
    pub sink: Option<SinkSpec>,
    /// Lanes (DESIGN.md "Lanes"): only in configs with `lane`.
    pub lane: Option<LaneSpec>,
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
    /// A top-level claim of the verified JWT payload.
    Claim(Box<str>),
    /// An RFC 6901 pointer into a JSON request body.
    Body(Box<str>),
}

/// Reading LLM answers (DESIGN.md "Reading LLM answers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmSpec {
    /// Path prefixes whose answers are read; empty: every path.
    pub paths: Vec<Box<[u8]>>,
    pub max_event_bytes: usize,
}

impl LlmSpec {
    /// Whether the answer to a request for `path` is read.
    pub fn reads(&self, path: &[u8]) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p))
    }
}

/// The answer metrics of one rule and version (DESIGN.md "Observability", v3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerMetrics {
    /// `graysplit_llm_tokens_total...kind.<input|output|cached|reasoning>`.
    pub tokens: [MetricId; 4],
    /// `graysplit_llm_answers_total...finish.<kind>`, by [`crate::llm::Finish::index`].
    pub finishes: [MetricId; 7],
    /// `graysplit_llm_first_token_ms...` and `graysplit_llm_output_tokens...`.
    pub first_token_ms: HistogramId,
    pub output_tokens: HistogramId,
}

/// A split rule's shadow (DESIGN.md "Shadow: the same question to the gray version, answers
/// paired"), compiled: a request the rule decided for stable, from a user in the cohort, under
/// one of the path prefixes, is also sent to `cluster` with the route header set to `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowSpec {
    /// The rule it belongs to (index into the plan's rules; [`Plan::rule_name`] names it).
    pub rule: usize,
    /// The version the shadow is routed to; never stable (`VersionId` 0).
    pub version: VersionId,
    /// `percent` in basis points: a user whose shadow bucket is below it is in the cohort.
    pub bound_bp: u32,
    /// `shadow.salt` as written or defaulted (the rule's salt + `:shadow`): what
    /// `graysplit.user_hash` hashes with the user id.
    pub salt: String,
    /// The salt followed by `:`, the prefix of the cohort's bucket hash.
    pub salt_colon: Box<[u8]>,
    /// The Envoy cluster the shadow call goes to.
    pub cluster: String,
    /// `:authority` of the shadow call; `None`: the request's.
    pub authority: Option<String>,
    /// Path prefixes whose requests are shadowed; empty: every path.
    pub path_prefixes: Vec<Box<[u8]>>,
    pub timeout_ms: u32,
    /// Shadows in flight at once, per worker; more are skipped.
    pub max_in_flight: u32,
    /// A request body longer than this is not shadowed.
    pub max_bytes: usize,
    /// The most of one SSE event, or of one JSON answer, kept to read either answer:
    /// `llm.max_event_bytes`, or its default in a config without `llm` (a shadow reads both
    /// answers whether or not `llm` is set).
    pub max_event_bytes: usize,
    pub metrics: ShadowMetrics,
    /// The slot of `x-graysplit-shadow`: a request that carries it is already a shadow and is
    /// never shadowed again.
    pub marker_slot: HeaderSlot,
    /// The histogram `graysplit_shadow_similarity_pct.rule.<r>`.
    pub similarity: HistogramId,
}

impl ShadowSpec {
    /// Whether a request for `path` may be shadowed.
    pub fn covers(&self, path: &[u8]) -> bool {
        self.path_prefixes.is_empty() || self.path_prefixes.iter().any(|p| path.starts_with(p))
    }

    /// Whether `user` is in the shadow cohort: `murmur3_x86_32(salt + ":" + user) mod 10000`
    /// below `percent x 100`.
    pub fn in_cohort(&self, user: &[u8]) -> bool {
        crate::bucket::bucket(&self.salt_colon, user) < self.bound_bp
    }
}

/// `graysplit_shadow_total.rule.<r>.result.<result>`, one counter per result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShadowMetrics {
    pub sent: MetricId,
    pub paired: MetricId,
    pub shadow_failed: MetricId,
    pub timed_out: MetricId,
    pub skipped_busy: MetricId,
    pub skipped_size: MetricId,
    pub sink_failed: MetricId,
}

/// What a hop does with lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneMode {
    /// The mesh's edge: every decision is written into the request's baggage, signed.
    Edge,
    /// A hop inside the mesh: a lane that verifies decides the request.
    Follow,
}

/// `lane`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSpec {
    pub mode: LaneMode,
    /// The baggage member's key (default `graysplit`).
    pub baggage_key: String,
    /// The signing key first, then `previous_keys` (a follower verifies with any).
    pub keys: Vec<Box<[u8]>>,
    /// The same keys, keyed once for HMAC-SHA256.
    pub signers: Vec<crate::lane::Signer>,
    /// How long an issued lane holds (edge).
    pub ttl_s: u32,
    /// Follow: the sources a lane is taken from; empty: any.
    pub trusted: Vec<Cidr>,
    /// The `baggage` header's slot.
    pub slot: HeaderSlot,
    pub metrics: LaneMetrics,
    /// Follow: `graysplit_decisions_total.rule.lane.version.<v>`, by version.
    pub decided: Vec<MetricId>,
}

/// `graysplit_lane_total.result.<result>`, one counter per result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaneMetrics {
    pub issued: MetricId,
    pub followed: MetricId,
    pub forged: MetricId,
    pub expired: MetricId,
    pub untrusted: MetricId,
    pub absent: MetricId,
    pub too_long: MetricId,
}

/// `shadow_sink`, compiled: where paired records are POSTed as OTLP/HTTP JSON logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub cluster: String,
    /// Starts with `/`; default `/v1/logs`.
    pub path: String,
    /// `:authority` of the POST; default the cluster's name.
    pub authority: String,
    /// Records carry the answer texts (`primary.text`, `shadow.text`).
    pub capture_text: bool,
    /// Records per POST (or whatever is pending at least every second).
    pub batch: u32,
}

/// `versions.<v>.model` (DESIGN.md "Prompt matchers and versions as models").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// As configured.
    pub name: String,
    /// As a JSON string literal, quotes included: what replaces the body's `model` value.
    pub literal: Box<[u8]>,
    /// `graysplit_model_rewrites_total.version.<v>.result.rewritten` and `.skipped`.
    pub rewritten: MetricId,
    pub skipped: MetricId,
}

/// Reading JSON request bodies (DESIGN.md "JSON request bodies").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySpec {
    /// The most of a body that is read (and held) before deciding without it.
    pub max_bytes: usize,
}

/// Session pins (DESIGN.md "Session pins").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinSpec {
    /// The cookie's base name: each split rule's pin is the cookie `<cookie>.<rule>`; a pin of
    /// the v2 format is the cookie `<cookie>` itself.
    pub cookie: String,
    pub idle_s: u32,
    /// The longest a session may last, however active (DESIGN.md "v2 corrections").
    pub max_s: u32,
    /// The signing key first, then `previous_keys` (they still verify).
    pub keys: Vec<Box<[u8]>>,
    /// `graysplit_pins_total.result.<kept|issued|ignored>`.
    pub kept_metric: MetricId,
    pub issued_metric: MetricId,
    pub ignored_metric: MetricId,
    pub(crate) scheme_slot: HeaderSlot,
    /// The longest the pin cookies of all split rules can be together passes 4 KiB: issuing one
    /// first drops the oldest others (else nothing else is read).
    pub(crate) tight: bool,
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
    Claim(Box<str>, StringMatch),
    Body(Box<str>, StringMatch),
    /// One `when.prompt` matcher.
    Prompt(PromptMatch),
}

#[derive(Debug)]
pub(crate) enum Action {
    Fixed { version: VersionId, metric: MetricId },
    Split(Split),
}

/// A `split` rule: entry i owns the buckets from the sum of the earlier entries' basis points to
/// that sum plus its own; the rest goes to `stable`.
#[derive(Debug)]
pub(crate) struct Split {
    pub salt_colon: Box<[u8]>,
    pub entries: Vec<Entry>,
    pub stable_metric: MetricId,
    /// Some entry follows a schedule: the decision reads the clock. A split without one never
    /// does (it costs what a v1 split cost).
    pub scheduled: bool,
    /// The rule's guard, if any.
    pub guard: Option<GuardId>,
    /// What the guard counts for responses the rule sent to stable.
    pub stable_watch: Option<WatchId>,
    /// The rule's shadow, if any.
    pub shadow: Option<ShadowId>,
    /// With session pins: this rule's pin cookie, `<session_pin.cookie>.<rule>`.
    pub pin_cookie: Option<Box<str>>,
}

/// One `split[]` entry.
#[derive(Debug)]
pub(crate) struct Entry {
    pub version: VersionId,
    pub metric: MetricId,
    pub share: Share,
    /// What the rule's guard counts for this version (when the rule has a guard).
    pub watch: Option<WatchId>,
}

/// An entry's share of the buckets, in basis points (hundredths of a percent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    Fixed(u32),
    /// `at` strictly increasing, basis points non-decreasing; 0 before the first step.
    Schedule(Vec<Step>),
}

/// A step of a schedule: from `at` (Unix nanoseconds) on, `bp` basis points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub at: i64,
    pub bp: u32,
}

impl Share {
    /// The basis points at time `now` (DESIGN.md "Schedules": the last step with `at <= now`,
    /// 0 before the first).
    pub fn at(&self, now: i64) -> u32 {
        match self {
            Share::Fixed(bp) => *bp,
            Share::Schedule(steps) => {
                let live = steps.partition_point(|s| s.at <= now);
                live.checked_sub(1).and_then(|i| steps.get(i)).map_or(0, |s| s.bp)
            }
        }
    }

    /// The index of the step live at `now`, if one is.
    pub fn live_step(&self, now: i64) -> Option<usize> {
        match self {
            Share::Fixed(_) => None,
            Share::Schedule(steps) => steps.partition_point(|s| s.at <= now).checked_sub(1),
        }
    }
}

/// A rule's guard (DESIGN.md "Guards"), compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub rule: usize,
    /// `max_error_percent` in basis points: a version trips above it.
    pub max_error_bp: u32,
    pub min_requests: u32,
    pub window_s: u32,
    pub statuses: Statuses,
    pub slow_ms: Option<u32>,
    pub attempt: u64,
    /// The plan reads answers (`llm`): the guard counts answers at their end, with the fields
    /// below.
    pub answers: bool,
    pub first_token_ms: Option<u32>,
    /// The endings that count as errors, a bit per [`crate::llm::Finish::index`].
    pub finishes: u8,
    /// `max_output_ratio` in hundredths.
    pub max_output_ratio: Option<u32>,
    /// Every field of the guard as written, canonical: a config whose guard for the rule has
    /// the same fingerprint keeps its trips; another fingerprint re-arms it.
    pub fingerprint: String,
}

/// Which response statuses count as errors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Statuses {
    pub any_5xx: bool,
    pub any_4xx: bool,
    /// Single codes, sorted.
    pub codes: Vec<u16>,
}

impl Guard {
    /// Whether an answer that ended `finish` counts as an error.
    pub fn finish_is_error(&self, finish: crate::llm::Finish) -> bool {
        self.answers && self.finishes & (1 << finish.index()) != 0
    }
}

impl Statuses {
    pub fn is_error(&self, status: u16) -> bool {
        (self.any_5xx && (500..600).contains(&status))
            || (self.any_4xx && (400..500).contains(&status))
            || self.codes.binary_search(&status).is_ok()
    }
}

/// One version of a guarded rule, stable included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub guard: GuardId,
    pub rule: usize,
    pub version: VersionId,
    /// The rule's stable (its baseline; it never trips).
    pub stable: bool,
    /// `graysplit_guard_responses_total.rule.<r>.version.<v>.result.ok` and `.error`.
    pub ok_metric: MetricId,
    pub error_metric: MetricId,
    /// For a gray version: `graysplit_guard_trips_total...` and the gauge
    /// `graysplit_guard_tripped...`.
    pub trips_metric: Option<MetricId>,
    pub tripped_gauge: Option<GaugeId>,
}

/// The live-percent gauge of one entry of a scheduled or guarded split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitGauge {
    pub rule: usize,
    pub entry: usize,
    pub gauge: GaugeId,
    pub watch: Option<WatchId>,
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

    /// For a split rule: each band as (version, first bucket, end bucket) at time `now`, then
    /// stable's.
    pub fn split_bands(&self, rule: usize, now: i64) -> Option<Vec<(&str, u32, u32)>> {
        let split = self.split(rule)?;
        let name = |v: VersionId| self.versions.get(v).map_or("", String::as_str);
        let mut lo = 0;
        let mut out = Vec::with_capacity(split.entries.len() + 1);
        for e in &split.entries {
            let hi = lo + e.share.at(now);
            out.push((name(e.version), lo, hi));
            lo = hi;
        }
        out.push((name(0), lo, BUCKETS));
        Some(out)
    }

    pub(crate) fn split(&self, rule: usize) -> Option<&Split> {
        match &self.rules.get(rule)?.action {
            Action::Split(s) => Some(s),
            Action::Fixed { .. } => None,
        }
    }

    /// A split rule's entries: (version, share, watch), for the CLI and the glue's gauges.
    pub fn split_entries(&self, rule: usize) -> Vec<(&str, &Share, Option<WatchId>)> {
        let name = |v: VersionId| self.versions.get(v).map_or("", String::as_str);
        self.split(rule)
            .map(|s| s.entries.iter().map(|e| (name(e.version), &e.share, e.watch)).collect())
            .unwrap_or_default()
    }

    /// The guard of rule `rule`, if it has one.
    pub fn rule_guard(&self, rule: usize) -> Option<&Guard> {
        self.split(rule)?.guard.and_then(|g| self.guards.get(g))
    }

    /// The shadow of rule `rule`, if it has one.
    pub fn rule_shadow(&self, rule: usize) -> Option<&ShadowSpec> {
        self.split(rule)?.shadow.and_then(|s| self.shadows.get(s))
    }

    /// The model a request decided to version `v` asks for, if `versions` gives it one.
    pub fn model(&self, v: VersionId) -> Option<&ModelSpec> {
        self.models.get(v)?.as_ref()
    }

    /// The name of version `v`.
    pub fn version_name(&self, v: VersionId) -> &str {
        self.versions.get(v).map_or("", String::as_str)
    }

    /// The name of rule `rule`.
    pub fn rule_name(&self, rule: usize) -> &str {
        self.rules.get(rule).map_or("", |r| r.name.as_str())
    }

    /// Each split rule's pin cookie name (with session pins).
    pub fn pin_cookie_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| match &r.action {
            Action::Split(s) => s.pin_cookie.as_deref(),
            Action::Fixed { .. } => None,
        })
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
            Some(IdSource::Claim(n)) => Some(("claim", n.to_string())),
            Some(IdSource::Body(p)) => Some(("body", p.to_string())),
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
            Cond::Claim(n, sm) => format!("verified claim {} {}", quote(n), m(sm)),
            Cond::Body(p, sm) => format!("JSON body field {} {}", quote(p), m(sm)),
            Cond::Prompt(PromptMatch::ContainsAny(l)) => format!(
                "the prompt contains one of [{}] (case folded)",
                l.iter().map(|n| quote(n)).collect::<Vec<_>>().join(", ")
            ),
            Cond::Prompt(PromptMatch::Regex(r)) => format!("the prompt matches regex {}", quote(r.as_str())),
            Cond::Prompt(PromptMatch::MinChars(n)) => format!("the prompt has at least {n} characters"),
            Cond::Prompt(PromptMatch::MaxChars(n)) => format!("the prompt has at most {n} characters"),
        }
    }
}
