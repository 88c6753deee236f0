#!/usr/bin/env python3
"""`make bench`: Envoy CPU time per request with graysplit, against native Envoy routing, Lua and
no-op Wasm filters. Prints a markdown table and writes it to bench/results.md.

    .venv/bin/python scripts/bench.py [--rounds 7] [--duration 5] [--warmup 2] [--connections 16]
                                        [--callgrind N] [--only abcdefghijklmnopqrstuvwxyz1234567890]

Scenarios (one Envoy each, all from envoy/bench.yaml: the same listener, strip step and
clusters; they differ in the routes and the HTTP filter, set in `scenarios()` below):
  a  native header routing, no filter: the floor every ratio is taken against
  b  Envoy's own sticky weighted_clusters (route hash_policy on x-user-id, use_hash_policy)
  c  graysplit, a 1-rule 50% split
  d  graysplit, a realistic 20-rule config (header, cookie, query, CIDR rules, 1 000 users, an
     expired rule, then the 50% split)
  e  bench/graysplit-split.lua: (c)'s split in an Envoy Lua filter (same murmur3 contract)
  f  bench/probe without features: a Wasm filter that exports only the six callbacks a filter
     like graysplit needs and does nothing (the least the Wasm layer costs)
  g  bench/noop-sdk: a proxy-wasm SDK filter that does nothing (what the layer costs a filter
     built on the SDK, as graysplit is: the SDK exports every callback, and Envoy calls each)
  h  graysplit, (c)'s split at 50% by a schedule (reads the clock per request)
  i  graysplit, (c)'s split with a guard (reads each response's status, counts it)
  j  native header routing of a POST with a 1 KB OpenAI-style JSON body (the baseline of k)
  k  graysplit, (c)'s split with the user id from that body's /user (the body is held, read)
  l  Envoy's jwt_authn alone, an RS256 token per user (the baseline of m)
  m  jwt_authn + graysplit, (c)'s split with the user id from the verified sub claim
  n, o  j and k with an 8 KB body: what a body identity costs per KB
  v3 (issue 17), the answers of an LLM API: (c)'s GET, answered by nginx from a file in bench/
  p  native header routing of a streamed answer, bench/llm-stream.sse: 32 OpenAI
     chat.completion.chunk events (the last with usage) then `data: [DONE]`, text/event-stream,
     chunked (the baseline of q and r)
  q  graysplit, (c)'s split without `llm` on that streamed answer (what a config without llm
     costs: (q) - (p) against (c) - (a))
  r  graysplit, (c)'s split with `"llm": {}`: reads that streamed answer ((r) - (q): the reading
     alone; / 32: per event)
  s  native header routing of a 4 KB OpenAI chat.completion JSON answer, bench/llm-answer.json,
     application/json (the baseline of t and u)
  t  graysplit, (c)'s split with `"llm": {}`: reads that JSON answer
  u  graysplit, (c)'s split without `llm` on that JSON answer ((t) - (u): the reading alone)
  v, w, x  p, q and r with the stream over HTTP/2 (clusters v1_h2, v2_h2), where nginx cuts it
     into 32 DATA frames that Envoy hands the filters one by one: as many body callbacks as
     events, the way a model streaming token by token is read (over HTTP/1.1 nginx's stream
     reaches Envoy in one read, one callback)
  v3 (issue 18), shadow: (c)'s GET, every user on stable
  y  graysplit, (c)'s rule at 0%: every user on v1, no `shadow` (the baseline of z)
  z  graysplit, (y) with `shadow` at 100%: every request is also sent to cluster v2 (nginx's
     "v2\n"), both answers are read and paired, one record each to `shadow_sink` (cluster v1,
     nginx's `location = /v1/logs`, 200 `{}`). Per request (only the user's requests are
     requests: the shadow is not one), Envoy's instructions for everything: the user's request,
     and the shadow's call, its answer, the pairing, the record and its share of the sink's POSTs.
     Before measuring, every request must be shadowed and paired, and records POSTed; none
     skipped, failed or lost (graysplit_shadow_total).
  1  graysplit, (y) with Envoy's own request mirroring (route request_mirror_policies, cluster v2,
     runtime fraction 100%): the same GET also sent to the same nginx location as (z)'s shadow,
     by the router's shadow writer through the cluster's async client (the machinery graysplit's
     dispatch_http_call uses). (1) - (y) is what Envoy spends making one more upstream request;
     the primary side of (z) is (z) - ((1) - (y)) (DESIGN "Performance": "a shadowed request (its
     primary side only)"; the target applies to it). Before measuring, nginx must log one
     mirrored request (its :authority with Envoy's `-shadow` suffix) per request.
  2  graysplit, (z) with the shadow's cluster unknown to Envoy: the user's request path alone
  v3 (issue 19), lanes: (c)'s GET and split, with `lane` (key LANE_KEY); each against (c)
  3  graysplit, (c) with `lane` mode edge: every decision signed into the request's baggage
     (HMAC-SHA256, base64url; the W3C `baggage` header set). Before measuring, the upstream
     must get one member `graysplit=<the user's version>;r=ramp;e=<now + 300>;s=<sig>` per
     request, its signature recomputed here, and graysplit_lane_total must count each `issued`.
  4  graysplit, (c) with `lane` mode follow: each request carries the lane an edge would have
     issued for the version its bucket does NOT give (bench/wrk-users.lua `lane FILE`, from
     lane_members(): so the routing proves the lane decided, rule `lane`), which verifies and
     is kept, byte for byte, for the next hop; graysplit_lane_total must count each `followed`.
  v3 (issue 20), prompts and models, on a POST of a 4 KB OpenAI-style chat body (chat_body(user,
     4): its prompt is 4 KB of `x`), each against (5):
  5  native header routing of that POST, no filter (the baseline of 6 and 7)
  6  graysplit, one rule with a prompt matcher (contains_any ["PPT", "幻灯片", "slides"]): the
     body held and its prompt read, lower-cased and searched; no needle is in it, so every
     request goes to v1 (the costliest outcome of the matcher)
  7  graysplit, every request decided to v2, whose `versions.v2.model` replaces the body's
     `model`: held until the body is whole, rewritten, content-length set. Before measuring,
     graysplit_model_rewrites_total must count each request `rewritten`, none `skipped`.
  8, 9, 0  5, 6 and 7 on a realistic chat body instead, bench/chat-4k.json (4096 bytes: a
     system message, three user/assistant turns, the last user message "Please make 3 slides
     about Envoy ..."; the same bytes for every user): the prompt is that last message alone
  8  native header routing of that POST, no filter (the baseline of 9 and 0)
  9  graysplit, (6)'s rule: "slides" is found, so every request goes to v2. Before measuring,
     the same body with a last message without any needle must go to v1.
  0  graysplit, (7)'s config on that POST: every request to v2, its `model` rewritten
     (graysplit_model_rewrites_total: each `rewritten`, none `skipped`)
  The keys are single characters (--only takes a string of them): a-z, then 1 to 9, then 0.

How: every Envoy runs with --concurrency 1 pinned to CPU 0; nginx (the upstream, one process,
two ports answering "v1" / "v2", two more the same over HTTP/2) and wrk (one thread, many
distinct user ids, bench/wrk-users.lua) are pinned to CPU 1. Each run is a short warm-up then `--duration` seconds of wrk; Envoy CPU
time is utime+stime from /proc/<pid>/stat over the run, divided by the requests Envoy served in
it (admin counter http.app.downstream_rq_total). A round runs every scenario once, in an order
rotated by one each round; a scenario's ratio in a round is its CPU per request over (a)'s in
the same round, and the table gives the median, min and max over rounds. Before measuring,
every scenario is checked to route as intended (and the Lua murmur3 against Python's mmh3);
the answer scenarios also get the file's bytes unchanged, and with `llm` the filter's counters
must move by exactly the file's usage per answer (graysplit_llm_tokens_total, _answers_total),
without `llm` not at all. How the answers reach Envoy (how many upstream reads) is counted from
an Envoy's trace log and printed with the results.

Installs wrk, nginx-light and (for the callgrind counts, on by default) valgrind with apt-get
when they are missing (needs root).
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (scripts/run.py: template rendering, Envoy binary, admin helpers)

ROOT = run.ROOT
BENCH = ROOT / "bench"
RUN_DIR = ROOT / ".run" / "bench"
RESULTS = BENCH / "results.md"
# (f) is bench/probe built without features, (g) bench/noop-sdk; each its own workspace.
NOOP_WASM = RUN_DIR / "noop.wasm"
NOOP_SDK_WASM = RUN_DIR / "noop-sdk.wasm"
LUA_SPLIT = BENCH / "graysplit-split.lua"
WRK_SCRIPT = BENCH / "wrk-users.lua"
# Every request: the path and query below, plus what bench/wrk-users.lua adds (user id, cookie).
REQUEST_PATH = "/api/chat?lang=en&model=small"
# v3: the same GET (same query, same headers) on a path nginx answers with an LLM API's answer,
# served from a file: "sse" (a streamed answer) and "json" (a whole one), both versions alike.
LLM_FILES = {"sse": BENCH / "llm-stream.sse", "json": BENCH / "llm-answer.json"}
LLM_TYPES = {"sse": "text/event-stream", "json": "application/json"}
ANSWER_PATHS = {"sse": "/api/chat/stream?lang=en&model=small", "json": "/api/chat/answer?lang=en&model=small"}
COOKIE = "theme=dark; session=3f9a1c; lang=en"
USER_AGENT = "Mozilla/5.0 (graysplit bench)"

ENVOY_CPU, LOAD_CPU = 0, 1
SPLIT_SALT = "ramp"      # (c), (d) and (e) split with salt "ramp" at 50%: the same users go gray
GRAY_BELOW = 5000        # buckets [0, 5000) -> v2

# Targets, as ratios to (a) by instructions (callgrind; CPU medians when --callgrind 0): a number,
# or (another scenario, at most this much above its ratio). Issue 9: graysplit on the proxy-wasm
# SDK and serde; issue 10: a scheduled and a guarded split next to (c).
# A number: the ratio to (a); ("+", base, x): at most base's ratio plus x; ("x", base, x): at most
# x times base (a scenario priced against its own baseline). Issue 11: a JSON-body identity
# against native routing of the same POST, a claim identity against jwt_authn alone. Issue 16 (v2
# corrections): (d) at most 1.40. Issue 17 (v3): reading a streamed answer and a JSON answer, each
# against native routing of the same response.
# Issue 18 (v3): a shadowed request (its primary side) against the same request unshadowed:
# ("-x", base, x, extra, what): (k) - ((extra) - (base)) at most x times base, where (extra) -
# (base) is `what`, a cost (k) pays that the target does not price; for (z), Envoy's own cost of
# the shadow's extra upstream request, measured by its native mirror (1) (see shadow_lines()).
# Issue 19 (v3): a lane issued (3) and a lane followed (4), each at most 0.05 over (c).
GOALS = {"c": 1.24, "d": 1.40, "h": ("+", "c", 0.01), "i": ("+", "c", 0.07),
         "k": ("x", "j", 1.40), "m": ("x", "l", 1.09), "r": ("x", "p", 1.15), "t": ("x", "s", 1.10),
         "z": ("-x", "y", 1.35, "1", "the shadow's own request"),
         "3": ("+", "c", 0.05), "4": ("+", "c", 0.05),
         "6": ("x", "5", 1.30), "7": ("x", "5", 1.30),
         "9": ("x", "8", 1.30), "0": ("x", "8", 1.30)}


# ---------------------------------------------------------------------------------------------
# The plugin configs of (c) and (d).

def config_one_rule() -> dict:
    return {
        "route_header": "x-graysplit-version",
        "stable": "v1",
        "identity": {"from": [{"header": "x-user-id"}]},
        "rules": [{"name": SPLIT_SALT, "split": [{"version": "v2", "percent": 50}]}],
    }


# Ten of the 1 000 listed users are ids wrk sends (user-0, user-100, ...): they stay on v1.
VIP_USERS = [f"vip-{i:04d}@example.com" for i in range(990)] + [f"user-{i}" for i in range(0, 1000, 100)]


def config_scheduled() -> dict:
    """(c)'s split with its 50% reached by a schedule (the clock is read on every request)."""
    cfg = config_one_rule()
    cfg["rules"][0]["split"] = [{"version": "v2", "schedule": [
        {"at": "2020-01-01T00:00:00Z", "percent": 10}, {"at": "2021-01-01T00:00:00Z", "percent": 50},
        {"at": "2099-01-01T00:00:00Z", "percent": 100}]}]
    return cfg


def config_guarded() -> dict:
    """(c)'s split with a guard (nginx never fails it: every response is counted, none trips)."""
    cfg = config_one_rule()
    cfg["rules"][0]["guard"] = {"max_error_percent": 5, "min_requests": 50, "window_s": 60}
    return cfg


def config_body() -> dict:
    """(c)'s split with the user id read from the JSON body's /user (the body is held and read)."""
    cfg = config_one_rule()
    cfg["identity"] = {"from": [{"body": "/user"}]}
    return cfg


