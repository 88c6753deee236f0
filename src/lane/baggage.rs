//! The W3C `baggage` header (<https://www.w3.org/TR/baggage/>) as bytes: a list of list-members
//! separated by `,` with optional whitespace (OWS: space or tab) around each, a member being
//! `key OWS "=" OWS value *(OWS ";" OWS property)`. Only what lanes need: find the members of
//! one key, and write the list without them. A request may carry several `baggage` headers
//! (HTTP/1.1 keeps them apart); they are read as one list, joined by `,` in order.
//!
//! Members of other keys are never judged: a malformed one (no `=`, odd bytes) is kept byte for
//! byte, as a hop that does not understand it should.

use super::Header;

/// Whether `c` is OWS (RFC 7230: SP / HTAB).
fn ows(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// `b` without the OWS at either end.
fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| !ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| !ows(c)).map_or(start, |i| i + 1);
    b.get(start..end).unwrap_or_default()
}

/// The list-members of `values` (the request's `baggage` headers, in order), each without the
/// OWS around it. Empty members (`a=1,,b=2`, a trailing `,`, an empty header) are separators
/// only, and skipped.
pub(super) fn members<V: AsRef<[u8]>>(values: &[V]) -> impl Iterator<Item = &[u8]> + Clone {
    values.iter().flat_map(|v| v.as_ref().split(|&c| c == b',')).map(trim_ows).filter(|m| !m.is_empty())
}

/// Whether list-member `member` (OWS-trimmed) is of key `key`: its bytes before the first `=`
/// (or `;`, or its end when it has neither), without trailing OWS, are exactly `key`. Read this
/// widely on purpose: `graysplit =x`, `graysplit;p` and a bare `graysplit` all count as
/// members of `graysplit`, so none of them reaches a hop whose parser might take it for ours.
pub(super) fn is_of_key(member: &[u8], key: &[u8]) -> bool {
    let end = member.iter().position(|&c| c == b'=' || c == b';').unwrap_or(member.len());
    trim_ows(member.get(..end).unwrap_or_default()) == key
}

/// The members of `values` of key `key` and those of other keys, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Scan<'v> {
    /// Members of other keys.
    pub others: usize,
    /// Their bytes joined by `,` (the length of [`without`]'s header).
    pub others_len: usize,
    /// Members of `key`.
    pub ours: usize,
    /// The first member of `key`.
    pub first_ours: Option<&'v [u8]>,
}

/// Reads `values` once for the members of `key`.
pub(super) fn scan<'v, V: AsRef<[u8]>>(values: &'v [V], key: &[u8]) -> Scan<'v> {
    let mut s = Scan::default();
    for m in members(values) {
        if is_of_key(m, key) {
            s.ours += 1;
            s.first_ours = s.first_ours.or(Some(m));
        } else {
            s.others_len += m.len() + usize::from(s.others > 0);
            s.others += 1;
        }
    }
    s
}

/// Appends the members of `values` not of key `key` to `out`, joined by `,` (no OWS), each
/// byte for byte.
pub(super) fn push_others<V: AsRef<[u8]>>(out: &mut Vec<u8>, values: &[V], key: &[u8]) {
    for (i, m) in members(values).filter(|m| !is_of_key(m, key)).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
}

/// The header the request goes on with once the members of `key` are removed: the others
/// joined by `,` in one allocation, or [`Header::Remove`] when none is left. `scan` is
/// `scan(values, key)`.
pub(super) fn without<V: AsRef<[u8]>>(values: &[V], key: &[u8], scan: &Scan) -> Header {
    if scan.others == 0 {
        return Header::Remove;
    }
    let mut out = Vec::with_capacity(scan.others_len);
    push_others(&mut out, values, key);
    Header::Set(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    fn list(values: &[&str]) -> Vec<String> {
        members(values).map(|m| String::from_utf8_lossy(m).into_owned()).collect()
    }

    #[test]
    fn members_are_split_on_commas_and_trimmed_of_ows_only() {
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["a=1,b=2"], &["a=1", "b=2"], "plain"),
            (&[" a=1 ;p ,\tb = 2\t"], &["a=1 ;p", "b = 2"], "OWS around members goes, inside stays"),
            (&["a=1,,b=2,", ""], &["a=1", "b=2"], "empty members are separators"),
            (&["a=1", "b=2, c=3"], &["a=1", "b=2", "c=3"], "several headers are one list, in order"),
            (&["x\u{b}=1"], &["x\u{b}=1"], "only SP and HTAB are OWS"),
            (&[], &[], "no header"),
        ];
        for (values, want, why) in cases {
            assert_eq!(list(values), *want, "{why}");
        }
    }

    #[test]
    fn a_member_is_of_a_key_by_its_bytes_before_the_equals_sign() {
        let cases: &[(&str, bool, &str)] = &[
            ("graysplit=v1", true, "plain"),
            ("graysplit =v1", true, "OWS before ="),
            ("graysplit\t= v1;r=x", true, "tab before ="),
            ("graysplit", true, "no ="),
            ("graysplit;p=1", true, "a property but no value"),
            ("graysplitx=v1", false, "a longer key"),
            ("Graysplit=v1", false, "keys compare exactly"),
            ("x=graysplit", false, "our key as a value"),
            ("=graysplit", false, "empty key"),
        ];
        for (member, want, why) in cases {
            assert_eq!(is_of_key(member.as_bytes(), b"graysplit"), *want, "{why}");
        }
    }

    #[test]
    fn removing_a_key_keeps_the_other_members_in_order() {
        let values = ["a=1;p=q , graysplit=x;s=y", "\tb=%20 ;q, graysplit , c"];
        let s = scan(&values, b"graysplit");
        assert_eq!((s.others, s.ours, s.first_ours), (3, 2, Some(&b"graysplit=x;s=y"[..])));
        assert_eq!(without(&values, b"graysplit", &s), Header::Set(b"a=1;p=q,b=%20 ;q,c".to_vec()));
        assert_eq!(s.others_len, "a=1;p=q,b=%20 ;q,c".len());
        let only_ours = [" graysplit=x ", ","];
        assert_eq!(without(&only_ours, b"graysplit", &scan(&only_ours, b"graysplit")), Header::Remove);
    }

    #[test]
    fn bytes_that_are_not_text_pass_unchanged() {
        let values: [&[u8]; 1] = [b"k=\xff\xfe;\x80, graysplit=1"];
        let s = scan(&values, b"graysplit");
        assert_eq!(without(&values, b"graysplit", &s), Header::Set(b"k=\xff\xfe;\x80".to_vec()));
    }
}
