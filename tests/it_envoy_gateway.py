"""graysplit under Envoy Gateway (DESIGN.md "Distribution (v3.1)"), offline: a real Envoy
configured the way Envoy Gateway 1.9 renders envoy-gateway/'s policy
(../shared/envoy-gateway-wasm-example/): the Wasm filter in the HCM with `disabled: true` and
enabled per route by `typed_per_filter_config` (`envoy.config.route.v3.FilterConfig`,
`config: {}`) on the routes of what the policy targets; the module fetched by Envoy with
`vm_config.code.remote` (`http_uri` to a cluster, `sha256` of the module, a retry policy) from an
HTTP server the test starts (Envoy Gateway serves the module it pulled that way); the policy's
`config` as a `google.protobuf.StringValue`; `fail_open` from `failOpen`; then
envoy-gateway/envoypatchpolicy.yaml's JSON patch applied to the listener, as Envoy Gateway applies
it. Routes come from envoy-gateway/gateway.yaml's HTTPRoute, one Envoy route per rule match, in
Gateway API's precedence (crds.httproute_matches).
Envoy Gateway itself is not run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest

import crds as kube
import harness
from harness import REPO, Envoy, bucket, wait_until
from upstream import App, Apps, OpenAIApp

EG = REPO / "envoy-gateway"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def docs(kind: str, name: str | None = None) -> list[dict]:
    out = []
    for path in sorted(EG.glob("*.yaml")):
        for d in kube.load_docs(path):
            if d.get("kind") == kind and (name is None or path.name == name):
                out.append(d)
    return out


POLICY = docs("EnvoyExtensionPolicy", "envoyextensionpolicy.yaml")[0]
ROUTE = docs("HTTPRoute")[0]
GATEWAY = docs("Gateway")[0]
PATCH = docs("EnvoyPatchPolicy")[0]
CONFIG = POLICY["spec"]["wasm"][0]["config"]
GRAY = "v2.1"
STABLE = CONFIG["stable"]


def filter_name(policy: dict, index: int = 0) -> str:
    md = policy["metadata"]
    return f"envoy.filters.http.wasm/envoyextensionpolicy/{md['namespace']}/{md['name']}/wasm/{index}"


class ModuleServer(App):
    """Serves the module at /<sha256>.wasm, as Envoy Gateway's wasm HTTP server does."""

    def __init__(self, module: bytes):
        self.module = module
        self.sha = hashlib.sha256(module).hexdigest()
        self.fetches = 0
        super().__init__("module")

    def respond(self, h, body: bytes) -> None:
        self.fetches += 1
        found = h.path == f"/{self.sha}.wasm"
        h.send_response(200 if found else 404)
        h.send_header("content-length", str(len(self.module) if found else 0))
        h.end_headers()
        if found:
            h.wfile.write(self.module)


def json_patch(doc: dict, patch: dict) -> None:
    """Envoy Gateway's JSONPatch operation, for what envoypatchpolicy.yaml uses: a `jsonPath`
    of the form `..<field>[?(@.name=='<name>')]` selecting objects anywhere in the resource,
    then `op: add` of `value` at the JSON pointer `path` relative to each (RFC 6902 add: the
    parent must exist)."""
    op = patch["operation"]
    assert op["op"] == "add", op
    m = re.fullmatch(r"\.\.(\w+)\[\?\(@\.name\s*==\s*'([^']+)'\)\]", op["jsonPath"])
    assert m, f"jsonPath form not modelled: {op['jsonPath']}"
    field, name = m.groups()
    found = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == field and isinstance(v, list):
                    found.extend(x for x in v if isinstance(x, dict) and x.get("name") == name)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert found, f"jsonPath {op['jsonPath']} selects nothing"
    for target in found:
        keys = op["path"].strip("/").split("/")
        node = target
        for k in keys[:-1]:
            node = node[k]       # KeyError: the parent does not exist, as RFC 6902 refuses
        node[keys[-1]] = op["value"]


