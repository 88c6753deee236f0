"""What operators see: the response header, counters in /stats and /stats/prometheus, the
access log."""

import re

from harness import plugin_config, wait_until

RULES = [
    {"name": "legal", "when": {"headers": [{"name": "x-team", "exact": "legal"}]},
     "version": "v2"},
    {"name": "ramp", "when": {"path_prefix": "/ramp/"},
     "split": [{"version": "v2.1", "percent": 100}]},
]
CONFIG = plugin_config(RULES, override={"header": "x-gray-release",
                                        "trusted_cidrs": ["127.0.0.1/32"]})


def it_response_header_carries_the_version(start_envoy):
    envoy = start_envoy(CONFIG)
    r = envoy.get("/", [("x-team", "legal")])
    assert (r.status, r.text) == (200, "v2")
    assert r.all("x-graysplit-version") == ["v2"]
    r = envoy.get("/")
    assert r.all("x-graysplit-version") == ["v1"]


def it_response_header_is_added_to_envoy_local_replies(start_envoy):
    envoy = start_envoy(CONFIG)
    r = envoy.get("/status/404", [("x-team", "legal")])
    assert r.status == 404 and r.text == "not found", r
    assert r.all("x-graysplit-version") == ["v2"], "direct_response local reply"
    r = envoy.get("/", [("host", "noroute.test"), ("x-user-id", "u"), ("x-team", "legal")])
    assert r.status == 404, r
    assert r.all("x-graysplit-version") == ["v2"], "no-route local reply (NR)"


def it_response_header_is_absent_when_not_configured(start_envoy):
    envoy = start_envoy(plugin_config(RULES, response_header=None))
    r = envoy.get("/", [("x-team", "legal")])
    assert (r.status, r.text) == (200, "v2")
    assert r.all("x-graysplit-version") == []


def send_mix(envoy):
    for _ in range(3):
        assert envoy.version("/", [("x-team", "legal")]) == "v2"
    for uid in ("a", "b"):
        assert envoy.version("/ramp/", [("x-user-id", uid)]) == "v2.1"
    assert envoy.version("/ramp/") == "v1", "a split with no user id decides stable"
    for _ in range(4):
        assert envoy.version("/") == "v1"
    for _ in range(2):
        assert envoy.version("/", [("x-gray-release", "v2.1")]) == "v2.1"
    assert envoy.version("/", [("x-gray-release", "nope")]) == "v1"


EXPECTED = {
    "wasmcustom.graysplit_decisions_total.rule.legal.version.v2": 3,
    "wasmcustom.graysplit_decisions_total.rule.ramp.version.v2.1": 2,
    "wasmcustom.graysplit_decisions_total.rule.ramp.version.v1": 1,
    "wasmcustom.graysplit_decisions_total.rule.default.version.v1": 5,
    "wasmcustom.graysplit_decisions_total.rule.override.version.v2.1": 2,
    "wasmcustom.graysplit_override_total.result.accepted": 2,
    "wasmcustom.graysplit_override_total.result.rejected": 1,
}


def graysplit_stats(envoy):
    return {k: v for k, v in envoy.stats("^wasmcustom\\.graysplit_").items() if v}


def it_counters_count_each_decision_exactly(start_envoy):
    envoy = start_envoy(CONFIG)
    assert graysplit_stats(envoy) == {}, "counters start at zero"
    send_mix(envoy)
    try:
        wait_until(lambda: graysplit_stats(envoy) == EXPECTED, 5, "the expected counters")
    except AssertionError:
        pass
    assert graysplit_stats(envoy) == EXPECTED


def prometheus_samples(text, name):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^" + name + r"\{([^}]*)\} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[tuple(sorted(labels.items()))] = float(m.group(2))
    return out


def it_prometheus_shows_counters_with_rule_version_and_result_tags(start_envoy):
    envoy = start_envoy(CONFIG)
    send_mix(envoy)
    wait_until(lambda: graysplit_stats(envoy) == EXPECTED, 5, "the expected counters")
    text = envoy.prometheus()
    decisions = prometheus_samples(text, "graysplit_decisions_total")
    assert {k: v for k, v in decisions.items() if v} == {
        (("rule", "legal"), ("version", "v2")): 3,
        (("rule", "ramp"), ("version", "v2.1")): 2,
        (("rule", "ramp"), ("version", "v1")): 1,
        (("rule", "default"), ("version", "v1")): 5,
        (("rule", "override"), ("version", "v2.1")): 2,
    }, text
    overrides = prometheus_samples(text, "graysplit_override_total")
    assert {k: v for k, v in overrides.items() if v} == {
        (("result", "accepted"),): 2, (("result", "rejected"),): 1}, text
    assert "# TYPE graysplit_decisions_total counter" in text


