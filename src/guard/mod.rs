//! Guards (DESIGN.md "Guards"): automatic rollback in the data plane. What the guard of a rule
//! knows lives in the proxy's shared data, one value per guarded rule, read and written with
//! compare-and-swap by every worker VM of one Envoy: [`RuleState`], the sliding [`Window`] of
//! each version's responses and the version's trip. This module is pure: the encoding of that
//! value, and what a worker does with it ([`sync`] when a config is applied, [`flush`] on each
//! tick, the trip condition [`trips`]). The glue (src/filter/guards.rs) makes the host calls.

pub mod tally;
pub mod window;

pub use tally::Tally;
pub use window::{Counts, Window};

use crate::config::Guard;

/// The shared-data key of the guard of rule `rule` of the plugin named `plugin` (the Wasm
/// filter config's `name`; Istio's `<namespace>.<WasmPlugin>`), whose fields as written are
/// `fingerprint`. Shared data is one store per VM id, which every plugin and every listener on a
/// proxy shares by default, so two plugins' rules of the same name must not meet there, nor two
/// listeners' rules of the same name with different guards (DESIGN.md "v2 corrections"). A push
/// that keeps the rule's guard keeps the key, its window and trips, whatever else it changes (a
/// ramp step, other rules, a version added, a new stable: DESIGN.md "Guards"); another guard is
/// another key, an empty window. The plugin name (any bytes) is length-prefixed, so no two inputs
/// make the same key.
pub fn key(plugin: &str, rule: &str, fingerprint: &str) -> String {
    format!("graysplit/guard/{}:{plugin}/{rule}/{fingerprint}", plugin.len())
}

/// A trip: when, and what the window held when it tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    pub at_ns: i64,
    pub errors: u64,
    pub total: u64,
}

/// One version of a guarded rule, by name (version ids differ between configs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionState {
    pub name: String,
    pub trip: Option<Trip>,
    pub window: Window,
}

/// Everything a rule's guard knows, shared by the worker VMs of one Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleState {
    /// The guard that counted this (`config::Guard::fingerprint`): a config with another guard
    /// for the rule starts again from nothing (re-arming).
    pub fingerprint: String,
    pub versions: Vec<VersionState>,
}

impl RuleState {
    pub fn new(fingerprint: &str) -> Self {
        RuleState { fingerprint: fingerprint.to_string(), versions: Vec::new() }
    }

    pub fn version(&self, name: &str) -> Option<&VersionState> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// Version `name`, added (empty) when the value does not have it yet.
    fn version_mut(&mut self, name: &str) -> Option<&mut VersionState> {
        let i = match self.versions.iter().position(|v| v.name == name) {
            Some(i) => i,
            None => {
                self.versions.push(VersionState {
                    name: name.to_string(),
                    trip: None,
                    window: Window::default(),
                });
                self.versions.len() - 1
            }
        };
        self.versions.get_mut(i)
    }

    /// Whether version `name` has tripped.
    pub fn tripped(&self, name: &str) -> bool {
        self.version(name).is_some_and(|v| v.trip.is_some())
    }

    const MAGIC: &'static [u8; 4] = b"GSG2";
    const MAGIC_V1: &'static [u8; 4] = b"GSG1";

