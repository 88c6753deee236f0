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

/// Counts per version (by index into `versions`) since the last flush. A version keeps its index
/// for the tally's life: requests decided under an older config count by the indices it had.
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

    /// The versions a new config gives the rule, added after the ones it has: none moves or
    /// goes (requests decided under the old config still count by the old indices).
    pub fn add_versions<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if self.index(name).is_none() {
                self.versions.push(name.to_string());
                self.pending.push((0, 0));
            }
        }
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

    /// A response at `now_ns` to a request this rule decided for `version`: counted, an error
    /// when `error` or when it came more than `slow_ns` after the request started, unless it
    /// was already counted as slow while it waited.
    pub fn count(&mut self, context_id: u32, version: usize, error: bool, now_ns: i64, slow_ns: Option<i64>) {
        let slow = match self.take_inflight(context_id) {
            Some(r) if r.counted => return,
            Some(r) => slow_ns.is_some_and(|limit| now_ns - r.start_ns > limit),
            None => false,
        };
        self.add(version, 1, u32::from(error || slow));
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

    /// What was counted, (responses, errors) per version (as [`Tally::versions`]), and zero
    /// again.
    pub fn take(&mut self) -> Vec<(u32, u32)> {
        let zero = vec![(0, 0); self.pending.len()];
        std::mem::replace(&mut self.pending, zero)
    }

    /// Counts a flush could not write: kept for the next one.
    pub fn put_back(&mut self, taken: &[(u32, u32)]) {
        for (i, (t, e)) in taken.iter().enumerate() {
            self.add(i, *t, *e);
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
        t.count(1, 1, true, 0, None);
        t.count(2, 1, false, 0, None);
        t.count(3, 0, false, 0, None);
        t.count(4, 9, true, 0, None); // no such version: nothing
        assert_eq!(t.take(), [(1, 0), (2, 1)]);
        assert!(t.is_empty(), "taken");
        t.put_back(&[(0, 0), (5, 5), (1, 1)]);
        assert_eq!(t.take(), [(0, 0), (5, 5)], "a failed write's counts come back");
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
        assert_eq!(t.take(), [(0, 0), (2, 2)], "each once");
        t.count(7, 1, false, 400_000_000, Some(100_000_000));
        assert!(t.is_empty(), "its late response is not counted again");
        t.forget(8);
        t.count(8, 1, false, 400_000_000, Some(100_000_000));
        assert_eq!(t.take()[1], (1, 0), "once forgotten, a response counts as any other");
        t.start(9, 0, 0);
        t.count(9, 0, false, 150_000_000, Some(100_000_000));
        t.start(10, 0, 0);
        t.count(10, 0, false, 50_000_000, Some(100_000_000));
        assert_eq!(t.take()[0], (2, 1), "a response later than slow_ms is an error");
        t.count_overdue(i64::MAX, None);
        assert!(t.is_empty(), "without slow_ms nothing is late");
    }

    #[test]
    fn a_new_config_s_versions_come_after_and_old_indices_still_count() {
        let mut t = tally();
        t.count(1, 1, true, 0, None);
        t.start(3, 1, 0);
        t.add_versions(["v3", "v2", "v1"]);
        assert_eq!(t.versions(), ["v1", "v2", "v3"], "none moves");
        t.count(4, 2, true, 0, None); // v3, new
        t.count(5, 1, false, 0, None); // v2, decided under the old config
        assert_eq!(t.take(), [(0, 0), (2, 1), (1, 1)]);
        t.count_overdue(i64::MAX, Some(1));
        assert_eq!(t.take()[1], (1, 1), "the waiting request still counts for v2");
    }
}
