//! Our baggage member (DESIGN.md "Lanes"): `<baggage_key>=<version>;r=<rule>;e=<expiry>;s=<sig>`,
//! with version and rule percent-encoded (every byte but RFC 3986's unreserved ones, ALPHA /
//! DIGIT / `-` / `.` / `_` / `~`, as `%XX` in upper-case hex), the expiry in Unix seconds, and
//! `sig` the base64url, unpadded, HMAC-SHA256 under the lane key of the member's bytes before
//! `;s=`. Like a session pin, a member verifies only in the one spelling this module writes.

use base64ct::{Base64UrlUnpadded, Encoding};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// An HMAC-SHA256 tag's length.
const TAG_LEN: usize = 32;
/// Its base64url, unpadded: 43 characters.
const SIG_LEN: usize = (TAG_LEN * 4).div_ceil(3);

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// The length of `s` percent-encoded.
fn encoded_len(s: &[u8]) -> usize {
    s.iter().map(|&c| if unreserved(c) { 1 } else { 3 }).sum()
}

/// The upper-case hex digit of `n` (0..16).
fn hex_digit(n: u8) -> u8 {
    if n < 10 {
        b'0' + n
    } else {
        b'A' + n - 10
    }
}

/// Appends `s` percent-encoded to `out`.
fn push_encoded(out: &mut Vec<u8>, s: &[u8]) {
    for &c in s {
        if unreserved(c) {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'%', hex_digit(c >> 4), hex_digit(c & 0xf)]);
        }
    }
}

fn upper_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `s` percent-decoded, when it is in the spelling [`push_encoded`] writes (unreserved bytes as
/// they are, every other byte as `%XX` upper-case) and decodes to UTF-8.
fn decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        if unreserved(c) {
            out.push(c);
            continue;
        }
        let ([hi, lo, tail @ ..], b'%') = (rest, c) else {
            return None;
        };
        let byte = (upper_hex_digit(*hi)? << 4) | upper_hex_digit(*lo)?;
        if unreserved(byte) {
            return None;
        }
        out.push(byte);
        rest = tail;
    }
    String::from_utf8(out).ok()
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// The length of the member [`push`] writes.
pub(super) fn len(baggage_key: &str, version: &str, rule: &str, expires_s: u64) -> usize {
    baggage_key.len()
        + "=".len()
        + encoded_len(version.as_bytes())
        + ";r=".len()
        + encoded_len(rule.as_bytes())
        + ";e=".len()
        + decimal_len(expires_s)
        + ";s=".len()
        + SIG_LEN
}

/// A key a member is signed or verified with: its bytes (keyed afresh each time), or a
/// [`Signer`] keyed once.
pub trait Key {
    /// The MAC keyed with it. HMAC takes a key of any length, so this is never `None`.
    fn mac(&self) -> Option<HmacSha256>;
}

impl<T: AsRef<[u8]> + ?Sized> Key for T {
    fn mac(&self) -> Option<HmacSha256> {
        HmacSha256::new_from_slice(self.as_ref()).ok()
    }
}

/// A key keyed once (when the config is applied): HMAC's inner and outer pads are hashed then,
/// so each member costs the hash of its own bytes only (two SHA-256 blocks of four).
#[derive(Clone)]
pub struct Signer {
    key: Box<[u8]>,
    mac: HmacSha256,
}

impl Signer {
    pub fn new(key: &[u8]) -> Option<Signer> {
        Some(Signer { key: key.into(), mac: HmacSha256::new_from_slice(key).ok()? })
    }
}

impl Key for Signer {
    fn mac(&self) -> Option<HmacSha256> {
        Some(self.mac.clone())
    }
}

impl PartialEq for Signer {
    fn eq(&self, other: &Signer) -> bool {
        self.key == other.key
    }
}