    /// The bytes stored in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.versions.len() * 128);
        out.extend_from_slice(Self::MAGIC);
        put_str(&mut out, &self.fingerprint);
        out.extend_from_slice(&(self.versions.len() as u16).to_le_bytes());
        for v in &self.versions {
            put_str(&mut out, &v.name);
            match v.trip {
                None => out.push(0),
                Some(t) => {
                    out.push(1);
                    out.extend_from_slice(&t.at_ns.to_le_bytes());
                    out.extend_from_slice(&t.errors.to_le_bytes());
                    out.extend_from_slice(&t.total.to_le_bytes());
                }
            }
            out.extend_from_slice(&(v.window.buckets.len() as u16).to_le_bytes());
            for b in &v.window.buckets {
                out.extend_from_slice(&b.start_s.to_le_bytes());
                out.extend_from_slice(&b.total.to_le_bytes());
                out.extend_from_slice(&b.errors.to_le_bytes());
                out.extend_from_slice(&b.answers.to_le_bytes());
                out.extend_from_slice(&b.output.to_le_bytes());
            }
        }
        out
    }

    /// Reads what [`encode`](Self::encode) wrote; `None` for anything else (another build's
    /// format, a cut value): the caller starts again from nothing rather than fail.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        // GSG1 (before guards on answers) is read too: a build that replaces an older one in a
        // running Envoy shares its store (one per VM id) and must keep its trips.
        let v1 = match r.take(4)? {
            m if m == Self::MAGIC => false,
            m if m == Self::MAGIC_V1 => true,
            _ => return None,
        };
        let fingerprint = r.str()?;
        let n = r.u16()?;
        let mut versions = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            let name = r.str()?;
            let trip = match r.take(1)? {
                [0] => None,
                [1] => Some(Trip { at_ns: r.i64()?, errors: r.u64()?, total: r.u64()? }),
                _ => return None,
            };
            let nb = r.u16()?;
            let mut buckets = Vec::with_capacity(usize::from(nb).min(128));
            for _ in 0..nb {
                let (start_s, total, errors) = (r.i64()?, r.u32()?, r.u32()?);
                let (answers, output) = if v1 { (0, 0) } else { (r.u32()?, r.u64()?) };
                buckets.push(window::Bucket { start_s, total, errors, answers, output });
            }
            if versions.iter().any(|v: &VersionState| v.name == name) {
                return None; // never written: one entry per version
            }
            versions.push(VersionState { name, trip, window: Window { buckets } });
        }
        r.0.is_empty().then_some(RuleState { fingerprint, versions })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(b.get(..n).unwrap_or_default());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// What the shared value must become when a config with `guard` is applied: `None` when it can
/// stay (the same guard: its window and trips hold, however often the config is pushed), else
/// a fresh state for this guard (none yet, or another guard: re-armed, from an empty window).
pub fn sync(current: Option<&RuleState>, guard: &Guard) -> Option<RuleState> {
    match current {
        Some(s) if s.fingerprint == guard.fingerprint => None,
        _ => Some(RuleState::new(&guard.fingerprint)),
    }
}

/// Why a version tripped, with what its window held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// More than `max_error_percent` of its responses were errors.
    Errors { errors: u64, total: u64 },
    /// Its answers' mean output tokens exceeded `max_output_ratio` times stable's: (answers,
    /// their output tokens) of the version and of stable.
    Output { answers: u64, output: u64, stable_answers: u64, stable_output: u64 },
}

/// A version that tripped in a [`flush`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrip {
    pub version: String,
    pub cause: Cause,
}

/// A worker's counts since its last flush, by version name.
pub type Pending<'a> = [(&'a str, Counts)];

/// Adds a worker's `pending` counts to the shared `state` at `now_ns` and trips the gray
/// versions that now meet a trip condition. `None` when `state` belongs to another guard
/// (a newer config re-armed it: these counts are of the old guard and are dropped).
pub fn flush(
    state: &RuleState,
    guard: &Guard,
    stable: &str,
    pending: &Pending<'_>,
    now_ns: i64,
) -> Option<(RuleState, Vec<NewTrip>)> {
    if state.fingerprint != guard.fingerprint {
        return None;
    }
    let now_s = now_ns.div_euclid(1_000_000_000);
    let mut next = state.clone();
    for (name, counts) in pending {
        if counts.is_empty() {
            continue;
        }
        if let Some(v) = next.version_mut(name) {
            v.window.add(now_s, guard.window_s, counts);
        }
    }
    for v in &mut next.versions {
        v.window.prune(now_s, guard.window_s);
    }
    let stable_state = next.version(stable);
    let base = stable_state.map(|v| v.window.totals(now_s, guard.window_s)).unwrap_or((0, 0));
    let base_output = stable_state.map(|v| v.window.output(now_s, guard.window_s)).unwrap_or((0, 0));
    let mut tripped = Vec::new();
    for v in &mut next.versions {
        if v.name == stable || v.trip.is_some() {
            continue;
        }
        let (total, errors) = v.window.totals(now_s, guard.window_s);
        let (answers, output) = v.window.output(now_s, guard.window_s);
        let cause = if trips(guard, (total, errors), base) {
            Cause::Errors { errors, total }
        } else if output_trips(guard, (answers, output), base_output) {
            Cause::Output { answers, output, stable_answers: base_output.0, stable_output: base_output.1 }
        } else {
            continue;
        };
        v.trip = Some(Trip { at_ns: now_ns, errors, total });
        tripped.push(NewTrip { version: v.name.clone(), cause });
    }
    Some((next, tripped))
}

