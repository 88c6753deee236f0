//! Validation and compilation: a [`RawConfig`] becomes a [`Plan`] or one [`ConfigError`] that
//! names the JSON path of the first problem. Nothing of a rejected config is applied.

use super::error::{quote, ConfigError};
use super::plan::*;
use super::raw::*;
use super::time::{format_rfc3339, parse_rfc3339};
use super::validate::*;
use super::DEFAULT_ROUTE_HEADER;
use crate::bucket::BUCKETS;
use crate::matcher::cidr::Cidr;
use crate::matcher::StringMatch;
use crate::text::fmt_num;

/// Rule names reserved for the metrics of the override and of the no-rule decision.
pub(super) const RESERVED_RULE_NAMES: [&str; 2] = ["override", "default"];
const MAX_AGE_RANGE: std::ops::RangeInclusive<u64> = 60..=63_072_000;

struct Builder {
    versions: Vec<String>,
    metrics: Vec<String>,
    gauges: Vec<String>,
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

    /// `<family>.rule.<rule>.version.<version>`.
    fn named(&self, family: &str, rule: &str, version: VersionId) -> String {
        let v = self.versions.get(version).map_or("", String::as_str);
        format!("{family}.rule.{rule}.version.{v}")
    }

    fn metric(&mut self, rule: &str, version: VersionId) -> MetricId {
        let name = self.named("graysplit_decisions_total", rule, version);
        intern(&mut self.metrics, &name)
    }

    /// What guard `guard` of rule `rule` counts for `version`, and its metrics.
    fn watch(
        &mut self,
        guard: GuardId,
        rule: usize,
        rule_name: &str,
        version: VersionId,
        stable: bool,
    ) -> Watch {
        let responses = self.named("graysplit_guard_responses_total", rule_name, version);
        let ok_metric = intern(&mut self.metrics, &format!("{responses}.result.ok"));
        let error_metric = intern(&mut self.metrics, &format!("{responses}.result.error"));
        let (trips_metric, tripped_gauge) = if stable {
            (None, None)
        } else {
            let trips = self.named("graysplit_guard_trips_total", rule_name, version);
            let tripped = self.named("graysplit_guard_tripped", rule_name, version);
            (Some(intern(&mut self.metrics, &trips)), Some(intern(&mut self.gauges, &tripped)))
        };
        Watch { guard, rule, version, stable, ok_metric, error_metric, trips_metric, tripped_gauge }
    }
}