def config_prompt() -> dict:
    """(6), issue 20: one rule on the prompt, DESIGN's PPT pilot. The bench body's prompt is
    4 KB of `x`: no needle is found, so the whole prompt is lower-cased and searched for each
    (the costliest outcome), and every request goes to stable."""
    return {"route_header": "x-graysplit-version", "stable": "v1",
            "rules": [{"name": "ppt-pilot", "when": {"prompt": [{"contains_any": ["PPT", "幻灯片", "slides"]}]},
                       "version": "v2"}]}


def config_model() -> dict:
    """(7), issue 20: every request decided to v2, whose model replaces the body's."""
    return {"route_header": "x-graysplit-version", "stable": "v1",
            "versions": {"v2": {"model": "qwen3-72b-canary"}},
            "rules": [{"name": "all", "version": "v2"}]}


def config_claim() -> dict:
    """(c)'s split with the user id from the verified JWT's sub claim."""
    cfg = config_one_rule()
    cfg["identity"] = {"from": [{"claim": "sub"}]}
    return cfg


# --without-llm, a debug run against a filter that does not know `llm` yet: (r) and (t) run
# without it, their counters are not checked, and results.md is not written.
WITHOUT_LLM = False


def config_llm() -> dict:
    """(c)'s split reading the answers of LLM APIs on every path (`"llm": {}`): all that differs
    from (c) is that the filter reads the response."""
    cfg = config_one_rule()
    if not WITHOUT_LLM:
        cfg["llm"] = {}
    return cfg


def config_stable_only() -> dict:
    """(c)'s rule at 0%: every user on v1 (the baseline of the shadowed (z))."""
    cfg = config_one_rule()
    cfg["rules"][0]["split"][0]["percent"] = 0
    return cfg


# (z)'s sink: cluster v1 (nginx) at this path, where nginx answers 200 `{}` (sink_location()).
SINK_PATH = "/v1/logs"


def config_shadowed(cluster: str = "v2") -> dict:
    """(y) with every user in the shadow cohort: each request is also sent to `cluster` (v2), and
    the paired records go to the sink. max_in_flight above wrk's connections, so none is
    skipped."""
    cfg = config_stable_only()
    cfg["rules"][0]["shadow"] = {"version": "v2", "percent": 100, "cluster": cluster, "max_in_flight": 64}
    cfg["shadow_sink"] = {"cluster": "v1", "path": SINK_PATH}
    return cfg


def answer_events(kind: str) -> list[dict]:
    """The JSON of each event of bench/llm-stream.sse (`data: {...}`, without [DONE]), or the
    one JSON answer."""
    text = LLM_FILES[kind].read_text()
    if kind == "json":
        return [json.loads(text)]
    return [json.loads(e[len("data: "):]) for e in text.split("\n\n") if e.startswith("data: {")]


def answer_usage(kind: str) -> tuple[dict[str, int], str]:
    """What graysplit must count for one answer of `kind`: its tokens by kind (the usage of the
    JSON answer, of the stream's last chunk) and how it finished."""
    events = answer_events(kind)
    usage = events[-1]["usage"]
    finish = next(c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason"))
    return {"input": usage["prompt_tokens"], "output": usage["completion_tokens"],
            "cached": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
            "reasoning": usage.get("completion_tokens_details", {}).get("reasoning_tokens", 0)}, finish


# (8), (9), (0): a realistic 4 KB chat request, the same bytes for every user (the ids are in
# x-user-id). PROMPT_MISS is it with a last user message no needle of config_prompt() is in.
CHAT_FILE = BENCH / "chat-4k.json"
CHAT_LAST = "Please make 3 slides about Envoy for the team meeting"
CHAT_MISS = "Please write 3 paragraphs about Envoy for the team meeting"


def chat_file_body(miss: bool = False) -> bytes:
    body = CHAT_FILE.read_bytes()
    assert body.count(CHAT_LAST.encode()) == 1, f"{CHAT_FILE}: its last message changed"
    return body.replace(CHAT_LAST.encode(), CHAT_MISS.encode()) if miss else body


def chat_body(user: str, kb: int) -> bytes:
    """An OpenAI-style chat completion request of `kb` KiB for `user` (wrk-users.lua makes the
    same bytes)."""
    head = '{"model":"gpt-4o-mini","user":"' + user + '","stream":false,"messages":[{"role":"user","content":"'
    tail = '"}]}'
    return (head + "x" * (kb * 1024 - len(head) - len(tail)) + tail).encode()


JWT_USERS = 1000


def jwt_key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    global _JWT_KEY
    if "_JWT_KEY" not in globals():
        _JWT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _JWT_KEY


def jwt_tokens() -> Path:
    """RS256 tokens for user-0 .. user-999 (sub), one a line, for wrk and the checks."""
    import jwt as pyjwt
    path = RUN_DIR / "tokens.txt"
    now = int(time.time())
    key = jwt_key()
    path.write_text("\n".join(pyjwt.encode({"iss": "https://sso.bench", "sub": f"user-{i}", "exp": now + 86400},
                                           key, algorithm="RS256", headers={"kid": "bench"})
                               for i in range(JWT_USERS)) + "\n")
    return path


def jwt_filter() -> dict:
    """Envoy's jwt_authn as Istio configures it, verifying the bench's RS256 tokens."""
    import jwt as pyjwt
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(jwt_key().public_key()))
    jwk.update({"kid": "bench", "alg": "RS256"})
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"sso": {"issuer": "https://sso.bench", "local_jwks": {"inline_string": json.dumps({"keys": [jwk]})},
                              "payload_in_metadata": "payload"}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "sso"}}]}}


def config_twenty_rules() -> dict:
    """What a real release config grows into: testers, pilots, offices, kill switches, an old
    ramp that expired, then the ramp. The bench traffic matches none of the conditions (save the
    10 listed users), so nearly every request evaluates all 20 rules and lands on the split."""
    def rule(name: str, version: str = "v2", **when) -> dict:
        return {"name": name, "when": when, "version": version}
    rules = [
        rule("vip-stay-stable", "v1", users=VIP_USERS),
        rule("legal-pilot", headers=[{"name": "x-department", "exact": "legal"}]),
        rule("beta-header", headers=[{"name": "x-beta", "present": True}]),
        rule("mobile-beta", headers=[{"name": "x-client", "one_of": ["ios-beta", "android-beta"]}]),
        rule("testers-ua", headers=[{"name": "user-agent", "prefix": "graysplit-tester/"}]),
        rule("internal-tenant", headers=[{"name": "x-tenant", "suffix": ".internal"}]),
        rule("beta-cookie", cookies=[{"name": "beta", "exact": "1"}]),
        rule("opt-in-cookie", cookies=[{"name": "gray_opt_in", "present": True}]),
        rule("preview-query", query=[{"name": "preview", "exact": "1"}]),
        rule("canary-query", query=[{"name": "canary", "one_of": ["on", "true"]}]),
        rule("office-v4", source_cidrs=["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
             path_prefix="/api/"),
        rule("office-v6", source_cidrs=["fd00::/8", "2001:db8::/32"]),
        rule("admin-writes-stable", "v1", path_prefix="/admin/", methods=["POST", "PUT", "DELETE"]),
        rule("eu-pilot", headers=[{"name": "x-region", "exact": "eu-west-3"}],
             cookies=[{"name": "lang", "exact": "fr"}]),
        rule("debug-query", query=[{"name": "debug", "present": True}]),
        rule("partners", headers=[{"name": "x-partner-id", "one_of": ["acme", "globex", "initech"]}]),
        {"name": "old-ramp", "split": [{"version": "v3", "percent": 100}],
         "expires_at": "2025-01-01T00:00:00Z"},
        {"name": "killed", "version": "v3", "enabled": False},
        {"name": "next-ramp", "split": [{"version": "v3", "percent": 100}],
         "starts_at": "2099-01-01T00:00:00Z"},
        {"name": SPLIT_SALT, "split": [{"version": "v2", "percent": 50}]},
    ]
    assert len(rules) == 20
    return {
        "route_header": "x-graysplit-version",
        "stable": "v1",
        "identity": {"from": [{"header": "x-user-id"}, {"cookie": "uid"}, {"query": "uid"}]},
        "override": {"header": "x-gray-release", "trusted_cidrs": ["10.0.0.0/8"]},
        "rules": rules,
    }


# (3), (4): `lane`, both with this key (at least 32 characters); the members (4) sends are
# signed with it in lane_members().
LANE_KEY = "graysplit-bench-lane-key-0123456789abcdef"
LANE_KEY_NAME = "graysplit"      # baggage_key's default
LANE_TTL_S = 300                 # ttl_s' default: an edge's member holds until now + 300
LANE_FILE = RUN_DIR / "lanes.txt"
LANE_USERS = 50000               # as many as bench/wrk-users.lua's user ids


def config_lane(mode: str) -> dict:
    """(c)'s split with a lane: "edge" signs every decision into the baggage, "follow" takes the
    version from a lane that verifies (rule `lane`)."""
    cfg = config_one_rule()
    cfg["lane"] = {"mode": mode, "key": LANE_KEY}
    return cfg


def lane_member(version: str, rule: str, expires_s: int, key: str = LANE_KEY) -> str:
    """The member an edge writes (DESIGN.md "Lanes"), computed independently of the filter: the
    HMAC-SHA256 under `key` of the bytes before `;s=`, base64url without padding. The version
    and rule of the bench are unreserved characters: no percent-encoding."""
    import base64
    import hashlib
    import hmac
    member = f"{LANE_KEY_NAME}={version};r={rule};e={expires_s}"
    sig = base64.urlsafe_b64encode(hmac.new(key.encode(), member.encode(), hashlib.sha256).digest()).rstrip(b"=")
    return f"{member};s={sig.decode()}"


def expect_lane(user: str) -> str:
    """(4)'s lanes: the version the split does NOT give the user (as if the edge's rules said
    otherwise), so that a request routed by its lane is told apart from one the rules decided."""
    return "v1" if expect_split(user) == "v2" else "v2"


def lane_members() -> Path:
    """(4)'s `baggage` for user-0 .. user-49999, one a line: the member of expect_lane(user) by
    rule ramp, holding a day (the run is shorter), for wrk and the checks."""
    expires = int(time.time()) + 86400
    LANE_FILE.write_text("".join(lane_member(expect_lane(f"user-{i}"), SPLIT_SALT, expires) + "\n"
                                 for i in range(LANE_USERS)))
    return LANE_FILE


# ---------------------------------------------------------------------------------------------
# Scenarios.

@dataclass
class Scenario:
    key: str
    title: str
    values: dict[str, object] = field(default_factory=dict)
    # user id -> the version it must get, or None: "a fair, sticky split" (b)
    expect: object = None
    # What each request is: "get" (the browser GET above), "chat<KB>" (POST of an OpenAI-style
    # chat body of that many KB carrying the user id in /user), "jwt" (the GET with a bearer
    # token, RS256, whose sub is the user id), "sse" / "json" (the GET on a path nginx answers
    # with bench/llm-stream.sse / bench/llm-answer.json), "lane" (the GET with a `baggage` of the
    # user's lane from lane_members()).
    kind: str = "get"
    # Its graysplit config has `llm`: every answer must show in the llm counters (for "sse" and
    # "json"; without it they must not move).
    llm: bool = False
    # Its graysplit config shadows every request (z): each must be sent, paired and recorded.
    shadow: bool = False
    # (2): every shadow goes to a cluster Envoy does not have, so none is made: each must be
    # sent and shadow_failed (and recorded) instead of paired.
    unsent: bool = False
    # Its routes mirror every request to cluster v2 (1): nginx must see each mirrored copy.
    mirror: bool = False
    # Its graysplit config has `lane` in this mode, "edge" (3) or "follow" (4): every request
    # must be counted `issued` / `followed`, and reach the upstream with its member.
    lane: str = ""
    # (7): every request's body has its model rewritten (graysplit_model_rewrites_total), none
    # skipped.
    rewrite: bool = False
    # (9): where the same body goes with a last user message that holds no needle.
    miss: str = ""
    proc: subprocess.Popen | None = None
    admin: str = ""
    port: int = 0

    @property
    def path(self) -> str:
        return ANSWER_PATHS.get(self.kind, REQUEST_PATH)


def mmh3_bucket(salt: str, user: bytes) -> int:
    import mmh3  # tests/requirements.txt installs it into .venv/
    return mmh3.hash(salt.encode() + b":" + user, 0, signed=False) % 10000


def expect_split(user: str) -> str:
    return "v2" if mmh3_bucket(SPLIT_SALT, user.encode()) < GRAY_BELOW else "v1"


def expect_twenty(user: str) -> str:
    return "v1" if user in VIP_SET else expect_split(user)


VIP_SET = set(VIP_USERS)


TEMPLATE = ROOT / "envoy" / "bench.yaml"

# Routing on the version header, as with graysplit (one route per version), v1 by default.
HEADER_ROUTES = [
    *({"match": {"prefix": "/", "headers": [{"name": "x-graysplit-version", "string_match": {"exact": v}}]},
       "route": {"cluster": v}} for v in ("v1", "v2")),
    {"match": {"prefix": "/"}, "route": {"cluster": "v1"}},
]
# (v)-(x): the same over HTTP/2 to nginx, whose small DATA frames reach the filters one by one.
H2_ROUTES = [
    *({"match": {"prefix": "/", "headers": [{"name": "x-graysplit-version", "string_match": {"exact": v}}]},
       "route": {"cluster": f"{v}_h2"}} for v in ("v1", "v2")),
    {"match": {"prefix": "/"}, "route": {"cluster": "v1_h2"}},
]
# (1): HEADER_ROUTES with Envoy's native request mirroring on every route: each request is also
# sent to cluster v2 (nginx's `location /`, "v2\n", where (z)'s shadow goes), at 100%. Envoy
# appends `-shadow` to the copy's :authority (nginx logs those: mirror_location()).
MIRROR_ROUTES = [{**r, "route": {**r["route"], "request_mirror_policies": [
    {"cluster": "v2", "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}}]}}
    for r in HEADER_ROUTES]
# (b), Envoy's own sticky split: the route's hash policy (the user id header) picks the
# weighted cluster, so a user always lands on the same side (use_hash_policy).
WEIGHTED_ROUTES = [{"match": {"prefix": "/"}, "route": {
    "hash_policy": [{"header": {"header_name": "x-user-id"}}],
    "weighted_clusters": {"use_hash_policy": True,
                          "clusters": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]}}}]
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


_H2_PORTS: dict[str, int] = {}


def h2_ports() -> dict[str, int]:
    """The ports of nginx's HTTP/2 servers (clusters v1_h2, v2_h2), picked once: every scenario's
    values carry them (tests/it_envoy_configs.py renders envoy/bench.yaml from those and the two
    HTTP/1.1 ports alone), and start_nginx() listens on them."""
    if not _H2_PORTS:
        _H2_PORTS.update(V1_H2_PORT=run.free_port(), V2_H2_PORT=run.free_port())
    return dict(_H2_PORTS)


def bench_values(routes: list = HEADER_ROUTES, http_filter: dict | None = None,
                 before: list | None = None) -> dict[str, object]:
    """envoy/bench.yaml's values for a scenario: its routes, and its filters before the router
    (JSON is YAML, so each goes in on one line), and the HTTP/2 ports."""
    filters = [*(before or []), *([http_filter] if http_filter else []), ROUTER]
    return {"ROUTES": json.dumps(routes), "HTTP_FILTERS": json.dumps(filters), **h2_ports()}


def wasm(path: Path, config: dict, before: list | None = None,
         routes: list = HEADER_ROUTES) -> dict[str, object]:
    """A proxy-wasm module with its plugin config, configured like envoy/test-bootstrap.yaml:
    graysplit (c, d), the no-op filters (f, g) and the probes."""
    return bench_values(routes, before=before, http_filter={
        "name": "graysplit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "graysplit",
                "root_id": "",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(path)}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(config)},
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": True,
            },
        },
    })


