"""`rules[].when` conditions: headers, cookies, query, path_prefix, methods, source_cidrs, users.

One Envoy serves the whole module; each rule is keyed on its own header / cookie / query name
(or path) so a request only ever meets the rule it is aimed at, and the rule's version (the
body of the version route) says which rule decided."""

import pytest

from conftest import module_envoy
from harness import ipv6_loopback_available, plugin_config

IPV6 = ipv6_loopback_available()


def rule(name, **when):
    return {"name": name, "when": when, "version": name}


RULES = [
    rule("h-exact", headers=[{"name": "x-h-exact", "exact": "legal"}]),
    rule("h-prefix", headers=[{"name": "x-h-prefix", "prefix": "leg"}]),
    rule("h-suffix", headers=[{"name": "x-h-suffix", "suffix": "gal"}]),
    rule("h-one-of", headers=[{"name": "x-h-one-of", "one_of": ["legal", "finance"]}]),
    rule("h-present", headers=[{"name": "x-h-present", "present": True}]),
    rule("h-absent", headers=[{"name": "x-h-gate", "exact": "absent"},
                              {"name": "x-h-absent", "present": False}]),
    rule("c-exact", cookies=[{"name": "team", "exact": "legal"}]),
    rule("c-present", cookies=[{"name": "beta", "present": True}]),
    rule("q-exact", query=[{"name": "team", "exact": "legal"}]),
    rule("q-space", query=[{"name": "q", "exact": "a b"}]),
    rule("q-literal", query=[{"name": "raw", "exact": "100%zz"}]),
    rule("q-utf8", query=[{"name": "who", "exact": "用户"}]),
    rule("q-absent", query=[{"name": "gate", "exact": "absent"}, {"name": "x", "present": False}]),
    rule("p-api", path_prefix="/api/"),
    rule("m-write", methods=["POST", "DELETE"], path_prefix="/m/"),
    rule("src-loop", source_cidrs=["10.0.0.0/8", "127.0.0.0/8"], path_prefix="/src-loop/"),
    rule("src-ten", source_cidrs=["10.0.0.0/8"], path_prefix="/src-ten/"),
    rule("src-v6", source_cidrs=["::1/128"], path_prefix="/src-v6/"),
    rule("vip", users=["ceo@example.com"]),
]
CONFIG = plugin_config(RULES)


@pytest.fixture(scope="module")
def envoy(request, tmp_path_factory):
    return module_envoy(request, tmp_path_factory, CONFIG, ipv6=IPV6)


def served(envoy, path="/", headers=(), method="GET", ipv6=False):
    r = envoy.request(method, path, headers, ipv6=ipv6)
    assert r.status == 200, r
    return r.text


def it_routes_to_stable_when_no_rule_matches(envoy):
    r = envoy.get("/", [("x-user-id", "someone")])
    assert (r.status, r.text) == (200, "v1")
    assert r.header("x-echo-version") == "v1", "the route header reaches upstream"


def it_header_exact_matches_only_the_exact_value(envoy):
    assert served(envoy, "/", [("x-h-exact", "legal")]) == "h-exact"
    assert served(envoy, "/", [("x-h-exact", "Legal")]) == "v1", "values compare exactly"
    assert served(envoy, "/", [("x-h-exact", "legalese")]) == "v1"
    assert served(envoy, "/", [("x-h-exact", "")]) == "v1"


def it_header_name_matches_case_insensitively(envoy):
    assert served(envoy, "/", [("X-H-Exact", "legal")]) == "h-exact"
    assert served(envoy, "/", [("x-H-eXaCt", "legal")]) == "h-exact"


def it_header_prefix_and_suffix_match(envoy):
    assert served(envoy, "/", [("x-h-prefix", "legal")]) == "h-prefix"
    assert served(envoy, "/", [("x-h-prefix", "leg")]) == "h-prefix"
    assert served(envoy, "/", [("x-h-prefix", "illegal")]) == "v1"
    assert served(envoy, "/", [("x-h-suffix", "illegal")]) == "h-suffix"
    assert served(envoy, "/", [("x-h-suffix", "legals")]) == "v1"


def it_header_one_of_matches_any_listed_value(envoy):
    assert served(envoy, "/", [("x-h-one-of", "legal")]) == "h-one-of"
    assert served(envoy, "/", [("x-h-one-of", "finance")]) == "h-one-of"
    assert served(envoy, "/", [("x-h-one-of", "sales")]) == "v1"
    assert served(envoy, "/", [("x-h-one-of", "legal,finance")]) == "v1"


def it_header_present_true_holds_for_an_empty_value(envoy):
    assert served(envoy, "/", [("x-h-present", "anything")]) == "h-present"
    assert served(envoy, "/", [("x-h-present", "")]) == "h-present"
    assert served(envoy, "/", [("x-h-presents", "x")]) == "v1"


def it_header_present_false_holds_only_when_the_header_is_absent(envoy):
    assert served(envoy, "/", [("x-h-gate", "absent")]) == "h-absent"
    assert served(envoy, "/", [("x-h-gate", "absent"), ("x-h-absent", "1")]) == "v1"
    assert served(envoy, "/", [("x-h-gate", "absent"), ("x-h-absent", "")]) == "v1"