pub(super) fn compile(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, ConfigError> {
    let mut b = Builder {
        versions: Vec::new(),
        metrics: vec![
            "graysplit_override_total.result.accepted".to_string(),
            "graysplit_override_total.result.rejected".to_string(),
        ],
        gauges: Vec::new(),
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
    if let Some(Obj(id)) = raw.identity {
        for (i, Obj(src)) in id.from.unwrap_or_default().into_iter().enumerate() {
            let path = format!("identity.from[{i}]");
            identity.push(match (src.header, src.cookie, src.query, src.claim, src.body) {
                (Some(h), None, None, None, None) => {
                    IdSource::Header(b.slot(&header_name(&(path + ".header"), h)?))
                }
                (None, Some(c), None, None, None) => {
                    IdSource::Cookie(cookie_name(&(path + ".cookie"), c)?.into_bytes().into())
                }
                (None, None, Some(q), None, None) => {
                    IdSource::Query(non_empty(&(path + ".query"), q)?.into_bytes().into())
                }
                (None, None, None, Some(c), None) => {
                    IdSource::Claim(non_empty(&(path + ".claim"), c)?.into())
                }
                (None, None, None, None, Some(p)) => {
                    IdSource::Body(json_pointer(&(path + ".body"), p)?.into())
                }
                _ => {
                    return Err(ConfigError::new(
                        path,
                        "give exactly one of `header`, `cookie`, `query`, `claim`, `body`",
                    ))
                }
            });
        }
        if let Some(Obj(s)) = id.sticky_cookie {
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
    let llm = raw.llm.map(|Obj(l)| compile_llm(l)).transpose()?;
    let sink = raw.shadow_sink.map(|Obj(s)| compile_sink(s)).transpose()?;
    // A shadow reads both answers with the `llm` readers whether or not `llm` is set.
    let max_event_bytes = llm.as_ref().map_or(MAX_EVENT_BYTES_DEFAULT as usize, |l| l.max_event_bytes);

    // Rules, first pass: everything but metrics, so every version is known before the
    // override's metrics are named.
    let raw_rules = raw.rules.unwrap_or_default();
    let mut rules = Vec::with_capacity(raw_rules.len());
    let mut guards: Vec<Guard> = Vec::new();
    let mut shadows: Vec<ShadowSpec> = Vec::new();
    for (i, Obj(r)) in raw_rules.into_iter().enumerate() {
        let RawRule { name, when, version, split, salt, starts_at, expires_at, enabled, guard, shadow } = r;
        let at = |field: &str| format!("rules[{i}].{field}");
        check_rule_name(&at("name"), &name)?;
        if let Some(j) = rules.iter().position(|x: &Rule| x.name == name) {
            return Err(ConfigError::new(
                at("name"),
                format!("duplicate rule name {} (also rules[{j}])", quote(&name)),
            ));
        }
        let time = |field: &str, t: Option<&str>| {
            t.map(|t| parse_rfc3339(t).map_err(|e| ConfigError::new(at(field), e))).transpose()
        };
        let starts_at = time("starts_at", starts_at.as_deref())?;
        let expires_at = time("expires_at", expires_at.as_deref())?;
        if let (Some(s), Some(e)) = (starts_at, expires_at) {
            if e <= s {
                return Err(ConfigError::new(at("expires_at"), "must be later than starts_at"));
            }
        }
        let when = match when {
            Some(Obj(w)) => compile_when(&mut b, i, w, has_identity)?,
            None => Vec::new(),
        };
        let salt = match salt {
            Some(s) => non_empty(&at("salt"), s)?,
            None => name.clone(),
        };
        if guard.is_some() && split.is_none() {
            return Err(ConfigError::new(
                at("guard"),
                "only a `split` rule can have a guard (it watches the versions the split gives)",
            ));
        }
        if shadow.is_some() && split.is_none() {
            return Err(ConfigError::new(
                at("shadow"),
                "only a `split` rule can have a shadow (it shadows the users the split keeps on stable)",
            ));
        }
        let action = match (version, split) {
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
                let shadow = shadow.map(|Obj(s)| (s, salt.clone()));
                let mut split = compile_split(&mut b, i, split, salt)?;
                if let Some(Obj(g)) = guard {
                    split.guard = Some(guards.len());
                    guards.push(compile_guard(i, rules.len(), g, llm.is_some())?);
                }
                if let Some((s, rule_salt)) = shadow {
                    let env = ShadowEnv {
                        stable: &raw.stable,
                        rule_salt: &rule_salt,
                        sink: sink.is_some(),
                        max_event_bytes,
                    };
                    split.shadow = Some(shadows.len());
                    shadows.push(compile_shadow(&mut b, i, rules.len(), s, &env)?);
                }
                Action::Split(split)
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
        rules.push(Rule { name, enabled: enabled.unwrap_or(true), starts_at, expires_at, when, action });
    }

    // Metrics: every (rule, version) a decision can produce, named once, up front; then what
    // the guards count and the live percents of scheduled and guarded splits.
    let mut watches: Vec<Watch> = Vec::new();
    let mut split_gauges: Vec<SplitGauge> = Vec::new();
    for (ri, rule) in rules.iter_mut().enumerate() {
        match &mut rule.action {
            Action::Fixed { version, metric } => *metric = b.metric(&rule.name, *version),
            Action::Split(split) => {
                for e in split.entries.iter_mut() {
                    e.metric = b.metric(&rule.name, e.version);
                }
                split.stable_metric = b.metric(&rule.name, 0);
                if let Some(g) = split.guard {
                    let stable = b.watch(g, ri, &rule.name, 0, true);
                    split.stable_watch = Some(watches.len());
                    watches.push(stable);
                    for e in split.entries.iter_mut() {
                        e.watch = if e.version == 0 {
                            split.stable_watch
                        } else {
                            watches.push(b.watch(g, ri, &rule.name, e.version, false));
                            Some(watches.len() - 1)
                        };
                    }
                }
                if split.scheduled || split.guard.is_some() {
                    for (ei, e) in split.entries.iter().enumerate() {
                        let name = b.named("graysplit_split_basis_points", &rule.name, e.version);
                        let gauge = intern(&mut b.gauges, &name);
                        split_gauges.push(SplitGauge { rule: ri, entry: ei, gauge, watch: e.watch });
                    }
                }
            }
        }
    }
    let default_metric = b.metric("default", 0);
    // Versions named in `versions` are known before the override's and the lane's metrics are.
    let version_models = compile_versions(&mut b, raw.versions.unwrap_or(Named(Vec::new())))?;

    let override_ = match raw.override_ {
        Some(Obj(o)) => {
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

    let lane = raw.lane.map(|Obj(l)| compile_lane(&mut b, l, &rules, env)).transpose()?;

    // With `llm`, every (rule, version) a decision can produce has its answer metrics too.
    let mut histograms = Vec::new();
    let mut answers = Vec::new();
    if llm.is_some() {
        let decided: Vec<(MetricId, String)> = b
            .metrics
            .iter()
            .enumerate()
            .filter_map(|(m, n)| Some((m, n.strip_prefix("graysplit_decisions_total.")?.to_string())))
            .collect();
        answers.resize(b.metrics.len(), None);
        for (m, labels) in decided {
            let mut counter =
                |family: &str, tail: &str| intern(&mut b.metrics, &format!("{family}.{labels}.{tail}"));
            let tokens = ["input", "output", "cached", "reasoning"]
                .map(|k| counter("graysplit_llm_tokens_total", &format!("kind.{k}")));
            let finishes = crate::llm::Finish::ALL
                .map(|f| counter("graysplit_llm_answers_total", &format!("finish.{}", f.name())));
            let first_token_ms = intern(&mut histograms, &format!("graysplit_llm_first_token_ms.{labels}"));
            let output_tokens = intern(&mut histograms, &format!("graysplit_llm_output_tokens.{labels}"));
            if let Some(slot) = answers.get_mut(m) {
                *slot = Some(AnswerMetrics { tokens, finishes, first_token_ms, output_tokens });
            }
        }
    }

    // With a shadow, its counters and its similarity histogram (only in configs with one).
    for s in shadows.iter_mut() {
        let rule = rules.get(s.rule).map_or("", |r| r.name.as_str());
        let mut m = |result: &str| {
            intern(&mut b.metrics, &format!("graysplit_shadow_total.rule.{rule}.result.{result}"))
        };
        s.metrics = ShadowMetrics {
            sent: m("sent"),
            paired: m("paired"),
            shadow_failed: m("shadow_failed"),
            timed_out: m("timed_out"),
            skipped_busy: m("skipped_busy"),
            skipped_size: m("skipped_size"),
            sink_failed: m("sink_failed"),
        };
        s.similarity = intern(&mut histograms, &format!("graysplit_shadow_similarity_pct.rule.{rule}"));
    }
    // A sink no rule sends to is checked above, then left out: nothing is ever sent to it.
    let sink = if shadows.is_empty() { None } else { sink };

    let conds = || rules.iter().flat_map(|r| &r.when);
    let reads_claims = identity.iter().any(|s| matches!(s, IdSource::Claim(_)))
        || conds().any(|c| matches!(c, Cond::Claim(..)));
    // Indexed by version; empty when no version has a model (nothing rewritten, nothing held).
    let mut models: Vec<Option<ModelSpec>> = Vec::new();
    for (v, m) in version_models {
        models.resize_with(b.versions.len(), || None);
        if let Some(slot) = models.get_mut(v) {
            *slot = Some(m);
        }
    }
    let reads_prompt = conds().any(|c| matches!(c, Cond::Prompt(_)));
    // `when.prompt` and a version's model read bodies too.
    let reads_body = identity.iter().any(|s| matches!(s, IdSource::Body(_)))
        || conds().any(|c| matches!(c, Cond::Body(..)))
        || reads_prompt
        || !models.is_empty();
    let claims_key = match raw.claims {
        Some(Obj(c)) => non_empty("claims.metadata_key", c.metadata_key.unwrap_or_else(|| "payload".into()))?,
        None => "payload".to_string(),
    };
    let max_bytes = match raw.body {
        Some(Obj(RawBody { max_bytes: Some(n) })) if !MAX_BYTES.contains(&n) => {
            return Err(ConfigError::new(
                "body.max_bytes",
                format!(
                    "must be between {} and {} bytes, got {n} (Envoy's default 1 MiB buffer less 64 KiB: holding more could answer 413)",
                    MAX_BYTES.start(),
                    MAX_BYTES.end()
                ),
            ))
        }
        Some(Obj(RawBody { max_bytes: Some(n) })) => n as usize,
        _ => 65_536,
    };
    let pin = match raw.session_pin {
        Some(Obj(p)) => Some(compile_pin(&mut b, p, sticky.as_ref())?),
        None => None,
    };
    let pin = pin.map(|mut spec| {
        // Each split rule's pin is a cookie of its own: `<cookie>.<rule>` (a rule name is a
        // cookie-name token). The longest such cookie: name, `=`, `2:<version>:<began>:<expires>:`
        // (times of at most 10 digits until 2286) and 64 hex digits.
        let mut longest_total = 0;
        for r in &mut rules {
            let Action::Split(split) = &mut r.action else { continue };
            let name = format!("{}.{}", spec.cookie, r.name);
            let longest_version =
                split.entries.iter().map(|e| b.versions.get(e.version).map_or(0, String::len));
            let version =
                longest_version.chain([b.versions.first().map_or(0, String::len)]).max().unwrap_or(0);
            longest_total += name.len() + 1 + 2 + version + 1 + 10 + 1 + 10 + 1 + 64;
            split.pin_cookie = Some(name.into());
        }
        spec.tight = longest_total > PIN_COOKIES_MAX;
        spec
    });
    let mut body_fields = crate::body::Pointers::default();
    for src in &identity {
        if let IdSource::Body(p) = src {
            body_fields.add(p);
        }
    }
    for c in rules.iter().flat_map(|r| &r.when) {
        if let Cond::Body(p, _) = c {
            body_fields.add(p);
        }
    }

    // The sticky cookie and the session pin are cookies too.
    let read =
        headers_read(&b.headers, &identity, sticky.is_some() || pin.is_some(), override_.as_ref(), &rules);
    let read_whole_map = read.len() >= WHOLE_MAP_MIN_HEADERS || b.headers.len() > PER_HEADER_SLOTS;
    let reads_cookies = read.contains(&"cookie");
    let cookie_slot = reads_cookies.then(|| b.slot("cookie"));
    Ok(Plan {
        lane,
        llm,
        histograms,
        answers,
        shadows,
        sink,
        read_whole_map,
        route_header,
        response_header,
        versions: b.versions,
        metrics: b.metrics,
        gauges: b.gauges,
        guards,
        watches,
        split_gauges,
        headers: b.headers,
        identity,
        sticky,
        override_,
        rules,
        default_metric,
        path_slot,
        cookie_slot,
        method_slot,
        claims_key: reads_claims.then_some(claims_key),
        body: reads_body.then_some(BodySpec { max_bytes }),
        body_fields,
        models,
        reads_prompt,
        pin,
    })
}

const MAX_BYTES: std::ops::RangeInclusive<u64> = 1024..=983_040;
/// `session_pin.max_s`: at most 30 days; the least is `idle_s`.
const MAX_S_MAX: u64 = 2_592_000;
const MAX_S_DEFAULT: u64 = 86_400;
const IDLE_S: std::ops::RangeInclusive<u64> = 10..=604_800;
/// The most all pin cookies may be together (name=value), what a browser keeps of one cookie.
pub const PIN_COOKIES_MAX: usize = 4096;
/// The least a pin key may be: 32 characters (256 bits of a random printable key).
const MIN_KEY_LEN: usize = 32;

/// `session_pin` (DESIGN.md "Session pins").
fn compile_pin(b: &mut Builder, p: RawPin, sticky: Option<&Sticky>) -> Result<PinSpec, ConfigError> {
    let cookie = cookie_name("session_pin.cookie", p.cookie)?;
    if sticky.is_some_and(|s| s.name == cookie) {
        return Err(ConfigError::new(
            "session_pin.cookie",
            format!("must differ from identity.sticky_cookie.name {}", quote(&cookie)),
        ));
    }
    if !IDLE_S.contains(&p.idle_s) {
        return Err(ConfigError::new(
            "session_pin.idle_s",
            format!("must be between {} and {} seconds, got {}", IDLE_S.start(), IDLE_S.end(), p.idle_s),
        ));
    }
    let max_s = match p.max_s {
        Some(m) if !(p.idle_s..=MAX_S_MAX).contains(&m) => {
            return Err(ConfigError::new(
                "session_pin.max_s",
                format!("must be between {} (idle_s) and {MAX_S_MAX} seconds, got {m}", p.idle_s),
            ))
        }
        Some(m) => m,
        None => MAX_S_DEFAULT.max(p.idle_s),
    };
    let keys = secrets("session_pin", p.key, p.previous_keys)?;
    let mut metric = |r: &str| intern(&mut b.metrics, &format!("graysplit_pins_total.result.{r}"));
    let (kept_metric, issued_metric, ignored_metric) = (metric("kept"), metric("issued"), metric("ignored"));
    Ok(PinSpec {
        cookie,
        idle_s: p.idle_s as u32,
        max_s: max_s as u32,
        keys,
        kept_metric,
        issued_metric,
        ignored_metric,
        scheme_slot: b.slot(":scheme"),
        tight: false,
    })
}

/// A signing key at `path`: at least [`MIN_KEY_LEN`] characters.
fn secret(path: &str, k: String) -> Result<Box<[u8]>, ConfigError> {
    let n = k.chars().count();
    if n < MIN_KEY_LEN {
        return Err(ConfigError::new(
            path,
            format!("must be at least {MIN_KEY_LEN} characters (a random secret), got {n}"),
        ));
    }
    Ok(k.into_bytes().into())
}

/// `<at>.key` then `<at>.previous_keys`: the keys that sign (the first) and verify (all).
fn secrets(at: &str, key: String, previous: Option<Vec<String>>) -> Result<Vec<Box<[u8]>>, ConfigError> {
    let mut keys = vec![secret(&format!("{at}.key"), key)?];
    for (i, k) in previous.unwrap_or_default().into_iter().enumerate() {
        keys.push(secret(&format!("{at}.previous_keys[{i}]"), k)?);
    }
    Ok(keys)
}

/// A key read from environment variable `name`: at least [`MIN_KEY_LEN`] characters (the
/// message names the variable, never its value).
fn env_secret(path: &str, name: &str, k: String) -> Result<String, ConfigError> {
    if k.chars().count() < MIN_KEY_LEN {
        return Err(ConfigError::new(
            path,
            format!("{} must hold at least {MIN_KEY_LEN} characters (a random secret)", quote(name)),
        ));
    }
    Ok(k)
}

/// The name of an environment variable: `[A-Za-z_][A-Za-z0-9_]*`, at most 256 characters; not
/// `ISTIO_META_*` (pilot-agent sends those to istiod).
fn env_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .enumerate()
            .all(|(i, c)| c == b'_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if !ok {
        return Err(ConfigError::new(
            path,
            format!("must be an environment variable's name ([A-Za-z_][A-Za-z0-9_]*), got {}", quote(name)),
        ));
    }
    if name.starts_with("ISTIO_META_") {
        return Err(ConfigError::new(
            path,
            "must not start with ISTIO_META_: pilot-agent sends those to istiod",
        ));
    }
    Ok(())
}

/// `lane.ttl_s`: from 10 s to a day.
const LANE_TTL_S: std::ops::RangeInclusive<u64> = 10..=86_400;
const LANE_TTL_S_DEFAULT: u64 = 300;
/// The rule name of decisions a lane made (in configs with `lane`).
pub const LANE_RULE: &str = "lane";

/// `lane` (DESIGN.md "Lanes").
fn compile_lane(
    b: &mut Builder,
    l: RawLane,
    rules: &[Rule],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LaneSpec, ConfigError> {
    let mode = match l.mode.as_str() {
        "edge" => LaneMode::Edge,
        "follow" => LaneMode::Follow,
        other => {
            return Err(ConfigError::new(
                "lane.mode",
                format!("must be \"edge\" (the mesh's entry: issue lanes) or \"follow\" (a hop inside: follow them), got {}", quote(other)),
            ))
        }
    };
    let baggage_key = l.baggage_key.unwrap_or_else(|| "graysplit".to_string());
    if baggage_key.is_empty() || baggage_key.len() > 64 || !baggage_key.bytes().all(is_tchar) {
        return Err(ConfigError::new(
            "lane.baggage_key",
            format!("must be 1 to 64 token characters (a W3C baggage key), got {}", quote(&baggage_key)),
        ));
    }
    let key = match (l.key, l.key_env) {
        (Some(k), None) => k,
        (None, Some(name)) => {
            env_name("lane.key_env", &name)?;
            let Some(k) = env(&name) else {
                return Err(ConfigError::new(
                    "lane.key_env",
                    format!("{} is not set in the proxy's environment (list it in the WasmPlugin's vmConfig.env with valueFrom: HOST, and set it on the proxy from the Secret)", quote(&name)),
                ));
            };
            env_secret("lane.key_env", &name, k)?
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::new("lane.key_env", "give `key` or `key_env`, not both"));
        }
        (None, None) => {
            return Err(ConfigError::new(
                "lane.key",
                "is required (or `key_env`, the environment variable that holds it)",
            ));
        }
    };
    let mut keys = secrets("lane", key, l.previous_keys)?;
    for (i, name) in l.previous_keys_env.unwrap_or_default().iter().enumerate() {
        let at = format!("lane.previous_keys_env[{i}]");
        env_name(&at, name)?;
        // Unset or empty between rotations: no key from it.
        if let Some(k) = env(name).filter(|k| !k.is_empty()) {
            keys.push(env_secret(&at, name, k)?.into_bytes().into());
        }
    }
    let ttl_s = in_range("lane.ttl_s", l.ttl_s, LANE_TTL_S_DEFAULT, LANE_TTL_S, " seconds")?;
    let trusted = match (mode, l.trusted_cidrs) {
        (LaneMode::Edge, Some(_)) => {
            return Err(ConfigError::new(
                "lane.trusted_cidrs",
                "only with mode \"follow\" (it says from where a follower takes lanes; an edge issues them to every request)",
            ))
        }
        (_, Some(list)) if list.is_empty() => {
            return Err(ConfigError::new(
                "lane.trusted_cidrs",
                "must list at least one range (leave it out to take lanes from any source)",
            ))
        }
        (_, list) => cidrs("lane.trusted_cidrs", &list.unwrap_or_default())?,
    };
    if let Some(i) = rules.iter().position(|r| r.name == LANE_RULE) {
        return Err(ConfigError::new(
            format!("rules[{i}].name"),
            format!(
                "{} is reserved for decisions by a lane in a config with `lane`; pick another name",
                quote(LANE_RULE)
            ),
        ));
    }
    let mut metric = |r: &str| intern(&mut b.metrics, &format!("graysplit_lane_total.result.{r}"));
    let metrics = LaneMetrics {
        issued: metric("issued"),
        followed: metric("followed"),
        forged: metric("forged"),
        expired: metric("expired"),
        untrusted: metric("untrusted"),
        absent: metric("absent"),
        too_long: metric("too_long"),
    };
    let decided = match mode {
        LaneMode::Follow => (0..b.versions.len()).map(|v| b.metric(LANE_RULE, v)).collect(),
        LaneMode::Edge => Vec::new(),
    };
    let signers = keys.iter().filter_map(|k| crate::lane::Signer::new(k)).collect();
    Ok(LaneSpec {
        mode,
        baggage_key,
        keys,
        signers,
        ttl_s: ttl_s as u32,
        trusted,
        slot: b.slot("baggage"),
        metrics,
        decided,
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
            IdSource::Claim(_) | IdSource::Body(_) => continue,
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
            Cond::Sources(_) | Cond::Users(_) | Cond::Claim(..) | Cond::Body(..) | Cond::Prompt(_) => {
                continue
            }
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
    for (j, Obj(m)) in w.headers.unwrap_or_default().into_iter().enumerate() {
        let path = format!("rules[{i}].when.headers[{j}]");
        let name = header_name(&format!("{path}.name"), m.name.clone())?;
        let sm = string_match(&path, m)?;
        conds.push(Cond::Header(b.slot(&name), sm));
    }
    for (j, Obj(m)) in w.cookies.unwrap_or_default().into_iter().enumerate() {
        let path = format!("rules[{i}].when.cookies[{j}]");
        let name = cookie_name(&format!("{path}.name"), m.name.clone())?;
        conds.push(Cond::Cookie(name.into_bytes().into(), string_match(&path, m)?));
    }
    for (j, Obj(m)) in w.query.unwrap_or_default().into_iter().enumerate() {
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
        users.sort_unstable();
        users.dedup();
        conds.push(Cond::Users(users));
    }
    // Claims and bodies last: the costliest to read (a property, a held body).
    for (j, Obj(m)) in w.claims.unwrap_or_default().into_iter().enumerate() {
        let path = format!("rules[{i}].when.claims[{j}]");
        let name = non_empty(&format!("{path}.name"), m.name.clone())?;
        conds.push(Cond::Claim(name.into(), string_match(&path, m)?));
    }
    for (j, Obj(m)) in w.body.unwrap_or_default().into_iter().enumerate() {
        let path = format!("rules[{i}].when.body[{j}]");
        let pointer = json_pointer(&format!("{path}.pointer"), m.pointer.clone())?;
        conds.push(Cond::Body(pointer.into(), string_match(&path, m.into())?));
    }
    if let Some(list) = w.prompt {
        if list.is_empty() {
            return Err(ConfigError::new(at("prompt"), NEVER_MATCHES));
        }
        for (j, Obj(m)) in list.into_iter().enumerate() {
            conds.push(Cond::Prompt(prompt_match(&format!("rules[{i}].when.prompt[{j}]"), m)?));
        }
    }
    Ok(conds)
}

/// The most `min_chars` and `max_chars` may say: a prompt is never longer than the longest body
/// read.
const PROMPT_CHARS_MAX: u64 = *MAX_BYTES.end();

/// A `when.prompt` matcher (DESIGN.md "Prompt matchers and versions as models").
fn prompt_match(path: &str, m: RawPrompt) -> Result<PromptMatch, ConfigError> {
    let given = [m.contains_any.is_some(), m.regex.is_some(), m.min_chars.is_some(), m.max_chars.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::new(
            path,
            "give exactly one of `contains_any`, `regex`, `min_chars`, `max_chars` (list several matchers to need them all)",
        ));
    }
    let chars = |field: &str, n: u64| {
        if n > PROMPT_CHARS_MAX {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("must be at most {PROMPT_CHARS_MAX} characters (the most of a body read), got {n}"),
            ));
        }
        Ok(n as usize)
    };
    Ok(if let Some(list) = m.contains_any {
        if list.is_empty() {
            return Err(ConfigError::new(format!("{path}.contains_any"), NEVER_MATCHES));
        }
        let mut needles = Vec::with_capacity(list.len());
        for (k, n) in list.into_iter().enumerate() {
            if n.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.contains_any[{k}]"),
                    "must not be empty (it would match every prompt)",
                ));
            }
            needles.push(n.to_lowercase().into());
        }
        PromptMatch::ContainsAny(needles)
    } else if let Some(r) = m.regex {
        PromptMatch::Regex(
            crate::body::prompt::compile_regex(&r)
                .map_err(|e| ConfigError::new(format!("{path}.regex"), e))?,
        )
    } else if let Some(n) = m.min_chars {
        PromptMatch::MinChars(chars("min_chars", n)?)
    } else {
        PromptMatch::MaxChars(chars("max_chars", m.max_chars.unwrap_or(0))?)
    })
}

/// The most a `versions.<v>.model` may be (UTF-8 bytes).
const MODEL_MAX: usize = 256;

/// `versions`: each version named there made known, and its model (with its two counters).
fn compile_versions(
    b: &mut Builder,
    versions: Named<RawVersion>,
) -> Result<Vec<(VersionId, ModelSpec)>, ConfigError> {
    let mut models = Vec::new();
    for (name, v) in versions.0 {
        let mut path = "versions".to_string();
        super::error::push_key(&mut path, &name);
        check_version(&path, &name)?;
        let id = b.version(&name);
        let Some(model) = v.model else { continue };
        if model.is_empty() || model.len() > MODEL_MAX || model.chars().any(char::is_control) {
            return Err(ConfigError::new(
                format!("{path}.model"),
                format!(
                    "must be a model name of 1 to {MODEL_MAX} bytes without control characters, got {}",
                    quote(&model)
                ),
            ));
        }
        let counter = |result: &str| format!("graysplit_model_rewrites_total.version.{name}.result.{result}");
        let rewritten = intern(&mut b.metrics, &counter("rewritten"));
        let skipped = intern(&mut b.metrics, &counter("skipped"));
        let literal = crate::body::model::literal(&model);
        models.push((id, ModelSpec { name: model, literal, rewritten, skipped }));
    }
    Ok(models)
}

fn compile_split(
    b: &mut Builder,
    i: usize,
    split: Vec<Obj<RawSplit>>,
    salt: String,
) -> Result<Split, ConfigError> {
    if split.is_empty() {
        return Err(ConfigError::new(format!("rules[{i}].split"), "must list at least one version"));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(split.len());
    for (j, Obj(s)) in split.into_iter().enumerate() {
        let at = |field: &str| format!("rules[{i}].split[{j}].{field}");
        check_version(&at("version"), &s.version)?;
        let version = b.version(&s.version);
        if entries.iter().any(|x| x.version == version) {
            return Err(ConfigError::new(
                at("version"),
                format!("{} is listed twice in this split", quote(&s.version)),
            ));
        }
        let share = match (s.percent, s.schedule) {
            (Some(p), None) => {
                Share::Fixed(percent_to_basis_points(p).map_err(|e| ConfigError::new(at("percent"), e))?)
            }
            (None, Some(steps)) => compile_schedule(&at("schedule"), steps)?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("rules[{i}].split[{j}]"),
                    "has both `percent` and `schedule`; give exactly one",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(at("percent"), "is required (or give a `schedule`)"))
            }
        };
        entries.push(Entry { version, metric: 0, share, watch: None });
    }
    check_split_sum(i, &entries)?;
    let scheduled = entries.iter().any(|e| matches!(e.share, Share::Schedule(_)));
    let mut salt_colon = salt.into_bytes();
    salt_colon.push(b':');
    Ok(Split {
        salt_colon: salt_colon.into(),
        entries,
        stable_metric: 0,
        scheduled,
        guard: None,
        pin_cookie: None,
        stable_watch: None,
        shadow: None,
    })
}

/// `split[].schedule`: a non-empty list of `{"at", "percent"}`, `at` strictly increasing,
/// `percent` non-decreasing (a schedule only widens: a rollback is a config change, or a guard).
fn compile_schedule(path: &str, steps: Vec<Obj<RawStep>>) -> Result<Share, ConfigError> {
    if steps.is_empty() {
        return Err(ConfigError::new(path, "must list at least one step"));
    }
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for (k, Obj(step)) in steps.into_iter().enumerate() {
        let at = |field: &str| format!("{path}[{k}].{field}");
        let t = parse_rfc3339(&step.at).map_err(|e| ConfigError::new(at("at"), e))?;
        let bp = percent_to_basis_points(step.percent).map_err(|e| ConfigError::new(at("percent"), e))?;
        if let Some(prev) = out.last() {
            if t <= prev.at {
                return Err(ConfigError::new(
                    at("at"),
                    format!(
                        "must be later than the step before it ({}), got {}",
                        format_rfc3339(prev.at),
                        quote(&step.at)
                    ),
                ));
            }
            if bp < prev.bp {
                return Err(ConfigError::new(
                    at("percent"),
                    format!(
                        "must not be below the step before it ({}), got {}: a schedule only widens (roll back with a config change or a guard)",
                        fmt_bp(prev.bp),
                        fmt_bp(bp)
                    ),
                ));
            }
        }
        out.push(Step { at: t, bp });
    }
    Ok(Share::Schedule(out))
}

/// The split's percents may not add up to more than 100 at any time: checked at every step of
/// every schedule (and for fixed percents alone), reported at the entry where the sum first
/// goes over, at the first time it does.
fn check_split_sum(i: usize, entries: &[Entry]) -> Result<(), ConfigError> {
    // Every step time, in order, once (a sorted insert: a split has few steps).
    let mut times: Vec<i64> = vec![i64::MIN];
    for e in entries {
        if let Share::Schedule(steps) = &e.share {
            for s in steps {
                if let Err(pos) = times.binary_search(&s.at) {
                    times.insert(pos, s.at);
                }
            }
        }
    }
    for t in times {
        let mut sum = 0;
        for (j, e) in entries.iter().enumerate() {
            sum += e.share.at(t);
            if sum > BUCKETS {
                let (path, when) = match (&e.share, e.share.live_step(t)) {
                    (Share::Schedule(_), Some(k)) => (
                        format!("rules[{i}].split[{j}].schedule[{k}].percent"),
                        format!(" from {}", format_rfc3339(t)),
                    ),
                    _ => (format!("rules[{i}].split[{j}].percent"), String::new()),
                };
                return Err(ConfigError::new(
                    path,
                    format!(
                        "the percents of rules[{i}].split add up to {}{when}, more than 100",
                        fmt_bp(sum)
                    ),
                ));
            }
        }
    }
    Ok(())
}

const MAX_EVENT_BYTES: std::ops::RangeInclusive<u64> = 4096..=1_048_576;
const MAX_EVENT_BYTES_DEFAULT: u64 = 65_536;

/// `llm` (DESIGN.md "Reading LLM answers").
fn compile_llm(l: RawLlm) -> Result<LlmSpec, ConfigError> {
    let max = in_range(
        "llm.max_event_bytes",
        l.max_event_bytes,
        MAX_EVENT_BYTES_DEFAULT,
        MAX_EVENT_BYTES,
        " bytes",
    )?;
    let paths = match l.paths {
        Some(list) => {
            path_prefixes("llm.paths", list, "leave `paths` out to read the answers of every path")?
        }
        None => Vec::new(),
    };
    Ok(LlmSpec { paths, max_event_bytes: max as usize })
}

const SHADOW_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
const SHADOW_TIMEOUT_MS_DEFAULT: u64 = 60_000;
const SHADOW_MAX_IN_FLIGHT: std::ops::RangeInclusive<u64> = 1..=256;
const SHADOW_MAX_IN_FLIGHT_DEFAULT: u64 = 8;
/// `shadow.max_bytes`: at most what `body.max_bytes` may be (Envoy's default 1 MiB buffer less
/// 64 KiB), at least 1 KiB as there: a smaller limit would skip nearly every chat request.
const SHADOW_MAX_BYTES: std::ops::RangeInclusive<u64> = MAX_BYTES;
const SHADOW_MAX_BYTES_DEFAULT: u64 = 262_144;
const SINK_BATCH: std::ops::RangeInclusive<u64> = 1..=1000;
const SINK_BATCH_DEFAULT: u64 = 50;
const SINK_PATH_DEFAULT: &str = "/v1/logs";

/// What a rule's shadow is checked against: the config's stable, the rule's salt (written or
/// its name), whether there is a `shadow_sink`, and how much of an answer event is read.
struct ShadowEnv<'a> {
    stable: &'a str,
    rule_salt: &'a str,
    sink: bool,
    max_event_bytes: usize,
}

