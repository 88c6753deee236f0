//! What one worker VM counted for a guarded rule since its last flush, and the requests of a
//! guard with `slow_ms` still waiting for their response headers. Pure: the glue
//! (src/filter/guards.rs) feeds it responses and ticks and flushes what it took.

/// A request still waiting for its response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inflight {
    context_id: u32,
    version: usize,
    start_ns: i64,
    /// Already counted as an error for waiting longer than `slow_ms`.
    counted: bool,
}

/// Counts per version (by index into `versions`) since the last flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    versions: Vec<String>,
    /// (responses, errors) per version.
    pending: Vec<(u32, u32)>,
    /// A list: it holds this worker's concurrent requests of the rule.
    inflight: Vec<Inflight>,
}

impl Tally {
    pub fn new(versions: Vec<String>) -> Self {
        let pending = vec![(0, 0); versions.len()];
        Tally { versions, pending, inflight: Vec::new() }
    }

    /// The versions a new config gives the rule: what was counted for a version still there
    /// is kept (by name), the rest dropped; waiting requests follow their version.
    pub fn rebuild(&mut self, versions: Vec<String>) {
        let index = |name: &str| versions.iter().position(|v| v == name);
        let mut pending = vec![(0, 0); versions.len()];
        for (old, counts) in self.versions.iter().zip(&self.pending) {
            if let Some(p) = index(old).and_then(|i| pending.get_mut(i)) {
                *p = *counts;
            }
        }
        let old = std::mem::take(&mut self.versions);
        self.inflight.retain_mut(|r| match old.get(r.version).and_then(|n| index(n)) {
            Some(i) => {
                r.version = i;
                true
            }
            None => false,
        });
        self.versions = versions;
        self.pending = pending;
    }

    pub fn versions(&self) -> &[String] {
        &self.versions
    }

    /// The index of version `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v == name)
    }

    /// A request of `version` starts (guards with `slow_ms`).
    pub fn start(&mut self, context_id: u32, version: usize, now_ns: i64) {
        self.inflight.push(Inflight { context_id, version, start_ns: now_ns, counted: false });
    }

    fn take_inflight(&mut self, context_id: u32) -> Option<Inflight> {
        let i = self.inflight.iter().position(|r| r.context_id == context_id)?;
        Some(self.inflight.swap_remove(i))
    }

    /// A response to a request this rule decided for `version`: counted, unless it was already
    /// counted as slow while it waited.
    pub fn count(&mut self, context_id: u32, version: usize, error: bool) {
        if self.take_inflight(context_id).is_some_and(|r| r.counted) {
            return;
        }
        self.add(version, 1, u32::from(error));
    }

    /// A request that ended without response headers (reset, client gone).
    pub fn forget(&mut self, context_id: u32) {
        self.take_inflight(context_id);
    }

    fn add(&mut self, version: usize, total: u32, errors: u32) {
        if let Some(p) = self.pending.get_mut(version) {
            p.0 = p.0.saturating_add(total);
            p.1 = p.1.saturating_add(errors);
        }
    }

    /// Requests waiting longer than `slow_ms` for their response headers count as errors now,
    /// once: a version that hangs trips without waiting for a timeout.
    pub fn count_overdue(&mut self, now_ns: i64, slow_ms: Option<u32>) {
        let Some(ms) = slow_ms else { return };
        let limit = i64::from(ms) * 1_000_000;
        let mut late = Vec::new();
        for r in &mut self.inflight {
            if !r.counted && now_ns - r.start_ns > limit {
                r.counted = true;
                late.push(r.version);
            }
        }
        for v in late {
            self.add(v, 1, 1);
        }
    }

    /// Whether anything was counted since the last flush.
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(|(t, _)| *t == 0)
    }

    /// What was counted, by version name, and zero again.
    pub fn take(&mut self) -> Vec<(String, u32, u32)> {
        let taken = self.versions.iter().zip(&self.pending).map(|(v, (t, e))| (v.clone(), *t, *e)).collect();
        self.pending.iter_mut().for_each(|p| *p = (0, 0));
        taken
    }

    /// Counts a flush could not write: kept for the next one.
    pub fn put_back(&mut self, taken: &[(String, u32, u32)]) {
        for (name, t, e) in taken {
            if let Some(i) = self.index(name) {
                self.add(i, *t, *e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    fn tally() -> Tally {
        Tally::new(vec!["v1".into(), "v2".into()])
    }

    #[test]
    fn responses_count_per_version_and_a_flush_takes_them() {
        let mut t = tally();
        assert!(t.is_empty());
        t.count(1, 1, true);
        t.count(2, 1, false);
        t.count(3, 0, false);
        t.count(4, 9, true); // no such version: nothing
        assert_eq!(t.take(), [("v1".into(), 1, 0), ("v2".into(), 2, 1)]);
        assert!(t.is_empty(), "taken");
        t.put_back(&[("v2".into(), 5, 5), ("gone".into(), 1, 1)]);
        assert_eq!(t.take(), [("v1".into(), 0, 0), ("v2".into(), 5, 5)], "a failed write's counts come back");
    }

    #[test]
    fn a_request_waiting_past_slow_ms_counts_once_as_an_error() {
        let mut t = tally();
        t.start(7, 1, 0);
        t.start(8, 1, 0);
        t.count_overdue(50_000_000, Some(100));
        assert!(t.is_empty(), "not late yet");
        t.count_overdue(150_000_000, Some(100));
        t.count_overdue(300_000_000, Some(100));
        assert_eq!(t.take(), [("v1".into(), 0, 0), ("v2".into(), 2, 2)], "each once");
        t.count(7, 1, false);
        assert!(t.is_empty(), "its late response is not counted again");
        t.forget(8);
        t.count(8, 1, false);
        assert_eq!(t.take()[1], ("v2".into(), 1, 0), "once forgotten, a response counts as any other");
        t.count_overdue(i64::MAX, None);
        assert!(t.is_empty(), "without slow_ms nothing is late");
    }

    #[test]
    fn a_new_set_of_versions_keeps_what_it_still_has() {
        let mut t = tally();
        t.count(1, 1, true);
        t.count(2, 0, false);
        t.start(3, 1, 0);
        t.rebuild(vec!["v1".into(), "v3".into(), "v2".into()]);
        assert_eq!(t.index("v3"), Some(1));
        t.count(4, 1, true); // v3, new
        assert_eq!(t.take(), [("v1".into(), 1, 0), ("v3".into(), 1, 1), ("v2".into(), 1, 1)]);
        t.count_overdue(i64::MAX, Some(1));
        assert_eq!(t.take()[2], ("v2".into(), 1, 1), "the waiting request follows v2 to its new index");
        t.rebuild(vec!["v1".into()]);
        assert_eq!(t.versions(), ["v1"]);
        t.count(3, 0, false);
        assert_eq!(t.take(), [("v1".into(), 1, 0)]);
    }
}
