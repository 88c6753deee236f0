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
