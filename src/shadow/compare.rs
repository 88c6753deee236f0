//! `graysplit compare`'s figures (DESIGN.md "Shadow"), per rule, from the pairs read back
//! ([`super::read`]), as a table and as DESIGN's `--json` shape.
//!
//! What each figure is over:
//! - `pairs`: every record of the rule; `results`: them by `graysplit.result`.
//! - `status_agreement`: of the records with both `primary.status` and `shadow.status`, the
//!   fraction whose two statuses are equal.
//! - `total_ms`, `output_tokens`, `finish_mismatches`: the `paired` records only, so that both
//!   sides are over the same questions (a failed or timed-out shadow's time is the failure's or
//!   the timeout's, and its ending `aborted` by definition). `total_ms`: p50 and p95 of each
//!   side's `total_ms`. `output_tokens`: over the records with both sides' `tokens.output`, the
//!   mean per answer on each side and `ratio` = shadow's mean / primary's, with `ratio_ci95`
//!   its 95% percentile bootstrap interval (below). `finish_mismatches`: the records whose
//!   `primary.finish` and `shadow.finish` are both given and differ.
//! - `similarity`: p10, p50 and p90 of every finite `graysplit.similarity`.
//!
//! Percentiles are nearest-rank: of n values sorted ascending, the one at rank ⌈p·n/100⌉ (at
//! least 1). A figure with no data is `null` (`ratio` also when primary's tokens sum to 0).
//!
//! The bootstrap: [`RESAMPLES`] resamples, each of n pairs drawn with replacement from the rule's
//! n token pairs in the order read, pair index = [`SplitMix64`]`::next_u64() % n`, one generator
//! per rule seeded with `--seed` (default 0), resample after resample. A resample's ratio is the
//! sum of its shadow tokens over the sum of its primary tokens (resamples whose primary sum is 0
//! are left out); the interval is the nearest-rank 2.5th and 97.5th percentiles of those ratios.
//! Any other tool can reproduce it exactly from the records.

use std::collections::BTreeMap;

use serde::Serialize;

use super::read::{Pair, Pairs};
use super::record::Outcome;

/// Bootstrap resamples per rule.
pub const RESAMPLES: usize = 1000;

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014;
/// as in Vigna's reference `splitmix64.c`): the state advances by 0x9E3779B97F4A7C15 and is
/// mixed into each output. Small, fast, and easy to write again in any language.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The comparison of every rule: DESIGN's `--json` shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub rules: BTreeMap<String, Figures>,
}