def it_repeated_header_is_matched_on_its_first_value(envoy):
    assert served(envoy, "/", [("x-h-exact", "legal"), ("x-h-exact", "sales")]) == "h-exact"
    assert served(envoy, "/", [("x-h-exact", "sales"), ("x-h-exact", "legal")]) == "v1"


def it_cookie_matcher_reads_every_cookie_header(envoy):
    assert served(envoy, "/", [("cookie", "team=legal")]) == "c-exact"
    assert served(envoy, "/", [("cookie", "a=1; b=2"), ("cookie", "c=3;team=legal")]) == "c-exact"
    assert served(envoy, "/", [("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "beta=")]) \
        == "c-present"
    assert served(envoy, "/", [("cookie", "teams=legal; xteam=legal")]) == "v1"


def it_cookie_quoted_value_is_unquoted(envoy):
    assert served(envoy, "/", [("cookie", 'team="legal"')]) == "c-exact"
    assert served(envoy, "/", [("cookie", 'x=1;  team="legal" ; y=2')]) == "c-exact"


def it_cookie_first_occurrence_wins(envoy):
    assert served(envoy, "/", [("cookie", "team=legal; team=sales")]) == "c-exact"
    assert served(envoy, "/", [("cookie", "team=sales; team=legal")]) == "v1"
    assert served(envoy, "/", [("cookie", "team=sales"), ("cookie", "team=legal")]) == "v1"
    assert served(envoy, "/", [("cookie", "a=1"), ("cookie", "team=legal"),
                               ("cookie", "team=sales")]) == "c-exact"


def it_query_names_and_values_are_percent_decoded(envoy):
    assert served(envoy, "/?team=legal") == "q-exact"
    assert served(envoy, "/?team=l%65gal") == "q-exact"
    assert served(envoy, "/?t%65am=%6C%65%67%61%6C") == "q-exact"
    assert served(envoy, "/?who=%E7%94%A8%E6%88%B7") == "q-utf8"
    assert served(envoy, "/?team=legal%20") == "v1"


def it_query_plus_is_a_space(envoy):
    assert served(envoy, "/?q=a+b") == "q-space"
    assert served(envoy, "/?q=a%20b") == "q-space"
    assert served(envoy, "/?q=a%2Bb") == "v1", "an escaped + is a plus, not a space"


def it_query_broken_escape_stays_literal(envoy):
    assert served(envoy, "/?raw=100%zz") == "q-literal"
    assert served(envoy, "/?raw=100%25zz") == "q-literal"
    assert served(envoy, "/?raw=100%z") == "v1"


def it_query_first_occurrence_wins(envoy):
    assert served(envoy, "/?team=legal&team=sales") == "q-exact"
    assert served(envoy, "/?team=sales&team=legal") == "v1"
    assert served(envoy, "/?a=1&&team=legal&=x") == "q-exact"


def it_query_present_false_is_about_the_query_only(envoy):
    assert served(envoy, "/?gate=absent") == "q-absent"
    assert served(envoy, "/?gate=absent&x") == "v1", "a name without = is present (empty value)"
    assert served(envoy, "/?gate=absent", [("x", "header, not query")]) == "q-absent"


def it_path_prefix_applies_to_the_path_before_the_query(envoy):
    assert served(envoy, "/api/users") == "p-api"
    assert served(envoy, "/api/") == "p-api"
    assert served(envoy, "/api?next=/api/") == "v1"
    assert served(envoy, "/apiv2/") == "v1"
    assert served(envoy, "/API/users") == "v1", "path_prefix compares as received"
    assert served(envoy, "/home?x=/api/") == "v1"


def it_methods_match_only_the_listed_methods(envoy):
    assert served(envoy, "/m/x", method="POST") == "m-write"
    assert served(envoy, "/m/x", method="DELETE") == "m-write"
    assert served(envoy, "/m/x", method="GET") == "v1"
    assert served(envoy, "/m/x", method="PUT") == "v1"


def it_all_conditions_of_a_rule_must_hold(envoy):
    assert served(envoy, "/other", method="POST") == "v1", "methods hold, path_prefix does not"


def it_source_cidr_matches_the_loopback_client(envoy):
    assert served(envoy, "/src-loop/x") == "src-loop"


def it_source_cidr_outside_the_client_address_does_not_match(envoy):
    assert served(envoy, "/src-ten/x") == "v1"
    assert served(envoy, "/src-v6/x") == "v1", "an IPv4 client is not in ::1/128"


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback (::1) on this machine")
def it_source_cidr_matches_an_ipv6_client(envoy):
    assert served(envoy, "/src-v6/x", ipv6=True) == "src-v6"
    assert served(envoy, "/src-loop/x", ipv6=True) == "v1", "::1 is not in 127.0.0.0/8"


def it_users_condition_matches_the_identity(envoy):
    assert served(envoy, "/", [("x-user-id", "ceo@example.com")]) == "vip"
    assert served(envoy, "/", [("cookie", "uid=ceo@example.com")]) == "vip"
    assert served(envoy, "/?uid=ceo%40example.com") == "vip"
    assert served(envoy, "/", [("x-user-id", "CEO@example.com")]) == "v1"
    assert served(envoy, "/", [("x-user-id", "cfo@example.com")]) == "v1"