impl Eq for Signer {}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// Appends the member of `version` decided by `rule`, holding until `expires_s`, signed with
/// `key`, to `out` ([`len`] bytes). `false` (and `out` as it was) if `key` cannot key a MAC.
pub(super) fn push(
    out: &mut Vec<u8>,
    baggage_key: &str,
    version: &str,
    rule: &str,
    expires_s: u64,
    key: &(impl Key + ?Sized),
) -> bool {
    let Some(mut mac) = key.mac() else {
        return false;
    };
    let start = out.len();
    out.extend_from_slice(baggage_key.as_bytes());
    out.push(b'=');
    push_encoded(out, version.as_bytes());
    out.extend_from_slice(b";r=");
    push_encoded(out, rule.as_bytes());
    out.extend_from_slice(b";e=");
    crate::text::push_u64(out, expires_s);
    mac.update(out.get(start..).unwrap_or_default());
    out.extend_from_slice(b";s=");
    let mut sig = [0u8; SIG_LEN];
    if let Ok(s) = Base64UrlUnpadded::encode(&mac.finalize().into_bytes(), &mut sig) {
        out.extend_from_slice(s.as_bytes());
    }
    true
}

/// A member of our key, read but not yet verified: borrowed from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Parsed<'m> {
    /// The bytes under the signature: the member before `;s=`.
    signed: &'m [u8],
    /// Version and rule, still percent-encoded.
    version: &'m [u8],
    rule: &'m [u8],
    pub expires_s: u64,
    tag: [u8; TAG_LEN],
}

/// An expiry in its one spelling: 1 to 20 decimal digits, no sign, no leading zero, a `u64`.
fn expiry(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 20 || (field.len() > 1 && field.first() == Some(&b'0')) {
        return None;
    }
    field.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

/// Reads `member` (one list-member, OWS-trimmed) as `<baggage_key>=<v>;r=<r>;e=<e>;s=<sig>`
/// exactly: no OWS inside, no other property, `e` a canonical decimal, `sig` 43 characters of
/// canonical base64url. `None` for any other shape.
pub(super) fn parse<'m>(member: &'m [u8], baggage_key: &[u8]) -> Option<Parsed<'m>> {
    let rest = member.strip_prefix(baggage_key)?.strip_prefix(b"=")?;
    let mut fields = rest.split(|&c| c == b';');
    let version = fields.next()?;
    let rule = fields.next()?.strip_prefix(b"r=")?;
    let e = fields.next()?.strip_prefix(b"e=")?;
    let sig = fields.next()?.strip_prefix(b"s=")?;
    if fields.next().is_some() || sig.len() != SIG_LEN {
        return None;
    }
    let signed = member.get(..member.len().checked_sub(";s=".len() + SIG_LEN)?)?;
    let mut tag = [0u8; TAG_LEN];
    // base64ct decodes only the canonical spelling (the unused low bits of the last character
    // must be zero), so a signature has one spelling too.
    (Base64UrlUnpadded::decode(sig, &mut tag).ok()?.len() == TAG_LEN).then_some(())?;
    Some(Parsed { signed, version, rule, expires_s: expiry(e)?, tag })
}

/// A member whose properties were percent-encoded into its value, as an SDK that keeps them as
/// part of the value re-sends it (`graysplit=v2%3Br%3Dramp%3Be%3D...%3Bs%3D...`), with `%3B`
/// and `%3D` (either case) back to `;` and `=`; `None` for a member that has a `;` already or
/// no such escape. Only those two: our names are unreserved, so nothing else of ours was
/// encoded, and what does not decode to our exact shape fails [`parse`].
pub(super) fn unfolded(member: &[u8], baggage_key: &[u8]) -> Option<Vec<u8>> {
    let value = member.strip_prefix(baggage_key)?.strip_prefix(b"=")?;
    if value.contains(&b';') {
        return None;
    }
    let mut out = Vec::with_capacity(member.len());
    out.extend_from_slice(member.get(..member.len() - value.len())?);
    let mut rest = value;
    let mut unfolded = false;
    while let Some((&c, tail)) = rest.split_first() {
        let sep = match tail {
            [b'3', x, ..] if c == b'%' && x.eq_ignore_ascii_case(&b'b') => Some(b';'),
            [b'3', x, ..] if c == b'%' && x.eq_ignore_ascii_case(&b'd') => Some(b'='),
            _ => None,
        };
        match sep {
            Some(s) => {
                out.push(s);
                unfolded = true;
                rest = tail.get(2..).unwrap_or_default();
            }
            None => {
                out.push(c);
                rest = tail;
            }
        }
    }
    unfolded.then_some(out)
}

