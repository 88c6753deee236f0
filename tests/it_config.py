"""Configuration validation: a bad inline config stops Envoy from starting, with the JSON path
of the problem in its log; DESIGN's own example config loads and routes."""

import re

import pytest

from conftest import launch
from harness import DESIGN_EXAMPLE, plugin_config, wait_until


def it_design_example_config_loads_and_routes(start_envoy):
    envoy = start_envoy(DESIGN_EXAMPLE)
    assert envoy.version("/", [("x-user-id", "ceo@example.com"), ("x-department", "legal")]) \
        == "v2.0"
    assert envoy.version("/", [("x-department", "legal")]) == "v2.1"
    assert envoy.version("/api/x", [("x-user-id", "alice")]) == "v2.0", "alice: bucket 9862"
    assert envoy.version("/api/x", [("x-user-id", "bob")]) == "v2.0", "bob: bucket 1649"
    assert envoy.version("/api/x", [("x-user-id", "user-2")]) == "v2.1", "user-2: bucket 582"
    assert envoy.version("/", [("x-gray-release", "v2.1")]) == "v2.1"


def ok_rule(name="ok", version="v2"):
    return {"name": name, "version": version}


def with_rules(*rules, **top):
    return plugin_config(list(rules), **top)


BAD = {
    "unknown-field-in-rule": (
        with_rules(ok_rule(), {"name": "r1", "version": "v2", "colour": "red"}),
        r"rules\[1\](\.colour)?"),
    "unknown-field-in-sticky-cookie": (
        with_rules(ok_rule(), identity={"from": [{"header": "x-user-id"}],
                                        "sticky_cookie": {"name": "c", "max_age_s": 60,
                                                          "secure": True}}),
        r"identity\.sticky_cookie(\.secure)?"),
    "percent-above-100": (
        with_rules(ok_rule(), {"name": "ramp", "split": [{"version": "v2", "percent": 120}]}),
        r"rules\[1\]\.split\[0\]\.percent"),
    "percent-with-three-decimals": (
        with_rules({"name": "ramp", "split": [{"version": "v2", "percent": 10.555}]}),
        r"rules\[0\]\.split\[0\]\.percent"),
    "percents-summing-above-100": (
        with_rules({"name": "ramp", "split": [{"version": "v2", "percent": 60},
                                              {"version": "v3", "percent": 50}]}),
        r"rules\[0\]\.split(\[1\](\.percent)?)?"),
    "split-without-identity": (
        with_rules({"name": "ramp", "split": [{"version": "v2", "percent": 10}]}, identity=None),
        r"(identity|rules\[0\](\.split)?)"),
    "users-without-identity": (
        with_rules({"name": "vip", "when": {"users": ["a"]}, "version": "v2"}, identity=None),
        r"(identity|rules\[0\]\.when(\.users)?)"),
    "bad-source-cidr": (
        with_rules({"name": "office", "when": {"source_cidrs": ["10.0.0.0/8", "10.0.0.0/33"]},
                    "version": "v2"}),
        r"rules\[0\]\.when\.source_cidrs\[1\]"),
    "bad-trusted-cidr": (
        with_rules(ok_rule(), override={"header": "x-gray-release",
                                        "trusted_cidrs": ["not-a-cidr"]}),
        r"override\.trusted_cidrs\[0\]"),
    "override-without-trusted-cidrs": (
        with_rules(ok_rule(), override={"header": "x-gray-release"}),
        r"override\.trusted_cidrs"),
    "bad-time": (
        with_rules(ok_rule(), {"name": "r1", "version": "v2",
                               "expires_at": "2026-13-01T00:00:00Z"}),
        r"rules\[1\]\.expires_at"),
    "duplicate-rule-name": (
        with_rules(ok_rule("same"), ok_rule("same", "v3")),
        r"rules\[1\]\.name"),
    "reserved-rule-name": (
        with_rules(ok_rule("default")),
        r"rules\[0\]\.name"),
    "bad-version-name": (
        with_rules(ok_rule("r0", "v 2")),
        r"rules\[0\]\.version"),
    "version-and-split": (
        with_rules({"name": "r0", "version": "v2", "split": [{"version": "v2", "percent": 1}]}),
        r"rules\[0\](\.(version|split))?"),
    "sticky-cookie-max-age-too-small": (
        with_rules(ok_rule(), identity={"sticky_cookie": {"name": "c", "max_age_s": 10}}),
        r"identity\.sticky_cookie\.max_age_s"),
    "upper-case-header-name": (
        with_rules({"name": "r0", "when": {"headers": [{"name": "X-Team", "exact": "a"}]},
                    "version": "v2"}),
        r"rules\[0\]\.when\.headers\[0\]\.name"),
    "upper-case-identity-header": (
        with_rules(ok_rule(), identity={"from": [{"cookie": "uid"}, {"header": "X-User"}]}),
        r"identity\.from\[1\]\.header"),
    "pseudo-header-matcher": (
        with_rules({"name": "r0", "when": {"headers": [{"name": ":path", "prefix": "/"}]},
                    "version": "v2"}),
        r"rules\[0\]\.when\.headers\[0\]\.name"),
    "lower-case-method": (
        with_rules({"name": "r0", "when": {"methods": ["GET", "post"]}, "version": "v2"}),
        r"rules\[0\]\.when\.methods\[1\]"),
    "bad-rule-name": (
        with_rules(ok_rule("Bad_Name")),
        r"rules\[0\]\.name"),
    "negative-percent": (
        with_rules({"name": "ramp", "split": [{"version": "v2", "percent": -1}]}),
        r"rules\[0\]\.split\[0\]\.percent"),
    "time-without-offset": (
        with_rules(ok_rule(), {"name": "r1", "version": "v2", "starts_at": "2026-01-01T00:00:00"}),
        r"rules\[1\]\.starts_at"),
    "sticky-cookie-max-age-too-large": (
        with_rules(ok_rule(), identity={"sticky_cookie": {"name": "c", "max_age_s": 63072001}}),
        r"identity\.sticky_cookie\.max_age_s"),
    "matcher-with-two-kinds": (
        with_rules({"name": "r0", "when": {"query": [{"name": "a", "exact": "1", "prefix": "x"}]},
                    "version": "v2"}),
        r"rules\[0\]\.when\.query\[0\](\.(exact|prefix))?"),
    "missing-stable": (
        with_rules(ok_rule(), stable=None),
        r"stable"),
}


