"""The lane recipe for Istio (istio/lane/, issue 19 item 4), offline, the way tests/it_istio.py
tests istio/: the whole chain of a gray RAG assistant kept on one version, from the ingress
gateway (the edge) through rag-assistant and the retriever to gray's own vector store.

- CRD validation: tests/it_recipes.py validates every document of istio/lane/*.yaml
  (tests/crds.py: strict schemas and CEL rules, `vmConfig.env`'s included). The CRDs also show
  what Istio offers for a key: `vmConfig.env` has INLINE and HOST and nothing that reads a
  Secret (tested below).
- The chain: one edge, the followers, the hop each follower routes, and the checks that keep
  them one chain (the same baggage key, route header and key source; every version the edge can
  issue known to every follower and routed by its hop's VirtualService to a subset of its own).
- The keys: never in the recipe; from the Secret `graysplit-lane` through the istio-proxy
  container's environment (istio/lane/proxy-env/*.yaml) and `vmConfig.env` valueFrom HOST.
  istiod's rendering of vmConfig.env (pilot/pkg/model/extensions.go buildVMConfig, 1.30.3) and
  istio-agent's (pkg/wasm/convert.go rewriteVMConfig, it_istio.istio_agent) are modelled below;
  the proxy's environment is the Envoy process's (pilot-agent starts Envoy with
  `cmd.Env = os.Environ()`, pkg/envoy/proxy.go).
- Delivery: each WasmPlugin as istiod 1.30 + istio-agent deliver it (it_istio's model: ECDS from
  a file, 1.30's names) to a real Envoy per hop, routes from that hop's VirtualService to
  stand-in apps per subset that record the `baggage` they got. A request goes in at the edge; the
  baggage the edge's upstream saw goes to the next hop's Envoy, as the app's OpenTelemetry SDK
  would send it, and so on.

The recipe names its keys by environment variable (`lane.key_env`, `lane.previous_keys_env`),
which the filter reads at configure time from the Wasm VM's environment (what Envoy passes from
`vm_config.environment_variables`, istiod's `host_env_keys`). The delivery tests run the chain
both ways: as written, the keys in the proxies' environment only, and with the keys inlined
(`lane.key` / `lane.previous_keys`, `keys_inlined`), as a mesh without the Secret would.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import harness
import it_istio
import run  # scripts/run.py (harness puts scripts/ on the path)
from crds import validate
from harness import REPO, Envoy, cli, known_versions, user_in
from it_istio import crds  # noqa: F401  (the fixture: Istio 1.30.3's CRD schemas, strict)
from upstream import App

LANE = REPO / "istio" / "lane"
PROXY_ENV = LANE / "proxy-env"
SECRET = "graysplit-lane"         # the Secret, in istio-system (gateway) and rag (followers)
# What the Secret holds in these tests (at least 32 characters, as `openssl rand -base64 48`).
KEY = "lane key of the recipe test: 0123456789abcdef0123456789abcdef"
OLD_KEY = "last rotation's lane key, still verified by the followers"
OTHER_KEY = "a key this mesh never had, long enough to be a real one"



def lane_docs() -> list[tuple[str, int, dict]]:
    out = []
    for path in sorted(LANE.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((path.name, i, doc))
    return out


DOCS = lane_docs()
PLUGINS = [(f, d) for f, _, d in DOCS if d.get("kind") == "WasmPlugin"]
FILE_OF = {d["metadata"]["name"]: f for f, d in PLUGINS}
SERVICES = [d for _, _, d in DOCS if d.get("kind") == "VirtualService"]
RULES = [d for _, _, d in DOCS if d.get("kind") == "DestinationRule"]
PATCHES = {p.name: yaml.safe_load(p.read_text()) for p in sorted(PROXY_ENV.glob("*.yaml"))}

# The first hop is istio/'s own rag-assistant VirtualService and DestinationRule.
HOP1_HOST = "rag-assistant.rag.svc.cluster.local"
# Each WasmPlugin of the chain and the host whose calls it decides (the hop it routes).
ROUTES_FOR = {
    "graysplit-gateway": HOP1_HOST,
    "graysplit-lane-rag-assistant": "retriever.rag.svc.cluster.local",
    "graysplit-lane-retriever": "vector-store.rag.svc.cluster.local",
}
CHAIN = list(ROUTES_FOR)   # the order a request takes


def plugin(name: str) -> dict:
    found = [p for _, p in PLUGINS if p["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} WasmPlugins {name} in istio/lane/"
    return copy.deepcopy(found[0])


def lane_of(p: dict) -> dict:
    return p["spec"]["pluginConfig"]["lane"]


def vs_for(host: str) -> dict:
    found = [vs for vs in SERVICES + it_istio.SERVICES if host in vs["spec"]["hosts"]]
    assert len(found) == 1, f"{len(found)} VirtualServices for {host}"
    return found[0]


def dr_for(host: str) -> dict:
    found = [dr for dr in RULES + it_istio.RULES if dr["spec"]["host"] == host]
    assert len(found) == 1, f"{len(found)} DestinationRules for {host}"
    return found[0]


def subset(host: str, version: str) -> str:
    """The subset of `host` whose pods are `version`."""
    found = [s["name"] for s in dr_for(host)["spec"]["subsets"]
             if s.get("labels", {}).get("version") == version]
    assert len(found) == 1, f"{host}: {len(found)} subsets for {version}"
    return found[0]


def subsets(version: str) -> list[str]:
    """The subset serving `version` at each hop of CHAIN, in order."""
    return [subset(ROUTES_FOR[n], version) for n in CHAIN]


# --------------------------------------------------------------------------- CRD validation

def it_istio_has_no_secret_source_for_a_wasm_vm(crds):
    """What Istio 1.30.3's API offers a Wasm VM, as its CRDs say: `vmConfig.env` entries are a
    name and an INLINE value or the proxy's own variable (HOST); a Secret is no source, in
    WasmPlugin nor in 1.30's TrafficExtension, and `imagePullSecret` is a string (a pull
    secret's name). A HOST entry cannot carry a value."""
    gw = plugin("graysplit-gateway")
    env = gw["spec"]["vmConfig"]["env"]
    cases = {
        "valueFrom SECRET": ({**env[0], "valueFrom": "SECRET"}, "SECRET"),
        "secretKeyRef": ({**env[0], "secretKeyRef": {"name": SECRET, "key": "key"}},
                         "secretKeyRef"),
        "valueFrom as in Kubernetes": ({"name": env[0]["name"], "valueFrom": {
            "secretKeyRef": {"name": SECRET, "key": "key"}}}, "valueFrom"),
        "HOST with a value": ({**env[0], "value": KEY}, "value may only be set"),
    }
    for case, (entry, needle) in cases.items():
        errors = validate(it_istio._with(gw, "spec.vmConfig.env", [entry]), crds)
        assert any(needle in e for e in errors), f"{case}: {errors}"
    assert validate(it_istio._with(gw, "spec.imagePullSecret", {"name": SECRET}), crds)
    assert validate(it_istio._with(gw, "spec.vmConfig.env", [
        {"name": "A", "value": "inline"}, {"name": "B", "valueFrom": "HOST"}]), crds) == []
    te = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
          "metadata": {"name": "graysplit", "namespace": "istio-system"},
          "spec": {"selector": gw["spec"]["selector"], "phase": "STATS", "wasm": {
              "url": gw["spec"]["url"], "vmConfig": {"env": [{**env[0], "valueFrom": "SECRET"}]},
              "pluginConfig": {}}}}
    assert any("SECRET" in e for e in validate(te, crds))
    te["spec"]["wasm"]["vmConfig"]["env"][0]["valueFrom"] = "HOST"
    assert validate(te, crds) == []


