//! The decision: which version serves this request, and which rule said so.
//!
//! Order (DESIGN.md): a valid override first; then the rules in order, the first whose `when`
//! holds deciding; then `stable`. A pure function of the compiled plan, the request (through
//! [`Host`]) and the time.

pub mod bucket;
mod identity;
pub mod matcher;
pub mod pin;

use pin::Refused;

use bucket::bucket;
use identity::{user_id, Identity};

use crate::config::{
    Action, Cond, MetricId, Plan, Rule, Split, VersionId, WatchId, METRIC_OVERRIDE_ACCEPTED,
    METRIC_OVERRIDE_REJECTED,
};
use crate::request::{body, Facts, Host};

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
    /// When a guarded rule decided: what its guard counts the response under.
    pub watch: Option<WatchId>,
    /// With session pins, when a split rule decided with a user id: what became of the pin.
    pub pin: Option<PinOutcome>,
    /// The pin's `Set-Cookie` value, when one is issued or renewed.
    pub pin_cookie: Option<String>,
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

/// What became of a session pin (DESIGN.md "Session pins"), counted in
/// `graysplit_pins_total.result.<kept|issued|ignored>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// A valid pin kept its version.
    Kept,
    /// A valid pin kept its version and is renewed (less than half of `idle_s` was left).
    Renewed,
    /// No pin came: one is issued.
    Issued,
    /// A pin came and was ignored (the hash decided), and is replaced.
    Replaced(Refused),
}

impl PinOutcome {
    /// The `graysplit_pins_total` results it counts: kept, issued, ignored.
    pub fn counts(self) -> (bool, bool, bool) {
        match self {
            PinOutcome::Kept => (true, false, false),
            PinOutcome::Renewed => (true, true, false),
            PinOutcome::Issued => (false, true, false),
            PinOutcome::Replaced(_) => (false, true, true),
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
    identity: Identity,
    set_cookie: Option<String>,
}

/// Decides the version for one request.
pub fn decide<H: Host>(plan: &Plan, host: &H) -> Decision {
    decide_traced(plan, host, &mut ())
}

/// [`decide`], reporting each step to `trace`.
pub fn decide_traced<H: Host, T: Tracer>(plan: &Plan, host: &H, trace: &mut T) -> Decision {
    let mut cx = Ctx { facts: Facts::new(plan, host), identity: Identity::Unresolved, set_cookie: None };
    let mut d = decide_inner(plan, &mut cx, trace);
    if plan.sticky.is_some() {
        // A visitor without an id gets one minted now, whoever decided, so the next request
        // already carries it. (Without a sticky cookie there is nothing to mint, and no reason
        // to read the id when no rule asked for it.)
        user_id(plan, &mut cx);
    }
    d.set_cookie = cx.set_cookie;
    d
}

fn decide_inner<H: Host, T: Tracer>(plan: &Plan, cx: &mut Ctx<'_, H>, trace: &mut T) -> Decision {
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
                    return Decision {
                        version: v,
                        by: DecidedBy::Override,
                        metric: o.metrics.get(v).copied().unwrap_or(plan.default_metric),
                        override_metric: Some(METRIC_OVERRIDE_ACCEPTED),
                        bucket: None,
                        watch: None,
                        pin: None,
                        pin_cookie: None,
                        set_cookie: None,
                    };
                }
                _ => override_metric = Some(METRIC_OVERRIDE_REJECTED),
            }
        }
    }
    for (i, rule) in plan.rules.iter().enumerate() {
        let verdict = rule_verdict(plan, rule, cx);
        trace.rule(i, verdict);
        if verdict != RuleVerdict::Decided {
            continue;
        }
        let (version, metric, bucket, watch, pin, pin_cookie) = match &rule.action {
            Action::Fixed { version, metric } => (*version, *metric, None, None, None, None),
            Action::Split(split) => {
                let o = split_decision(plan, rule, split, cx);
                (o.version, o.metric, o.bucket, o.watch, o.pin, o.pin_cookie)
            }
        };
        return Decision {
            version,
            by: DecidedBy::Rule(i),
            metric,
            override_metric,
            bucket,
            watch,
            pin,
            pin_cookie,
            set_cookie: None,
        };
    }
    Decision {
        version: 0,
        by: DecidedBy::Default,
        metric: plan.default_metric,
        override_metric,
        bucket: None,
        watch: None,
        pin: None,
        pin_cookie: None,
        set_cookie: None,
    }
}

