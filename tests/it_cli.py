"""The operator CLI (target/release/graysplit, `make cli`): check, explain, simulate, bucket.

Its answers are checked against the contract computed independently here (mmh3 for the
buckets, DESIGN's bucket ranges for the split), its exit codes against what scripts rely on:
0 fine, 1 an invalid config, 2 a usage or input error."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from harness import CLI, DESIGN_EXAMPLE, REPO, bucket, cli, expected_split


def fields(out: str) -> dict[str, str]:
    """`name:  value` lines of `explain` (the header part, before `why:`)."""
    head = out.split("\nwhy:")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines())}


@pytest.fixture
def design(tmp_path):
    path = tmp_path / "design.json"
    path.write_text(json.dumps(DESIGN_EXAMPLE))
    return path


def wasmplugin(name: str, config: dict) -> dict:
    return {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": name, "namespace": "rag"},
            "spec": {"url": "oci://example.com/graysplit:1", "pluginConfig": config}}


# --------------------------------------------------------------------------- check

def it_check_accepts_a_valid_config_and_names_its_versions(design):
    r = cli("check", design)
    assert r.returncode == 0, r
    assert re.search(r"ok: stable v2\.0, 4 rules, versions v2\.0, v2\.1", r.stdout), r.stdout


def it_check_rejects_an_invalid_config_with_the_json_path(tmp_path, design):
    bad = json.loads(json.dumps(DESIGN_EXAMPLE))
    bad["rules"][3]["split"][0]["percent"] = 120
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    r = cli("check", design, path)
    assert r.returncode == 1, r
    assert "rules[3].split[0].percent: must be between 0 and 100, got 120" in r.stdout, r.stdout
    assert f"{design}: ok" in r.stdout, "the valid file is still reported"


@pytest.mark.parametrize("mutate,path", [
    (lambda c: c["rules"][0].update(splt=[]), "rules[0].splt"),
    (lambda c: c["override"].update(trusted_cidrs=["10.0.0.0/33"]), "override.trusted_cidrs[0]"),
    (lambda c: c["rules"][1]["when"]["headers"][0].update(name="X-Department"),
     "rules[1].when.headers[0].name"),
    (lambda c: c.pop("stable"), "stable"),
    (lambda c: c["identity"]["sticky_cookie"].update(max_age_s=10),
     "identity.sticky_cookie.max_age_s"),
])
def it_check_points_at_the_bad_field(tmp_path, mutate, path):
    cfg = json.loads(json.dumps(DESIGN_EXAMPLE))
    mutate(cfg)
    r = cli("check", "-", stdin=json.dumps(cfg))
    assert r.returncode == 1, r
    assert f"invalid config: {path}:" in r.stdout, r.stdout


def it_check_reads_plugin_config_from_wasmplugin_yaml(tmp_path):
    bad = json.loads(json.dumps(DESIGN_EXAMPLE))
    bad["rules"][3]["split"][0]["percent"] = 10.555
    docs = [wasmplugin("good", DESIGN_EXAMPLE), {"apiVersion": "v1", "kind": "ConfigMap",
                                                  "metadata": {"name": "x"}},
            wasmplugin("bad", bad)]
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    r = cli("check", path)
    assert r.returncode == 1, r
    assert "WasmPlugin good: ok" in r.stdout, r.stdout
    assert "WasmPlugin bad: invalid config: rules[3].split[0].percent" in r.stdout, r.stdout
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(wasmplugin("good", DESIGN_EXAMPLE)))
    assert cli("check", ok).returncode == 0


def it_check_reads_every_recipe_kind_that_carries_a_config(tmp_path):
    """A TrafficExtension's spec.wasm.pluginConfig, each of an EnvoyExtensionPolicy's
    spec.wasm[i].config, and the configuration string of the Wasm extension config an
    EnvoyFilter ADDs are checked as a WasmPlugin's pluginConfig is; a bad one names the
    resource and the field."""
    bad = json.loads(json.dumps(DESIGN_EXAMPLE))
    bad["rules"][3]["split"][0]["percent"] = 120
    te = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
          "metadata": {"name": "te", "namespace": "rag"},
          "spec": {"wasm": {"url": "oci://example.com/graysplit:1", "pluginConfig": bad}}}
    lua = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
           "metadata": {"name": "lua", "namespace": "rag"},
           "spec": {"lua": {"inlineCode": "function envoy_on_request(h) end"}}}
    eep = {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyExtensionPolicy",
           "metadata": {"name": "eep", "namespace": "rag"},
           "spec": {"wasm": [{"name": "a", "config": DESIGN_EXAMPLE},
                             {"name": "b", "config": bad}]}}
    ef = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
          "metadata": {"name": "ef", "namespace": "rag"},
          "spec": {"configPatches": [{"applyTo": "EXTENSION_CONFIG", "patch": {
              "operation": "ADD", "value": {"name": "x", "typed_config": {
                  "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                  "config": {"configuration": {
                      "@type": "type.googleapis.com/google.protobuf.StringValue",
                      "value": json.dumps(bad)}}}}}}]}}
    camel = json.loads(json.dumps(ef).replace('"typed_config"', '"typedConfig"'))
    camel["metadata"]["name"] = "ef-camel"     # protobuf JSON's other spelling
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump_all([te, lua, eep, ef, camel]))
    r = cli("check", path)
    assert r.returncode == 1, r
    lines = r.stdout.splitlines()
    for origin in ("TrafficExtension te", "EnvoyExtensionPolicy eep wasm[1]",
                   "EnvoyFilter ef configPatches[0]", "EnvoyFilter ef-camel configPatches[0]"):
        assert any(f"{origin}: invalid config: rules[3].split[0].percent" in x for x in lines), \
            (origin, r.stdout)
    assert any("EnvoyExtensionPolicy eep wasm[0]: ok" in x for x in lines), r.stdout
    assert "lua" not in r.stdout, "a Lua TrafficExtension has no graysplit config"
    # explain picks a config by name, KIND/NAME, or NAME/PART for one of several.
    r = cli("explain", path, "--plugin", "te", "--user", "alice")
    assert r.returncode != 0 and "TrafficExtension te: invalid config" in r.stderr, r
    r = cli("explain", path, "--plugin", "eep", "--user", "alice")
    assert r.returncode == 2 and "EnvoyExtensionPolicy/eep/wasm[0], " \
        "EnvoyExtensionPolicy/eep/wasm[1]" in r.stderr, r
    for sel in ("eep/wasm[0]", "EnvoyExtensionPolicy/eep/wasm[0]"):
        r = cli("explain", path, "--plugin", sel, "--user", "alice")
        assert r.returncode == 0 and "EnvoyExtensionPolicy eep wasm[0]" in r.stdout, (sel, r)
    r = cli("explain", path, "--plugin", "WasmPlugin/te", "--user", "alice")
    assert r.returncode == 2 and "selects none of: TrafficExtension/te" in r.stderr, r
    for f in ("trafficextension-gateway.yaml", "trafficextension-waypoint.yaml",
              "envoyfilter-body-gateway.yaml"):
        assert cli("check", REPO / "istio" / f).returncode == 0, f
    assert cli("check", REPO / "envoy-gateway" / "envoyextensionpolicy.yaml").returncode == 0
    assert cli("check", REPO / "istio" / "wasmplugin-gateway.yaml").returncode == 0


# --------------------------------------------------------------------------- explain

@pytest.mark.parametrize("user", ["alice", "bob", "user-42", "用户-7", "ceo@example.org"])
def it_explain_gives_the_version_rule_and_bucket_the_contract_gives(design, user):
    r = cli("explain", design, "--user", user)
    assert r.returncode == 0, r
    f = fields(r.stdout)
    b = bucket("release-2.1", user)
    assert f["bucket"] == f"{b} of 10000", r.stdout
    assert f["version"] == expected_split("release-2.1", user, [("v2.1", 10)], "v2.0"), r.stdout
    assert f["rule"] == "ramp", r.stdout
    assert f"bucket {b} is in" in r.stdout, r.stdout


def it_explain_says_which_rule_decided_and_why(design):
    f = fields(cli("explain", design, "--user", "ceo@example.com").stdout)
    assert (f["version"], f["rule"]) == ("v2.0", "vip-stay-stable")
    r = cli("explain", design, "--user", "alice", "--header", "x-department: legal")
    assert (fields(r.stdout)["version"], fields(r.stdout)["rule"]) == ("v2.1", "legal-pilot")
    r = cli("explain", design, "--user", "alice", "--path", "/api/x", "--source", "192.168.3.4")
    assert (fields(r.stdout)["version"], fields(r.stdout)["rule"]) == ("v2.1", "office")
    assert "skipped: not true that header x-department" in r.stdout, r.stdout
    r = cli("explain", design, "--user", "alice", "--path", "/web/", "--source", "192.168.3.4")
    assert fields(r.stdout)["rule"] == "ramp", r.stdout


SHADOWED = {"stable": "v1", "identity": {"from": [{"header": "x-user-id"}]},
            "shadow_sink": {"cluster": "otel"},
            "rules": [{"name": "ramp", "salt": "r", "split": [{"version": "v2", "percent": 10}],
                       "shadow": {"version": "v2", "percent": 40, "cluster": "app-v2",
                                  "path_prefixes": ["/v1/"]}}]}


def it_explain_says_whether_the_shadow_takes_the_request(tmp_path):
    """The `shadow:` line against the cohort computed here: stable-decided (mmh3 of the rule's
    salt), shadow bucket of salt + ":shadow" below 4000, the path under /v1/; the user hash as
    DESIGN's SHA-256 of salt:user."""
    import hashlib
    path = tmp_path / "shadowed.json"
    path.write_text(json.dumps(SHADOWED))
    seen = set()
    for user in [f"user-{i}" for i in range(40)]:
        out = cli("explain", path, "--user", user, "--path", "/v1/chat").stdout
        (line,) = [ln for ln in out.splitlines() if ln.startswith("shadow:")]
        sb = bucket("r:shadow", user)
        if bucket("r", user) < 1000:
            assert "not shadowed: only requests decided for stable" in line, (user, line)
            seen.add("gray")
        elif sb < 4000:
            h = hashlib.sha256(f"r:shadow:{user}".encode()).hexdigest()[:16]
            assert line == (f"shadow:  also sent to cluster app-v2 as v2 (shadow bucket {sb} of 10000, "
                            f"below 4000 = 40%); its record's user_hash {h}"), (user, line)
            seen.add("shadowed")
        else:
            assert f"not shadowed: shadow bucket {sb} of 10000 is not below 4000" in line, (user, line)
            seen.add("outside")
    assert seen == {"gray", "shadowed", "outside"}
    out = cli("explain", path, "--user", "user-1", "--path", "/other").stdout
    assert "shadow:  not shadowed: path /other is not under its path_prefixes" in out or \
        "only requests decided for stable" in out, out
    assert "shadow:  not shadowed: no user id" in cli("explain", path, "--path", "/v1/x").stdout


