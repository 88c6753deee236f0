//! Lanes (DESIGN.md "Lanes: the decision follows the request through the mesh"): the edge
//! writes its decision into the request's W3C `baggage` header as a signed member, and the hops
//! inside the mesh follow it. Sans-I/O: header values in, the verdict and the header the
//! request goes on with out; the caller reads and writes the headers, checks `trusted_cidrs`,
//! and counts.
//!
//! - [`issue`] (`mode: "edge"`): every member of our key the client sent is removed, every
//!   other member kept byte for byte in its order, and ours appended:
//!   `<baggage_key>=<version>;r=<rule>;e=<expiry>;s=<sig>` (see `member.rs`). Only the
//!   separators are normalised: members are joined by `,` without OWS, empty members dropped,
//!   several `baggage` headers become one. A header that would pass [`MAX_BAGGAGE_BYTES`] keeps
//!   the client's members and drops ours ([`Outcome::TooLong`]).
//! - [`follow`] (`mode: "follow"`): the one member of our key must parse, verify under a key,
//!   not be expired and name a known version; then the request goes to that version and the
//!   header is kept as it came, for the next hop. Otherwise every member of our key is removed
//!   and the request is decided by the rules.
//!
//! A lane holds while `now < e`: at its expiry second it has expired, as a session pin has
//! (`decide/pin.rs`) and as a cookie's `Max-Age` runs out.

mod baggage;
mod member;

pub use member::{Key, Signer};

/// The longest `baggage` header an edge writes: W3C Baggage's limit for a baggage-string.
pub const MAX_BAGGAGE_BYTES: usize = 8192;

/// What becomes of the request's `baggage` header(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// Leave them as they are.
    Keep,
    /// Replace them all with this one value.
    Set(Vec<u8>),
    /// Remove them all: nothing is left.
    Remove,
}

/// The result a lane counts, `graysplit_lane_total.result.<label>` (DESIGN.md "Lanes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Issued,
    Followed,
    Forged,
    Expired,
    /// From a source outside `trusted_cidrs`: the caller's check, made before [`follow`].
    Untrusted,
    Absent,
    TooLong,
}

impl Outcome {
    /// Every result, in DESIGN's order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Issued,
        Outcome::Followed,
        Outcome::Forged,
        Outcome::Expired,
        Outcome::Untrusted,
        Outcome::Absent,
        Outcome::TooLong,
    ];

    /// The metric's `result` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Followed => "followed",
            Outcome::Forged => "forged",
            Outcome::Expired => "expired",
            Outcome::Untrusted => "untrusted",
            Outcome::Absent => "absent",
            Outcome::TooLong => "too_long",
        }
    }
}

/// What [`issue`] made of the request's baggage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// [`Outcome::Issued`], or [`Outcome::TooLong`] when our member was dropped.
    pub outcome: Outcome,
    /// The header the request goes on with.
    pub header: Header,
    /// Whether the client sent members of our key (removed).
    pub removed_client_member: bool,
}

/// Writes the edge's decision into the request's baggage: `values` are the request's `baggage`
/// headers in order (none: no header), `baggage_key` our member's key, `version` and `rule` the
/// decision, `expires_s` the Unix second it holds until (now + `ttl_s`), `key` the signing key.
///
/// [`Header::Set`] holds the client's other members joined by `,` (no OWS), then ours. When
/// that would pass [`MAX_BAGGAGE_BYTES`]: [`Outcome::TooLong`], and the header holds the
/// client's other members only ([`Header::Remove`] if there are none, [`Header::Keep`] if the
/// client sent no member of ours, so there is nothing to change). One allocation, sized first.
pub fn issue<V: AsRef<[u8]>>(
    values: &[V],
    baggage_key: &str,
    version: &str,
    rule: &str,
    expires_s: u64,
    key: &(impl Key + ?Sized),
) -> Issued {
    let ours = baggage_key.as_bytes();
    let scan = baggage::scan(values, ours);
    let removed_client_member = scan.ours > 0;
    let sep = usize::from(scan.others > 0);
    let len = scan.others_len + sep + member::len(baggage_key, version, rule, expires_s);
    let not_issued = || Issued {
        outcome: Outcome::TooLong,
        header: if removed_client_member { baggage::without(values, ours, &scan) } else { Header::Keep },
        removed_client_member,
    };
    if len > MAX_BAGGAGE_BYTES {
        return not_issued();
    }
    let mut out = Vec::with_capacity(len);
    baggage::push_others(&mut out, values, ours);
    if sep > 0 {
        out.push(b',');
    }
    if !member::push(&mut out, baggage_key, version, rule, expires_s, key) {
        // HMAC takes keys of any length: never. Were it so, issuing nothing is the safe side.
        return not_issued();
    }
    Issued { outcome: Outcome::Issued, header: Header::Set(out), removed_client_member }
}