/// What a split rule decided.
struct SplitOutcome {
    version: VersionId,
    metric: MetricId,
    bucket: Option<u32>,
    watch: Option<WatchId>,
    pin: Option<PinOutcome>,
    pin_cookie: Option<String>,
}

/// A split: the user's bucket picks the entry whose band (at this time, for a schedule) holds
/// it; the rest, no user id, and an entry whose guard has tripped, go to stable. With session
/// pins, a valid pin for a version the rule can still give keeps it instead.
fn split_decision<H: Host>(plan: &Plan, rule: &Rule, split: &Split, cx: &mut Ctx<'_, H>) -> SplitOutcome {
    let stable = |bucket| SplitOutcome {
        version: 0,
        metric: split.stable_metric,
        bucket,
        watch: split.stable_watch,
        pin: None,
        pin_cookie: None,
    };
    let now = if split.scheduled || plan.pin.is_some() { cx.facts.now() } else { 0 };
    let Some(user) = user_id(plan, cx) else { return stable(None) };
    let b = bucket(&split.salt_colon, user);
    let mut upper = 0;
    let mut hashed = stable(Some(b));
    for e in &split.entries {
        upper += e.share.at(now);
        if b < upper {
            // A tripped version's buckets go to stable: a rollback.
            if !(e.watch.is_some_and(|w| cx.facts.host.tripped(w)) && e.version != 0) {
                hashed = SplitOutcome { version: e.version, metric: e.metric, watch: e.watch, ..hashed };
            }
            break;
        }
    }
    let Some(spec) = &plan.pin else { return hashed };
    let user = user_id(plan, cx).map(<[u8]>::to_vec).unwrap_or_default();
    let salt = split.salt_colon.strip_suffix(b":").unwrap_or(&split.salt_colon);
    let now_s = now.div_euclid(1_000_000_000);
    let checked = cx
        .facts
        .cookie(spec.cookie.as_bytes())
        .map(|value| pin::verify(value, &spec.keys, &rule.name, salt, &user, now_s, spec.idle_s));
    let verdict = checked.map(|r| {
        r.and_then(|p| {
            usable(plan, split, &p.version, now, cx).map(|o| (o, p.expires_s)).ok_or(Refused::Unavailable)
        })
    });
    let (mut out, outcome, renew) = match verdict {
        Some(Ok((o, expires_s))) => {
            let renew = expires_s - now_s < i64::from(spec.idle_s / 2);
            (
                SplitOutcome { bucket: Some(b), ..o },
                if renew { PinOutcome::Renewed } else { PinOutcome::Kept },
                renew,
            )
        }
        Some(Err(why)) => (hashed, PinOutcome::Replaced(why), true),
        None => (hashed, PinOutcome::Issued, true),
    };
    out.pin = Some(outcome);
    if renew {
        let value = pin::sign(
            spec.keys.first().map_or(&[][..], |k| k),
            &rule.name,
            plan.version_name(out.version),
            now_s + i64::from(spec.idle_s),
            salt,
            &user,
        );
        let secure = cx.facts.header(spec.scheme_slot) == Some(b"https");
        out.pin_cookie = Some(format!(
            "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
            spec.cookie,
            spec.idle_s,
            if secure { "; Secure" } else { "" }
        ));
    }
    out
}

