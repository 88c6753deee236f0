//! The decision: which version serves this request, and which rule said so.
//!
//! Order (DESIGN.md): a valid override first; then the rules in order, the first whose `when`
//! holds deciding ([`rules`]); then `stable`. A split rule's version comes from the user's bucket
//! ([`split`]) or the session's pin ([`session`], whose signed value is [`pin`]). A pure function
//! of the compiled plan, the request (through [`Host`]) and the time.
//!
//! At a request's headers, a plan that reads bodies asks [`decide_at_headers`] first: it decides
//! unless a body fact still to come could change the outcome, and then the request is held for
//! its body (DESIGN.md "v2 corrections": nothing waits that need not).

pub mod cookie;
mod identity;
pub mod pin;
mod rules;
pub mod session;
mod split;

use identity::{user_id, Identity};
pub use session::PinOutcome;

use crate::config::{
    Action, LaneMode, LaneSpec, MetricId, Plan, VersionId, WatchId, METRIC_OVERRIDE_ACCEPTED,
    METRIC_OVERRIDE_REJECTED,
};
use crate::lane;
use crate::request::{Facts, Host, Pending};

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// A trusted override header naming a known version.
    Override,
    /// The rule at this index of the plan.
    Rule(usize),
    /// No rule matched: `stable`.
    Default,
    /// A lane that verified (mode `follow`, DESIGN.md "Lanes"): rule `lane`.
    Lane,
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
    /// When a guarded rule decided: what its guard counts the response under.
    pub watch: Option<WatchId>,
    /// With session pins, when a split rule decided with a user id: what became of the pin.
    pub pin: Option<PinOutcome>,
    /// `Set-Cookie` values for pins: this rule's, issued or renewed, and any pin cookie it
    /// replaces (a v2-format one, or the oldest others past 4 KiB).
    pub pin_cookies: Vec<String>,
    /// `Set-Cookie` value to send back, when a sticky-cookie id was minted for this request.
    pub set_cookie: Option<String>,
    /// When a shadowed rule decided stable for a user of its shadow cohort (DESIGN.md
    /// "Shadow"): the request is also to be sent to the shadow.
    pub shadow: Option<ShadowPick>,
    /// With `lane`: what became of the request's baggage, and the counter.
    pub lane: Option<LaneOut>,
}

/// What a lane did for one request (DESIGN.md "Lanes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneOut {
    /// The request's `baggage` from now on: `None` as it came; `Some(None)` removed (nothing
    /// left of it); `Some(Some(v))` replaced by `v` (every `baggage` header the request had).
    pub baggage: Option<Option<Vec<u8>>>,
    /// `graysplit_lane_total.result.<result>`.
    pub metric: MetricId,
}

/// A request to shadow: which shadow, and the user's hash for its record (never the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowPick {
    pub shadow: crate::config::ShadowId,
    /// The first 8 bytes of SHA-256 of the shadow's salt, `:` and the user id.
    pub user_hash: [u8; 8],
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
            DecidedBy::Lane => crate::config::LANE_RULE,
            DecidedBy::Rule(i) => plan.rules.get(i).map_or("", |r| r.name.as_str()),
        }
    }

    fn new(version: VersionId, by: DecidedBy, metric: MetricId, override_metric: Option<MetricId>) -> Self {
        Decision {
            version,
            by,
            metric,
            override_metric,
            bucket: None,
            watch: None,
            pin: None,
            pin_cookies: Vec::new(),
            set_cookie: None,
            shadow: None,
            lane: None,
        }
    }
}

/// What happened to the override header, for `graysplit explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideVerdict {
    Accepted,
    UnknownVersion,
    UntrustedSource,
}

/// Why a rule did or did not decide, for `graysplit explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleVerdict {
    Disabled,
    NotStarted,
    Expired,
    /// The condition at this index (see [`Plan::describe_condition`]) did not hold.
    ConditionFailed(usize),
    Decided,
}

/// Receives the steps of a decision. `()` ignores them (the filter's request path).
pub trait Tracer {
    fn override_header(&mut self, _verdict: OverrideVerdict) {}
    fn rule(&mut self, _index: usize, _verdict: RuleVerdict) {}
}

impl Tracer for () {}

struct Ctx<'a, H: Host> {
    facts: Facts<'a, H>,
    /// The user id, once resolved.
    identity: Option<Identity>,
    set_cookie: Option<String>,
    /// A follower's lane that did not decide: what becomes of the baggage, and the counter.
    lane: Option<LaneOut>,
}

/// Decides the version for one request (a body is read in full or absent: never pending).
pub fn decide<H: Host>(plan: &Plan, host: &H) -> Decision {
    decide_traced(plan, host, &mut ())
}

/// [`decide`], reporting each step to `trace`.
pub fn decide_traced<H: Host, T: Tracer>(plan: &Plan, host: &H, trace: &mut T) -> Decision {
    let mut cx = new_ctx(plan, host);
    // A host whose body is never pending makes no fact pending; stable would be the answer.
    let d = decide_inner(plan, &mut cx, trace).unwrap_or_else(|Pending| stable_default(plan, None));
    finish(plan, cx, d)
}

/// The decision at the headers when no body fact still to come can change it; `None`: hold the
/// request for its body and decide with [`decide`] once it is in.
pub fn decide_at_headers<H: Host>(plan: &Plan, host: &H) -> Option<Decision> {
    let mut cx = new_ctx(plan, host);
    let d = decide_inner(plan, &mut cx, &mut ()).ok()?;
    Some(finish(plan, cx, d))
}

fn new_ctx<'a, H: Host>(plan: &'a Plan, host: &'a H) -> Ctx<'a, H> {
    Ctx { facts: Facts::new(plan, host), identity: None, set_cookie: None, lane: None }
}

fn finish<H: Host>(plan: &Plan, mut cx: Ctx<'_, H>, mut d: Decision) -> Decision {
    if plan.sticky.is_some() {
        // A visitor without an id gets one minted now, whoever decided, so the next request
        // already carries it. (Without a sticky cookie there is nothing to mint, and no reason
        // to read the id when no rule asked for it.) A body still to come counts as absent here:
        // it cannot change who decided.
        let _ = user_id(plan, &mut cx, true);
    }
    d.set_cookie = cx.set_cookie.take();
    match plan.lane.as_ref() {
        Some(l) if l.mode == LaneMode::Edge => d.lane = Some(issue_lane(plan, l, &d, &mut cx)),
        Some(_) if d.lane.is_none() => d.lane = cx.lane.take(),
        _ => {}
    }
    d
}

/// The edge's lane (DESIGN.md "Lanes"): the decision, whoever made it, signed into the
/// request's baggage, any member of our key the client sent removed.
fn issue_lane<H: Host>(plan: &Plan, l: &LaneSpec, d: &Decision, cx: &mut Ctx<'_, H>) -> LaneOut {
    let now_s = cx.facts.now_s();
    // A client rarely sends baggage to the edge: one read finds none.
    let values = cx.facts.header_values(l.slot, false);
    let Some(key) = l.signers.first() else { return LaneOut { baggage: None, metric: l.metrics.too_long } };
    let issued = lane::issue(
        &values,
        &l.baggage_key,
        d.version_name(plan),
        d.rule_name(plan),
        now_s.saturating_add(u64::from(l.ttl_s)),
        key,
    );
    let metric = match issued.outcome {
        lane::Outcome::TooLong => l.metrics.too_long,
        _ => l.metrics.issued,
    };
    LaneOut { baggage: baggage(issued.header), metric }
}