/// One rule's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub pairs: u64,
    pub results: Results,
    pub status_agreement: Option<f64>,
    pub total_ms: TotalMs,
    pub output_tokens: OutputTokens,
    pub similarity: Similarity,
    pub finish_mismatches: u64,
    /// How many records had both statuses (the table says it; not in the JSON).
    #[serde(skip)]
    pub with_statuses: u64,
    /// How many paired records had both sides' output tokens.
    #[serde(skip)]
    pub with_tokens: u64,
    /// How many records had a similarity.
    #[serde(skip)]
    pub with_similarity: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Results {
    pub paired: u64,
    pub shadow_failed: u64,
    pub timed_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TotalMs {
    pub primary: Latency,
    pub shadow: Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: Option<i64>,
    pub p95: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputTokens {
    pub primary: Option<f64>,
    pub shadow: Option<f64>,
    pub ratio: Option<f64>,
    pub ratio_ci95: Option<[f64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Similarity {
    pub p10: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
}

/// The figures of every rule in `pairs`; `seed` seeds each rule's bootstrap.
pub fn compare(pairs: &Pairs, seed: u64) -> Report {
    Report { rules: pairs.by_rule.iter().map(|(rule, list)| (rule.clone(), figures(list, seed))).collect() }
}

fn figures(list: &[Pair], seed: u64) -> Figures {
    let mut results = Results::default();
    let (mut with_statuses, mut agree) = (0u64, 0u64);
    let (mut primary_ms, mut shadow_ms) = (Vec::new(), Vec::new());
    let mut tokens = Vec::new();
    let mut similarity = Vec::new();
    let mut finish_mismatches = 0;
    for p in list {
        match p.result {
            Some(Outcome::Paired) => results.paired += 1,
            Some(Outcome::ShadowFailed) => results.shadow_failed += 1,
            Some(Outcome::TimedOut) => results.timed_out += 1,
            None => {}
        }
        if let (Some(a), Some(b)) = (p.primary_status, p.shadow_status) {
            with_statuses += 1;
            agree += u64::from(a == b);
        }
        if let Some(x) = p.similarity.filter(|x| x.is_finite()) {
            similarity.push(x);
        }
        if p.result != Some(Outcome::Paired) {
            continue;
        }
        primary_ms.extend(p.primary_total_ms);
        shadow_ms.extend(p.shadow_total_ms);
        if let (Some(a), Some(b)) = (p.primary_output, p.shadow_output) {
            tokens.push((a, b));
        }
        if let (Some(a), Some(b)) = (&p.primary_finish, &p.shadow_finish) {
            finish_mismatches += u64::from(a != b);
        }
    }
    primary_ms.sort_unstable();
    shadow_ms.sort_unstable();
    similarity.sort_by(f64::total_cmp);
    Figures {
        pairs: list.len() as u64,
        results,
        status_agreement: (with_statuses > 0).then(|| agree as f64 / with_statuses as f64),
        total_ms: TotalMs { primary: latency(&primary_ms), shadow: latency(&shadow_ms) },
        output_tokens: output_tokens(&tokens, seed),
        similarity: Similarity {
            p10: nearest_rank(&similarity, 100),
            p50: nearest_rank(&similarity, 500),
            p90: nearest_rank(&similarity, 900),
        },
        finish_mismatches,
        with_statuses,
        with_tokens: tokens.len() as u64,
        with_similarity: similarity.len() as u64,
    }
}

fn latency(sorted: &[i64]) -> Latency {
    Latency { p50: nearest_rank(sorted, 500), p95: nearest_rank(sorted, 950) }
}

/// The nearest-rank percentile `permille` / 10 of `sorted` (ascending): rank ⌈permille·n/1000⌉,
/// at least 1.
fn nearest_rank<T: Copy>(sorted: &[T], permille: usize) -> Option<T> {
    let rank = (permille * sorted.len()).div_ceil(1000).max(1);
    sorted.get(rank - 1).copied()
}

fn output_tokens(pairs: &[(i64, i64)], seed: u64) -> OutputTokens {
    let none = OutputTokens { primary: None, shadow: None, ratio: None, ratio_ci95: None };
    if pairs.is_empty() {
        return none;
    }
    let n = pairs.len() as f64;
    let (p, s) = sums(pairs.iter());
    let ratio = (p > 0).then(|| s as f64 / p as f64);
    OutputTokens {
        primary: Some(p as f64 / n),
        shadow: Some(s as f64 / n),
        ratio,
        ratio_ci95: ratio.and_then(|_| bootstrap(pairs, seed)),
    }
}

fn sums<'a>(pairs: impl Iterator<Item = &'a (i64, i64)>) -> (i128, i128) {
    pairs.fold((0, 0), |(p, s), (a, b)| (p + i128::from(*a), s + i128::from(*b)))
}

/// The 95% percentile bootstrap interval of the ratio (see the module's documentation).
fn bootstrap(pairs: &[(i64, i64)], seed: u64) -> Option<[f64; 2]> {
    let n = pairs.len() as u64;
    let mut rng = SplitMix64::new(seed);
    let mut ratios = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        let drawn =
            (0..n).filter_map(|_| usize::try_from(rng.next_u64() % n).ok().and_then(|i| pairs.get(i)));
        let (p, s) = sums(drawn);
        if p > 0 {
            ratios.push(s as f64 / p as f64);
        }
    }
    ratios.sort_by(f64::total_cmp);
    Some([nearest_rank(&ratios, 25)?, nearest_rank(&ratios, 975)?])
}

impl Report {
    /// DESIGN's `--json` shape, pretty-printed.
    pub fn to_json(&self) -> String {
        // Plain structs, maps with string keys and numbers: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A table per rule, rules by name.
    pub fn to_text(&self) -> String {
        if self.rules.is_empty() {
            return "no shadow records (log records with graysplit.rule) in the files\n".into();
        }
        let mut out = String::new();
        for (i, (rule, f)) in self.rules.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out += &f.to_text(rule);
        }
        out
    }
}

/// `x` with `decimals` decimals, or `-` for no data.
fn num(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.decimals$}"))
}

fn int(x: Option<i64>) -> String {
    x.map_or_else(|| "-".into(), |x| x.to_string())
}

impl Figures {
    fn to_text(&self, rule: &str) -> String {
        let r = &self.results;
        let t = &self.output_tokens;
        let s = &self.similarity;
        let ms = &self.total_ms;
        let row = |name: &str, a: String, b: String| format!("  {name:<32} {a:>10} {b:>10}");
        let mut out = format!(
            "rule {rule}: {} pairs ({} paired, {} shadow_failed, {} timed_out)\n",
            self.pairs, r.paired, r.shadow_failed, r.timed_out
        );
        out += &row(&format!("of the {} paired:", r.paired), "primary".into(), "shadow".into());
        out += "\n";
        out += &row("total ms p50", int(ms.primary.p50), int(ms.shadow.p50));
        out += "\n";
        out += &row("total ms p95", int(ms.primary.p95), int(ms.shadow.p95));
        out += "\n";
        out += &row("output tokens per answer", num(t.primary, 1), num(t.shadow, 1));
        out += &format!("   ({} with both counts)\n", self.with_tokens);
        let ci = t.ratio_ci95.map_or_else(|| "-".to_string(), |[lo, hi]| format!("{lo:.3} .. {hi:.3}"));
        out += &format!("  {:<32} {:>10}   95% CI {ci}\n", "output ratio shadow / primary", num(t.ratio, 3));
        out += &format!("  {:<32} {:>10}\n", "ending mismatches", self.finish_mismatches);
        let agreement = self.status_agreement.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x));
        out += &format!(
            "  {:<32} {agreement:>10}   ({} pairs with both statuses)\n",
            "status agreement", self.with_statuses
        );
        out += &format!(
            "  {:<32} {} / {} / {}   ({} pairs)\n",
            "similarity p10 / p50 / p90",
            num(s.p10, 3),
            num(s.p50, 3),
            num(s.p90, 3),
            self.with_similarity
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn pair(result: Outcome) -> Pair {
        Pair { result: Some(result), ..Pair::default() }
    }

    fn pairs(rule: &str, list: Vec<Pair>) -> Pairs {
        Pairs { by_rule: [(rule.to_string(), list)].into_iter().collect() }
    }

    #[test]
    fn splitmix64_gives_the_reference_outputs() {
        // Vigna's splitmix64.c (and the Python in tests/it_compare.py).
        let mut r = SplitMix64::new(0);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
        );
        let mut r = SplitMix64::new(42);
        assert_eq!([r.next_u64(), r.next_u64()], [0xbdd732262feb6e95, 0x28efe333b266f103]);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ten: Vec<i64> = (1..=10).collect();
        // (values, permille, want, why)
        let cases: &[(&[i64], usize, Option<i64>, &str)] = &[
            (&ten, 500, Some(5), "rank 5 of 10"),
            (&ten, 950, Some(10), "rank ⌈9.5⌉ = 10"),
            (&ten, 100, Some(1), "rank 1"),
            (&ten, 900, Some(9), "rank 9"),
            (&ten, 25, Some(1), "rank ⌈0.25⌉ = 1"),
            (&[7], 950, Some(7), "one value is every percentile"),
            (&[1, 2, 3, 4], 500, Some(2), "the lower middle: rank 2"),
            (&[], 500, None, "no data"),
        ];
        for (values, permille, want, why) in cases {
            assert_eq!(nearest_rank(values, *permille), *want, "{why}");
        }
        let thousand: Vec<i64> = (1..=1000).collect();
        assert_eq!((nearest_rank(&thousand, 25), nearest_rank(&thousand, 975)), (Some(25), Some(975)));
    }

    #[test]
    fn hand_counted_figures_of_one_rule() {
        let p = |status: (i64, Option<i64>),
                 ms: (i64, i64),
                 out: (Option<i64>, Option<i64>),
                 fin: (&str, &str),
                 sim| Pair {
            result: Some(Outcome::Paired),
            primary_status: Some(status.0),
            shadow_status: status.1,
            primary_total_ms: Some(ms.0),
            shadow_total_ms: Some(ms.1),
            primary_output: out.0,
            shadow_output: out.1,
            primary_finish: Some(fin.0.into()),
            shadow_finish: Some(fin.1.into()),
            similarity: Some(sim),
        };
        let list = vec![
            p((200, Some(200)), (100, 150), (Some(10), Some(20)), ("stop", "stop"), 0.9),
            p((200, Some(500)), (300, 100), (Some(30), Some(30)), ("stop", "error"), 0.1),
            p((200, Some(200)), (200, 400), (None, Some(99)), ("length", "length"), 0.5),
            Pair {
                primary_status: Some(200),
                shadow_status: Some(504),
                primary_total_ms: Some(1),
                shadow_total_ms: Some(60000),
                primary_finish: Some("stop".into()),
                shadow_finish: Some("aborted".into()),
                ..pair(Outcome::TimedOut)
            },
            Pair { primary_status: Some(200), ..pair(Outcome::ShadowFailed) },
        ];
        let f = &compare(&pairs("ramp", list), 0).rules["ramp"];
        assert_eq!(f.pairs, 5);
        assert_eq!(f.results, Results { paired: 3, shadow_failed: 1, timed_out: 1 });
        assert_eq!(f.status_agreement, Some(0.5), "2 of the 4 with both statuses");
        assert_eq!(f.total_ms.primary, Latency { p50: Some(200), p95: Some(300) }, "paired only");
        assert_eq!(f.total_ms.shadow, Latency { p50: Some(150), p95: Some(400) }, "not the timeout's 60000");
        assert_eq!(
            (f.output_tokens.primary, f.output_tokens.shadow),
            (Some(20.0), Some(25.0)),
            "pairs with both counts"
        );
        assert_eq!(f.output_tokens.ratio, Some(1.25));
        let [lo, hi] = f.output_tokens.ratio_ci95.unwrap();
        assert!(
            (1.0..=1.25).contains(&lo) && (1.25..=2.0).contains(&hi),
            "[{lo}, {hi}] within the pairs' own ratios"
        );
        assert_eq!(f.similarity, Similarity { p10: Some(0.1), p50: Some(0.5), p90: Some(0.9) });
        assert_eq!(f.finish_mismatches, 1, "the timed-out shadow's aborted does not count");
        assert_eq!((f.with_statuses, f.with_tokens, f.with_similarity), (4, 2, 3));
    }

    #[test]
    fn the_bootstrap_is_reproducible_and_follows_the_seed() {
        let list: Vec<Pair> = (0..50)
            .map(|i| Pair {
                primary_output: Some(100 + i),
                shadow_output: Some(90 + 2 * i),
                ..pair(Outcome::Paired)
            })
            .collect();
        let ps = pairs("r", list);
        let ci = |seed| compare(&ps, seed).rules["r"].output_tokens.ratio_ci95.unwrap();
        assert_eq!(ci(0), ci(0), "the same seed, the same interval");
        assert_ne!(ci(0), ci(1), "another seed, other resamples");
        let ratio = compare(&ps, 0).rules["r"].output_tokens.ratio.unwrap();
        let [lo, hi] = ci(0);
        assert!(lo < ratio && ratio < hi, "{lo} < {ratio} < {hi}");
    }

    #[test]
    fn the_bootstrap_draws_indexes_as_documented() {
        // Two pairs: each resample's ratio follows from the indexes next_u64() % 2 draws.
        let list = vec![
            Pair { primary_output: Some(1), shadow_output: Some(1), ..pair(Outcome::Paired) },
            Pair { primary_output: Some(1), shadow_output: Some(3), ..pair(Outcome::Paired) },
        ];
        let mut rng = SplitMix64::new(7);
        let mut want: Vec<f64> = (0..RESAMPLES)
            .map(|_| {
                let s: u64 = (0..2).map(|_| if rng.next_u64() % 2 == 0 { 1 } else { 3 }).sum();
                s as f64 / 2.0
            })
            .collect();
        want.sort_by(f64::total_cmp);
        let got = compare(&pairs("r", list), 7).rules["r"].output_tokens.ratio_ci95.unwrap();
        assert_eq!(got, [want[24], want[974]]);
    }

    #[test]
    fn a_figure_with_no_data_is_null() {
        let list = vec![
            pair(Outcome::ShadowFailed),
            Pair { primary_output: Some(0), shadow_output: Some(5), ..pair(Outcome::Paired) },
        ];
        let report = compare(&pairs("r", list), 0);
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let want = serde_json::json!({"rules": {"r": {
            "pairs": 2,
            "results": {"paired": 1, "shadow_failed": 1, "timed_out": 0},
            "status_agreement": null,
            "total_ms": {"primary": {"p50": null, "p95": null}, "shadow": {"p50": null, "p95": null}},
            "output_tokens": {"primary": 0.0, "shadow": 5.0, "ratio": null, "ratio_ci95": null},
            "similarity": {"p10": null, "p50": null, "p90": null},
            "finish_mismatches": 0
        }}});
        assert_eq!(v, want, "primary tokens summing to 0 have no ratio");
        let text = report.to_text();
        assert!(text.contains("total ms p50                              -          -"), "{text}");
    }

    #[test]
    fn the_json_keeps_design_s_key_order() {
        let report = compare(&pairs("r", vec![pair(Outcome::Paired)]), 0);
        let json = report.to_json();
        let keys = [
            "\"rules\"",
            "\"r\"",
            "\"pairs\"",
            "\"results\"",
            "\"paired\"",
            "\"shadow_failed\"",
            "\"timed_out\"",
            "\"status_agreement\"",
            "\"total_ms\"",
            "\"output_tokens\"",
            "\"ratio_ci95\"",
            "\"similarity\"",
            "\"p10\"",
            "\"finish_mismatches\"",
        ];
        let at: Vec<usize> = keys.iter().map(|k| json.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(!json.contains("with_"), "the table's counts stay out of the JSON");
    }

    #[test]
    fn the_table_names_each_rule_and_its_figures() {
        let list = vec![Pair {
            primary_status: Some(200),
            shadow_status: Some(200),
            primary_total_ms: Some(812),
            shadow_total_ms: Some(901),
            primary_output: Some(300),
            shadow_output: Some(390),
            similarity: Some(0.6876),
            ..pair(Outcome::Paired)
        }];
        let mut ps = pairs("ramp", list);
        ps.by_rule.insert("pilot".into(), vec![pair(Outcome::TimedOut)]);
        let text = compare(&ps, 0).to_text();
        let want = [
            "rule pilot: 1 pairs (0 paired, 0 shadow_failed, 1 timed_out)",
            "rule ramp: 1 pairs (1 paired, 0 shadow_failed, 0 timed_out)",
            "  of the 1 paired:                    primary     shadow\n",
            "  total ms p50                            812        901\n",
            "  output tokens per answer              300.0      390.0   (1 with both counts)\n",
            "  output ratio shadow / primary         1.300   95% CI 1.300 .. 1.300\n",
            "  ending mismatches                         0\n",
            "  status agreement                     100.0%   (1 pairs with both statuses)\n",
            "  similarity p10 / p50 / p90       0.688 / 0.688 / 0.688   (1 pairs)\n",
        ];
        for line in want {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(text.find("rule pilot").unwrap() < text.find("rule ramp").unwrap(), "rules by name");
        assert_eq!(
            Report { rules: BTreeMap::new() }.to_text(),
            "no shadow records (log records with graysplit.rule) in the files\n"
        );
    }
}
