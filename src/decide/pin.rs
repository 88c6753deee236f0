//! Session pins (DESIGN.md "Session pins"): a cookie that keeps a browser session on the
//! version a split rule gave it, across ramp steps, until the session idles out.
//!
//! The value is `1:<rule>:<version>:<expires, Unix s>:<mac>`, the MAC the hex HMAC-SHA256 under
//! the pin key of the rule, the version, the expiry, the rule's salt and the user id. So a pin
//! proves that this filter, with this key, gave this version to this user for this rule and
//! salt until then; it cannot be moved to another user or rule, extended, or forged without the
//! key, and a new salt (a new cohort) or a new key without `previous_keys` voids every pin.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The format's version, the first field of every pin.
const FORMAT: &str = "1";

/// A pin that verified: what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub rule: String,
    pub version: String,
    pub expires_s: i64,
}

/// Why a pin was not taken (for `graysplit explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a pin of this format.
    Malformed,
    /// For another rule than the one deciding now.
    OtherRule,
    /// Not signed by the key or a previous key, for this user and salt.
    BadSignature,
    Expired,
    /// The rule cannot give that version now (its percent is 0, it tripped, it is gone).
    Unavailable,
}

fn mac(
    key: &[u8],
    rule: &str,
    version: &str,
    expires_s: i64,
    salt: &[u8],
    user: &[u8],
) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    // Fields that cannot hold a NUL, NUL-separated; then the salt, length-prefixed, and the
    // user id (any bytes) last: no two inputs read the same.
    m.update(b"graysplit-pin\0");
    m.update(FORMAT.as_bytes());
    m.update(b"\0");
    m.update(rule.as_bytes());
    m.update(b"\0");
    m.update(version.as_bytes());
    m.update(b"\0");
    m.update(expires_s.to_string().as_bytes());
    m.update(b"\0");
    m.update(&(salt.len() as u64).to_le_bytes());
    m.update(salt);
    m.update(user);
    Some(m)
}