def lua(path: Path) -> dict[str, object]:
    """An Envoy Lua filter from `path` (e: the 50% split in LuaJIT, then clearRouteCache())."""
    return bench_values(http_filter={
        "name": "envoy.filters.http.lua",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                         "default_source_code": {"filename": str(path)}},
    })


def scenarios(graysplit_wasm: Path) -> list[Scenario]:
    return [
        Scenario("a", "native header routing, no filter (floor)", bench_values(),
                 expect=lambda u: "v1"),
        Scenario("b", "Envoy weighted_clusters + hash_policy on x-user-id", bench_values(WEIGHTED_ROUTES),
                 expect=None),
        Scenario("c", "graysplit, 1 rule: 50% split",
                 wasm(graysplit_wasm, config_one_rule()), expect=expect_split),
        Scenario("d", "graysplit, 20 rules (1 000 users, expired rule, split)",
                 wasm(graysplit_wasm, config_twenty_rules()), expect=expect_twenty),
        Scenario("e", "Lua filter, same murmur3 50% split", lua(LUA_SPLIT), expect=expect_split),
        Scenario("f", "no-op Wasm filter, six exports (the Wasm layer's floor)",
                 wasm(NOOP_WASM, {}), expect=lambda u: "v1"),
        Scenario("g", "no-op proxy-wasm SDK filter (proxy-wasm 0.2.5, graysplit's layer)",
                 wasm(NOOP_SDK_WASM, {}), expect=lambda u: "v1"),
        Scenario("h", "graysplit, (c) with its 50% by a schedule",
                 wasm(graysplit_wasm, config_scheduled()), expect=expect_split),
        Scenario("i", "graysplit, (c) with a guard (every response counted)",
                 wasm(graysplit_wasm, config_guarded()), expect=expect_split),
        Scenario("j", "native header routing of a 1 KB JSON POST, no filter (baseline of k)",
                 bench_values(), expect=lambda u: "v1", kind="chat1"),
        Scenario("k", "graysplit, (c) with the user id from that JSON body's /user",
                 wasm(graysplit_wasm, config_body()), expect=expect_split, kind="chat1"),
        Scenario("l", "Envoy jwt_authn alone, an RS256 token per user (baseline of m)",
                 bench_values(before=[jwt_filter()]), expect=lambda u: "v1", kind="jwt"),
        Scenario("m", "jwt_authn + graysplit, (c) with the user id from the verified sub claim",
                 wasm(graysplit_wasm, config_claim(), before=[jwt_filter()]), expect=expect_split, kind="jwt"),
        Scenario("n", "native header routing of an 8 KB JSON POST (for k's cost per KB)",
                 bench_values(), expect=lambda u: "v1", kind="chat8"),
        Scenario("o", "graysplit, the user id from an 8 KB JSON body (for k's cost per KB)",
                 wasm(graysplit_wasm, config_body()), expect=expect_split, kind="chat8"),
        Scenario("p", "native header routing of a streamed answer: 32 OpenAI SSE chunks (baseline of q, r)",
                 bench_values(), expect=lambda u: "v1", kind="sse"),
        Scenario("q", "graysplit, (c) without `llm` on that streamed answer",
                 wasm(graysplit_wasm, config_one_rule()), expect=expect_split, kind="sse"),
        Scenario("r", "graysplit, (c) with `llm`: reads that streamed answer",
                 wasm(graysplit_wasm, config_llm()), expect=expect_split, kind="sse", llm=not WITHOUT_LLM),
        Scenario("s", "native header routing of a 4 KB OpenAI JSON answer (baseline of t, u)",
                 bench_values(), expect=lambda u: "v1", kind="json"),
        Scenario("t", "graysplit, (c) with `llm`: reads that JSON answer",
                 wasm(graysplit_wasm, config_llm()), expect=expect_split, kind="json", llm=not WITHOUT_LLM),
        Scenario("u", "graysplit, (c) without `llm` on that JSON answer",
                 wasm(graysplit_wasm, config_one_rule()), expect=expect_split, kind="json"),
        Scenario("v", "native header routing of (p)'s stream over HTTP/2 in 32 DATA frames (baseline of w, x)",
                 bench_values(H2_ROUTES), expect=lambda u: "v1", kind="sse"),
        Scenario("w", "graysplit, (c) without `llm` on that stream of 32 frames",
                 wasm(graysplit_wasm, config_one_rule(), routes=H2_ROUTES), expect=expect_split, kind="sse"),
        Scenario("x", "graysplit, (c) with `llm`: reads that stream, 32 body callbacks",
                 wasm(graysplit_wasm, config_llm(), routes=H2_ROUTES), expect=expect_split, kind="sse",
                 llm=not WITHOUT_LLM),
        Scenario("y", "graysplit, (c)'s rule at 0%: every user on stable, no shadow (baseline of z)",
                 wasm(graysplit_wasm, config_stable_only()), expect=lambda u: "v1"),
        Scenario("z", "graysplit, (y) with `shadow` at 100%: each request also to v2, paired, recorded",
                 wasm(graysplit_wasm, config_shadowed()), expect=lambda u: "v1", shadow=True),
        Scenario("2", "graysplit, (z) with the shadow's cluster unknown to Envoy: the user's request path alone, no second request",
                 wasm(graysplit_wasm, config_shadowed(cluster="no-such-cluster")), expect=lambda u: "v1",
                 shadow=True, unsent=True),
        Scenario("1", "graysplit, (y) with Envoy's own request mirroring to v2 at 100% (Envoy's cost of the extra request)",
                 wasm(graysplit_wasm, config_stable_only(), routes=MIRROR_ROUTES), expect=lambda u: "v1",
                 mirror=True),
        Scenario("5", "native header routing of a 4 KB JSON chat POST, no filter (baseline of 6, 7)",
                 bench_values(), expect=lambda u: "v1", kind="chat4"),
        Scenario("6", "graysplit, a prompt matcher (contains_any of 3 needles, none found) on that POST",
                 wasm(graysplit_wasm, config_prompt()), expect=lambda u: "v1", kind="chat4"),
        Scenario("7", "graysplit, that POST decided to v2 and its model rewritten (versions.v2.model)",
                 wasm(graysplit_wasm, config_model()), expect=lambda u: "v2", kind="chat4", rewrite=True),
        Scenario("8", "native header routing of a realistic 4 KB chat POST (bench/chat-4k.json), no filter (baseline of 9, 0)",
                 bench_values(), expect=lambda u: "v1", kind="chatfile"),
        Scenario("9", "graysplit, (6)'s prompt matcher on that POST, \"slides\" found: every request to v2",
                 wasm(graysplit_wasm, config_prompt()), expect=lambda u: "v2", kind="chatfile", miss="v1"),
        Scenario("0", "graysplit, (7) on that POST: decided to v2 and its model rewritten",
                 wasm(graysplit_wasm, config_model()), expect=lambda u: "v2", kind="chatfile", rewrite=True),
        Scenario("3", "graysplit, (c) with `lane` mode edge: every decision signed into the request's baggage",
                 wasm(graysplit_wasm, config_lane("edge")), expect=expect_split, lane="edge"),
        Scenario("4", "graysplit, (c) with `lane` mode follow: each request carries a lane that verifies",
                 wasm(graysplit_wasm, config_lane("follow")), expect=expect_lane, kind="lane", lane="follow"),
    ]


# ---------------------------------------------------------------------------------------------
# Tools: wrk, nginx, the no-op wasms.

def ensure_packages(callgrind: bool) -> tuple[str, str]:
    """wrk and nginx (Debian's nginx-light), and valgrind for --callgrind, installed with apt-get
    when missing."""
    def find() -> tuple[str | None, str | None]:
        return shutil.which("wrk"), shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    wrk, nginx = find()
    valgrind = shutil.which("valgrind") or not callgrind
    if wrk and nginx and valgrind:
        return wrk, nginx
    missing = [p for p, have in (("wrk", wrk), ("nginx-light", nginx), ("valgrind", valgrind)) if not have]
    if not shutil.which("apt-get"):
        raise SystemExit(f"make bench needs {' and '.join(missing)}, and there is no apt-get here "
                         f"to install them: install them with your package manager and run again")
    if os.geteuid() != 0:
        raise SystemExit(f"make bench needs {' and '.join(missing)}: run "
                         f"`sudo apt-get install -y {' '.join(missing)}` (or make bench as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    print(f"installing {' '.join(missing)} from Debian: {' '.join(install)}", flush=True)
    if subprocess.run(install, env=env).returncode != 0:
        print("apt-get install failed; running apt-get update first", flush=True)
        if subprocess.run(["apt-get", "update"], env=env).returncode != 0 or \
                subprocess.run(install, env=env).returncode != 0:
            raise SystemExit(f"could not install {' '.join(missing)} with apt-get (see above)")
    wrk, nginx = find()
    if not (wrk and nginx and (shutil.which("valgrind") or not callgrind)):
        raise SystemExit(f"apt-get ran but {' or '.join(missing)} is still not found")
    return wrk, nginx


def build_wasm(crate: str, dest: Path, features: str = "") -> Path:
    """Builds bench/<crate> (its own workspace) with `features` and copies the module to `dest`
    (one crate builds several modules: bench/probe)."""
    cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip1",
           "--manifest-path", f"bench/{crate}/Cargo.toml", "--features", features]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    name = "graysplit_bench_" + crate.replace("-", "_") + ".wasm"
    shutil.copyfile(BENCH / crate / "target" / "wasm32-wasip1" / "release" / name, dest)
    return dest


HEAP_WASM = RUN_DIR / "graysplit-heap-stats.wasm"
HEAP_MAX_BYTES = 983_040   # body.max_bytes' ceiling (DESIGN.md "v2 corrections")


