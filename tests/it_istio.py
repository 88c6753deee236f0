"""The Istio path, offline: istio/*.yaml against Istio's published CRD schemas, the
VirtualService against what each WasmPlugin can choose, each pluginConfig against the filter's
own validation, each WasmPlugin delivered to a real Envoy the way istiod does it (ECDS), and
each body-holding EnvoyFilter applied the way istiod 1.30 applies it.

- CRD validation: ../shared/istio-crds/ (Istio 1.30.3), the schema of the served version named
  by apiVersion, made strict the way kubectl's strict field validation behaves (unknown fields
  rejected: `additionalProperties: false` on every object schema with `properties` and no
  `x-kubernetes-preserve-unknown-fields`), plus the CEL rules a JSON-Schema validator ignores
  that matter for our files (only one of selector / targetRef / targetRefs; url scheme;
  no wildcard labels). apiVersion, kind and metadata are checked separately.
- Delivery: harness.istio_ecds_document renders pluginConfig like istiod (compact JSON, keys
  sorted, float64 numbers, Go's HTML-safe escaping) into a DiscoveryResponse whose filter entry
  has istiod's shape; the Envoy's routes are generated from istio/virtualservice.yaml (one
  direct_response per VirtualService route, body = the destination subset).
- EnvoyFilters (istio/envoyfilter-body-*.yaml): a model of what istiod 1.30.3 does with them,
  from its source (istio/istio at tag 1.30.3): the HTTP filter entry it renders for a WasmPlugin
  (pilot/pkg/networking/core/extension/extensionfilter.go, named as
  pilot/pkg/config/kube/extensions/translate.go and pilot/pkg/model/extensions.go name it), the
  HTTP_FILTER patches applied to it (pilot/pkg/networking/core/envoyfilter/listener_patch.go,
  util.go), the ECDS response (pilot/pkg/networking/core/extension_config_builder.go: the
  EnvoyFilters' EXTENSION_CONFIG ADDs, extension_configuration_patch.go, then the
  WasmPlugins'), and istio-agent's rewrite of remote code to a local file (pkg/wasm/convert.go).
  What the model yields is loaded into a real Envoy; istiod itself is not run.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import ipaddress
import json
import re
import socketserver
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pytest
import yaml

import harness
import run  # scripts/run.py (harness puts scripts/ on the path)
import tokens
import crds as kube
from crds import load_crds, validate
from harness import (DEFAULT_ROUTE_HEADER, REPO, Envoy, bucket, cli, go_float, go_json, go_string,
                     known_versions, user_in)

ISTIO = REPO / "istio"
CRDS = REPO.parent / "shared" / "istio-crds"


def istio_docs() -> list[tuple[str, int, dict]]:
    out = []
    for path in sorted(ISTIO.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((path.name, i, doc))
    return out


def as_plugin(doc: dict) -> dict:
    """A TrafficExtension in a WasmPlugin's shape, as istiod reads both (the field map of
    pilot/pkg/config/kube/extensions/translate.go, read backwards): spec.wasm's fields at the
    top of spec, beside selector, targetRefs, phase, priority and match. `kind` stays
    TrafficExtension: istiod names its filter differently. A WasmPlugin is returned as it is."""
    if doc.get("kind") != "TrafficExtension":
        return doc
    spec = copy.deepcopy(doc["spec"])
    assert "wasm" in spec, f"{doc['metadata']['name']}: only Wasm TrafficExtensions are modelled"
    wasm = spec.pop("wasm")
    return {**doc, "spec": {**spec, **wasm}}


DOCS = istio_docs()
PLUGINS = [(f, d) for f, _, d in DOCS if d.get("kind") == "WasmPlugin"]
TRAFFIC_EXTENSIONS = [(f, as_plugin(d)) for f, _, d in DOCS if d.get("kind") == "TrafficExtension"]
# Every Wasm extension istio/ ships, WasmPlugins then TrafficExtensions, in a WasmPlugin's shape.
EXTENSIONS = PLUGINS + TRAFFIC_EXTENSIONS
ENVOYFILTERS = [(f, d) for f, _, d in DOCS if d.get("kind") == "EnvoyFilter"]
SERVICES = [d for _, _, d in DOCS if d.get("kind") == "VirtualService"]
RULES = [d for _, _, d in DOCS if d.get("kind") == "DestinationRule"]
HTTPROUTES = [d for _, _, d in DOCS if d.get("kind") == "HTTPRoute"]
GATEWAYS = [d for _, _, d in DOCS if d.get("kind") == "Gateway"]


WAYPOINT_CLASS = "istio-waypoint"


def target_gateways(plugin: dict) -> list[dict]:
    """The Gateways of istio/ an extension's targetRefs name (in its namespace)."""
    ns = plugin["metadata"].get("namespace", "default")
    out = []
    for ref in plugin["spec"].get("targetRefs") or []:
        assert (ref.get("group"), ref["kind"]) == ("gateway.networking.k8s.io", "Gateway"), \
            f"{plugin['metadata']['name']}: targetRefs to {ref['kind']}: extend the model"
        found = [g for g in GATEWAYS if g["metadata"]["name"] == ref["name"]
                 and g["metadata"].get("namespace", "default") == ref.get("namespace", ns)]
        assert len(found) == 1, f"{plugin['metadata']['name']}: Gateway {ref['name']} not in istio/"
        out += found
    return out


def plugin_context(plugin: dict) -> str:
    """The EnvoyFilter patch context of the listeners an extension's filter is in. A waypoint's
    listeners are built as inbound ones and patched as SIDECAR_INBOUND (listener_builder.go
    patchListeners: a proxy of type Waypoint is no Router; istiod applies no WAYPOINT-context
    patch to a listener)."""
    gateways = target_gateways(plugin)
    if gateways:
        classes = {g["spec"]["gatewayClassName"] for g in gateways}
        assert len(classes) == 1, classes
        return "SIDECAR_INBOUND" if classes == {WAYPOINT_CLASS} else "GATEWAY"
    modes = {m.get("mode") for m in plugin["spec"].get("match", [])}
    if modes == {"CLIENT"}:
        return "SIDECAR_OUTBOUND"
    if modes == {"SERVER"}:
        return "SIDECAR_INBOUND"
    labels = (plugin["spec"].get("selector") or {}).get("matchLabels") or {}
    assert not modes and labels.get("istio", "").startswith("ingressgateway"), \
        f"{plugin['metadata']['name']}: which proxies' listeners? (extend plugin_context)"
    return "GATEWAY"


# --------------------------------------------------------------------------- CRD validation
# tests/crds.py (strict schemas, CEL rules); tests/it_recipes.py validates every document.

@pytest.fixture(scope="module")
def crds():
    loaded = load_crds()
    if "istio-crds" in loaded.missing:
        pytest.skip(f"Istio CRD schemas not found at {CRDS} (the shared checkout ../shared/"
                    "istio-crds/ next to the repository); CRD validation cannot run")
    return loaded


AUTHNS = [d for _, _, d in DOCS if d.get("kind") == "RequestAuthentication"]


def it_requestauthentication_is_what_the_claim_pilot_needs():
    """The RequestAuthentications against Istio 1.30's RequestAuthentication API (beyond its
    CRD, which tests/it_recipes.py checks them against): every extension whose rules read claims
    has exactly one, selecting the same proxies in its namespace (selector, or targetRefs for a
    Gateway API gateway), all with the same jwtRules; each jwtRule has an issuer and a key
    source."""
    assert AUTHNS
    readers = [p for _, p in EXTENSIONS if any(
        (r.get("when") or {}).get("claims") for r in p["spec"]["pluginConfig"].get("rules", []))]
    assert _gateway() in readers, "the gateway's legal pilot reads a verified claim"
    for plugin in readers:
        mine = [ra for ra in AUTHNS
                if ra["metadata"].get("namespace") == plugin["metadata"].get("namespace")
                and ra["spec"].get("selector") == plugin["spec"].get("selector")
                and ra["spec"].get("targetRefs") == plugin["spec"].get("targetRefs")]
        assert len(mine) == 1, f"{plugin['metadata']['name']}: {len(mine)} RequestAuthentications"
        cfg = plugin["spec"]["pluginConfig"]
        assert cfg["identity"]["from"][0] == {"claim": "sub"}
        assert cfg.get("claims", {}).get("metadata_key", "payload") == "payload", \
            "Istio's jwt_authn writes the payload under `payload`"
    allowed = {"issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams",
               "outputPayloadToHeader", "forwardOriginalToken", "outputClaimToHeaders",
               "fromCookies", "timeout"}
    for ra in AUTHNS:
        assert ra["apiVersion"] in ("security.istio.io/v1", "security.istio.io/v1beta1")
        assert set(ra) <= {"apiVersion", "kind", "metadata", "spec"}
        assert set(ra["spec"]) <= {"selector", "targetRef", "targetRefs", "jwtRules"}, ra["spec"]
        assert ra["spec"]["jwtRules"] == AUTHNS[0]["spec"]["jwtRules"], "one IdP"
        for rule in ra["spec"]["jwtRules"]:
            assert set(rule) <= allowed and rule["issuer"] and (
                "jwksUri" in rule or "jwks" in rule), rule


def istiod_jwt_authn(ra: dict) -> dict:
    """The jwt_authn filter istiod renders for a RequestAuthentication (pilot/pkg/security/authn/
    policy_applier.go, Istio 1.30): one provider per jwtRule, the payload in dynamic metadata
    under `payload`, a token optional (allow_missing) but refused when invalid, the JWKS fetched
    by istiod and inlined (here: the test keys, since the jwksUri is not reachable)."""
    providers, names = {}, []
    for i, rule in enumerate(ra["spec"]["jwtRules"]):
        name = f"origins-{i}"
        providers[name] = {
            "issuer": rule["issuer"],
            "audiences": rule.get("audiences", []),
            "local_jwks": {"inline_string": tokens.jwks()},
            "forward": rule.get("forwardOriginalToken", False),
            "payload_in_metadata": "payload",
            "normalize_payload_in_metadata": {"space_delimited_claims": ["scope", "permission"]},
        }
        names.append({"provider_name": name})
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {
                "requirements": names + [{"allow_missing": {}}]}}}],
        },
    }


def it_the_gateway_s_legal_pilot_is_a_verified_claim_behind_istio_s_jwt_authn(istio_envoy):
    gw, ra = _gateway(), AUTHNS[0]
    cfg = gw["spec"]["pluginConfig"]
    issuer = ra["spec"]["jwtRules"][0]["issuer"]
    audience = ra["spec"]["jwtRules"][0]["audiences"][0]
    envoy = istio_envoy(gw, before_filters=[istiod_jwt_authn(ra)])
    ramp = next(r for r in cfg["rules"] if "split" in r)
    stable_user = user_in(ramp["salt"], round(ramp["split"][0]["percent"] * 100), 10000)

    def tok(expired=False, **claims):
        return tokens.token({"iss": issuer, "aud": audience, **claims}, expired=expired)

    legal = [("authorization", f"Bearer {tok(sub=stable_user, department='legal')}")]
    assert envoy.version("/", legal) == subset_for("v2.1"), "a verified legal claim: the pilot"
    sales = [("authorization", f"Bearer {tok(sub=stable_user, department='sales')}")]
    assert envoy.version("/", sales) == subset_for(cfg["stable"])
    spoof = [("x-department", "legal"), ("department", "legal"), ("x-user-id", stable_user)]
    assert envoy.version("/", spoof) == subset_for(cfg["stable"]), "headers are no claims"
    expired = tok(expired=True, sub=stable_user, department="legal")
    assert envoy.get("/", [("authorization", f"Bearer {expired}")]).status == 401