# --------------------------------------------------------------------------- one chain

def it_the_recipe_is_one_chain_from_the_gateway_to_gray_s_own_vector_store():
    """One edge (the gateway's graysplit), then a follower per calling workload, in the
    sidecars' outbound side (where Istio routes a call), each deciding one hop; all with the same
    baggage key, route header, stable version and key source."""
    assert sorted(p["metadata"]["name"] for _, p in PLUGINS) == sorted(CHAIN), \
        "every WasmPlugin of istio/lane/ must say which hop it routes (ROUTES_FOR)"
    edge, followers = plugin(CHAIN[0]), [plugin(n) for n in CHAIN[1:]]
    assert lane_of(edge)["mode"] == "edge" and it_istio.plugin_context(edge) == "GATEWAY"
    assert len(followers) >= 2
    for f in followers:
        name = f["metadata"]["name"]
        assert lane_of(f)["mode"] == "follow", name
        assert it_istio.plugin_context(f) == "SIDECAR_OUTBOUND", f"{name}: mode CLIENT"
        assert set(f["spec"]["selector"]["matchLabels"]) == {"app"}, \
            f"{name}: a workload's pods, every version of it"
        assert "trusted_cidrs" not in lane_of(f), \
            f"{name}: on the outbound side every source is the pod's own app"
    cfgs = [p["spec"]["pluginConfig"] for p in [edge, *followers]]
    for what in ("route_header", "stable"):
        assert len({c.get(what) for c in cfgs}) == 1, what
    for what in ("baggage_key", "key_env", "ttl_s"):
        assert len({c["lane"].get(what) for c in cfgs}) == 1, f"lane.{what}"
    # The vector store's calls are decided in the retriever's pods; the retriever's in
    # rag-assistant's; rag-assistant's at the gateway.
    assert [ROUTES_FOR[n].split(".")[0] for n in CHAIN] == \
        ["rag-assistant", "retriever", "vector-store"]
    assert [f["spec"]["selector"]["matchLabels"]["app"] for f in followers] == \
        ["rag-assistant", "retriever"]


