//! How similar two answers are (DESIGN.md "Shadow"): the Jaccard index of the two texts' sets
//! of character 3-grams.
//!
//! Each text is first cut to its first [`MAX_BYTES`] bytes (at a character boundary), then
//! lower-cased as `str::to_lowercase` does (full Unicode mappings: `İ` becomes `i` and U+0307,
//! a word-final `Σ` becomes `ς`), every run of Unicode White_Space (`char::is_whitespace`) is
//! collapsed to one space and both ends are trimmed. The grams are runs of 3 Unicode scalar
//! values; a text of 1 or 2 characters is one gram, an empty one has none. Two empty texts give
//! 1.0, one empty text and one not 0.0.
//!
//! The work is bounded, for the wasm computes it once per pair: no normalised copy of a text is
//! made (only a text with an upper-case sigma is lower-cased into a copy, for its context rule);
//! each gram is one `u64` (three scalar values plus one, 21 bits each, so a 1- or 2-character
//! gram never equals a 3-character one), sorted, deduplicated and counted against the other
//! text's in one merge. At most two vectors of about 64 Ki grams: 1 MiB in the worst case.

use super::record::text_cap;

/// The bytes of each text the similarity reads.
pub const MAX_BYTES: usize = 65536;

/// The similarity of `a` and `b`, in 0.0..=1.0, unrounded.
pub fn similarity(a: &str, b: &str) -> f64 {
    let (ga, gb) = (grams(a), grams(b));
    if ga.is_empty() && gb.is_empty() {
        return 1.0;
    }
    let shared = shared(&ga, &gb);
    let union = ga.len() + gb.len() - shared;
    shared as f64 / union as f64
}