def it_istio_dir_has_the_resources_a_release_needs():
    kinds = [d.get("kind") for _, _, d in DOCS]
    assert kinds.count("WasmPlugin") >= 2 and "VirtualService" in kinds \
        and "DestinationRule" in kinds, kinds
    modes = [m.get("mode") for _, p in PLUGINS for m in p["spec"].get("match", [])]
    assert "CLIENT" in modes, "a sidecar WasmPlugin for callers (mode CLIENT)"
    schemes = {p["spec"]["url"].split("://")[0] for _, p in PLUGINS}
    assert {"oci", "file"} <= schemes, schemes
    # Bodies: each extension has its body-holding EnvoyFilter (the last section below).
    missing = [f for f, p in EXTENSIONS if not any(
        envoyfilter_targets(ef, p) for _, ef in ENVOYFILTERS)]
    assert not missing, f"no EnvoyFilter sets allow_on_headers_stop_iteration for {missing}"


def _gateway() -> dict:
    return copy.deepcopy(next(p for f, p in PLUGINS if "gateway" in f))


def _with(doc: dict, path: str, value) -> dict:
    """A copy of doc with the dotted path set (a list index as a number)."""
    doc = copy.deepcopy(doc)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = doc
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return doc


def _without(doc: dict, path: str) -> dict:
    doc = copy.deepcopy(doc)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = doc
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return doc


def _vs() -> dict:
    return copy.deepcopy(SERVICES[0])


def _dr() -> dict:
    return copy.deepcopy(RULES[0])


def _envoyfilter(plugin_file: str = "wasmplugin-gateway.yaml") -> dict:
    """A copy of the body-holding EnvoyFilter of the WasmPlugin in `plugin_file`."""
    plugin = next(p for f, p in PLUGINS if f == plugin_file)
    return copy.deepcopy(envoyfilter_of(plugin))