def heap_peaks(ports: dict[str, int], cpu: int | None) -> list[tuple[int, int]]:
    """The Wasm heap one held request takes at its peak (headers to decision), for a 64 KiB body
    and a body of max_bytes: graysplit built with feature `heap-stats` (a counting allocator and
    the gauge graysplit_bench_heap_peak_bytes), (k)'s body identity with max_bytes 983040, one
    request at a time. Returns (body bytes, peak bytes)."""
    cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib", "--features", "heap-stats",
           "--target-dir", str(ROOT / "target" / "heap-stats")]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    HEAP_WASM.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "target" / "heap-stats" / "wasm32-wasip1" / "release" / "graysplit.wasm", HEAP_WASM)
    cfg = config_body()
    cfg["body"] = {"max_bytes": HEAP_MAX_BYTES}
    s = Scenario("heap", "graysplit-heap-stats, body identity, max_bytes 983040", wasm(HEAP_WASM, cfg),
                 expect=expect_split, kind="chat1")
    start_envoy(s, ports, cpu)
    out = []
    try:
        for size in (64 * 1024, HEAP_MAX_BYTES):
            user = f"user-{size}"
            body = chat_body(user, 1)
            body = body[:-4] + b"x" * (size - len(body)) + body[-4:]
            assert len(body) == size
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            conn.request("POST", REQUEST_PATH, body=body, headers={"content-type": "application/json"})
            r = conn.getresponse()
            served = r.read().decode().strip()
            conn.close()
            if r.status != 200 or served != expect_split(user):
                raise SystemExit(f"heap: a {size}-byte body got {r.status} {served!r}, want 200 {expect_split(user)}")
            peak = run.counters(s.admin, "wasmcustom.graysplit_bench_heap_peak_bytes")
            out.append((size, next(iter(peak.values()), 0)))
    finally:
        stop(s.proc)
    return out


def build_noop() -> None:
    build_wasm("probe", NOOP_WASM)
    build_wasm("noop-sdk", NOOP_SDK_WASM)


def _child_setup(cpu: int | None):
    def setup() -> None:
        run.die_with_parent()   # SIGKILL when bench.py dies, however it dies
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})   # like `taskset -c <cpu>`, inherited by every thread
    return setup


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")


def nginx_answers(version: str) -> str:
    """The locations of the answer scenarios (p-u): each file of LLM_FILES at its path, with its
    content type, the same bytes on both versions, and the version in x-served-by. The stream goes
    out chunked, without content-length, as an LLM API streams (ssi on a file without SSI
    commands passes its bytes through and drops the length); the JSON answer with its length."""
    out = []
    for kind, path in ANSWER_PATHS.items():
        chunked = f"ssi on; ssi_types {LLM_TYPES[kind]}; " if kind == "sse" else ""
        out.append(f"location = {path.split('?')[0]} {{ alias {LLM_FILES[kind]}; types {{ }} "
                   f"default_type {LLM_TYPES[kind]}; etag off; {chunked}"
                   f"add_header cache-control no-cache; add_header x-served-by {version}; }}")
    return " ".join(out)


def sink_location(d: Path) -> str:
    """(z)'s shadow_sink: nginx answers an OTLP/HTTP POST to SINK_PATH 200 `{}` (what a Collector
    answers an accepted export; `return` takes any method and discards the body), and logs each
    POST to sink.log, so check_routing() sees the records leave."""
    return (f"location = {SINK_PATH} {{ access_log {d / 'sink.log'}; default_type application/json; "
            "return 200 '{}'; }")


# (1)'s mirrored requests as nginx's v2 server logs them: the :authority Envoy gave the copy and
# the request URI, one a line.
MIRROR_LOG = "mirror.log"
# (3), (4): the `baggage` the upstream got, for the requests of check_routing() only (they carry
# LANE_LOG_HEADER; wrk's and callgrind's requests do not, so nothing is logged under load).
LANE_LOG = "lane.log"
LANE_LOG_HEADER = "x-bench-lane-log"


def lane_location(d: Path) -> str:
    """(3) and (4)'s check, in both servers' `location /`: log the user id and the `baggage`
    header of each request that carries LANE_LOG_HEADER, nothing else (only nginx pays for it)."""
    return f"access_log {d / LANE_LOG} bench_lane if=$http_{LANE_LOG_HEADER.replace('-', '_')};"


def mirror_location(d: Path) -> str:
    """(1)'s check, in the v2 server's `location /`: log each request whose Host carries Envoy's
    `-shadow` suffix (only Envoy's mirror adds it; graysplit's shadow keeps the request's
    :authority, so (z) does not log here), nothing else. Only nginx pays for it."""
    return f"access_log {d / MIRROR_LOG} bench_mirror if=$bench_mirrored;"


def h2_frame_bytes() -> int:
    """The DATA frame size of the HTTP/2 servers (nginx http2_chunk_size): the stream in as many
    frames as it has events, so Envoy hands graysplit as many body callbacks as a model streaming
    event by event would, each cut at its own place in the events."""
    return -(-LLM_FILES["sse"].stat().st_size // len(answer_events("sse")))


def start_nginx(nginx: str, cpu: int | None) -> tuple[subprocess.Popen, dict[str, int]]:
    """One nginx process (no master, so PR_SET_PDEATHSIG covers it) answering 200 "v1" / "v2",
    and the answers of nginx_answers(), over HTTP/1.1 (V1_PORT, V2_PORT: clusters v1, v2) and
    over HTTP/2 in small DATA frames (V1_H2_PORT, V2_H2_PORT: clusters v1_h2, v2_h2). Returns the
    process and envoy/bench.yaml's port values."""
    v1, v2 = run.free_port(), run.free_port()
    v1h2, v2h2 = h2_ports()["V1_H2_PORT"], h2_ports()["V2_H2_PORT"]
    d = RUN_DIR / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  map $http_host $bench_mirrored {{ "~-shadow" 1; default 0; }}
  log_format bench_mirror '$http_host $request_uri';
  log_format bench_lane '$http_x_user_id $http_baggage';
  server {{ listen 127.0.0.1:{v1}; location / {{ {lane_location(d)} return 200 "v1\\n"; }} {nginx_answers('v1')}
           {sink_location(d)} }}
  server {{ listen 127.0.0.1:{v2}; location / {{ {mirror_location(d)} {lane_location(d)} return 200 "v2\\n"; }}
           {nginx_answers('v2')}
           {sink_location(d)} }}
  server {{ listen 127.0.0.1:{v1h2} http2; http2_chunk_size {h2_frame_bytes()};
           location / {{ return 200 "v1\\n"; }} {nginx_answers('v1')} }}
  server {{ listen 127.0.0.1:{v2h2} http2; http2_chunk_size {h2_frame_bytes()};
           location / {{ return 200 "v2\\n"; }} {nginx_answers('v2')} }}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(d), "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "wb"),
                            preexec_fn=_child_setup(cpu))
    try:
        for port in (v1, v2, v1h2, v2h2):
            wait_port(port, proc, "nginx")
    except RuntimeError:
        print((d / "stderr.log").read_text() + (d / "error.log").read_text() if (d / "error.log").exists() else "",
              file=sys.stderr)
        raise
    return proc, {"V1_PORT": v1, "V2_PORT": v2, "V1_H2_PORT": v1h2, "V2_H2_PORT": v2h2}


# ---------------------------------------------------------------------------------------------
# Envoy.

def start_envoy(s: Scenario, ports: dict[str, int], cpu: int | None, name: str | None = None,
                wrapper: list[str] | None = None, ready_timeout_s: float = 30.0,
                extra_args: list[str] | None = None) -> None:
    name = name or s.key
    config = RUN_DIR / f"envoy-{name}.yaml"
    config.write_text(run.render_bootstrap({**ports, **s.values}, TEMPLATE))
    admin_path = RUN_DIR / f"admin-{name}"
    admin_path.unlink(missing_ok=True)
    log = RUN_DIR / f"envoy-{name}.log"
    args = [*(wrapper or []), run.envoy_binary(), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
            "--admin-address-path", str(admin_path), "--log-level", "warn", *(extra_args or [])]
    with open(log, "wb") as out:
        s.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  preexec_fn=_child_setup(cpu))
    try:
        s.admin = run.wait_ready(s.proc, admin_path, timeout_s=ready_timeout_s)
        s.port = run.listener_port(s.admin, "bench")
    except RuntimeError as e:
        print(f"--- {log} ---\n{log.read_text(errors='replace')}", file=sys.stderr)
        raise SystemExit(f"scenario ({s.key}): {e}") from None


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        run.stop_envoy(proc)


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (every thread), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # fields 14 and 15 of proc(5), counted from 1


def cpu0_busy_ticks(cpu: int | None) -> tuple[int, int]:
    """(busy, steal) clock ticks of Envoy's CPU from /proc/stat: what ran there besides Envoy
    (other processes, a hypervisor taking the CPU away) is the noise of a run."""
    if cpu is None:
        return 0, 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return v[0] + v[1] + v[2] + v[5] + v[6], v[7]   # user nice system irq softirq; steal
    return 0, 0


def rq_counters(admin: str) -> dict[str, int]:
    c = run.counters(admin, "http.app.downstream_rq_")
    return {k.rsplit("_", 1)[1]: v for k, v in c.items() if re.search(r"_(total|2xx|5xx)$", k)}


# ---------------------------------------------------------------------------------------------
# Checks before measuring.

def get(conn: http.client.HTTPConnection, user: bytes | None, extra: dict | None = None,
        path: str | None = None, kind: str = "get") -> tuple[int, str, dict]:
    path = path or ANSWER_PATHS.get(kind, REQUEST_PATH)
    headers = {"cookie": COOKIE, "user-agent": USER_AGENT, "accept": "application/json"}
    body = None
    if kind in ("chatfile", "chatmiss") and user is not None:
        body = chat_file_body(miss=kind == "chatmiss")
        headers["content-type"] = "application/json"
        headers["x-user-id"] = user
    elif kind.startswith("chat") and user is not None:
        body = chat_body(user.decode(), int(kind[4:]))
        headers["content-type"] = "application/json"
    elif kind == "jwt" and user is not None:
        n = int(user.decode().rsplit("-", 1)[1]) % JWT_USERS
        headers["authorization"] = "Bearer " + TOKENS[n]
    elif kind == "lane" and user is not None:
        n = int(user.decode().rsplit("-", 1)[1]) % LANE_USERS
        headers["x-user-id"] = user
        headers["baggage"] = LANES[n]
    elif user is not None:
        headers["x-user-id"] = user
    headers.update(extra or {})
    conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace").strip(), {k.lower(): v for k, v in r.getheaders()}


TOKENS: list[str] = []   # jwt_tokens(), read once main() made them
LANES: list[str] = []    # lane_members(), likewise


def check_routing(s: Scenario, sample: int = 600) -> str:
    """Send `sample` users the way wrk does and check each lands where the scenario says."""
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    users = [f"user-{i}" for i in range(sample)]
    got: dict[str, str] = {}
    problems: list[str] = []
    answer = LLM_FILES[s.kind].read_text().strip() if s.kind in LLM_FILES else None
    before = llm_counts(s.admin) if answer else {}
    shadows_before, posts_before = (shadow_counts(s.admin), sink_posts()) if s.shadow else ({}, 0)
    mirrored_before = mirror_log_size() if s.mirror else 0
    lanes_before, lane_log_before = (lane_counts(s.admin), lane_log_size()) if s.lane else ({}, 0)
    rewrites_before = run.counters(s.admin, REWRITE_COUNTER) if s.rewrite else {}
    for u in users:
        # With `lane`, nginx logs the baggage it got for these requests (and only these).
        status, body, headers = get(conn, u.encode(), {LANE_LOG_HEADER: "1"} if s.lane else None, kind=s.kind)
        if status != 200:
            problems.append(f"{u}: HTTP {status} {body[:80]!r}")
        if answer:   # an LLM answer: the file's bytes, its content type; the version in a header
            if body != answer:
                problems.append(f"{u}: the answer changed on its way ({len(body)} bytes, not {len(answer)})")
            if headers.get("content-type") != LLM_TYPES[s.kind]:
                problems.append(f"{u}: content-type {headers.get('content-type')!r}, not {LLM_TYPES[s.kind]!r}")
            if s.kind == "sse" and headers.get("transfer-encoding") != "chunked":
                problems.append(f"{u}: the stream came with {headers.get('content-length')!r} as its length, not chunked")
            body = headers.get("x-served-by", "?")
        got[u] = body
    if s.expect is None:
        # (b): no contract to compare with; the pick must be sticky and about half and half.
        for u in users[:200]:
            if get(conn, u.encode())[1] != got[u]:
                problems.append(f"{u}: not sticky ({got[u]} then another version)")
    else:
        for u in users:
            if got[u] != s.expect(u):
                problems.append(f"{u}: got {got[u]!r}, expected {s.expect(u)!r}")
    if s.key in ("b", "c", "d", "e", "q", "r", "t", "u", "w", "x", "3", "4"):
        share = sum(v == "v2" for v in got.values()) / len(users)
        if not 0.40 <= share <= 0.60:
            problems.append(f"v2 share {share:.1%}, expected about 50%")
    if s.key == "d":
        # The rules must work, not only the split: each of these goes to v2 although the user's
        # bucket says v1; a listed user goes to v1 although the bucket says v2.
        on_v1 = next(u for u in users if expect_split(u) == "v1")
        on_v2 = next(u for u in users if u in VIP_SET and expect_split(u) == "v2")
        for why, extra, path in [("x-department: legal", {"x-department": "legal"}, REQUEST_PATH),
                                 ("cookie beta=1", {"cookie": COOKIE + "; beta=1"}, REQUEST_PATH),
                                 ("?preview=1", {}, REQUEST_PATH + "&preview=1")]:
            if (body := get(conn, on_v1.encode(), extra, path)[1]) != "v2":
                problems.append(f"{on_v1} with {why}: got {body!r}, expected 'v2'")
        if (body := get(conn, on_v2.encode())[1]) != "v1":
            problems.append(f"listed user {on_v2}: got {body!r}, expected 'v1'")
    conn.close()
    counts = {v: sum(b == v for b in got.values()) for v in sorted(set(got.values()))}
    summary = ", ".join(f"{v} {n}" for v, n in counts.items())
    if answer:
        moved, llm_bad = llm_check(s, before, counts)
        problems += llm_bad
        summary += f"; llm counters: {moved}"
    if s.shadow:
        moved, shadow_bad = shadow_check(s, shadows_before, posts_before, len(users))
        problems += shadow_bad
        summary += f"; shadows: {moved}"
    if s.mirror:
        moved, mirror_bad = mirror_check(s, mirrored_before, len(users))
        problems += mirror_bad
        summary += f"; mirrored: {moved}"
    if s.miss:   # the matcher really decides: without a needle the request stays on stable
        status, body, _ = get(conn, b"user-miss", kind="chatmiss")
        if (status, body) != (200, s.miss):
            problems.append(f"a body without a needle got {status} {body!r}, want 200 {s.miss!r}")
        summary += f"; without a needle: {body}"
    if s.rewrite:
        after = run.counters(s.admin, REWRITE_COUNTER)
        moved = {k.rsplit(".", 1)[-1]: after.get(k, 0) - rewrites_before.get(k, 0) for k in after}
        if moved.get("rewritten") != len(users) or moved.get("skipped", 0):
            problems.append(f"model rewrites {moved}, expected {len(users)} rewritten and none skipped")
        summary += f"; model rewrites: {moved}"
    if s.lane:
        moved, lane_bad = lane_check(s, lanes_before, len(users))
        problems += lane_bad
        received, received_bad = lane_log_check(s, lane_log_before, users)
        problems += received_bad
        summary += f"; lanes: {moved}; upstream: {received}"
    if problems:
        raise SystemExit(f"scenario ({s.key}) does not route as intended ({summary}):\n  "
                         + "\n  ".join(problems[:10]))
    return summary


