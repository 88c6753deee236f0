//! Session pins in a split rule's decision (DESIGN.md "Session pins" and "v2 corrections"): a
//! valid pin keeps its session on its version across ramp steps while the rule can still give
//! that version; otherwise the hash decides and a new pin is issued. Each rule has its own pin
//! cookie, so one rule's decision never touches another's pin (but past 4 KiB of pin cookies,
//! the oldest go first).

use super::cookie::{expire_cookie, set_cookie};
use super::identity::user_id;
use super::pin::{self, Limits, Refused};
use super::split::SplitOutcome;
use super::Ctx;
use crate::bucket::BUCKETS;
use crate::config::{PinSpec, Plan, Rule, Split, PIN_COOKIES_MAX};
use crate::request::Host;

/// What became of a session pin, counted in `graysplit_pins_total.result.<kept|issued|ignored>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// A valid pin kept its version.
    Kept,
    /// A valid pin kept its version and is renewed (less than half of `idle_s` was left), or
    /// a v2-format pin is issued again in today's format.
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

/// The split's outcome with the session's pin applied: `hashed` is what the bucket gave.
pub(super) fn keep<H: Host>(
    plan: &Plan,
    rule: &Rule,
    split: &Split,
    spec: &PinSpec,
    hashed: SplitOutcome,
    now: i64,
    cx: &mut Ctx<'_, H>,
) -> SplitOutcome {
    let Some(name) = split.pin_cookie.as_deref() else { return hashed };
    let user = user_id(plan, cx, false).ok().flatten().map(<[u8]>::to_vec).unwrap_or_default();
    let salt = split.salt_colon.strip_suffix(b":").unwrap_or(&split.salt_colon);
    let now_s = now.div_euclid(1_000_000_000);
    let at = Limits { now_s, idle_s: spec.idle_s, max_s: spec.max_s };
    let mut from_v2_format = false;
    let checked = match cx.facts.cookie(name.as_bytes()) {
        Some(value) => Some(pin::verify(value, &spec.keys, &rule.name, salt, &user, at)),
        None => match cx.facts.cookie(spec.cookie.as_bytes()) {
            Some(v) if pin::v2_format_rule(v) == Some(rule.name.as_bytes()) => {
                from_v2_format = true;
                Some(pin::verify_v2_format(v, &spec.keys, &rule.name, salt, &user, at))
            }
            _ => None,
        },
    };
    let verdict = checked.map(|r| {
        r.and_then(|p| usable(plan, split, &p.version, now, cx).map(|o| (o, p)).ok_or(Refused::Unavailable))
    });
    let idle = i64::from(spec.idle_s);
    let (mut out, outcome, issue) = match verdict {
        Some(Ok((o, p))) => {
            let until = (now_s + idle).min(p.began_s.saturating_add(i64::from(spec.max_s)));
            let due = p.expires_s - now_s < i64::from(spec.idle_s / 2) && until > p.expires_s;
            let out = SplitOutcome { bucket: hashed.bucket, ..o };
            match (due, from_v2_format) {
                (true, _) => (out, PinOutcome::Renewed, Some((p.began_s, until))),
                (false, true) => (out, PinOutcome::Renewed, Some((p.began_s, p.expires_s))),
                (false, false) => (out, PinOutcome::Kept, None),
            }
        }
        // A new session: idle_s <= max_s, so its first pin lasts idle_s.
        Some(Err(why)) => (hashed, PinOutcome::Replaced(why), Some((now_s, now_s + idle))),
        None => (hashed, PinOutcome::Issued, Some((now_s, now_s + idle))),
    };
    out.pin = Some(outcome);
    let Some((began_s, expires_s)) = issue else { return out };
    let key = spec.keys.first().map_or(&[][..], |k| k);
    let value = pin::sign(key, &rule.name, plan.version_name(out.version), began_s, expires_s, salt, &user);
    let secure = cx.facts.header(spec.scheme_slot) == Some(b"https");
    if spec.tight {
        out.pin_cookies = drop_oldest(spec, name, name.len() + 1 + value.len(), secure, cx);
    }
    if from_v2_format {
        out.pin_cookies.push(expire_cookie(&spec.cookie, secure));
    }
    let max_age = u64::try_from(expires_s - now_s).unwrap_or(0);
    out.pin_cookies.push(set_cookie(name, &value, max_age, secure));
    out
}

/// The outcome for a pinned version if the rule can still give it now: stable while the
/// split's current sum (of entries not tripped) is below 100 %, or an entry whose current percent is above 0 and whose
/// guard has not tripped.
fn usable<H: Host>(
    plan: &Plan,
    split: &Split,
    version: &str,
    now: i64,
    cx: &Ctx<'_, H>,
) -> Option<SplitOutcome> {
    let stable = SplitOutcome::stable(split, None);
    if version == plan.version_name(0) {
        // What the split still gives to gray now: a tripped entry's buckets are stable's.
        let sum: u32 = split
            .entries
            .iter()
            .filter(|e| !e.watch.is_some_and(|w| cx.facts.host.tripped(w)))
            .map(|e| e.share.at(now))
            .sum();
        return (sum < BUCKETS).then_some(stable);
    }
    let e = split.entries.iter().find(|e| plan.version_name(e.version) == version)?;
    let tripped = e.watch.is_some_and(|w| cx.facts.host.tripped(w));
    (e.share.at(now) > 0 && !tripped).then_some(SplitOutcome {
        version: e.version,
        metric: e.metric,
        watch: e.watch,
        ..stable
    })
}

/// When this rule's new pin (`len` bytes as name=value) and the other rules' pin cookies the
/// request carries would pass [`PIN_COOKIES_MAX`], the `Set-Cookie`s that expire the oldest
/// others (by when their session began; unreadable ones first) until it fits.
fn drop_oldest<H: Host>(
    spec: &PinSpec,
    own: &str,
    len: usize,
    secure: bool,
    cx: &mut Ctx<'_, H>,
) -> Vec<String> {
    let prefix = format!("{}.", spec.cookie);
    let mut others: Vec<(Option<i64>, String, usize)> = cx
        .facts
        .cookies()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix.as_bytes()) && n.as_slice() != own.as_bytes())
        .map(|(n, v)| (pin::began(&v), String::from_utf8_lossy(&n).into_owned(), n.len() + 1 + v.len()))
        .collect();
    others.sort();
    let mut total = len + others.iter().map(|o| o.2).sum::<usize>();
    let mut out = Vec::new();
    for (_, name, size) in others {
        if total <= PIN_COOKIES_MAX {
            break;
        }
        total -= size;
        out.push(expire_cookie(&name, secure));
    }
    out
}