def it_explain_honours_the_override_only_from_a_trusted_source(design):
    stable_user = next(u for u in (f"u{i}" for i in range(1000)) if bucket("release-2.1", u) >= 1000)
    args = ["explain", design, "--user", stable_user, "--header", "x-gray-release: v2.1"]
    r = cli(*args, "--source", "203.0.113.9")
    f = fields(r.stdout)
    assert (f["version"], f["rule"]) == ("v2.0", "ramp"), r.stdout
    assert "not in trusted_cidrs" in r.stdout, r.stdout
    for source in ("10.1.2.3", "127.0.0.1", "::ffff:10.9.9.9"):
        f = fields(cli(*args, "--source", source).stdout)
        assert (f["version"], f["rule"]) == ("v2.1", "override"), source
    f = fields(cli("explain", design, "--user", stable_user, "--header", "x-gray-release: v9",
                   "--source", "10.1.2.3").stdout)
    assert f["version"] == "v2.0", "an unknown version is ignored"


def it_explain_mints_an_id_when_there_is_none(design):
    r = cli("explain", design)
    assert r.returncode == 0, r
    assert "Set-Cookie: graysplit_uid=<32 random hex>" in r.stdout, r.stdout


# --------------------------------------------------------------------------- simulate

@pytest.mark.parametrize("percent", [1, 10, 37.5, 50])
def it_simulate_share_matches_the_percent(tmp_path, percent):
    cfg = json.loads(json.dumps(DESIGN_EXAMPLE))
    cfg["rules"][3]["split"][0]["percent"] = percent
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    r = cli("simulate", path, "--users", 10000)
    assert r.returncode == 0, r
    m = re.search(r"^\(all rules\)\s+v2\.1\s+(\d+)\s+([\d.]+)%$", r.stdout, re.M)
    assert m, r.stdout
    users, share = int(m.group(1)), float(m.group(2))
    assert abs(share - percent) <= 1, r.stdout
    assert share == pytest.approx(users / 100)
    # The simulated ids are printed; the count is exactly what mmh3 gives them.
    ids = re.search(r"ids (\S+)-0 \.\. \1-9999", r.stdout)
    assert ids, r.stdout
    exact = sum(bucket("release-2.1", f"{ids.group(1)}-{i}") < percent * 100
                for i in range(10000))
    assert users == exact, r.stdout