/// Why a member of our key is not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// Not `<baggage_key>=<v>;r=<r>;e=<e>;s=<sig>` exactly (OWS inside, another property, a
    /// bare key, a non-canonical expiry, signature or percent-encoding, names not UTF-8).
    Malformed,
    /// Not signed by the key or a previous key, or changed since.
    BadSignature,
    /// More than one member of our key: an edge writes exactly one, so another was appended
    /// (and hops may differ on which they read). None of them is followed.
    Several,
}

/// What a hop makes of the lane in a request's baggage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It verified: the request goes to `version` (rule `lane` in metrics and logs); `rule` is
    /// the rule that decided at the edge, for logs.
    Followed {
        version: String,
        rule: String,
    },
    Forged(Forgery),
    /// Signed, but `now >= e`.
    Expired,
    /// Signed and in time, but naming a version this hop does not know (its config is older or
    /// newer than the edge's). Counted as `forged`: DESIGN's results have nothing closer.
    UnknownVersion(String),
    /// No member of our key.
    Absent,
}

impl Verdict {
    /// The result to count: [`Verdict::UnknownVersion`] is `forged`.
    pub fn outcome(&self) -> Outcome {
        match self {
            Verdict::Followed { .. } => Outcome::Followed,
            Verdict::Forged(_) | Verdict::UnknownVersion(_) => Outcome::Forged,
            Verdict::Expired => Outcome::Expired,
            Verdict::Absent => Outcome::Absent,
        }
    }
}

/// What [`follow`] made of the request's baggage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    pub verdict: Verdict,
    /// [`Header::Keep`] when followed or absent; otherwise the client's other members without
    /// any of ours ([`Header::Set`], joined by `,` without OWS), or [`Header::Remove`].
    pub header: Header,
}

/// Reads the lane of a request at a hop inside the mesh: `values` are its `baggage` headers in
/// order (none: no header), `baggage_key` our member's key, `keys` the signing key then the
/// previous ones (each is tried), `now_s` the Unix time, `known` whether a version name is one
/// this hop routes to. The caller checks `trusted_cidrs` first: from an untrusted source it
/// counts [`Outcome::Untrusted`] and does not call this (but should still remove our member,
/// e.g. with [`strip`]).
///
/// The signature is checked over the member's bytes before `;s=` exactly as received, in
/// constant time; a member verifies only in the one spelling [`issue`] writes. The follow path
/// allocates only the verdict's names, and the rewritten header when a member is removed.
pub fn follow<V: AsRef<[u8]>, K: Key>(
    values: &[V],
    baggage_key: &str,
    keys: &[K],
    now_s: u64,
    known: impl Fn(&str) -> bool,
) -> Follow {
    let ours = baggage_key.as_bytes();
    let scan = baggage::scan(values, ours);
    let verdict = match (scan.ours, scan.first_ours) {
        (0, _) | (_, None) => return Follow { verdict: Verdict::Absent, header: Header::Keep },
        (1, Some(m)) => judge(m, ours, keys, now_s, known),
        _ => Verdict::Forged(Forgery::Several),
    };
    let header = match verdict {
        Verdict::Followed { .. } => Header::Keep,
        _ => baggage::without(values, ours, &scan),
    };
    Follow { verdict, header }
}

