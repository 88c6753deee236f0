//! RFC 3339 timestamps for `starts_at` / `expires_at`, as Unix nanoseconds.
//!
//! Hand-written (about 60 lines) rather than pulling a date crate into the wasm: only parsing
//! is needed, and only of the RFC 3339 profile (`Z` or a numeric offset, optional fraction).

use super::error::quote;

/// Parses `2026-12-01T00:00:00Z`, `2026-12-01T01:00:00.5+01:00`, ... into nanoseconds since
/// the Unix epoch. The error says what is wrong, for the config error message.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let bad = || format!("must be an RFC 3339 time like 2026-12-01T00:00:00Z, got {}", quote(s));
    if b.len() < 20 {
        return Err(bad());
    }
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let digits = b.get(from..from + len).ok_or_else(bad)?;
        let mut v: i64 = 0;
        for d in digits {
            if !d.is_ascii_digit() {
                return Err(bad());
            }
            v = v * 10 + i64::from(d - b'0');
        }
        Ok(v)
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return Err(bad());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(format!("{} is not a valid date", quote(s)));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!("{} is not a valid time of day", quote(s)));
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut scale: i64 = 100_000_000;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            nanos += i64::from(d - b'0') * scale; // digits past nanoseconds add 0
            scale /= 10;
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    // i64 nanoseconds span 1677..2262. Later (or earlier) times saturate: the clock never gets
    // there, so `9999-12-31T23:59:59Z` still means "never" and `0001-01-01` "always".
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix nanoseconds as RFC 3339 UTC, to the second, or with the fraction when there is one:
/// `2026-12-04T09:00:00Z`, `2026-12-04T09:00:00.5Z`. For messages and the CLI.
pub fn format_rfc3339(ns: i64) -> String {
    if ns == i64::MIN || ns == i64::MAX {
        return if ns == i64::MIN { "the beginning of time".into() } else { "the end of time".into() };
    }
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60);
    if frac != 0 {
        let digits = format!("{frac:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        let cases: &[(&str, i64)] = &[
            ("1970-01-01T00:00:00Z", 0),
            ("2026-12-01T00:00:00Z", 1_796_083_200 * S),
            ("2026-12-01T01:00:00+01:00", 1_796_083_200 * S),
            ("2026-11-30T19:30:00-04:30", 1_796_083_200 * S),
            ("2026-12-01T00:00:00.5Z", 1_796_083_200 * S + S / 2),
            ("2026-12-01T00:00:00.123456789123Z", 1_796_083_200 * S + 123_456_789),
            ("2024-02-29T12:00:00z", 1_709_208_000 * S),
            ("1969-12-31T23:59:59Z", -S),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text).unwrap(), *want, "{text}");
        }
    }

    #[test]
    fn times_beyond_the_nanosecond_range_saturate_in_order() {
        let never = parse_rfc3339("9999-12-31T23:59:59Z").unwrap();
        let far = parse_rfc3339("2262-04-12T00:00:00Z").unwrap();
        let always = parse_rfc3339("0001-01-01T00:00:00Z").unwrap();
        assert_eq!(never, i64::MAX);
        assert_eq!(far, i64::MAX);
        assert_eq!(always, i64::MIN);
        assert!(parse_rfc3339("2262-04-11T00:00:00Z").unwrap() < far, "last representable day");
        assert!(parse_rfc3339("1677-09-22T00:00:00Z").unwrap() > always);
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for text in [
            "",
            "2026-12-01",
            "2026-12-01T00:00:00",
            "2026-12-01T00:00:00+0100",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T00:00:00.Z",
            "2026-12-01T00:00:00Zjunk",
            "tomorrow at noon please",
            "２026-12-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-12-04T09:00:00Z",
            "2024-02-29T23:59:59.5Z",
            "1969-12-31T23:59:59Z",
            "2000-03-01T00:00:00.000000001Z",
        ] {
            assert_eq!(format_rfc3339(parse_rfc3339(text).unwrap()), text);
        }
        assert_eq!(
            format_rfc3339(parse_rfc3339("2026-12-01T01:00:00+01:00").unwrap()),
            "2026-12-01T00:00:00Z"
        );
    }
}
