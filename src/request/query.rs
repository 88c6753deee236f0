//! Query parameters of `:path`, decoded like WHATWG `URLSearchParams`.

use std::borrow::Cow;

/// Splits `:path` into the path proper (before `?`, as received) and the query (after it).
pub fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().position(|&c| c == b'?') {
        Some(q) => (path.get(..q).unwrap_or_default(), path.get(q + 1..).unwrap_or_default()),
        None => (path, &[]),
    }
}

/// The decoded value of the first parameter whose decoded name is `name`.
/// Percent escapes are decoded, `+` is a space, a broken escape stays literal.
pub fn find<'a>(query: &'a [u8], name: &[u8]) -> Option<Cow<'a, [u8]>> {
    // A fragment never reaches a proxy in a well-formed request; if one does, it is not query.
    let query = match query.iter().position(|&c| c == b'#') {
        Some(h) => query.get(..h).unwrap_or_default(),
        None => query,
    };
    for pair in query.split(|&c| c == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|&c| c == b'=') {
            Some(eq) => (pair.get(..eq).unwrap_or_default(), pair.get(eq + 1..).unwrap_or_default()),
            None => (pair, &[][..]),
        };
        if decode(k) == name {
            return Some(decode(v));
        }
    }
    None
}

/// `application/x-www-form-urlencoded` decoding, borrowing when there is nothing to decode.
pub fn decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.iter().any(|&c| c == b'%' || c == b'+') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => match (s.get(i + 1).and_then(hex), s.get(i + 2).and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(c: &u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(query: &str, name: &str) -> Option<Vec<u8>> {
        find(query.as_bytes(), name.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn finds_parameters_like_url_search_params() {
        let cases: &[(&str, &str, Option<&[u8]>, &str)] = &[
            ("uid=alice", "uid", Some(b"alice"), "single"),
            ("a=1&uid=alice&b=2", "uid", Some(b"alice"), "middle"),
            ("uid=alice&uid=bob", "uid", Some(b"alice"), "first occurrence wins"),
            ("uid=a%20b", "uid", Some(b"a b"), "percent escape"),
            ("uid=a+b", "uid", Some(b"a b"), "plus is a space"),
            ("u%69d=x", "uid", Some(b"x"), "names are decoded too"),
            ("uid=%zz%4", "uid", Some(b"%zz%4"), "broken escapes stay literal"),
            ("uid=%E7%94%A8", "uid", Some("用".as_bytes()), "UTF-8 escapes"),
            ("uid=%FF", "uid", Some(b"\xff"), "non-UTF-8 escape is a byte"),
            ("uid", "uid", Some(b""), "no = is an empty value"),
            ("uid=", "uid", Some(b""), "empty value"),
            ("&&=&uid=x", "uid", Some(b"x"), "empty pairs skipped"),
            ("a=b=c&uid=1", "a", Some(b"b=c"), "value keeps later ="),
            ("uid=x#frag", "uid", Some(b"x"), "fragment is not query"),
            ("other=1", "uid", None, "absent"),
            ("", "uid", None, "no query"),
        ];
        for (query, name, want, why) in cases {
            assert_eq!(q(query, name).as_deref(), *want, "{why}");
        }
    }

    #[test]
    fn split_path_keeps_the_path_as_received() {
        assert_eq!(split_path(b"/api/x?y=1"), (&b"/api/x"[..], &b"y=1"[..]));
        assert_eq!(split_path(b"/api/%2e?"), (&b"/api/%2e"[..], &b""[..]));
        assert_eq!(split_path(b"/a"), (&b"/a"[..], &b""[..]));
        assert_eq!(split_path(b"/a?b?c"), (&b"/a"[..], &b"b?c"[..]));
    }
}