/// A follower's lane: the version when the request's lane verifies (from a trusted source),
/// else `None`, with what became of the baggage left in `cx` for the rules' decision.
fn follow_lane<H: Host>(plan: &Plan, l: &LaneSpec, cx: &mut Ctx<'_, H>) -> Option<Decision> {
    let trusted =
        l.trusted.is_empty() || cx.facts.source().is_some_and(|ip| l.trusted.iter().any(|c| c.contains(ip)));
    let now_s = cx.facts.now_s();
    // A follower's requests carry baggage: the whole map at once (every value of it).
    let values = cx.facts.header_values(l.slot, true);
    if !trusted {
        let header = lane::strip(&values, &l.baggage_key);
        // A request with no lane is absent wherever it comes from.
        let metric = if header == lane::Header::Keep { l.metrics.absent } else { l.metrics.untrusted };
        cx.lane = Some(LaneOut { baggage: baggage(header), metric });
        return None;
    }
    let f =
        lane::follow(&values, &l.baggage_key, &l.signers, now_s, |v| plan.version_id(v.as_bytes()).is_some());
    let metric = match f.verdict.outcome() {
        lane::Outcome::Followed => l.metrics.followed,
        lane::Outcome::Expired => l.metrics.expired,
        lane::Outcome::Absent => l.metrics.absent,
        _ => l.metrics.forged,
    };
    let out = LaneOut { baggage: baggage(f.header), metric };
    if let lane::Verdict::Followed { version, .. } = &f.verdict {
        if let Some(v) = plan.version_id(version.as_bytes()) {
            let decided = l.decided.get(v).copied().unwrap_or(plan.default_metric);
            let mut d = Decision::new(v, DecidedBy::Lane, decided, None);
            d.lane = Some(out);
            return Some(d);
        }
    }
    cx.lane = Some(out);
    None
}

/// A lane's header outcome as the glue applies it.
fn baggage(h: lane::Header) -> Option<Option<Vec<u8>>> {
    match h {
        lane::Header::Keep => None,
        lane::Header::Set(v) => Some(Some(v)),
        lane::Header::Remove => Some(None),
    }
}

fn stable_default(plan: &Plan, override_metric: Option<MetricId>) -> Decision {
    Decision::new(0, DecidedBy::Default, plan.default_metric, override_metric)
}