BROKEN = {
    "unknown spec field": (_gateway, lambda d: _with(d, "spec.failPolicy", "FAIL_CLOSE"),
                           "failPolicy"),
    "bad phase": (_gateway, lambda d: _with(d, "spec.phase", "EARLY"), "EARLY"),
    "bad failStrategy": (_gateway, lambda d: _with(d, "spec.failStrategy", "FAIL_SOFT"),
                         "FAIL_SOFT"),
    "priority not an integer": (_gateway, lambda d: _with(d, "spec.priority", "high"), "high"),
    "selector and targetRefs": (_gateway, lambda d: _with(d, "spec.targetRefs", [
        {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "rag"}]),
        "only one of targetRefs or selector"),
    "url scheme": (_gateway, lambda d: _with(d, "spec.url", "ftp://example.com/x.wasm"),
                   "url must have schema"),
    "short sha256": (_gateway, lambda d: _with(d, "spec.sha256", "abc123"), "abc123"),
    "unknown match field": (_gateway, lambda d: _with(d, "spec.match", [{"mode": "CLIENT",
                                                                         "port": 8080}]),
                            "port"),
    "wrong apiVersion": (_gateway, lambda d: _with(d, "apiVersion",
                                                   "extensions.istio.io/v1beta1"), "apiVersion"),
    "unknown metadata field": (_gateway, lambda d: _with(d, "metadata.labelz", {}), "labelz"),
    "bad name": (_gateway, lambda d: _with(d, "metadata.name", "Graysplit_GW"), "metadata.name"),
    "vs header typo": (_vs, lambda d: _with(d, "spec.http.0.match.0.header",
                                            d["spec"]["http"][0]["match"][0]["headers"]),
                       "header"),
    "vs string match exact+prefix": (_vs, lambda d: _with(
        d, "spec.http.0.match.0.headers", {"x-graysplit-version": {"exact": "a", "prefix": "b"}}),
        "headers"),
    "vs destination without host": (_vs, lambda d: _without(d, "spec.http.0.route.0.destination"
                                                               ".host"), "host"),
    "dr subset without name": (_dr, lambda d: _without(d, "spec.subsets.0.name"), "name"),
    "dr unknown field": (_dr, lambda d: _with(d, "spec.subset", []), "subset"),
    "ef unknown spec field": (lambda: _envoyfilter(), lambda d: _with(
        d, "spec.workloadSelectors", {}), "workloadSelectors"),
    "ef bad applyTo": (lambda: _envoyfilter(), lambda d: _with(
        d, "spec.configPatches.0.applyTo", "EXTENSION"), "EXTENSION"),
    "ef bad operation": (lambda: _envoyfilter(), lambda d: _with(
        d, "spec.configPatches.0.patch.operation", "UPSERT"), "UPSERT"),
    "ef bad context": (lambda: _envoyfilter(), lambda d: _with(
        d, "spec.configPatches.0.match.context", "INGRESS"), "INGRESS"),
    "ef subfilter typo": (lambda: _envoyfilter(), lambda d: _with(
        d, "spec.configPatches.1.match.listener.filterChain.filter.subfilter", {"name": "x"}),
        "subfilter"),
    "ef selector and targetRefs": (lambda: _envoyfilter(), lambda d: _with(
        d, "spec.targetRefs", [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                "name": "rag"}]), "only one of targetRefs or workloadSelector"),
    "ef waypoint match outside WAYPOINT": (lambda: _envoyfilter(), lambda d: _with(
        d, "spec.configPatches.1.match.waypoint", {"portNumber": 80}), "waypointMatch"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def it_crd_validation_rejects_broken_manifests(crds, case):
    make, breaks, needle = BROKEN[case]
    errors = validate(breaks(make()), crds)
    assert errors, f"{case}: accepted"
    assert any(needle in e for e in errors), f"{case}: {errors}"


def it_crd_validation_accepts_any_plugin_config_and_the_other_api_versions(crds):
    gw = _gateway()
    gw["spec"]["pluginConfig"]["anything"] = {"nested": [1, "x"]}  # preserve-unknown-fields
    assert validate(gw, crds) == []
    for version in ("v1alpha3", "v1beta1", "v1"):
        assert validate(_with(_vs(), "apiVersion", f"networking.istio.io/{version}"), crds) == []
    tr = _without(_gateway(), "spec.selector")
    tr["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                 "name": "rag-gateway"}]
    assert validate(tr, crds) == []


# --------------------------------------------------------------------------- VS coverage

def route_header(plugin: dict) -> str:
    return (plugin["spec"].get("pluginConfig") or {}).get("route_header", DEFAULT_ROUTE_HEADER)


def header_matches(cond: dict, value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in cond:
        return value == cond["exact"]
    if "prefix" in cond:
        return value.startswith(cond["prefix"])
    if "regex" in cond:
        return re.fullmatch(cond["regex"], value) is not None
    return True  # an empty StringMatch: the header is present


def vs_pick(vs: dict, headers: dict[str, str]):
    """The first http route of `vs` a request with only `headers` (any path, port, gateway)
    surely matches, with the match entry that took it (None for a route without matches).
    Match entries with other conditions are not counted as sure matches."""
    for route in vs["spec"].get("http", []):
        matches = route.get("match")
        if not matches:
            return route, None
        for m in matches:
            if set(m) - {"headers", "name"}:
                continue
            if all(header_matches(c, headers.get(h)) for h, c in (m.get("headers") or {}).items()):
                return route, m
    return None, None


def subsets_of(dr: dict) -> dict[str, dict]:
    return {s["name"]: s for s in dr["spec"].get("subsets", [])}


def coverage_problems(plugin: dict, vs: dict, drs: list[dict]) -> list[str]:
    """Why `vs` does not route every version `plugin` can choose (empty: it does)."""
    cfg = plugin["spec"].get("pluginConfig") or {}
    header = route_header(plugin)
    problems = []

    def destination_subset(route, what) -> str | None:
        dests = route.get("route") or []
        if len(dests) != 1:
            problems.append(f"{what}: route {route.get('name')!r} must have exactly one "
                            f"destination, has {len(dests)}")
            return None
        d = dests[0]["destination"]
        dr = next((r for r in drs if r["spec"]["host"] == d["host"]), None)
        if dr is None:
            problems.append(f"{what}: no DestinationRule for host {d['host']}")
            return None
        subset = subsets_of(dr).get(d.get("subset"))
        if subset is None:
            problems.append(f"{what}: subset {d.get('subset')!r} not in DestinationRule "
                            f"{dr['metadata']['name']} ({sorted(subsets_of(dr))})")
            return None
        return subset

    for version in known_versions(cfg):
        route, m = vs_pick(vs, {header: version})
        what = f"version {version}"
        if route is None:
            problems.append(f"{what}: no route matches {header}: {version}")
            continue
        if m is None or (m.get("headers") or {}).get(header) != {"exact": version}:
            problems.append(f"{what}: taken by route {route.get('name')!r}, not by an exact "
                            f"match on {header}")
            continue
        subset = destination_subset(route, what)
        if subset is not None and subset.get("labels", {}).get("version", version) != version:
            problems.append(f"{what}: routed to subset {subset['name']} whose pods are version "
                            f"{subset['labels']['version']}")
    route, m = vs_pick(vs, {})
    if route is None or m is not None or route is not vs["spec"]["http"][-1]:
        problems.append("no default (match-less, last) route for requests without the header")
    else:
        subset = destination_subset(route, "default")
        stable = cfg.get("stable")
        if subset is not None and subset.get("labels", {}).get("version") != stable:
            problems.append(f"default: routed to subset {subset['name']}, not to stable {stable}")
    return problems


@pytest.mark.parametrize("name,plugin", EXTENSIONS, ids=[f for f, _ in EXTENSIONS])
def it_virtualservice_routes_every_version_the_plugin_can_choose(name, plugin):
    assert SERVICES and RULES, "istio/ needs a VirtualService and a DestinationRule"
    for vs in SERVICES:
        assert coverage_problems(plugin, vs, RULES) == [], \
            f"{vs['metadata']['name']} vs {name}"


def it_coverage_check_catches_a_missing_or_misrouted_version():
    plugin = _gateway()
    cfg = plugin["spec"]["pluginConfig"]
    cfg["rules"].append({"name": "next", "enabled": False, "version": "v3.0"})
    assert any("v3.0" in p for p in coverage_problems(plugin, _vs(), RULES)), \
        "a disabled rule's version must be routed too"
    vs = _vs()
    vs["spec"]["http"] = [r for r in vs["spec"]["http"] if r.get("name") != "gray"]
    problems = coverage_problems(_gateway(), vs, RULES)
    assert any("version v2.1" in p for p in problems), problems
    vs = _vs()
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v2-0"
    assert any("v2.1" in p and "v2-0" in p for p in coverage_problems(_gateway(), vs, RULES))
    vs = _vs()
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v2-9"
    assert any("not in DestinationRule" in p for p in coverage_problems(_gateway(), vs, RULES))
    vs = _vs()
    vs["spec"]["http"].pop()
    assert any("default" in p for p in coverage_problems(_gateway(), vs, RULES))
    vs = _vs()
    vs["spec"]["http"][-1]["route"][0]["destination"]["subset"] = "v2-1"
    assert any("not to stable" in p for p in coverage_problems(_gateway(), vs, RULES))
    plugin = _gateway()
    plugin["spec"]["pluginConfig"]["route_header"] = "x-version"
    assert coverage_problems(plugin, _vs(), RULES), "the plugin's route_header must be matched"


# --------------------------------------------------------------------------- HTTPRoute coverage
# istio/httproute.yaml: Gateway API has no subsets, so each version has its own Service, named
# rag-assistant-<subset> (the DestinationRule's subset name: rag-assistant-v2-1 selects the pods
# labelled version: v2.1).

SERVICE_SUBSET = re.compile(r"-(v\d+(?:-\d+)*)$")


def httproute_for(plugin: dict) -> dict | None:
    """The HTTPRoute of istio/ that routes what `plugin` decides: at a Gateway API gateway the
    one attached to the Gateway its targetRefs name; in the mesh (callers' sidecars, a
    waypoint) the GAMMA one whose parent is the Service. None for the classic ingress gateway
    (`selector: istio: ingressgateway`), which serves Istio Gateways and virtualservice.yaml:
    an HTTPRoute's Gateway has pods of its own."""
    if plugin_context(plugin) == "GATEWAY":
        gateways = {(g["metadata"]["namespace"], g["metadata"]["name"])
                    for g in target_gateways(plugin)}
        if not gateways:
            return None
        found = [r for r in HTTPROUTES if any(
            p.get("kind", "Gateway") == "Gateway"
            and (p.get("namespace", r["metadata"]["namespace"]), p["name"]) in gateways
            for p in r["spec"]["parentRefs"])]
    else:
        found = [r for r in HTTPROUTES
                 if {p.get("kind", "Gateway") for p in r["spec"]["parentRefs"]} == {"Service"}]
    assert len(found) == 1, f"{plugin['metadata']['name']}: {len(found)} HTTPRoutes"
    return found[0]


def httproute_pick(route: dict, headers: dict[str, str]) -> tuple[dict | None, dict | None]:
    """The rule (and match) a request with only `headers` takes."""
    for rule, m in kube.httproute_matches(route):
        if all(headers.get(h["name"].lower()) == h["value"] for h in m.get("headers") or []):
            return rule, m
    return None, None


def backend_version(rule: dict) -> tuple[str | None, str]:
    """(the version of the pods a rule's single Service backend selects, or None; a problem)."""
    refs = rule.get("backendRefs") or []
    if len(refs) != 1 or refs[0].get("kind", "Service") != "Service":
        return None, f"rule {rule.get('name')!r} must have exactly one Service backend"
    m = SERVICE_SUBSET.search(refs[0]["name"])
    for dr in RULES:
        subset = subsets_of(dr).get(m.group(1) if m else "")
        if subset is not None:
            return subset["labels"]["version"], ""
    return None, f"rule {rule.get('name')!r}: Service {refs[0]['name']} is no version's"


def httproute_problems(plugin: dict, route: dict) -> list[str]:
    """Why `route` does not route every version `plugin` can choose to its Service (a version
    other than stable by an exact match on the route header), and every other request to
    stable's (empty: it does)."""
    cfg = plugin["spec"].get("pluginConfig") or {}
    header = route_header(plugin).lower()
    problems = []
    for version in known_versions(cfg):
        rule, m = httproute_pick(route, {header: version})
        if rule is None:
            problems.append(f"version {version}: no rule matches {header}: {version}")
            continue
        exact = any(h["name"].lower() == header and h["value"] == version
                    for h in (m or {}).get("headers") or [])
        # stable may be left to the rule without matches (there is no subset to name).
        if not exact and not (version == cfg.get("stable") and not (m or {}).get("headers")):
            problems.append(f"version {version}: taken by rule {rule.get('name')!r}, not by an "
                            f"exact match on {header}")
            continue
        got, problem = backend_version(rule)
        if got != version:
            problems.append(f"version {version}: {problem or f'routed to the pods of {got}'}")
    rule, m = httproute_pick(route, {})
    if rule is None or (m or {}).get("headers"):
        problems.append("no rule without header matches for requests without the header")
    else:
        got, problem = backend_version(rule)
        if got != cfg.get("stable"):
            problems.append(f"default: {problem or f'routed to {got}, not to stable'}")
    return problems


def httproute_envoy_routes(route: dict, clusters: dict[str, str]) -> list[dict]:
    """Envoy routes standing in for `route`: one per (rule, match), in precedence order, to the
    cluster of the subset its Service selects (`clusters`: subset -> cluster name)."""
    out = []
    for rule, m in kube.httproute_matches(route):
        version, problem = backend_version(rule)
        assert version is not None, problem
        match: dict = {"prefix": "/", "headers": [
            {"name": h["name"].lower(), "string_match": {"exact": h["value"]}}
            for h in m.get("headers") or []]}
        out.append({"name": f"{route['metadata']['name']}/{rule.get('name', len(out))}",
                    "match": match, "route": {"cluster": clusters[subset_for(version)]}})
    return out


ROUTED = [(f, p) for f, p in EXTENSIONS if httproute_for(p) is not None]


@pytest.mark.parametrize("name,plugin", ROUTED, ids=[f for f, _ in ROUTED])
def it_httproute_routes_every_version_the_plugin_can_choose(name, plugin):
    route = httproute_for(plugin)
    assert httproute_problems(plugin, route) == [], f"{route['metadata']['name']} vs {name}"


def it_every_httproute_has_its_extension():
    """Each HTTPRoute of istio/ is the route of some extension (a Gateway API gateway's graysplit
    selects that Gateway), and the classic ingress gateway's extensions have none."""
    routes = {id(httproute_for(p)) for _, p in ROUTED}
    assert routes == {id(r) for r in HTTPROUTES}, [r["metadata"]["name"] for r in HTTPROUTES
                                                  if id(r) not in routes]
    assert httproute_for(_gateway()) is None


def it_httproute_coverage_check_catches_a_missing_or_misrouted_version():
    plugin = _gateway()
    route = httproute_for(next(p for f, p in ROUTED if plugin_context(p) == "GATEWAY"))
    plugin["spec"]["pluginConfig"]["rules"].append({"name": "next", "enabled": False,
                                                    "version": "v3.0"})
    assert any("v3.0" in p for p in httproute_problems(plugin, route))
    bad = _with(route, "spec.rules", [r for r in route["spec"]["rules"] if r["name"] != "gray"])
    assert any("version v2.1" in p for p in httproute_problems(_gateway(), bad))
    bad = _with(route, "spec.rules.0.backendRefs.0.name", "rag-assistant-v2-0")
    assert any("v2.1" in p and "pods of v2.0" in p for p in httproute_problems(_gateway(), bad))
    bad = _with(route, "spec.rules.0.backendRefs.0.name", "rag-assistant-v2-9")
    assert any("no version's" in p for p in httproute_problems(_gateway(), bad))
    bad = _with(route, "spec.rules", route["spec"]["rules"][:1])
    assert any("without the header" in p for p in httproute_problems(_gateway(), bad))
    bad = _with(route, "spec.rules.1.backendRefs.0.name", "rag-assistant-v2-1")
    assert any("not to stable" in p for p in httproute_problems(_gateway(), bad))
    # Precedence, not order: the match-less rule listed first still loses to the header match.
    swapped = _with(route, "spec.rules", route["spec"]["rules"][::-1])
    assert httproute_problems(_gateway(), swapped) == []
    plugin = _gateway()
    plugin["spec"]["pluginConfig"]["route_header"] = "x-version"
    assert httproute_problems(plugin, route), "the plugin's route_header must be matched"


# --------------------------------------------------------------------------- TrafficExtension
# Each TrafficExtension of istio/ is its WasmPlugin written the new way: the same module, pull
# policy, failStrategy, phase, priority and pluginConfig, selecting the same proxies. Two select
# other proxies by targetRefs: the Gateway API gateway's (the gateway plugin's config) and the
# waypoint's (the callers' plugin's config).

SELECTION = ("selector", "targetRef", "targetRefs", "match")
TWIN_OF = {"rag/graysplit-waypoint": "rag/graysplit-callers",
           "istio-system/graysplit-gateway-api": "istio-system/graysplit-gateway"}


def twin_of(te: dict) -> dict:
    md = te["metadata"]
    key = TWIN_OF.get(f"{md['namespace']}/{md['name']}", f"{md['namespace']}/{md['name']}")
    found = [p for _, p in PLUGINS
             if f"{p['metadata']['namespace']}/{p['metadata']['name']}" == key]
    assert len(found) == 1, f"{md['name']}: no WasmPlugin {key} in istio/"
    return found[0]


@pytest.mark.parametrize("name,te", TRAFFIC_EXTENSIONS, ids=[f for f, _ in TRAFFIC_EXTENSIONS])
def it_trafficextension_is_its_wasmplugin(name, te):
    wp = twin_of(te)
    assert te["apiVersion"] == "extensions.istio.io/v1alpha1"
    same = {k: v for k, v in te["spec"].items() if k not in SELECTION}
    want = {k: v for k, v in wp["spec"].items() if k not in SELECTION}
    assert same == want, f"{name} differs from WasmPlugin {wp['metadata']['name']}"
    if te["metadata"]["name"] == wp["metadata"]["name"]:
        assert {k: te["spec"].get(k) for k in SELECTION} == \
            {k: wp["spec"].get(k) for k in SELECTION}, "it must select the same proxies"
        # The same name: istiod serves the same Wasm config, only the filter's name differs.
        a = istiod_plugin_resource(te, "1.30")["typed_config"]["config"]
        for naming in NAMINGS:
            b = istiod_plugin_resource(wp, naming)["typed_config"]["config"]
            assert {**a, "name": ""} == {**b, "name": ""}
    else:
        # The same decision on other proxies, selected by targetRefs: a Gateway API gateway for
        # the gateway's plugin, the waypoint for the callers' one.
        assert target_gateways(te) and not te["spec"].get("selector")
        want = "GATEWAY" if plugin_context(wp) == "GATEWAY" else "SIDECAR_INBOUND"
        assert plugin_context(te) == want, (plugin_context(te), want)


def it_a_trafficextension_out_of_step_fails_the_twin_check():
    te = copy.deepcopy(next(p for f, p in TRAFFIC_EXTENSIONS if "gateway" in f))
    te["spec"]["pluginConfig"]["rules"][1]["split"][0]["percent"] = 20
    with pytest.raises(AssertionError, match="differs"):
        it_trafficextension_is_its_wasmplugin("probe", te)


# --------------------------------------------------------------------------- filter validation

@pytest.mark.parametrize("name,plugin", EXTENSIONS, ids=[f for f, _ in EXTENSIONS])
def it_plugin_config_passes_the_filters_own_validation(name, plugin):
    r = cli("check", str(ISTIO / name))
    assert r.returncode == 0, r
    assert f"{plugin['kind']} {plugin['metadata']['name']}: ok" in r.stdout, r.stdout


def it_broken_plugin_config_in_a_wasmplugin_fails_the_check(tmp_path):
    gw = _gateway()
    gw["spec"]["pluginConfig"]["rules"][1]["split"][0]["percent"] = 120
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(gw))
    r = cli("check", str(path))
    assert r.returncode == 1, r
    assert "rules[1].split[0].percent" in r.stdout and "120" in r.stdout, r.stdout


@pytest.mark.parametrize("name,plugin", EXTENSIONS, ids=[f for f, _ in EXTENSIONS])
def it_wasmplugin_pins_sha256_and_never_fails_open(name, plugin):
    spec = plugin["spec"]
    assert re.fullmatch(r"[0-9a-f]{64}", spec.get("sha256", "")), \
        f"{name}: sha256 must pin the module (64 lower-case hex), got {spec.get('sha256')!r}"
    assert spec.get("failStrategy", "FAIL_CLOSE") != "FAIL_OPEN", \
        f"{name}: FAIL_OPEN skips the filter and lets clients pick their version"


# --------------------------------------------------------------------------- Go rendering

def it_go_json_renders_like_istiod():
    assert go_json({"b": 1, "a": [True, None, 2.5], "c": {"z": "x", "y": 10.0}}) == \
        '{"a":[true,null,2.5],"b":1,"c":{"y":10,"z":"x"}}'
    assert go_string('a<b&c>"\\\n\t\u2028\u2029\x01é') == \
        '"a\\u003cb\\u0026c\\u003e\\"\\\\\\n\\t\\u2028\\u2029\\u0001é"'
    cases = {0: "0", 1: "1", -3: "-3", 10: "10", 0.5: "0.5", 12.34: "12.34", 2592000: "2592000",
             1e20: "100000000000000000000", 1e21: "1e+21", 1.5e21: "1.5e+21",
             0.000001: "0.000001", 1e-7: "1e-7", 1.25e-7: "1.25e-7", -2.5e-10: "-2.5e-10",
             123456789.125: "123456789.125", 1e100: "1e+100", 0.1 + 0.2: "0.30000000000000004"}
    for x, want in cases.items():
        assert go_float(x) == want, (x, go_float(x), want)
    with pytest.raises(ValueError):
        go_float(float("nan"))
    # Keys sort by bytes, as Go's sort.Strings.
    assert go_json({"b": 0, "B": 0, "é": 0, "a": 0}) == '{"B":0,"a":0,"b":0,"é":0}'


def it_istio_ecds_document_has_istiods_shape():
    gw = _gateway()
    doc = harness.istio_ecds_document(gw, "7")
    res = doc["resources"][0]
    assert res["@type"] == "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    assert res["name"] == "extensions.istio.io/wasmplugin/istio-system.graysplit-gateway"
    cfg = res["typed_config"]["config"]
    assert res["typed_config"]["@type"] == harness.WASM_TYPE_URL
    assert cfg["name"] == "istio-system.graysplit-gateway" and cfg["root_id"] == ""
    assert cfg["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
    assert cfg["failure_policy"] == "FAIL_RELOAD"
    assert harness.istio_ecds_document(_with(gw, "spec.failStrategy", "FAIL_CLOSE"))[
        "resources"][0]["typed_config"]["config"]["failure_policy"] == "FAIL_CLOSED"
    value = cfg["configuration"]["value"]
    assert json.loads(value) == json.loads(json.dumps(gw["spec"]["pluginConfig"]))
    assert '"percent":10,' in value and '"max_age_s":2592000' in value and " " not in value


# --------------------------------------------------------------------------- delivery in Envoy

def vs_envoy_routes(vs: dict, clusters: dict[str, str] | None = None) -> list[dict]:
    """Envoy routes standing in for `vs`: one per (http route, match), same order, each a
    direct_response whose body is the destination subset, or with `clusters` (subset -> cluster
    name) a route to that subset's cluster."""
    routes = []
    for i, http in enumerate(vs["spec"]["http"]):
        dests = http.get("route") or []
        assert len(dests) == 1, f"http[{i}]: only single-destination routes are rendered"
        subset = dests[0]["destination"].get("subset", "")
        for j, m in enumerate(http.get("match") or [None]):
            match: dict = {"prefix": "/"}
            if m is not None:
                unsupported = set(m) - {"headers", "name"}
                assert not unsupported, f"http[{i}].match[{j}]: cannot render {unsupported}"
                hs = []
                for name, cond in (m.get("headers") or {}).items():
                    if "exact" in cond:
                        hs.append({"name": name, "string_match": {"exact": cond["exact"]}})
                    elif "prefix" in cond:
                        hs.append({"name": name, "string_match": {"prefix": cond["prefix"]}})
                    elif "regex" in cond:
                        hs.append({"name": name, "string_match": {
                            "safe_regex": {"regex": cond["regex"]}}})
                    else:
                        hs.append({"name": name, "present_match": True})
                match["headers"] = hs
            action = ({"route": {"cluster": clusters[subset]}} if clusters is not None else
                      {"direct_response": {"status": 200, "body": {"inline_string": subset}}})
            routes.append({
                "name": f"{http.get('name', i)}-{j}",
                "match": match,
                **action,
                "response_headers_to_add": [{"header": {
                    "key": "x-echo-route-header",
                    "value": f"%REQ({DEFAULT_ROUTE_HEADER})%"}}],
            })
    return routes


def subset_for(version: str) -> str:
    for dr in RULES:
        for s in dr["spec"].get("subsets", []):
            if s.get("labels", {}).get("version") == version:
                return s["name"]
    raise AssertionError(f"no subset for version {version}")


def active(rule: dict, now: datetime) -> bool:
    def t(s):
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (rule.get("enabled", True)
            and ("starts_at" not in rule or t(rule["starts_at"]) <= now)
            and ("expires_at" not in rule or now < t(rule["expires_at"])))


def trusted(cfg: dict, source: str) -> bool:
    cidrs = (cfg.get("override") or {}).get("trusted_cidrs", [])
    return any(ipaddress.ip_address(source) in ipaddress.ip_network(c) for c in cidrs)


def start_istio_envoy(tmp_path: Path, plugin: dict, plugin_config: dict | None = None,
                      before_filters: Sequence[dict] = ()) -> Envoy:
    if not harness.WASM.exists():
        pytest.fail(f"{harness.WASM} is missing: run `make build` first", pytrace=False)
    tmp_path.mkdir(parents=True, exist_ok=True)
    ecds = tmp_path / "ecds.yaml"
    harness.write_istio_ecds(ecds, plugin, "1", plugin_config)
    doc = harness.istio_bootstrap(plugin, ecds_path=ecds, access_log=tmp_path / "access.log",
                                  routes=vs_envoy_routes(SERVICES[0]), before_filters=before_filters)
    return Envoy(tmp_path, doc, concurrency=1).launch()


@pytest.fixture
def istio_envoy(tmp_path):
    started: list[Envoy] = []

    def start(plugin, plugin_config=None, before_filters=()):
        e = start_istio_envoy(tmp_path / f"istio{len(started)}", plugin, plugin_config, before_filters)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


@pytest.mark.parametrize("name,plugin", PLUGINS, ids=[f for f, _ in PLUGINS])
def it_wasmplugin_delivered_like_istiod_routes_as_configured(istio_envoy, name, plugin):
    assert_routes_as_configured(istio_envoy(plugin), name, plugin)


@pytest.mark.parametrize("name,te", TRAFFIC_EXTENSIONS, ids=[f for f, _ in TRAFFIC_EXTENSIONS])
def it_trafficextension_delivered_like_istiod_routes_by_its_httproute(delivered_envoy, apps,
                                                                        name, te):
    """Each TrafficExtension as istiod 1.30 serves it (its own filter name and ECDS resource,
    the Wasm config named <ns>.<name>), in front of routes made from its HTTPRoute (the ingress
    one at the Gateway API gateway, the mesh one for sidecars and the waypoint; the
    VirtualService's at the classic ingress gateway): it routes as configured."""
    route = httproute_for(te)
    routes = (httproute_envoy_routes(route, apps.cluster_names()) if route is not None
              else vs_envoy_routes(SERVICES[0], apps.cluster_names()))
    envoy = delivered_envoy(te, [], "1.30", routes=routes)
    loaded = loaded_wasm_configs(envoy)
    md = te["metadata"]
    assert set(loaded) == {f"extensions.istio.io/trafficextension/{md['namespace']}.{md['name']}"}
    assert [c["name"] for c in loaded.values()] == [f"{md['namespace']}.{md['name']}"]
    assert_routes_as_configured(envoy, name, te)


def assert_routes_as_configured(envoy: Envoy, name: str, plugin: dict) -> None:
    """Real requests through `envoy` (the extension delivered, routes to one app per subset)
    land where its pluginConfig says: the ramp's buckets, a minted sticky id, the header rules,
    a spoofed route header replaced, the override honoured only from a trusted address."""
    cfg = plugin["spec"]["pluginConfig"]
    stable = subset_for(cfg["stable"])
    now = datetime.now(timezone.utc)
    rules = cfg.get("rules", [])
    id_header = next(s["header"] for s in cfg["identity"]["from"] if "header" in s)
    ramp = next(r for r in rules if "split" in r)
    salt = ramp.get("salt", ramp["name"])
    percent = ramp["split"][0]["percent"]
    gray_version = ramp["split"][0]["version"]
    # A rule past its window sends everybody to stable: follow the calendar, not a hope.
    gray = subset_for(gray_version) if active(ramp, now) else stable
    inside = user_in(salt, 0, round(percent * 100))
    outside = user_in(salt, round(percent * 100), 10000)

    assert envoy.version("/", [(id_header, inside)]) == gray, f"{inside} bucket < {percent}%"
    assert envoy.version("/", [(id_header, outside)]) == stable, f"{outside} bucket >= {percent}%"
    r = envoy.get("/")
    assert r.status == 200, r
    sticky = (cfg.get("identity") or {}).get("sticky_cookie")
    if sticky:  # no user id: one is minted, used for this request and sent back as a cookie
        minted = next(c.split(";")[0].split("=", 1)[1] for c in r.all("set-cookie")
                      if c.startswith(sticky["name"] + "="))
        want = gray if bucket(salt, minted) < round(percent * 100) else stable
        assert r.text == want, f"minted id {minted} (bucket {bucket(salt, minted)})"
    else:
        assert r.text == stable, "no user id goes to stable"

    for rule in rules:
        hs = (rule.get("when") or {}).get("headers") or []
        if "version" in rule and hs and all("exact" in h for h in hs) and set(rule["when"]) == {
                "headers"}:
            want = subset_for(rule["version"]) if active(rule, now) else stable
            got = envoy.version("/", [(h["name"], h["exact"]) for h in hs] + [(id_header, outside)])
            assert got == want, f"rule {rule['name']}"

    # A client cannot pick its version: the filter replaces the routing header.
    assert envoy.version("/", [(id_header, outside), (route_header(plugin), gray_version)]) == stable
    # The override header from 127.0.0.1: honoured only if 127.0.0.1 is trusted.
    if name in ("wasmplugin-gateway.yaml", "trafficextension-gateway.yaml"):
        assert not trusted(cfg, "127.0.0.1"), "the gateway trusts only 10.20.0.0/16"
    if cfg.get("override"):
        want = subset_for(gray_version) if trusted(cfg, "127.0.0.1") else stable
        got = envoy.version("/", [(id_header, outside), (cfg["override"]["header"], gray_version)])
        assert got == want, "override from 127.0.0.1 with trusted_cidrs " \
            f"{cfg['override']['trusted_cidrs']}"


def it_istio_rendering_survives_html_escaping_float_percents_and_trusts_the_override(
        istio_envoy):
    gw = _gateway()
    cfg = copy.deepcopy(gw["spec"]["pluginConfig"])
    cfg["override"]["trusted_cidrs"] = ["10.20.0.0/16", "127.0.0.1/32"]
    cfg["rules"].insert(0, {"name": "escaped", "version": "v2.1",
                            "when": {"headers": [{"name": "x-probe", "exact": "a<b&c>"}]}})
    ramp = next(r for r in cfg["rules"] if "split" in r)
    ramp["split"][0]["percent"] = 12.5
    ramp.pop("expires_at", None)
    value = harness.istio_ecds_document(gw, plugin_config=cfg)[
        "resources"][0]["typed_config"]["config"]["configuration"]["value"]
    assert "a\\u003cb\\u0026c\\u003e" in value and "<" not in value, value
    assert '"percent":12.5' in value

    envoy = istio_envoy(gw, cfg)
    salt = ramp["salt"]
    stable_user = user_in(salt, 1250, 10000)
    assert envoy.version("/", [("x-probe", "a<b&c>")]) == "v2-1", "the unescaped value matches"
    # With a user the ramp keeps on stable: without one, the sticky cookie would mint a random
    # id, and 12.5% of those land on v2.1 through the ramp whatever the probe says.
    assert envoy.version("/", [("x-probe", "a\\u003cb\\u0026c\\u003e"), ("x-user-id", stable_user)]) \
        == "v2-0", "the escaped text is not what the filter compares"
    assert envoy.version("/", [("x-user-id", user_in(salt, 1000, 1250))]) == "v2-1", "12.5%"
    assert envoy.version("/", [("x-user-id", stable_user)]) == "v2-0"
    assert envoy.version("/", [("x-user-id", stable_user), ("x-gray-release", "v2.1")]) == "v2-1", \
        "the override header from a trusted source (127.0.0.1/32 added here)"


# --------------------------------------------------------------------------- bodies: the EnvoyFilter
#
# graysplit holds a request's headers while it reads a JSON body, which Envoy allows only with
# `allow_on_headers_stop_iteration: true` in the Wasm filter's config. A WasmPlugin cannot set
# it, and istiod cannot merge it into a WasmPlugin's config (EXTENSION_CONFIG patches are ADD
# only; an HTTP_FILTER MERGE skips the WasmPlugin's config_discovery entry). So each
# istio/envoyfilter-body-*.yaml ADDs a complete extension config (the WasmPlugin's, plus the
# flag) and REPLACEs the WasmPlugin's filter entry by one that loads it. Below: a model of what
# istiod 1.30.3 and istio-agent do with that (module docstring), the checks that each
# EnvoyFilter stays what istiod applies and carries exactly its WasmPlugin's config, and real
# requests through a real Envoy configured the way that model says.

HCM_FILTER = "envoy.filters.network.http_connection_manager"
RBAC_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
EXTENSION_CONFIG_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
# istiod 1.30 serves each WasmPlugin as a synthetic TrafficExtension named <name> + this
# (pilot/pkg/config/kube/extensions/translate.go, syntheticMarker).
TRANSLATED = "~istio-translated-wasmplugin"
NAMINGS = ("1.30", "1.29")   # istiod's names for a WasmPlugin's filter: now, and before 1.30
ROOT_NAMESPACE = "istio-system"


def namings(plugin: dict) -> tuple[str, ...]:
    """The istiod versions whose naming of `plugin`'s filter differs: a WasmPlugin is named
    differently by 1.30 and by 1.29; a TrafficExtension exists from 1.30 on."""
    return NAMINGS if plugin["kind"] == "WasmPlugin" else ("1.30",)


def istiod_filter_name(plugin: dict, naming: str = "1.30") -> str:
    """The HTTP filter (and ECDS resource) name istiod gives an extension
    (TrafficExtensionResourceNamePrefix + <ns>.<name>, pilot/pkg/model/extensions.go): for a
    TrafficExtension `extensions.istio.io/trafficextension/<ns>.<name>`; for a WasmPlugin, 1.30
    names its translation, `...<ns>.<name>~istio-translated-wasmplugin`, and up to 1.29 it was
    `extensions.istio.io/wasmplugin/<ns>.<name>`."""
    md = plugin["metadata"]
    ns = md.get("namespace", "default")
    if plugin["kind"] == "TrafficExtension":
        assert naming == "1.30", naming
        return f"extensions.istio.io/trafficextension/{ns}.{md['name']}"
    if naming == "1.29":
        return f"extensions.istio.io/wasmplugin/{ns}.{md['name']}"
    assert naming == "1.30", naming
    return f"extensions.istio.io/trafficextension/{ns}.{md['name']}{TRANSLATED}"


def istiod_filter_entry(plugin: dict, naming: str) -> dict:
    """The HTTP filter entry istiod renders for a Wasm WasmPlugin (toEnvoyHTTPTrafficExtension):
    config_discovery over ADS, no typed_config."""
    return {"name": istiod_filter_name(plugin, naming), "config_discovery": {
        "config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
        "type_urls": [harness.WASM_TYPE_URL, RBAC_TYPE_URL]}}


def istiod_plugin_resource(plugin: dict, naming: str, plugin_config: dict | None = None) -> dict:
    """The extension's own ECDS resource as Envoy gets it (harness.istio_ecds_document: istiod's
    rendering after istio-agent), named as istiod `naming` names it. The Wasm config's name is
    <ns>.<name> of the TrafficExtension istiod serves (buildWasmConfig): a WasmPlugin's
    translation carries the marker from 1.30 on."""
    res = harness.istio_ecds_document(plugin, plugin_config=plugin_config)["resources"][0]
    assert res["typed_config"]["config"]["name"] == \
        f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}", "harness naming changed"
    res["name"] = istiod_filter_name(plugin, naming)
    if plugin["kind"] == "WasmPlugin" and naming == "1.30":
        res["typed_config"]["config"]["name"] += TRANSLATED
    return res


GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def envoyfilter_selects(ef: dict, plugin: dict) -> bool:
    """Whether istiod applies `ef` to the proxies `plugin` selects (PushContext.EnvoyFilters:
    the proxy's namespace or the root namespace; then policyattachment.go ShouldAttachPolicy).
    A proxy of a Gateway API Gateway (an extension with targetRefs; its pods carry
    gateway.networking.k8s.io/gateway-name) takes an EnvoyFilter whose targetRefs name its
    Gateway in its namespace (or, for a waypoint, the GatewayClass istio-waypoint from the root
    namespace), or one without targetRefs whose selector its labels satisfy, except a waypoint,
    which never takes a selector policy. Any other proxy ignores an EnvoyFilter with targetRefs
    and takes one whose workloadSelector its labels satisfy (none: every proxy)."""
    ns = plugin["metadata"].get("namespace", "default")
    ef_ns = ef["metadata"].get("namespace")
    if ef_ns not in (ns, ROOT_NAMESPACE):
        return False
    wanted = ((ef["spec"].get("workloadSelector") or {}).get("labels")) or {}
    refs = ef["spec"].get("targetRefs") or []
    gateways = target_gateways(plugin)
    if not gateways:
        labels = (plugin["spec"].get("selector") or {}).get("matchLabels") or {}
        return not refs and all(labels.get(k) == v for k, v in wanted.items())
    assert len(gateways) == 1, "an extension on several Gateways: extend the model"
    gw = gateways[0]
    waypoint = gw["spec"]["gatewayClassName"] == WAYPOINT_CLASS
    if not refs:
        # The labels Istio puts on a Gateway's pods (kube-gateway.yaml; the infrastructure
        # labels are the Gateway's own without spec.infrastructure, deploymentcontroller.go).
        labels = {**(gw["metadata"].get("labels") or {}),
                  GATEWAY_NAME_LABEL: gw["metadata"]["name"],
                  "gateway.networking.k8s.io/gateway-class-name": gw["spec"]["gatewayClassName"]}
        return not waypoint and all(labels.get(k) == v for k, v in wanted.items())
    for r in refs:
        group_kind = (r.get("group", ""), r["kind"])
        if (waypoint and ef_ns == ROOT_NAMESPACE and r["name"] == WAYPOINT_CLASS
                and group_kind == ("gateway.networking.k8s.io", "GatewayClass")):
            return True
        if (ef_ns == ns and r.get("namespace", ns) == ns and r["name"] == gw["metadata"]["name"]
                and group_kind == ("gateway.networking.k8s.io", "Gateway")):
            return True
    return False


def it_envoyfilter_selection_follows_istiods_policy_attachment():
    """The cases of ShouldAttachPolicy the recipes rely on, and the ones they must not trip."""
    def ef(ns="rag", selector=None, refs=None):
        spec: dict = {"configPatches": []}
        if selector is not None:
            spec["workloadSelector"] = {"labels": selector}
        if refs is not None:
            spec["targetRefs"] = refs
        return {"metadata": {"name": "probe", "namespace": ns}, "spec": spec}

    gw_ref = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}]
    waypoint = next(p for _, p in TRAFFIC_EXTENSIONS if "waypoint" in p["metadata"]["name"])
    sidecar = next(p for _, p in PLUGINS if p["metadata"]["name"] == "graysplit-callers")
    gateway_api = next(p for _, p in TRAFFIC_EXTENSIONS
                       if p["metadata"]["name"] == "graysplit-gateway-api")
    assert envoyfilter_selects(ef(refs=gw_ref), waypoint)
    assert not envoyfilter_selects(ef(), waypoint), "a waypoint never takes a selector policy"
    assert not envoyfilter_selects(ef(refs=gw_ref), sidecar), "a sidecar ignores targetRefs"
    assert envoyfilter_selects(ef(), sidecar), "no selector: every proxy of the namespace"
    assert envoyfilter_selects(ef(ns=ROOT_NAMESPACE, refs=[{
        "group": "gateway.networking.k8s.io", "kind": "GatewayClass",
        "name": WAYPOINT_CLASS}]), waypoint)
    assert not envoyfilter_selects(ef(ns=ROOT_NAMESPACE, refs=gw_ref), waypoint), \
        "a Gateway ref from another namespace"
    assert not envoyfilter_selects(ef(ns="istio-system", selector={"istio": "ingressgateway"}),
                                   gateway_api), "a Gateway API gateway's pods have other labels"
    assert envoyfilter_selects(ef(ns="istio-system", selector={
        GATEWAY_NAME_LABEL: "rag-gateway"}), gateway_api)
    assert envoyfilter_selects(ef(ns="istio-system", selector={
        "gateway.networking.k8s.io/gateway-class-name": "istio"}), gateway_api)