def rendered(workdir: Path, apps: Apps, module: ModuleServer, *, enabled_rules=None,
             sha256: str | None = None, patch: bool = True) -> dict:
    """The bootstrap standing in for Envoy Gateway's xDS. enabled_rules: the HTTPRoute rule
    names whose routes enable the filter (default: all, as the policy targets the HTTPRoute)."""
    doc = harness.bootstrap(None, access_log=workdir / "access.log", strip_route_header=False)
    listener = doc["static_resources"]["listeners"][0]
    gw_ns, gw_name = GATEWAY["metadata"]["namespace"], GATEWAY["metadata"]["name"]
    # Envoy Gateway names the listener <ns>/<gateway>/<listener> (the patch's target); the
    # harness finds its port by the name app_ipv4, which this listener keeps.
    eg_listener = f"{gw_ns}/{gw_name}/{GATEWAY['spec']['listeners'][0]['name']}"
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    w = POLICY["spec"]["wasm"][0]
    name = filter_name(POLICY)
    wasm = {"name": name, "disabled": True, "typed_config": {
        "@type": harness.WASM_TYPE_URL,
        "config": {
            "name": w["name"],
            "vm_config": {
                "vm_id": name.split("/", 1)[1],
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"remote": {
                    "http_uri": {"uri": f"http://127.0.0.1:{module.port}/{module.sha}.wasm",
                                 "cluster": "wasm_cluster", "timeout": "10s"},
                    "sha256": sha256 or module.sha,
                    "retry_policy": {"num_retries": 1,
                                     "retry_back_off": {"base_interval": "0.2s",
                                                        "max_interval": "0.5s"}}}},
            },
            "configuration": {"@type": STRING_VALUE,
                              "value": json.dumps(w["config"], separators=(",", ":"))},
            "fail_open": bool(w.get("failOpen", False)),
        }}}
    hcm["http_filters"] = [wasm] + [f for f in hcm["http_filters"]
                                    if f["name"] == "envoy.filters.http.router"]
    # Routes: one per HTTPRoute rule match, in Gateway API's precedence.
    backends = {GRAY: "gray", STABLE: "stable"}
    routes = []
    for rule, m in kube.httproute_matches(ROUTE):
        svc = rule["backendRefs"][0]["name"]
        version = GRAY if svc.endswith(GRAY.replace(".", "-")) else STABLE
        match: dict = {"prefix": "/"}
        if m.get("headers"):
            match["headers"] = [{"name": h["name"], "string_match": {"exact": h["value"]}}
                                for h in m["headers"]]
        r = {"name": f"httproute/{ROUTE['metadata']['namespace']}/{ROUTE['metadata']['name']}"
                     f"/rule/{rule['name']}",
             "match": match, "route": {"cluster": backends[version]}}
        if enabled_rules is None or rule["name"] in enabled_rules:
            r["typed_per_filter_config"] = {name: {"@type": FILTER_CONFIG, "config": {}}}
        routes.append(r)
    hcm["route_config"] = {"name": eg_listener, "virtual_hosts": [
        {"name": "rag", "domains": ["*"], "routes": routes}]}
    doc["static_resources"]["clusters"] = [
        {"name": c, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": c, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {
                 "address": "127.0.0.1", "port_value": port}}}}]}]}}
        for c, port in (("gray", apps[GRAY].port), ("stable", apps[STABLE].port),
                        ("wasm_cluster", module.port))]
    if patch:
        for p in PATCH["spec"]["jsonPatches"]:
            assert p["type"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
            assert p["name"] == eg_listener, (p["name"], eg_listener)
            json_patch(listener, p)
    return doc


@pytest.fixture(scope="module")
def apps():
    a = Apps([STABLE, GRAY], kind=OpenAIApp)
    yield a
    a.close()


@pytest.fixture(scope="module")
def module():
    m = ModuleServer(harness.WASM.read_bytes())
    yield m
    m.close()


@pytest.fixture
def eg_envoy(tmp_path, apps, module):
    started = []

    def start(**kw):
        workdir = tmp_path / f"eg{len(started)}"
        workdir.mkdir()
        envoy = Envoy(workdir, rendered(workdir, apps, module, **kw))
        started.append(envoy)
        return envoy.launch()

    yield start
    for e in started:
        e.stop()


SALT = CONFIG["rules"][0]["salt"]
PERCENT = CONFIG["rules"][0]["split"][0]["percent"]
USERS = [f"user-{i}" for i in range(400)]


def want(user: str) -> str:
    return GRAY if bucket(SALT, user) < PERCENT * 100 else STABLE


def chat(envoy: Envoy, user: str, extra=()) -> harness.Resp:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with envoy.conn() as c:
        return c.request("POST", "/v1/chat/completions",
                         [("x-user-id", user), ("content-type", "application/json"), *extra], body)


def it_the_http_variant_is_the_image_policy_with_other_code():
    """envoyextensionpolicy-http.yaml is the same policy as envoyextensionpolicy.yaml (name,
    targets, failOpen, config) with the module fetched over HTTP instead: only `code` differs,
    and its sha256 is the module's own (64 hex, as `make istio-pin` writes it), not a manifest
    digest."""
    http = docs("EnvoyExtensionPolicy", "envoyextensionpolicy-http.yaml")
    assert len(http) == 1
    http = http[0]
    assert http["metadata"] == POLICY["metadata"], "one of the two is applied, under one name"
    strip = lambda spec: {**spec, "wasm": [{k: v for k, v in w.items() if k != "code"}
                                           for w in spec["wasm"]]}  # noqa: E731
    assert strip(http["spec"]) == strip(POLICY["spec"]), "the two policies differ beyond code"
    for w in http["spec"]["wasm"]:
        assert w["code"]["type"] == "HTTP" and set(w["code"]) == {"type", "http"}
        assert re.fullmatch(r"[0-9a-f]{64}", w["code"]["http"]["sha256"])
    for w in POLICY["spec"]["wasm"]:
        assert w["code"]["type"] == "Image" and set(w["code"]) == {"type", "image"}


def it_the_patch_sets_the_body_flag_on_the_policy_s_filter(apps, module, tmp_path):
    doc = rendered(tmp_path, apps, module)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = hcm["http_filters"][0]
    assert wasm["name"] == filter_name(POLICY) and wasm["disabled"] is True
    assert wasm["typed_config"]["config"]["allow_on_headers_stop_iteration"] is True
    assert wasm["typed_config"]["config"]["fail_open"] is False
    bad = copy.deepcopy(PATCH["spec"]["jsonPatches"][0])
    bad["operation"]["jsonPath"] = "..http_filters[?(@.name=='envoy.filters.http.wasm/other')]"
    with pytest.raises(AssertionError, match="selects nothing"):
        json_patch(doc["static_resources"]["listeners"][0], bad)


def it_splits_pins_strips_a_spoofed_header_counts_guards_and_reads_llm(eg_envoy, module):
    envoy = eg_envoy()
    served = {}
    for u in USERS:
        r = chat(envoy, u, [("x-graysplit-version", GRAY if u.endswith("7") else STABLE)])
        assert r.status == 200, r
        served[u] = r.header("x-app-version")
        assert r.header("x-graysplit-version") == served[u]
    assert served == {u: want(u) for u in USERS}, "split, spoofed headers overwritten"
    n_gray = sum(v == GRAY for v in served.values())
    assert 0 < n_gray < len(USERS)
    again = {u: chat(envoy, u).header("x-app-version") for u in USERS[:50]}
    assert again == {u: served[u] for u in USERS[:50]}, "pinned"
    wait_until(lambda: harness.graysplit_stat(envoy, "guard_responses_total", GRAY,
                                              ".result.ok") >= n_gray, 10, "gray's guard counts")
    n_gray += sum(v == GRAY for v in again.values())
    assert envoy.counter(f"wasmcustom.graysplit_decisions_total.rule.ramp.version.{GRAY}") == n_gray
    stats = envoy.stats("graysplit_llm_answers_total")
    gray_answers = sum(v for k, v in stats.items() if f"version.{GRAY}." in k)
    assert gray_answers >= n_gray, stats
    assert module.fetches >= 1


def it_a_gray_route_without_the_filter_loses_guards_llm_and_the_strip(eg_envoy):
    envoy = eg_envoy(enabled_rules={"stable"})
    gray_users = [u for u in USERS if want(u) == GRAY][:20]
    stable_users = [u for u in USERS if want(u) == STABLE][:20]
    # Moved there by the decision (first route: stable, where the filter runs).
    for u in gray_users:
        assert chat(envoy, u).header("x-app-version") == GRAY
    # A client naming gray itself lands there with no decision at all.
    spoofed = [chat(envoy, u, [("x-graysplit-version", GRAY)]) for u in stable_users]
    assert all(r.header("x-app-version") == GRAY for r in spoofed), \
        [r.header("x-app-version") for r in spoofed]
    assert all(r.header("x-graysplit-version") is None for r in spoofed)
    decided = envoy.counter(f"wasmcustom.graysplit_decisions_total.rule.ramp.version.{GRAY}")
    assert decided == len(gray_users), "the spoofed requests were never seen"
    # Envoy builds a stream's filter chain once, on the route first matched: a request the
    # decision moved to gray keeps the filter (its answer counted and read); one that matched
    # gray first never had it (neither counted by the guard nor read by `llm`).
    wait_until(lambda: harness.graysplit_stat(envoy, "guard_responses_total", GRAY, ".result.ok")
               >= len(gray_users), 10, "the moved requests' guard counts")
    counted = harness.graysplit_stat(envoy, "guard_responses_total", GRAY, ".result.ok")
    assert counted == len(gray_users), "only the requests graysplit decided are counted"
    answers = sum(v for k, v in envoy.stats("graysplit_llm_answers_total").items()
                  if f"version.{GRAY}." in k)
    assert answers == len(gray_users), answers
    print(f"gray route without the filter: {len(gray_users)} moved there, guard counted "
          f"{counted}; {len(spoofed)} spoofed requests reached gray unseen")


def it_a_wrong_sha256_never_serves_a_decision(eg_envoy, apps):
    envoy = eg_envoy(sha256="0" * 64)
    rs = [chat(envoy, u, [("x-graysplit-version", GRAY)]) for u in USERS[:10]]
    assert all(r.status >= 500 for r in rs), [(r.status, r.header("x-app-version")) for r in rs]
    assert all(r.header("x-graysplit-version") is None for r in rs)
    assert all(r.header("x-app-version") is None for r in rs), "no app saw them"