def it_simulate_reports_shares_per_rule(design):
    r = cli("simulate", design, "--users", 2000, "--header", "x-department: legal")
    assert r.returncode == 0, r
    assert re.search(r"^legal-pilot\s+v2\.1\s+2000\s+100\.00%$", r.stdout, re.M), r.stdout


# --------------------------------------------------------------------------- bucket

@pytest.mark.parametrize("salt,user,want", [
    ("release-2.1", "alice", 9862), ("release-2.1", "bob", 1649),
    ("ramp", "user-42", 3832), ("ramp", "用户-7", 5588)])
def it_bucket_matches_the_design_golden_values(salt, user, want):
    r = cli("bucket", salt, user)
    assert r.returncode == 0, r
    assert int(r.stdout) == want == bucket(salt, user)


# --------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["bucket", "only-salt"], ["check"], ["explain"],
    ["simulate", "istio/wasmplugin-gateway.yaml"],
    ["simulate", "istio/wasmplugin-gateway.yaml", "--users", "ten"],
    ["explain", "istio/wasmplugin-gateway.yaml", "--source", "not-an-ip"],
    ["explain", "istio/wasmplugin-gateway.yaml", "--frob"],
    ["explain", "istio/wasmplugin-gateway.yaml", "--header", "no-colon"],
    ["check", "/nonexistent/config.json"],
    ["explain", "istio/virtualservice.yaml"],
], ids=lambda a: " ".join(a) or "(none)")
def it_usage_errors_exit_2_with_a_message(args):
    r = subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2, r
    assert r.stderr.strip() or "Usage:" in r.stdout, r