def _patches(envoyfilters: Sequence[dict], apply_to: str) -> list[dict]:
    ordered = sorted(envoyfilters, key=lambda ef: ef["spec"].get("priority", 0))
    return [cp for ef in ordered for cp in ef["spec"].get("configPatches", [])
            if cp.get("applyTo") == apply_to]


def _hcm_patch_target(cp: dict, context: str) -> tuple[bool, str | None]:
    """(whether an HTTP_FILTER patch applies to our HCM in `context`, the subFilter name it
    matches or None). Listener match fields other than filterChain.filter are not modelled."""
    match = cp.get("match") or {}
    if match.get("context", "ANY") not in ("ANY", context):
        return False, None
    lm = match.get("listener")
    if lm is None:
        return True, None
    fc = lm.get("filterChain") or {}
    unmodelled = (set(lm) - {"filterChain"}) | (set(fc) - {"filter"})
    assert not unmodelled, f"the istiod model does not cover listener match {sorted(unmodelled)}"
    f = fc.get("filter")
    if f is None:
        return True, None
    if f.get("name") != HCM_FILTER:
        return False, None
    return True, (f.get("subFilter") or {}).get("name")


def istiod_http_filters(envoyfilters: Sequence[dict], filters: list[dict],
                        context: str) -> list[dict]:
    """An HCM's filters after istiod applied the EnvoyFilters' HTTP_FILTER patches
    (listener_patch.go patchHTTPFilters, then mergeHTTPFilter). REPLACE swaps the first filter
    of the subFilter's name (util.go replaceFunc); MERGE skips a filter without typed_config, as
    every WasmPlugin's ECDS entry is ("TODO(rshriram): fixme"). Other operations are not
    modelled (istio/ uses none)."""
    out = copy.deepcopy(filters)
    patches = _patches(envoyfilters, "HTTP_FILTER")
    for cp in patches:
        applies, sub = _hcm_patch_target(cp, context)
        op = cp["patch"]["operation"]
        if not applies or op == "MERGE":
            continue
        assert op == "REPLACE", f"the istiod model does not cover HTTP_FILTER {op}"
        if sub is None:   # REPLACE without a subFilter match does nothing
            continue
        at = next((i for i, f in enumerate(out) if f.get("name") == sub), None)
        if at is not None:
            out[at] = copy.deepcopy(cp["patch"]["value"])
    for f in out:
        for cp in patches:
            applies, sub = _hcm_patch_target(cp, context)
            if applies and cp["patch"]["operation"] == "MERGE" and sub in (None, f.get("name")):
                assert "typed_config" not in f, "MERGE into a typed_config filter: not modelled"
    return out