/// The one member of our key, judged: shape, then signature (so nothing unsigned is called
/// expired or unknown), then expiry, then names.
fn judge<K: Key>(
    member: &[u8],
    baggage_key: &[u8],
    keys: &[K],
    now_s: u64,
    known: impl Fn(&str) -> bool,
) -> Verdict {
    // The member as the edge wrote it or, re-sent by an SDK that took its properties for part
    // of its value (OpenTelemetry Python's propagator percent-encodes `;` and `=` when it sends
    // the baggage on), in its canonical bytes again: the signature is over those either way.
    let canonical;
    let parsed = match member::parse(member, baggage_key) {
        Some(p) => p,
        None => {
            let Some(c) = member::unfolded(member, baggage_key) else {
                return Verdict::Forged(Forgery::Malformed);
            };
            canonical = c;
            let Some(p) = member::parse(&canonical, baggage_key) else {
                return Verdict::Forged(Forgery::Malformed);
            };
            p
        }
    };
    if !parsed.verified(keys) {
        return Verdict::Forged(Forgery::BadSignature);
    }
    if now_s >= parsed.expires_s {
        return Verdict::Expired;
    }
    let Some((version, rule)) = parsed.names() else {
        return Verdict::Forged(Forgery::Malformed);
    };
    if !known(&version) {
        return Verdict::UnknownVersion(version);
    }
    Verdict::Followed { version, rule }
}