def it_the_lane_gateway_is_istio_s_gateway_plugin_plus_the_lane():
    """istio/lane/wasmplugin-gateway.yaml is the same WasmPlugin as istio/wasmplugin-gateway.yaml
    (applying it turns that one into an edge; a second graysplit on the gateway would decide
    twice), with `lane` and `vmConfig` added and nothing else different: a release step made in
    one file but not the other fails here."""
    mine = plugin("graysplit-gateway")
    theirs = copy.deepcopy(it_istio._gateway())
    assert mine["metadata"] == theirs["metadata"]
    mine["spec"]["pluginConfig"].pop("lane")
    mine["spec"].pop("vmConfig")
    assert mine["spec"] == theirs["spec"], \
        "istio/lane/wasmplugin-gateway.yaml is out of step with istio/wasmplugin-gateway.yaml"


def lane_versions(p: dict) -> list[str]:
    return known_versions(p["spec"]["pluginConfig"])


@pytest.mark.parametrize("name", CHAIN)
def it_each_hop_routes_every_version_its_plugin_can_choose(name):
    """The VirtualService of the hop a WasmPlugin decides routes every version its config can
    choose (it_istio's coverage check), and every version the edge can put in a lane is one the
    follower knows (a lane naming a version the follower does not know is refused: the chain
    would fall back to stable in the middle)."""
    p = plugin(name)
    host = ROUTES_FOR[name]
    assert it_istio.coverage_problems(p, vs_for(host), [dr_for(host)]) == [], f"{name} -> {host}"
    missing = set(lane_versions(plugin(CHAIN[0]))) - set(lane_versions(p))
    assert not missing, f"{name} does not know {sorted(missing)}, which the edge issues"


@pytest.mark.parametrize("host", [ROUTES_FOR[n] for n in CHAIN])
def it_every_version_has_pods_of_its_own_at_every_hop(host):
    """Each version the edge issues has its own subset at every hop, selecting pods by their
    `version` label: gray's vector store is gray's own index, not stable's pods."""
    labels = {}
    for s in dr_for(host)["spec"]["subsets"]:
        assert set(s.get("labels", {})) == {"version"}, f"{host} subset {s['name']}"
        labels[s["labels"]["version"]] = s["name"]
    assert set(lane_versions(plugin(CHAIN[0]))) <= set(labels), (host, labels)


