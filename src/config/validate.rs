//! Checks of single names and values: header and cookie names, versions, rule names.

use super::compile::RESERVED_RULE_NAMES;
use super::error::{quote, ConfigError};

/// RFC 9110 `tchar`: the characters of a token (header names, methods, cookie names).
pub(super) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

pub(super) fn header_name(path: &str, name: String) -> Result<String, ConfigError> {
    if name.starts_with(':') {
        return Err(ConfigError::new(path, format!("pseudo-headers cannot be used, got {}", quote(&name))));
    }
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(ConfigError::new(
            path,
            format!("must be a valid HTTP header name, got {}", quote(&name)),
        ));
    }
    if name.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(ConfigError::new(
            path,
            format!(
                "must be lower-case (header names match case-insensitively), got {}; write {}",
                quote(&name),
                quote(&name.to_ascii_lowercase())
            ),
        ));
    }
    Ok(name)
}

pub(super) fn cookie_name(path: &str, name: String) -> Result<String, ConfigError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(ConfigError::new(
            path,
            format!("must be a valid cookie name (an HTTP token), got {}", quote(&name)),
        ));
    }
    Ok(name)
}

/// `v`, or `default` when it is absent, within `range`; `unit` follows the bounds in the error:
/// `must be between 1 and 600000 ms, got 0`.
pub(super) fn in_range(
    path: &str,
    v: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::new(
            path,
            format!("must be between {} and {}{unit}, got {v}", range.start(), range.end()),
        ))
    }
}

/// A list of path prefixes, each starting with `/`, as bytes. An empty list could never match:
/// refused at `path` with `if_empty` (what to write instead).
pub(super) fn path_prefixes(
    path: &str,
    list: Vec<String>,
    if_empty: &str,
) -> Result<Vec<Box<[u8]>>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(path, format!("must not be empty ({if_empty})")));
    }
    let mut out = Vec::with_capacity(list.len());
    for (k, p) in list.into_iter().enumerate() {
        if !p.starts_with('/') {
            return Err(ConfigError::new(
                format!("{path}[{k}]"),
                format!("must be a path prefix starting with \"/\", got {}", quote(&p)),
            ));
        }
        out.push(p.into_bytes().into_boxed_slice());
    }
    Ok(out)
}

/// `x` in hundredths, when it has at most two decimals: `x * 100` rounded must divide back to
/// the very f64 that was parsed (division is correctly rounded), so 10.555 and 10.1000000001
/// are refused, 0.29 is not. `x` must be in 0..=10^7 (the callers' ranges).
pub(super) fn hundredths(x: f64) -> Option<u32> {
    let n = (x * 100.0).round();
    (n / 100.0 == x && (0.0..=1e9).contains(&n)).then_some(n as u32)
}

pub(super) fn non_empty(path: &str, s: String) -> Result<String, ConfigError> {
    if s.is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(s)
}

/// Versions: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub(super) fn check_version(path: &str, v: &str) -> Result<(), ConfigError> {
    let b = v.as_bytes();
    let ok = matches!(b.first(), Some(c) if c.is_ascii_alphanumeric())
        && b.len() <= 64
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "must be a version name: a letter or digit, then up to 63 of [A-Za-z0-9._-], got {}",
                quote(v)
            ),
        ))
    }
}

/// Rule names: `[a-z0-9][a-z0-9_-]{0,63}`, not a reserved metric name.
pub(super) fn check_rule_name(path: &str, n: &str) -> Result<(), ConfigError> {
    let b = n.as_bytes();
    let ok = matches!(b.first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 64
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !ok {
        return Err(ConfigError::new(
            path,
            format!("must be a lower-case letter or digit, then up to 63 of [a-z0-9_-], got {}", quote(n)),
        ));
    }
    if RESERVED_RULE_NAMES.contains(&n) {
        return Err(ConfigError::new(
            path,
            format!("{} is reserved for metrics; pick another name", quote(n)),
        ));
    }
    Ok(())
}

/// An RFC 6901 JSON pointer to a field of a request body: `/user`, `/metadata/conversation_id`,
/// `/messages/0/role`; `~0` and `~1` are the only escapes. The whole document (`""`) is no
/// identity, so it is refused.
pub(super) fn json_pointer(path: &str, p: String) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(path, format!("must be a JSON pointer like /user ({why}), got {}", quote(&p)))
    };
    if !p.starts_with('/') {
        return Err(bad("it starts with /"));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(bad("~ is only ~0 or ~1"));
        }
    }
    Ok(p)
}
