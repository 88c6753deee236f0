//! A `split` rule's version: the user's bucket picks the entry whose band (at this time, for a
//! schedule) holds it; the rest, no user id, and an entry whose guard has tripped go to stable.
//! With session pins, [`super::session`] may keep the session's version instead.

use super::identity::user_id;
use super::session::{self, PinOutcome};
use super::{Ctx, DecidedBy, Decision, ShadowPick};
use crate::bucket::bucket;
use crate::config::{Entry, MetricId, Plan, Rule, Split, VersionId, WatchId};
use crate::request::{Host, Pending};

/// What a split rule decided.
pub(super) struct SplitOutcome {
    pub version: VersionId,
    pub metric: MetricId,
    pub bucket: Option<u32>,
    pub watch: Option<WatchId>,
    pub pin: Option<PinOutcome>,
    pub pin_cookies: Vec<String>,
    pub shadow: Option<ShadowPick>,
}

impl SplitOutcome {
    /// Stable, as the rule counts it.
    pub fn stable(split: &Split, bucket: Option<u32>) -> Self {
        SplitOutcome {
            version: 0,
            metric: split.stable_metric,
            bucket,
            watch: split.stable_watch,
            pin: None,
            pin_cookies: Vec::new(),
            shadow: None,
        }
    }

    pub fn into_decision(self, rule: usize) -> Decision {
        let mut d = Decision::new(self.version, DecidedBy::Rule(rule), self.metric, None);
        d.bucket = self.bucket;
        d.watch = self.watch;
        d.pin = self.pin;
        d.pin_cookies = self.pin_cookies;
        d.shadow = self.shadow;
        d
    }
}

pub(super) fn decide<H: Host>(
    plan: &Plan,
    rule: &Rule,
    split: &Split,
    cx: &mut Ctx<'_, H>,
) -> Result<SplitOutcome, Pending> {
    let now = if split.scheduled || plan.pin.is_some() { cx.facts.now() } else { 0 };
    if user_id(plan, cx, false).is_err() {
        // The id would come from a body still to come; if nothing gives gray now (a schedule
        // before its first step, every entry tripped) and there are no pins, the answer is
        // stable whoever the user is: no need to wait for the body.
        if plan.pin.is_none() && !split.entries.iter().any(|e| live(e, now, cx)) {
            return Ok(SplitOutcome::stable(split, None));
        }
        return Err(Pending);
    }
    let Some(user) = user_id(plan, cx, false)? else { return Ok(SplitOutcome::stable(split, None)) };
    let b = bucket(&split.salt_colon, user);
    // The shadow cohort, from the id while it is at hand (the path and header checks below
    // need the request again).
    let cohort = split.shadow.and_then(|sid| {
        let spec = plan.shadows.get(sid)?;
        spec.in_cohort(user).then(|| ShadowPick { shadow: sid, user_hash: user_hash(&spec.salt_colon, user) })
    });
    let mut upper = 0;
    let mut hashed = SplitOutcome::stable(split, Some(b));
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
    let mut out = match &plan.pin {
        Some(spec) => session::keep(plan, rule, split, spec, hashed, now, cx),
        None => hashed,
    };
    // DESIGN.md "Shadow": a stable-decided request of the cohort, under the shadow's paths,
    // that is not itself a shadow.
    if let Some(pick) = cohort.filter(|_| out.version == 0) {
        if let Some(spec) = plan.shadows.get(pick.shadow) {
            // The path is read only for a shadow that has path prefixes.
            let covered = spec.path_prefixes.is_empty() || spec.covers(cx.facts.path());
            if covered && cx.facts.header(spec.marker_slot).is_none() {
                out.shadow = Some(pick);
            }
        }
    }
    Ok(out)
}

/// The first 8 bytes of SHA-256 of `salt_colon` (the shadow's salt and `:`) and `user`.
fn user_hash(salt_colon: &[u8], user: &[u8]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(salt_colon).chain_update(user).finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    out
}

/// Whether an entry gives its version to anyone now: a share above 0, its guard not tripped.
fn live<H: Host>(e: &Entry, now: i64, cx: &Ctx<'_, H>) -> bool {
    e.share.at(now) > 0 && !e.watch.is_some_and(|w| cx.facts.host.tripped(w))
}