LLM_COUNTER = re.compile(r"^wasmcustom\.graysplit_llm_(tokens_total|answers_total)\.rule\.(.+?)\.version\.(.+)"
                         r"\.(?:kind|finish)\.([a-z_]+)$")


def llm_counts(admin: str) -> dict[tuple[str, str, str], int]:
    """graysplit's llm counters summed over rules: (family, version, token kind or finish) ->
    value (README "Metrics"; absent in a config without `llm`)."""
    out: dict[tuple[str, str, str], int] = {}
    for name, value in run.counters(admin, "wasmcustom.graysplit_llm_").items():
        if m := LLM_COUNTER.match(name):
            key = (m[1], m[3], m[4])
            out[key] = out.get(key, 0) + value
    return out


def llm_check(s: Scenario, before: dict, served: dict[str, int]) -> tuple[str, list[str]]:
    """After `served` answers per version: with `llm`, each version's counters moved by exactly
    that many times the file's usage (tokens by kind) and one answer with the file's finish each;
    without, no llm counter moved. The filter counts an answer when it ends, which may be just
    after the client read it: wait up to 3 s for the counters to settle."""
    tokens, finish = answer_usage(s.kind)
    want: dict[tuple[str, str, str], int] = {}
    if s.llm:
        for version, n in served.items():
            want.update({("tokens_total", version, kind): n * t for kind, t in tokens.items()})
            want[("answers_total", version, finish)] = n
    deadline = time.monotonic() + 3
    while True:
        after = llm_counts(s.admin)
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in {*want, *before, *after}}
        bad = [f"{fam} version {v} {what}: moved by {moved[fam, v, what]:,}, expected {want.get((fam, v, what), 0):,}"
               for fam, v, what in sorted(moved) if moved[fam, v, what] != want.get((fam, v, what), 0)]
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if s.llm and not after:
        bad.insert(0, "no graysplit_llm_ counters at all: does this filter read answers (`llm`)?")
    answers = sum(n for (fam, _, _), n in moved.items() if fam == "answers_total")
    output = sum(n for (fam, _, kind), n in moved.items() if fam == "tokens_total" and kind == "output")
    return (f"{answers} answers ({finish}), {output:,} output tokens" if s.llm else
            f"none moved ({len(after)} present)"), bad


SHADOW_COUNTER = "wasmcustom.graysplit_shadow_total."
REWRITE_COUNTER = "wasmcustom.graysplit_model_rewrites_total."
# What must not happen to a shadow of (z): it would then cost less than a shadow does.
SHADOW_BAD = ("shadow_failed", "timed_out", "skipped_busy", "skipped_size", "sink_failed")


def shadow_counts(admin: str) -> dict[str, int]:
    """graysplit_shadow_total by result (sent, paired, ... sink_failed), summed over rules."""
    out: dict[str, int] = {}
    for name, value in run.counters(admin, SHADOW_COUNTER).items():
        result = name.rsplit(".result.", 1)[-1]
        out[result] = out.get(result, 0) + value
    return out


def sink_posts() -> int:
    """The POSTs nginx answered at (z)'s sink so far (its sink.log, sink_location())."""
    try:
        return len((RUN_DIR / "nginx" / "sink.log").read_text().splitlines())
    except OSError:
        return 0


def shadow_check(s: Scenario, before: dict[str, int], posts_before: int, requests: int,
                 wait_s: float = 5.0) -> tuple[str, list[str]]:
    """After `requests` requests of (z): each was shadowed and paired, records reached the sink,
    and no shadow of this Envoy's life was skipped, failed, timed out or lost at the sink. A
    shadow is paired once its answer is in, a record leaves at the next tick (500 ms): wait up
    to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        after = shadow_counts(s.admin)
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in {*before, *after}}
        posts = sink_posts() - posts_before
        done = "shadow_failed" if s.unsent else "paired"
        bad = [f"{k}: moved by {moved.get(k, 0)}, expected {requests} (one per request)"
               for k in ("sent", done) if moved.get(k, 0) != requests]
        bad += [f"{k}: {after[k]} in this Envoy's life, expected none" for k in SHADOW_BAD
                if after.get(k) and k != done]
        if not posts:
            bad.append(f"no POST reached the sink ({RUN_DIR / 'nginx' / 'sink.log'})")
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return f"{moved.get('sent', 0)} sent, {moved.get(done, 0)} {done}, {posts} sink POSTs", bad


def mirror_log_size() -> int:
    """Where nginx's log of mirrored requests (mirror_location()) ends now, in bytes."""
    try:
        return (RUN_DIR / "nginx" / MIRROR_LOG).stat().st_size
    except OSError:
        return 0


def mirrored_since(offset: int) -> list[str]:
    """The mirrored requests nginx's v2 server logged after `offset` (mirror_log_size()): "host
    uri" each (the log grows by a line per request under wrk's load: read only the new part)."""
    try:
        with open(RUN_DIR / "nginx" / MIRROR_LOG, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


# Envoy's counters of cluster v2 that move when a mirrored copy of (1) is not sent or fails (in
# (1) only the mirror uses v2): such a request would be measured cheap.
MIRROR_BAD = ("upstream_rq_pending_overflow", "upstream_rq_pending_failure_eject", "upstream_cx_connect_fail",
              "upstream_rq_timeout", "upstream_rq_rx_reset", "upstream_rq_tx_reset", "upstream_rq_4xx",
              "upstream_rq_5xx")


def mirror_failures(admin: str) -> int:
    c = run.counters(admin, "cluster.v2.upstream_")
    return sum(c.get(f"cluster.v2.{k}", 0) for k in MIRROR_BAD)


def mirror_check(s: Scenario, before: int, requests: int, wait_s: float = 5.0) -> tuple[str, list[str]]:
    """After `requests` requests of (1) (`before`: the log's size before them): nginx's v2 server
    logged exactly that many more mirrored copies, each on the request's path with Envoy's
    `-shadow` suffix on its :authority, and Envoy's cluster v2 counted no mirror failure in this
    Envoy's life. A copy may be answered just after the user's request: wait up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        new = mirrored_since(before)
        bad = [] if len(new) == requests else [
            f"nginx logged {len(new)} mirrored requests, expected {requests} (one per request)"]
        wrong = [line for line in new if line.split(" ", 1)[-1] != s.path or "-shadow" not in line.split(" ", 1)[0]]
        bad += [f"{len(wrong)} mirrored requests not (c)'s GET with a -shadow :authority, e.g. {wrong[0]!r}"] if wrong else []
        failed = mirror_failures(s.admin)
        bad += [f"cluster v2 counted {failed} failed mirrored requests ({', '.join(MIRROR_BAD)})"] if failed else []
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return f"{len(new)} at nginx v2" + (f" ({new[0]})" if new else ""), bad


LANE_COUNTER = "wasmcustom.graysplit_lane_total.result."
LANE_RESULTS = ("issued", "followed", "forged", "expired", "untrusted", "absent", "too_long")


def lane_counts(admin: str) -> dict[str, int]:
    """graysplit_lane_total by result (issued, followed, forged, ...)."""
    return {name[len(LANE_COUNTER):]: value for name, value in run.counters(admin, LANE_COUNTER).items()}


def lane_check(s: Scenario, before: dict[str, int], requests: int, wait_s: float = 3.0) -> tuple[str, list[str]]:
    """After `requests` requests of (3) or (4): `issued` (edge) or `followed` (follow) moved by
    exactly that many, and no other result in this Envoy's life (a lane refused, dropped as too
    long, or a request without one would be measured for less than a lane costs)."""
    want = "issued" if s.lane == "edge" else "followed"
    deadline = time.monotonic() + wait_s
    while True:
        after = lane_counts(s.admin)
        moved = after.get(want, 0) - before.get(want, 0)
        bad = [] if moved == requests else [f"graysplit_lane_total {want}: moved by {moved}, expected {requests}"]
        if not after:
            bad = ["no graysplit_lane_total counters at all: does this filter know `lane`?"]
        bad += [f"graysplit_lane_total {k}: {after[k]} in this Envoy's life, expected none"
                for k in LANE_RESULTS if k != want and after.get(k)]
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return f"{moved} {want}", bad


def lane_log_size() -> int:
    """Where nginx's log of the baggage it got (lane_location()) ends now, in bytes."""
    try:
        return (RUN_DIR / "nginx" / LANE_LOG).stat().st_size
    except OSError:
        return 0


def lane_log_check(s: Scenario, before: int, users: list[str], wait_s: float = 5.0) -> tuple[str, list[str]]:
    """What the upstream got of check_routing()'s requests (`before`: the log's size before
    them): one line per request, each with exactly one member of our key, and (3) the member of
    the user's version by rule ramp, expiring `ttl_s` from now, its signature recomputed here
    (lane_member()); (4) the member the request carried, byte for byte (kept for the next hop).
    nginx writes a line after its answer: wait up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(RUN_DIR / "nginx" / LANE_LOG, "rb") as f:
                f.seek(before)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            lines = []
        if len(lines) >= len(users) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    now = int(time.time())
    bad = [] if len(lines) == len(users) else [
        f"nginx logged {len(lines)} requests with a lane check header, expected {len(users)} "
        f"({RUN_DIR / 'nginx' / LANE_LOG})"]
    seen: dict[str, str] = {}
    for line in lines:
        user, _, baggage = line.partition(" ")
        ours = [m for m in baggage.split(",") if m.split("=", 1)[0].strip() == LANE_KEY_NAME]
        if len(ours) != 1:
            bad.append(f"{user}: the upstream got baggage {baggage!r}, not one member of {LANE_KEY_NAME!r}")
            continue
        member = seen[user] = ours[0]
        if s.lane == "follow":
            want = LANES[int(user.rsplit("-", 1)[1]) % LANE_USERS]
            if member != want:
                bad.append(f"{user}: the upstream got {member!r}, not the lane the request carried {want!r}")
            continue
        m = re.fullmatch(rf"{LANE_KEY_NAME}=([^;]*);r=([^;]*);e=(\d+);s=[A-Za-z0-9_-]{{43}}", member)
        if not m:
            bad.append(f"{user}: the upstream got {member!r}, not {LANE_KEY_NAME}=<version>;r=<rule>;e=<expiry>;s=<sig>")
        elif (m[1], m[2]) != (s.expect(user), SPLIT_SALT):
            bad.append(f"{user}: the upstream got {member!r}, expected version {s.expect(user)} by rule {SPLIT_SALT}")
        elif not -10 <= int(m[3]) - (now + LANE_TTL_S) <= 1:
            bad.append(f"{user}: the upstream got {member!r}, expiring {int(m[3]) - now} s from now, not {LANE_TTL_S}")
        elif member != lane_member(m[1], m[2], int(m[3])):
            bad.append(f"{user}: the upstream got {member!r}, whose signature is not HMAC-SHA256 under the lane key")
    missing = [u for u in users if u not in seen]
    if missing and len(lines) == len(users):
        bad.append(f"{len(missing)} users' requests not logged with a lane, e.g. {missing[0]}")
    example = next(iter(seen.values()), "")
    return f"{len(seen)} with a lane" + (f" ({example})" if example else ""), bad


def check_lua_murmur3(ports: dict[str, int], cpu: int | None) -> int:
    """Run bench/graysplit-split.lua's graysplit_bucket() in Envoy's LuaJIT and compare it with
    Python's mmh3 (golden values of DESIGN.md, every tail length, non-ASCII bytes)."""
    probe = RUN_DIR / "lua-bucket-probe.lua"
    probe.write_text(LUA_SPLIT.read_text() + """
-- bench.py's probe: answer the bucket of (x-salt, x-user-id) instead of routing.
function envoy_on_request(h)
  local hs = h:headers()
  h:respond({[":status"] = "200"}, tostring(graysplit_bucket(hs:get("x-salt"), hs:get("x-user-id"))))
end
""")
    s = Scenario("lua-probe", "", lua(probe))
    start_envoy(s, ports, cpu, name="lua-probe")
    cases = [("release-2.1", b"alice"), ("release-2.1", b"bob"), ("ramp", b"user-42"),
             ("ramp", "用户-7".encode())]
    cases += [(SPLIT_SALT, f"user-{i}".encode()) for i in range(100)]
    cases += [("s" * (i % 5), (b"\xc3\xa9x\xff" * 7)[: i % 23] + b"z") for i in range(60)]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        for salt, user in cases:
            conn.request("GET", "/", headers={"x-salt": salt, "x-user-id": user})
            r = conn.getresponse()
            got = r.read().decode().strip()
            want = mmh3_bucket(salt, user)
            if r.status != 200 or got != str(want):
                raise SystemExit(f"Lua murmur3 disagrees with mmh3 for ({salt!r}, {user!r}): "
                                 f"HTTP {r.status} {got!r}, mmh3 says {want}")
        conn.close()
    finally:
        stop(s.proc)
    return len(cases)


