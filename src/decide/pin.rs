//! The session pin's signed value (DESIGN.md "Session pins" and its "v2 corrections"): what a
//! cookie proves, and checking that it does.
//!
//! Each split rule has its own cookie `<session_pin.cookie>.<rule>` whose value is
//! `2:<version>:<began>:<expires>:<mac>` (Unix seconds; `mac` the lower-case hex HMAC-SHA256
//! under the pin key of the rule, the version, both times, the rule's salt and the user id).
//! So a pin proves that this filter, with this key, gave this version to this user for this rule
//! and salt, in a session that began then and holds until then; it cannot be moved to another
//! user or rule, extended, or forged without the key, and a new salt (a new cohort) or a new key
//! without `previous_keys` voids every pin. A pin verifies only in its canonical spelling.
//!
//! The v2 format, one cookie `<session_pin.cookie>` holding `1:<rule>:<version>:<expires>:<mac>`,
//! still verifies until it expires, as a session that began `idle_s` before its expiry.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::cookie::{from_hex, push_hex};

type HmacSha256 = Hmac<Sha256>;

/// A pin that verified: what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub version: String,
    /// When its session began (Unix s).
    pub began_s: i64,
    pub expires_s: i64,
}

/// Why a pin was not taken (for `graysplit explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a pin of either format, or not in its canonical spelling.
    Malformed,
    /// A v2-format pin of another rule than the one deciding now.
    OtherRule,
    /// Not signed by the key or a previous key, for this rule, user and salt.
    BadSignature,
    Expired,
    /// Its session began more than `max_s` ago.
    SessionOver,
    /// The rule cannot give that version now (stable at 100 %, a percent of 0, a trip, gone).
    Unavailable,
}

/// The session's bounds a pin is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub now_s: i64,
    pub idle_s: u32,
    pub max_s: u32,
}

/// The fields under the MAC: those that cannot hold a NUL, NUL-separated; then the salt,
/// length-prefixed, and the user id (any bytes) last: no two inputs read the same.
fn mac(key: &[u8], fields: &[&[u8]], salt: &[u8], user: &[u8]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(b"graysplit-pin\0");
    for f in fields {
        m.update(f);
        m.update(b"\0");
    }
    m.update(&(salt.len() as u64).to_le_bytes());
    m.update(salt);
    m.update(user);
    Some(m)
}

/// The value of a pin of `version` by `rule` for `user`, in a session begun at `began_s`, until
/// `expires_s`.
pub fn sign(
    key: &[u8],
    rule: &str,
    version: &str,
    began_s: i64,
    expires_s: i64,
    salt: &[u8],
    user: &[u8],
) -> String {
    let (began, expires) = (began_s.to_string(), expires_s.to_string());
    let fields: [&[u8]; 5] =
        [b"2", rule.as_bytes(), version.as_bytes(), began.as_bytes(), expires.as_bytes()];
    let mut out = format!("2:{version}:{began}:{expires}:");
    if let Some(m) = mac(key, &fields, salt, user) {
        push_hex(&mut out, &m.finalize().into_bytes());
    }
    out
}

/// A v2-format pin, as v2 issued it (kept to test that such pins still verify).
pub fn sign_v2_format(
    key: &[u8],
    rule: &str,
    version: &str,
    expires_s: i64,
    salt: &[u8],
    user: &[u8],
) -> String {
    let expires = expires_s.to_string();
    let fields: [&[u8]; 4] = [b"1", rule.as_bytes(), version.as_bytes(), expires.as_bytes()];
    let mut out = format!("1:{rule}:{version}:{expires}:");
    if let Some(m) = mac(key, &fields, salt, user) {
        push_hex(&mut out, &m.finalize().into_bytes());
    }
    out
}

/// A time field in its one spelling: decimal digits, no sign, no leading zero.
fn time(field: &str) -> Result<i64, Refused> {
    let n: i64 = field.parse().map_err(|_| Refused::Malformed)?;
    if n < 0 || field != n.to_string() {
        return Err(Refused::Malformed);
    }
    Ok(n)
}