/// The sorted, distinct grams of `text`.
fn grams(text: &str) -> Vec<u64> {
    let cut = text_cap(text, MAX_BYTES);
    let mut out = Vec::with_capacity(cut.chars().count());
    // Σ is the one mapping of `str::to_lowercase` that depends on its neighbours (Final_Sigma,
    // from Unicode's SpecialCasing.txt); every other character lower-cases on its own.
    if cut.contains('Σ') {
        push_grams(cut.to_lowercase().chars(), &mut out);
    } else {
        push_grams(cut.chars().flat_map(char::to_lowercase), &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The grams of the lower-cased `chars`, whitespace runs collapsed and the ends trimmed.
fn push_grams(chars: impl Iterator<Item = char>, out: &mut Vec<u64>) {
    const MASK: u64 = (1 << 63) - 1;
    let mut window = 0u64;
    let mut seen = 0usize;
    let mut space = false;
    let mut push = |c: char, window: &mut u64, seen: &mut usize| {
        *window = ((*window << 21) | (u64::from(c) + 1)) & MASK;
        *seen += 1;
        if *seen >= 3 {
            out.push(*window);
        }
    };
    for c in chars {
        if c.is_whitespace() {
            // Leading whitespace is dropped; a run inside becomes one space when the next
            // character comes, so trailing whitespace never counts.
            space = seen > 0;
            continue;
        }
        if space {
            push(' ', &mut window, &mut seen);
            space = false;
        }
        push(c, &mut window, &mut seen);
    }
    if seen == 1 || seen == 2 {
        out.push(window);
    }
}

/// How many values two sorted, distinct lists share.
fn shared(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match x.cmp(y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_jaccard_index_of_hand_counted_gram_sets() {
        // (a, b, |A ∩ B| / |A ∪ B|, why)
        let cases: &[(&str, &str, f64, &str)] = &[
            ("abc", "abc", 1.0, "the same text"),
            ("abcd", "abce", 1.0 / 3.0, "{abc,bcd} vs {abc,bce}"),
            ("abcd", "xyz", 0.0, "nothing shared"),
            ("aaaa", "aaa", 1.0, "sets: a repeated gram counts once"),
            ("abab", "aba", 0.5, "{aba,bab} vs {aba}"),
            ("ABC", "abc", 1.0, "lower-cased"),
            ("a b", "a b", 1.0, "a space inside is a character of a gram"),
            ("ab", "ab", 1.0, "two characters are one gram"),
            ("a", "a", 1.0, "one character is one gram"),
            ("ab", "abc", 0.0, "a short gram is not a 3-gram's prefix"),
            ("ab", "\0ab", 0.0, "nor a 3-gram that starts with NUL"),
            ("幻灯片", "幻灯片制作", 1.0 / 3.0, "CJK: {幻灯片} vs {幻灯片,灯片制,片制作}"),
            ("😀😀😀😀", "😀😀😀", 1.0, "emoji are one scalar value each"),
            ("👍🏽ok", "👍ok", 0.0, "a skin-tone modifier is its own scalar value"),
            ("İx", "i\u{307}x", 1.0, "Turkish İ lower-cases to i and U+0307: three characters"),
            ("İ", "i", 0.0, "{i\u{307}} vs {i}"),
            ("ΟΔΟΣ", "οδος", 1.0, "a word-final Σ becomes ς, as str::to_lowercase"),
            ("ΟΔΟΣ", "οδοσ", 1.0 / 3.0, "{οδο,δος} vs {οδο,δοσ}"),
            ("ΣΑ", "σα", 1.0, "a Σ that is not word-final becomes σ"),
        ];
        for (a, b, want, why) in cases {
            let got = similarity(a, b);
            assert!(close(got, *want), "{why}: similarity({a:?}, {b:?}) = {got}, want {want}");
            assert!(close(similarity(b, a), got), "{why}: symmetric");
        }
    }

    #[test]
    fn whitespace_runs_are_one_space_and_the_ends_are_trimmed() {
        let cases: &[(&str, &str, &str)] = &[
            ("a  b\t\nc", "a b c", "ASCII runs"),
            ("a\u{3000}b", "a b", "ideographic space"),
            ("a\u{a0}\u{2028}\u{85}b", "a b", "NBSP, line separator, NEL in one run"),
            ("  abc \n", "abc", "trimmed"),
            ("\t\n ab \u{3000}", "ab", "trimmed to two characters: one gram"),
        ];
        for (a, b, why) in cases {
            assert_eq!(similarity(a, b), 1.0, "{why}: {a:?} vs {b:?}");
        }
        assert!(close(similarity("a b", "ab"), 0.0), "a space between is not nothing");
    }

    #[test]
    fn empty_texts_agree_and_an_empty_one_shares_nothing() {
        let cases: &[(&str, &str, f64, &str)] = &[
            ("", "", 1.0, "two empty texts"),
            (" \t\n", "\u{3000}", 1.0, "whitespace alone is empty"),
            ("", "a", 0.0, "one empty"),
            ("  ", "abc", 0.0, "one blank"),
        ];
        for (a, b, want, why) in cases {
            assert_eq!(similarity(a, b), *want, "{why}");
            assert_eq!(similarity(b, a), *want, "{why}: symmetric");
        }
    }

    /// DESIGN's definition written the plain way: a lower-cased copy, words joined by one space,
    /// grams as sets of character vectors.
    fn reference(a: &str, b: &str) -> f64 {
        let set = |t: &str| {
            let norm: Vec<char> = text_cap(t, MAX_BYTES)
                .to_lowercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .collect();
            let mut grams = std::collections::BTreeSet::new();
            if norm.len() < 3 && !norm.is_empty() {
                grams.insert(norm.clone());
            }
            grams.extend(norm.windows(3).map(<[char]>::to_vec));
            grams
        };
        let (x, y) = (set(a), set(b));
        if x.is_empty() && y.is_empty() {
            return 1.0;
        }
        x.intersection(&y).count() as f64 / x.union(&y).count() as f64
    }

    #[test]
    fn random_texts_agree_with_the_plain_definition() {
        let alphabet: Vec<char> = "aAbB ΣσςΟİi\u{307}\t\n\u{3000}幻灯😀\u{0}".chars().collect();
        let mut rng = crate::shadow::compare::SplitMix64::new(18);
        let text = |rng: &mut crate::shadow::compare::SplitMix64| -> String {
            let len = rng.next_u64() % 12;
            (0..len).filter_map(|_| alphabet.get((rng.next_u64() % alphabet.len() as u64) as usize)).collect()
        };
        for _ in 0..3000 {
            let (a, b) = (text(&mut rng), text(&mut rng));
            assert!(close(similarity(&a, &b), reference(&a, &b)), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn only_the_first_65536_bytes_count_cut_at_a_character_boundary() {
        // é takes bytes 65535 and 65536: the cut falls inside it, so it is left out whole.
        let split_char = format!("{}é", "a".repeat(MAX_BYTES - 1));
        assert_eq!(similarity(&split_char, "aaa"), 1.0, "{{aaa}}: é is past the cut");
        // The same é one byte earlier ends within the cut: {aaa, aaé}.
        let whole_char = format!("{}é", "a".repeat(MAX_BYTES - 2));
        assert!(close(similarity(&whole_char, "aaa"), 0.5));
        let past = format!("{}yz", "x".repeat(MAX_BYTES));
        assert_eq!(similarity(&past, "xxx"), 1.0, "what comes after the cut is not read");
        let cjk = "幻".repeat(MAX_BYTES); // 3 bytes each: the cut is at 65535
        assert_eq!(similarity(&cjk, "幻幻幻"), 1.0);
    }
}