/// DESIGN.md "Guards on answers": a gray version whose answers (`answers` of them with
/// `output` tokens in all) are longer on average than `max_output_ratio` times stable's,
/// both with at least `min_requests` answers in the window.
pub fn output_trips(
    guard: &Guard,
    (answers, output): (u64, u64),
    (stable_answers, stable_output): (u64, u64),
) -> bool {
    let Some(ratio) = guard.max_output_ratio else { return false };
    let min = u64::from(guard.min_requests).max(1);
    if answers < min || stable_answers < min {
        return false;
    }
    // output / answers > ratio / 100 * stable_output / stable_answers, in integers.
    u128::from(output) * u128::from(stable_answers) * 100
        > u128::from(ratio) * u128::from(stable_output) * u128::from(answers)
}

/// DESIGN.md's trip condition for a gray version whose window holds (`total`, `errors`), its
/// rule's stable holding `stable`: at least `min_requests` responses, more than
/// `max_error_percent` of them errors, and stable does not explain it (stable with at least
/// `min_requests` responses and an error share at least as high means the fault is not the
/// gray version's).
pub fn trips(guard: &Guard, (total, errors): (u64, u64), (stable_total, stable_errors): (u64, u64)) -> bool {
    let min = u64::from(guard.min_requests);
    if total < min || total == 0 {
        return false;
    }
    // errors / total > max_error_bp / 10000, in integers (u128: the counts come from shared
    // data another VM wrote, and their products may not fit u64).
    let (total, errors, stable_total, stable_errors) =
        (u128::from(total), u128::from(errors), u128::from(stable_total), u128::from(stable_errors));
    if errors * 10_000 <= u128::from(guard.max_error_bp) * total {
        return false;
    }
    let stable_explains = stable_total >= u128::from(min) && stable_errors * total >= errors * stable_total;
    !stable_explains
}

#[cfg(test)]
mod key_tests {
    use super::key;