# --------------------------------------------------------------------------- schedules, guards

V2_RAMP = {
    "stable": "v2.0",
    "identity": {"from": [{"header": "x-user-id"}]},
    "rules": [{"name": "ramp", "salt": "release-2.1",
               "split": [{"version": "v2.1", "schedule": [
                   {"at": "2026-12-02T09:00:00Z", "percent": 1},
                   {"at": "2026-12-02T10:00:00Z", "percent": 10},
                   {"at": "2026-12-03T09:00:00Z", "percent": 50},
                   {"at": "2026-12-04T09:00:00Z", "percent": 100}]}],
               "guard": {"max_error_percent": 5, "min_requests": 50, "window_s": 60,
                         "statuses": ["5xx", 429], "slow_ms": 2000}}],
}


@pytest.fixture
def ramp(tmp_path):
    path = tmp_path / "ramp.json"
    path.write_text(json.dumps(V2_RAMP))
    return path


def it_check_prints_each_schedule_as_a_timeline_with_the_live_step(ramp):
    r = cli("check", "--at", "2026-12-03T12:00:00Z", ramp)
    assert r.returncode == 0, r
    steps = re.findall(r"^    (\S+)\s+(\S+%)(   <- now)?$", r.stdout, re.M)
    assert steps == [("2026-12-02T09:00:00Z", "1%", ""), ("2026-12-02T10:00:00Z", "10%", ""),
                     ("2026-12-03T09:00:00Z", "50%", "   <- now"),
                     ("2026-12-04T09:00:00Z", "100%", "")], r.stdout
    before = cli("check", "--at", "2026-12-01T00:00:00Z", ramp).stdout
    assert re.search(r"\(before\)\s+0%   <- now: before the first step", before), before
    assert ("guard: a version trips when more than 5% of at least 50 responses in 60 s are errors "
            "(status 5xx, 429 or slower than 2000 ms)") in r.stdout, r.stdout


