//! Property tests of DESIGN.md's bucketing contract and config errors, over arbitrary users,
//! salts and splits: stickiness, monotonic ramps, exact bands for multi-version splits, the
//! bucket of a salt and an id equal to murmur3 of their concatenation, user ids hashed as the
//! bytes received, and the JSON path of a bad percent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use graysplit::bucket::{bucket, BUCKETS};
use graysplit::config::{parse, Plan};
use graysplit::decide::{decide, DecidedBy, Decision};
use graysplit::request::fake::StaticRequest;
use proptest::prelude::*;

const STABLE: &str = "s1";
/// Gray versions, one per split entry.
const GRAY: [&str; 4] = ["g1", "g2.0", "g3-rc.1", "g_4"];

/// The contract's reference: `murmur3_x86_32(salt + ":" + user, seed 0) mod 10000`, computed
/// by the `murmur3` crate over the concatenated bytes.
fn reference_bucket(salt: &[u8], user: &[u8]) -> u32 {
    let key = [salt, b":", user].concat();
    murmur3::murmur3_32(&mut std::io::Cursor::new(key), 0).unwrap() % BUCKETS
}

/// A percent in basis points written as operators do, with two decimals (`12.34`, `0.05`,
/// `100.00`) or in a shorter form (`12.3`, `7`) when `short` and the value allows it.
fn pct(bp: u32, short: bool) -> String {
    let two = format!("{}.{:02}", bp / 100, bp % 100);
    if !short {
        two
    } else if bp % 100 == 0 {
        format!("{}", bp / 100)
    } else {
        two.trim_end_matches('0').to_string()
    }
}

/// A config whose only rule is a split with `salt`, entry i sending `bp[i]` to `GRAY[i]`.
fn split_config(salt: &str, bps: &[u32], short: bool) -> String {
    let split: Vec<String> = bps
        .iter()
        .zip(GRAY)
        .map(|(bp, v)| format!(r#"{{"version": "{v}", "percent": {}}}"#, pct(*bp, short)))
        .collect();
    format!(
        r#"{{"stable": "{STABLE}",
            "identity": {{"from": [{{"header": "x-user-id"}}, {{"cookie": "uid"}}, {{"query": "uid"}}]}},
            "rules": [{{"name": "ramp", "salt": {}, "split": [{}]}}]}}"#,
        serde_json::to_string(salt).unwrap(),
        split.join(", ")
    )
}

fn compile(json: &str) -> Plan {
    parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

/// A GET whose user id arrives in `x-user-id`, as raw bytes.
fn with_header_id(user: &[u8]) -> StaticRequest {
    let mut r = StaticRequest::get("/", &[]);
    r.headers.push(("x-user-id".to_string(), user.to_vec()));
    r
}

/// A GET whose user id arrives in the query, every byte percent-encoded.
fn with_query_id(user: &[u8]) -> StaticRequest {
    let enc: String = user.iter().map(|b| format!("%{b:02X}")).collect();
    StaticRequest::get(&format!("/app?x=1&uid={enc}"), &[])
}

fn version_of(plan: &Plan, req: &StaticRequest) -> (String, Decision) {
    let d = decide(plan, req);
    (d.version_name(plan).to_string(), d)
}

/// The version DESIGN's formula gives: entry i owns `[sum(bp[..i]), sum(bp[..=i]))`.
fn expected_version(bps: &[u32], b: u32) -> &'static str {
    let mut upper = 0;
    for (bp, v) in bps.iter().zip(GRAY) {
        upper += bp;
        if b < upper {
            return v;
        }
    }
    STABLE
}

/// `bps` with the upper edge of entry `k` moved to `edge`, the other edges kept (re-sorted).
fn with_edge_at(bps: &[u32], k: usize, edge: u32) -> Vec<u32> {
    let mut upper = 0;
    let mut edges: Vec<u32> = bps
        .iter()
        .map(|bp| {
            upper += bp;
            upper
        })
        .collect();
    edges[k] = edge;
    edges.sort_unstable();
    let mut last = 0;
    edges
        .iter()
        .map(|e| {
            let bp = e - last;
            last = *e;
            bp
        })
        .collect()
}