/// `rules[].shadow` (DESIGN.md "Shadow: the same question to the gray version, answers
/// paired"). Its version becomes a known version of the plan (the override reaches it) whether
/// or not a split names it: a version can be shadowed before anyone is sent to it.
fn compile_shadow(
    b: &mut Builder,
    i: usize,
    rule: usize,
    s: RawShadow,
    env: &ShadowEnv<'_>,
) -> Result<ShadowSpec, ConfigError> {
    let at = |field: &str| format!("rules[{i}].shadow.{field}");
    if !env.sink {
        return Err(ConfigError::new(
            format!("rules[{i}].shadow"),
            "needs `shadow_sink`, where the paired records go: add \"shadow_sink\": {\"cluster\": \"<the Envoy cluster of your OTLP/HTTP collector>\"}",
        ));
    }
    check_version(&at("version"), &s.version)?;
    if s.version == env.stable {
        return Err(ConfigError::new(
            at("version"),
            format!(
                "must be a version other than stable {}: the shadow asks another version the question stable answers",
                quote(env.stable)
            ),
        ));
    }
    let bound_bp = percent_to_basis_points(s.percent).map_err(|e| ConfigError::new(at("percent"), e))?;
    let salt = match s.salt {
        Some(salt) if salt == env.rule_salt => {
            return Err(ConfigError::new(
                at("salt"),
                format!(
                    "must differ from the rule's salt {}: with the same salt the shadow's buckets are the split's, and the users the split keeps on stable would be shadowed only above the split's percents; leave `salt` out for {}",
                    quote(env.rule_salt),
                    quote(&format!("{}:shadow", env.rule_salt))
                ),
            ))
        }
        Some(salt) => non_empty(&at("salt"), salt)?,
        None => format!("{}:shadow", env.rule_salt),
    };
    let cluster = non_empty(&at("cluster"), s.cluster)?;
    let authority = s.authority.map(|a| authority(&at("authority"), a)).transpose()?;
    let path_prefixes = match s.path_prefixes {
        Some(list) => {
            path_prefixes(&at("path_prefixes"), list, "leave `path_prefixes` out to shadow every path")?
        }
        None => Vec::new(),
    };
    let timeout_ms =
        in_range(&at("timeout_ms"), s.timeout_ms, SHADOW_TIMEOUT_MS_DEFAULT, SHADOW_TIMEOUT_MS, " ms")?;
    let max_in_flight = in_range(
        &at("max_in_flight"),
        s.max_in_flight,
        SHADOW_MAX_IN_FLIGHT_DEFAULT,
        SHADOW_MAX_IN_FLIGHT,
        "",
    )?;
    let max_bytes =
        in_range(&at("max_bytes"), s.max_bytes, SHADOW_MAX_BYTES_DEFAULT, SHADOW_MAX_BYTES, " bytes")?;
    let mut salt_colon = salt.clone().into_bytes();
    salt_colon.push(b':');
    Ok(ShadowSpec {
        rule,
        version: b.version(&s.version),
        bound_bp,
        salt,
        salt_colon: salt_colon.into(),
        cluster,
        authority,
        path_prefixes,
        timeout_ms: timeout_ms as u32,
        max_in_flight: max_in_flight as u32,
        max_bytes: max_bytes as usize,
        max_event_bytes: env.max_event_bytes,
        metrics: ShadowMetrics::default(),
        similarity: 0,
        marker_slot: b.slot(crate::config::SHADOW_HEADER),
    })
}

