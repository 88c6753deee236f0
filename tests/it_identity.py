"""Rule order, where the user id comes from, and the sticky cookie."""

import re

from harness import bucket, plugin_config

USERS_RULES = [
    {"name": "from-header", "when": {"users": ["hdr-user"]}, "version": "by-header"},
    {"name": "from-cookie", "when": {"users": ["cookie-user"]}, "version": "by-cookie"},
    {"name": "from-query", "when": {"users": ["query-user"]}, "version": "by-query"},
]


def it_first_matching_rule_decides(start_envoy):
    envoy = start_envoy(plugin_config([
        {"name": "first", "when": {"headers": [{"name": "x-team", "exact": "legal"}]},
         "version": "v-first"},
        {"name": "second", "when": {"headers": [{"name": "x-team", "present": True}]},
         "version": "v-second"},
        {"name": "third", "version": "v-third"},
    ]))
    assert envoy.version("/", [("x-team", "legal")]) == "v-first"
    assert envoy.version("/", [("x-team", "sales")]) == "v-second"
    assert envoy.version("/") == "v-third", "a rule without `when` matches everything"


def it_identity_sources_are_tried_in_order_header_cookie_query(start_envoy):
    envoy = start_envoy(plugin_config(USERS_RULES))
    hdr, cookie, query = ("x-user-id", "hdr-user"), ("cookie", "uid=cookie-user"), "/?uid=query-user"
    assert envoy.version(query, [hdr, cookie]) == "by-header"
    assert envoy.version(query, [cookie]) == "by-cookie"
    assert envoy.version(query) == "by-query"
    assert envoy.version("/", [cookie, hdr]) == "by-header", "order of sources, not of headers"


def it_identity_skips_empty_sources(start_envoy):
    envoy = start_envoy(plugin_config(USERS_RULES))
    assert envoy.version("/?uid=query-user", [("x-user-id", ""), ("cookie", "uid=cookie-user")]) \
        == "by-cookie"
    assert envoy.version("/?uid=query-user", [("x-user-id", ""), ("cookie", "uid=")]) \
        == "by-query"
    assert envoy.version("/?uid=", [("x-user-id", ""), ("cookie", 'uid=""')]) == "v1"


def it_identity_uses_the_first_value_of_a_repeated_header(start_envoy):
    envoy = start_envoy(plugin_config(USERS_RULES))
    assert envoy.version("/", [("x-user-id", "hdr-user"), ("x-user-id", "other")]) == "by-header"
    assert envoy.version("/", [("x-user-id", "other"), ("x-user-id", "hdr-user")]) == "v1"


# --------------------------------------------------------------------------- sticky cookie

STICKY = {"from": [{"header": "x-user-id"}], "sticky_cookie": {"name": "gs_uid", "max_age_s": 3600}}
RAMP = {"name": "ramp", "split": [{"version": "v2", "percent": 50}]}
COOKIE_RE = re.compile(r"^gs_uid=([0-9a-f]{32})(;.*)$")


def attributes(tail):
    return [a.strip() for a in tail.split(";") if a.strip()]


def it_sticky_cookie_is_minted_when_no_source_gives_an_id(start_envoy):
    envoy = start_envoy(plugin_config([RAMP], identity=STICKY))
    seen = set()
    for _ in range(20):
        r = envoy.get("/")
        assert r.status == 200, r
        cookies = r.all("set-cookie")
        assert len(cookies) == 1, r
        m = COOKIE_RE.match(cookies[0])
        assert m, f"expected gs_uid=<32 lower-case hex>; ..., got {cookies[0]!r}"
        attrs = attributes(m.group(2))
        assert sorted(attrs) == sorted(["Path=/", "Max-Age=3600", "HttpOnly", "SameSite=Lax"]), \
            f"no Secure over plain http: {cookies[0]!r}"
        uid = m.group(1)
        # The minted id is this request's identity.
        expected = "v2" if bucket("ramp", uid) < 5000 else "v1"
        assert r.text == expected, f"minted {uid} (bucket {bucket('ramp', uid)}) served {r.text}"
        seen.add(uid)
    assert len(seen) == 20, "ids come from a random source"


def it_sticky_cookie_sent_back_keeps_the_version_and_is_not_minted_again(start_envoy):
    envoy = start_envoy(plugin_config([RAMP], identity=STICKY))
    for _ in range(5):
        first = envoy.get("/")
        uid = COOKIE_RE.match(first.header("set-cookie")).group(1)
        for _ in range(10):
            again = envoy.get("/", [("cookie", f"other=1; gs_uid={uid}")])
            assert again.status == 200
            assert again.text == first.text, f"user {uid} moved"
            assert again.all("set-cookie") == [], again


def it_sticky_cookie_is_not_minted_when_a_source_gives_an_id(start_envoy):
    envoy = start_envoy(plugin_config([RAMP], identity=STICKY))
    r = envoy.get("/", [("x-user-id", "user-42")])
    assert r.status == 200 and r.all("set-cookie") == [], r
    assert r.text == ("v2" if bucket("ramp", "user-42") < 5000 else "v1")


def it_sticky_cookie_is_secure_when_the_scheme_is_https(start_envoy):
    # No TLS here: the HCM overwrites :scheme to https, which is what the filter reads.
    envoy = start_envoy(plugin_config([RAMP], identity=STICKY), scheme="https")
    r = envoy.get("/")
    assert r.header("x-echo-scheme") == "https", "precondition: :scheme is https"
    m = COOKIE_RE.match(r.header("set-cookie") or "")
    assert m, r
    assert "Secure" in attributes(m.group(2)), r.header("set-cookie")


def it_empty_sticky_cookie_is_replaced_by_a_minted_one(start_envoy):
    envoy = start_envoy(plugin_config([RAMP], identity=STICKY))
    r = envoy.get("/", [("cookie", "gs_uid=")])
    assert r.status == 200 and COOKIE_RE.match(r.header("set-cookie") or ""), r


def it_sticky_cookie_comes_after_the_configured_sources(start_envoy):
    envoy = start_envoy(plugin_config(USERS_RULES, identity={
        "from": [{"header": "x-user-id"}], "sticky_cookie": {"name": "gs_uid", "max_age_s": 60}}))
    assert envoy.version("/", [("cookie", "gs_uid=cookie-user"), ("x-user-id", "hdr-user")]) \
        == "by-header"
    assert envoy.version("/", [("cookie", "gs_uid=cookie-user")]) == "by-cookie"