/// The request's baggage with every member of our key removed ([`Header::Keep`] when it has
/// none): for a request whose lane is not read, e.g. from outside `trusted_cidrs`.
pub fn strip<V: AsRef<[u8]>>(values: &[V], baggage_key: &str) -> Header {
    let ours = baggage_key.as_bytes();
    let scan = baggage::scan(values, ours);
    if scan.ours == 0 {
        return Header::Keep;
    }
    baggage::without(values, ours, &scan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"the key we used before this week!!";
    const NONE: [&str; 0] = [];
    /// `graysplit=v2.1;r=ramp;e=1700000300` signed with KEY:
    /// python3 -c 'import hmac,hashlib,base64;k=b"0123456789abcdef0123456789abcdef";
    ///   m=b"graysplit=v2.1;r=ramp;e=1700000300";
    ///   print(base64.urlsafe_b64encode(hmac.new(k,m,hashlib.sha256).digest()).rstrip(b"=").decode())'
    const LANE: &str = "graysplit=v2.1;r=ramp;e=1700000300;s=ZYDsoFuDsWRmnXBtU8uML4qrxg3Rx33krZ9fIB0Q1N8";
    /// The same member signed with OLD (the one-liner above with k=OLD).
    const OLD_LANE: &str = "graysplit=v2.1;r=ramp;e=1700000300;s=6yfP7_CJvuW_2c5MKPYsUtYXwETIe6N0SzTt6Bp7fbQ";
    const NOW: u64 = 1_700_000_000;

    fn known(v: &str) -> bool {
        matches!(v, "v2.0" | "v2.1")
    }

    fn set(s: &str) -> Header {
        Header::Set(s.as_bytes().to_vec())
    }

    fn follow_at(values: &[&str], now_s: u64) -> Follow {
        follow(values, "graysplit", &[KEY, OLD], now_s, known)
    }

    #[test]
    fn an_edge_appends_a_signed_member_matching_an_independent_hmac() {
        let got = issue(&NONE, "graysplit", "v2.1", "ramp", 1_700_000_300, KEY);
        assert_eq!(got, Issued { outcome: Outcome::Issued, header: set(LANE), removed_client_member: false });
    }

    #[test]
    fn an_edge_keeps_the_other_members_in_order_and_removes_the_clients_lane() {
        let values = [
            " userId=alice ; p ;q=1 ,\tgraysplit=v9;r=x;e=99999999999;s=forged ",
            "serverNode=DF%2028,,isProduction=false",
            "graysplit",
        ];
        let got = issue(&values, "graysplit", "v2.1", "ramp", 1_700_000_300, KEY);
        let want = format!("userId=alice ; p ;q=1,serverNode=DF%2028,isProduction=false,{LANE}");
        assert_eq!(got, Issued { outcome: Outcome::Issued, header: set(&want), removed_client_member: true });
        let clean = issue(&["a=1"], "graysplit", "v2.1", "ramp", 1_700_000_300, KEY);
        assert!(!clean.removed_client_member);
        assert_eq!(clean.header, set(&format!("a=1,{LANE}")));
    }

    #[test]
    fn an_edge_encodes_odd_names_and_a_follower_decodes_them() {
        let got = issue(&NONE, "graysplit", "v 2/ü.1~", "ppt pilot", NOW + 300, KEY);
        let Header::Set(h) = &got.header else { panic!("{got:?}") };
        let text = String::from_utf8(h.clone()).unwrap();
        assert!(text.starts_with("graysplit=v%202%2F%C3%BC.1~;r=ppt%20pilot;e=1700000300;s="), "{text}");
        let back = follow(&[h], "graysplit", &[KEY], NOW, |v| v == "v 2/ü.1~");
        assert_eq!(back.verdict, Verdict::Followed { version: "v 2/ü.1~".into(), rule: "ppt pilot".into() });
    }

    #[test]
    fn a_lane_re_sent_with_its_properties_encoded_into_its_value_still_verifies() {
        // What OpenTelemetry Python's W3CBaggagePropagator sends on after extracting LANE
        // (python: p.extract({"baggage": LANE}) then p.inject({}, ctx)): ";" and "=" escaped.
        let folded = "a=1,graysplit=v2.1%3Br%3Dramp%3Be%3D1700000300%3Bs%3DZYDsoFuDsWRmnXBtU8uML4qrxg3Rx33krZ9fIB0Q1N8";
        let got = follow_at(&[folded], NOW);
        assert_eq!(got.verdict, Verdict::Followed { version: "v2.1".into(), rule: "ramp".into() });
        assert_eq!(got.header, Header::Keep, "kept as it came, for the next hop");
        let lower = folded.replace("%3B", "%3b").replace("%3D", "%3d");
        assert!(matches!(follow_at(&[&lower], NOW).verdict, Verdict::Followed { .. }));
        // Unfolded, it is judged as the member itself: an altered one is forged, an old one expired.
        let altered = folded.replace("v2.1%3B", "v2.0%3B");
        assert_eq!(follow_at(&[&altered], NOW).verdict, Verdict::Forged(Forgery::BadSignature));
        assert_eq!(follow_at(&[folded], 1_700_000_300).verdict, Verdict::Expired);
        assert_eq!(follow_at(&["graysplit=v2.1%3Bjunk"], NOW).verdict, Verdict::Forged(Forgery::Malformed));
        assert_eq!(follow_at(&["graysplit=v2.1%3Br=ramp"], NOW).verdict, Verdict::Forged(Forgery::Malformed));
        assert_eq!(follow_at(&["graysplit=%3"], NOW).verdict, Verdict::Forged(Forgery::Malformed));
    }

    /// A client member that makes the edge's header (it, `,`, LANE) `len` bytes long.
    fn padded(len: usize) -> String {
        let pad = len - LANE.len() - ",".len() - "x=".len();
        format!("x={}", "a".repeat(pad))
    }

    #[test]
    fn an_edge_header_may_be_8192_bytes_but_not_one_more() {
        let at = padded(MAX_BAGGAGE_BYTES);
        let got = issue(&[&at], "graysplit", "v2.1", "ramp", 1_700_000_300, KEY);
        let Header::Set(h) = &got.header else { panic!("{got:?}") };
        assert_eq!((got.outcome, h.len()), (Outcome::Issued, MAX_BAGGAGE_BYTES));

        let past = padded(MAX_BAGGAGE_BYTES + 1);
        let got = issue(&[&past], "graysplit", "v2.1", "ramp", 1_700_000_300, KEY);
        assert_eq!(
            got,
            Issued { outcome: Outcome::TooLong, header: Header::Keep, removed_client_member: false }
        );

        let with_ours = [past.as_str(), "graysplit=old"];
        let got = issue(&with_ours, "graysplit", "v2.1", "ramp", 1_700_000_300, KEY);
        assert_eq!(
            got,
            Issued { outcome: Outcome::TooLong, header: set(&past), removed_client_member: true }
        );

        let huge = "v".repeat(MAX_BAGGAGE_BYTES);
        let got = issue(&["graysplit=old"], "graysplit", &huge, "ramp", 1_700_000_300, KEY);
        assert_eq!(
            got,
            Issued { outcome: Outcome::TooLong, header: Header::Remove, removed_client_member: true }
        );
    }

    #[test]
    fn a_follower_takes_a_valid_lane_and_keeps_the_header() {
        let cases: &[(&[&str], &str)] = &[
            (&[LANE], "alone"),
            (&[OLD_LANE], "signed with a previous key"),
            (&["a=1 ;p", &format!("\t{LANE} "), "b=2"], "among others, over several headers, with OWS"),
        ];
        for (values, why) in cases {
            let got = follow_at(values, NOW);
            assert_eq!(
                got,
                Follow {
                    verdict: Verdict::Followed { version: "v2.1".into(), rule: "ramp".into() },
                    header: Header::Keep
                },
                "{why}"
            );
        }
        assert_eq!(
            follow_at(&[LANE], 1_700_000_299).verdict.outcome(),
            Outcome::Followed,
            "a second before e"
        );
    }

    #[test]
    fn a_follower_removes_a_lane_it_does_not_believe() {
        let sig = LANE.rsplit("s=").next().unwrap();
        let other_key =
            issue(&NONE, "graysplit", "v2.1", "ramp", 1_700_000_300, b"someone else's key, 32 chars long");
        let Header::Set(other_key) = other_key.header else { panic!() };
        let other_key = String::from_utf8(other_key).unwrap();
        let unknown = issue(&NONE, "graysplit", "v3.0", "ramp", 1_700_000_300, KEY);
        let Header::Set(unknown) = unknown.header else { panic!() };
        let unknown = String::from_utf8(unknown).unwrap();
        let bad = Verdict::Forged(Forgery::BadSignature);
        let malformed = Verdict::Forged(Forgery::Malformed);
        let cases: Vec<(String, u64, Verdict, &str)> = vec![
            (other_key, NOW, bad.clone(), "another key"),
            (LANE.replace("=v2.1;", "=v2.0;"), NOW, bad.clone(), "version changed"),
            (LANE.replace(";r=ramp;", ";r=other;"), NOW, bad.clone(), "rule changed"),
            (LANE.replace(";e=1700000300;", ";e=1700000900;"), NOW, bad.clone(), "expiry extended"),
            (LANE.replace(sig, &format!("A{}", &sig[1..])), NOW, bad.clone(), "signature changed"),
            (LANE.replace(sig, &"A".repeat(43)), u64::MAX, bad.clone(), "expired and unsigned: forged first"),
            (LANE.into(), 1_700_000_300, Verdict::Expired, "at its expiry second"),
            (LANE.into(), u64::MAX, Verdict::Expired, "long past"),
            (unknown, NOW, Verdict::UnknownVersion("v3.0".into()), "a version this hop does not know"),
            (LANE.replace(";s=", ";x=1;s="), NOW, malformed.clone(), "an extra property"),
            (format!("{LANE};x=1"), NOW, malformed.clone(), "a property after the signature"),
            (LANE.replace("graysplit=", "graysplit = "), NOW, malformed.clone(), "OWS around ="),
            (LANE.replace(";s=", "; s="), NOW, malformed.clone(), "OWS in a property"),
            (LANE.split(";s=").next().unwrap().into(), NOW, malformed.clone(), "no signature"),
            ("graysplit".into(), NOW, malformed.clone(), "no ="),
            ("graysplit=".into(), NOW, malformed.clone(), "empty value"),
            ("graysplit;r=ramp".into(), NOW, malformed.clone(), "a property, no value"),
            ("graysplit=\u{1}\u{ff}garbage;;;".into(), NOW, malformed.clone(), "garbage"),
        ];
        for (lane, now, want, why) in cases {
            let values = [format!("a=1, {lane} "), "b=2;p".into()];
            let got = follow(&values, "graysplit", &[KEY, OLD], now, known);
            assert_eq!(got, Follow { verdict: want.clone(), header: set("a=1,b=2;p") }, "{why}: {lane}");
            assert_eq!(follow(&[&lane], "graysplit", &[KEY], now, known).header, Header::Remove, "{why}");
        }
        assert_eq!(
            follow(&[OLD_LANE], "graysplit", &[KEY], NOW, known).verdict,
            bad,
            "a retired key does not"
        );
    }

    #[test]
    fn unknown_versions_count_as_forged() {
        assert_eq!(Verdict::UnknownVersion("v3".into()).outcome(), Outcome::Forged);
        assert_eq!(Verdict::Forged(Forgery::Several).outcome(), Outcome::Forged);
        assert_eq!(Verdict::Expired.outcome(), Outcome::Expired);
        assert_eq!(Verdict::Absent.outcome(), Outcome::Absent);
        let labels: Vec<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels, ["issued", "followed", "forged", "expired", "untrusted", "absent", "too_long"]);
    }

    #[test]
    fn two_lanes_are_forged_even_if_both_verify() {
        let got = follow_at(&["a=1", LANE, &format!("{LANE},b=2")], NOW);
        assert_eq!(got, Follow { verdict: Verdict::Forged(Forgery::Several), header: set("a=1,b=2") });
        let got = follow_at(&[&format!("{LANE},graysplit")], NOW);
        assert_eq!(got, Follow { verdict: Verdict::Forged(Forgery::Several), header: Header::Remove });
    }

    #[test]
    fn no_lane_is_absent_and_leaves_the_header_alone() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "no header"),
            (&[""], "an empty header"),
            (&[" a=1 ,, graysplitx=v2.1", "=graysplit,b"], "other keys, malformed others"),
            (&[&LANE.replace("graysplit=", "GraySplit=")], "keys compare exactly"),
        ];
        for (values, why) in cases {
            assert_eq!(
                follow_at(values, NOW),
                Follow { verdict: Verdict::Absent, header: Header::Keep },
                "{why}"
            );
        }
    }

    #[test]
    fn another_baggage_key_is_a_different_lane() {
        let got = issue(&[LANE], "lane", "v2.0", "r", NOW + 10, KEY);
        let Header::Set(h) = &got.header else { panic!() };
        assert!(!got.removed_client_member);
        assert!(String::from_utf8_lossy(h).starts_with(&format!("{LANE},lane=v2.0;r=r;e=1700000010;s=")));
        assert_eq!(follow(&[h], "lane", &[KEY], NOW, known).verdict.outcome(), Outcome::Followed);
        assert_eq!(
            follow(&[LANE.replace("graysplit=", "lane=")], "lane", &[KEY], NOW, known).verdict,
            Verdict::Forged(Forgery::BadSignature),
            "the key is under the signature"
        );
    }

    #[test]
    fn strip_removes_our_members_only() {
        assert_eq!(strip(&["a=1", LANE, "graysplit,b=2"], "graysplit"), set("a=1,b=2"));
        assert_eq!(strip(&[LANE], "graysplit"), Header::Remove);
        assert_eq!(strip(&[" a=1 "], "graysplit"), Header::Keep);
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![r"[A-Za-z0-9._-]{1,64}", any::<String>()]
    }

    proptest! {
        #[test]
        fn what_an_edge_issues_a_follower_follows(
            version in name(),
            rule in name(),
            expires_s in 1u64..=u64::MAX,
            others in proptest::collection::vec(r"[a-z]{1,8}=[!#-+\--:<-\[\]-~]{0,16}(;[a-z]{1,4})?", 0..5),
            ttl_left in 1u64..=86_400,
        ) {
            let sent = others.join(" , ");
            let values = [sent.as_str(), "graysplit=old;s=x"];
            let got = issue(&values, "graysplit", &version, &rule, expires_s, OLD);
            prop_assert!(got.removed_client_member);
            prop_assert_eq!(got.outcome, Outcome::Issued);
            let Header::Set(h) = &got.header else { return Err(TestCaseError::fail("no header")) };
            let now = expires_s.saturating_sub(ttl_left);
            let back = follow(&[h], "graysplit", &[KEY, OLD], now, |v| v == version);
            prop_assert_eq!(back.verdict, Verdict::Followed { version: version.clone(), rule: rule.clone() });
            prop_assert_eq!(back.header, Header::Keep);
            prop_assert_eq!(strip(&[h], "graysplit"), if others.is_empty() {
                Header::Remove
            } else {
                Header::Set(others.join(",").into_bytes())
            });
            let late = follow(&[h], "graysplit", &[KEY, OLD], expires_s, |v| v == version);
            prop_assert_eq!(late.verdict, Verdict::Expired);
        }
    }
}