/// `shadow_sink` (DESIGN.md "Shadow"): where paired records are POSTed.
fn compile_sink(s: RawSink) -> Result<SinkSpec, ConfigError> {
    let cluster = non_empty("shadow_sink.cluster", s.cluster)?;
    let path = s.path.unwrap_or_else(|| SINK_PATH_DEFAULT.to_string());
    if !path.starts_with('/') || !path.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "shadow_sink.path",
            format!(
                "must be a path starting with \"/\", in visible ASCII (percent-encode anything else), got {}",
                quote(&path)
            ),
        ));
    }
    let authority = match s.authority {
        Some(a) => authority("shadow_sink.authority", a)?,
        None if is_authority(&cluster) => cluster.clone(),
        None => {
            return Err(ConfigError::new(
                "shadow_sink.authority",
                format!(
                    "is required: the cluster's name {} is not a host or host:port, which the authority defaults to",
                    quote(&cluster)
                ),
            ))
        }
    };
    let batch = in_range("shadow_sink.batch", s.batch, SINK_BATCH_DEFAULT, SINK_BATCH, " records")?;
    Ok(SinkSpec {
        cluster,
        path,
        authority,
        capture_text: s.capture_text.unwrap_or(false),
        batch: batch as u32,
    })
}

/// A `:authority` value: a host or host:port, in visible ASCII without `/`, `?`, `#` or `@`
/// (an IPv6 literal in brackets included).
fn is_authority(a: &str) -> bool {
    !a.is_empty() && a.bytes().all(|c| c.is_ascii_graphic() && !b"/?#@".contains(&c))
}