/// The cookie value of a pin of `version` by `rule` for `user`, until `expires_s`.
pub fn sign(key: &[u8], rule: &str, version: &str, expires_s: i64, salt: &[u8], user: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let tag = mac(key, rule, version, expires_s, salt, user).map(|m| m.finalize().into_bytes());
    let mut out = format!("{FORMAT}:{rule}:{version}:{expires_s}:");
    for b in tag.iter().flatten() {
        out.push(char::from(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
        out.push(char::from(HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0')));
    }
    out
}

/// Checks a pin cookie's value for `rule` (whose salt is `salt`) and `user` against `keys`
/// (the signing key and the previous ones), at `now_s`, for sessions of `idle_s`: a pin that
/// expires later than `idle_s` from now (one issued under a longer `idle_s`) does not hold. The
/// MAC is compared in constant time.
pub fn verify(
    value: &[u8],
    keys: &[Box<[u8]>],
    rule: &str,
    salt: &[u8],
    user: &[u8],
    now_s: i64,
    idle_s: u32,
) -> Result<Pin, Refused> {
    let text = std::str::from_utf8(value).map_err(|_| Refused::Malformed)?;
    let mut parts = text.splitn(5, ':');
    let (Some(FORMAT), Some(r), Some(version), Some(expires), Some(tag)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Malformed);
    };
    let expires_s: i64 = expires.parse().map_err(|_| Refused::Malformed)?;
    if expires != expires_s.to_string() {
        return Err(Refused::Malformed); // one spelling only: `+2000` or `02000` is not a pin
    }
    let tag = hex(tag).ok_or(Refused::Malformed)?;
    if r != rule {
        return Err(Refused::OtherRule);
    }
    let verified = keys
        .iter()
        .any(|k| mac(k, r, version, expires_s, salt, user).is_some_and(|m| m.verify_slice(&tag).is_ok()));
    if !verified {
        return Err(Refused::BadSignature);
    }
    if expires_s <= now_s || expires_s > now_s.saturating_add(i64::from(idle_s)) {
        return Err(Refused::Expired);
    }
    Ok(Pin { rule: r.to_string(), version: version.to_string(), expires_s })
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks_exact(2).map(|p| Some(digit(*p.first()?)? << 4 | digit(*p.get(1)?)?)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::type_complexity)]
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"the key we used before this week!!";

    fn keys(k: &[&[u8]]) -> Vec<Box<[u8]>> {
        k.iter().map(|k| (*k).into()).collect()
    }

    #[test]
    fn a_pin_verifies_for_its_rule_user_and_salt_only() {
        let pin = sign(KEY, "ramp", "v2.1", 2000, b"release-2.1", b"alice");
        assert!(pin.starts_with("1:ramp:v2.1:2000:") && pin.len() == "1:ramp:v2.1:2000:".len() + 64, "{pin}");
        let ok = verify(pin.as_bytes(), &keys(&[KEY]), "ramp", b"release-2.1", b"alice", 1999, 9000);
        assert_eq!(ok, Ok(Pin { rule: "ramp".into(), version: "v2.1".into(), expires_s: 2000 }));
        let cases: &[(&[u8], &str, &[u8], &[u8], i64, Refused, &str)] = &[
            (
                pin.as_bytes(),
                "ramp",
                b"release-2.1",
                b"bob",
                1999,
                Refused::BadSignature,
                "another user's pin",
            ),
            (
                pin.as_bytes(),
                "ramp",
                b"release-2.2",
                b"alice",
                1999,
                Refused::BadSignature,
                "a new salt voids it",
            ),
            (pin.as_bytes(), "other", b"release-2.1", b"alice", 1999, Refused::OtherRule, "another rule"),
            (pin.as_bytes(), "ramp", b"release-2.1", b"alice", 2000, Refused::Expired, "expired at its time"),
            (b"1:ramp:v2.0:2000:00", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "short MAC"),
            (b"garbage", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "not a pin"),
            (b"\xff\xfe", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "not UTF-8"),
            (b"2:ramp:v2.1:2000:", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "another format"),
            (
                b"1:ramp:v2.1:02000:00",
                "ramp",
                b"release-2.1",
                b"alice",
                0,
                Refused::Malformed,
                "one spelling of the expiry",
            ),
        ];
        for (value, rule, salt, user, now, want, why) in cases {
            assert_eq!(verify(value, &keys(&[KEY]), rule, salt, user, *now, 9000), Err(*want), "{why}");
        }
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let pin = sign(KEY, "ramp", "v2.0", 2000, b"s", b"alice");
        for forged in [pin.replace(":v2.0:", ":v2.1:"), pin.replace(":2000:", ":9000:")] {
            assert_eq!(
                verify(forged.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", 0, 9000),
                Err(Refused::BadSignature),
                "{forged}"
            );
        }
        let other_key = sign(b"someone else's key, 32 chars long", "ramp", "v2.1", 2000, b"s", b"alice");
        assert_eq!(
            verify(other_key.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", 0, 9000),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn previous_keys_still_verify_for_rotation() {
        let old = sign(OLD, "ramp", "v2.1", 2000, b"s", b"alice");
        assert!(verify(old.as_bytes(), &keys(&[KEY, OLD]), "ramp", b"s", b"alice", 0, 9000).is_ok());
        assert_eq!(
            verify(old.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", 0, 9000),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn a_pin_longer_than_idle_s_from_now_does_not_hold() {
        let pin = sign(KEY, "ramp", "v2.1", 10_000, b"s", b"alice");
        assert!(verify(pin.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", 9_000, 1800).is_ok());
        assert_eq!(
            verify(pin.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", 0, 1800),
            Err(Refused::Expired),
            "issued under a longer idle_s: lowering idle_s shortens every session at once"
        );
    }
}