# --------------------------------------------------------------------------- the keys

def patch_for(p: dict) -> tuple[str, dict]:
    """The proxy-env patch of the Deployments whose proxies `p` runs in."""
    name = {"GATEWAY": "gateway.yaml", "SIDECAR_OUTBOUND": "sidecar.yaml"}[it_istio.plugin_context(p)]
    return name, PATCHES[name]


def host_env(p: dict) -> list[str]:
    return [e["name"] for e in p["spec"].get("vmConfig", {}).get("env", [])
            if e.get("valueFrom") == "HOST"]


def env_vars(lane: dict) -> tuple[str, list[str]]:
    """(the variable of the signing key, those of the previous keys) a lane config names."""
    return lane["key_env"], list(lane.get("previous_keys_env", []))


def proxy_container(patch: dict) -> dict:
    containers = patch["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["istio-proxy"], containers
    return containers[0]


def proxy_env(p: dict, secret: dict[str, str]) -> dict[str, str]:
    """The istio-proxy container's environment (its lane part) with `secret` as the data of the
    Secret: what kubelet sets from the patch's secretKeyRefs. A key the Secret lacks is left
    unset if the ref is optional; otherwise the pod would not start (CreateContainerConfigError)."""
    out = {}
    for e in proxy_container(patch_for(p)[1])["env"]:
        ref = e["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET, e
        if ref["key"] in secret:
            out[e["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional"), f"{e['name']}: the Secret has no {ref['key']!r}"
    return out


def it_the_keys_come_from_the_secret_through_the_proxy_s_environment():
    """No key is in the recipe. Each WasmPlugin's lane names its keys by variable, each such
    variable is one of the proxy's (vmConfig.env valueFrom HOST) and the patch of its proxies'
    Deployments sets exactly those from the Secret: the signing key required, a previous key
    optional (a pod starts without one). A sidecar's patch is an injection customisation
    (`image: auto`); the gateway's touches only the environment of its istio-proxy."""
    for name in CHAIN:
        p = plugin(name)
        lane = lane_of(p)
        assert not {"key", "previous_keys"} & set(lane), f"{name}: a key in the WasmPlugin"
        assert all(e.get("valueFrom") == "HOST" for e in p["spec"]["vmConfig"]["env"]), \
            f"{name}: an INLINE variable is a value in the WasmPlugin"
        key, previous = env_vars(lane)
        assert sorted([key, *previous]) == sorted(host_env(p)), name
        patch_name, patch = patch_for(p)
        container = proxy_container(patch)
        env = {e["name"]: e for e in container["env"]}
        assert set(env) == set(host_env(p)), f"{name} vs proxy-env/{patch_name}"
        assert not env[key]["valueFrom"]["secretKeyRef"].get("optional"), key
        for var in previous:
            assert env[var]["valueFrom"]["secretKeyRef"].get("optional") is True, var
        for var, e in env.items():
            assert not var.startswith("ISTIO_META_"), f"{var}: pilot-agent sends ISTIO_META_* to istiod"
            assert set(e) == {"name", "valueFrom"} and set(e["valueFrom"]) == {"secretKeyRef"}
            assert e["valueFrom"]["secretKeyRef"]["name"] == SECRET
        assert set(patch) == {"spec"} and set(patch["spec"]) == {"template"} \
            and set(patch["spec"]["template"]) == {"spec"}, patch_name
        want = {"name", "env", "image"} if patch_name == "sidecar.yaml" else {"name", "env"}
        assert set(container) == want, patch_name
        if patch_name == "sidecar.yaml":
            assert container["image"] == "auto"


def istiod_environment_variables(p: dict, resource_version: str = "1") -> dict:
    """EnvironmentVariables as istiod 1.30.3 renders them for a WasmPlugin (buildVMConfig in
    pilot/pkg/model/extensions.go): key_values with the pull policy, the pull secret (resolved
    to the docker config, none here) and the resource version, each INLINE entry's value; then,
    if vmConfig.env is not empty, host_env_keys with each HOST entry's name, in order."""
    spec = p["spec"]
    assert not spec.get("imagePullSecret"), "not modelled: istiod resolves it (xds/ecds.go)"
    kv: dict[str, str] = {}
    if spec.get("imagePullPolicy"):
        kv["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = spec["imagePullPolicy"]
    kv["ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION"] = resource_version
    out: dict = {"key_values": kv}
    env = (spec.get("vmConfig") or {}).get("env") or []
    for e in env:
        if e.get("valueFrom", "INLINE") == "INLINE":
            kv[e["name"]] = e.get("value", "")
    hosts = [e["name"] for e in env if e.get("valueFrom") == "HOST"]
    if hosts:
        out["host_env_keys"] = hosts
    return out


def delivered_resource(p: dict, plugin_config: dict | None = None) -> dict:
    """The ECDS resource a proxy of `p` gets from istiod 1.30 and istio-agent: it_istio's model
    of the resource (1.30's names, the pluginConfig rendered as istiod renders it) with the VM
    config istiod renders for the module and vmConfig.env, then through it_istio.istio_agent
    (fetches the module, strips the ISTIO_META_* variables, keeps host_env_keys)."""
    res = it_istio.istiod_plugin_resource(p, "1.30", plugin_config)
    bare = copy.deepcopy(p)
    bare["spec"].pop("vmConfig", None)
    vm = it_istio.expected_wasm_config(bare)["vm_config"]   # runtime, code (remote, sha256)
    vm["environment_variables"] = istiod_environment_variables(p)
    res["typed_config"]["config"]["vm_config"] = vm
    return it_istio.istio_agent(res)


def it_istiod_and_istio_agent_hand_envoy_the_variables_names_and_no_key():
    """What Envoy is told for each WasmPlugin: the names of the proxy's variables to copy into
    the VM, nothing of istiod's own ISTIO_META_* (istio-agent strips them for an oci:// module),
    and, in the recipe as written, no key anywhere in the config."""
    secret = {"key": KEY, "previous": OLD_KEY}
    for name in CHAIN:
        p = plugin(name)
        res = delivered_resource(p)
        vm = res["typed_config"]["config"]["vm_config"]
        assert vm["environment_variables"] == {"host_env_keys": host_env(p)}, name
        text = json.dumps(res)
        for value in proxy_env(p, secret).values():
            assert value not in text, f"{name}: a key in the config istiod sends"


# --------------------------------------------------------------------------- delivery

def keys_inlined(p: dict, env: dict[str, str]) -> dict:
    """`p`'s pluginConfig as the filter takes it today: lane.key_env and lane.previous_keys_env
    replaced by the values those variables have in `env` (the proxy's environment), which is
    what the filter would read from the VM's environment (an unset previous variable adds no
    key)."""
    cfg = copy.deepcopy(p["spec"]["pluginConfig"])
    lane = cfg["lane"]
    key, previous = env_vars(lane)
    del lane["key_env"]
    lane.pop("previous_keys_env", None)
    lane["key"] = env[key]
    keys = [env[v] for v in previous if env.get(v)]
    if keys:
        lane["previous_keys"] = keys
    return cfg


@pytest.mark.parametrize("name", CHAIN)
def it_the_recipe_with_its_keys_inlined_passes_the_filters_own_validation(tmp_path, name):
    """Each WasmPlugin, with the keys the filter would read from its variables inlined, is a
    config the filter takes (`graysplit check`)."""
    p = plugin(name)
    p["spec"]["pluginConfig"] = keys_inlined(p, proxy_env(p, {"key": KEY, "previous": OLD_KEY}))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(p))
    r = cli("check", path)
    assert r.returncode == 0 and f"WasmPlugin {name}: ok" in r.stdout, r


@pytest.mark.parametrize("name", CHAIN)
def it_the_recipe_as_written_passes_the_filters_own_validation(name):
    r = cli("check", LANE / FILE_OF[name])
    assert r.returncode == 0 and f"WasmPlugin {name}: ok" in r.stdout, r.stdout


@dataclass
class ProxyEnvoy(Envoy):
    """An Envoy whose process environment has `proxy_env` added, as pilot-agent starts Envoy
    with the istio-proxy container's environment (in a container: passed with --env)."""
    proxy_env: dict[str, str] = field(default_factory=dict, repr=False)

    def start(self) -> "ProxyEnvoy":
        saved = {k: os.environ.get(k) for k in self.proxy_env}
        os.environ.update(self.proxy_env)
        try:
            return super().start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _container_argv(self, args: list[str]) -> list[str]:
        argv = super()._container_argv(args)
        at = argv.index("--env")
        for k in self.proxy_env:   # the value comes from `docker run`'s environment
            argv[at:at] = ["--env", k]
        return argv


class Recorder(App):
    """A stand-in app for one subset (upstream.App: answers with its name) that also keeps the
    `baggage` header(s) each tagged request brought."""

    def __init__(self, subset: str):
        super().__init__(subset)
        self.baggage: dict[str, list[str]] = {}

    def respond(self, h, body: bytes) -> None:
        tag = h.headers.get("x-test-id")
        if tag is not None:
            self.baggage[tag] = h.headers.get_all("baggage") or []
        super().respond(h, body)


@dataclass
class Hop:
    name: str           # the WasmPlugin
    envoy: Envoy
    apps: dict[str, Recorder]

    def send(self, headers: list[tuple[str, str]], tag: str) -> tuple[str, str, str]:
        """(the subset that served, the routing header it saw, its baggage joined)."""
        r = self.envoy.get("/", [*headers, ("x-test-id", tag)])
        assert r.status == 200, f"{self.name}: {r}\n{self.envoy.log()[-3000:]}"
        app = self.apps[r.text]
        return r.text, app.records[tag].routing, ",".join(app.baggage[tag])


def start_hop(workdir: Path, p: dict, plugin_config: dict | None, env: dict[str, str]) -> Hop:
    """A real Envoy configured as a proxy of `p` is by istiod 1.30 and istio-agent (the
    WasmPlugin's filter entry, its ECDS resource from a file instead of ADS), routing by the
    VirtualService of the hop `p` decides to one stand-in app per subset, with `env` in its
    environment."""
    if not harness.WASM.exists():
        pytest.fail(f"{harness.WASM} is missing: run `make build` first", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    host = ROUTES_FOR[p["metadata"]["name"]]
    apps = {s["name"]: Recorder(s["name"]) for s in dr_for(host)["spec"]["subsets"]}
    clusters = {s: f"{host.split('.')[0]}-{s}" for s in apps}
    doc = harness.istio_bootstrap(p, ecds_path=workdir / "unused", access_log=workdir / "access.log",
                                  routes=it_istio.vs_envoy_routes(vs_for(host), clusters))
    doc["static_resources"]["clusters"] = [
        {"name": clusters[s], "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": clusters[s], "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": a.port}}}}]}]}}
        for s, a in apps.items()]
    entry = it_istio.istiod_filter_entry(p, "1.30")
    path = workdir / "ecds.yaml"
    run.write_atomic(path, yaml.safe_dump({"version_info": "1", "resources": [
        {"@type": it_istio.EXTENSION_CONFIG_TYPE, **delivered_resource(p, plugin_config)}]},
        sort_keys=False))
    source = entry["config_discovery"]["config_source"]
    assert source.pop("ads") == {}
    source["path_config_source"] = {"path": str(path)}
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [entry, hcm["http_filters"][-1]]
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"
    try:
        envoy = ProxyEnvoy(workdir, doc, concurrency=1, proxy_env=env).launch()
    except BaseException:
        for a in apps.values():
            a.close()
        raise
    return Hop(p["metadata"]["name"], envoy, apps)