def istiod_ecds(envoyfilters: Sequence[dict], requested: Sequence[str],
                plugin_resources: Sequence[dict]) -> list[dict]:
    """istiod's ECDS answer for the `requested` names (BuildExtensionConfiguration): first the
    EnvoyFilters' EXTENSION_CONFIG patches whose operation is ADD (every other operation is
    skipped: InsertedExtensionConfigurations), then the WasmPlugins' resources."""
    out = [copy.deepcopy(cp["patch"]["value"])
           for cp in _patches(envoyfilters, "EXTENSION_CONFIG")
           if cp["patch"].get("operation") == "ADD"
           and cp["patch"]["value"].get("name") in requested]
    return out + [copy.deepcopy(r) for r in plugin_resources if r["name"] in requested]


def istio_agent(resource: dict) -> dict:
    """What istio-agent forwards to Envoy for an ECDS resource (pkg/wasm/convert.go): a Wasm
    config with remote code gets the module fetched (here: the local build) and its ISTIO_META_*
    variables stripped; local code is left as it is (here its path becomes the local build's,
    standing in for the module mounted into the proxy)."""
    res = copy.deepcopy(resource)
    tc = res.get("typed_config") or {}
    if tc.get("@type") != harness.WASM_TYPE_URL:
        return res
    vm = tc["config"]["vm_config"]
    if "remote" in vm["code"]:
        env = vm.get("environment_variables") or {}
        kv = {k: v for k, v in (env.get("key_values") or {}).items()
              if not k.startswith("ISTIO_META_")}
        if kv:
            env["key_values"] = kv
        elif env.get("host_env_keys"):
            env.pop("key_values", None)
        else:
            vm.pop("environment_variables", None)
    vm["code"] = {"local": {"filename": str(harness.WASM)}}
    return res