fn authority(path: &str, a: String) -> Result<String, ConfigError> {
    if is_authority(&a) {
        Ok(a)
    } else {
        Err(ConfigError::new(
            path,
            format!("must be a host or host:port (visible ASCII, no /, ?, # or @), got {}", quote(&a)),
        ))
    }
}

const MIN_REQUESTS: std::ops::RangeInclusive<u64> = 1..=1_000_000;
const FIRST_TOKEN_MS: std::ops::RangeInclusive<u64> = 1..=600_000;
const WINDOW_S: std::ops::RangeInclusive<u64> = 5..=3600;
const SLOW_MS: std::ops::RangeInclusive<u64> = 1..=600_000;

/// `rules[].guard` (DESIGN.md "Guards").
fn compile_guard(i: usize, rule: usize, g: RawGuard, llm: bool) -> Result<Guard, ConfigError> {
    let at = |field: &str| format!("rules[{i}].guard.{field}");
    for (field, set) in [
        ("first_token_ms", g.first_token_ms.is_some()),
        ("finishes", g.finishes.is_some()),
        ("max_output_ratio", g.max_output_ratio.is_some()),
    ] {
        if set && !llm {
            return Err(ConfigError::new(
                at(field),
                "needs `llm` (answers are read only in a config with `llm`: add \"llm\": {})",
            ));
        }
    }
    let max_error_bp = percent_to_basis_points(g.max_error_percent)
        .map_err(|e| ConfigError::new(at("max_error_percent"), e))?;
    if max_error_bp == 0 {
        return Err(ConfigError::new(
            at("max_error_percent"),
            "must be above 0 (a guard that trips on the first error: write 0.01)",
        ));
    }
    let min_requests = in_range(&at("min_requests"), g.min_requests, 20, MIN_REQUESTS, "")?;
    let window_s = in_range(&at("window_s"), g.window_s, 60, WINDOW_S, "")?;
    let slow_ms = g.slow_ms.map(|ms| in_range(&at("slow_ms"), Some(ms), 0, SLOW_MS, "")).transpose()?;
    let attempt = match g.attempt {
        Some(0) => return Err(ConfigError::new(at("attempt"), "must be a positive integer, got 0")),
        Some(a) => a,
        None => 1,
    };
    let mut statuses = Statuses::default();
    match g.statuses {
        None => statuses.any_5xx = true,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(
                at("statuses"),
                "must not be empty (no response would count as an error)",
            ))
        }
        Some(list) => {
            for (k, item) in list.into_iter().enumerate() {
                match item {
                    RawStatus::Class(c) if c == "5xx" => statuses.any_5xx = true,
                    RawStatus::Class(c) if c == "4xx" => statuses.any_4xx = true,
                    RawStatus::Code(code @ 100..=599) => {
                        let code = code as u16;
                        if let Err(pos) = statuses.codes.binary_search(&code) {
                            statuses.codes.insert(pos, code);
                        }
                    }
                    other => {
                        return Err(ConfigError::new(
                            format!("rules[{i}].guard.statuses[{k}]"),
                            format!("must be \"5xx\", \"4xx\" or a status code 100..599, got {other}"),
                        ))
                    }
                }
            }
        }
    }
    let first_token_ms = match g.first_token_ms {
        Some(ms) => Some(in_range(&at("first_token_ms"), Some(ms), 0, FIRST_TOKEN_MS, "")? as u32),
        None => None,
    };
    let mut finishes = 0u8;
    let written_finishes = g.finishes.is_some();
    match g.finishes {
        None => {
            for f in [crate::llm::Finish::Error, crate::llm::Finish::Aborted] {
                finishes |= 1 << f.index();
            }
        }
        Some(list) => {
            for (k, name) in list.iter().enumerate() {
                match crate::llm::Finish::parse(name) {
                    Some(f) => finishes |= 1 << f.index(),
                    None => {
                        let names: Vec<&str> = crate::llm::Finish::ALL.iter().map(|f| f.name()).collect();
                        return Err(ConfigError::new(
                            format!("rules[{i}].guard.finishes[{k}]"),
                            format!("must be one of {}, got {}", names.join(", "), quote(name)),
                        ));
                    }
                }
            }
        }
    }
    let max_output_ratio = match g.max_output_ratio {
        Some(r) if !(1.01..=100.0).contains(&r) => {
            return Err(ConfigError::new(
                at("max_output_ratio"),
                format!("must be between 1.01 and 100, got {}", fmt_num(r)),
            ))
        }
        Some(r) => match hundredths(r) {
            Some(centi) => Some(centi),
            None => {
                return Err(ConfigError::new(
                    at("max_output_ratio"),
                    format!("at most two decimals are allowed, got {}", fmt_num(r)),
                ))
            }
        },
        None => None,
    };
    let codes: Vec<String> = statuses.codes.iter().map(u16::to_string).collect();
    let mut fingerprint = format!(
        "max_error_bp={max_error_bp} min_requests={min_requests} window_s={window_s} statuses={}{}{} slow_ms={} attempt={attempt}",
        if statuses.any_5xx { "5xx," } else { "" },
        if statuses.any_4xx { "4xx," } else { "" },
        codes.join(","),
        slow_ms.map_or("-".to_string(), |m| m.to_string()),
    );
    // The v3 fields as written (a guard without them keeps its v2 fingerprint, so adding `llm`
    // to a config leaves its guards, and their trips, as they are: DESIGN.md "Guards").
    if let Some(ms) = first_token_ms {
        fingerprint.push_str(&format!(" first_token_ms={ms}"));
    }
    if written_finishes {
        let names: Vec<&str> = crate::llm::Finish::ALL
            .iter()
            .filter(|f| finishes & (1 << f.index()) != 0)
            .map(|f| f.name())
            .collect();
        fingerprint.push_str(&format!(" finishes={}", names.join(",")));
    }
    if let Some(r) = max_output_ratio {
        fingerprint.push_str(&format!(" max_output_ratio={}", fmt_bp(r)));
    }
    Ok(Guard {
        answers: llm,
        first_token_ms,
        finishes,
        max_output_ratio,
        rule,
        max_error_bp,
        min_requests: min_requests as u32,
        window_s: window_s as u32,
        statuses,
        slow_ms: slow_ms.map(|m| m as u32),
        attempt,
        fingerprint,
    })
}

/// `percent` as hundredths of a percent, at most two decimals ([`hundredths`]).
fn percent_to_basis_points(p: f64) -> Result<u32, String> {
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("must be between 0 and 100, got {}", fmt_num(p)));
    }
    hundredths(p).ok_or_else(|| format!("at most two decimals are allowed, got {}", fmt_num(p)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