    #[test]
    fn a_guard_s_key_tells_plugins_rules_and_guards_apart() {
        let base = key("graysplit", "ramp", "max_error_bp=500");
        for other in [
            key("other", "ramp", "max_error_bp=500"),
            key("graysplit", "ramp-b", "max_error_bp=500"),
            key("graysplit", "ramp", "max_error_bp=501"),
            key("graysplit/ramp", "x", "max_error_bp=500"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, key("graysplit", "ramp", "max_error_bp=500"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::type_complexity)]
    use super::*;
    use crate::config::parse;

    const S: i64 = 1_000_000_000;

    fn c(total: u32, errors: u32) -> Counts {
        Counts { total, errors, ..Counts::default() }
    }

    fn out(answers: u32, output: u64) -> Counts {
        Counts { total: answers, answers, output, ..Counts::default() }
    }

    fn guard(json_guard: &str) -> Guard {
        let cfg = format!(
            r#"{{"stable": "v1", "identity": {{"from": [{{"header": "u"}}]}}, "rules": [
            {{"name": "r", "split": [{{"version": "v2", "percent": 50}}, {{"version": "v3", "percent": 10}}], "guard": {json_guard}}}]}}"#
        );
        parse(cfg.as_bytes()).unwrap().guards[0].clone()
    }

    fn guard_llm(json_guard: &str) -> Guard {
        let cfg = format!(
            r#"{{"stable": "v1", "llm": {{}}, "identity": {{"from": [{{"header": "u"}}]}}, "rules": [
            {{"name": "r", "split": [{{"version": "v2", "percent": 50}}], "guard": {json_guard}}}]}}"#
        );
        parse(cfg.as_bytes()).unwrap().guards[0].clone()
    }

    #[test]
    fn trip_condition_as_design_states_it() {
        let g = guard(r#"{"max_error_percent": 5, "min_requests": 50}"#);
        let cases: &[((u64, u64), (u64, u64), bool, &str)] = &[
            ((49, 49), (0, 0), false, "below min_requests never trips"),
            ((50, 2), (0, 0), false, "4% is not above 5%"),
            ((100, 5), (0, 0), false, "exactly 5% is not above it"),
            ((100, 6), (0, 0), true, "6% trips"),
            ((100, 6), (100, 6), false, "stable as bad as gray: not gray's fault"),
            ((100, 6), (100, 7), false, "stable worse than gray"),
            ((100, 50), (100, 10), true, "stable failing less than gray"),
            ((100, 50), (49, 49), true, "stable below min_requests explains nothing"),
        ];
        for (gray, stable, want, why) in cases {
            assert_eq!(trips(&g, *gray, *stable), *want, "{why}");
        }
    }

    #[test]
    fn a_flush_trips_the_failing_version_only_and_keeps_the_trip() {
        let g = guard(r#"{"max_error_percent": 10, "min_requests": 20, "window_s": 30}"#);
        let s0 = RuleState::new(&g.fingerprint);
        let (s1, t1) =
            flush(&s0, &g, "v1", &[("v2", c(10, 5)), ("v3", c(30, 0)), ("v1", c(30, 0))], 100 * S).unwrap();
        assert!(t1.is_empty(), "v2 has 10 responses, below 20");
        let (s2, t2) = flush(&s1, &g, "v1", &[("v2", c(10, 5))], 101 * S).unwrap();
        assert_eq!(t2, [NewTrip { version: "v2".into(), cause: Cause::Errors { errors: 10, total: 20 } }]);
        assert!(s2.tripped("v2") && !s2.tripped("v3") && !s2.tripped("v1"));
        let (s3, t3) = flush(&s2, &g, "v1", &[("v2", c(100, 0))], 500 * S).unwrap();
        assert!(t3.is_empty() && s3.tripped("v2"), "a trip holds, whatever comes later");
    }

    #[test]
    fn answers_longer_than_the_ratio_times_stable_s_trip() {
        let g = guard_llm(r#"{"max_error_percent": 50, "min_requests": 10, "max_output_ratio": 1.5}"#);
        let s0 = RuleState::new(&g.fingerprint);
        let cases: &[(Counts, Counts, bool, &str)] = &[
            (out(10, 1500), out(10, 1000), false, "exactly 1.5 times is not above it"),
            (out(10, 1510), out(10, 1000), true, "above 1.5 times"),
            (out(9, 9000), out(10, 1000), false, "gray below min_requests"),
            (out(10, 9000), out(9, 100), false, "stable below min_requests: no baseline"),
            (out(20, 2000), out(10, 1000), false, "the same mean"),
        ];
        for (gray, stable, want, why) in cases {
            let (s1, trips) = flush(&s0, &g, "v1", &[("v2", *gray), ("v1", *stable)], 100 * S).unwrap();
            assert_eq!(!trips.is_empty(), *want, "{why}");
            assert_eq!(s1.tripped("v2"), *want, "{why}");
            if *want {
                assert_eq!(
                    trips[0].cause,
                    Cause::Output { answers: 10, output: 1510, stable_answers: 10, stable_output: 1000 }
                );
            }
        }
        let plain = guard(r#"{"max_error_percent": 50, "min_requests": 10}"#);
        let s0 = RuleState::new(&plain.fingerprint);
        let (_, trips) = flush(&s0, &plain, "v1", &[("v2", out(10, 9000)), ("v1", out(10, 10))], S).unwrap();
        assert!(trips.is_empty(), "no ratio: no output trip");
    }

    #[test]
    fn counts_of_another_guard_are_dropped_and_a_new_guard_re_arms() {
        let g1 = guard(r#"{"max_error_percent": 10}"#);
        let g2 = guard(r#"{"max_error_percent": 10, "attempt": 2}"#);
        assert_ne!(g1.fingerprint, g2.fingerprint);
        let mut tripped = RuleState::new(&g1.fingerprint);
        tripped.version_mut("v2").unwrap().trip = Some(Trip { at_ns: 1, errors: 9, total: 10 });
        assert_eq!(sync(Some(&tripped), &g1), None, "the same guard again keeps the trip");
        let fresh = sync(Some(&tripped), &g2).unwrap();
        assert!(!fresh.tripped("v2") && fresh.versions.is_empty(), "another guard starts empty");
        assert_eq!(sync(None, &g1), Some(RuleState::new(&g1.fingerprint)));
        assert_eq!(flush(&tripped, &g2, "v1", &[("v2", c(1, 1))], S), None, "old counts dropped");
    }

    #[test]
    fn the_shared_value_round_trips_and_garbage_decodes_to_nothing() {
        let g = guard(r#"{"max_error_percent": 10, "min_requests": 1}"#);
        let (s, _) =
            flush(&RuleState::new(&g.fingerprint), &g, "v1", &[("v2", c(3, 3)), ("v1", c(4, 0))], 7 * S)
                .unwrap();
        let bytes = s.encode();
        assert_eq!(RuleState::decode(&bytes), Some(s.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(RuleState::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(RuleState::decode(&longer), None);
        assert_eq!(RuleState::decode(b"nonsense"), None);
        // What the build before guards on answers wrote: read, trips and counts kept.
        let mut v1 = b"GSG1".to_vec();
        put_str(&mut v1, &g.fingerprint);
        v1.extend_from_slice(&1u16.to_le_bytes());
        put_str(&mut v1, "v2");
        v1.push(1);
        for n in [7i64, 3, 4] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&5i64.to_le_bytes());
        v1.extend_from_slice(&4u32.to_le_bytes());
        v1.extend_from_slice(&3u32.to_le_bytes());
        let old = RuleState::decode(&v1).unwrap();
        assert_eq!(old.version("v2").unwrap().trip, Some(Trip { at_ns: 7, errors: 3, total: 4 }));
        assert_eq!(old.version("v2").unwrap().window.totals(5, 60), (4, 3));
        assert_eq!(RuleState::decode(&old.encode()), Some(old.clone()), "written back as GSG2");
    }

    #[test]
    fn fingerprints_differ_for_every_field() {
        let base = guard(r#"{"max_error_percent": 5}"#).fingerprint;
        for other in [
            r#"{"max_error_percent": 5.5}"#,
            r#"{"max_error_percent": 5, "min_requests": 21}"#,
            r#"{"max_error_percent": 5, "window_s": 61}"#,
            r#"{"max_error_percent": 5, "statuses": ["5xx", 429]}"#,
            r#"{"max_error_percent": 5, "slow_ms": 800}"#,
            r#"{"max_error_percent": 5, "attempt": 2}"#,
        ] {
            assert_ne!(guard(other).fingerprint, base, "{other}");
        }
        assert_eq!(guard(r#"{"max_error_percent": 5, "min_requests": 20, "window_s": 60, "statuses": ["5xx"], "attempt": 1}"#).fingerprint, base, "defaults written out");
    }
}