impl Parsed<'_> {
    /// Whether one of `keys` signed it. `verify_slice` compares the tags in constant time.
    pub(super) fn verified<K: Key>(&self, keys: &[K]) -> bool {
        keys.iter().any(|k| {
            k.mac().is_some_and(|mut m| {
                m.update(self.signed);
                m.verify_slice(&self.tag).is_ok()
            })
        })
    }

    /// Its version and rule, decoded; `None` if either is not in our spelling or not UTF-8
    /// (only a signer that is not graysplit could have signed such a member).
    pub(super) fn names(&self) -> Option<(String, String)> {
        Some((decode(self.version)?, decode(self.rule)?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn member(baggage_key: &str, version: &str, rule: &str, expires_s: u64) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(push(&mut out, baggage_key, version, rule, expires_s, KEY));
        assert_eq!(out.len(), len(baggage_key, version, rule, expires_s), "len() is exact");
        out
    }

    #[test]
    fn the_signature_matches_an_independent_hmac() {
        // python3 -c 'import hmac,hashlib,base64;k=b"0123456789abcdef0123456789abcdef";
        //   m=b"graysplit=v2.1;r=ramp;e=1700000300";
        //   print(base64.urlsafe_b64encode(hmac.new(k,m,hashlib.sha256).digest()).rstrip(b"=").decode())'
        const SIG: &str = "ZYDsoFuDsWRmnXBtU8uML4qrxg3Rx33krZ9fIB0Q1N8";
        let m = member("graysplit", "v2.1", "ramp", 1_700_000_300);
        assert_eq!(String::from_utf8(m).unwrap(), format!("graysplit=v2.1;r=ramp;e=1700000300;s={SIG}"));
    }

    #[test]
    fn odd_names_are_percent_encoded_in_upper_case_and_signed_so() {
        // python3 -c 'import hmac,hashlib,base64,urllib.parse as u;k=b"0123456789abcdef0123456789abcdef";
        //   m=("lane="+u.quote("v 2/ü.1~",safe="")+";r="+u.quote("ppt pilot;x=1,%",safe="")+";e=0").encode();
        //   print(m.decode());print(base64.urlsafe_b64encode(hmac.new(k,m,hashlib.sha256).digest()).rstrip(b"=").decode())'
        const SIGNED: &str = "lane=v%202%2F%C3%BC.1~;r=ppt%20pilot%3Bx%3D1%2C%25;e=0";
        const SIG: &str = "C3bZlK3hEcmHvP4EE-KYlYTNv4m7QTWrmwcR6-MS-7Q";
        let m = member("lane", "v 2/ü.1~", "ppt pilot;x=1,%", 0);
        assert_eq!(String::from_utf8(m.clone()).unwrap(), format!("{SIGNED};s={SIG}"));
        let p = parse(&m, b"lane").unwrap();
        assert!(p.verified(&[KEY]));
        assert_eq!(p.names(), Some(("v 2/ü.1~".to_string(), "ppt pilot;x=1,%".to_string())));
    }

    #[test]
    fn encoding_keeps_only_unreserved_bytes() {
        let mut out = Vec::new();
        push_encoded(&mut out, b"AZaz09-._~ !\"#%&'()*+,/:;=?@[\\]^`{|}\x7f\x00");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "AZaz09-._~%20%21%22%23%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5C%5D%5E%60%7B%7C%7D%7F%00"
        );
        assert_eq!(encoded_len("v2.1".as_bytes()), 4);
        assert_eq!(encoded_len("ü".as_bytes()), 6);
    }

    #[test]
    fn decoding_takes_our_spelling_only() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("v2.1", Some("v2.1"), "unreserved"),
            ("%20%C3%BC", Some(" ü"), "encoded UTF-8"),
            ("", Some(""), "empty"),
            ("%c3%bc", None, "lower-case hex"),
            ("%41", None, "an unreserved byte encoded"),
            ("a b", None, "a raw space"),
            ("a+b", None, "a raw +"),
            ("%2", None, "a cut escape"),
            ("%", None, "a lone %"),
            ("%G0", None, "not hex"),
            ("%FF", None, "not UTF-8"),
        ];
        for (s, want, why) in cases {
            assert_eq!(decode(s.as_bytes()).as_deref(), *want, "{why}");
        }
    }

    #[test]
    fn only_the_exact_shape_parses() {
        let good = String::from_utf8(member("graysplit", "v2.1", "ramp", 99)).unwrap();
        assert_eq!(parse(good.as_bytes(), b"graysplit").map(|p| p.expires_s), Some(99));
        let sig = good.rsplit("s=").next().unwrap().to_string();
        let cases = [
            (format!("graysplit = v2.1;r=ramp;e=99;s={sig}"), "OWS around ="),
            (format!("graysplit=v2.1; r=ramp;e=99;s={sig}"), "OWS before a property"),
            (format!("graysplit=v2.1;e=99;r=ramp;s={sig}"), "properties out of order"),
            (format!("graysplit=v2.1;r=ramp;e=99;s={sig};x=1"), "a property after s"),
            (format!("graysplit=v2.1;r=ramp;e=99;x=1;s={sig}"), "a property before s"),
            ("graysplit=v2.1;r=ramp;e=99".to_string(), "no signature"),
            ("graysplit=v2.1;r=ramp;e=99;s=".to_string(), "an empty signature"),
            (format!("graysplit=v2.1;r=ramp;e=99;s={sig}="), "padded"),
            (format!("graysplit=v2.1;r=ramp;e=99;s={}", &sig[..42]), "short"),
            (format!("graysplit=v2.1;r=ramp;e=99;s={}", sig.replace(['-', '_'], "+")), "standard alphabet"),
            (format!("graysplit=v2.1;r=ramp;e=099;s={sig}"), "leading zero"),
            (format!("graysplit=v2.1;r=ramp;e=+99;s={sig}"), "signed expiry"),
            (format!("graysplit=v2.1;r=ramp;e=;s={sig}"), "empty expiry"),
            (format!("graysplit=v2.1;r=ramp;e=18446744073709551616;s={sig}"), "past u64"),
            (format!("graysplit=v2.1;ramp;e=99;s={sig}"), "rule without r="),
            (format!("graysplitx=v2.1;r=ramp;e=99;s={sig}"), "another key"),
            (format!("graysplit;r=ramp;e=99;s={sig}"), "no ="),
            ("graysplit".to_string(), "bare key"),
        ];
        for (m, why) in cases {
            if why == "standard alphabet" && !sig.contains(['-', '_']) {
                continue;
            }
            assert_eq!(parse(m.as_bytes(), b"graysplit"), None, "{why}: {m}");
        }
        // The golden signature ends in `8` (0b111100): its last character carries 4 bits, and
        // `9` (0b111101) decodes to the same tag with a low bit set, which must not be read.
        let golden = "graysplit=v2.1;r=ramp;e=1700000300;s=ZYDsoFuDsWRmnXBtU8uML4qrxg3Rx33krZ9fIB0Q1N8";
        assert!(parse(golden.as_bytes(), b"graysplit").is_some_and(|p| p.verified(&[KEY])));
        let respelled = golden.replace("N8", "N9");
        assert_eq!(parse(respelled.as_bytes(), b"graysplit"), None, "non-canonical last character");
        assert_eq!(
            parse(format!("graysplit=v2.1;r=ramp;e=18446744073709551615;s={sig}").as_bytes(), b"graysplit")
                .map(|p| p.expires_s),
            Some(u64::MAX),
            "u64::MAX is an expiry"
        );
    }

    #[test]
    fn decimal_lengths() {
        for n in [0, 9, 10, 99, 100, 1_700_000_300, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }
}
