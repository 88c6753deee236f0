//! What one worker VM counted for a guarded rule since its last flush, and the requests of a
//! guard with `slow_ms` still waiting for their response headers, or (guards on answers) with
//! `first_token_ms` still waiting for their first token. Pure: the glue (src/filter/guards.rs)
//! feeds it responses, answers and ticks and flushes what it took.

use super::window::Counts;

/// A request whose response (headers, or first token) is still to come.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inflight {
    context_id: u32,
    version: usize,
    start_ns: i64,
    /// Its response headers came.
    headers: bool,
    /// Its answer's first token came, or none is waited for (not an answer, or no
    /// `first_token_ms`).
    token: bool,
    /// It is already an error (late headers or first token), to count when the answer ends.
    late: bool,
    /// Already counted as an error for waiting too long.
    counted: bool,
}

/// Counts per version (by index into `versions`) since the last flush. A version keeps its index
/// for the tally's life: requests decided under an older config count by the indices it had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    versions: Vec<String>,
    pending: Vec<Counts>,
    /// A list: it holds this worker's concurrent requests of the rule.
    inflight: Vec<Inflight>,
}

impl Tally {
    pub fn new(versions: Vec<String>) -> Self {
        let pending = vec![Counts::default(); versions.len()];
        Tally { versions, pending, inflight: Vec::new() }
    }

    /// The versions a new config gives the rule, added after the ones it has: none moves or
    /// goes (requests decided under the old config still count by the old indices).
    pub fn add_versions<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if self.index(name).is_none() {
                self.versions.push(name.to_string());
                self.pending.push(Counts::default());
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

    /// A request of `version` starts (guards with `slow_ms`, or `first_token_ms` for a request
    /// whose answer is read: `answer`).
    pub fn start(&mut self, context_id: u32, version: usize, now_ns: i64, answer: bool) {
        self.inflight.push(Inflight {
            context_id,
            version,
            start_ns: now_ns,
            headers: false,
            token: !answer,
            late: false,
            counted: false,
        });
    }

    fn take_inflight(&mut self, context_id: u32) -> Option<Inflight> {
        let i = self.inflight.iter().position(|r| r.context_id == context_id)?;
        Some(self.inflight.swap_remove(i))
    }

    fn inflight_mut(&mut self, context_id: u32) -> Option<&mut Inflight> {
        self.inflight.iter_mut().find(|r| r.context_id == context_id)
    }

    /// A response at `now_ns` to a request this rule decided for `version`: counted, an error
    /// when `error` or when it came more than `slow_ns` after the request started, unless it
    /// was already counted as slow while it waited.
    pub fn count(&mut self, context_id: u32, version: usize, error: bool, now_ns: i64, slow_ns: Option<i64>) {
        let slow = match self.take_inflight(context_id) {
            Some(r) if r.counted => return,
            Some(r) => r.late || slow_ns.is_some_and(|limit| now_ns - r.start_ns > limit),
            None => false,
        };
        self.add(version, &Counts { total: 1, errors: u32::from(error || slow), ..Counts::default() });
    }

    /// The response headers of an answer came at `now_ns`: it is counted when the answer ends
    /// ([`Tally::count_answer`]); late headers already make it an error.
    pub fn headers(&mut self, context_id: u32, now_ns: i64, slow_ns: Option<i64>) {
        if let Some(r) = self.inflight_mut(context_id) {
            r.headers = true;
            r.late |= slow_ns.is_some_and(|limit| now_ns - r.start_ns > limit);
        }
    }

    /// The answer's first token came at `now_ns`.
    pub fn first_token(&mut self, context_id: u32, now_ns: i64, limit_ns: Option<i64>) {
        if let Some(r) = self.inflight_mut(context_id) {
            if !r.token {
                r.token = true;
                r.late |= limit_ns.is_some_and(|limit| now_ns - r.start_ns > limit);
            }
        }
    }

    /// Its answer is of no known format: no first token is waited for.
    pub fn no_token(&mut self, context_id: u32) {
        if let Some(r) = self.inflight_mut(context_id) {
            r.token = true;
        }
    }

    /// An answer of `version` ended at `now_ns`: one response, an error when `error` (its
    /// status or its ending) or when it was late (its first token after `limit_ns`, or none
    /// by then), unless it was already counted as late while it waited; and its output tokens,
    /// when it reported them.
    pub fn count_answer(
        &mut self,
        context_id: u32,
        version: usize,
        error: bool,
        output: Option<u64>,
        now_ns: i64,
        limit_ns: Option<i64>,
    ) {
        let (late, counted) = match self.take_inflight(context_id) {
            Some(r) => {
                let waited = !r.token && limit_ns.is_some_and(|limit| now_ns - r.start_ns > limit);
                (r.late || waited, r.counted)
            }
            None => (false, false),
        };
        let mut c = Counts::default();
        if !counted {
            c.total = 1;
            c.errors = u32::from(error || late);
        }
        if let Some(out) = output {
            c.answers = 1;
            c.output = out;
        }
        self.add(version, &c);
    }

    /// A request that ended without response headers (reset, client gone).
    pub fn forget(&mut self, context_id: u32) {
        self.take_inflight(context_id);
    }

    fn add(&mut self, version: usize, c: &Counts) {
        if let Some(p) = self.pending.get_mut(version) {
            p.add(c);
        }
    }

    /// Requests waiting longer than `slow_ms` for their response headers, or longer than
    /// `first_token_ms` for their answer's first token, count as errors now, once: a version
    /// that hangs trips without waiting for a timeout.
    pub fn count_overdue(&mut self, now_ns: i64, slow_ms: Option<u32>, first_token_ms: Option<u32>) {
        if slow_ms.is_none() && first_token_ms.is_none() {
            return;
        }
        let over =
            |ms: Option<u32>, start: i64| ms.is_some_and(|ms| now_ns - start > i64::from(ms) * 1_000_000);
        let mut late = Vec::new();
        for r in &mut self.inflight {
            if !r.counted
                && ((!r.headers && over(slow_ms, r.start_ns))
                    || (!r.token && over(first_token_ms, r.start_ns)))
            {
                r.counted = true;
                late.push(r.version);
            }
        }
        for v in late {
            self.add(v, &Counts { total: 1, errors: 1, ..Counts::default() });
        }
    }

    /// Whether anything was counted since the last flush.
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(Counts::is_empty)
    }