ANSWER_WAYS = {"sse": ("sse", HEADER_ROUTES), "json": ("json", HEADER_ROUTES), "sse-h2": ("sse", H2_ROUTES)}


def answer_reads(ports: dict[str, int], cpu: int | None, n: int = 20) -> dict[str, tuple[float, float, int]]:
    """How each answer reaches Envoy from nginx ((p), (s), (v)): an Envoy of native routing with
    trace logs gets `n` answers one at a time; its log gives the reads on the upstream connection
    (one that carries no downstream stream: "read returns: <bytes>") and the data frames passed
    down the filter chain ("encoding data via codec (size=<bytes>"). Returns "sse", "json",
    "sse-h2" -> (upstream reads per answer, non-empty data frames per answer, the largest frame's
    bytes)."""
    out = {}
    for way, (kind, routes) in ANSWER_WAYS.items():
        s = Scenario(f"reads-{way}", "", bench_values(routes), kind=kind)
        start_envoy(s, ports, cpu, name=s.key, extra_args=["--component-log-level", "connection:trace,http:trace"])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
            for i in range(n):
                if get(conn, f"user-{i}".encode(), kind=kind)[0] != 200:
                    raise SystemExit(f"answer_reads: a {kind} answer was not 200")
            conn.close()
        finally:
            stop(s.proc)
        log = (RUN_DIR / f"envoy-{s.key}.log").read_text(errors="replace")
        downstream = set(re.findall(r'"ConnectionId":"(\d+)","StreamId"', log))
        reads = [int(b) for c, b in re.findall(r'"ConnectionId":"(\d+)"\] read returns: (\d+)', log) if c not in downstream]
        # Streams of the answers (not of the admin requests start_envoy made): by their :path.
        streams = set(re.findall(r'"StreamId":"(\d+)"\] request headers complete [^\n]*\n(?:[^\n]*\n){0,2}'
                                 r"':path', '" + re.escape(ANSWER_PATHS[kind].split("?")[0]), log))
        frames = [int(b) for sid, b in re.findall(r'"StreamId":"(\d+)"\] encoding data via codec \(size=(\d+)', log)
                  if sid in streams and int(b) > 0]
        if not reads or not frames:
            raise SystemExit(f"answer_reads: no upstream reads or data frames in {RUN_DIR / f'envoy-{s.key}.log'}")
        out[way] = (sum(1 for b in reads if b > 0) / n, len(frames) / n, max(frames))
    return out


# ---------------------------------------------------------------------------------------------
# Measuring.

@dataclass
class Run:
    key: str
    round: int
    cpu_s: float
    requests: int
    rps: float
    p99_ms: float
    errors: int
    other_pct: float     # CPU 0 busy with something else than Envoy, % of the run
    steal_pct: float

    @property
    def cpu_us_per_rq(self) -> float:
        return self.cpu_s / self.requests * 1e6


class RunFailed(Exception):
    """A run that could not be measured (wrk failed, Envoy gone): bench.py retries it."""


def wrk(wrk_bin: str, s: Scenario, seconds: int, connections: int, cpu: int | None) -> dict:
    # the members, the body of "chatfile", or the tokens of "jwt"
    data = LANE_FILE if s.kind == "lane" else CHAT_FILE if s.kind == "chatfile" else RUN_DIR / "tokens.txt"
    cmd = [wrk_bin, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(WRK_SCRIPT),
           f"http://127.0.0.1:{s.port}{s.path}", "--", s.kind, str(data)]
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_child_setup(cpu))
    m = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RunFailed(f"wrk failed ({out.returncode}): {(out.stdout + out.stderr).strip()[-300:]}")
    return json.loads(m.group(1))


def measure(wrk_bin: str, s: Scenario, rnd: int, args, envoy_cpu: int | None, cpu: int | None) -> Run:
    wrk(wrk_bin, s, args.warmup, args.connections, cpu)
    before_rq = rq_counters(s.admin)
    shadows_before = shadow_counts(s.admin) if s.shadow else {}
    mirror_failed_before = mirror_failures(s.admin) if s.mirror else 0
    b0, st0 = cpu0_busy_ticks(envoy_cpu)
    t0, w0 = cpu_ticks(s.proc.pid), time.monotonic()
    w = wrk(wrk_bin, s, args.duration, args.connections, cpu)
    t1, w1 = cpu_ticks(s.proc.pid), time.monotonic()
    b1, st1 = cpu0_busy_ticks(envoy_cpu)
    after_rq = rq_counters(s.admin)
    window = (w1 - w0) * os.sysconf("SC_CLK_TCK") / 100   # ticks per 1% of the window
    served = after_rq.get("total", 0) - before_rq.get("total", 0)
    bad = after_rq.get("5xx", 0) - before_rq.get("5xx", 0)
    errors = bad + sum(w[k] for k in ("connect", "read", "write", "status", "timeout"))
    if s.shadow:   # a shadow skipped (too many in flight), failed or lost is a request measured cheap
        shadows_after = shadow_counts(s.admin)
        errors += sum(shadows_after.get(k, 0) - shadows_before.get(k, 0) for k in SHADOW_BAD
                      if not (s.unsent and k == "shadow_failed"))
    if s.mirror:   # likewise a mirrored copy not sent or failed
        errors += mirror_failures(s.admin) - mirror_failed_before
    if served <= 0 or s.proc.poll() is not None:
        raise RunFailed(f"scenario ({s.key}): Envoy served no requests or exited")
    return Run(s.key, rnd, (t1 - t0) / os.sysconf("SC_CLK_TCK"), served,
               w["requests"] / (w["duration_us"] / 1e6), w["p99_us"] / 1000, errors,
               max(0.0, (b1 - b0) - (t1 - t0)) / window, (st1 - st0) / window)


def measure_with_retries(wrk_bin: str, s: Scenario, rnd: int, args, envoy_cpu: int | None,
                         cpu: int | None, ports: dict[str, int], attempts: int = 3) -> Run:
    """measure(), restarting a scenario's Envoy that is gone (on a shared machine something else
    may stop it) and checking its routing again before measuring."""
    for attempt in range(1, attempts + 1):
        try:
            if s.proc is None or s.proc.poll() is not None:
                code = s.proc.returncode if s.proc else None
                print(f"({s.key}) Envoy is gone (exit status {code}): restarting it", flush=True)
                start_envoy(s, ports, envoy_cpu)
                check_routing(s, sample=200)
            return measure(wrk_bin, s, rnd, args, envoy_cpu, cpu)
        except RunFailed as e:
            if attempt == attempts:
                raise SystemExit(f"({s.key}) round {rnd + 1}: {e}") from None
            print(f"({s.key}) round {rnd + 1}: {e}; retrying", flush=True)
    raise AssertionError("unreachable")