@pytest.fixture
def chain(tmp_path):
    """start(secrets, as_written=False): one Hop per WasmPlugin of CHAIN, in order, each proxy's
    environment from `secrets` (namespace -> the Secret's data). Without `as_written` the keys
    are inlined (`keys_inlined`), as the filter takes them today."""
    hops: list[Hop] = []

    def start(secrets: dict[str, dict[str, str]], as_written: bool = False) -> list[Hop]:
        for i, name in enumerate(CHAIN):
            p = plugin(name)
            env = proxy_env(p, secrets[p["metadata"]["namespace"]])
            cfg = None if as_written else keys_inlined(p, env)
            hops.append(start_hop(tmp_path / f"hop{i}-{name}", p, cfg, env))
        return hops

    yield start
    for h in hops:
        h.envoy.stop()
        for a in h.apps.values():
            a.close()


SECRETS = {"istio-system": {"key": KEY}, "rag": {"key": KEY}}
OURS = re.compile(r"(?:^|,)graysplit=([^;,]*);r=([^;,]*);e=([0-9]+);s=([A-Za-z0-9_-]{43})(?=,|$)")


def signed_with(baggage: str, key: str) -> tuple[str, str]:
    """(version, rule) of the one member of ours in `baggage`, asserting its signature is the
    HMAC-SHA256 under `key` of its bytes before `;s=` (computed here with hmac/hashlib)."""
    found = OURS.findall(baggage)
    assert len(found) == 1, f"not one member of ours in {baggage!r}"
    version, rule, e, sig = found[0]
    head = f"graysplit={version};r={rule};e={e}".encode()
    want = base64.urlsafe_b64encode(hmac.new(key.encode(), head, hashlib.sha256).digest())
    assert hmac.compare_digest(sig.encode(), want.rstrip(b"=")), f"not signed with the key: {baggage}"
    return version, rule


