//! Cookie lookup over every `cookie` request header.
//!
//! HTTP/1.1 clients may send several `cookie` headers (Envoy joins them only for HTTP/2), so
//! the lookup walks all of them. Parsing is lenient like browsers and Envoy's own
//! `Http::Utility::parseCookieValue`: pairs split on `;`, spaces trimmed, a double-quoted value
//! unquoted, pairs without `=` skipped, the first occurrence of a name wins.

/// The value of cookie `name` in the first `cookie` header value that has it.
pub fn find<'a, I>(headers: I, name: &[u8]) -> Option<&'a [u8]>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    for header in headers {
        for pair in header.split(|&c| c == b';') {
            let Some(eq) = pair.iter().position(|&c| c == b'=') else {
                continue;
            };
            let (k, v) = pair.split_at(eq);
            if trim(k) != name {
                continue;
            }
            let v = trim(v.get(1..).unwrap_or_default());
            return Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            });
        }
    }
    None
}

/// Every (name, value) pair of every `cookie` header value, in order (values unquoted).
pub fn all<'a, I>(headers: I) -> impl Iterator<Item = (&'a [u8], &'a [u8])>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    headers.into_iter().flat_map(|h| h.split(|&c| c == b';')).filter_map(|pair| {
        let eq = pair.iter().position(|&c| c == b'=')?;
        let (k, v) = pair.split_at(eq);
        let v = trim(v.get(1..).unwrap_or_default());
        Some((
            trim(k),
            match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            },
        ))
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(h: &str, name: &str) -> Option<Vec<u8>> {
        find([h.as_bytes()], name.as_bytes()).map(<[u8]>::to_vec)
    }

    #[test]
    fn finds_values_as_browsers_send_them() {
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("uid=alice", "uid", Some("alice"), "single pair"),
            ("a=1; uid=alice; b=2", "uid", Some("alice"), "middle pair"),
            ("a=1;uid=alice", "uid", Some("alice"), "no space after ;"),
            ("  uid = alice  ", "uid", Some("alice"), "spaces trimmed"),
            ("uid=\"alice\"", "uid", Some("alice"), "quoted value unquoted"),
            ("uid=\"", "uid", Some("\""), "a lone quote stays"),
            ("uid=", "uid", Some(""), "empty value"),
            ("uid=a=b", "uid", Some("a=b"), "value keeps later ="),
            ("uid=alice; uid=bob", "uid", Some("alice"), "first occurrence wins"),
            ("xuid=alice", "uid", None, "name must match whole"),
            ("UID=alice", "uid", None, "names are case-sensitive"),
            ("uid; =x; ;;", "uid", None, "pairs without = skipped"),
            ("", "uid", None, "empty header"),
        ];
        for (header, name, want, why) in cases {
            assert_eq!(one(header, name), want.map(|w| w.as_bytes().to_vec()), "{why}");
        }
    }

    #[test]
    fn reads_every_cookie_header_in_order() {
        let headers: [&[u8]; 3] = [b"a=1", b"uid=alice", b"uid=bob"];
        assert_eq!(find(headers, b"uid"), Some(&b"alice"[..]));
        assert_eq!(find(headers, b"a"), Some(&b"1"[..]));
        assert_eq!(find(headers, b"zz"), None);
    }

    #[test]
    fn non_utf8_bytes_are_just_bytes() {
        let h: &[u8] = b"uid=\xff\xfe; x=\xc3";
        assert_eq!(find([h], b"uid"), Some(&b"\xff\xfe"[..]));
        assert_eq!(find([h], b"x"), Some(&b"\xc3"[..]));
    }
}
