//! How graysplit writes values: quoted for a message or a log line ([`quote`]), a number as its
//! text ([`fmt_num`]: config errors, JSON body numbers, claims, guard log lines), bytes as
//! lower-case hex ([`push_hex`]: pins, minted ids, hashes of answers and users). The bottom
//! of the pure modules: it depends on none of them.

/// `s` in double quotes for a message, with `"`, `\`, control characters and the invisible
/// characters that could hide or reorder text in a log line (zero-width, bidi overrides, line
/// and paragraph separators, BOM) escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A number from the config as a person wrote it: `120`, `10.555`, `-1`, `1e300`: whole numbers
/// without a fraction, others by serde_json's shortest round-trip formatting (already in the
/// module; std's float `Display` would add its own ~17 KB).
pub fn fmt_num(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        format!("{}", n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or_else(|| "a non-finite number".to_string(), |x| x.to_string())
    }
}

/// `n` in decimal, appended to `out` (the shadow's records), without a `String` of its own.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// `bytes` as lower-case hex, appended to `out` (pins, minted ids, answer hashes).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        if let Ok(s) = base16ct::lower::encode_str(chunk, &mut buf) {
            out.push_str(s);
        }
    }
}

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits_without_a_string() {
        for n in [0, 7, 10, 99, 1_796_605_739_452_773_000, u64::MAX] {
            let mut out = b"x".to_vec();
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn quote_escapes_what_could_hide_text_in_a_log_line() {
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny"), r#""x\u{a}y""#);
        assert_eq!(quote("ab\u{202e}cd"), r#""ab\u{202e}cd""#);
        assert_eq!(quote("用户"), "\"用户\"");
    }

    #[test]
    fn numbers_read_as_written() {
        assert_eq!(fmt_num(120.0), "120");
        assert_eq!(fmt_num(10.555), "10.555");
        assert_eq!(fmt_num(-1.0), "-1");
        assert_eq!(fmt_num(10.1000000001), "10.1000000001");
        assert_eq!(fmt_num(1e300), "1e+300");
        assert_eq!(fmt_num(0.25), "0.25");
    }
}