def walk(hops: list[Hop], headers: list[tuple[str, str]], tag: str) -> list[tuple[str, str, str]]:
    """A request into the edge with `headers`, then at each next hop a call carrying only the
    baggage the previous hop's app received (what its OpenTelemetry SDK sends on; the app copies
    no other header). Returns each hop's (subset, routing header, baggage)."""
    out = [hops[0].send(headers, f"{tag}-0")]
    for i, hop in enumerate(hops[1:], 1):
        out.append(hop.send([("baggage", out[-1][2])], f"{tag}-{i}"))
    return out


def lane_counts(envoy: Envoy) -> dict[str, int]:
    return {k.rsplit(".", 1)[-1]: v
            for k, v in envoy.stats(r"^wasmcustom\.graysplit_lane_total\.").items() if v}


def edge_cohorts() -> tuple[str, str, str]:
    """(a user the gateway's ramp sends to gray, one it keeps on stable, the gray version)."""
    ramp = next(r for r in plugin(CHAIN[0])["spec"]["pluginConfig"]["rules"] if "split" in r)
    cut = round(ramp["split"][0]["percent"] * 100)
    return user_in(ramp["salt"], 0, cut), user_in(ramp["salt"], cut, 10000), ramp["split"][0]["version"]


def check_chain(hops: list[Hop], key: str) -> None:
    gray_user, stable_user, gray = edge_cohorts()
    stable = plugin(CHAIN[0])["spec"]["pluginConfig"]["stable"]
    # A gray user: gray at every hop, though the followers' own rules say stable; the
    # client's baggage member is kept, first, as it came; ours is signed with the Secret's key.
    seen = walk(hops, [("x-user-id", gray_user), ("baggage", "tenant=acme")], "gray")
    assert [s for s, _, _ in seen] == subsets(gray), seen
    assert [v for _, v, _ in seen] == [gray] * len(hops), "the routing header each app saw"
    for _, _, baggage in seen:
        assert baggage.startswith("tenant=acme,"), baggage
        assert signed_with(baggage, key) == (gray, "ramp")
    assert len({b for _, _, b in seen}) == 1, "the member goes on as the edge wrote it"
    # A stable user: stable everywhere, by the lane too (rule `lane` at the followers).
    seen = walk(hops, [("x-user-id", stable_user)], "stable")
    assert [s for s, _, _ in seen] == subsets(stable), seen
    assert signed_with(seen[-1][2], key)[0] == stable
    # A client cannot bring its own lane: the edge replaces the member.
    forged = f"graysplit={gray};r=ramp;e=9999999999;s={'A' * 43}"
    seen = walk(hops, [("x-user-id", stable_user), ("baggage", forged)], "client-member")
    assert [s for s, _, _ in seen] == subsets(stable), seen
    assert lane_counts(hops[0].envoy) == {"issued": 3}
    for hop in hops[1:]:
        assert lane_counts(hop.envoy) == {"followed": 3}, hop.name
        assert harness.graysplit_stat(hop.envoy, "decisions_total", gray, rule="lane") == 1
    # A member the followers do not believe (altered, or signed with another key) is removed
    # and counted, and the follower's own rules decide: stable.
    member = walk(hops[:1], [("x-user-id", gray_user)], "to-alter")[0][2]
    head, _, sig = member.rpartition(";s=")
    altered = f"{head};s={sig[:-1]}{'B' if sig[-1] != 'B' else 'C'}"
    e = int(time.time()) + 60
    foreign_head = f"graysplit={gray};r=ramp;e={e}".encode()
    foreign = foreign_head.decode() + ";s=" + base64.urlsafe_b64encode(
        hmac.new(OTHER_KEY.encode(), foreign_head, hashlib.sha256).digest()).rstrip(b"=").decode()
    for tag, bad in (("altered", altered), ("foreign", foreign)):
        served, version, baggage = hops[1].send([("baggage", f"tenant=acme,{bad}")], tag)
        assert (served, version, baggage) == (subset(ROUTES_FOR[hops[1].name], stable), stable,
                                             "tenant=acme"), tag
    assert lane_counts(hops[1].envoy) == {"followed": 3, "forged": 2}