@pytest.mark.parametrize("at,percent", [("2026-12-02T08:59:59Z", 0), ("2026-12-02T09:00:00Z", 1),
                                        ("2026-12-02T12:00:00Z", 10), ("2026-12-03T09:30:00Z", 50),
                                        ("2026-12-10T00:00:00Z", 100)])
def it_explain_and_simulate_follow_the_schedule_at_a_time(ramp, at, percent):
    for user in ("alice", "bob", "user-42", "carol"):
        f = fields(cli("explain", ramp, "--user", user, "--at", at).stdout)
        want = "v2.1" if bucket("release-2.1", user) < percent * 100 else "v2.0"
        assert f["version"] == want, (user, at, f)
    out = cli("simulate", ramp, "--users", "2000", "--at", at).stdout
    gray = sum(1 for i in range(2000) if bucket("release-2.1", f"sim-user-{i}") < percent * 100)
    m = re.search(r"^\(all rules\)\s+v2\.1\s+(\d+)", out, re.M)
    assert (int(m.group(1)) if m else 0) == gray, out


def it_explain_shows_what_a_tripped_guard_does(ramp):
    r = cli("explain", ramp, "--user", "bob", "--at", "2026-12-04T10:00:00Z", "--tripped", "v2.1")
    assert fields(r.stdout)["version"] == "v2.0", r.stdout
    assert "but v2.1's guard has tripped: stable" in r.stdout, r.stdout
    bad = cli("explain", ramp, "--user", "bob", "--tripped", "v9")
    assert bad.returncode == 2 and "--tripped v9" in bad.stderr, bad


# --------------------------------------------------------------------------- claims, bodies, pins

API = {
    "stable": "v1", "identity": {"from": [{"claim": "sub"}, {"body": "/user"}]},
    "session_pin": {"cookie": "gp", "idle_s": 1800, "key": "0123456789abcdef0123456789abcdef"},
    "rules": [
        {"name": "legal", "when": {"claims": [{"name": "department", "exact": "legal"}]}, "version": "v2"},
        {"name": "beta", "when": {"claims": [{"name": "groups", "one_of": ["beta"]}]}, "version": "v3"},
        {"name": "qwen", "when": {"body": [{"pointer": "/model", "one_of": ["qwen2.5-72b"]}]}, "version": "v3"},
        {"name": "ramp", "salt": "api", "split": [{"version": "v2", "percent": 50}]},
    ],
}


@pytest.fixture
def api(tmp_path):
    path = tmp_path / "api.json"
    path.write_text(json.dumps(API))
    return path


