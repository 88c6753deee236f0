//! Validation and compilation: a [`RawConfig`] becomes a [`Plan`] or one [`ConfigError`] that
//! names the JSON path of the first problem. Nothing of a rejected config is applied.

use super::error::{fmt_num, quote, ConfigError};
use super::plan::*;
use super::raw::*;
use super::time::parse_rfc3339;
use super::validate::*;
use super::DEFAULT_ROUTE_HEADER;
use crate::decide::bucket::BUCKETS;
use crate::decide::matcher::StringMatch;
use crate::request::cidr::Cidr;

/// Rule names reserved for the metrics of the override and of the no-rule decision.
pub(super) const RESERVED_RULE_NAMES: [&str; 2] = ["override", "default"];
const MAX_AGE_RANGE: std::ops::RangeInclusive<u64> = 60..=63_072_000;

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

pub(super) fn compile(raw: RawConfig) -> Result<Plan, ConfigError> {
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
    if let Some(Obj(id)) = raw.identity {
        for (i, Obj(src)) in id.from.unwrap_or_default().into_iter().enumerate() {
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

    // Rules, first pass: everything but metrics, so every version is known before the
    // override's metrics are named.
    let raw_rules = raw.rules.unwrap_or_default();
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (i, Obj(r)) in raw_rules.into_iter().enumerate() {
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
            Some(Obj(w)) => compile_when(&mut b, i, w, has_identity)?,
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
    Ok(conds)
}

fn compile_split(
    b: &mut Builder,
    i: usize,
    split: Vec<Obj<RawSplit>>,
    salt: String,
) -> Result<Action, ConfigError> {
    if split.is_empty() {
        return Err(ConfigError::new(format!("rules[{i}].split"), "must list at least one version"));
    }
    let mut bands = Vec::with_capacity(split.len());
    let mut upper: u32 = 0;
    for (j, Obj(s)) in split.into_iter().enumerate() {
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