def envoyfilter_targets(ef: dict, plugin: dict) -> bool:
    """Whether `ef` is the body-holding EnvoyFilter of `plugin`: it applies to its proxies and
    REPLACEs its filter entry (under any of istiod's names for it)."""
    names = {istiod_filter_name(plugin, n) for n in namings(plugin)}
    return envoyfilter_selects(ef, plugin) and any(
        _hcm_patch_target(cp, plugin_context(plugin))[1] in names
        for cp in _patches([ef], "HTTP_FILTER") if cp["patch"]["operation"] == "REPLACE")


def envoyfilter_of(plugin: dict) -> dict:
    found = [ef for _, ef in ENVOYFILTERS if envoyfilter_targets(ef, plugin)]
    assert len(found) == 1, f"{plugin['metadata']['name']}: {len(found)} body EnvoyFilters"
    return found[0]


def extensions_of(ef: dict) -> list[tuple[str, dict]]:
    """The extensions (file, extension) whose body-holding EnvoyFilter `ef` is: a WasmPlugin
    and the TrafficExtension of the same name, which one file serves (only one of the two is
    applied), or one of them alone."""
    found = [(f, p) for f, p in EXTENSIONS if envoyfilter_targets(ef, p)]
    assert found, f"{ef['metadata']['name']}: targets no extension of istio/"
    return found


def delivered(plugin: dict, envoyfilters: Sequence[dict], naming: str,
              plugin_config: dict | None = None) -> tuple[list[dict], list[dict]]:
    """What a proxy `plugin` selects gets from istiod `naming` (+ istio-agent) with
    `envoyfilters` applied: the HCM's HTTP filters (the WasmPlugin's entry, then the router, as
    in envoy/istio-ecds-bootstrap.yaml) and the ECDS resources for the names they request."""
    applied = [ef for ef in envoyfilters if envoyfilter_selects(ef, plugin)]
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    filters = istiod_http_filters(applied, [istiod_filter_entry(plugin, naming), router],
                                  plugin_context(plugin))
    requested = [f["name"] for f in filters if "config_discovery" in f]
    resources = istiod_ecds(applied, requested,
                            [istiod_plugin_resource(plugin, naming, plugin_config)])
    return filters, [istio_agent(r) for r in resources]


def extension_config_of(ef: dict) -> dict:
    adds = [cp for cp in _patches([ef], "EXTENSION_CONFIG") if cp["patch"]["operation"] == "ADD"]
    assert len(adds) == 1, f"{ef['metadata']['name']}: {len(adds)} EXTENSION_CONFIG ADDs"
    return adds[0]["patch"]["value"]


def with_configuration(ef: dict, plugin_config: dict) -> dict:
    """A copy of `ef` whose extension config carries `plugin_config` (what an operator writes
    there with each edit of the WasmPlugin's pluginConfig)."""
    ef = copy.deepcopy(ef)
    extension_config_of(ef)["typed_config"]["config"]["configuration"]["value"] = \
        json.dumps(plugin_config, indent=2)
    return ef


def expected_wasm_config(plugin: dict) -> dict:
    """The Wasm config a WasmPlugin's body EnvoyFilter must ADD: what istiod 1.30 renders for
    the WasmPlugin (pilot/pkg/model/extensions.go buildWasmConfig, buildDataSource,
    buildVMConfig), named <ns>.<name>, without the resource-version variable (istiod's, for its
    own resources), plus allow_on_headers_stop_iteration. `configuration` is compared parsed."""
    md, spec = plugin["metadata"], plugin["spec"]
    assert not spec.get("imagePullSecret"), \
        "istiod puts a pull secret only into a WasmPlugin's own ECDS resource, never into an " \
        "EnvoyFilter's (xds/ecds.go): pull from a public registry or use file://"
    assert not spec.get("vmConfig"), "vmConfig: extend expected_wasm_config"
    url = spec["url"]
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "file":
        code: dict = {"local": {"filename": url[len("file://"):]}}
    else:
        code = {"remote": {"http_uri": {"uri": url if scheme else "oci://" + url, "cluster": "_",
                                        "timeout": "30s"},
                           "sha256": spec.get("sha256", "")}}
    vm: dict = {"runtime": "envoy.wasm.runtime.v8", "code": code}
    if spec.get("imagePullPolicy") and scheme != "file":
        vm["environment_variables"] = {"key_values": {
            "ISTIO_META_WASM_IMAGE_PULL_POLICY": spec["imagePullPolicy"]}}
    return {
        "name": f"{md.get('namespace', 'default')}.{md['name']}",
        "root_id": spec.get("pluginName", ""),
        "vm_config": vm,
        "failure_policy": harness.ISTIO_FAILURE_POLICY[spec.get("failStrategy", "FAIL_CLOSE")],
        "allow_on_headers_stop_iteration": True,
        "configuration": {"@type": STRING_VALUE,
                          "value": json.loads(json.dumps(spec.get("pluginConfig")))},
    }


@pytest.mark.parametrize("name,ef", ENVOYFILTERS, ids=[f for f, _ in ENVOYFILTERS])
def it_body_envoyfilter_uses_only_patches_istiod_applies(name, ef):
    """Each EnvoyFilter is one istiod 1.30 (and 1.29) acts on: it selects its extensions'
    proxies as they do (workloadSelector = selector, or targetRefs = targetRefs for a waypoint)
    in their namespace, ADDs one extension config (the only EXTENSION_CONFIG operation istiod
    applies), REPLACEs the extensions' filter entry under each of istiod's names for them (a
    WasmPlugin's in 1.30 and 1.29, a TrafficExtension's) with an entry that loads that config
    the way istiod's own entries do (ADS, waiting for it, Wasm and RBAC types: istio-agent
    sends an RBAC filter when the module cannot be fetched), and uses no MERGE (which istiod
    skips on that entry)."""
    targets = [p for _, p in extensions_of(ef)]
    md, spec = ef["metadata"], ef["spec"]
    assert ef["apiVersion"] == "networking.istio.io/v1alpha3"
    for plugin in targets:
        assert md["namespace"] == plugin["metadata"]["namespace"]
        if plugin["spec"].get("targetRefs"):
            assert spec["targetRefs"] == plugin["spec"]["targetRefs"]
            assert "workloadSelector" not in spec
        else:
            assert spec["workloadSelector"]["labels"] == plugin["spec"]["selector"]["matchLabels"]
    assert spec.get("priority", 0) != 0, "a relative operation (REPLACE) with priority 0: IST0151"
    names = [istiod_filter_name(p, n) for p in targets for n in namings(p)]
    ops = [(cp["applyTo"], cp["patch"]["operation"]) for cp in spec["configPatches"]]
    assert ops == [("EXTENSION_CONFIG", "ADD")] + [("HTTP_FILTER", "REPLACE")] * len(names), ops
    ext = extension_config_of(ef)
    assert not ext["name"].startswith("extensions.istio.io/"), "istiod's own name space"
    contexts = {plugin_context(p) for p in targets}
    assert len(contexts) == 1, contexts
    context = contexts.pop()
    subs = []
    for cp in _patches([ef], "HTTP_FILTER"):
        assert cp["match"]["context"] == context
        applies, sub = _hcm_patch_target(cp, context)
        assert applies and sub
        subs.append(sub)
        assert cp["patch"]["value"] == {"name": ext["name"], "config_discovery": {
            "config_source": {"ads": {}, "initial_fetch_timeout": "0s",
                              "resource_api_version": "V3"},
            "type_urls": [harness.WASM_TYPE_URL, RBAC_TYPE_URL]}}
    assert sorted(subs) == sorted(names) and len(set(subs)) == len(subs), (subs, names)
    for plugin in targets:
        for naming in namings(plugin):
            filters, resources = delivered(plugin, [ef], naming)
            assert [f["name"] for f in filters] == [ext["name"], "envoy.filters.http.router"]
            assert [r["name"] for r in resources] == [ext["name"]], "one resource per name"


