//! A sliding window of response counts: per-bucket totals and errors, the buckets `width_s`
//! seconds wide (one second for windows up to a minute, a sixtieth of longer ones), so a window
//! is at most about 60 buckets whatever its length.

/// What was counted: responses and errors, and (guards on answers) the answers that reported
/// output tokens and those tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub errors: u32,
    pub answers: u32,
    pub output: u64,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        self.total == 0 && self.answers == 0
    }

    pub fn add(&mut self, o: &Counts) {
        self.total = self.total.saturating_add(o.total);
        self.errors = self.errors.saturating_add(o.errors);
        self.answers = self.answers.saturating_add(o.answers);
        self.output = self.output.saturating_add(o.output);
    }
}

/// One bucket: the responses counted in `[start_s, start_s + width_s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub start_s: i64,
    pub total: u32,
    pub errors: u32,
    pub answers: u32,
    pub output: u64,
}

/// The counts of one version over the last `window_s` seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    /// Oldest first, no two with the same start.
    pub buckets: Vec<Bucket>,
}

/// How wide the buckets of a `window_s` window are.
pub fn bucket_width(window_s: u32) -> i64 {
    i64::from((window_s / 60).max(1))
}

impl Window {
    /// Adds what was counted at `now_s`, and forgets what has left the window.
    pub fn add(&mut self, now_s: i64, window_s: u32, c: &Counts) {
        let width = bucket_width(window_s);
        let start = now_s - now_s.rem_euclid(width);
        match self.buckets.last_mut() {
            // The current bucket, or one from a later second than `now_s` (another worker's
            // clock read a moment later): count into it rather than break the order.
            Some(b) if b.start_s >= start => {
                b.total = b.total.saturating_add(c.total);
                b.errors = b.errors.saturating_add(c.errors);
                b.answers = b.answers.saturating_add(c.answers);
                b.output = b.output.saturating_add(c.output);
            }
            _ => self.buckets.push(Bucket {
                start_s: start,
                total: c.total,
                errors: c.errors,
                answers: c.answers,
                output: c.output,
            }),
        }
        self.prune(now_s, window_s);
    }

    /// Drops the buckets that ended before the window that ends at `now_s`.
    pub fn prune(&mut self, now_s: i64, window_s: u32) {
        let oldest = self.oldest_start(now_s, window_s);
        self.buckets.retain(|b| b.start_s >= oldest);
    }

    /// (responses, errors) in the window that ends at `now_s`: the current bucket and the
    /// earlier ones that fit in `window_s`.
    pub fn totals(&self, now_s: i64, window_s: u32) -> (u64, u64) {
        let oldest = self.oldest_start(now_s, window_s);
        self.buckets.iter().filter(|b| b.start_s >= oldest).fold((0u64, 0u64), |(t, e), b| {
            (t.saturating_add(u64::from(b.total)), e.saturating_add(u64::from(b.errors)))
        })
    }

    /// (answers with output tokens, their output tokens) in the window that ends at `now_s`.
    pub fn output(&self, now_s: i64, window_s: u32) -> (u64, u64) {
        let oldest = self.oldest_start(now_s, window_s);
        self.buckets.iter().filter(|b| b.start_s >= oldest).fold((0u64, 0u64), |(n, o), b| {
            (n.saturating_add(u64::from(b.answers)), o.saturating_add(b.output))
        })
    }

    fn oldest_start(&self, now_s: i64, window_s: u32) -> i64 {
        let width = bucket_width(window_s);
        let current = now_s - now_s.rem_euclid(width);
        current.saturating_sub(i64::from(window_s)).saturating_add(width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u32, errors: u32) -> Counts {
        Counts { total, errors, ..Counts::default() }
    }

    #[test]
    fn counts_fall_out_of_the_window_as_time_passes() {
        let mut w = Window::default();
        w.add(1000, 60, &c(10, 1));
        w.add(1030, 60, &c(5, 5));
        assert_eq!(w.totals(1030, 60), (15, 6), "both inside");
        assert_eq!(w.totals(1059, 60), (15, 6), "1000 is still inside at 1059");
        assert_eq!(w.totals(1060, 60), (5, 5), "1000 left at 1060");
        assert_eq!(w.totals(1090, 60), (0, 0), "everything left");
        w.add(1200, 60, &c(1, 0));
        assert_eq!(w.buckets.len(), 1, "old buckets are dropped when counting again");
    }

    #[test]
    fn the_same_second_shares_a_bucket_and_long_windows_use_wide_buckets() {
        let mut w = Window::default();
        w.add(5, 60, &c(1, 0));
        w.add(5, 60, &c(2, 1));
        assert_eq!(w.buckets, [Bucket { start_s: 5, total: 3, errors: 1, answers: 0, output: 0 }]);
        w.add(5, 60, &Counts { answers: 2, output: 300, ..Counts::default() });
        assert_eq!(w.output(5, 60), (2, 300));
        assert_eq!(w.output(70, 60), (0, 0), "answers leave the window too");
        assert_eq!(bucket_width(5), 1);
        assert_eq!(bucket_width(60), 1);
        assert_eq!(bucket_width(3600), 60);
        let mut long = Window::default();
        for t in (0..7200).step_by(7) {
            long.add(t, 3600, &c(1, 0));
        }
        assert!(long.buckets.len() <= 61, "{} buckets", long.buckets.len());
        let (n, _) = long.totals(7199, 3600);
        assert!((510..=520).contains(&n), "about an hour of one response per 7 s: {n}");
    }

    #[test]
    fn a_count_from_a_clock_a_moment_behind_is_kept() {
        let mut w = Window::default();
        w.add(101, 60, &c(1, 0));
        w.add(100, 60, &c(1, 1));
        assert_eq!(w.totals(101, 60), (2, 1));
    }
}
