//! The one error type of configuration: where in the JSON, and what is wrong there.

use std::fmt;

/// A rejected configuration. Displayed as `<path>: <problem>`, the path in the form
/// `rules[2].split[0].percent` (`$` for the document itself); the filter logs it as
/// `graysplit: invalid config: <path>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError { path: path.into(), problem: problem.into() }
    }

    /// A serde_json error at the path serde_path_to_error tracked, in our terms. serde_json's
    /// own words are kept (with their line and column); only where serde reports a field's
    /// problem at the object that holds it (a missing or duplicate field) does the path go on
    /// to the field, so every error points at the place to edit: `stable: is required`,
    /// `rules[0].name: duplicate field `name` at line 1 column 42`.
    pub(crate) fn from_serde(e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let mut path = String::new();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => path += &format!("[{index}]"),
                serde_path_to_error::Segment::Map { key } => push_key(&mut path, key),
                serde_path_to_error::Segment::Enum { variant } => push_key(&mut path, variant),
                serde_path_to_error::Segment::Unknown => path += "[?]",
            }
        }
        let message = e.into_inner().to_string();
        for prefix in ["missing field `", "duplicate field `"] {
            if let Some(field) = quoted_field(&message, prefix) {
                push_key(&mut path, field);
                let problem = if prefix.starts_with("missing") { "is required".to_string() } else { message };
                return ConfigError::new(path, problem);
            }
        }
        if path.is_empty() {
            path.push('$');
        }
        ConfigError::new(path, message)
    }
}

/// Appends field `key` to a JSON path: `.key` for a plain name, `["key"]` quoted otherwise (an
/// empty key, or one with dots, spaces or invisible characters, which would mislead a reader).
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        if path.is_empty() {
            path.push('$');
        }
        path.push('[');
        path.push_str(&quote(key));
        path.push(']');
    }
}

/// The name in `` <prefix>name` ...`` (serde's "missing field `x`" and "duplicate field `x`").
fn quoted_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(field, _)| field)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for ConfigError {}

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

#[cfg(test)]
mod tests {
    use super::*;

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