def it_a_gray_user_stays_on_gray_through_the_chain_and_reaches_gray_s_vector_store(chain):
    """The recipe's WasmPlugins delivered the istiod way to one Envoy per hop (edge at the
    gateway, followers in rag-assistant's and the retriever's sidecars), the keys being what
    the filter would read from the proxies' variables, set from the Secret."""
    check_chain(chain(SECRETS), KEY)


def it_during_a_key_rotation_the_followers_take_the_previous_key(chain):
    """Rotation with the Secrets: the followers' Secret (namespace rag) gets the new key and
    keeps the old one as `previous` (their pods restarted), while the gateway's still has the
    old key: lanes signed with the old key still hold at every hop."""
    hops = chain({"istio-system": {"key": OLD_KEY}, "rag": {"key": KEY, "previous": OLD_KEY}})
    gray_user, _, gray = edge_cohorts()
    seen = walk(hops, [("x-user-id", gray_user)], "rotation")
    assert [s for s, _, _ in seen] == subsets(gray), seen
    assert signed_with(seen[-1][2], OLD_KEY) == (gray, "ramp")
    for hop in hops[1:]:
        assert lane_counts(hop.envoy) == {"followed": 1}, hop.name


def loaded_vm_env(envoy: Envoy) -> list[dict]:
    return [c["vm_config"].get("environment_variables")
            for c in it_istio.loaded_wasm_configs(envoy).values()]


def it_the_recipe_as_written_keeps_a_gray_user_on_gray_with_the_keys_from_the_proxy_env(chain):
    """The recipe exactly as written (`lane.key_env`, vmConfig.env HOST) and the proxies'
    environment set from the Secret: the same chain, and the key is in no config Envoy holds."""
    hops = chain(SECRETS, as_written=True)
    for hop in hops:
        # (No probe request here: check_chain counts every lane from zero.)
        log = hop.envoy.log()
        assert "graysplit: config applied" in log and "graysplit: invalid config" not in log, \
            f"{hop.name}: the filter refused the config as written:\n{log[-2000:]}"
        p = plugin(hop.name)
        assert loaded_vm_env(hop.envoy) == [{"host_env_keys": host_env(p)}]
        assert KEY not in hop.envoy.admin_get("/config_dump")[1]
    check_chain(hops, KEY)