    /// What was counted, per version (as [`Tally::versions`]), and zero again.
    pub fn take(&mut self) -> Vec<Counts> {
        let zero = vec![Counts::default(); self.pending.len()];
        std::mem::replace(&mut self.pending, zero)
    }

    /// Counts a flush could not write: kept for the next one.
    pub fn put_back(&mut self, taken: &[Counts]) {
        for (i, c) in taken.iter().enumerate() {
            self.add(i, c);
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

    fn c(total: u32, errors: u32) -> Counts {
        Counts { total, errors, ..Counts::default() }
    }

    /// (responses, errors) per version, taken.
    fn te(t: &mut Tally) -> Vec<(u32, u32)> {
        t.take().iter().map(|c| (c.total, c.errors)).collect()
    }

    const MS: i64 = 1_000_000;

    #[test]
    fn an_answer_counts_once_at_its_end_late_or_not() {
        let mut t = tally();
        // On time, ends well: one response, no error, its output counted.
        t.start(1, 1, 0, true);
        t.headers(1, 10 * MS, Some(100 * MS));
        t.first_token(1, 50 * MS, Some(100 * MS));
        t.count_overdue(60 * MS, Some(100), Some(100));
        t.count_answer(1, 1, false, Some(40), 0, None);
        assert_eq!(t.take()[1], Counts { total: 1, errors: 0, answers: 1, output: 40 });
        // Its first token late: an error, once, at its end.
        t.start(2, 1, 0, true);
        t.headers(2, 10 * MS, Some(100 * MS));
        t.first_token(2, 150 * MS, Some(100 * MS));
        t.first_token(2, 160 * MS, Some(100 * MS));
        t.count_answer(2, 1, false, None, 0, None);
        assert_eq!(te(&mut t)[1], (1, 1));
        // An ending that counts and a 5xx at once: one error.
        t.start(3, 1, 0, true);
        t.headers(3, 10 * MS, None);
        t.count_answer(3, 1, true, None, 0, None);
        assert_eq!(te(&mut t)[1], (1, 1));
        // No first token by first_token_ms: an error on the tick, not again at its end, but its
        // output still counts for the ratio.
        t.start(4, 1, 0, true);
        t.headers(4, 10 * MS, Some(100 * MS));
        t.count_overdue(90 * MS, None, Some(100));
        assert!(t.is_empty());
        t.count_overdue(101 * MS, None, Some(100));
        t.count_overdue(200 * MS, None, Some(100));
        t.count_answer(4, 1, true, Some(7), 0, None);
        assert_eq!(t.take()[1], Counts { total: 1, errors: 1, answers: 1, output: 7 });
        // Ending without a token, past the limit, with no tick in between: late all the same.
        t.start(6, 1, 0, true);
        t.count_answer(6, 1, false, None, 150 * MS, Some(100 * MS));
        assert_eq!(te(&mut t)[1], (1, 1));
        t.start(7, 1, 0, true);
        t.no_token(7);
        t.count_overdue(500 * MS, None, Some(100));
        t.count_answer(7, 1, false, None, 600 * MS, Some(100 * MS));
        assert_eq!(te(&mut t)[1], (1, 0), "no known format: no token waited for");
        // A request whose answer is not read waits for no token.
        t.start(5, 0, 0, false);
        t.count_overdue(500 * MS, None, Some(100));
        assert!(t.is_empty());
        t.count(5, 0, false, 500 * MS, None);
        assert_eq!(te(&mut t)[0], (1, 0));
    }

    #[test]
    fn responses_count_per_version_and_a_flush_takes_them() {
        let mut t = tally();
        assert!(t.is_empty());
        t.count(1, 1, true, 0, None);
        t.count(2, 1, false, 0, None);
        t.count(3, 0, false, 0, None);
        t.count(4, 9, true, 0, None); // no such version: nothing
        assert_eq!(te(&mut t), [(1, 0), (2, 1)]);
        assert!(t.is_empty(), "taken");
        t.put_back(&[c(0, 0), c(5, 5), c(1, 1)]);
        assert_eq!(te(&mut t), [(0, 0), (5, 5)], "a failed write's counts come back");
    }

    #[test]
    fn a_request_waiting_past_slow_ms_counts_once_as_an_error() {
        let mut t = tally();
        t.start(7, 1, 0, false);
        t.start(8, 1, 0, false);
        t.count_overdue(50_000_000, Some(100), None);
        assert!(t.is_empty(), "not late yet");
        t.count_overdue(150_000_000, Some(100), None);
        t.count_overdue(300_000_000, Some(100), None);
        assert_eq!(te(&mut t), [(0, 0), (2, 2)], "each once");
        t.count(7, 1, false, 400_000_000, Some(100_000_000));
        assert!(t.is_empty(), "its late response is not counted again");
        t.forget(8);
        t.count(8, 1, false, 400_000_000, Some(100_000_000));
        assert_eq!(te(&mut t)[1], (1, 0), "once forgotten, a response counts as any other");
        t.start(9, 0, 0, false);
        t.count(9, 0, false, 150_000_000, Some(100_000_000));
        t.start(10, 0, 0, false);
        t.count(10, 0, false, 50_000_000, Some(100_000_000));
        assert_eq!(te(&mut t)[0], (2, 1), "a response later than slow_ms is an error");
        t.count_overdue(i64::MAX, None, None);
        assert!(t.is_empty(), "without slow_ms nothing is late");
    }

    #[test]
    fn a_new_config_s_versions_come_after_and_old_indices_still_count() {
        let mut t = tally();
        t.count(1, 1, true, 0, None);
        t.start(3, 1, 0, false);
        t.add_versions(["v3", "v2", "v1"]);
        assert_eq!(t.versions(), ["v1", "v2", "v3"], "none moves");
        t.count(4, 2, true, 0, None); // v3, new
        t.count(5, 1, false, 0, None); // v2, decided under the old config
        assert_eq!(te(&mut t), [(0, 0), (2, 1), (1, 1)]);
        t.count_overdue(i64::MAX, Some(1), None);
        assert_eq!(te(&mut t)[1], (1, 1), "the waiting request still counts for v2");
    }
}