/// The outcome for a pinned version if the rule can still give it now: stable, or an entry
/// whose current percent is above 0 and whose guard has not tripped.
fn usable<H: Host>(
    plan: &Plan,
    split: &Split,
    version: &str,
    now: i64,
    cx: &Ctx<'_, H>,
) -> Option<SplitOutcome> {
    let none = SplitOutcome {
        version: 0,
        metric: split.stable_metric,
        bucket: None,
        watch: split.stable_watch,
        pin: None,
        pin_cookie: None,
    };
    if version == plan.version_name(0) {
        return Some(none);
    }
    let e = split.entries.iter().find(|e| plan.version_name(e.version) == version)?;
    let tripped = e.watch.is_some_and(|w| cx.facts.host.tripped(w));
    (e.share.at(now) > 0 && !tripped).then_some(SplitOutcome {
        version: e.version,
        metric: e.metric,
        watch: e.watch,
        ..none
    })
}

fn rule_verdict<H: Host>(plan: &Plan, rule: &Rule, cx: &mut Ctx<'_, H>) -> RuleVerdict {
    if !rule.enabled {
        return RuleVerdict::Disabled;
    }
    if rule.starts_at.is_some() || rule.expires_at.is_some() {
        let now = cx.facts.now();
        if rule.starts_at.is_some_and(|s| now < s) {
            return RuleVerdict::NotStarted;
        }
        if rule.expires_at.is_some_and(|e| now >= e) {
            return RuleVerdict::Expired;
        }
    }
    match rule.when.iter().position(|c| !cond_holds(plan, c, cx)) {
        Some(failed) => RuleVerdict::ConditionFailed(failed),
        None => RuleVerdict::Decided,
    }
}

fn cond_holds<H: Host>(plan: &Plan, cond: &Cond, cx: &mut Ctx<'_, H>) -> bool {
    let f = &mut cx.facts;
    match cond {
        Cond::Methods(list) => f.method().is_some_and(|m| list.iter().any(|x| &x[..] == m)),
        Cond::PathPrefix(p) => f.path().starts_with(p),
        Cond::Header(slot, m) => m.matches(f.header(*slot)),
        Cond::Cookie(name, m) => m.matches(f.cookie(name)),
        Cond::Query(name, m) => m.matches(f.query(name).as_deref()),
        Cond::Sources(cidrs) => f.source().is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip))),
        Cond::Claim(name, m) => match f.claim(name) {
            Some(c) => c.matches(m),
            None => m.matches(None),
        },
        Cond::Body(pointer, m) => body::matches(f.body_field(pointer), m),
        Cond::Users(sorted) => {
            user_id(plan, cx).is_some_and(|u| sorted.binary_search_by(|x| x[..].cmp(u)).is_ok())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]
    use super::*;
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

    /// The pin a response set, as the next request sends it back.
    fn cookie_of(d: &Decision) -> String {
        let Some(c) = d.pin_cookie.clone() else { panic!("no pin was issued: {d:?}") };
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
        assert!(first
            .pin_cookie
            .as_ref()
            .unwrap()
            .ends_with("; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"));
        r.headers.push(("cookie".into(), cookie_of(&first).into_bytes()));
        let kept = decide(&at_50, &r);
        assert_eq!(
            (kept.version_name(&at_50), kept.pin, kept.pin_cookie.as_deref()),
            ("s", Some(PinOutcome::Kept), None),
            "the ramp step waits for the next session"
        );
        r.now = NOW + 301 * 1_000_000_000;
        let renewed = decide(&at_50, &r);
        assert_eq!(
            (renewed.version_name(&at_50), renewed.pin),
            ("s", Some(PinOutcome::Renewed)),
            "renewed past half of idle_s"
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
    fn a_pin_of_another_user_a_forged_one_and_rollbacks_are_ignored() {
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
        let forged = pin.replace(":g:", ":s:");
        assert_eq!(back(&at_10, &gray_user, &forged).1, Some(PinOutcome::Replaced(Refused::BadSignature)));
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
            assert_eq!((d.pin, d.pin_cookie), (None, None), "{why}");
        }
        let https = decide(&p, &req("/", &[("u", "a"), (":scheme", "https")]));
        assert!(https.pin_cookie.unwrap().ends_with("; Secure"));
    }
}
