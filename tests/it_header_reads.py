"""A plan that may read many headers fetches the whole header map in one host call
(`WHOLE_MAP_MIN_HEADERS` in src/config.rs); one that reads few asks for each header. Both ways
must see a request the same: first values of repeated headers, every cookie header,
pseudo-headers (`:path`, `:method`, `:scheme`)."""

import re

from harness import bucket, plugin_config

STICKY = {"from": [{"header": "x-user-id"}, {"cookie": "uid"}],
          "sticky_cookie": {"name": "gs_uid", "max_age_s": 3600}}

# Reads x-team, cookie, :path, :method and x-user-id: five headers, so the whole map.
MANY = [
    {"name": "team", "when": {"headers": [{"name": "x-team", "exact": "legal"}]}, "version": "v-team"},
    {"name": "beta", "when": {"cookies": [{"name": "beta", "exact": "1"}]}, "version": "v-beta"},
    {"name": "qa", "when": {"query": [{"name": "qa", "present": True}]}, "version": "v-qa"},
    {"name": "writes", "when": {"methods": ["POST"], "path_prefix": "/admin"}, "version": "v-writes"},
    {"name": "ramp", "split": [{"version": "v2", "percent": 50}]},
]

CASES = [
    # (path, headers, expected (rule-derived) version or None for "by the split")
    ("/", [("x-team", "legal")], "v-team"),
    ("/", [("x-team", "sales"), ("x-team", "legal")], None),          # first value only
    ("/", [("cookie", "a=1"), ("cookie", "beta=1")], "v-beta"),       # the second cookie header
    ("/", [("cookie", "beta=0; beta=1")], None),                      # first occurrence wins
    ("/x?a=1&qa", [], "v-qa"),
    ("/admin/users", [], None),                                       # GET is not POST
]


def split_version(user: str) -> str:
    return "v2" if bucket("ramp", user) < 5000 else "v1"


def it_whole_map_and_single_reads_see_requests_alike(start_envoy):
    whole = start_envoy(plugin_config(MANY, identity=STICKY))
    # The same rules without the query, method and path ones: three headers, read one by one.
    few = start_envoy(plugin_config(MANY[:2] + MANY[4:], identity=STICKY))
    for path, headers, want in CASES:
        user = [("x-user-id", "user-7")]
        got = whole.version(path, headers + user)
        assert got == (want or split_version("user-7")), (path, headers, got)
        if want not in ("v-qa",):
            assert few.version(path, headers + user) == got, (path, headers)
    r = whole.request("POST", "/admin/x", [("x-user-id", "user-7")])
    assert r.text == "v-writes", r


def it_whole_map_reads_cookie_identity_and_the_scheme(start_envoy):
    envoy = start_envoy(plugin_config(MANY, identity=STICKY), scheme="https")
    r = envoy.get("/", [("cookie", "theme=dark"), ("cookie", "uid=user-9")])
    assert r.text == split_version("user-9"), "uid from the second cookie header"
    assert r.all("set-cookie") == [], "an id was found: nothing minted"
    r = envoy.get("/", [("cookie", "theme=dark")])
    m = re.match(r"^gs_uid=([0-9a-f]{32});(.*)$", r.header("set-cookie") or "")
    assert m, r
    assert "Secure" in [a.strip() for a in m.group(2).split(";")], "the :scheme pseudo-header is read"
    assert r.text == split_version(m.group(1)), "the minted id decides this request"


# An empty value is a value: `present: true` and `exact: ""` hold for it, and an empty first
# `cookie` header still lets the next one be read. (Envoy returns an empty value without
# allocating, as a null pointer; read as "absent" it would break all three, but only for
# plans that read headers one by one.)
EMPTY = [
    {"name": "flag", "when": {"headers": [{"name": "x-flag", "present": True}]}, "version": "v-flag"},
    {"name": "blank", "when": {"headers": [{"name": "x-blank", "exact": ""}]}, "version": "v-blank"},
    {"name": "ramp", "split": [{"version": "v2", "percent": 50}]},
]
IDENTITY = {"from": [{"header": "x-user-id"}, {"cookie": "uid"}]}


def it_empty_header_values_are_values_one_by_one_and_from_the_whole_map(start_envoy):
    # x-flag, x-blank, x-user-id, cookie: four headers, read one by one; with the query and
    # method rules the plan reads six, so the whole map.
    few = start_envoy(plugin_config(EMPTY, identity=IDENTITY))
    whole = start_envoy(plugin_config(EMPTY[:2] + MANY[2:4] + EMPTY[2:], identity=IDENTITY))
    for envoy, how in ((few, "one by one"), (whole, "whole map")):
        assert envoy.version("/", [("x-flag", "")]) == "v-flag", how
        assert envoy.version("/", [("x-blank", "")]) == "v-blank", how
        assert envoy.version("/", [("x-blank", "x"), ("x-user-id", "user-3")]) == split_version("user-3"), how
        assert envoy.version("/", [("cookie", ""), ("cookie", "uid=user-5")]) == split_version("user-5"), how
        assert envoy.version("/", [("x-user-id", ""), ("cookie", "uid=user-6")]) == split_version("user-6"), \
            f"{how}: an empty id header is skipped"