def instructions_per_request(s: Scenario, ports: dict[str, int], n: int, cpu: int | None) -> float:
    """Envoy instructions per request under callgrind (--callgrind N): deterministic, so immune to
    a busy machine, but a proxy for time (no cache or branch costs). Warm up 400 requests, zero,
    send n requests one at a time on one connection, dump, read the total."""
    if not shutil.which("valgrind"):
        raise SystemExit("--callgrind needs valgrind (apt-get install -y valgrind)")
    out = RUN_DIR / f"callgrind-{s.key}.out"
    for old in RUN_DIR.glob(f"callgrind-{s.key}.out*"):
        old.unlink()
    probe = Scenario(s.key, s.title, s.values, shadow=s.shadow, unsent=s.unsent, mirror=s.mirror, lane=s.lane)
    posts0 = sink_posts()
    mirrored0 = mirror_log_size()
    start_envoy(probe, ports, cpu, name=f"callgrind-{s.key}", wrapper=[
        "valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no",
        f"--callgrind-out-file={out}"], ready_timeout_s=600)
    ctl = lambda *a: subprocess.run(["callgrind_control", *a, str(probe.proc.pid)], check=True,
                                    capture_output=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", probe.port, timeout=120)
        for i in range(200):
            get(conn, f"user-{i}".encode(), kind=s.kind)
        ctl("-i", "on")
        for i in range(200, 400):
            get(conn, f"user-{i}".encode(), kind=s.kind)
        ctl("-z")
        for i in range(1000, 1000 + n):
            get(conn, f"user-{i}".encode(), kind=s.kind)
        ctl("-d")
        conn.close()
        if s.shadow:   # every request counted was shadowed, paired and recorded, none lost
            moved, bad = shadow_check(probe, {}, posts0, 400 + n, wait_s=30)
            if bad:
                raise SystemExit(f"({s.key}) under callgrind: {'; '.join(bad)}")
            print(f"({s.key}) under callgrind: {moved}", flush=True)
        if s.mirror:   # every request counted was mirrored to nginx, none failed
            moved, bad = mirror_check(probe, mirrored0, 400 + n, wait_s=30)
            if bad:
                raise SystemExit(f"({s.key}) under callgrind: {'; '.join(bad)}")
            print(f"({s.key}) under callgrind: mirrored {moved}", flush=True)
        if s.lane:   # every request counted issued (3) or followed (4) a lane, none refused
            moved, bad = lane_check(probe, {}, 400 + n, wait_s=30)
            if bad:
                raise SystemExit(f"({s.key}) under callgrind: {'; '.join(bad)}")
            print(f"({s.key}) under callgrind: lanes {moved}", flush=True)
    finally:
        stop(probe.proc)
    dumps = sorted(RUN_DIR.glob(f"callgrind-{s.key}.out.*"))
    m = re.search(r"^summary: (\d+)$", dumps[0].read_text(errors="replace"), re.M) if dumps else None
    if not m:
        raise SystemExit(f"({s.key}): no callgrind summary in {RUN_DIR}")
    return int(m.group(1)) / n


# ---------------------------------------------------------------------------------------------
# Report.

def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


def envoy_version() -> str:
    out = subprocess.run([run.envoy_binary(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: \S+?/([0-9.]+)/", out)
    return m.group(1) if m else out.strip()


def previous_instructions() -> tuple[str, dict[str, int]]:
    """The date and the instructions per request of the results.md this run replaces."""
    try:
        text = RESULTS.read_text()
    except OSError:
        return "", {}
    date = re.search(r"^- date: (.+)$", text, re.M)
    return (date[1] if date else "?"), {k: int(v.replace(",", "")) for k, v in
                                        re.findall(r"^\| \((\w)\) \| ([\d,]+) \| [\d.]+ \|$", text, re.M)}


def llm_lines(instructions: dict[str, float], cpu: dict[str, float], reads: dict,
              previous: tuple[str, dict[str, int]]) -> list[str]:
    """What reading LLM answers costs (p-x), from the instruction counts (and, noisy, the CPU
    medians): the reading alone, per event, and what a config without `llm` costs."""
    i, out = instructions, []
    events = len(answer_events("sse"))
    size = {k: f.stat().st_size for k, f in LLM_FILES.items()}

    def how(way: str) -> str:
        if way not in reads:
            return ""
        r, frames, largest = reads[way]
        return (f" It reaches Envoy from nginx in {r:.1f} upstream read(s) per answer, handed to the filters "
                f"in {frames:.1f} data frame(s) (the largest {largest:,} bytes), then the end of the stream.")

    def stream(read: str, alone: str, base: str, callbacks: str) -> None:
        """One streamed answer: (read) with llm, (alone) the same split without, (base) native."""
        if not {read, alone, base} <= i.keys():
            return
        d = i[read] - i[alone]
        out.append(f"  - reading it: ({read}) - ({alone}) = {d:,.0f} instructions per answer, **{d / events:,.0f} per "
                   f"event** ({events} events, {callbacks}); ({read}) / ({alone}) = {i[read] / i[alone]:.3f}; "
                   f"({read}) / ({base}) = {i[read] / i[base]:.3f}, of which the split alone ({alone}) / ({base}) = "
                   f"{i[alone] / i[base]:.3f}"
                   + (f"; CPU medians: ({read}) - ({alone}) = {cpu[read] - cpu[alone]:.1f} µs per answer, "
                      f"{(cpu[read] - cpu[alone]) / events * 1000:.0f} ns per event (noisy)"
                      if {read, alone} <= cpu.keys() else ""))
        if "a" in i and "c" in i:
            out.append(f"  - without `llm`: ({alone}) - ({base}) = {i[alone] - i[base]:,.0f} instructions, the split on "
                       f"this answer; (c) - (a) = {i['c'] - i['a']:,.0f} on (a)'s 3-byte answer "
                       f"({(i[alone] - i[base]) - (i['c'] - i['a']):+,.0f})")

    if {"p", "q", "r"} & i.keys():
        out.append(f"- Streamed answer, (p)-(r) (bench/llm-stream.sse: {events} OpenAI chat.completion.chunk events, "
                   f"usage in the last, then `data: [DONE]`; {size['sse']:,} bytes, text/event-stream, chunked over "
                   "HTTP/1.1)." + how("sse"))
        stream("r", "q", "p", "all in one body callback" if reads.get("sse", (0, 1, 0))[1] <= 1 else
               f"{reads['sse'][1]:.0f} body callbacks")
    if {"v", "w", "x"} & i.keys():
        out.append(f"- The same stream event by event, (v)-(x): over HTTP/2, nginx cuts it into DATA frames of "
                   f"{h2_frame_bytes()} bytes, each handed to the filters on its own, as many body callbacks as a model "
                   "streaming token by token causes (here each cut inside an event)." + how("sse-h2"))
        stream("x", "w", "v", f"{reads['sse-h2'][1]:.0f} body callbacks" if "sse-h2" in reads else "one callback each")
    if {"s", "t", "u"} & i.keys():
        out.append(f"- JSON answer, (s)-(u) (bench/llm-answer.json: an OpenAI chat.completion, {size['json']:,} bytes, "
                   "application/json with its content-length)." + how("json"))
        if {"s", "t", "u"} <= i.keys():
            d = i["t"] - i["u"]
            out.append(f"  - reading it: (t) - (u) = {d:,.0f} instructions per answer "
                       f"({d / (size['json'] / 1024):,.0f} per KiB); (t) / (u) = {i['t'] / i['u']:.3f}; "
                       f"(t) / (s) = {i['t'] / i['s']:.3f}, of which the split alone (u) / (s) = {i['u'] / i['s']:.3f}"
                       + (f"; CPU medians: (t) - (u) = {cpu['t'] - cpu['u']:.1f} µs per answer (noisy)"
                          if {"t", "u"} <= cpu.keys() else ""))
    date, before = previous
    same = [k for k in "cdhik" if k in i and k in before]
    if same:
        out.append(f"- configs without `llm` against the previous results.md ({date}): "
                   + ", ".join(f"({k}) {i[k]:,.0f} instructions, {before[k]:,} then ({i[k] / before[k] - 1:+.1%})"
                               for k in same))
    if out:
        out.append("- callgrind's counts move by a few hundred instructions per request between two runs of one "
                   "config: a per-event figure is good to about 10-20 instructions.")
    return ["Reading LLM answers (issue 17; instructions per request under callgrind):", "", *out, ""] if out else []


def less_extra(value: dict[str, float], k: str) -> float | None:
    """A ("-x", base, x, extra) target's figure for (k): (k) - ((extra) - (base)), or None when
    one of the three was not measured. For (z): its primary side (see shadow_lines())."""
    _, base, _, extra, _ = GOALS[k]
    return value[k] - (value[extra] - value[base]) if {k, base, extra} <= value.keys() else None


def goal_line(value: dict[str, float], k: str) -> str | None:
    """The target of (k) against `value` (instructions, or median CPU ratios to (a)): the figure,
    the bound, met or NOT met; None when (k) or its base was not measured."""
    g = GOALS[k]
    verdict = lambda ok: "met" if ok else "NOT met"
    if k not in value:
        return None
    if isinstance(g, tuple) and g[0] == "+" and g[1] in value:
        _, base, extra = g
        return (f"({k}) <= ({base}) + {extra:.2f} = {value[base] + extra:.3f}: {value[k]:.3f}, "
                f"{verdict(value[k] <= value[base] + extra)}")
    if isinstance(g, tuple) and g[0] == "x" and g[1] in value:
        _, base, times = g
        r = value[k] / value[base]
        return f"({k}) / ({base}) <= {times:.2f}: {r:.3f}, {verdict(r <= times)}"
    if isinstance(g, tuple) and g[0] == "-x" and g[1] in value:
        _, base, times, extra, what = g
        net = less_extra(value, k)
        whole = f"({k}) / ({base}) = {value[k] / value[base]:.3f} with {what}"
        if net is None:   # no (extra): the figure the target is for cannot be made; no verdict
            return (f"(({k}) - (({extra}) - ({base}))) / ({base}) <= {times:.2f}: not checked, ({extra}) not "
                    f"measured ({whole})")
        r = net / value[base]
        return f"(({k}) - (({extra}) - ({base}))) / ({base}) <= {times:.2f}: {r:.3f}, {verdict(r <= times)} ({whole})"
    if not isinstance(g, tuple):
        return f"({k}) <= {g:.2f}: {value[k]:.3f}, {verdict(value[k] <= g)}"
    return None


def shadow_lines(instructions: dict[str, float], cpu: dict[str, float],
                 previous: tuple[str, dict[str, int]]) -> list[str]:
    """What shadowing costs (y, z, 1), from the instruction counts (and, noisy, the CPU medians),
    and whether a rule without `shadow` costs what it did ((c) against the previous results.md).

    DESIGN prices "a shadowed request (its primary side only)", but callgrind counts all Envoy
    does per user request, the shadow's own upstream request included: Envoy's async client
    making a second HTTP request to nginx (its headers encoded, a connection's reads and writes,
    the answer decoded), nearly a native request of its own. That part is Envoy's, not the
    filter's, and it is what any mirror costs: (1) measures it with Envoy's own request mirroring
    of the same GET to the same nginx location (the router's shadow writer, the same async client
    graysplit's dispatch_http_call uses), as (1) - (y). The primary side is (z) - ((1) - (y)),
    and the target applies to it. What stays in it: graysplit's cohort decision, its copy of the
    request through host calls, the call's marshalling, the answer read into the filter and
    paired, the record, and its share of the sink's POSTs (the sink's own upstream requests are
    not subtracted: they are graysplit's, batched). (z) / (y) is printed too, as the cost with the
    shadow's own request."""
    i, out = instructions, []
    if {"y", "z"} <= i.keys():
        d = i["z"] - i["y"]
        out.append(f"- with the shadow's own request: (z) - (y) = {d:,.0f} instructions per shadowed request, everything "
                   "Envoy does for the copy sent to v2 (the request's headers copied, the call and its upstream request, "
                   "its answer), both answers read and paired, the record, and its share of the sink's POSTs; "
                   f"(z) / (y) = {i['z'] / i['y']:.3f}" + (f"; (z) / (a) = {i['z'] / i['a']:.3f}" if "a" in i else ""))
        if {"y", "z"} <= cpu.keys():
            out[-1] += f"; CPU medians: (z) - (y) = {cpu['z'] - cpu['y']:.1f} µs per request (noisy)"
    if {"y", "1"} <= i.keys():
        m = i["1"] - i["y"]
        out.append(f"- Envoy's cost of one more upstream request, by its own mirror: (1) - (y) = {m:,.0f} instructions "
                   "per request ((1) is (y) with the route's request_mirror_policies sending the same GET to cluster v2, "
                   "the same nginx location as (z)'s shadow: the router's shadow writer, the cluster's async client "
                   "that graysplit's dispatch_http_call also uses, the copy's upstream request and its answer, discarded)"
                   + (f"; (a) costs {i['a']:,.0f} for a whole native request" if "a" in i else "")
                   + (f"; CPU medians: (1) - (y) = {cpu['1'] - cpu['y']:.1f} µs per request (noisy)"
                      if {"y", "1"} <= cpu.keys() else ""))
    if {"y", "z", "1"} <= i.keys():
        net = less_extra(i, "z")
        out.append(f"- primary side of a shadowed request: (z) - ((1) - (y)) = {net:,.0f} instructions, "
                   f"{net - i['y']:+,.0f} over (y): what graysplit's shadow costs beyond the extra upstream request Envoy "
                   "makes for any mirror (the decision, the copy through host calls, the call, the answer read and "
                   f"paired, the record, the sink's share); **primary side / (y) = {net / i['y']:.3f}**, target "
                   f"{GOALS['z'][2]:.2f}: {'met' if net / i['y'] <= GOALS['z'][2] else 'NOT met'}"
                   + (f"; CPU medians: (z) - ((1) - (y)) = {cpu['z'] - (cpu['1'] - cpu['y']):.1f} µs per request, "
                      f"{(cpu['z'] - (cpu['1'] - cpu['y'])) / cpu['y']:.3f} x (y) (noisy)"
                      if {"y", "z", "1"} <= cpu.keys() else ""))
    if {"y", "2"} <= i.keys():
        out.append(f"- the user's request path alone, (2): the shadow to a cluster Envoy does not have, so no second "
                   "request is made and no shadow answer read (the cohort decision, the copy, the queue to the root "
                   "context, the refused call, the user's answer read, a `shadow_failed` record and its share of the "
                   f"sink's POSTs): (2) = {i['2']:,.0f}, {i['2'] - i['y']:+,.0f} over (y), (2) / (y) = {i['2'] / i['y']:.3f}")
    if {"y", "z"} <= i.keys() and "1" not in i:
        out.append(f"- primary side not measured: run (1) too (`--only ...yz1`); the target {GOALS['z'][2]:.2f} applies "
                   "to (z) - ((1) - (y)), not to (z) / (y)")
    if {"y", "c"} <= i.keys():
        out.append(f"- (y), the rule at 0% without `shadow`: {i['y']:,.0f} instructions; (c), the same rule at 50%: "
                   f"{i['c']:,.0f} ({i['y'] - i['c']:+,.0f})")
    date, before = previous
    if "c" in i and "c" in before:
        out.append(f"- a rule without `shadow` costs what it did: (c) {i['c']:,.0f} instructions, {before['c']:,} in the "
                   f"previous results.md ({date}; {i['c'] / before['c'] - 1:+.1%})")
    return ["Shadow (issue 18; instructions per request under callgrind):", "", *out, ""] if out else []


def lane_lines(instructions: dict[str, float], cpu: dict[str, float],
               previous: tuple[str, dict[str, int]]) -> list[str]:
    """What a lane costs (3, 4) over (c)'s split without one, from the instruction counts (and,
    noisy, the CPU medians), against issue 19's +0.05 of (a); and whether (c), without `lane`,
    costs what it did (the previous results.md)."""
    i, out = instructions, []
    what = {"3": "a lane issued (edge): the decision's member signed (HMAC-SHA256 under the key, base64url), the "
                 "`baggage` header read and set, the `issued` counter",
            "4": "a lane followed (follow): the `baggage` header read, the member parsed and its HMAC verified, the "
                 "version taken by rule `lane` (no bucket), the header kept, the `followed` counter"}
    for k in ("3", "4"):
        if {k, "c"} <= i.keys():
            d = i[k] - i["c"]
            _, _, limit = GOALS[k]
            line = f"- {what[k]}: ({k}) - (c) = {d:+,.0f} instructions per request; ({k}) / (c) = {i[k] / i['c']:.3f}"
            if "a" in i:
                r, rc = i[k] / i["a"], i["c"] / i["a"]
                line += (f"; **({k}) / (a) = {r:.3f}, (c) / (a) = {rc:.3f}: {r - rc:+.3f}**, target +{limit:.2f}: "
                         f"{'met' if r - rc <= limit else 'NOT met'}")
            if {k, "c"} <= cpu.keys():
                line += f"; CPU medians: ({k}) - (c) = {cpu[k] - cpu['c']:+.1f} µs per request (noisy)"
            out.append(line)
    date, before = previous
    if out and "c" in i:
        out.append(f"- without `lane` nothing changes: (c) {i['c']:,.0f} instructions"
                   + (f", {before['c']:,} in the previous results.md ({date}; {i['c'] / before['c'] - 1:+.1%})"
                      if "c" in before else " (no (c) in the previous results.md to compare with)"))
    return ["Lanes (issue 19; instructions per request under callgrind):", "", *out, ""] if out else []


def report(scens: list[Scenario], runs: list[Run], args, wasm: Path, pinned: bool,
           instructions: dict[str, float] | None = None, reads: dict | None = None,
           previous: tuple[str, dict[str, int]] = ("", {})) -> str:
    by = {(r.key, r.round): r for r in runs}
    rounds = sorted({r.round for r in runs})
    ratio = {s.key: [by[s.key, n].cpu_us_per_rq / by["a", n].cpu_us_per_rq for n in rounds] for s in scens}
    med = statistics.median
    busy = [r.other_pct + r.steal_pct for r in runs]
    kb = lambda p: f"{p.stat().st_size / 1024:.0f} KB"
    lines = [
        "# graysplit benchmark",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- Envoy {envoy_version()}, `--concurrency 1`"
        + (f" pinned to CPU {ENVOY_CPU}; nginx and wrk pinned to CPU {LOAD_CPU}" if pinned else " (NOT pinned: fewer than 2 CPUs)"),
        f"- graysplit.wasm {kb(wasm)}; no-op wasm (f) {kb(NOOP_WASM)}, (g) {kb(NOOP_SDK_WASM)}",
        f"- {len(rounds)} interleaved rounds; each run {args.warmup:g} s warm-up + {args.duration:g} s of "
        f"`wrk -t1 -c{args.connections}`, 50 000 distinct user ids, upstream nginx",
        "- CPU/rq: Envoy utime+stime per request served (/proc/<pid>/stat); ratio: to (a) in the same round",
        f"- noise: other processes (and the hypervisor) took {med(busy):.0f}% of Envoy's CPU in the median run, "
        f"{max(busy):.0f}% at worst" + (" (a busy machine: treat small differences as noise)" if med(busy) > 10 else ""),
        "",
        "| scenario | CPU/rq µs (median) | ratio to (a): median | min | max | rps (median) | p99 ms (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in scens:
        mine = [by[s.key, n] for n in rounds]
        rs = ratio[s.key]
        lines.append(
            f"| ({s.key}) {s.title} | {med(r.cpu_us_per_rq for r in mine):.1f} | **{med(rs):.3f}** | "
            f"{min(rs):.3f} | {max(rs):.3f} | {med(r.rps for r in mine):,.0f} | {med(r.p99_ms for r in mine):.2f} |")
    if instructions:
        basis, value = "instructions", {k: v / instructions["a"] for k, v in instructions.items()}
    else:
        basis, value = "median CPU ratios", {k: med(v) for k, v in ratio.items()}
    goals = [line for k in GOALS if (line := goal_line(value, k))]
    lines += ["", f"Targets ({basis}): " + "; ".join(goals) + "." if goals else "", ""]
    if instructions:
        a = instructions["a"]
        lines += [f"Instructions per request under callgrind ({args.callgrind} sequential requests, "
                  "deterministic; no cache or branch costs):", "",
                  "| scenario | instructions/rq | ratio to (a) |", "| --- | ---: | ---: |"]
        lines += [f"| ({k}) | {v:,.0f} | {v / a:.3f} |" for k, v in instructions.items()]
        lines.append("")
        cpu_medians = {s.key: med(by[s.key, n].cpu_us_per_rq for n in rounds) for s in scens}
        lines += llm_lines(instructions, cpu_medians, reads or {}, previous)
        lines += shadow_lines(instructions, cpu_medians, previous)
        lines += lane_lines(instructions, cpu_medians, previous)
    lines += [
        "<details><summary>Every run: CPU µs per request (ratio to (a) of the round)</summary>",
        "",
        "| round | " + " | ".join(f"({s.key})" for s in scens) + " | CPU 0 busy with others, max |",
        "| ---: | " + " | ".join("---:" for _ in scens) + " | ---: |",
    ]
    for i, n in enumerate(rounds):
        cells = [f"{by[s.key, n].cpu_us_per_rq:.1f} ({ratio[s.key][i]:.3f})" for s in scens]
        other = max(by[s.key, n].other_pct + by[s.key, n].steal_pct for s in scens)
        lines.append(f"| {n + 1} | " + " | ".join(cells) + f" | {other:.0f}% |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# --probe: what each host call costs Envoy (bench/probe).

PROBES = [  # (what the probe adds to the no-op of (f), bench/probe's cargo features)
    ("nothing: the no-op of (f), six exports", ""),
    ("read a request header that is present (x-user-id)", "read_header"),
    ("read a request header that is absent", "read_absent_header"),
    ("read the whole request header map", "read_header_map"),
    ("read property `source.address`", "read_source_address"),
    ("read the clock", "read_clock"),
    ("replace the routing header (Envoy then selects the route again)", "set_route_header"),
    ("set property `graysplit_rule`", "set_property"),
    ("increment a counter", "increment_counter"),
    ("read the id and set the routing header: the least a filter of this kind does",
     "read_header,set_route_header"),
    ("all of (c)'s: read the id, set the header, the property, the counter",
     "read_header,set_route_header,set_property,increment_counter"),
]


def probe(args) -> int:
    """Builds bench/probe once per feature set and counts Envoy's instructions per request for
    each under callgrind, next to (a) and (c): the price of each host call graysplit makes."""
    ensure_packages(True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    wasms = [build_wasm("probe", RUN_DIR / f"probe-{i}.wasm", features)
             for i, (_, features) in enumerate(PROBES)]
    pinned = (os.cpu_count() or 1) >= 2
    envoy_cpu = ENVOY_CPU if pinned else None
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})
    base = {s.key: s for s in scenarios(run.WASM)}
    scens = [base["a"], base["c"]] + [Scenario(f"p{i}", title, wasm(w, {}))
                                      for i, ((title, _), w) in enumerate(zip(PROBES, wasms))]
    nginx = None
    try:
        nginx, ports = start_nginx(shutil.which("nginx") or "/usr/sbin/nginx", LOAD_CPU if pinned else None)
        counts = {}
        for s in scens:
            counts[s.key] = instructions_per_request(s, ports, args.callgrind or 300, envoy_cpu)
            print(f"({s.key}) {s.title}: {counts[s.key]:,.0f} instructions per request", flush=True)
    finally:
        stop(nginx)
    a, noop = counts["a"], counts["p0"]
    print(f"\nEnvoy instructions per request under callgrind ({args.callgrind or 300} requests each); "
          f"(a) {a:,.0f}, (c) {counts['c']:,.0f} ({counts['c'] / a:.3f} x (a))\n")
    print("| the no-op filter of (f), plus | instructions/rq | ratio to (a) | cost of the call(s) |")
    print("| --- | ---: | ---: | ---: |")
    for i, (title, _) in enumerate(PROBES):
        v = counts[f"p{i}"]
        print(f"| {title} | {v:,.0f} | {v / a:.3f} | {'' if i == 0 else f'{v - noop:+,.0f}'} |")
    return 0


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 7)),
                    help="interleaved rounds (default 7, or $BENCH_ROUNDS)")
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_SECONDS", 5)),
                    help="seconds of measured load per run (default 5, or $BENCH_SECONDS)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up load per run (default 2)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    # --rounds 0 with --callgrind N: only the (noise-free) instruction counts, results.md untouched.
    ap.add_argument("--callgrind", type=int, default=int(os.environ.get("BENCH_CALLGRIND", 300)),
                    metavar="N", help="also count Envoy instructions per request under valgrind's "
                    "callgrind over N requests per scenario (noise-free; about 30 s per scenario)")
    ap.add_argument("--only", default="abcdefghijklmnopqrstuvwxyz1234567890",
                    help="scenarios to run, one character each, e.g. acf, ayz1 or ac34 ((a) is always run)")
    ap.add_argument("--without-llm", action="store_true",
                    help="debug: run (r) and (t) with `llm` removed from their config (a filter that does not "
                    "know it yet), without checking the llm counters; results.md is not written")
    ap.add_argument("--no-heap", dest="heap", action="store_false",
                    help="skip the peak Wasm heap of one held request (a heap-stats build, about 1 minute)")
    ap.add_argument("--probe", action="store_true",
                    help="instead: price each host call graysplit makes (bench/probe, callgrind; about 6 minutes)")
    args = ap.parse_args()
    global WITHOUT_LLM
    WITHOUT_LLM = args.without_llm
    run.require_wasm()
    if args.probe:
        return probe(args)

    wrk_bin, nginx_bin = ensure_packages(args.callgrind > 0)
    build_noop()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    TOKENS[:] = jwt_tokens().read_text().split()
    LANES[:] = lane_members().read_text().split()

    pinned = (os.cpu_count() or 1) >= 2
    envoy_cpu, load_cpu = (ENVOY_CPU, LOAD_CPU) if pinned else (None, None)
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})   # bench.py itself stays off Envoy's CPU
    else:
        print("WARNING: fewer than 2 CPUs: nothing is pinned, the figures are noisier", file=sys.stderr)

    scens = [s for s in scenarios(run.WASM) if s.key in set(args.only) | {"a"}]
    nginx = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        nginx, ports = start_nginx(nginx_bin, load_cpu)
        print(f"upstream: nginx on 127.0.0.1:{ports['V1_PORT']} (v1) and :{ports['V2_PORT']} (v2), HTTP/2 on "
              f":{ports['V1_H2_PORT']} (v1_h2) and :{ports['V2_H2_PORT']} (v2_h2)")
        reads = {}
        if any(s.kind in LLM_FILES for s in scens):
            reads = answer_reads(ports, envoy_cpu)
            for way, (r, frames, largest) in reads.items():
                print(f"{way}: {r:.1f} upstream reads per answer, {frames:.1f} data frames "
                      f"(largest {largest:,} bytes)", flush=True)
        if any(s.key == "e" for s in scens):
            n = check_lua_murmur3(ports, envoy_cpu)
            print(f"Lua murmur3 agrees with Python mmh3 on {n} (salt, user id) pairs")
        for s in scens:
            start_envoy(s, ports, envoy_cpu)
            print(f"({s.key}) {s.title}: Envoy pid {s.proc.pid}, port {s.port}; routing check: {check_routing(s)}",
                  flush=True)

        runs: list[Run] = []
        started = time.monotonic()
        for rnd in range(args.rounds):
            order = scens[rnd % len(scens):] + scens[:rnd % len(scens)]
            for s in order:
                r = measure_with_retries(wrk_bin, s, rnd, args, envoy_cpu, load_cpu, ports)
                runs.append(r)
                print(f"round {rnd + 1}/{args.rounds} ({s.key}): {r.requests} rq, {r.cpu_us_per_rq:.1f} µs CPU/rq, "
                      f"{r.rps:,.0f} rps, p99 {r.p99_ms:.2f} ms, CPU {ENVOY_CPU} other {r.other_pct:.0f}% "
                      f"steal {r.steal_pct:.0f}%" + (f", {r.errors} ERRORS" if r.errors else ""),
                      flush=True)
        bad = [r for r in runs if r.errors]
        instructions = {}
        if args.callgrind:
            for s in scens:
                instructions[s.key] = instructions_per_request(s, ports, args.callgrind, envoy_cpu)
                print(f"({s.key}) {instructions[s.key]:,.0f} instructions per request (callgrind)", flush=True)
        for s in scens:  # still routing as intended after the load?
            check_routing(s, sample=200)
        heap = heap_peaks(ports, envoy_cpu) if args.heap else []
        for size, peak in heap:
            print(f"heap: one held request with a {size:,}-byte body peaks at {peak:,} bytes of Wasm heap "
                  f"({peak / size:.2f} x the body)", flush=True)
        print(f"measured in {time.monotonic() - started:.0f} s\n")
        if not runs:  # --rounds 0: instruction counts only; results.md keeps the last timed run
            a = instructions.get("a", 0) or 1
            for k, v in instructions.items():
                print(f"({k}) {v:,.0f} instructions/rq, {v / a:.3f} x (a)")
            print("\n".join(llm_lines(instructions, {}, reads, previous_instructions())))
            print("\n".join(shadow_lines(instructions, {}, previous_instructions())))
            print("\n".join(lane_lines(instructions, {}, previous_instructions())))
            value = {k: v / a for k, v in instructions.items()}
            goals = [line for k in GOALS if (line := goal_line(value, k))]
            if goals:
                print("Targets (instructions): " + "; ".join(goals) + ".")
            return 0
        text = report(scens, runs, args, run.WASM, pinned, instructions, reads, previous_instructions())
        if heap:
            text += ("\nPeak Wasm heap of one held request (headers to decision; feature `heap-stats`, "
                     "(k)'s body identity, `body.max_bytes` 983040; DESIGN's bound: below 2 x max_bytes "
                     "plus a constant):\n\n| body | peak heap | x body |\n| ---: | ---: | ---: |\n"
                     + "".join(f"| {size:,} B | {peak:,} B | {peak / size:.2f} |\n" for size, peak in heap))
        if bad:
            text += (f"\n**{len(bad)} runs had errors** (non-2xx, 5xx or socket errors): "
                     + ", ".join(f"({r.key}) round {r.round + 1}: {r.errors}" for r in bad) + "\n")
        print(text)
        if WITHOUT_LLM:
            print(f"--without-llm: {RESULTS.relative_to(ROOT)} not written")
        else:
            RESULTS.write_text(text)
            print(f"wrote {RESULTS.relative_to(ROOT)}")
        return 1 if bad else 0
    finally:
        for s in scens:
            stop(s.proc)
        stop(nginx)


if __name__ == "__main__":
    sys.exit(main())
