//! The decision: which version serves this request, and which rule said so.
//!
//! Order (DESIGN.md): a valid override first; then the rules in order, the first whose `when`
//! holds deciding; then `stable`. A pure function of the compiled plan, the request (through
//! [`Host`]) and the time.

use crate::config::{
    Action, Cond, IdSource, MetricId, Plan, Rule, VersionId, METRIC_OVERRIDE_ACCEPTED,
    METRIC_OVERRIDE_REJECTED,
};
use crate::hash::bucket;
use crate::request::{Facts, Host};

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// A trusted override header naming a known version.
    Override,
    /// The rule at this index of the plan.
    Rule(usize),
    /// No rule matched: `stable`.
    Default,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub version: VersionId,
    pub by: DecidedBy,
    /// Counter to increment: `graysplit_decisions_total.rule.<rule>.version.<version>`.
    pub metric: MetricId,
    /// `graysplit_override_total.result.<accepted|rejected>`, when an override header came.
    pub override_metric: Option<MetricId>,
    /// The bucket of the user, when a split rule decided and there was a user id.
    pub bucket: Option<u32>,
    /// `Set-Cookie` value to send back, when a sticky-cookie id was minted for this request.
    pub set_cookie: Option<String>,
}

impl Decision {
    /// The version's name.
    pub fn version_name<'p>(&self, plan: &'p Plan) -> &'p str {
        plan.versions.get(self.version).map_or("", String::as_str)
    }

    /// The deciding rule's name, or `override` / `default`.
    pub fn rule_name<'p>(&self, plan: &'p Plan) -> &'p str {
        match self.by {
            DecidedBy::Override => "override",
            DecidedBy::Default => "default",
            DecidedBy::Rule(i) => plan.rules.get(i).map_or("", |r| r.name.as_str()),
        }
    }
}

/// The user id: resolved on first need, then kept for the rest of the request.
enum Identity {
    Unresolved,
    Known(Option<Vec<u8>>),
}

struct Ctx<'a, H: Host> {
    facts: Facts<'a, H>,
    identity: Identity,
    set_cookie: Option<String>,
}

/// Decides the version for one request.
pub fn decide<H: Host>(plan: &Plan, host: &H) -> Decision {
    let mut cx = Ctx {
        facts: Facts::new(plan, host),
        identity: Identity::Unresolved,
        set_cookie: None,
    };
    let mut d = decide_inner(plan, &mut cx);
    if plan.has_identity() {
        // A visitor without an id gets one minted now, whoever decided, so the next request
        // already carries it.
        user_id(plan, &mut cx);
    }
    d.set_cookie = cx.set_cookie;
    d
}

fn decide_inner<H: Host>(plan: &Plan, cx: &mut Ctx<'_, H>) -> Decision {
    let mut override_metric = None;
    if let Some(o) = &plan.override_ {
        if let Some(value) = cx.facts.header(o.slot) {
            let version = plan.version_id(value);
            let trusted = version.is_some()
                && cx
                    .facts
                    .source()
                    .is_some_and(|ip| o.trusted.iter().any(|c| c.contains(ip)));
            match version {
                Some(v) if trusted => {
                    return Decision {
                        version: v,
                        by: DecidedBy::Override,
                        metric: o.metrics.get(v).copied().unwrap_or(plan.default_metric),
                        override_metric: Some(METRIC_OVERRIDE_ACCEPTED),
                        bucket: None,
                        set_cookie: None,
                    };
                }
                _ => override_metric = Some(METRIC_OVERRIDE_REJECTED),
            }
        }
    }
    for (i, rule) in plan.rules.iter().enumerate() {
        if !rule_applies(plan, rule, cx) {
            continue;
        }
        let (version, metric, bucket) = match &rule.action {
            Action::Fixed { version, metric } => (*version, *metric, None),
            Action::Split {
                salt_colon,
                bands,
                stable_metric,
            } => match user_id(plan, cx) {
                None => (0, *stable_metric, None),
                Some(user) => {
                    let b = bucket(salt_colon, user);
                    match bands.iter().find(|band| b < band.upper) {
                        Some(band) => (band.version, band.metric, Some(b)),
                        None => (0, *stable_metric, Some(b)),
                    }
                }
            },
        };
        return Decision {
            version,
            by: DecidedBy::Rule(i),
            metric,
            override_metric,
            bucket,
            set_cookie: None,
        };
    }
    Decision {
        version: 0,
        by: DecidedBy::Default,
        metric: plan.default_metric,
        override_metric,
        bucket: None,
        set_cookie: None,
    }
}