/// A pin of format `format`: its three fields after the format, and its MAC (64 lower-case hex
/// digits).
fn parts<'v>(value: &'v [u8], format: &str) -> Result<([&'v str; 3], [u8; 32]), Refused> {
    let text = std::str::from_utf8(value).map_err(|_| Refused::Malformed)?;
    let mut p = text.splitn(5, ':');
    let (Some(f), Some(a), Some(b), Some(c), Some(tag)) = (p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return Err(Refused::Malformed);
    };
    if f != format {
        return Err(Refused::Malformed);
    }
    Ok(([a, b, c], from_hex::<32>(tag.as_bytes()).ok_or(Refused::Malformed)?))
}

fn verified(keys: &[Box<[u8]>], fields: &[&[u8]], salt: &[u8], user: &[u8], tag: &[u8; 32]) -> bool {
    // verify_slice compares in constant time.
    keys.iter().any(|k| mac(k, fields, salt, user).is_some_and(|m| m.verify_slice(tag).is_ok()))
}

fn in_session(pin: Pin, at: Limits) -> Result<Pin, Refused> {
    if at.now_s >= pin.began_s.saturating_add(i64::from(at.max_s)) {
        return Err(Refused::SessionOver);
    }
    // A pin that expires later than idle_s from now (issued under a longer idle_s) does not
    // hold: lowering idle_s shortens every session at once.
    if pin.expires_s <= at.now_s || pin.expires_s > at.now_s.saturating_add(i64::from(at.idle_s)) {
        return Err(Refused::Expired);
    }
    Ok(pin)
}

/// Checks the value of rule `rule`'s pin cookie (the rule's salt `salt`) for `user` against
/// `keys` (the signing key, then the previous ones), at `at`.
pub fn verify(
    value: &[u8],
    keys: &[Box<[u8]>],
    rule: &str,
    salt: &[u8],
    user: &[u8],
    at: Limits,
) -> Result<Pin, Refused> {
    let ([version, began, expires], tag) = parts(value, "2")?;
    let (began_s, expires_s) = (time(began)?, time(expires)?);
    let fields: [&[u8]; 5] =
        [b"2", rule.as_bytes(), version.as_bytes(), began.as_bytes(), expires.as_bytes()];
    if !verified(keys, &fields, salt, user, &tag) {
        return Err(Refused::BadSignature);
    }
    in_session(Pin { version: version.to_string(), began_s, expires_s }, at)
}

/// Checks a v2-format pin (the cookie `<session_pin.cookie>`, one rule's) for `rule`: it holds
/// as a session that began `idle_s` before its expiry.
pub fn verify_v2_format(
    value: &[u8],
    keys: &[Box<[u8]>],
    rule: &str,
    salt: &[u8],
    user: &[u8],
    at: Limits,
) -> Result<Pin, Refused> {
    let ([r, version, expires], tag) = parts(value, "1")?;
    let expires_s = time(expires)?;
    if r != rule {
        return Err(Refused::OtherRule);
    }
    let fields: [&[u8]; 4] = [b"1", r.as_bytes(), version.as_bytes(), expires.as_bytes()];
    if !verified(keys, &fields, salt, user, &tag) {
        return Err(Refused::BadSignature);
    }
    let began_s = expires_s.saturating_sub(i64::from(at.idle_s));
    in_session(Pin { version: version.to_string(), began_s, expires_s }, at)
}

/// The rule a v2-format pin names, unverified (to tell whose it is).
pub fn v2_format_rule(value: &[u8]) -> Option<&[u8]> {
    let mut parts = value.splitn(3, |&c| c == b':');
    (parts.next()? == b"1").then_some(())?;
    parts.next()
}

/// When a pin's session began, unverified (to drop the oldest pins first).
pub fn began(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.splitn(4, ':');
    (parts.next()? == "2").then_some(())?;
    parts.next()?;
    time(parts.next()?).ok()
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

    fn at(now_s: i64) -> Limits {
        Limits { now_s, idle_s: 9000, max_s: 86_400 }
    }

    #[test]
    fn a_pin_verifies_for_its_rule_user_and_salt_only() {
        let pin = sign(KEY, "ramp", "v2.1", 1000, 2000, b"release-2.1", b"alice");
        assert!(pin.starts_with("2:v2.1:1000:2000:") && pin.len() == "2:v2.1:1000:2000:".len() + 64, "{pin}");
        let ok = verify(pin.as_bytes(), &keys(&[KEY]), "ramp", b"release-2.1", b"alice", at(1999));
        assert_eq!(ok, Ok(Pin { version: "v2.1".into(), began_s: 1000, expires_s: 2000 }));
        let upper = format!("{}{}", &pin[..17], pin[17..].to_uppercase());
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
            (
                pin.as_bytes(),
                "other",
                b"release-2.1",
                b"alice",
                1999,
                Refused::BadSignature,
                "another rule's",
            ),
            (pin.as_bytes(), "ramp", b"release-2.1", b"alice", 2000, Refused::Expired, "expired at its time"),
            (upper.as_bytes(), "ramp", b"release-2.1", b"alice", 1999, Refused::Malformed, "upper-case hex"),
            (b"2:v2.0:1000:2000:00", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "short MAC"),
            (b"garbage", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "not a pin"),
            (b"\xff\xfe", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "not UTF-8"),
            (b"3:v2.1:1:2000:", "ramp", b"release-2.1", b"alice", 0, Refused::Malformed, "another format"),
        ];
        for (value, rule, salt, user, now, want, why) in cases {
            assert_eq!(verify(value, &keys(&[KEY]), rule, salt, user, at(*now)), Err(*want), "{why}");
        }
        for respelled in [pin.replace(":1000:", ":01000:"), pin.replace(":2000:", ":+2000:")] {
            assert_eq!(
                verify(respelled.as_bytes(), &keys(&[KEY]), "ramp", b"release-2.1", b"alice", at(1500)),
                Err(Refused::Malformed),
                "{respelled}: one spelling of each time"
            );
        }
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let pin = sign(KEY, "ramp", "v2.0", 1000, 2000, b"s", b"alice");
        for forged in [
            pin.replace(":v2.0:", ":v2.1:"),
            pin.replace(":2000:", ":9000:"),
            pin.replace(":1000:", ":1999:"),
        ] {
            assert_eq!(
                verify(forged.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", at(1500)),
                Err(Refused::BadSignature),
                "{forged}"
            );
        }
        let other_key =
            sign(b"someone else's key, 32 chars long", "ramp", "v2.1", 1000, 2000, b"s", b"alice");
        assert_eq!(
            verify(other_key.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", at(1500)),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn previous_keys_still_verify_for_rotation() {
        let old = sign(OLD, "ramp", "v2.1", 1000, 2000, b"s", b"alice");
        assert!(verify(old.as_bytes(), &keys(&[KEY, OLD]), "ramp", b"s", b"alice", at(1500)).is_ok());
        assert_eq!(
            verify(old.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", at(1500)),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn a_session_ends_at_idle_s_and_at_max_s() {
        let pin = sign(KEY, "ramp", "v2.1", 1000, 10_000, b"s", b"alice");
        let check = |now_s, idle_s, max_s| {
            verify(pin.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", Limits { now_s, idle_s, max_s })
        };
        assert!(check(9_000, 1800, 86_400).is_ok());
        assert_eq!(check(0, 1800, 86_400), Err(Refused::Expired), "issued under a longer idle_s");
        assert_eq!(check(9_000, 1800, 8_000), Err(Refused::SessionOver), "began more than max_s ago");
        assert!(check(8_999, 1800, 8_000).is_ok());
    }

    #[test]
    fn a_v2_format_pin_verifies_until_it_expires() {
        let pin = sign_v2_format(KEY, "ramp", "v2.1", 2000, b"s", b"alice");
        assert!(pin.starts_with("1:ramp:v2.1:2000:") && pin.len() == "1:ramp:v2.1:2000:".len() + 64);
        let lim = |now_s| Limits { now_s, idle_s: 600, max_s: 86_400 };
        assert_eq!(
            verify_v2_format(pin.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", lim(1999)),
            Ok(Pin { version: "v2.1".into(), began_s: 1400, expires_s: 2000 }),
            "a session that began idle_s before its expiry"
        );
        assert_eq!(
            verify_v2_format(pin.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", lim(2000)),
            Err(Refused::Expired)
        );
        assert_eq!(
            verify_v2_format(pin.as_bytes(), &keys(&[KEY]), "other", b"s", b"alice", lim(1999)),
            Err(Refused::OtherRule)
        );
        assert_eq!(
            verify_v2_format(pin.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"bob", lim(1999)),
            Err(Refused::BadSignature)
        );
        let upper = format!("{}{}", &pin[..17], pin[17..].to_uppercase());
        assert_eq!(
            verify_v2_format(upper.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", lim(1999)),
            Err(Refused::Malformed)
        );
        assert_eq!(v2_format_rule(pin.as_bytes()), Some(&b"ramp"[..]));
        assert_eq!(v2_format_rule(b"2:v:1:2:ab"), None);
        assert_eq!(began(sign(KEY, "r", "v", 77, 99, b"s", b"u").as_bytes()), Some(77));
        assert_eq!(
            verify(pin.as_bytes(), &keys(&[KEY]), "ramp", b"s", b"alice", lim(1999)),
            Err(Refused::Malformed),
            "not a new-format pin"
        );
    }
}