def it_access_log_prints_the_version_and_the_rule(start_envoy):
    # The log line IS the feature here, so this test reads the access log file.
    envoy = start_envoy(CONFIG)
    envoy.version("/log/legal", [("x-team", "legal")])
    envoy.version("/ramp/log", [("x-user-id", "u")])
    envoy.version("/log/default")
    envoy.version("/log/override", [("x-gray-release", "v2")])
    envoy.get("/status/404?log", [("x-team", "legal")])
    want = {
        "/log/legal": "version=v2 rule=legal",
        "/ramp/log": "version=v2.1 rule=ramp",
        "/log/default": "version=v1 rule=default",
        "/log/override": "version=v2 rule=override",
        "/status/404?log": "version=v2 rule=legal",
    }

    def lines():
        text = envoy.access_log.read_text() if envoy.access_log.exists() else ""
        found = {}
        for line in text.splitlines():
            m = re.search(r'"GET (\S+) HTTP/1.1" (\d+) \S+ (version=\S+ rule=\S+)', line)
            if m:
                found[m.group(1)] = m.group(3)
        return found if set(want) <= set(found) else None

    found = wait_until(lines, 10, "all requests in the access log")
    assert {k: found[k] for k in want} == want


V2_CONFIG = plugin_config([
    {"name": "ramp", "salt": "obs", "guard": {"max_error_percent": 50, "min_requests": 5},
     "split": [{"version": "v2.1", "schedule": [{"at": "2020-01-01T00:00:00Z", "percent": 25},
                                                 {"at": "2099-01-01T00:00:00Z", "percent": 100}]}]},
])


def it_prometheus_shows_the_v2_metrics_with_their_tags(start_envoy):
    envoy = start_envoy(V2_CONFIG)
    users = [f"u{i}" for i in range(40)]
    with envoy.conn() as c:
        served = [c.get("/", [("x-user-id", u)]).text for u in users]
    gray, stable = served.count("v2.1"), served.count("v1")
    assert gray and stable, served
    responses = "wasmcustom.graysplit_guard_responses_total.rule.ramp.version."
    wait_until(lambda: envoy.counter(responses + "v2.1.result.ok") == gray
               and envoy.counter(responses + "v1.result.ok") == stable, 5,
               "the guard's counts (flushed every tick)")
    text = envoy.prometheus()
    assert {k: v for k, v in prometheus_samples(text, "graysplit_guard_responses_total").items() if v} == {
        (("result", "ok"), ("rule", "ramp"), ("version", "v2.1")): gray,
        (("result", "ok"), ("rule", "ramp"), ("version", "v1")): stable,
    }, text
    assert prometheus_samples(text, "graysplit_split_basis_points") == {
        (("rule", "ramp"), ("version", "v2.1")): 2500}, text
    assert prometheus_samples(text, "graysplit_guard_tripped") == {
        (("rule", "ramp"), ("version", "v2.1")): 0}, text
    assert prometheus_samples(text, "graysplit_guard_trips_total") == {
        (("rule", "ramp"), ("version", "v2.1")): 0}, text
    assert "# TYPE graysplit_split_basis_points gauge" in text


def it_v1_configs_have_no_v2_metrics(start_envoy):
    envoy = start_envoy(CONFIG)
    names = envoy.stats("^wasmcustom\\.graysplit_")
    assert names and all(n.split(".")[1] in ("graysplit_decisions_total", "graysplit_override_total")
                         for n in names), sorted(names)


def it_every_config_declares_the_same_stats_tags():
    """envoy/*.yaml and the Istio recipe carry one set of tag regexes (README "Metrics")."""
    import json

    import yaml

    from harness import REPO
    want = yaml.safe_load((REPO / "envoy" / "test-bootstrap.yaml").read_text())["stats_config"]["stats_tags"]
    for name in ("demo.yaml", "envoy-docker.yaml", "bench.yaml"):
        # The templates' ${PLACEHOLDERS} (ports, routes) are not what is compared here.
        doc = yaml.safe_load(re.sub(r"\$\{[A-Z_0-9]+\}", "0", (REPO / "envoy" / name).read_text()))
        assert doc["stats_config"]["stats_tags"] == want, name
    istio = (REPO / "istio" / "README.md").read_text()
    m = re.search(r"custom_bootstrap\.json: \|\n((?:    .*\n)+)", istio)
    assert m, "no custom_bootstrap.json in istio/README.md"
    assert json.loads(m.group(1))["stats_config"]["stats_tags"] == want, "istio/README.md"