def it_explain_takes_claims_a_body_and_a_pin(api, tmp_path):
    f = fields(cli("explain", api, "--claim", "department=legal").stdout)
    assert (f["version"], f["rule"]) == ("v2", "legal")
    f = fields(cli("explain", api, "--claim", 'groups=["eng","beta"]').stdout)
    assert f["rule"] == "beta", "a JSON array claim"
    body = tmp_path / "chat.json"
    body.write_text(json.dumps({"model": "gpt-4o", "user": "u-17"}))
    f = fields(cli("explain", api, "--body", body).stdout)
    want = "v2" if bucket("api", "u-17") < 5000 else "v1"
    assert (f["version"], f["bucket"]) == (want, f"{bucket('api', 'u-17')} of 10000")
    body.write_text(json.dumps({"model": "qwen2.5-72b"}))
    assert fields(cli("explain", api, "--body", body).stdout)["rule"] == "qwen"
    out = cli("explain", api, "--claim", "sub=alice").stdout
    pin = re.search(r"Set-Cookie: gp\.[a-z0-9_-]+=(\S+);", out).group(1)
    kept = cli("explain", api, "--claim", "sub=alice", "--pin", pin).stdout
    assert "pin:     kept" in kept, kept
    other = cli("explain", api, "--claim", "sub=bob", "--pin", pin).stdout
    assert "its signature does not verify" in other, other


def it_explain_shows_the_lane_an_edge_issues_and_a_follower_follows(tmp_path):
    """The edge's member signed as DESIGN says (HMAC-SHA256 recomputed here), and a follower
    config explaining a request that carries it: decided by rule lane."""
    import base64
    import hashlib
    import hmac
    key = "a secret of at least 32 characters, shared by the mesh"
    edge = tmp_path / "edge.json"
    edge.write_text(json.dumps({"stable": "v1", "identity": {"from": [{"header": "x-user-id"}]},
                                "lane": {"mode": "edge", "key": key},
                                "rules": [{"name": "ramp", "salt": "s", "split": [{"version": "v2", "percent": 50}]}]}))
    user = next(u for u in (f"u{i}" for i in range(100)) if bucket("s", u) < 5000)
    out = cli("explain", edge, "--user", user, "--header", "baggage: k=1").stdout
    m = re.search(r"^lane:    issued; baggage: k=1,(graysplit=v2;r=ramp;e=(\d+));s=([A-Za-z0-9_-]{43})$", out, re.M)
    assert m, out
    sig = base64.urlsafe_b64encode(hmac.new(key.encode(), m.group(1).encode(), hashlib.sha256).digest())
    assert m.group(3) == sig.rstrip(b"=").decode()
    follow = tmp_path / "follow.json"
    # The follower knows v2 (a split at 0 %: its own rules send nobody there).
    follow.write_text(json.dumps({"stable": "v1", "lane": {"mode": "follow", "key": key},
                                  "identity": {"from": [{"header": "x-user-id"}]},
                                  "rules": [{"name": "all", "split": [{"version": "v2", "percent": 0}]}]}))
    member = f"{m.group(1)};s={m.group(3)}"
    f = fields(cli("explain", follow, "--header", f"baggage: a=1,{member}").stdout)
    assert (f["version"], f["rule"], f["lane"]) == ("v2", "lane", "followed; kept as it came"), f
    f = fields(cli("explain", follow, "--header", f"baggage: a=1,{member.replace('v2', 'v1', 1)}").stdout)
    assert (f["version"], f["rule"], f["lane"]) == ("v1", "all", "forged; baggage: a=1"), f
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"stable": "v1", "lane": {"mode": "follow", "key": key}}))
    f = fields(cli("explain", unknown, "--header", f"baggage: {member}").stdout)
    assert (f["version"], f["rule"], f["lane"]) == ("v1", "default", "forged; removed"), \
        "a version the follower does not know is not followed"