def refused(tmp_path, config):
    """Start Envoy with `config`; return its log once it exited non-zero (fail if it serves)."""
    envoy = launch(tmp_path, config, wait=False)
    try:
        def settled():
            if envoy.proc.poll() is not None:
                return True
            if envoy.admin_file.exists() and envoy.admin_file.read_text().strip():
                envoy.admin = envoy.admin_file.read_text().strip()
                status, body = envoy.admin_get("/ready")
                assert not (status == 200 and body.strip() == "LIVE"), \
                    "Envoy started with a config the filter should reject"
            return False
        wait_until(settled, 30, "Envoy to exit")
        assert envoy.proc.returncode != 0
        return envoy.log()
    finally:
        envoy.stop()


def refused_at(tmp_path, config, path_re: str, word: str) -> None:
    """A real Envoy refuses to start with `config`, with one `graysplit: invalid config: <path>:
    <problem>` line: the path matching `path_re` (as DESIGN writes paths), `word` in the problem."""
    log = refused(tmp_path, config)
    m = re.search(r"graysplit: invalid config: (\S*): (\S.*)", log)
    assert m, f"no 'graysplit: invalid config:' line in the log:\n{log[-5000:]}"
    assert re.fullmatch(path_re, m.group(1)), f"path {m.group(1)!r} !~ {path_re}: {m.group(0)}"
    assert word in m.group(2), m.group(0)


@pytest.mark.parametrize("case", sorted(BAD))
def it_invalid_config_at_startup_is_refused_with_its_json_path(tmp_path, case):
    config, path_re = BAD[case]
    log = refused(tmp_path, config)
    m = re.search(r"graysplit: invalid config: (\S*): (\S.*)", log)
    assert m, f"no 'graysplit: invalid config:' line in the log:\n{log[-5000:]}"
    assert re.fullmatch(path_re, m.group(1)), f"path {m.group(1)!r} !~ {path_re}: {m.group(0)}"
    assert len(re.findall(r"graysplit: invalid config:", log)) >= 1


def it_percent_error_names_the_bad_value(tmp_path):
    config, _ = BAD["percent-above-100"]
    log = refused(tmp_path, config)
    assert re.search(r"graysplit: invalid config: rules\[1\]\.split\[0\]\.percent: .*120", log), \
        log[-3000:]
