//! Whether a rule decides: its switches (`enabled`, `starts_at`, `expires_at`) and its `when`
//! conditions, all of which must hold.

use super::identity::user_id;
use super::{Ctx, RuleVerdict};
use crate::body;
use crate::config::{Cond, Plan, Rule};
use crate::request::{Host, Pending};

/// Why the rule does or does not decide. [`Pending`] when no condition has failed yet and one
/// needs a body still to come: it could go either way.
pub(super) fn verdict<H: Host>(
    plan: &Plan,
    rule: &Rule,
    cx: &mut Ctx<'_, H>,
) -> Result<RuleVerdict, Pending> {
    if !rule.enabled {
        return Ok(RuleVerdict::Disabled);
    }
    if rule.starts_at.is_some() || rule.expires_at.is_some() {
        let now = cx.facts.now();
        if rule.starts_at.is_some_and(|s| now < s) {
            return Ok(RuleVerdict::NotStarted);
        }
        if rule.expires_at.is_some_and(|e| now >= e) {
            return Ok(RuleVerdict::Expired);
        }
    }
    // A condition that fails decides the verdict even after one that is pending: a rule whose
    // other conditions cannot hold needs no body.
    let mut pending = false;
    for (i, c) in rule.when.iter().enumerate() {
        match holds(plan, c, cx) {
            Ok(true) => {}
            Ok(false) => return Ok(RuleVerdict::ConditionFailed(i)),
            Err(Pending) => pending = true,
        }
    }
    if pending {
        Err(Pending)
    } else {
        Ok(RuleVerdict::Decided)
    }
}

fn holds<H: Host>(plan: &Plan, cond: &Cond, cx: &mut Ctx<'_, H>) -> Result<bool, Pending> {
    let f = &mut cx.facts;
    Ok(match cond {
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
        Cond::Body(pointer, m) => body::matches(f.body_field(pointer)?, m),
        // No prompt: every prompt matcher fails.
        Cond::Prompt(m) => f.prompt()?.is_some_and(|p| p.matches(m)),
        Cond::Users(sorted) => {
            user_id(plan, cx, false)?.is_some_and(|u| sorted.binary_search_by(|x| x[..].cmp(u)).is_ok())
        }
    })
}