@pytest.mark.parametrize("name,ef", ENVOYFILTERS, ids=[f for f, _ in ENVOYFILTERS])
def it_body_envoyfilter_carries_exactly_its_extensions_config(name, ef):
    """While the EnvoyFilter is applied its extension config is what serves, so it must be its
    extensions' as istiod renders them (module, sha256, pull policy, failure policy, and the
    pluginConfig itself, compared as JSON), plus the flag, and nothing else: a ramp step made in
    the WasmPlugin (or the TrafficExtension) but not here fails this test."""
    ext = extension_config_of(ef)
    assert ext["typed_config"]["@type"] == harness.WASM_TYPE_URL
    assert set(ext) == {"name", "typed_config"} and set(ext["typed_config"]) == {"@type", "config"}
    got = copy.deepcopy(ext["typed_config"]["config"])
    assert got["configuration"]["@type"] == STRING_VALUE
    got["configuration"]["value"] = json.loads(got["configuration"]["value"])
    for file, plugin in extensions_of(ef):
        want = expected_wasm_config(plugin)
        assert got == want, (f"{name} is out of step with {file}; its configuration should be\n"
                             + json.dumps(want["configuration"]["value"], indent=2))


def it_a_merge_patch_is_crd_valid_and_never_reaches_the_wasmplugins_config(crds):
    """The obvious patches, an EXTENSION_CONFIG MERGE of the flag onto the WasmPlugin's
    resource and an HTTP_FILTER MERGE onto its filter, validate against the CRD (which keeps
    patch values open) but istiod drops both: the ECDS resource Envoy gets has no flag. That is
    why istio/ ADDs and REPLACEs instead (the test above keeps it so)."""
    plugin = _gateway()
    flag = {"config": {"allow_on_headers_stop_iteration": True}}
    naive = {
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": "graysplit-merge", "namespace": "istio-system"},
        "spec": {"workloadSelector": {"labels": {"istio": "ingressgateway"}}, "configPatches": [
            {"applyTo": "EXTENSION_CONFIG", "match": {"context": "GATEWAY"},
             "patch": {"operation": "MERGE", "value": {
                 "name": istiod_filter_name(plugin),
                 "typed_config": {"@type": harness.WASM_TYPE_URL, **flag}}}},
            {"applyTo": "HTTP_FILTER", "match": {"context": "GATEWAY", "listener": {
                "filterChain": {"filter": {"name": HCM_FILTER, "subFilter": {
                    "name": istiod_filter_name(plugin)}}}}},
             "patch": {"operation": "MERGE", "value": {
                 "typed_config": {"@type": harness.WASM_TYPE_URL, **flag}}}}]}}
    assert validate(naive, crds) == []
    assert not envoyfilter_targets(naive, plugin)
    filters, resources = delivered(plugin, [naive], "1.30")
    assert filters[0] == istiod_filter_entry(plugin, "1.30"), "the entry is untouched"
    assert [r["name"] for r in resources] == [istiod_filter_name(plugin)]
    assert "allow_on_headers_stop_iteration" not in resources[0]["typed_config"]["config"]


class Apps:
    """One stand-in app per DestinationRule subset, each a real HTTP/1.1 server on 127.0.0.1 in a
    thread of this process: it reads the whole request body (content-length or chunked) and
    answers 200 with its subset as the body, and the body's sha256 (x-body-sha256) and the
    routing header it received (x-app-saw-version)."""

    def __init__(self, subsets: Sequence[str]):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("content-length") is not None:
                    return self.rfile.read(int(self.headers["content-length"]))
                out = bytearray()
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                return bytes(out)

            def _answer(self):
                body = self._body()
                text = self.server.subset.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(text)))
                self.send_header("x-body-sha256", hashlib.sha256(body).hexdigest())
                self.send_header("x-app-saw-version", self.headers.get(DEFAULT_ROUTE_HEADER, ""))
                self.end_headers()
                self.wfile.write(text)

            do_GET = do_POST = _answer

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.servers = {}
        for subset in subsets:
            server = Server(("127.0.0.1", 0), Handler)
            server.subset = subset
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True).start()
            self.servers[subset] = server

    def cluster_names(self) -> dict[str, str]:
        return {subset: f"app-{subset}" for subset in self.servers}

    def clusters(self) -> list[dict]:
        def endpoint(port: int) -> dict:
            return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                "port_value": port}}}}
        return [{"name": f"app-{subset}", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": f"app-{subset}", "endpoints": [
                     {"lb_endpoints": [endpoint(s.server_address[1])]}]}}
                for subset, s in self.servers.items()]

    def close(self) -> None:
        for s in self.servers.values():
            s.shutdown()
            s.server_close()


@pytest.fixture
def apps():
    a = Apps(sorted({s["name"] for dr in RULES for s in dr["spec"]["subsets"]}))
    yield a
    a.close()


def start_delivered_envoy(workdir: Path, plugin: dict, envoyfilters: Sequence[dict], naming: str,
                          apps: Apps, plugin_config: dict | None = None,
                          routes: list[dict] | None = None, waypoint: bool | str = False) -> Envoy:
    """A real Envoy configured with what `delivered` says a proxy of `plugin` gets: its HCM's
    HTTP filters (ADS replaced by one ECDS file per requested name, the one thing a standalone
    Envoy does differently) and those files; `routes` (default: the VirtualService's) to
    `apps`. `waypoint`: that HCM moved into a waypoint's shape (waypoint_shaped; "no-source":
    without the tunnel's source shared)."""
    doc = delivered_bootstrap(workdir, plugin, envoyfilters, naming, apps, plugin_config, routes)
    if waypoint:
        doc = waypoint_shaped(doc, share_source=waypoint != "no-source")
    return Envoy(workdir, doc, concurrency=1).launch()


def delivered_bootstrap(workdir: Path, plugin: dict, envoyfilters: Sequence[dict], naming: str,
                        apps: Apps, plugin_config: dict | None = None,
                        routes: list[dict] | None = None) -> dict:
    if not harness.WASM.exists():
        pytest.fail(f"{harness.WASM} is missing: run `make build` first", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    doc = harness.istio_bootstrap(plugin, ecds_path=workdir / "unused",
                                  access_log=workdir / "access.log",
                                  routes=routes or vs_envoy_routes(SERVICES[0],
                                                                   apps.cluster_names()))
    doc["static_resources"]["clusters"] = apps.clusters()
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == [harness.istio_resource_name(plugin),
                                                        "envoy.filters.http.router"]
    filters, resources = delivered(plugin, envoyfilters, naming, plugin_config)
    for n, f in enumerate(f for f in filters if "config_discovery" in f):
        mine = [r for r in resources if r["name"] == f["name"]]
        assert len(mine) == 1, f"istiod would answer {len(mine)} resources for {f['name']}"
        path = workdir / f"ecds-{n}.yaml"
        run.write_atomic(path, yaml.safe_dump({"version_info": "1", "resources": [
            {"@type": EXTENSION_CONFIG_TYPE, **mine[0]}]}, sort_keys=False))
        source = f["config_discovery"]["config_source"]
        assert source.pop("ads") == {}
        source["path_config_source"] = {"path": str(path)}
    hcm["http_filters"] = filters
    return doc


# The VIP:port of rag-assistant's Service a waypoint's inner connection is for (stand-in).
SERVICE_VIP = "10.96.0.20:8080"


def waypoint_shaped(doc: dict, share_source: bool = True) -> dict:
    """`doc` rebuilt the way istiod lays out a waypoint (pilot/pkg/networking/core/
    listener_waypoint.go, buildConnectTerminateListener, buildWaypointInbound): the app
    listener terminates CONNECT tunnels (`connect_terminate`: upgrade CONNECT, a
    set_filter_state filter sharing the tunnel's destination and source with the upstream as
    `envoy.filters.listener.original_dst.local_ip` / `.remote_ip`, a route of the CONNECT to the
    `main_internal` cluster), and the HCM with the delivered filters moves into the internal
    listener `main_internal`, whose original_dst listener filter restores those addresses, so
    the filters see the tunnel's client as the downstream address (`share_source=False` leaves
    the source out: then they see an internal address). HBONE is HTTP/2 CONNECT over mutual
    TLS; here CONNECT is HTTP/1.1 in clear text, the part after the tunnel the same."""
    doc = copy.deepcopy(doc)
    listener = doc["static_resources"]["listeners"][0]
    inner = copy.deepcopy(listener)
    inner["name"] = "main_internal"
    inner.pop("address", None)
    inner["internal_listener"] = {}
    inner["listener_filters"] = [{
        "name": "envoy.filters.listener.original_dst", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3."
                     "OriginalDst"}}]

    def shared(key: str, value: str) -> dict:
        return {"object_key": key, "format_string": {"text_format_source": {
            "inline_string": value}}, "shared_with_upstream": "ONCE"}

    terminate = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
                 "v3.HttpConnectionManager",
        "stat_prefix": "connect_terminate",
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "http2_protocol_options": {"allow_connect": True},
        "route_config": {"name": "default", "virtual_hosts": [{
            "name": "default", "domains": ["*"], "routes": [{
                "match": {"connect_matcher": {}},
                "route": {"cluster": "main_internal",
                          "upgrade_configs": [{"upgrade_type": "CONNECT",
                                               "connect_config": {}}]}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.set_filter_state", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3."
                         "Config",
                "on_request_headers": [
                    shared("envoy.filters.listener.original_dst.local_ip", "%REQ(:AUTHORITY)%"),
                    *([shared("envoy.filters.listener.original_dst.remote_ip",
                              "%DOWNSTREAM_REMOTE_ADDRESS%")] if share_source else [])]}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    listener["filter_chains"] = [{"filters": [
        {"name": HCM_FILTER, "typed_config": terminate}]}]
    # main_internal first: the harness reads the access log path of the first listener's HCM.
    doc["static_resources"]["listeners"].insert(0, inner)
    doc["static_resources"]["clusters"].append({
        "name": "main_internal", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "main_internal", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"envoy_internal_address": {
                "server_listener_name": "main_internal"}}}}]}]},
        "transport_socket": {"name": "envoy.transport_sockets.internal_upstream", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3."
                     "InternalUpstreamTransport",
            "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3."
                         "RawBuffer"}}}}})
    doc.setdefault("bootstrap_extensions", []).append({
        "name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3."
                     "InternalListener"}})
    return doc