fn rule_applies<H: Host>(plan: &Plan, rule: &Rule, cx: &mut Ctx<'_, H>) -> bool {
    if !rule.enabled {
        return false;
    }
    if rule.starts_at.is_some() || rule.expires_at.is_some() {
        let now = cx.facts.now();
        if rule.starts_at.is_some_and(|s| now < s) || rule.expires_at.is_some_and(|e| now >= e) {
            return false;
        }
    }
    rule.when.iter().all(|c| cond_holds(plan, c, cx))
}

fn cond_holds<H: Host>(plan: &Plan, cond: &Cond, cx: &mut Ctx<'_, H>) -> bool {
    let f = &mut cx.facts;
    match cond {
        Cond::Methods(list) => f.method().is_some_and(|m| list.iter().any(|x| &x[..] == m)),
        Cond::PathPrefix(p) => f.path().starts_with(p),
        Cond::Header(slot, m) => m.matches(f.header(*slot)),
        Cond::Cookie(name, m) => m.matches(f.cookie(name)),
        Cond::Query(name, m) => m.matches(f.query(name).as_deref()),
        Cond::Sources(cidrs) => f
            .source()
            .is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip))),
        Cond::Users(sorted) => {
            user_id(plan, cx).is_some_and(|u| sorted.binary_search_by(|x| x[..].cmp(u)).is_ok())
        }
    }
}

/// The user id: the first non-empty identity source, then the sticky cookie, then a minted id.
fn user_id<'c, H: Host>(plan: &Plan, cx: &'c mut Ctx<'_, H>) -> Option<&'c [u8]> {
    if let Identity::Unresolved = cx.identity {
        let mut found = None;
        for src in &plan.identity {
            let v = match src {
                IdSource::Header(slot) => cx.facts.header(*slot).map(<[u8]>::to_vec),
                IdSource::Cookie(name) => cx.facts.cookie(name).map(<[u8]>::to_vec),
                IdSource::Query(name) => cx.facts.query(name).map(|v| v.into_owned()),
            };
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                found = Some(v);
                break;
            }
        }
        if let (None, Some(sticky)) = (&found, &plan.sticky) {
            found = cx
                .facts
                .cookie(sticky.name.as_bytes())
                .filter(|v| !v.is_empty())
                .map(<[u8]>::to_vec);
            if found.is_none() {
                let id = mint_id(cx.facts.host);
                let secure = cx.facts.header(sticky.scheme_slot) == Some(b"https");
                let mut cookie = format!(
                    "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                    sticky.name,
                    String::from_utf8_lossy(&id),
                    sticky.max_age_s
                );
                if secure {
                    cookie.push_str("; Secure");
                }
                cx.set_cookie = Some(cookie);
                found = Some(id.to_vec());
            }
        }
        cx.identity = Identity::Known(found);
    }
    match &cx.identity {
        Identity::Known(v) => v.as_deref(),
        Identity::Unresolved => None,
    }
}

/// 128 random bits as 32 lower-case hex characters.
fn mint_id<H: Host>(host: &H) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut raw = [0u8; 16];
    host.fill_random(&mut raw);
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(raw) {
        if let [hi, lo] = pair {
            *hi = HEX[usize::from(byte >> 4)];
            *lo = HEX[usize::from(byte & 15)];
        }
    }
    out
}
