"""The tester override header, and the routing header a client cannot pick itself."""

import pytest

from harness import Conn, ipv6_loopback_available, plugin_config

RULES = [
    {"name": "legal", "when": {"headers": [{"name": "x-team", "exact": "legal"}]},
     "version": "v2"},
    {"name": "old-pilot", "enabled": False, "version": "v-disabled"},
    {"name": "last-quarter", "expires_at": "2020-01-01T00:00:00Z", "version": "v-expired"},
    {"name": "ramp", "split": [{"version": "v3", "percent": 0}]},
]


def config(trusted):
    return plugin_config(RULES, override={"header": "x-gray-release", "trusted_cidrs": trusted})


def it_override_from_a_trusted_address_is_accepted_and_passed_upstream(start_envoy):
    envoy = start_envoy(config(["10.0.0.0/8", "127.0.0.1/32"]))
    r = envoy.get("/", [("x-gray-release", "v2")])
    assert (r.status, r.text) == (200, "v2"), r
    assert r.header("x-echo-override") == "v2", "the override header reaches upstream unchanged"
    assert envoy.version("/", [("x-gray-release", "v3")]) == "v3", "a split's 0% version too"
    assert envoy.version("/", [("x-team", "legal"), ("x-gray-release", "v1")]) == "v1", \
        "the override decides before the rules"


def it_override_from_an_untrusted_address_is_ignored(start_envoy):
    envoy = start_envoy(config(["10.0.0.0/8"]))
    assert envoy.version("/", [("x-gray-release", "v2")]) == "v1"
    assert envoy.version("/", [("x-team", "legal"), ("x-gray-release", "v1")]) == "v2"


def it_override_is_trusted_by_the_connection_source_address(start_envoy):
    # 127.0.0.2 is this host too, but not in 127.0.0.1/32: what counts is the address Envoy sees.
    envoy = start_envoy(config(["127.0.0.1/32"]))
    override = [("x-gray-release", "v2")]
    with Conn(envoy.port, source="127.0.0.1") as c:
        assert c.get("/", override).text == "v2"
    with Conn(envoy.port, source="127.0.0.2") as c:
        assert c.get("/", override).text == "v1"


def it_override_naming_an_unknown_version_is_ignored(start_envoy):
    envoy = start_envoy(config(["127.0.0.0/8"]), )
    assert envoy.version("/", [("x-gray-release", "v9")]) == "v1"
    assert envoy.version("/", [("x-gray-release", "V2")]) == "v1", "versions compare exactly"
    assert envoy.version("/", [("x-gray-release", "")]) == "v1"
    assert envoy.version("/", [("x-team", "legal"), ("x-gray-release", "nope")]) == "v2"


def it_override_reaches_versions_of_disabled_and_expired_rules(start_envoy):
    envoy = start_envoy(config(["127.0.0.1/32"]))
    assert envoy.version("/") == "v1", "the disabled and expired rules do not apply"
    assert envoy.version("/", [("x-gray-release", "v-disabled")]) == "v-disabled"
    assert envoy.version("/", [("x-gray-release", "v-expired")]) == "v-expired"


def it_client_routing_headers_are_replaced_by_the_decision(start_envoy):
    # Without the header-removal step in front: the filter itself must replace the copies.
    envoy = start_envoy(config(["127.0.0.1/32"]), strip_route_header=False)
    spoof = [("x-graysplit-version", "v2"), ("x-graysplit-version", "v-disabled")]
    r = envoy.get("/", spoof)
    assert (r.status, r.text) == (200, "v1"), r
    assert r.header("x-echo-version") == "v1"
    assert envoy.version("/", [("x-team", "legal"), ("x-graysplit-version", "v1")]) == "v2"


def it_client_routing_headers_are_removed_before_the_filter_in_our_configs(start_envoy):
    envoy = start_envoy(config(["127.0.0.1/32"]))
    spoof = [("X-Graysplit-Version", "v2"), ("x-graysplit-version", "v-disabled")]
    r = envoy.get("/", spoof)
    assert (r.status, r.text) == (200, "v1"), r
    assert r.header("x-echo-version") == "v1"


def it_route_header_name_is_configurable(start_envoy):
    envoy = start_envoy(plugin_config(RULES, route_header="x-app-subset"))
    r = envoy.get("/", [("x-team", "legal"), ("x-app-subset", "v1")])
    assert (r.status, r.text) == (200, "v2"), r
    assert r.header("x-echo-version") == "v2"


def it_envoy_without_the_filter_leaves_requests_unrouted(start_envoy):
    # Harness sanity: the version routes need the header the filter sets; a client copy is
    # stripped first, so without the filter nothing reaches a version route.
    envoy = start_envoy(None, versions=["v1", "v2"])
    r = envoy.get("/", [("x-graysplit-version", "v2")])
    assert (r.status, r.text) == (200, "unrouted"), r


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this machine")
def it_override_trusts_ipv6_ranges_by_the_downstream_address(start_envoy):
    envoy = start_envoy(config(["::1/128"]), ipv6=True)
    r = envoy.get("/", [("x-gray-release", "v2")], ipv6=True)
    assert (r.status, r.text) == (200, "v2"), "from ::1"
    assert envoy.version("/", [("x-gray-release", "v2")]) == "v1", "127.0.0.1 is not in ::1/128"


def it_x_forwarded_for_does_not_fake_the_source_address(start_envoy):
    # source_cidrs / trusted_cidrs use Envoy's downstream address; our configs run Envoy as the
    # edge (use_remote_address: true), so a client-written X-Forwarded-For is not believed.
    envoy = start_envoy(plugin_config(
        [{"name": "office", "when": {"source_cidrs": ["10.0.0.0/8"]}, "version": "v2"}],
        override={"header": "x-gray-release", "trusted_cidrs": ["10.0.0.0/8"]}))
    xff = ("x-forwarded-for", "10.1.2.3")
    assert envoy.version("/", [xff]) == "v1", "source_cidrs fooled by X-Forwarded-For"
    assert envoy.version("/", [xff, ("x-gray-release", "v2")]) == "v1", \
        "trusted_cidrs fooled by X-Forwarded-For"
