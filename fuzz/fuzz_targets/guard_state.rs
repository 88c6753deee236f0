//! Arbitrary bytes as a guard's shared value (what another worker VM wrote, or garbage):
//! `RuleState::decode` never panics, what it accepts encodes back to the same bytes, and a flush
//! of arbitrary counts into it keeps the window's invariants (counts only add up, a trip holds).
#![no_main]

use std::sync::OnceLock;

use graysplit::config::{parse, Guard};
use graysplit::guard::{flush, Cause, Counts, RuleState};
use libfuzzer_sys::fuzz_target;

fn guard() -> &'static Guard {
    static G: OnceLock<Guard> = OnceLock::new();
    G.get_or_init(|| {
        let cfg = br#"{"stable": "v1", "identity": {"from": [{"header": "u"}]}, "rules": [{"name": "r",
            "split": [{"version": "v2", "percent": 50}], "guard": {"max_error_percent": 5, "min_requests": 3, "window_s": 5}}]}"#;
        match parse(cfg) {
            Ok(p) => p.guards[0].clone(),
            Err(e) => panic!("the fuzz config must compile: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(state) = RuleState::decode(data) else { return };
    assert_eq!(state.encode(), data, "decode then encode is not the identity");
    let g = guard();
    let mut s = state.clone();
    s.fingerprint = g.fingerprint.clone();
    let now = i64::from_le_bytes(data.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
    let c = |total: u32, errors: u32| Counts { total, errors, ..Counts::default() };
    let pending = [("v2", c(u32::from(data.len() as u8), u32::from(data.first().copied().unwrap_or(0) % 3))), ("v1", c(1, 0))];
    if let Some((next, trips)) = flush(&s, g, "v1", &pending, now) {
        for v in &s.versions {
            if v.trip.is_some() {
                assert!(next.tripped(&v.name), "a trip was lost");
            }
        }
        for t in trips {
            let Cause::Errors { total, .. } = t.cause else { panic!("no ratio in this guard: {t:?}") };
            assert!(total >= u64::from(g.min_requests) && !s.tripped(&t.version));
        }
        assert!(RuleState::decode(&next.encode()).is_some());
    }
});