class Tunnel(harness.Conn):
    """harness.Conn through a CONNECT tunnel to `target` on `envoy`'s app listener, as ztunnel
    sends a client's connection to a waypoint (one tunnel per client connection)."""

    def __init__(self, envoy: Envoy, target: str = SERVICE_VIP):
        super().__init__(envoy.port)
        self.sock.sendall(f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.split(b" ", 2)[1] == b"200", head

    def version(self, path: str = "/", headers: Sequence[tuple[str, str]] = ()) -> str:
        r = self.get(path, headers)
        assert r.status == 200, r
        return r.text


@pytest.fixture
def delivered_envoy(tmp_path, apps):
    started: list[Envoy] = []

    def start(plugin, envoyfilters, naming="1.30", plugin_config=None, routes=None,
              waypoint=False):
        e = start_delivered_envoy(tmp_path / f"delivered{len(started)}", plugin, envoyfilters,
                                  naming, apps, plugin_config, routes, waypoint)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


def loaded_wasm_configs(envoy: Envoy) -> dict[str, dict]:
    """The Wasm configs Envoy loaded over ECDS, by name (admin /config_dump, what
    `istioctl proxy-config ecds` prints from a proxy)."""
    status, body = envoy.admin_get("/config_dump?resource=ecds_filters")
    assert status == 200, body
    out = {}
    for c in json.loads(body)["configs"]:
        f = c["ecds_filter"]
        out[f["name"]] = f["typed_config"]["config"]
    return out


def body_identity(plugin: dict) -> dict:
    """The plugin's pluginConfig reading the user id from a JSON body's /user before its header
    sources (as README "API clients by their JSON body"), its ramp without an end date."""
    cfg = copy.deepcopy(plugin["spec"]["pluginConfig"])
    sources = cfg["identity"]["from"]
    sources.insert(next(i for i, s in enumerate(sources) if "header" in s), {"body": "/user"})
    for rule in cfg["rules"]:
        rule.pop("expires_at", None)
    return cfg


def first_split(cfg: dict) -> tuple[dict, str, int]:
    """cfg's first split rule, its salt and its cut (the first bucket past its first version)."""
    ramp = next(r for r in cfg["rules"] if "split" in r)
    return ramp, ramp.get("salt", ramp["name"]), round(ramp["split"][0]["percent"] * 100)


def split_users(cfg: dict) -> tuple[str, str, str, str]:
    """(the first split version's subset, stable's, a user inside that split, one outside)."""
    ramp, salt, cut = first_split(cfg)
    return (subset_for(ramp["split"][0]["version"]), subset_for(cfg["stable"]),
            user_in(salt, 0, cut), user_in(salt, cut, 10000))


def chat(user: str) -> bytes:
    """An OpenAI-style chat body of about 3 KB carrying the user in /user."""
    return json.dumps({"model": "qwen2.5-72b", "user": user, "stream": False, "messages": [
        {"role": "system", "content": "You answer from the handbook. " * 40},
        {"role": "user", "content": "Wie lange gilt die Kündigungsfrist? « » ✓ " * 30}]},
        ensure_ascii=False).encode()


def post(envoy: Envoy, body: bytes, headers: Sequence[tuple[str, str]]) -> harness.Resp:
    with envoy.conn() as c:
        return c.request("POST", "/v1/chat/completions",
                         [("content-type", "application/json"), *headers], body=body)


BODY_PAIRS = [(f, ef, p, n) for f, ef in ENVOYFILTERS for _, p in extensions_of(ef)
              for n in namings(p)]


@pytest.mark.parametrize("name,ef,plugin,naming", BODY_PAIRS,
                         ids=[f"{f}-{p['kind']}-istiod{n}" for f, _, p, n in BODY_PAIRS])
def it_with_the_body_envoyfilter_a_json_body_identity_decides(delivered_envoy, name, ef, plugin,
                                                              naming):
    """The extension (WasmPlugin or TrafficExtension) with a body identity (its pluginConfig
    reading /user first), its EnvoyFilter carrying the same config, both as istiod `naming`
    delivers them: Envoy loads the EnvoyFilter's extension config with the flag (as the config
    dump shows it) and no field it does not know, the user in the body decides against the
    header's, and the body reaches the app byte for byte."""
    cfg = body_identity(plugin)
    envoy = delivered_envoy(plugin, [with_configuration(ef, cfg)], naming, cfg)
    loaded = loaded_wasm_configs(envoy)
    assert set(loaded) == {extension_config_of(ef)["name"]}, sorted(loaded)
    assert loaded[extension_config_of(ef)["name"]]["allow_on_headers_stop_iteration"] is True
    # Every field of the EnvoyFilter's value is one Envoy knows (istiod would drop others).
    assert envoy.stats("unknown_fields") == {"server.dynamic_unknown_fields": 0,
                                             "server.static_unknown_fields": 0}

    ramp, _, _ = first_split(cfg)
    gray, stable, inside, outside = split_users(cfg)
    id_header = next(s["header"] for s in cfg["identity"]["from"] if "header" in s)
    for body_user, header_user, want in ((inside, outside, gray), (outside, inside, stable),
                                         (inside, outside, gray)):
        body = chat(body_user)
        r = post(envoy, body, [(id_header, header_user)])
        assert r.status == 200, r
        assert r.text == want, f"body user {body_user}, header user {header_user}"
        assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest(), "body changed"
        want_header = ramp["split"][0]["version"] if want == gray else cfg["stable"]
        assert r.header("x-app-saw-version") == want_header
    # No JSON body: the header decides, nothing is held.
    assert envoy.version("/", [(id_header, inside)]) == gray


@pytest.mark.parametrize("name,plugin", EXTENSIONS, ids=[f for f, _ in EXTENSIONS])
def it_without_the_envoyfilter_a_body_identity_still_answers_with_the_body_intact(
        delivered_envoy, name, plugin):
    """The same extension with a body identity, delivered by istiod alone: the config Envoy
    loads has no flag, so the filter never gets the body. Whatever it then decides (not asserted
    here), every request is answered 200 by an app, with its body intact."""
    cfg = body_identity(plugin)
    envoy = delivered_envoy(plugin, [], "1.30", cfg)
    loaded = loaded_wasm_configs(envoy)
    assert set(loaded) == {istiod_filter_name(plugin)}
    assert "allow_on_headers_stop_iteration" not in loaded[istiod_filter_name(plugin)]
    _, salt, cut = first_split(cfg)
    subsets = {s["name"] for dr in RULES for s in dr["spec"]["subsets"]}
    for user in (user_in(salt, 0, cut), user_in(salt, cut, 10000), user_in(salt, 0, cut, "u-"),
                 user_in(salt, cut, 10000, "u-")):
        body = chat(user)
        r = post(envoy, body, [])
        assert r.status == 200, r
        assert r.text in subsets, r
        assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest(), "body changed"


# --------------------------------------------------------------------------- the waypoint's shape

WAYPOINT_TE = next((p for f, p in TRAFFIC_EXTENSIONS if plugin_context(p) == "SIDECAR_INBOUND"
                    and target_gateways(p)), None)


def _waypoint_envoy(delivered_envoy, apps, envoyfilters=(), plugin_config=None, waypoint=True):
    assert WAYPOINT_TE is not None, "istio/ has no waypoint TrafficExtension"
    return delivered_envoy(WAYPOINT_TE, list(envoyfilters), "1.30", plugin_config,
                           routes=httproute_envoy_routes(httproute_for(WAYPOINT_TE),
                                                         apps.cluster_names()),
                           waypoint=waypoint)


def it_on_a_waypoint_the_trafficextension_decides_for_the_tunnel_s_client(delivered_envoy, apps):
    """The waypoint TrafficExtension in an Envoy laid out as istiod lays out a waypoint (the
    client's connection arrives in a CONNECT tunnel, graysplit runs in the internal listener
    main_internal behind it, waypoint_shaped), routed by the mesh HTTPRoute: the ramp's buckets
    and the header pilot decide, a spoofed route header is replaced, and the override is
    honoured from the tunnel's client when its address is trusted (127.0.0.1/32 added here),
    which works only because istiod shares the tunnel's source with main_internal."""
    cfg = copy.deepcopy(WAYPOINT_TE["spec"]["pluginConfig"])
    cfg["override"]["trusted_cidrs"].append("127.0.0.1/32")
    for rule in cfg["rules"]:     # the ramp as it is, without the calendar's end
        rule.pop("expires_at", None)
    envoy = _waypoint_envoy(delivered_envoy, apps, plugin_config=cfg)
    gray, stable, inside, outside = split_users(cfg)
    header = route_header(WAYPOINT_TE)
    with Tunnel(envoy) as t:
        assert t.version("/", [("x-user-id", inside)]) == gray
        assert t.version("/", [("x-user-id", outside)]) == stable
        assert t.version("/", [("x-user-id", outside), (header, "v2.1")]) == stable, "spoofed"
        assert t.version("/", [("x-user-id", outside), ("x-department", "legal")]) == gray
        assert t.version("/", [("x-user-id", outside), ("x-gray-release", "v2.1")]) == gray
    assert envoy.counter("wasmcustom.graysplit_override_total.result.accepted") == 1
    assert envoy.counter("wasmcustom.graysplit_decisions_total.rule.ramp.version.v2.1") == 1

    # Without the tunnel's source shared, graysplit sees an internal address: it trusts none.
    blind = _waypoint_envoy(delivered_envoy, apps, plugin_config=cfg, waypoint="no-source")
    with Tunnel(blind) as t:
        assert t.version("/", [("x-user-id", outside), ("x-gray-release", "v2.1")]) == stable
        assert t.version("/", [("x-user-id", inside)]) == gray, "the rest still decides"
    assert blind.counter("wasmcustom.graysplit_override_total.result.rejected") == 1


def it_on_a_waypoint_the_body_envoyfilter_lets_a_json_body_decide(delivered_envoy, apps):
    """envoyfilter-body-waypoint.yaml applied to the waypoint TrafficExtension, in the waypoint's
    shape: a JSON body's user decides against the header's, through the tunnel, and the body
    reaches the app byte for byte."""
    ef = envoyfilter_of(WAYPOINT_TE)
    cfg = body_identity(WAYPOINT_TE)
    envoy = _waypoint_envoy(delivered_envoy, apps, [with_configuration(ef, cfg)], cfg)
    assert loaded_wasm_configs(envoy)[extension_config_of(ef)["name"]][
        "allow_on_headers_stop_iteration"] is True
    gray, stable, inside, outside = split_users(cfg)
    with Tunnel(envoy) as t:
        for body_user, header_user, want in ((inside, outside, gray), (outside, inside, stable)):
            body = chat(body_user)
            r = t.request("POST", "/v1/chat/completions",
                          [("content-type", "application/json"), ("x-user-id", header_user)], body)
            assert (r.status, r.text) == (200, want), (r, body_user)
            assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest(), "body changed"

