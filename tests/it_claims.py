"""Pilots and identities by verified JWT claims (DESIGN.md "Verified claims"), with a real
jwt_authn before graysplit verifying RS256 and ES256 tokens signed here (tests/tokens.py).
Claims come only from what jwt_authn verified: a header named like a claim, a missing, expired
or wrongly signed token give none."""

from __future__ import annotations

import pytest

from harness import bucket, plugin_config
from tokens import jwt_authn_filter, token

CONFIG = plugin_config([
    {"name": "legal-pilot", "when": {"claims": [{"name": "department", "exact": "legal"}]},
     "version": "v2"},
    {"name": "beta-group", "when": {"claims": [{"name": "groups", "one_of": ["beta-testers"]}]},
     "version": "v3"},
    {"name": "senior", "when": {"claims": [{"name": "level", "exact": "7"}]}, "version": "v3"},
    {"name": "admins", "when": {"claims": [{"name": "admin", "exact": "true"}]}, "version": "v3"},
    {"name": "ramp", "salt": "claims", "split": [{"version": "v2", "percent": 50}]},
], identity={"from": [{"claim": "sub"}, {"header": "x-user-id"}]})


@pytest.fixture(scope="module")
def envoy(request, tmp_path_factory):
    from conftest import module_envoy
    return module_envoy(request, tmp_path_factory, CONFIG, before_filters=[jwt_authn_filter()])


def get(envoy, path="/", tok=None, headers=()):
    h = list(headers) + ([("authorization", f"Bearer {tok}")] if tok else [])
    return envoy.get(path, h)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def it_a_verified_claim_pilots_the_version(envoy, alg):
    r = get(envoy, tok=token({"sub": "alice", "department": "legal"}, alg=alg))
    assert (r.status, r.text) == (200, "v2"), r
    r = get(envoy, tok=token({"sub": "bob", "groups": ["eng", "beta-testers"]}, alg=alg))
    assert r.text == "v3", "an array claim matches when any element does"
    assert get(envoy, tok=token({"sub": "c", "level": 7}, alg=alg)).text == "v3", "a number is its JSON text"
    assert get(envoy, tok=token({"sub": "d", "admin": True}, alg=alg)).text == "v3", "a boolean is true/false"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def it_the_sub_claim_is_the_identity(envoy, alg):
    for user in ("alice", "bob", "user-42", "用户-7"):
        want = "v2" if bucket("claims", user) < 5000 else "v1"
        r = get(envoy, tok=token({"sub": user}, alg=alg), headers=[("x-user-id", "someone-else")])
        assert r.text == want, f"{user} (bucket {bucket('claims', user)}): {r}"


def it_a_header_named_like_a_claim_is_no_claim(envoy):
    r = get(envoy, headers=[("department", "legal"), ("x-department", "legal"), ("sub", "alice"),
                             ("x-user-id", "carol")])
    want = "v2" if bucket("claims", "carol") < 5000 else "v1"
    assert r.text == want, "no token: no claims, the header identity decides"
    r = get(envoy, tok=token({"sub": "x", "department": "sales"}),
            headers=[("department", "legal"), ("x-department", "legal")])
    assert r.text == ("v2" if bucket("claims", "x") < 5000 else "v1"), \
        "the token's claim says sales; a header saying legal changes nothing"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def it_expired_and_wrongly_signed_tokens_give_no_claims(envoy, alg):
    legal = {"sub": "mallory", "department": "legal"}
    for bad in (token(legal, alg=alg, expired=True), token(legal, alg=alg, wrong_key=True),
                "not.a.jwt"):
        assert get(envoy, tok=bad).status == 401, "jwt_authn refuses a bad token outright"
        # Where a bad token is let through (allow_missing_or_failed), it carries no claims.
        r = get(envoy, "/lenient/", tok=bad, headers=[("x-user-id", "mallory")])
        want = "v2" if bucket("claims", "mallory") < 5000 else "v1"
        assert (r.status, r.text) == (200, want), r
        assert r.text == want and r.header("x-echo-version") == want


def it_without_jwt_authn_claims_are_absent(start_envoy):
    envoy = start_envoy(CONFIG)   # no jwt_authn in the chain
    tok = token({"sub": "alice", "department": "legal"})
    r = get(envoy, tok=tok, headers=[("x-user-id", "dave")])
    assert r.text == ("v2" if bucket("claims", "dave") < 5000 else "v1"), "a token nobody verified is nothing"


# A plan that reads one claim, with every kind of value the payload can hold, and strings that
# look like the others when read untyped (Envoy hands a claim read by its property path over as
# bare bytes: a number as 8, a boolean as 1, a list as pairs, and fails on null; graysplit reads
# the typed metadata instead, and must read each as the payload says).
ONE_CLAIM = plugin_config([
    {"name": "pilot", "when": {"claims": [{"name": "team", "one_of": ["legal", "7", "true", "12345678", "x"]}]},
     "version": "v3"},
    {"name": "present", "when": {"claims": [{"name": "team", "present": True}]}, "version": "v2"},
])


@pytest.mark.parametrize("value,want", [
    ("legal", "v3"),                 # a string
    (7, "v3"),                       # a number: its JSON text "7"
    (True, "v3"),                    # a boolean: "true"
    ("12345678", "v3"),              # an 8-byte string (a double's size untyped)
    ("x", "v3"),                     # a 1-byte string (a boolean's size untyped)
    (["eng", "legal"], "v3"),        # a list: any element
    (["eng"], "v2"),                 # a list no element of which matches: present only
    (None, "v2"),                    # null: present
    ("", "v2"),                      # an empty string: present, matches no listed value
    ({"a": "legal"}, "v2"),          # an object: present only
    ("sales", "v2"),
])
def it_one_claim_reads_as_its_type_says(start_envoy, value, want):
    envoy = start_envoy(ONE_CLAIM, before_filters=[jwt_authn_filter()])
    r = get(envoy, tok=token({"sub": "s", "team": value}))
    assert (r.status, r.text) == (200, want), f"team={value!r}: {r}"
    assert get(envoy, tok=token({"sub": "s"})).text == "v1", "no such claim: absent"
    assert get(envoy).text == "v1", "no token: no claims"
