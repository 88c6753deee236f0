//! Configuration: the raw serde structs ([`raw`]), their validation and compilation
//! ([`compile`], [`validate`], [`time`]), and the compiled [`Plan`] that request handling reads.
//! A config either compiles whole or is rejected whole with one [`ConfigError`].

mod compile;
pub mod error;
pub mod plan;
pub mod raw;
pub mod time;
mod validate;

pub use compile::{LANE_RULE, PIN_COOKIES_MAX};
pub use error::ConfigError;
pub use plan::*;

use raw::{Obj, RawConfig};

/// The default routing header (DESIGN.md `route_header`).
pub const DEFAULT_ROUTE_HEADER: &str = "x-graysplit-version";

/// The header a shadow request carries (DESIGN.md "Shadow"): `x-graysplit-shadow: 1`.
pub const SHADOW_HEADER: &str = "x-graysplit-shadow";

/// Parses, validates and compiles a plugin configuration.
pub fn parse(json: &[u8]) -> Result<Plan, ConfigError> {
    parse_in(json, &|name| std::env::var(name).ok())
}

/// [`parse`], with `env` giving the environment variables a config may name (`lane.key_env`):
/// the filter's is the VM's (what Envoy passes from `vm_config.environment_variables`), the
/// CLI's its own or a stand-in.
pub fn parse_in(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, ConfigError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(
            "$",
            "the configuration is empty; graysplit needs at least {\"stable\": \"<version>\"}",
        ));
    }
    // Read as text, as request bodies are: one instantiation of serde_json's parser serves both.
    let text = std::str::from_utf8(json).map_err(|e| {
        ConfigError::new(
            "$",
            format!("the configuration is not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let Obj(raw): Obj<RawConfig> =
        serde_path_to_error::deserialize(&mut de).map_err(ConfigError::from_serde)?;
    // Only whitespace may follow the document.
    de.end().map_err(|e| ConfigError::new("$", e.to_string()))?;
    compile::compile(raw, env)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]
    use super::*;

    fn err(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("accepted but should be rejected: {json}"),
            Err(e) => e.to_string(),
        }
    }

    const ID: &str = r#""identity": {"from": [{"header": "x-user-id"}]}"#;

    #[test]
    fn design_example_compiles() {
        let json = r#"{
          "route_header": "x-graysplit-version",
          "stable": "v2.0",
          "identity": {
            "from": [{"header": "x-user-id"}, {"cookie": "uid"}, {"query": "uid"}],
            "sticky_cookie": {"name": "graysplit_uid", "max_age_s": 2592000}
          },
          "override": {"header": "x-gray-release", "trusted_cidrs": ["10.0.0.0/8", "127.0.0.1/32"]},
          "response_header": "x-graysplit-version",
          "rules": [
            {"name": "vip-stay-stable", "when": {"users": ["ceo@example.com"]}, "version": "v2.0"},
            {"name": "legal-pilot", "when": {"headers": [{"name": "x-department", "exact": "legal"}]},
             "version": "v2.1"},
            {"name": "office", "when": {"source_cidrs": ["192.168.0.0/16"], "path_prefix": "/api/"},
             "version": "v2.1"},
            {"name": "ramp", "split": [{"version": "v2.1", "percent": 10}], "salt": "release-2.1",
             "expires_at": "2026-12-01T00:00:00Z"}
          ]
        }"#;
        let plan = parse(json.as_bytes()).unwrap();
        assert_eq!(plan.versions, ["v2.0", "v2.1"]);
        assert_eq!(plan.rule_count(), 4);
        for m in [
            "graysplit_override_total.result.accepted",
            "graysplit_override_total.result.rejected",
            "graysplit_decisions_total.rule.vip-stay-stable.version.v2.0",
            "graysplit_decisions_total.rule.legal-pilot.version.v2.1",
            "graysplit_decisions_total.rule.ramp.version.v2.1",
            "graysplit_decisions_total.rule.ramp.version.v2.0",
            "graysplit_decisions_total.rule.default.version.v2.0",
            "graysplit_decisions_total.rule.override.version.v2.1",
        ] {
            assert!(plan.metrics.iter().any(|x| x == m), "missing metric {m}");
        }
        assert_eq!(plan.metrics[METRIC_OVERRIDE_ACCEPTED], "graysplit_override_total.result.accepted");
        assert_eq!(plan.metrics[METRIC_OVERRIDE_REJECTED], "graysplit_override_total.result.rejected");
    }

    #[test]
    fn minimal_config_defaults() {
        let plan = parse(br#"{"stable": "v1"}"#).unwrap();
        assert_eq!(plan.route_header, DEFAULT_ROUTE_HEADER);
        assert_eq!(plan.response_header, None);
        assert!(!plan.has_identity());
    }

    #[test]
    fn errors_name_the_json_path_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "$: the configuration is empty"),
            ("[]", "$: invalid type: sequence, expected an object at line 1 column 0"),
            (
                r#"{"stable": "v1", "rules": [["a", null, "v2"]]}"#,
                "rules[0]: invalid type: sequence, expected an object",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [["x"]]}}]}"#,
                "rules[0].when.headers[0]: invalid type: sequence, expected an object",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": ["g", 600]}}"#,
                "identity.sticky_cookie: invalid type: sequence, expected an object",
            ),
            ("{\"stable\": \"v1\"} x", "$: trailing characters at line 1 column 18"),
            ("{\"stable\": ", "stable: EOF while parsing a value at line 1 column 11"),
            ("{}", "stable: is required"),
            (r#"{"stable": "v1", "colour": 1}"#, "colour: unknown field `colour`"),
            (r#"{"stable": "v1", "": 1}"#, "$[\"\"]: unknown field ``"),
            (r#"{"stable": "v1", "identity": {"a.b": 1}}"#, "identity[\"a.b\"]: unknown field `a.b`"),
            (r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "name": "b"}]}"#, "rules[0].name: duplicate field `name`"),
            (r#"{"stable": "v1", "stable": "v2"}"#, "stable: duplicate field `stable` at line 1 column 25"),
            (r#"{"stable": ""}"#, "stable: must be a version name"),
            (r#"{"stable": "-v1"}"#, "stable: must be a version name"),
            (r#"{"stable": "v1/x"}"#, "stable: must be a version name"),
            (r#"{"stable": 2}"#, "stable: invalid type: integer `2`, expected a string"),
            (r#"{"stable": "v1", "route_header": "X-Version"}"#, "route_header: must be lower-case"),
            (
                r#"{"stable": "v1", "route_header": ":authority"}"#,
                "route_header: pseudo-headers cannot be used",
            ),
            (r#"{"stable": "v1", "route_header": "a b"}"#, "route_header: must be a valid HTTP header name"),
            (
                r#"{"stable": "v1", "response_header": ""}"#,
                "response_header: must be a valid HTTP header name",
            ),
            (r#"{"stable": "v1", "identity": {"from": [{}]}}"#, "identity.from[0]: give exactly one of"),
            (
                r#"{"stable": "v1", "identity": {"from": [{"header": "a", "cookie": "b"}]}}"#,
                "identity.from[0]: give exactly one of",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"header": "x", "nope": 1}]}}"#,
                "identity.from[0].nope: unknown field `nope`",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"cookie": "a;b"}]}}"#,
                "identity.from[0].cookie: must be a valid cookie name",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"query": ""}]}}"#,
                "identity.from[0].query: must not be empty",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g"}}}"#,
                "identity.sticky_cookie.max_age_s: is required",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g", "max_age_s": 59}}}"#,
                "identity.sticky_cookie.max_age_s: must be between 60 and 63072000 seconds, got 59",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g", "max_age_s": 63072001}}}"#,
                "identity.sticky_cookie.max_age_s: must be between",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "g", "max_age_s": -1}}}"#,
                "identity.sticky_cookie.max_age_s: invalid value: integer `-1`, expected u64",
            ),
            (r#"{"stable": "v1", "override": {"header": "x-o"}}"#, "override.trusted_cidrs: is required"),
            (
                r#"{"stable": "v1", "override": {"header": "x-o", "trusted_cidrs": []}}"#,
                "override.trusted_cidrs: must list at least one range",
            ),
            (
                r#"{"stable": "v1", "override": {"header": "x-o", "trusted_cidrs": ["10.0.0.0/8", "300.1.1.1/8"]}}"#,
                "override.trusted_cidrs[1]: must be a CIDR",
            ),
            (
                r#"{"stable": "v1", "override": {"header": "x-graysplit-version", "trusted_cidrs": ["::/0"]}}"#,
                "override.header: must differ from route_header",
            ),
            (r#"{"stable": "v1", "rules": {}}"#, "rules: invalid type: map, expected a sequence"),
            (r#"{"stable": "v1", "rules": [{"version": "v2"}]}"#, "rules[0].name: is required"),
            (
                r#"{"stable": "v1", "rules": [{"name": "A", "version": "v2"}]}"#,
                "rules[0].name: must be a lower-case letter or digit",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "default", "version": "v2"}]}"#,
                "rules[0].name: \"default\" is reserved",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "override", "version": "v2"}]}"#,
                "rules[0].name: \"override\" is reserved",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2"}, {"name": "a", "version": "v3"}]}"#,
                "rules[1].name: duplicate rule name \"a\" (also rules[0])",
            ),
            (r#"{"stable": "v1", "rules": [{"name": "a"}]}"#, "rules[0]: needs `version` or `split`"),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "version": "v2", "split": []}]}"#,
                "rules[0]: has both `version` and `split`",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v 2"}]}"#,
                "rules[0].version: must be a version name",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "split": [{"version": "v2", "percent": 10}]}]}"#,
                "rules[0].split: a split needs a user id",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "when": {"users": ["x"]}, "version": "v2"}]}"#,
                "rules[0].when.users: a users condition needs a user id",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": []}]}"#,
                "rules[0].split: must list at least one version",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "r", "version": "v2"}, {"name": "a", "split": [{"version": "v2", "percent": 10}, {"version": "v3", "percent": 120}]}]}"#,
                "rules[1].split[1].percent: must be between 0 and 100, got 120",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": -1}]}]}"#,
                "rules[0].split[0].percent: must be between 0 and 100, got -1",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 10.555}]}]}"#,
                "rules[0].split[0].percent: at most two decimals are allowed, got 10.555",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 10.1000000001}]}]}"#,
                "rules[0].split[0].percent: at most two decimals",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": "10"}]}]}"#,
                "rules[0].split[0].percent: invalid type: string \"10\", expected f64",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 60}, {"version": "v3", "percent": 40.01}]}]}"#,
                "rules[0].split[1].percent: the percents of rules[0].split add up to 100.01, more than 100",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 6}, {"version": "v2", "percent": 4}]}]}"#,
                "rules[0].split[1].version: \"v2\" is listed twice",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2"}]}]}"#,
                "rules[0].split[0].percent: is required",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "salt": "", "split": [{"version": "v2", "percent": 1}]}]}"#,
                "rules[0].salt: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "expires_at": "2026-12-01"}]}"#,
                "rules[0].expires_at: must be an RFC 3339 time",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "starts_at": "soon"}]}"#,
                "rules[0].starts_at: must be an RFC 3339 time",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "starts_at": "2026-12-01T00:00:00Z", "expires_at": "2026-12-01T00:00:00Z"}]}"#,
                "rules[0].expires_at: must be later than starts_at",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "enabled": "no"}]}"#,
                "rules[0].enabled: invalid type: string \"no\", expected a boolean",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"hdrs": []}}]}"#,
                "rules[0].when.hdrs: unknown field `hdrs`",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x"}]}}]}"#,
                "rules[0].when.headers[0]: \"x\": give exactly one of",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x", "exact": "1", "prefix": "2"}]}}]}"#,
                "rules[0].when.headers[0]: \"x\": give exactly one of",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "X-Dept", "exact": "1"}]}}]}"#,
                "rules[0].when.headers[0].name: must be lower-case",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": ":path", "exact": "1"}]}}]}"#,
                "rules[0].when.headers[0].name: pseudo-headers cannot be used",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x", "one_of": []}]}}]}"#,
                "rules[0].when.headers[0].one_of: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"headers": [{"name": "x", "regex": ".*"}]}}]}"#,
                "rules[0].when.headers[0].regex: unknown field `regex`",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"cookies": [{"name": "a b", "exact": "1"}]}}]}"#,
                "rules[0].when.cookies[0].name: must be a valid cookie name",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"query": [{"name": "", "exact": "1"}]}}]}"#,
                "rules[0].when.query[0].name: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"path_prefix": "api"}}]}"#,
                "rules[0].when.path_prefix: must start with /",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"methods": ["get"]}}]}"#,
                "rules[0].when.methods[0]: must be an upper-case HTTP method",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"methods": []}}]}"#,
                "rules[0].when.methods: must not be empty",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"source_cidrs": ["10.0.0.0/8", "fe80::/200"]}}]}"#,
                "rules[0].when.source_cidrs[1]: prefix length must be 0..=128",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"source_cidrs": []}}]}"#,
                "rules[0].when.source_cidrs: must not be empty",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 1, "schedule": []}]}]}"#,
                "rules[0].split[0]: has both `percent` and `schedule`",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "schedule": []}]}]}"#,
                "rules[0].split[0].schedule: must list at least one step",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "schedule": [{"at": "2026-12-02T09:00:00Z", "percent": 1}, {"at": "2026-12-02T09:00:00Z", "percent": 2}]}]}]}"#,
                "rules[0].split[0].schedule[1].at: must be later than the step before it (2026-12-02T09:00:00Z)",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "schedule": [{"at": "2026-12-02T09:00:00Z", "percent": 10}, {"at": "2026-12-02T10:00:00Z", "percent": 5}]}]}]}"#,
                "rules[0].split[0].schedule[1].percent: must not be below the step before it (10), got 5",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "schedule": [{"at": "2026-12-02T09:00:00Z", "percent": 10.001}]}]}]}"#,
                "rules[0].split[0].schedule[0].percent: at most two decimals",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "schedule": [{"at": "soon", "percent": 1}]}]}]}"#,
                "rules[0].split[0].schedule[0].at: must be an RFC 3339 time",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "schedule": [{"at": "2026-12-02T09:00:00Z", "percent": 1}, {"at": "2026-12-04T09:00:00Z", "percent": 60}]}, {"version": "v3", "schedule": [{"at": "2026-12-03T09:00:00Z", "percent": 50}]}]}]}"#,
                "rules[0].split[1].schedule[0].percent: the percents of rules[0].split add up to 110 from 2026-12-04T09:00:00Z, more than 100",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 60}, {"version": "v3", "schedule": [{"at": "2026-12-03T09:00:00Z", "percent": 50}]}]}]}"#,
                "rules[0].split[1].schedule[0].percent: the percents of rules[0].split add up to 110 from 2026-12-03T09:00:00Z",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "schedule": [{"at": "2026-12-02T09:00:00Z"}]}]}]}"#,
                "rules[0].split[0].schedule[0].percent: is required",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "guard": {"max_error_percent": 5}}]}"#,
                "rules[0].guard: only a `split` rule can have a guard",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {}}]}"#,
                "rules[0].guard.max_error_percent: is required",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 0}}]}"#,
                "rules[0].guard.max_error_percent: must be above 0",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 101}}]}"#,
                "rules[0].guard.max_error_percent: must be between 0 and 100, got 101",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "min_requests": 0}}]}"#,
                "rules[0].guard.min_requests: must be between 1 and 1000000, got 0",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "window_s": 4}}]}"#,
                "rules[0].guard.window_s: must be between 5 and 3600, got 4",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "slow_ms": 600001}}]}"#,
                "rules[0].guard.slow_ms: must be between 1 and 600000, got 600001",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "attempt": 0}}]}"#,
                "rules[0].guard.attempt: must be a positive integer, got 0",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "statuses": ["5xx", "3xx"]}}]}"#,
                "rules[0].guard.statuses[1]: must be \"5xx\", \"4xx\" or a status code 100..599, got \"3xx\"",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "statuses": [600]}}]}"#,
                "rules[0].guard.statuses[0]: must be",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "statuses": []}}]}"#,
                "rules[0].guard.statuses: must not be empty",
            ),
            (
                r#"{"stable": "v1", ID, "rules": [{"name": "a", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "window": 60}}]}"#,
                "rules[0].guard.window: unknown field `window`",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"claim": ""}]}}"#,
                "identity.from[0].claim: must not be empty",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"body": "user"}]}}"#,
                "identity.from[0].body: must be a JSON pointer like /user (it starts with /), got \"user\"",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"body": "/a~2b"}]}}"#,
                "identity.from[0].body: must be a JSON pointer like /user (~ is only ~0 or ~1)",
            ),
            (
                r#"{"stable": "v1", "identity": {"from": [{"claim": "sub", "header": "x"}]}}"#,
                "identity.from[0]: give exactly one of `header`, `cookie`, `query`, `claim`, `body`",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"claims": [{"name": "dept"}]}}]}"#,
                "rules[0].when.claims[0]: \"dept\": give exactly one of",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"body": [{"pointer": "model", "exact": "x"}]}}]}"#,
                "rules[0].when.body[0].pointer: must be a JSON pointer",
            ),
            (
                r#"{"stable": "v1", "rules": [{"name": "a", "version": "v2", "when": {"body": [{"name": "/model", "exact": "x"}]}}]}"#,
                "rules[0].when.body[0].name: unknown field `name`",
            ),
            (r#"{"stable": "v1", "claims": {"metadata_key": ""}}"#, "claims.metadata_key: must not be empty"),
            (r#"{"stable": "v1", "claims": {"key": "x"}}"#, "claims.key: unknown field `key`"),
            (
                r#"{"stable": "v1", "body": {"max_bytes": 983041}}"#,
                "body.max_bytes: must be between 1024 and 983040 bytes, got 983041",
            ),
            (
                r#"{"stable": "v1", "session_pin": {"cookie": "p", "idle_s": 600, "max_s": 599, "key": "0123456789abcdef0123456789abcdef"}}"#,
                "session_pin.max_s: must be between 600 (idle_s) and 2592000 seconds, got 599",
            ),
            (
                r#"{"stable": "v1", "session_pin": {"cookie": "p", "idle_s": 600, "max_s": 2592001, "key": "0123456789abcdef0123456789abcdef"}}"#,
                "session_pin.max_s: must be between 600 (idle_s) and 2592000 seconds, got 2592001",
            ),
            (r#"{"stable": "v1", "body": {"max_bytes": 100}}"#, "body.max_bytes: must be between 1024"),
            (
                r#"{"stable": "v1", "session_pin": {"cookie": "p", "idle_s": 600, "key": "short"}}"#,
                "session_pin.key: must be at least 32 characters (a random secret), got 5",
            ),
            (
                r#"{"stable": "v1", "session_pin": {"cookie": "p", "idle_s": 5, "key": "0123456789abcdef0123456789abcdef"}}"#,
                "session_pin.idle_s: must be between 10 and 604800 seconds, got 5",
            ),
            (
                r#"{"stable": "v1", "session_pin": {"cookie": "p", "idle_s": 60, "key": "0123456789abcdef0123456789abcdef", "previous_keys": ["x"]}}"#,
                "session_pin.previous_keys[0]: must be at least 32 characters",
            ),
            (
                r#"{"stable": "v1", "session_pin": {"cookie": "a b", "idle_s": 60, "key": "0123456789abcdef0123456789abcdef"}}"#,
                "session_pin.cookie: must be a valid cookie name",
            ),
            (
                r#"{"stable": "v1", "identity": {"sticky_cookie": {"name": "p", "max_age_s": 600}}, "session_pin": {"cookie": "p", "idle_s": 60, "key": "0123456789abcdef0123456789abcdef"}}"#,
                "session_pin.cookie: must differ from identity.sticky_cookie.name",
            ),
            (r#"{"stable": "v1", "session_pin": {"idle_s": 60}}"#, "session_pin.cookie: is required"),
        ];
        let mut wrong = Vec::new();
        for (json, want) in cases {
            let json = json.replace("ID", ID);
            let got = err(&json);
            if !got.starts_with(want) {
                wrong.push(format!("config {json}\n  want prefix: {want}\n  got:         {got}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn split_bands_are_cumulative_bucket_bounds() {
        let plan = parse(
            format!(r#"{{"stable": "v1", {ID}, "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 10}}, {{"version": "v3", "percent": 5.5}}, {{"version": "v4", "percent": 0}}]}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        let bands = plan.split_bands(0, 0).unwrap();
        assert_eq!(bands, [("v2", 0, 1000), ("v3", 1000, 1550), ("v4", 1550, 1550), ("v1", 1550, 10000)]);
        let Action::Split(split) = &plan.rules[0].action else { panic!("not a split") };
        assert_eq!(&split.salt_colon[..], b"r:", "salt defaults to the rule name");
        assert!(!split.scheduled && split.guard.is_none());
        assert!(plan.gauges.is_empty() && plan.watches.is_empty(), "no v2 metrics for a v1 split");
    }

    #[test]
    fn known_versions_include_disabled_and_expired_rules() {
        let plan = parse(
            br#"{"stable": "v1", "rules": [
            {"name": "off", "version": "v2", "enabled": false},
            {"name": "old", "version": "v3", "expires_at": "2000-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(plan.versions, ["v1", "v2", "v3"]);
        assert_eq!(plan.version_id(b"v3"), Some(2));
        assert_eq!(plan.version_id(b"v9"), None);
    }

    #[test]
    fn only_needed_headers_are_read() {
        let plan = parse(br#"{"stable": "v1", "rules": [
            {"name": "a", "version": "v2", "when": {"headers": [{"name": "x-dept", "exact": "legal"}, {"name": "x-dept", "prefix": "l"}]}}]}"#)
        .unwrap();
        assert_eq!(plan.headers, [":path", ":method", "x-dept"], "one slot per distinct name");
    }

    #[test]
    fn llm_and_guards_on_answers_compile_with_their_metrics() {
        let plan = parse(
            br#"{"stable": "v2.0", "identity": {"from": [{"header": "x-user-id"}]},
              "llm": {"paths": ["/v1/"], "max_event_bytes": 8192},
              "rules": [{"name": "ramp", "split": [{"version": "v2.1", "percent": 5}],
                "guard": {"max_error_percent": 5, "first_token_ms": 3000, "finishes": ["length", "error"], "max_output_ratio": 1.5}}]}"#,
        )
        .unwrap();
        let llm = plan.llm.as_ref().unwrap();
        assert_eq!(llm.max_event_bytes, 8192);
        assert!(llm.reads(b"/v1/chat/completions") && !llm.reads(b"/v2/x") && !llm.reads(b"/v1"));
        let g = plan.rule_guard(0).unwrap();
        assert_eq!((g.first_token_ms, g.max_output_ratio), (Some(3000), Some(150)));
        use crate::llm::Finish;
        assert!(g.finish_is_error(Finish::Length) && g.finish_is_error(Finish::Error));
        assert!(
            !g.finish_is_error(Finish::Aborted) && !g.finish_is_error(Finish::Stop),
            "finishes replaces the default"
        );
        for m in [
            "graysplit_llm_tokens_total.rule.ramp.version.v2.1.kind.input",
            "graysplit_llm_tokens_total.rule.ramp.version.v2.0.kind.reasoning",
            "graysplit_llm_answers_total.rule.ramp.version.v2.1.finish.aborted",
            "graysplit_llm_answers_total.rule.default.version.v2.0.finish.unknown",
        ] {
            assert!(plan.metrics.iter().any(|x| x == m), "missing counter {m}");
        }
        assert!(plan.histograms.iter().any(|h| h == "graysplit_llm_first_token_ms.rule.ramp.version.v2.1"));
        assert!(plan.histograms.iter().any(|h| h == "graysplit_llm_output_tokens.rule.default.version.v2.0"));
        let decided = plan
            .metrics
            .iter()
            .position(|m| m == "graysplit_decisions_total.rule.ramp.version.v2.1")
            .unwrap();
        let a = plan.answers[decided].as_ref().unwrap();
        assert_eq!(
            plan.metrics[a.finishes[Finish::Stop.index()]],
            "graysplit_llm_answers_total.rule.ramp.version.v2.1.finish.stop"
        );
        assert_eq!(
            plan.metrics[a.tokens[1]],
            "graysplit_llm_tokens_total.rule.ramp.version.v2.1.kind.output"
        );

        let default = parse(br#"{"stable": "v1", "identity": {"from": [{"header": "u"}]}, "llm": {},
              "rules": [{"name": "r", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5}}]}"#).unwrap();
        let g = default.rule_guard(0).unwrap();
        assert!(
            g.finish_is_error(Finish::Aborted)
                && g.finish_is_error(Finish::Error)
                && !g.finish_is_error(Finish::Length)
        );
        assert!(default.llm.as_ref().unwrap().reads(b"/anything"), "no paths: every path");
        let v2 = parse(br#"{"stable": "v1", "identity": {"from": [{"header": "u"}]},
              "rules": [{"name": "r", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5}}]}"#).unwrap();
        assert!(
            v2.histograms.is_empty() && !v2.metrics.iter().any(|m| m.contains("llm")),
            "no llm: no llm metrics"
        );
        assert!(!v2.rule_guard(0).unwrap().finish_is_error(Finish::Aborted), "no llm: endings count nothing");
        assert_eq!(
            v2.rule_guard(0).unwrap().fingerprint,
            g.fingerprint,
            "adding llm keeps a guard (and its trips)"
        );
        let ft = parse(br#"{"stable": "v1", "identity": {"from": [{"header": "u"}]}, "llm": {},
              "rules": [{"name": "r", "split": [{"version": "v2", "percent": 5}], "guard": {"max_error_percent": 5, "first_token_ms": 100}}]}"#).unwrap();
        assert_ne!(
            ft.rule_guard(0).unwrap().fingerprint,
            g.fingerprint,
            "a v3 field written is another guard"
        );
    }

    #[test]
    fn bad_llm_and_answer_guard_fields_name_their_path() {
        let guard = |g: &str, llm: &str| {
            err(&format!(
                r#"{{"stable": "v1", "identity": {{"from": [{{"header": "u"}}]}}{llm},
                "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}], "guard": {g}}}]}}"#
            ))
        };
        let cases: &[(String, &str)] = &[
            (guard(r#"{"max_error_percent": 5, "first_token_ms": 3000}"#, ""), "rules[0].guard.first_token_ms: needs `llm`"),
            (guard(r#"{"max_error_percent": 5, "finishes": ["length"]}"#, ""), "rules[0].guard.finishes: needs `llm`"),
            (guard(r#"{"max_error_percent": 5, "max_output_ratio": 2}"#, ""), "rules[0].guard.max_output_ratio: needs `llm`"),
            (guard(r#"{"max_error_percent": 5, "first_token_ms": 0}"#, r#", "llm": {}"#), "rules[0].guard.first_token_ms: must be between 1 and 600000, got 0"),
            (guard(r#"{"max_error_percent": 5, "first_token_ms": 600001}"#, r#", "llm": {}"#), "rules[0].guard.first_token_ms: must be between 1 and 600000, got 600001"),
            (guard(r#"{"max_error_percent": 5, "finishes": ["stop", "late"]}"#, r#", "llm": {}"#), "rules[0].guard.finishes[1]: must be one of stop, length, tool_calls, content_filter, error, aborted, unknown, got \"late\""),
            (guard(r#"{"max_error_percent": 5, "finishes": "error"}"#, r#", "llm": {}"#), "rules[0].guard.finishes: invalid type"),
            (guard(r#"{"max_error_percent": 5, "max_output_ratio": 1}"#, r#", "llm": {}"#), "rules[0].guard.max_output_ratio: must be between 1.01 and 100, got 1"),
            (guard(r#"{"max_error_percent": 5, "max_output_ratio": 100.5}"#, r#", "llm": {}"#), "rules[0].guard.max_output_ratio: must be between 1.01 and 100, got 100.5"),
            (guard(r#"{"max_error_percent": 5, "max_output_ratio": 1.505}"#, r#", "llm": {}"#), "rules[0].guard.max_output_ratio: at most two decimals are allowed, got 1.505"),
            (err(r#"{"stable": "v1", "llm": {"max_event_bytes": 4095}}"#), "llm.max_event_bytes: must be between 4096 and 1048576 bytes, got 4095"),
            (err(r#"{"stable": "v1", "llm": {"max_event_bytes": 1048577}}"#), "llm.max_event_bytes: must be between 4096 and 1048576 bytes, got 1048577"),
            (err(r#"{"stable": "v1", "llm": {"paths": []}}"#), "llm.paths: must not be empty"),
            (err(r#"{"stable": "v1", "llm": {"paths": ["/v1/", "v1/chat"]}}"#), "llm.paths[1]: must be a path prefix starting with \"/\", got \"v1/chat\""),
            (err(r#"{"stable": "v1", "llm": {"path": ["/v1/"]}}"#), "llm.path: unknown field `path`"),
            (err(r#"{"stable": "v1", "llm": []}"#), "llm: invalid type: sequence, expected an object"),
        ];
        for (got, want) in cases {
            assert!(got.starts_with(want), "got {got:?}, want it to start with {want:?}");
        }
    }

    /// DESIGN.md "Configuration v3"'s example, less what other issues add and the config does
    /// not know yet: `versions`, `lane` and the first rule's `when.prompt` (that rule is left
    /// as a plain split).
    const V3_EXAMPLE_KNOWN_PARTS: &str = r#"{
      "stable": "v2.0",
      "identity": {"from": [{"body": "/user"}, {"header": "x-user-id"}]},
      "llm": {},
      "shadow_sink": {"cluster": "otel-collector", "authority": "otel-collector:4318"},
      "rules": [
        {"name": "ppt-pilot",
         "split": [{"version": "v2.1", "percent": 50}]},
        {"name": "ramp", "salt": "release-2.1",
         "split": [{"version": "v2.1", "percent": 5}],
         "guard": {"max_error_percent": 5, "first_token_ms": 3000, "max_output_ratio": 1.5},
         "shadow": {"version": "v2.1", "percent": 2, "cluster": "app-v2-1", "salt": "shadow-2.1"}}
      ]
    }"#;

    const SHADOW_RESULTS: [&str; 7] =
        ["sent", "paired", "shadow_failed", "timed_out", "skipped_busy", "skipped_size", "sink_failed"];

    #[test]
    fn design_v3_example_compiles_with_its_shadow_and_sink() {
        let plan = parse(V3_EXAMPLE_KNOWN_PARTS.as_bytes()).unwrap();
        assert!(plan.rule_shadow(0).is_none(), "ppt-pilot has no shadow");
        let s = plan.rule_shadow(1).unwrap();
        assert_eq!(plan.shadows.len(), 1);
        assert_eq!((s.rule, plan.version_name(s.version), s.bound_bp), (1, "v2.1", 200));
        assert_eq!((s.salt.as_str(), &s.salt_colon[..]), ("shadow-2.1", &b"shadow-2.1:"[..]));
        assert_eq!((s.cluster.as_str(), s.authority.as_deref()), ("app-v2-1", None));
        assert!(s.path_prefixes.is_empty() && s.covers(b"/v1/chat/completions") && s.covers(b"/"));
        assert_eq!(
            (s.timeout_ms, s.max_in_flight, s.max_bytes, s.max_event_bytes),
            (60_000, 8, 262_144, 65_536)
        );
        assert_eq!(
            plan.sink,
            Some(SinkSpec {
                cluster: "otel-collector".into(),
                path: "/v1/logs".into(),
                authority: "otel-collector:4318".into(),
                capture_text: false,
                batch: 50,
            })
        );
        let m = s.metrics;
        let ids =
            [m.sent, m.paired, m.shadow_failed, m.timed_out, m.skipped_busy, m.skipped_size, m.sink_failed];
        for (id, result) in ids.iter().zip(SHADOW_RESULTS) {
            assert_eq!(plan.metrics[*id], format!("graysplit_shadow_total.rule.ramp.result.{result}"));
        }
        assert_eq!(plan.histograms[s.similarity], "graysplit_shadow_similarity_pct.rule.ramp");
        assert!(
            !plan.metrics.iter().any(|x| x.starts_with("graysplit_shadow_total.rule.ppt-pilot")),
            "only rules with a shadow have its counters"
        );
        assert_eq!(
            plan.histograms.iter().filter(|h| h.starts_with("graysplit_shadow_")).count(),
            1,
            "one similarity histogram per shadow"
        );
        assert!(plan.rule_guard(1).is_some() && plan.llm.is_some());
    }

    #[test]
    fn shadow_and_sink_defaults_and_limits() {
        // Defaults: salt the rule's salt (here its name) + ":shadow", authority the request's,
        // every path; the sink's path /v1/logs and authority its cluster's name. A version no
        // split names may be shadowed: it becomes known (the override reaches it).
        let plan = parse(
            format!(
                r#"{{"stable": "v1", {ID}, "shadow_sink": {{"cluster": "otel"}},
                "override": {{"header": "x-o", "trusted_cidrs": ["127.0.0.1/32"]}},
                "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}],
                  "shadow": {{"version": "v3", "percent": 12.34, "cluster": "gray"}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(plan.versions, ["v1", "v2", "v3"]);
        assert!(plan.metrics.iter().any(|x| x == "graysplit_decisions_total.rule.override.version.v3"));
        let s = plan.rule_shadow(0).unwrap();
        assert_eq!((s.version, s.bound_bp, s.salt.as_str()), (2, 1234, "r:shadow"));
        let mut cohort = 0;
        for n in 0..2000 {
            let user = format!("user-{n}");
            let inside = crate::bucket::bucket(b"r:shadow:", user.as_bytes()) < 1234;
            assert_eq!(s.in_cohort(user.as_bytes()), inside, "{user}");
            cohort += usize::from(inside);
        }
        assert!((150..350).contains(&cohort), "about 12.34% of 2000 users, got {cohort}");
        assert_eq!(s.max_event_bytes, 65_536, "no llm: its default");
        assert!(
            plan.llm.is_none() && !plan.metrics.iter().any(|m| m.contains("llm")),
            "a shadow does not turn on llm"
        );
        let sink = plan.sink.as_ref().unwrap();
        assert_eq!(
            (sink.path.as_str(), sink.authority.as_str(), sink.capture_text, sink.batch),
            ("/v1/logs", "otel", false, 50)
        );

        // Every field written, at the ends of its range.
        let both = |shadow: &str, sink: &str| {
            parse(
                format!(
                    r#"{{"stable": "v1", {ID}, "llm": {{"max_event_bytes": 8192}}, "shadow_sink": {sink},
                    "rules": [{{"name": "r", "salt": "s1", "split": [{{"version": "v2", "percent": 5}}], "shadow": {shadow}}}]}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let low = both(
            r#"{"version": "v2", "percent": 0, "salt": "other", "cluster": "gray", "authority": "gray.example:8443",
                "path_prefixes": ["/v1/chat/", "/v1/responses"], "timeout_ms": 100, "max_in_flight": 1, "max_bytes": 1024}"#,
            r#"{"cluster": "otel", "path": "/otlp/v1/logs?x=1", "authority": "[::1]:4318", "capture_text": true, "batch": 1}"#,
        );
        let s = low.rule_shadow(0).unwrap();
        assert_eq!(
            (s.bound_bp, s.salt.as_str(), s.authority.as_deref()),
            (0, "other", Some("gray.example:8443"))
        );
        assert_eq!((s.timeout_ms, s.max_in_flight, s.max_bytes, s.max_event_bytes), (100, 1, 1024, 8192));
        assert!(s.covers(b"/v1/chat/completions") && s.covers(b"/v1/responses") && !s.covers(b"/v1/models"));
        assert!(!s.in_cohort(b"anyone"), "0 percent shadows nobody");
        assert_eq!(
            low.sink,
            Some(SinkSpec {
                cluster: "otel".into(),
                path: "/otlp/v1/logs?x=1".into(),
                authority: "[::1]:4318".into(),
                capture_text: true,
                batch: 1,
            })
        );
        let high = both(
            r#"{"version": "v2", "percent": 100, "cluster": "gray", "timeout_ms": 600000, "max_in_flight": 256, "max_bytes": 983040}"#,
            r#"{"cluster": "otel", "batch": 1000}"#,
        );
        let s = high.rule_shadow(0).unwrap();
        assert_eq!((s.bound_bp, s.salt.as_str()), (10_000, "s1:shadow"), "the rule's written salt + :shadow");
        assert_eq!((s.timeout_ms, s.max_in_flight, s.max_bytes), (600_000, 256, 983_040));
        assert!(s.in_cohort(b"anyone"), "100 percent shadows every stable-decided user");
        assert_eq!(high.sink.as_ref().unwrap().batch, 1000);

        // No shadow: no shadow metrics, and a sink no rule uses is checked, then left out.
        let unused = parse(
            format!(r#"{{"stable": "v1", {ID}, "shadow_sink": {{"cluster": "otel"}}, "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}]}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert!(unused.sink.is_none() && unused.shadows.is_empty() && unused.rule_shadow(0).is_none());
        assert!(!unused.metrics.iter().any(|m| m.contains("shadow")) && unused.histograms.is_empty());
        assert!(err(r#"{"stable": "v1", "shadow_sink": {"cluster": "otel", "batch": 0}}"#)
            .starts_with("shadow_sink.batch: must be between 1 and 1000 records, got 0"));
    }

    #[test]
    fn bad_shadow_and_sink_fields_name_their_path() {
        let shadow = |sh: &str| {
            err(&format!(
                r#"{{"stable": "v1", {ID}, "shadow_sink": {{"cluster": "otel"}},
                "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}], "shadow": {sh}}}]}}"#
            ))
        };
        let with = |fields: &str| {
            shadow(&format!(r#"{{"version": "v2", "percent": 5, "cluster": "gray", {fields}}}"#))
        };
        let sink = |sk: &str| {
            err(&format!(
                r#"{{"stable": "v1", {ID}, "shadow_sink": {sk},
                "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}], "shadow": {{"version": "v2", "percent": 5, "cluster": "gray"}}}}]}}"#
            ))
        };
        let cases: &[(String, &str)] = &[
            (
                err(&format!(r#"{{"stable": "v1", {ID}, "shadow_sink": {{"cluster": "otel"}}, "rules": [{{"name": "r", "version": "v2", "shadow": {{"version": "v2", "percent": 5, "cluster": "gray"}}}}]}}"#)),
                "rules[0].shadow: only a `split` rule can have a shadow (it shadows the users the split keeps on stable)",
            ),
            (
                err(&format!(r#"{{"stable": "v1", {ID}, "rules": [{{"name": "a", "version": "v2"}}, {{"name": "r", "split": [{{"version": "v2", "percent": 5}}], "shadow": {{"version": "v2", "percent": 5, "cluster": "gray"}}}}]}}"#)),
                "rules[1].shadow: needs `shadow_sink`, where the paired records go: add \"shadow_sink\": {\"cluster\": ",
            ),
            (shadow(r#"[]"#), "rules[0].shadow: invalid type: sequence, expected an object"),
            (shadow(r#"{"percent": 5, "cluster": "gray"}"#), "rules[0].shadow.version: is required"),
            (shadow(r#"{"version": "v2", "cluster": "gray"}"#), "rules[0].shadow.percent: is required"),
            (shadow(r#"{"version": "v2", "percent": 5}"#), "rules[0].shadow.cluster: is required"),
            (with(r#""timeout": 5"#), "rules[0].shadow.timeout: unknown field `timeout`"),
            (
                shadow(r#"{"version": "v1", "percent": 5, "cluster": "gray"}"#),
                "rules[0].shadow.version: must be a version other than stable \"v1\"",
            ),
            (shadow(r#"{"version": "v 2", "percent": 5, "cluster": "gray"}"#), "rules[0].shadow.version: must be a version name"),
            (shadow(r#"{"version": "v2", "percent": 120, "cluster": "gray"}"#), "rules[0].shadow.percent: must be between 0 and 100, got 120"),
            (shadow(r#"{"version": "v2", "percent": -1, "cluster": "gray"}"#), "rules[0].shadow.percent: must be between 0 and 100, got -1"),
            (
                shadow(r#"{"version": "v2", "percent": 10.555, "cluster": "gray"}"#),
                "rules[0].shadow.percent: at most two decimals are allowed, got 10.555",
            ),
            (shadow(r#"{"version": "v2", "percent": "5", "cluster": "gray"}"#), "rules[0].shadow.percent: invalid type: string \"5\", expected f64"),
            (with(r#""salt": """#), "rules[0].shadow.salt: must not be empty"),
            (
                with(r#""salt": "r""#),
                "rules[0].shadow.salt: must differ from the rule's salt \"r\": with the same salt the shadow's buckets are the split's",
            ),
            (shadow(r#"{"version": "v2", "percent": 5, "cluster": ""}"#), "rules[0].shadow.cluster: must not be empty"),
            (with(r#""authority": """#), "rules[0].shadow.authority: must be a host or host:port (visible ASCII, no /, ?, # or @), got \"\""),
            (with(r#""authority": "gray app""#), "rules[0].shadow.authority: must be a host or host:port"),
            (with(r#""authority": "http://gray""#), "rules[0].shadow.authority: must be a host or host:port"),
            (with(r#""path_prefixes": []"#), "rules[0].shadow.path_prefixes: must not be empty (leave `path_prefixes` out to shadow every path)"),
            (
                with(r#""path_prefixes": ["/v1/", "v1/chat"]"#),
                "rules[0].shadow.path_prefixes[1]: must be a path prefix starting with \"/\", got \"v1/chat\"",
            ),
            (with(r#""path_prefixes": "/v1/""#), "rules[0].shadow.path_prefixes: invalid type: string \"/v1/\", expected a sequence"),
            (with(r#""timeout_ms": 99"#), "rules[0].shadow.timeout_ms: must be between 100 and 600000 ms, got 99"),
            (with(r#""timeout_ms": 600001"#), "rules[0].shadow.timeout_ms: must be between 100 and 600000 ms, got 600001"),
            (with(r#""max_in_flight": 0"#), "rules[0].shadow.max_in_flight: must be between 1 and 256, got 0"),
            (with(r#""max_in_flight": 257"#), "rules[0].shadow.max_in_flight: must be between 1 and 256, got 257"),
            (with(r#""max_bytes": 1023"#), "rules[0].shadow.max_bytes: must be between 1024 and 983040 bytes, got 1023"),
            (with(r#""max_bytes": 983041"#), "rules[0].shadow.max_bytes: must be between 1024 and 983040 bytes, got 983041"),
            (with(r#""max_bytes": -1"#), "rules[0].shadow.max_bytes: invalid value: integer `-1`, expected u64"),
            (sink(r#"[]"#), "shadow_sink: invalid type: sequence, expected an object"),
            (sink(r#"{}"#), "shadow_sink.cluster: is required"),
            (sink(r#"{"cluster": ""}"#), "shadow_sink.cluster: must not be empty"),
            (sink(r#"{"cluster": "otel", "url": "http://otel"}"#), "shadow_sink.url: unknown field `url`"),
            (
                sink(r#"{"cluster": "otel", "path": "v1/logs"}"#),
                "shadow_sink.path: must be a path starting with \"/\", in visible ASCII (percent-encode anything else), got \"v1/logs\"",
            ),
            (sink(r#"{"cluster": "otel", "path": "/v1/my logs"}"#), "shadow_sink.path: must be a path starting with \"/\""),
            (sink(r#"{"cluster": "otel", "authority": ""}"#), "shadow_sink.authority: must be a host or host:port"),
            (
                sink(r#"{"cluster": "otel collector"}"#),
                "shadow_sink.authority: is required: the cluster's name \"otel collector\" is not a host or host:port",
            ),
            (sink(r#"{"cluster": "otel", "capture_text": "yes"}"#), "shadow_sink.capture_text: invalid type: string \"yes\", expected a boolean"),
            (sink(r#"{"cluster": "otel", "batch": 0}"#), "shadow_sink.batch: must be between 1 and 1000 records, got 0"),
            (sink(r#"{"cluster": "otel", "batch": 1001}"#), "shadow_sink.batch: must be between 1 and 1000 records, got 1001"),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(got, want)| !got.starts_with(want))
            .map(|(got, want)| format!("  want prefix: {want}\n  got:         {got}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn design_v2_example_compiles_with_its_metrics() {
        let plan = parse(
            br#"{
          "stable": "v2.0",
          "identity": {"from": [{"header": "x-user-id"}]},
          "rules": [
            {"name": "ramp", "salt": "release-2.1",
             "split": [{"version": "v2.1", "schedule": [
               {"at": "2026-12-02T09:00:00Z", "percent": 1}, {"at": "2026-12-02T10:00:00Z", "percent": 10},
               {"at": "2026-12-03T09:00:00Z", "percent": 50}, {"at": "2026-12-04T09:00:00Z", "percent": 100}]}],
             "guard": {"max_error_percent": 5, "min_requests": 50, "window_s": 60},
             "expires_at": "2026-12-11T09:00:00Z"}
          ]
        }"#,
        )
        .unwrap();
        let t = |s: &str| time::parse_rfc3339(s).unwrap();
        let at = |s: &str| plan.split_bands(0, t(s)).unwrap()[0].2;
        assert_eq!(at("2026-12-02T08:59:59Z"), 0, "0 before the first step");
        assert_eq!(at("2026-12-02T09:00:00Z"), 100, "a step is live from its `at`");
        assert_eq!(at("2026-12-02T09:59:59.999Z"), 100);
        assert_eq!(at("2026-12-02T10:00:00Z"), 1000);
        assert_eq!(at("2026-12-04T09:00:00Z"), 10000);
        let g = plan.rule_guard(0).unwrap();
        assert_eq!((g.max_error_bp, g.min_requests, g.window_s, g.attempt), (500, 50, 60, 1));
        assert!(g.statuses.is_error(503) && !g.statuses.is_error(404) && g.slow_ms.is_none());
        for m in [
            "graysplit_guard_responses_total.rule.ramp.version.v2.1.result.ok",
            "graysplit_guard_responses_total.rule.ramp.version.v2.1.result.error",
            "graysplit_guard_responses_total.rule.ramp.version.v2.0.result.ok",
            "graysplit_guard_trips_total.rule.ramp.version.v2.1",
        ] {
            assert!(plan.metrics.iter().any(|x| x == m), "missing counter {m}");
        }
        assert!(
            !plan.metrics.iter().any(|x| x == "graysplit_guard_trips_total.rule.ramp.version.v2.0"),
            "stable never trips"
        );
        assert_eq!(
            plan.gauges,
            [
                "graysplit_guard_tripped.rule.ramp.version.v2.1",
                "graysplit_split_basis_points.rule.ramp.version.v2.1"
            ]
        );
        assert_eq!(plan.watches.len(), 2, "stable and v2.1");
    }

    #[test]
    fn only_plans_that_read_claims_or_bodies_fetch_them() {
        let v1 =
            parse(br#"{"stable": "v1", "claims": {"metadata_key": "jwt"}, "body": {"max_bytes": 2048}}"#)
                .unwrap();
        assert_eq!((v1.claims_key, v1.body), (None, None), "configured but unused: nothing is read");
        let both = parse(
            br#"{"stable": "v1", "claims": {"metadata_key": "jwt"}, "body": {"max_bytes": 2048},
                "identity": {"from": [{"claim": "sub"}]},
                "rules": [{"name": "m", "when": {"body": [{"pointer": "/model", "exact": "x"}]}, "version": "v2"}]}"#,
        )
        .unwrap();
        assert_eq!(both.claims_key.as_deref(), Some("jwt"));
        assert_eq!(both.body, Some(BodySpec { max_bytes: 2048 }));
        let defaults =
            parse(br#"{"stable": "v1", "identity": {"from": [{"claim": "sub"}, {"body": "/user"}]}}"#)
                .unwrap();
        assert_eq!(
            (defaults.claims_key.as_deref(), defaults.body.map(|b| b.max_bytes)),
            (Some("payload"), Some(65536))
        );
        let pins = parse(br#"{"stable": "v1", "session_pin": {"cookie": "p", "idle_s": 60, "key": "0123456789abcdef0123456789abcdef"}}"#).unwrap();
        for m in [
            "graysplit_pins_total.result.kept",
            "graysplit_pins_total.result.issued",
            "graysplit_pins_total.result.ignored",
        ] {
            assert!(pins.metrics.iter().any(|x| x == m), "{m}");
        }
        assert!(!v1.metrics.iter().any(|m| m.starts_with("graysplit_pins_total")));
    }

    const LANE_KEY: &str = "a secret of at least 32 characters, shared by the mesh";

    #[test]
    fn a_lane_compiles_with_its_defaults_and_metrics() {
        let edge = parse(
            format!(r#"{{"stable": "v1", {ID}, "lane": {{"mode": "edge", "key": "{LANE_KEY}"}}, "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}]}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        let l = edge.lane.as_ref().unwrap();
        assert_eq!((l.mode, l.baggage_key.as_str(), l.ttl_s), (LaneMode::Edge, "graysplit", 300));
        assert_eq!(l.keys, vec![LANE_KEY.as_bytes().into()]);
        assert!(l.trusted.is_empty() && l.decided.is_empty(), "an edge decides by its rules");
        for r in ["issued", "followed", "forged", "expired", "untrusted", "absent", "too_long"] {
            let m = format!("graysplit_lane_total.result.{r}");
            assert!(edge.metrics.contains(&m), "{m}");
        }
        let follow = parse(
            format!(r#"{{"stable": "v1", {ID}, "lane": {{"mode": "follow", "key": "{LANE_KEY}", "previous_keys": ["{LANE_KEY} (old)"], "baggage_key": "gray-lane", "trusted_cidrs": ["10.0.0.0/8"]}}, "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}]}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        let l = follow.lane.as_ref().unwrap();
        assert_eq!(
            (l.mode, l.baggage_key.as_str(), l.keys.len(), l.trusted.len()),
            (LaneMode::Follow, "gray-lane", 2, 1)
        );
        let names: Vec<&str> = l.decided.iter().map(|m| follow.metrics[*m].as_str()).collect();
        assert_eq!(
            names,
            [
                "graysplit_decisions_total.rule.lane.version.v1",
                "graysplit_decisions_total.rule.lane.version.v2"
            ]
        );
        // Without `lane`: no lane metrics, and a rule may be called lane (v1 configs stay valid).
        let plain = parse(
            format!(r#"{{"stable": "v1", {ID}, "rules": [{{"name": "lane", "split": [{{"version": "v2", "percent": 5}}]}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert!(plain.lane.is_none() && !plain.metrics.iter().any(|m| m.contains("lane_total")));
    }

    #[test]
    fn bad_lane_fields_name_their_path() {
        let lane = |fields: &str| {
            err(&format!(
                r#"{{"stable": "v1", {ID}, "lane": {{{fields}}}, "rules": [{{"name": "r", "split": [{{"version": "v2", "percent": 5}}]}}]}}"#
            ))
        };
        let key = format!(r#""key": "{LANE_KEY}""#);
        let cases: &[(String, &str)] = &[
            (lane(&format!(r#""mode": "sidecar", {key}"#)), "lane.mode: must be \"edge\""),
            (lane(&key), "lane.mode: is required"),
            (lane(r#""mode": "edge""#), "lane.key: is required"),
            (
                lane(r#""mode": "edge", "key": "short""#),
                "lane.key: must be at least 32 characters (a random secret), got 5",
            ),
            (
                lane(&format!(r#""mode": "follow", {key}, "previous_keys": ["{LANE_KEY}", "short"]"#)),
                "lane.previous_keys[1]: must be at least 32 characters",
            ),
            (
                lane(&format!(r#""mode": "edge", {key}, "ttl_s": 9"#)),
                "lane.ttl_s: must be between 10 and 86400 seconds, got 9",
            ),
            (
                lane(&format!(r#""mode": "edge", {key}, "ttl_s": 86401"#)),
                "lane.ttl_s: must be between 10 and 86400 seconds, got 86401",
            ),
            (
                lane(&format!(r#""mode": "edge", {key}, "baggage_key": "a b""#)),
                "lane.baggage_key: must be 1 to 64 token characters",
            ),
            (
                lane(&format!(r#""mode": "edge", {key}, "baggage_key": """#)),
                "lane.baggage_key: must be 1 to 64 token characters",
            ),
            (
                lane(&format!(r#""mode": "edge", {key}, "trusted_cidrs": ["10.0.0.0/8"]"#)),
                "lane.trusted_cidrs: only with mode \"follow\"",
            ),
            (
                lane(&format!(r#""mode": "follow", {key}, "trusted_cidrs": []"#)),
                "lane.trusted_cidrs: must list at least one range",
            ),
            (
                lane(&format!(r#""mode": "follow", {key}, "trusted_cidrs": ["10.0.0.0/33"]"#)),
                "lane.trusted_cidrs[0]: ",
            ),
            (lane(&format!(r#""mode": "edge", {key}, "ttl": 5"#)), "lane.ttl: unknown field `ttl`"),
            (
                err(&format!(
                    r#"{{"stable": "v1", {ID}, "lane": {{"mode": "edge", {key}}}, "rules": [{{"name": "lane", "version": "v2"}}]}}"#
                )),
                "rules[0].name: \"lane\" is reserved for decisions by a lane in a config with `lane`",
            ),
        ];
        for (got, want) in cases {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}...");
        }
    }

    #[test]
    fn a_lane_key_can_come_from_the_proxys_environment() {
        let env = |name: &str| match name {
            "LANE_KEY" => Some(LANE_KEY.to_string()),
            "OLD_KEY" => Some(format!("{LANE_KEY} (old)")),
            "EMPTY" => Some(String::new()),
            "SHORT" => Some("short".to_string()),
            _ => None,
        };
        let lane = |fields: &str| {
            parse_in(
                format!(r#"{{"stable": "v1", "lane": {{"mode": "follow", {fields}}}}}"#).as_bytes(),
                &env,
            )
        };
        let p = lane(r#""key_env": "LANE_KEY", "previous_keys_env": ["OLD_KEY", "UNSET", "EMPTY"]"#).unwrap();
        let keys: Vec<&[u8]> = p.lane.as_ref().unwrap().keys.iter().map(|k| &k[..]).collect();
        assert_eq!(
            keys,
            [LANE_KEY.as_bytes(), format!("{LANE_KEY} (old)").as_bytes()],
            "unset and empty give none"
        );
        let cases: &[(&str, &str)] = &[
            (r#""key_env": "UNSET""#, "lane.key_env: \"UNSET\" is not set in the proxy's environment"),
            (r#""key_env": "SHORT""#, "lane.key_env: \"SHORT\" must hold at least 32 characters"),
            (r#""key_env": "LANE_KEY", "key": "x""#, "lane.key_env: give `key` or `key_env`, not both"),
            (r#""key_env": "1ANE""#, "lane.key_env: must be an environment variable's name"),
            (r#""key_env": "ISTIO_META_KEY""#, "lane.key_env: must not start with ISTIO_META_"),
            (
                r#""key_env": "LANE_KEY", "previous_keys_env": ["SHORT"]"#,
                "lane.previous_keys_env[0]: \"SHORT\" must hold",
            ),
            (
                r#""key_env": "LANE_KEY", "previous_keys_env": ["a-b"]"#,
                "lane.previous_keys_env[0]: must be an environment",
            ),
            (r#""baggage_key": "g""#, "lane.key: is required (or `key_env`"),
        ];
        for (fields, want) in cases {
            let got = lane(fields).unwrap_err().to_string();
            assert!(got.starts_with(want), "got {got:?}, want {want:?}...");
        }
    }
}