/// 1..=4 split entries in basis points, summing to at most 100%: the gaps between sorted cuts
/// of `0..=10000`, so zero-width entries and a full 100% come up often enough.
fn split_bps(max_entries: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(prop_oneof![0u32..=BUCKETS, Just(0), Just(BUCKETS)], 1..=max_entries).prop_map(
        |mut cuts| {
            cuts.sort_unstable();
            let mut last = 0;
            cuts.iter()
                .map(|c| {
                    let bp = c - last;
                    last = *c;
                    bp
                })
                .collect()
        },
    )
}

fn user() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..48)
}

/// Salts: any non-empty text (JSON-escaped when written), ASCII most of the time.
fn salt() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z0-9._-]{1,24}", 1 => "\\PC{1,12}"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Stickiness: with the config unchanged, a user gets the same version and bucket on every
    /// request, whatever else the request carries, whichever identity source carried the id,
    /// and after the same config is compiled again (a push of identical config, a new VM).
    #[test]
    fn same_user_same_version_every_time(
        salt in salt(), bps in split_bps(4), short: bool, user in user(),
        noise in prop::collection::vec(("x-[a-z]{1,8}", prop::collection::vec(any::<u8>(), 0..16)), 0..4),
        random_byte: u8, now: i64,
    ) {
        let json = split_config(&salt, &bps, short);
        let plan = compile(&json);
        let (first, d) = version_of(&plan, &with_header_id(&user));
        for _ in 0..3 {
            prop_assert_eq!(&version_of(&plan, &with_header_id(&user)).0, &first);
        }
        let mut noisy = with_header_id(&user);
        noisy.headers.extend(noise.iter().map(|(k, v)| (k.clone(), v.clone())));
        noisy.random_byte = random_byte;
        noisy.now = now;
        noisy.source = Some("203.0.113.9:1".to_string());
        let again = decide(&plan, &noisy);
        prop_assert_eq!(again.version_name(&plan), first.as_str(), "unrelated parts of the request");
        prop_assert_eq!(again.bucket, d.bucket);
        let via_query = decide(&plan, &with_query_id(&user));
        prop_assert_eq!(via_query.version_name(&plan), first.as_str(), "id from the query");
        prop_assert_eq!(via_query.bucket, d.bucket);
        let recompiled = compile(&json);
        prop_assert_eq!(version_of(&recompiled, &with_header_id(&user)).0, first, "recompiled config");
    }

    /// Monotonic ramp, one gray version: for percents p1 <= p2 (two decimals), a user who is
    /// gray at p1 is gray at p2 (same salt). Half the cases put p1 and p2 right at the user's
    /// bucket, where an off-by-one would show: gray at p exactly when bucket < 100*p.
    #[test]
    fn ramp_up_never_moves_a_gray_user_back(
        salt in salt(), a in 0u32..=BUCKETS, b in 0u32..=BUCKETS, at_edge: bool, user in user(),
    ) {
        let ub = reference_bucket(salt.as_bytes(), &user);
        let (p1, p2) = if at_edge { (ub, ub + 1) } else { (a.min(b), a.max(b)) };
        let at = |p: u32| version_of(&compile(&split_config(&salt, &[p], false)), &with_header_id(&user)).0;
        let (v1, v2) = (at(p1), at(p2));
        prop_assert!(v1 != GRAY[0] || v2 == GRAY[0], "gray at {} but {} at {}", pct(p1, false), v2, pct(p2, false));
        prop_assert_eq!(v1 == GRAY[0], ub < p1, "bucket {} at {}", ub, pct(p1, false));
        prop_assert_eq!(v2 == GRAY[0], ub < p2, "bucket {} at {}", ub, pct(p2, false));
    }

    /// Monotonic ramp, several gray versions: raising the LAST entry's percent moves users only
    /// from stable to that entry's version; everyone else keeps their version.
    #[test]
    fn raising_the_last_entry_only_moves_stable_users(
        salt in salt(), bps in split_bps(4), raise_frac in 0.0f64..=1.0, user in user(),
    ) {
        let room = BUCKETS - bps.iter().sum::<u32>();
        let raise = ((f64::from(room) * raise_frac) as u32).min(room);
        let mut raised = bps.clone();
        *raised.last_mut().unwrap() += raise;
        let last = GRAY[bps.len() - 1];
        let before = version_of(&compile(&split_config(&salt, &bps, false)), &with_header_id(&user)).0;
        let after = version_of(&compile(&split_config(&salt, &raised, false)), &with_header_id(&user)).0;
        prop_assert!(
            before == after || (before == STABLE && after == last),
            "{:?} -> {:?}: {} -> {}", bps, raised, before, after
        );
    }

    /// Exact bands: for 2-4 versions with two-decimal percents summing to at most 100, the
    /// chosen version is the band containing `murmur3(salt:user) % 10000` (computed by the
    /// murmur3 crate), the decision reports that bucket, and the compiled bands are the formula's.
    #[test]
    fn multi_version_split_picks_the_band_owning_the_bucket(
        salt in salt(),
        bps in split_bps(4).prop_filter("2 to 4 versions", |b| b.len() >= 2),
        edge in proptest::option::of((any::<prop::sample::Index>(), 0u32..=1)),
        short: bool, user in user(),
    ) {
        let want_bucket = reference_bucket(salt.as_bytes(), &user);
        // Often put one band edge right at the user's bucket (or just above), where an
        // off-by-one in the band lookup would show.
        let bps = match edge {
            Some((k, off)) => with_edge_at(&bps, k.index(bps.len()), (want_bucket + off).min(BUCKETS)),
            None => bps,
        };
        let plan = compile(&split_config(&salt, &bps, short));
        let (got, d) = version_of(&plan, &with_header_id(&user));
        prop_assert_eq!(d.by, DecidedBy::Rule(0));
        prop_assert_eq!(d.bucket, Some(want_bucket));
        prop_assert_eq!(got.as_str(), expected_version(&bps, want_bucket), "bucket {} in {:?}", want_bucket, bps);
        let mut lo = 0;
        let mut want_bands: Vec<(&str, u32, u32)> = bps
            .iter()
            .zip(GRAY)
            .map(|(bp, v)| {
                let band = (v, lo, lo + bp);
                lo += bp;
                band
            })
            .collect();
        want_bands.push((STABLE, lo, BUCKETS));
        prop_assert_eq!(plan.split_bands(0, 0).unwrap(), want_bands);
    }

    /// `bucket` is the contract's formula for any salt and user bytes.
    #[test]
    fn bucket_is_murmur3_of_salt_colon_user_mod_10000(
        salt in prop::collection::vec(any::<u8>(), 0..32), user in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let salt_colon = [&salt[..], b":"].concat();
        let b = bucket(&salt_colon, &user);
        prop_assert!(b < BUCKETS);
        prop_assert_eq!(b, reference_bucket(&salt, &user));
    }

    /// User ids are hashed as the bytes received, non-UTF-8 included: from a header as is,
    /// from the query after percent-decoding, from a cookie as is.
    #[test]
    fn user_id_bytes_are_hashed_as_received(
        salt in salt(), user in user(),
        cookie_user in prop::collection::vec(
            any::<u8>().prop_filter("cookie syntax", |b| !b" \t;\"".contains(b)), 1..32),
    ) {
        let plan = compile(&split_config(&salt, &[5000], false));
        let want = Some(reference_bucket(salt.as_bytes(), &user));
        prop_assert_eq!(decide(&plan, &with_header_id(&user)).bucket, want, "header");
        prop_assert_eq!(decide(&plan, &with_query_id(&user)).bucket, want, "query, percent-encoded");
        let mut r = StaticRequest::get("/", &[]);
        r.headers.push(("cookie".to_string(), [&b"a=1; uid="[..], &cookie_user, b"; b=2"].concat()));
        prop_assert_eq!(
            decide(&plan, &r).bucket,
            Some(reference_bucket(salt.as_bytes(), &cookie_user)),
            "cookie"
        );
    }

    /// `users` compares bytes: a listed user (any text) matches exactly its own bytes.
    #[test]
    fn users_condition_matches_exactly_the_listed_bytes(listed in "\\PC{1,16}", other in user()) {
        let json = format!(
            r#"{{"stable": "{STABLE}", "identity": {{"from": [{{"header": "x-user-id"}}]}},
                "rules": [{{"name": "vip", "when": {{"users": [{}]}}, "version": "g1"}}]}}"#,
            serde_json::to_string(&listed).unwrap()
        );
        let plan = compile(&json);
        prop_assert_eq!(version_of(&plan, &with_header_id(listed.as_bytes())).0, "g1");
        let expect = if other == listed.as_bytes() { "g1" } else { STABLE };
        prop_assert_eq!(version_of(&plan, &with_header_id(&other)).0, expect);
    }

    /// A percent above 100 (or below 0) anywhere is reported at exactly
    /// `rules[i].split[j].percent`, with the value, and nothing else is blamed.
    #[test]
    fn out_of_range_percent_is_reported_at_its_path(
        lens in prop::collection::vec(1usize..=4, 1..=5),
        pick_rule: prop::sample::Index, pick_entry: prop::sample::Index,
        fill in prop::collection::vec(0u32..=2000, 20),
        bad in prop_oneof![
            (BUCKETS + 1..=10_000_000u32).prop_map(|bp| pct(bp, false)),
            (100.0f64..1e300).prop_filter(">100", |p| *p > 100.0).prop_map(|p| format!("{p}")),
            (1u32..=1_000_000).prop_map(|bp| format!("-{}", pct(bp, false))),
        ],
    ) {
        let i = pick_rule.index(lens.len());
        let j = pick_entry.index(lens[i]);
        let mut fill = fill.into_iter();
        let rules: Vec<String> = lens
            .iter()
            .enumerate()
            .map(|(r, len)| {
                let split: Vec<String> = (0..*len)
                    .map(|e| {
                        let p = if (r, e) == (i, j) { bad.clone() } else { pct(fill.next().unwrap(), false) };
                        format!(r#"{{"version": "{}", "percent": {p}}}"#, GRAY[e])
                    })
                    .collect();
                format!(r#"{{"name": "r{r}", "split": [{}]}}"#, split.join(", "))
            })
            .collect();
        let json = format!(
            r#"{{"stable": "{STABLE}", "identity": {{"from": [{{"header": "u"}}]}}, "rules": [{}]}}"#,
            rules.join(", ")
        );
        let err = parse(json.as_bytes()).err().unwrap_or_else(|| panic!("accepted: {json}"));
        prop_assert_eq!(&err.path, &format!("rules[{i}].split[{j}].percent"), "{}", err);
        prop_assert!(err.problem.starts_with("must be between 0 and 100, got "), "{}", err);
    }

    /// Percents with a third decimal (10.555, 0.001) are refused at their path.
    #[test]
    fn a_third_decimal_is_refused(bp in 0u32..BUCKETS, third in 1u32..=9) {
        let p = format!("{}{third}", pct(bp, false));
        let json = split_config("s", &[0], false).replace(r#""percent": 0.00"#, &format!(r#""percent": {p}"#));
        let err = parse(json.as_bytes()).err().unwrap_or_else(|| panic!("accepted {p}"));
        prop_assert_eq!(err.path.as_str(), "rules[0].split[0].percent");
        prop_assert!(err.problem.starts_with("at most two decimals"), "{}", err);
    }

    /// A split whose running total first passes 100 is reported at the entry that passed it.
    #[test]
    fn split_sum_over_100_is_reported_where_it_crosses(
        bps in prop::collection::vec(0u32..=6000, 2..=4),
    ) {
        let mut total = 0;
        let crossing = bps.iter().position(|bp| { total += bp; total > BUCKETS });
        let result = parse(split_config("s", &bps, false).as_bytes());
        match crossing {
            None => prop_assert!(result.is_ok(), "{:?}", result.err()),
            Some(j) => {
                let err = result.err().unwrap();
                prop_assert_eq!(err.path, format!("rules[0].split[{j}].percent"));
                prop_assert!(err.problem.contains("more than 100"), "{}", err.problem);
            }
        }
    }
}

/// Every two-decimal percent from 0.00 to 100.00, as written by an operator, is accepted and
/// compiles to exactly that many buckets (the JSON number parser's rounding must not turn
/// `12.34` into "more than two decimals").
#[test]
fn every_two_decimal_percent_compiles_to_its_buckets() {
    let mut refused = Vec::new();
    for bp in 0..=BUCKETS {
        for short in [false, true] {
            match parse(split_config("s", &[bp], short).as_bytes()) {
                Ok(plan) => assert_eq!(plan.split_bands(0, 0).unwrap()[0].2, bp, "{}", pct(bp, short)),
                Err(e) => refused.push(format!("{}: {e}", pct(bp, short))),
            }
        }
    }
    assert!(refused.is_empty(), "{} refused, e.g. {:?}", refused.len(), &refused[..refused.len().min(5)]);
}
