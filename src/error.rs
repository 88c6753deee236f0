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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for ConfigError {}
