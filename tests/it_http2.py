"""HTTP/2 (h2c, prior knowledge): many streams of one connection decided at once, each on its
own, and cookie crumbs. gRPC and most service-to-service traffic (an Istio mesh, an LLM
gateway in front of model servers) arrive this way."""

from __future__ import annotations

import re


from harness import bucket, h2_requests, plugin_config

RAMP = {"name": "ramp", "split": [{"version": "v2", "percent": 50}]}
STICKY = {"from": [{"header": "x-user-id"}, {"cookie": "uid"}],
          "sticky_cookie": {"name": "gs_uid", "max_age_s": 3600}}


def expect(user: str) -> str:
    return "v2" if bucket("ramp", user) < 5000 else "v1"


def it_http2_streams_of_one_connection_each_get_their_users_version(start_envoy):
    envoy = start_envoy(plugin_config([RAMP]))
    users = [f"h2-user-{i}" for i in range(64)]
    for attempt in range(3):   # the same users again: sticky across connections too
        responses = h2_requests(envoy.port, [("GET", "/", [("x-user-id", u)], None) for u in users])
        for u, r in zip(users, responses):
            assert r.status == 200, r
            assert r.text == expect(u), f"attempt {attempt}: {u} (bucket {bucket('ramp', u)}) got {r.text}"
            assert r.header("x-graysplit-version") == r.text, f"response_header of {u}'s stream: {r}"
    assert {expect(u) for u in users} == {"v1", "v2"}, "the sample covers both versions"


def it_http2_cookie_crumbs_are_read_as_one_cookie_header(start_envoy):
    # An HTTP/2 client may split `cookie` into crumbs (RFC 9113 8.2.3); Envoy joins them before
    # the filter. The id is in the last crumb.
    envoy = start_envoy(plugin_config([
        {"name": "pilot", "when": {"cookies": [{"name": "beta", "exact": "1"}]}, "version": "v-pilot"},
        RAMP]))
    crumbs = [("cookie", "theme=dark"), ("cookie", "session=3f9a"), ("cookie", "uid=crumb-user")]
    [r] = h2_requests(envoy.port, [("GET", "/", crumbs, None)])
    assert r.text == expect("crumb-user"), r
    [r] = h2_requests(envoy.port, [("GET", "/", [("cookie", "uid=x"), ("cookie", "beta=1")], None)])
    assert r.text == "v-pilot", r


def it_http2_streams_mint_their_own_sticky_cookies(start_envoy):
    envoy = start_envoy(plugin_config([RAMP], identity=STICKY))
    requests = [("GET", "/", [], None)] * 8 + [("GET", "/", [("x-user-id", "known-user")], None)] * 2
    responses = h2_requests(envoy.port, requests)
    minted = []
    for r in responses[:8]:
        cookies = r.all("set-cookie")
        assert len(cookies) == 1, r
        m = re.match(r"^gs_uid=([0-9a-f]{32});", cookies[0])
        assert m, cookies
        assert r.text == expect(m.group(1)), f"the minted id {m.group(1)} is this stream's identity"
        minted.append(m.group(1))
    assert len(set(minted)) == 8, f"each stream mints its own id: {minted}"
    for r in responses[8:]:
        assert r.all("set-cookie") == [] and r.text == expect("known-user"), r
