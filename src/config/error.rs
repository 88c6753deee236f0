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
pub(crate) fn push_key(path: &mut String, key: &str) {
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

pub use crate::text::quote;
