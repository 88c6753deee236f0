//! CIDR ranges for `source_cidrs` and `override.trusted_cidrs`, parsed once at configure time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::text::quote;

/// An IPv4 or IPv6 range, stored masked so a match is one AND and one compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a single host, like nginx's
    /// `allow 1.2.3.4`). Host bits after the prefix are ignored, as Envoy's `CidrRange` does.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("must be a CIDR like 10.0.0.0/8 or 2001:db8::/32, got {}", quote(s)))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len {
            None => max,
            Some(l) => match l.parse::<u32>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => return Err(format!("prefix length must be 0..={max}, got {}", quote(s))),
            },
        };
        Ok(match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                Cidr::V4 { net: u32::from(a) & mask, mask }
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                Cidr::V6 { net: u128::from(a) & mask, mask }
            }
        })
    }

    /// Whether `ip` is inside the range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) also
    /// matches IPv4 ranges, so a dual-stack listener sees the same rules as an IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Cidr::V4 { net, mask }, IpAddr::V6(a)) => {
                a.to_ipv4_mapped().is_some_and(|a| u32::from(a) & mask == net)
            }
            (Cidr::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            (Cidr::V6 { .. }, IpAddr::V4(_)) => false,
        }
    }
}

/// Parses Envoy's `source.address` property: `1.2.3.4:5678`, `[::1]:5678`, or a bare address.
pub fn parse_socket_ip(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?;
    if let Some(rest) = s.strip_prefix('[') {
        let (host, _) = rest.split_once(']')?;
        return host.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, _) = s.rsplit_once(':')?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges_match_their_members_only() {
        let c = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(c.contains(ip("192.168.3.4")), "inside");
        assert!(!c.contains(ip("192.169.0.1")), "outside");
        assert!(!c.contains(ip("2001:db8::1")), "an IPv6 source never matches an IPv4 range");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")), "/0 holds everyone");
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")), "bare address");
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")), "bare is /32");
        assert!(Cidr::parse("10.1.2.3/8").unwrap().contains(ip("10.9.9.9")), "host bits ignored");
    }

    #[test]
    fn ipv4_mapped_ipv6_sources_match_ipv4_ranges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("::ffff:11.1.2.3")));
    }

    #[test]
    fn ipv6_ranges_match_their_members_only() {
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("fe80::1")));
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        for s in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/+8", "x/8", "1.2.3.4/-1"] {
            assert!(Cidr::parse(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn envoy_source_addresses_parse() {
        assert_eq!(parse_socket_ip(b"127.0.0.1:41234"), Some(ip("127.0.0.1")));
        assert_eq!(parse_socket_ip(b"[::1]:41234"), Some(ip("::1")));
        assert_eq!(parse_socket_ip(b"[::ffff:10.0.0.1]:1"), Some(ip("::ffff:10.0.0.1")));
        assert_eq!(parse_socket_ip(b"10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(parse_socket_ip(b"::1"), Some(ip("::1")));
        assert_eq!(parse_socket_ip(b"garbage"), None);
        assert_eq!(parse_socket_ip(&[0xff, 0xfe]), None);
    }
}