fn decide_inner<H: Host, T: Tracer>(
    plan: &Plan,
    cx: &mut Ctx<'_, H>,
    trace: &mut T,
) -> Result<Decision, Pending> {
    let mut override_metric = None;
    if let Some(o) = &plan.override_ {
        if let Some(value) = cx.facts.header(o.slot) {
            let version = plan.version_id(value);
            let trusted = version.is_some()
                && cx.facts.source().is_some_and(|ip| o.trusted.iter().any(|c| c.contains(ip)));
            trace.override_header(match (version, trusted) {
                (None, _) => OverrideVerdict::UnknownVersion,
                (Some(_), false) => OverrideVerdict::UntrustedSource,
                (Some(_), true) => OverrideVerdict::Accepted,
            });
            match version {
                Some(v) if trusted => {
                    let metric = o.metrics.get(v).copied().unwrap_or(plan.default_metric);
                    return Ok(Decision::new(v, DecidedBy::Override, metric, Some(METRIC_OVERRIDE_ACCEPTED)));
                }
                _ => override_metric = Some(METRIC_OVERRIDE_REJECTED),
            }
        }
    }
    if let Some(l) = plan.lane.as_ref().filter(|l| l.mode == LaneMode::Follow) {
        if let Some(mut d) = follow_lane(plan, l, cx) {
            d.override_metric = override_metric;
            return Ok(d);
        }
    }
    for (i, rule) in plan.rules.iter().enumerate() {
        let verdict = rules::verdict(plan, rule, cx)?;
        trace.rule(i, verdict);
        if verdict != RuleVerdict::Decided {
            continue;
        }
        let mut d = match &rule.action {
            Action::Fixed { version, metric } => Decision::new(*version, DecidedBy::Rule(i), *metric, None),
            Action::Split(s) => split::decide(plan, rule, s, cx)?.into_decision(i),
        };
        d.override_metric = override_metric;
        return Ok(d);
    }
    Ok(stable_default(plan, override_metric))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]
    use super::*;
    use crate::bucket::bucket;
    use crate::config::parse;
    use crate::request::fake::StaticRequest;
    use pin::Refused;

    const NOW: i64 = 1_796_083_200_000_000_000; // 2026-12-01T00:00:00Z

    fn plan(json: &str) -> Plan {
        parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> StaticRequest {
        let mut r = StaticRequest::get(path, headers);
        r.now = NOW;
        r
    }

    /// (version, rule) for a request.
    fn run(p: &Plan, r: &StaticRequest) -> (String, String) {
        let d = decide(p, r);
        (d.version_name(p).to_string(), d.rule_name(p).to_string())
    }

    fn vr(v: &str, r: &str) -> (String, String) {
        (v.to_string(), r.to_string())
    }

    const LANE_KEY: &str = "a secret of at least 32 characters, shared by the mesh";

    fn lane_plan(mode: &str, extra: &str) -> Plan {
        plan(&format!(
            r#"{{"stable": "v1", "identity": {{"from": [{{"header": "x-user-id"}}]}},
            "override": {{"header": "x-gray", "trusted_cidrs": ["127.0.0.1/32"]}},
            "lane": {{"mode": "{mode}", "key": "{LANE_KEY}", "ttl_s": 60 {extra}}},
            "rules": [{{"name": "pilot", "when": {{"headers": [{{"name": "x-dept", "exact": "legal"}}]}}, "version": "v2"}},
                      {{"name": "ramp", "salt": "r", "split": [{{"version": "v2", "percent": 30}}]}}]}}"#
        ))
    }

    /// The member an edge writes for (version, rule), at NOW + 60 s, signed as DESIGN says.
    fn member(version: &str, rule: &str) -> String {
        use base64ct::{Base64UrlUnpadded, Encoding};
        use hmac::{Hmac, Mac};
        let e = NOW / 1_000_000_000 + 60;
        let signed = format!("graysplit={version};r={rule};e={e}");
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(LANE_KEY.as_bytes()).unwrap();
        m.update(signed.as_bytes());
        let mut buf = [0u8; 43];
        format!("{signed};s={}", Base64UrlUnpadded::encode(&m.finalize().into_bytes(), &mut buf).unwrap())
    }

    fn metric<'p>(p: &'p Plan, d: &Decision) -> &'p str {
        p.metrics[d.lane.as_ref().unwrap().metric].as_str()
    }

    #[test]
    fn an_edge_signs_every_decision_into_the_baggage() {
        let p = lane_plan("edge", "");
        let gray = (0..100).map(|i| format!("u{i}")).find(|u| bucket(b"r:", u.as_bytes()) < 3000).unwrap();
        let cases = [
            (req("/", &[("x-user-id", &gray)]), "v2", "ramp"),
            (req("/", &[("x-user-id", &gray), ("x-dept", "legal")]), "v2", "pilot"),
            (req("/", &[]), "v1", "ramp"),
            (
                StaticRequest { source: Some("127.0.0.1:4000".into()), ..req("/", &[("x-gray", "v2")]) },
                "v2",
                "override",
            ),
        ];
        for (r, v, rule) in cases {
            let d = decide(&p, &r);
            assert_eq!((d.version_name(&p), d.rule_name(&p)), (v, rule));
            let out = d.lane.as_ref().unwrap();
            assert_eq!(out.baggage, Some(Some(member(v, rule).into_bytes())), "{rule}");
            assert_eq!(metric(&p, &d), "graysplit_lane_total.result.issued");
        }
        // No rule decided: `default`, signed too; a client's lane replaced, other members kept.
        let p = plan(&format!(
            r#"{{"stable": "v1", "lane": {{"mode": "edge", "key": "{LANE_KEY}", "ttl_s": 60}}}}"#
        ));
        let forged = member("v2", "ramp").replace("v2", "v3");
        let d = decide(&p, &req("/", &[("baggage", &format!("a=1,{forged}")), ("baggage", "b=2")]));
        let want = format!("a=1,b=2,{}", member("v1", "default"));
        assert_eq!(d.lane.unwrap().baggage, Some(Some(want.into_bytes())));
    }

    #[test]
    fn a_follower_goes_where_a_lane_that_verifies_says_and_the_rules_decide_the_rest() {
        let p = lane_plan("follow", r#", "trusted_cidrs": ["10.0.0.0/8"]"#);
        let from = |src: &str, headers: &[(&str, &str)]| StaticRequest {
            source: Some(src.into()),
            ..req("/", headers)
        };
        let stable = (0..100).map(|i| format!("u{i}")).find(|u| bucket(b"r:", u.as_bytes()) >= 3000).unwrap();
        let lane = member("v2", "ramp");
        // Its rules say v1 for this user; the lane says v2.
        let d = decide(
            &p,
            &from("10.1.2.3:5000", &[("x-user-id", &stable), ("baggage", &format!("a=1,{lane}"))]),
        );
        assert_eq!((d.version_name(&p), d.rule_name(&p)), ("v2", "lane"));
        assert_eq!(p.metrics[d.metric], "graysplit_decisions_total.rule.lane.version.v2");
        assert_eq!(
            (d.lane.as_ref().unwrap().baggage.clone(), metric(&p, &d)),
            (None, "graysplit_lane_total.result.followed")
        );
        // Refused: the member removed, other members kept, counted, and the rules decide.
        let expired = {
            let r = from("10.1.2.3:5000", &[("x-user-id", &stable), ("baggage", &format!("{lane},a=1"))]);
            StaticRequest { now: NOW + 61_000_000_000, ..r }
        };
        let cases = [
            (
                from(
                    "10.1.2.3:5000",
                    &[
                        ("x-user-id", &stable),
                        ("baggage", &format!("{},a=1", lane.replace("r=ramp", "r=pilot"))),
                    ],
                ),
                "forged",
                Some(Some(b"a=1".to_vec())),
            ),
            (expired, "expired", Some(Some(b"a=1".to_vec()))),
            (
                from("192.0.2.1:5000", &[("x-user-id", &stable), ("baggage", &format!("{lane},a=1"))]),
                "untrusted",
                Some(Some(b"a=1".to_vec())),
            ),
            (
                from("10.1.2.3:5000", &[("x-user-id", &stable), ("baggage", &lane.replace("v2", "v9"))]),
                "forged",
                Some(None),
            ),
            (from("10.1.2.3:5000", &[("x-user-id", &stable), ("baggage", "a=1")]), "absent", None),
            (from("192.0.2.1:5000", &[("x-user-id", &stable)]), "absent", None),
        ];
        for (r, result, baggage) in cases {
            let d = decide(&p, &r);
            assert_eq!((d.version_name(&p), d.rule_name(&p)), ("v1", "ramp"), "{result}");
            assert_eq!(d.lane.as_ref().unwrap().baggage, baggage, "{result}");
            assert_eq!(metric(&p, &d), format!("graysplit_lane_total.result.{result}"));
        }
        // A trusted override still wins over a lane, which is then left as it is.
        let d = decide(&p, &from("127.0.0.1:1", &[("x-gray", "v1"), ("baggage", &lane)]));
        assert_eq!((d.version_name(&p), d.rule_name(&p), d.lane), ("v1", "override", None));
    }

    #[test]
    fn a_stable_decided_user_of_the_shadow_cohort_is_shadowed_once_and_by_hash() {
        let p = plan(
            r#"{"stable": "v1", "identity": {"from": [{"header": "x-user-id"}]},
              "shadow_sink": {"cluster": "otel"},
              "rules": [{"name": "ramp", "salt": "r", "split": [{"version": "v2", "percent": 30}],
                "shadow": {"version": "v2", "percent": 40, "cluster": "app-v2", "path_prefixes": ["/v1/"]}}]}"#,
        );
        let (mut shadowed, mut gray, mut stable_out) = (0, 0, 0);
        for i in 0..2000 {
            let user = format!("user-{i}");
            let d = decide(&p, &req("/v1/chat/completions", &[("x-user-id", &user)]));
            let b = crate::bucket::bucket(b"r:", user.as_bytes());
            let sb = crate::bucket::bucket(b"r:shadow:", user.as_bytes());
            let want = b >= 3000 && sb < 4000;
            assert_eq!(d.version == 0, b >= 3000, "{user}");
            assert_eq!(d.shadow.is_some(), want, "{user}: bucket {b}, shadow bucket {sb}");
            if let Some(pick) = d.shadow {
                assert_eq!(
                    crate::text::hex(&pick.user_hash),
                    crate::shadow::record::user_hash("r:shadow", user.as_bytes())
                );
                shadowed += 1;
                // Not outside its paths, not a request that is a shadow already.
                let elsewhere = decide(&p, &req("/v2/x", &[("x-user-id", &user)]));
                assert_eq!((elsewhere.version, elsewhere.shadow), (0, None));
                let again =
                    decide(&p, &req("/v1/chat", &[("x-user-id", &user), ("x-graysplit-shadow", "1")]));
                assert_eq!((again.version, again.shadow), (0, None));
            } else if b < 3000 {
                gray += 1;
            } else {
                stable_out += 1;
            }
        }
        assert!(shadowed > 400 && gray > 400 && stable_out > 400, "{shadowed} {gray} {stable_out}");
        let anonymous = decide(&p, &req("/v1/chat", &[]));
        assert_eq!((anonymous.version, anonymous.shadow), (0, None), "no user id: never shadowed");
    }

    const FULL: &str = r#"{
      "stable": "v1",
      "identity": {"from": [{"header": "x-user-id"}, {"cookie": "uid"}, {"query": "uid"}]},
      "override": {"header": "x-gray-release", "trusted_cidrs": ["127.0.0.1/32", "::1/128"]},
      "rules": [
        {"name": "vip", "when": {"users": ["ceo@example.com"]}, "version": "v1"},
        {"name": "legal", "when": {"headers": [{"name": "x-department", "exact": "legal"}]}, "version": "v2"},
        {"name": "beta-cookie", "when": {"cookies": [{"name": "beta", "present": true}]}, "version": "v3"},
        {"name": "qa", "when": {"query": [{"name": "channel", "one_of": ["qa", "dog food"]}]}, "version": "v2"},
        {"name": "office", "when": {"source_cidrs": ["192.168.0.0/16"], "path_prefix": "/api/"}, "version": "v3"},
        {"name": "writes", "when": {"methods": ["POST", "PUT"], "path_prefix": "/admin"}, "version": "v3"},
        {"name": "off", "enabled": false, "version": "v4"},
        {"name": "ramp", "split": [{"version": "v2", "percent": 10}], "salt": "release-2.1"}
      ]
    }"#;

    #[test]
    fn rules_decide_in_order_then_stable() {
        let p = plan(FULL);
        let cases: Vec<(StaticRequest, (String, String), &str)> = vec![
            (req("/", &[]), vr("v1", "ramp"), "no id: a matching split sends to stable"),
            (
                req("/", &[("x-user-id", "ceo@example.com"), ("x-department", "legal")]),
                vr("v1", "vip"),
                "first match wins",
            ),
            (req("/", &[("x-department", "legal")]), vr("v2", "legal"), "header exact"),
            (req("/", &[("X-Department", "legal")]), vr("v2", "legal"), "header names are case-insensitive"),
            (req("/", &[("x-department", "Legal")]), vr("v1", "ramp"), "values are case-sensitive"),
            (
                req("/", &[("x-department", "legal"), ("x-department", "sales")]),
                vr("v2", "legal"),
                "first value of a repeated header",
            ),
            (req("/", &[("cookie", "a=1; beta=")]), vr("v3", "beta-cookie"), "cookie present, empty value"),
            (
                req("/", &[("cookie", "a=1"), ("cookie", "beta=1")]),
                vr("v3", "beta-cookie"),
                "second cookie header",
            ),
            (req("/x?channel=dog+food", &[]), vr("v2", "qa"), "query one_of, decoded"),
            (
                req("/x?channel=dog%20food&channel=qa", &[]),
                vr("v2", "qa"),
                "first occurrence of a query name",
            ),
            (req("/x?channel=prod&channel=qa", &[]), vr("v1", "ramp"), "later occurrences do not count"),
            (req("/admin/users", &[(":method", "PUT")]), vr("v3", "writes"), "method and path"),
            (req("/admin/users", &[]), vr("v1", "ramp"), "GET is not a write"),
            (
                req("/administrators", &[(":method", "POST")]),
                vr("v3", "writes"),
                "path_prefix is a plain prefix",
            ),
            (
                req("/x/admin?p=/admin", &[(":method", "POST")]),
                vr("v1", "ramp"),
                "path_prefix ignores the query",
            ),
            (req("/", &[("x-user-id", "alice")]), vr("v1", "ramp"), "alice's bucket 9862 is above 10%"),
            (req("/", &[("x-user-id", "bob")]), vr("v1", "ramp"), "bob's bucket 1649 is above 10%"),
        ];
        for (r, want, why) in cases {
            // StaticRequest::get puts :method first; a test's own :method comes later, so
            // move it to the front (first value wins).
            let mut r = r;
            if let Some(pos) = r.headers.iter().rposition(|(k, _)| k == ":method") {
                if pos > 0 {
                    let m = r.headers.remove(pos);
                    r.headers.insert(0, m);
                }
            }
            assert_eq!(run(&p, &r), want, "{why}");
        }
    }

    #[test]
    fn source_cidrs_match_ipv4_ipv6_and_mapped_sources() {
        let p = plan(
            r#"{"stable": "v1", "rules": [
            {"name": "office4", "when": {"source_cidrs": ["192.168.0.0/16"]}, "version": "v2"},
            {"name": "office6", "when": {"source_cidrs": ["2001:db8::/32"]}, "version": "v3"}]}"#,
        );
        for (src, want) in [
            ("192.168.1.2:1234", vr("v2", "office4")),
            ("[::ffff:192.168.1.2]:1234", vr("v2", "office4")),
            ("[2001:db8::7]:1234", vr("v3", "office6")),
            ("10.0.0.1:1234", vr("v1", "default")),
            ("garbage", vr("v1", "default")),
        ] {
            let mut r = req("/", &[]);
            r.source = Some(src.to_string());
            assert_eq!(run(&p, &r), want, "source {src}");
        }
        let mut r = req("/", &[]);
        r.source = None;
        assert_eq!(run(&p, &r), vr("v1", "default"), "unknown source matches no range");
    }

    #[test]
    fn override_needs_a_known_version_and_a_trusted_source() {
        let p = plan(FULL);
        let with = |v: &str, src: &str| {
            let mut r = req("/", &[("x-gray-release", v), ("x-department", "legal")]);
            r.source = Some(src.to_string());
            let d = decide(&p, &r);
            (d.version_name(&p).to_string(), d.rule_name(&p).to_string(), d.override_metric)
        };
        let ok = Some(METRIC_OVERRIDE_ACCEPTED);
        let no = Some(METRIC_OVERRIDE_REJECTED);
        assert_eq!(with("v3", "127.0.0.1:5"), ("v3".into(), "override".into(), ok), "trusted");
        assert_eq!(with("v3", "[::1]:5"), ("v3".into(), "override".into(), ok), "trusted IPv6");
        assert_eq!(
            with("v4", "127.0.0.1:5"),
            ("v4".into(), "override".into(), ok),
            "a disabled rule's version is known"
        );
        assert_eq!(with("v3", "10.1.1.1:5"), ("v2".into(), "legal".into(), no), "untrusted: rules decide");
        assert_eq!(with("v9", "127.0.0.1:5"), ("v2".into(), "legal".into(), no), "unknown version");
        assert_eq!(with("V3", "127.0.0.1:5"), ("v2".into(), "legal".into(), no), "versions compare exactly");
        let d = decide(&p, &req("/", &[]));
        assert_eq!(d.override_metric, None, "no header, no override counter");
    }

    #[test]
    fn identity_sources_in_order_and_empty_values_skipped() {
        let p = plan(
            r#"{"stable": "v1", "identity": {"from": [{"header": "x-user-id"}, {"cookie": "uid"}, {"query": "uid"}]},
               "rules": [{"name": "who", "when": {"users": ["h", "c", "q", "用户"]}, "version": "v2"}]}"#,
        );
        let cases: &[(&str, &[(&str, &str)], bool, &str)] = &[
            ("/", &[("x-user-id", "h"), ("cookie", "uid=zz")], true, "header first"),
            ("/?uid=zz", &[("cookie", "uid=c")], true, "cookie before query"),
            ("/?uid=q", &[], true, "query last"),
            ("/?uid=q", &[("x-user-id", ""), ("cookie", "uid=")], true, "empty values skipped"),
            ("/?uid=%E7%94%A8%E6%88%B7", &[], true, "decoded query user"),
            ("/?uid=zz", &[("x-user-id", "")], false, "zz is not listed"),
            ("/", &[], false, "no id"),
        ];
        for (path, headers, listed, why) in cases {
            let (v, _) = run(&p, &req(path, headers));
            assert_eq!(v == "v2", *listed, "{why}");
        }
    }

    #[test]
    fn split_follows_the_bucket_contract() {
        let p = plan(
            r#"{"stable": "s", "identity": {"from": [{"header": "u"}]},
               "rules": [{"name": "r", "split": [{"version": "a", "percent": 10}, {"version": "b", "percent": 20.5}]}]}"#,
        );
        for i in 0..3000 {
            let user = format!("user-{i}");
            let b = bucket(b"r:", user.as_bytes());
            let want = if b < 1000 {
                "a"
            } else if b < 3050 {
                "b"
            } else {
                "s"
            };
            let d = decide(&p, &req("/", &[("u", &user)]));
            assert_eq!(d.version_name(&p), want, "{user} bucket {b}");
            assert_eq!(d.bucket, Some(b));
            assert_eq!(p.metrics[d.metric], format!("graysplit_decisions_total.rule.r.version.{want}"));
        }
    }

    #[test]
    fn split_zero_percent_never_selects_gray_and_hundred_always_does() {
        for (pct, gray_expected) in [(0, false), (100, true)] {
            let p = plan(&format!(
                r#"{{"stable": "s", "identity": {{"from": [{{"header": "u"}}]}},
                   "rules": [{{"name": "r", "split": [{{"version": "g", "percent": {pct}}}]}}]}}"#
            ));
            for i in 0..500 {
                let (v, _) = run(&p, &req("/", &[("u", &format!("{i}"))]));
                assert_eq!(v == "g", gray_expected, "{pct}% user {i}");
            }
        }
    }

    #[test]
    fn raising_a_percent_only_moves_users_from_stable_to_gray() {
        let at = |pct: &str| {
            plan(&format!(
                r#"{{"stable": "s", "identity": {{"from": [{{"header": "u"}}]}},
                   "rules": [{{"name": "r", "salt": "rel", "split": [{{"version": "g", "percent": {pct}}}]}}]}}"#
            ))
        };
        let steps = ["1", "10", "25.5", "50", "100"];
        let plans: Vec<Plan> = steps.iter().map(|s| at(s)).collect();
        for i in 0..2000 {
            let r = req("/", &[("u", &format!("id{i}"))]);
            let mut was_gray = false;
            for (p, step) in plans.iter().zip(steps) {
                let gray = run(p, &r).0 == "g";
                assert!(gray || !was_gray, "id{i} left gray at {step}%");
                was_gray = gray;
            }
        }
    }

    #[test]
    fn time_windows_and_enabled_are_honoured() {
        let p = plan(
            r#"{"stable": "v1", "rules": [
            {"name": "off", "enabled": false, "version": "v9"},
            {"name": "expired", "expires_at": "2026-12-01T00:00:00Z", "version": "v2"},
            {"name": "future", "starts_at": "2026-12-01T00:00:00.000000001Z", "version": "v3"},
            {"name": "now", "starts_at": "2026-12-01T01:00:00+01:00", "expires_at": "2026-12-02T00:00:00Z", "version": "v4"}]}"#,
        );
        assert_eq!(run(&p, &req("/", &[])), vr("v4", "now"), "starts_at is inclusive, expires_at exclusive");
        let mut r = req("/", &[]);
        r.now = NOW - 1;
        assert_eq!(run(&p, &r), vr("v2", "expired"), "just before expiry");
        r.now = NOW + 86_400_000_000_000;
        assert_eq!(run(&p, &r), vr("v3", "future"), "after the last window");
    }

    #[test]
    fn sticky_cookie_is_minted_once_and_then_read() {
        let p = plan(
            r#"{"stable": "s", "identity": {"from": [{"header": "u"}], "sticky_cookie": {"name": "gs", "max_age_s": 600}},
               "rules": [{"name": "r", "split": [{"version": "g", "percent": 50}]}]}"#,
        );
        let d = decide(&p, &req("/", &[]));
        let cookie = d.set_cookie.clone().unwrap();
        assert_eq!(cookie, format!("gs={}; Path=/; Max-Age=600; HttpOnly; SameSite=Lax", "ab".repeat(16)));
        let minted_bucket = d.bucket.unwrap();
        assert_eq!(
            minted_bucket,
            bucket(b"r:", "ab".repeat(16).as_bytes()),
            "minted id is this request's identity"
        );

        let back = decide(&p, &req("/", &[("cookie", &format!("gs={}", "ab".repeat(16)))]));
        assert_eq!(back.set_cookie, None, "no Set-Cookie when the cookie came back");
        assert_eq!(back.bucket, Some(minted_bucket), "same bucket next time");

        let with_id = decide(&p, &req("/", &[("u", "alice")]));
        assert_eq!(with_id.set_cookie, None, "no Set-Cookie when a source gave an id");

        let https = decide(&p, &req("/", &[(":scheme", "https")]));
        assert!(https.set_cookie.unwrap().ends_with("; Secure"), "Secure on https");
    }

    #[test]
    fn sticky_cookie_is_minted_even_when_no_rule_needs_an_id() {
        let p = plan(
            r#"{"stable": "s", "identity": {"sticky_cookie": {"name": "gs", "max_age_s": 600}},
               "override": {"header": "x-o", "trusted_cidrs": ["127.0.0.1"]}}"#,
        );
        assert!(decide(&p, &req("/", &[])).set_cookie.is_some());
        assert!(
            decide(&p, &req("/", &[("x-o", "s")])).set_cookie.is_some(),
            "override decided, id still minted"
        );
    }

    #[test]
    fn non_utf8_and_hostile_input_still_gets_a_decision() {
        let p = plan(FULL);
        let mut r = req("/", &[]);
        r.headers.push(("x-user-id".into(), vec![0xff, 0xfe, 0x00]));
        r.headers.push(("cookie".into(), vec![b'u', b'i', b'd', b'=', 0xc3]));
        r.headers.push(("x-department".into(), vec![0x80; 60_000]));
        let d = decide(&p, &r);
        assert_eq!(d.rule_name(&p), "ramp");
        assert_eq!(d.bucket, Some(bucket(b"release-2.1:", &[0xff, 0xfe, 0x00])));
        let mut r = req("/%zz?%%%&&==&uid=%", &[]);
        r.headers.extend((0..100).map(|i| ("cookie".to_string(), format!("c{i}=\"{i}").into_bytes())));
        r.headers[1].1 = vec![0xff, b'?', 0xfe];
        assert_eq!(decide(&p, &r).rule_name(&p), "ramp");
    }

    #[test]
    fn a_schedule_widens_by_the_clock_alone_and_never_moves_a_user_back() {
        let p = plan(
            r#"{"stable": "s", "identity": {"from": [{"header": "u"}]}, "rules": [{"name": "r", "salt": "rel",
               "split": [{"version": "g", "schedule": [{"at": "2026-12-01T00:00:01Z", "percent": 1},
                 {"at": "2026-12-01T00:00:02Z", "percent": 10}, {"at": "2026-12-01T00:00:03Z", "percent": 50}]}]}]}"#,
        );
        let s = 1_000_000_000;
        let mut was_gray = vec![false; 3000];
        for (t, share) in
            [(NOW, 0), (NOW + s, 100), (NOW + 2 * s - 1, 100), (NOW + 2 * s, 1000), (NOW + 9 * s, 5000)]
        {
            for (i, was) in was_gray.iter_mut().enumerate() {
                let user = format!("id{i}");
                let mut r = req("/", &[("u", &user)]);
                r.now = t;
                let gray = run(&p, &r).0 == "g";
                assert_eq!(gray, bucket(b"rel:", user.as_bytes()) < share, "{user} at +{}ns", t - NOW);
                assert!(gray || !*was, "{user} left gray at +{}ns", t - NOW);
                *was = gray;
            }
        }
    }

    #[test]
    fn a_tripped_version_sends_its_users_to_stable_and_leaves_the_others() {
        let p = plan(
            r#"{"stable": "s", "identity": {"from": [{"header": "u"}]}, "rules": [{"name": "r",
               "split": [{"version": "a", "percent": 30}, {"version": "b", "percent": 30}],
               "guard": {"max_error_percent": 5}}]}"#,
        );
        let watch = |v: &str| p.watches.iter().position(|w| p.versions[w.version] == v).unwrap();
        for i in 0..2000 {
            let user = format!("user-{i}");
            let mut r = req("/", &[("u", &user)]);
            let before = decide(&p, &r);
            r.tripped = vec![watch("a")];
            let after = decide(&p, &r);
            let b = bucket(b"r:", user.as_bytes());
            let want = if b < 3000 {
                "s"
            } else if b < 6000 {
                "b"
            } else {
                "s"
            };
            assert_eq!(after.version_name(&p), want, "{user} bucket {b}");
            assert_eq!(after.bucket, Some(b));
            assert_eq!(
                p.watches[after.watch.unwrap()].version,
                after.version,
                "counted under the version served"
            );
            if before.version_name(&p) != "a" {
                assert_eq!(before, after, "users not on the tripped version do not move");
            }
        }
        let mut r = req("/", &[]);
        r.tripped = vec![watch("a"), watch("b")];
        assert_eq!(
            decide(&p, &r).watch,
            p.split(0).unwrap().stable_watch,
            "no id: stable, counted for stable"
        );
    }

    fn with_claims(mut r: StaticRequest, claims: serde_json::Value) -> StaticRequest {
        let serde_json::Value::Object(map) = claims else { panic!("an object") };
        r.claims = Some(crate::request::claims::Claims::from_json(map));
        r
    }

    #[test]
    fn claims_pilot_and_identify_only_when_verified() {
        let p = plan(
            r#"{"stable": "v1", "identity": {"from": [{"claim": "sub"}, {"header": "x-user-id"}]}, "rules": [
               {"name": "legal", "when": {"claims": [{"name": "department", "exact": "legal"}]}, "version": "v2"},
               {"name": "beta", "when": {"claims": [{"name": "groups", "one_of": ["beta-testers"]}]}, "version": "v3"},
               {"name": "vip", "when": {"users": ["ceo@corp.example"]}, "version": "v1"},
               {"name": "ramp", "split": [{"version": "v2", "percent": 50}]}]}"#,
        );
        let r = || req("/", &[("x-department", "legal"), ("x-user-id", "header-id")]);
        assert_eq!(run(&p, &r()).1, "ramp", "a header named like a claim is no claim");
        assert_eq!(run(&p, &with_claims(r(), serde_json::json!({"department": "legal"}))), vr("v2", "legal"));
        assert_eq!(
            run(&p, &with_claims(r(), serde_json::json!({"groups": ["eng", "beta-testers"]}))),
            vr("v3", "beta")
        );
        assert_eq!(
            run(&p, &with_claims(r(), serde_json::json!({"sub": "ceo@corp.example"}))),
            vr("v1", "vip")
        );
        let d = decide(&p, &with_claims(r(), serde_json::json!({"sub": "alice"})));
        assert_eq!(d.bucket, Some(bucket(b"ramp:", b"alice")), "the claim is the identity");
        let d = decide(&p, &with_claims(r(), serde_json::json!({"sub": ["not", "an", "id"]})));
        assert_eq!(
            d.bucket,
            Some(bucket(b"ramp:", b"header-id")),
            "a list claim is no identity: next source"
        );
    }

    #[test]
    fn body_fields_pilot_and_identify() {
        let p = plan(
            r#"{"stable": "v1", "identity": {"from": [{"body": "/user"}, {"body": "/metadata/conversation_id"}]}, "rules": [
               {"name": "qwen", "when": {"body": [{"pointer": "/model", "one_of": ["qwen2.5-72b"]}]}, "version": "v2"},
               {"name": "streams", "when": {"body": [{"pointer": "/stream", "exact": "true"}]}, "version": "v3"},
               {"name": "ramp", "split": [{"version": "v2", "percent": 50}]}]}"#,
        );
        let body = |b: &str| {
            let mut r = req("/v1/chat/completions", &[]);
            r.body = Some(b.as_bytes().to_vec());
            r
        };
        assert_eq!(run(&p, &body(r#"{"model": "qwen2.5-72b"}"#)), vr("v2", "qwen"));
        assert_eq!(run(&p, &body(r#"{"model": "gpt-4o", "stream": true}"#)), vr("v3", "streams"));
        let d = decide(&p, &body(r#"{"model": "gpt-4o", "user": "u-9"}"#));
        assert_eq!(d.bucket, Some(bucket(b"ramp:", b"u-9")));
        let d = decide(&p, &body(r#"{"metadata": {"conversation_id": "conv-1"}}"#));
        assert_eq!(d.bucket, Some(bucket(b"ramp:", b"conv-1")), "the next source when /user is absent");
        for absent in [r#"{"model": "#, "not json", ""] {
            let d = decide(&p, &body(absent));
            assert_eq!((d.rule_name(&p), d.bucket), ("ramp", None), "{absent:?}: no body facts");
        }
        assert_eq!(decide(&p, &req("/", &[])).bucket, None, "no body at all");
    }

    const PIN: &str =
        r#""session_pin": {"cookie": "gp", "idle_s": 600, "key": "0123456789abcdef0123456789abcdef"}"#;

    fn pinned(percent: u32, extra: &str) -> Plan {
        plan(&format!(
            r#"{{"stable": "s", "identity": {{"from": [{{"header": "u"}}]}}, {PIN}, "rules": [{{"name": "r", "salt": "rel"{extra},
               "split": [{{"version": "g", "percent": {percent}}}]}}]}}"#
        ))
    }

    /// This rule's pin a response set, as the next request sends it back (`gp.r=...`).
    fn cookie_of(d: &Decision) -> String {
        let Some(c) = d.pin_cookies.last().cloned() else { panic!("no pin was issued: {d:?}") };
        c.split(';').next().unwrap().to_string()
    }

    #[test]
    fn a_pin_keeps_a_session_on_its_version_across_a_ramp() {
        let user = (0..)
            .map(|i| format!("user-{i}"))
            .find(|u| (1000..5000).contains(&bucket(b"rel:", u.as_bytes())))
            .unwrap();
        let at_10 = pinned(10, "");
        let at_50 = pinned(50, "");
        let mut r = req("/", &[("u", &user)]);
        let first = decide(&at_10, &r);
        assert_eq!((first.version_name(&at_10), first.pin), ("s", Some(PinOutcome::Issued)));
        assert_eq!(first.pin_cookies.len(), 1);
        assert!(
            first.pin_cookies[0].starts_with("gp.r=2:s:1796083200:1796083800:"),
            "{:?}",
            first.pin_cookies
        );
        assert!(first.pin_cookies[0].ends_with("; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"));
        r.headers.push(("cookie".into(), cookie_of(&first).into_bytes()));
        let kept = decide(&at_50, &r);
        assert_eq!(
            (kept.version_name(&at_50), kept.pin, kept.pin_cookies.len()),
            ("s", Some(PinOutcome::Kept), 0),
            "the ramp step waits for the next session"
        );
        r.now = NOW + 301 * 1_000_000_000;
        let renewed = decide(&at_50, &r);
        assert_eq!(
            (renewed.version_name(&at_50), renewed.pin),
            ("s", Some(PinOutcome::Renewed)),
            "renewed past half of idle_s"
        );
        assert!(
            cookie_of(&renewed).starts_with("gp.r=2:s:1796083200:1796084101:"),
            "the session keeps its start"
        );
        r.now = NOW + 601 * 1_000_000_000;
        let expired = decide(&at_50, &r);
        assert_eq!(
            (expired.version_name(&at_50), expired.pin),
            ("g", Some(PinOutcome::Replaced(Refused::Expired))),
            "a new session gets the new percent"
        );
    }

    #[test]
    fn a_pin_to_stable_is_void_at_100_percent() {
        let user =
            (0..).map(|i| format!("user-{i}")).find(|u| bucket(b"rel:", u.as_bytes()) >= 1000).unwrap();
        let issued = decide(&pinned(10, ""), &req("/", &[("u", &user)]));
        assert_eq!(issued.version_name(&pinned(10, "")), "s");
        let r = req("/", &[("u", &user), ("cookie", &cookie_of(&issued))]);
        assert_eq!(decide(&pinned(99, ""), &r).pin, Some(PinOutcome::Kept), "stable still has users at 99 %");
        let at_100 = pinned(100, "");
        let d = decide(&at_100, &r);
        assert_eq!((d.version_name(&at_100), d.pin), ("g", Some(PinOutcome::Replaced(Refused::Unavailable))));
    }

    #[test]
    fn max_s_ends_an_active_session() {
        let p = plan(
            r#"{"stable": "s", "identity": {"from": [{"header": "u"}]},
               "session_pin": {"cookie": "gp", "idle_s": 600, "max_s": 1000, "key": "0123456789abcdef0123456789abcdef"},
               "rules": [{"name": "r", "salt": "rel", "split": [{"version": "g", "percent": 10}]}]}"#,
        );
        let user =
            (0..).map(|i| format!("user-{i}")).find(|u| bucket(b"rel:", u.as_bytes()) >= 1000).unwrap();
        let mut r = req("/", &[("u", &user)]);
        let mut cookie = cookie_of(&decide(&p, &r));
        // Active every 300 s: renewed, the expiry never past began + max_s.
        let mut outcomes = Vec::new();
        for step in 1..=4 {
            r.now = NOW + step * 301 * 1_000_000_000;
            r.headers.retain(|(k, _)| k != "cookie");
            r.headers.push(("cookie".into(), cookie.clone().into_bytes()));
            let d = decide(&p, &r);
            outcomes.push(d.pin);
            if let Some(c) = d.pin_cookies.last() {
                let pair = cookie_of(&d);
                let fields: Vec<&str> = pair.splitn(5, ':').collect();
                let began = if d.pin == Some(PinOutcome::Renewed) {
                    NOW / 1_000_000_000
                } else {
                    r.now / 1_000_000_000
                };
                assert_eq!(
                    fields[2],
                    began.to_string(),
                    "a renewal keeps the session's start, a new session starts now: {c}"
                );
                let end = fields[2].parse::<i64>().unwrap() + 1000;
                assert!(fields[3].parse::<i64>().unwrap() <= end, "never past began + max_s: {c}");
                cookie = cookie_of(&d);
            }
        }
        assert_eq!(
            outcomes,
            vec![
                Some(PinOutcome::Renewed),
                Some(PinOutcome::Renewed),
                Some(PinOutcome::Kept),
                Some(PinOutcome::Replaced(Refused::SessionOver)),
            ],
            "renewed to 901 s, then to 1000 s (max_s), then kept to its end, then the session is over"
        );
    }

    #[test]
    fn two_split_rules_keep_independent_pins() {
        let p = plan(&format!(
            r#"{{"stable": "s", "identity": {{"from": [{{"header": "u"}}]}}, {PIN}, "rules": [
               {{"name": "a", "when": {{"path_prefix": "/a"}}, "split": [{{"version": "g", "percent": 50}}]}},
               {{"name": "b", "split": [{{"version": "h", "percent": 50}}]}}]}}"#
        ));
        assert!(!p.pin.as_ref().unwrap().tight);
        let a = decide(&p, &req("/a", &[("u", "alice")]));
        let b = decide(&p, &req("/b", &[("u", "alice")]));
        assert!(cookie_of(&a).starts_with("gp.a=") && cookie_of(&b).starts_with("gp.b="));
        let jar = format!("{}; {}", cookie_of(&a), cookie_of(&b));
        let again_a = decide(&p, &req("/a", &[("u", "alice"), ("cookie", &jar)]));
        let again_b = decide(&p, &req("/b", &[("u", "alice"), ("cookie", &jar)]));
        assert_eq!((again_a.pin, again_b.pin), (Some(PinOutcome::Kept), Some(PinOutcome::Kept)));
        assert!(
            again_a.pin_cookies.is_empty() && again_b.pin_cookies.is_empty(),
            "neither touches the other"
        );
    }

    #[test]
    fn past_4_kib_of_pin_cookies_the_oldest_others_go_first() {
        let rules: Vec<String> = (0..30)
            .map(|i| {
                format!(
                    r#"{{"name": "rule-with-a-long-name-to-fill-the-jar-{i:02}", "when": {{"path_prefix": "/{i:02}"}},
                         "split": [{{"version": "version-with-a-long-name-{i:02}", "percent": 50}}]}}"#
                )
            })
            .collect();
        let p = plan(&format!(
            r#"{{"stable": "s", "identity": {{"from": [{{"header": "u"}}]}}, {PIN}, "rules": [{}]}}"#,
            rules.join(",")
        ));
        assert!(p.pin.as_ref().unwrap().tight);
        let mut jar: Vec<String> = Vec::new();
        for i in 0..30 {
            let mut r = req(&format!("/{i:02}"), &[("u", "alice")]);
            r.now = NOW + i * 1_000_000_000;
            if !jar.is_empty() {
                r.headers.push(("cookie".into(), jar.join("; ").into_bytes()));
            }
            let d = decide(&p, &r);
            for c in &d.pin_cookies {
                let pair = c.split(';').next().unwrap();
                let name = pair.split('=').next().unwrap().to_string();
                jar.retain(|x| !x.starts_with(&format!("{name}=")));
                if !c.contains("Max-Age=0") {
                    jar.push(pair.to_string());
                }
            }
            let total: usize = jar.iter().map(String::len).sum();
            assert!(total <= 4096, "{total} bytes of pin cookies after rule {i}");
        }
        assert!(jar.len() < 30, "some were dropped");
        assert!(
            jar.last().unwrap().starts_with("gp.rule-with-a-long-name-to-fill-the-jar-29="),
            "the newest stays"
        );
        assert!(
            !jar.iter().any(|c| c.starts_with("gp.rule-with-a-long-name-to-fill-the-jar-00=")),
            "the oldest went"
        );
    }

    #[test]
    fn a_v2_format_pin_holds_and_moves_to_todays_cookie() {
        let p = pinned(10, "");
        let user =
            (0..).map(|i| format!("user-{i}")).find(|u| bucket(b"rel:", u.as_bytes()) >= 1000).unwrap();
        let key = b"0123456789abcdef0123456789abcdef";
        let expires = NOW / 1_000_000_000 + 500;
        let old = pin::sign_v2_format(key, "r", "g", expires, b"rel", user.as_bytes());
        let d = decide(&p, &req("/", &[("u", &user), ("cookie", &format!("gp={old}"))]));
        assert_eq!(
            (d.version_name(&p), d.pin),
            ("g", Some(PinOutcome::Renewed)),
            "kept although the hash says stable"
        );
        assert_eq!(d.pin_cookies[0], "gp=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax", "the old cookie goes");
        assert!(
            cookie_of(&d).starts_with(&format!("gp.r=2:g:{}:{expires}:", expires - 600)),
            "a session that began idle_s before its expiry: {:?}",
            d.pin_cookies
        );
        let other_rule = pin::sign_v2_format(key, "x", "g", expires, b"rel", user.as_bytes());
        let d = decide(&p, &req("/", &[("u", &user), ("cookie", &format!("gp={other_rule}"))]));
        assert_eq!(
            (d.pin, d.pin_cookies.len()),
            (Some(PinOutcome::Issued), 1),
            "another rule's old pin is left alone"
        );
    }

    #[test]
    fn a_pin_of_another_user_a_forged_one_a_respelled_one_and_rollbacks_are_ignored() {
        let gray_user =
            (0..).map(|i| format!("user-{i}")).find(|u| bucket(b"rel:", u.as_bytes()) < 1000).unwrap();
        let at_10 = pinned(10, "");
        let issued = decide(&at_10, &req("/", &[("u", &gray_user)]));
        assert_eq!(issued.version_name(&at_10), "g");
        let pin = cookie_of(&issued);
        let back = |p: &Plan, user: &str, cookie: &str| {
            let d = decide(p, &req("/", &[("u", user), ("cookie", cookie)]));
            (d.version_name(p).to_string(), d.pin)
        };
        assert_eq!(back(&at_10, &gray_user, &pin), ("g".into(), Some(PinOutcome::Kept)));
        let stable_user =
            (0..).map(|i| format!("other-{i}")).find(|u| bucket(b"rel:", u.as_bytes()) >= 1000).unwrap();
        assert_eq!(
            back(&at_10, &stable_user, &pin),
            ("s".into(), Some(PinOutcome::Replaced(Refused::BadSignature))),
            "another user's pin"
        );
        let forged = pin.replace("=2:g:", "=2:s:");
        assert_eq!(back(&at_10, &gray_user, &forged).1, Some(PinOutcome::Replaced(Refused::BadSignature)));
        let (head, mac) = pin.rsplit_once(':').unwrap();
        let upper = format!("{head}:{}", mac.to_uppercase());
        assert_eq!(back(&at_10, &gray_user, &upper).1, Some(PinOutcome::Replaced(Refused::Malformed)));
        // Rollbacks: percent 0, the version gone, a tripped guard.
        assert_eq!(
            back(&pinned(0, ""), &gray_user, &pin),
            ("s".into(), Some(PinOutcome::Replaced(Refused::Unavailable)))
        );
        let gone = plan(&format!(
            r#"{{"stable": "s", "identity": {{"from": [{{"header": "u"}}]}}, {PIN}, "rules": [{{"name": "r", "salt": "rel", "split": [{{"version": "h", "percent": 10}}]}}]}}"#
        ));
        assert_eq!(back(&gone, &gray_user, &pin).1, Some(PinOutcome::Replaced(Refused::Unavailable)));
        let guarded = pinned(10, r#", "guard": {"max_error_percent": 5}"#);
        let mut r = req("/", &[("u", &gray_user), ("cookie", &pin)]);
        r.tripped = vec![guarded.watches.iter().position(|w| !w.stable).unwrap()];
        let d = decide(&guarded, &r);
        assert_eq!(
            (d.version_name(&guarded), d.pin),
            ("s", Some(PinOutcome::Replaced(Refused::Unavailable)))
        );
        let off = pinned(10, r#", "enabled": false"#);
        assert_eq!(
            back(&off, &gray_user, &pin),
            ("s".into(), None),
            "a disabled rule does not decide: no pin"
        );
    }

    #[test]
    fn only_split_decisions_with_a_user_id_carry_pins() {
        let p = plan(&format!(
            r#"{{"stable": "s", "identity": {{"from": [{{"header": "u"}}]}}, {PIN},
               "override": {{"header": "x-o", "trusted_cidrs": ["127.0.0.1"]}}, "rules": [
               {{"name": "fixed", "when": {{"headers": [{{"name": "x-f", "present": true}}]}}, "version": "g"}},
               {{"name": "r", "split": [{{"version": "g", "percent": 50}}]}}]}}"#
        ));
        for (headers, why) in [
            (&[("x-f", "1"), ("u", "a")][..], "a fixed version"),
            (&[("x-o", "g"), ("u", "a")][..], "the override"),
            (&[][..], "no user id"),
        ] {
            let d = decide(&p, &req("/", headers));
            assert_eq!((d.pin, d.pin_cookies.len()), (None, 0), "{why}");
        }
        let https = decide(&p, &req("/", &[("u", "a"), (":scheme", "https")]));
        assert!(https.pin_cookies[0].ends_with("; Secure"));
    }

    #[test]
    fn a_request_waits_for_its_body_only_when_the_body_can_change_the_decision() {
        let p = plan(
            r#"{"stable": "v1", "identity": {"from": [{"header": "x-user-id"}, {"body": "/user"}]},
               "override": {"header": "x-o", "trusted_cidrs": ["127.0.0.1/32"]}, "rules": [
               {"name": "legal", "when": {"headers": [{"name": "x-department", "exact": "legal"}]}, "version": "v2"},
               {"name": "qwen", "when": {"path_prefix": "/v1/", "body": [{"pointer": "/model", "exact": "qwen"}]}, "version": "v3"},
               {"name": "ramp", "split": [{"version": "v2", "percent": 50}]}]}"#,
        );
        let at_headers = |path: &str, headers: &[(&str, &str)]| {
            let mut r = req(path, headers);
            r.body_pending = true;
            crate::decide::decide_at_headers(&p, &r).map(|d| d.rule_name(&p).to_string())
        };
        assert_eq!(at_headers("/v1/chat", &[("x-o", "v2")]), Some("override".into()), "the override decided");
        assert_eq!(
            at_headers("/v1/chat", &[("x-department", "legal")]),
            Some("legal".into()),
            "an earlier rule"
        );
        assert_eq!(at_headers("/v1/chat", &[]), None, "the body rule may match: wait");
        assert_eq!(
            at_headers("/other", &[("x-user-id", "u1")]),
            Some("ramp".into()),
            "its other condition fails, the id is a header"
        );
        assert_eq!(at_headers("/other", &[]), None, "the split's id may come from the body");
        let mut r = req("/v1/chat", &[]);
        r.body = Some(br#"{"model": "qwen", "user": "u"}"#.to_vec());
        assert_eq!(decide(&p, &r).rule_name(&p), "qwen", "decided once the body is in");
        let not_yet = plan(
            r#"{"stable": "v1", "identity": {"from": [{"body": "/user"}]}, "rules": [{"name": "ramp",
               "split": [{"version": "v2", "schedule": [{"at": "2027-01-01T00:00:00Z", "percent": 10}]}]}]}"#,
        );
        let mut r = req("/v1/chat", &[]);
        r.body_pending = true;
        let d = crate::decide::decide_at_headers(&not_yet, &r).map(|d| d.version_name(&not_yet).to_string());
        assert_eq!(d, Some("v1".into()), "nothing gives gray yet: stable whoever the user is, no wait");
    }

    #[test]
    fn prompt_rules_wait_for_the_body_and_a_model_alone_never_does() {
        let p = plan(
            r#"{"stable": "v1", "versions": {"v2": {"model": "canary"}, "v4": {}}, "rules": [
               {"name": "dept", "when": {"headers": [{"name": "x-d", "present": true}], "prompt": [{"contains_any": ["PPT"]}]}, "version": "v3"},
               {"name": "long", "when": {"prompt": [{"min_chars": 10}, {"max_chars": 12}]}, "version": "v4"},
               {"name": "all", "version": "v2"}]}"#,
        );
        assert!(p.body.is_some(), "prompt rules and models read bodies");
        assert!(p.version_id(b"v4").is_some(), "versions names known versions");
        assert!(p.model(p.version_id(b"v2").unwrap()).is_some() && p.model(0).is_none());
        let at_headers = |headers: &[(&str, &str)]| {
            let mut r = req("/v1/chat", headers);
            r.body_pending = true;
            decide_at_headers(&p, &r).map(|d| d.rule_name(&p).to_string())
        };
        assert_eq!(at_headers(&[]), None, "rule long may match: wait");
        let only_model = plan(
            r#"{"stable": "v1", "versions": {"v2": {"model": "m"}}, "rules": [{"name": "all", "version": "v2"}]}"#,
        );
        let mut r = req("/v1/chat", &[]);
        r.body_pending = true;
        assert_eq!(decide_at_headers(&only_model, &r).map(|d| d.version), only_model.version_id(b"v2"));
        let with = |body: &str, headers: &[(&str, &str)]| {
            let mut r = req("/v1/chat", headers);
            r.body = Some(body.as_bytes().to_vec());
            decide(&p, &r).rule_name(&p).to_string()
        };
        let chat = |text: &str| format!(r#"{{"messages": [{{"role": "user", "content": "{text}"}}]}}"#);
        assert_eq!(with(&chat("a ppt"), &[("x-d", "1")]), "dept");
        assert_eq!(with(&chat("a ppt"), &[]), "all", "every condition must hold");
        assert_eq!(with(&chat("0123456789"), &[]), "long");
        assert_eq!(with(&chat("0123456789abc"), &[]), "all", "13 characters");
        assert_eq!(with("not json", &[("x-d", "1")]), "all", "no prompt: every prompt matcher fails");
        let mut r = req("/v1/chat", &[("x-d", "1")]);
        r.body = None;
        assert_eq!(decide(&p, &r).rule_name(&p), "all");
    }

    #[test]
    fn a_pin_to_stable_holds_while_the_tripped_gray_has_the_whole_split() {
        let guarded = pinned(100, r#", "guard": {"max_error_percent": 5}"#);
        let gray = guarded.watches.iter().position(|w| !w.stable).unwrap();
        let mut r = req("/", &[("u", "alice")]);
        r.tripped = vec![gray];
        let first = decide(&guarded, &r);
        assert_eq!((first.version_name(&guarded), first.pin), ("s", Some(PinOutcome::Issued)), "rolled back");
        r.headers.push(("cookie".into(), cookie_of(&first).into_bytes()));
        let again = decide(&guarded, &r);
        assert_eq!(
            (again.pin, again.pin_cookies.len()),
            (Some(PinOutcome::Kept), 0),
            "no churn during the rollback"
        );
    }
}
