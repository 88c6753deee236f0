//! What graysplit writes into cookies, in one place: the `Set-Cookie` values of the sticky id
//! and of session pins, and the lower-case hex they carry.

/// A `Set-Cookie` value: `<name>=<value>; Path=/; Max-Age=<max_age>; HttpOnly; SameSite=Lax`,
/// plus `; Secure` on https (DESIGN.md `sticky_cookie` and "Session pins").
pub fn set_cookie(name: &str, value: &str, max_age_s: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A `Set-Cookie` value that removes cookie `name` (`Max-Age=0`).
pub fn expire_cookie(name: &str, secure: bool) -> String {
    set_cookie(name, "", 0, secure)
}

pub use crate::text::push_hex;

/// Decodes exactly `N` bytes from lower-case hex; any other spelling (upper case, odd length,
/// other characters) is `None`.
pub fn from_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let decoded = base16ct::lower::decode(hex, &mut out).ok()?;
    (decoded.len() == N).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_has_the_attributes_design_names() {
        assert_eq!(
            set_cookie("gp.ramp", "v", 600, false),
            "gp.ramp=v; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"
        );
        assert!(set_cookie("a", "b", 1, true).ends_with("; SameSite=Lax; Secure"));
        assert_eq!(expire_cookie("gp", false), "gp=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax");
    }

    #[test]
    fn hex_is_lower_case_only() {
        let mut s = String::new();
        push_hex(&mut s, &[0x00, 0xab, 0xff]);
        assert_eq!(s, "00abff");
        assert_eq!(from_hex::<3>(b"00abff"), Some([0x00, 0xab, 0xff]));
        for bad in [&b"00ABff"[..], b"00abf", b"00abfff", b"00abfg", b"00ab ff", b""] {
            assert_eq!(from_hex::<3>(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = String::new();
        push_hex(&mut long, &[7u8; 40]);
        assert_eq!(long, "07".repeat(40));
    }
}
