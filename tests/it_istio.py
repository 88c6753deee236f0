"""The Istio path, offline: istio/*.yaml against Istio's published CRD schemas, the
VirtualService against what each WasmPlugin can choose, each pluginConfig against the filter's
own validation, and each WasmPlugin delivered to a real Envoy the way istiod does it (ECDS).

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
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pytest
import yaml

import harness
import tokens
from harness import (DEFAULT_ROUTE_HEADER, REPO, Envoy, bucket, cli, go_float, go_json, go_string,
                     known_versions, user_in)

ISTIO = REPO / "istio"
CRDS = REPO.parent / "shared" / "istio-crds"

META_FIELDS = {"name", "generateName", "namespace", "labels", "annotations", "finalizers",
               "ownerReferences"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def istio_docs() -> list[tuple[str, int, dict]]:
    out = []
    for path in sorted(ISTIO.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((path.name, i, doc))
    return out


DOCS = istio_docs()
PLUGINS = [(f, d) for f, _, d in DOCS if d.get("kind") == "WasmPlugin"]
SERVICES = [d for _, _, d in DOCS if d.get("kind") == "VirtualService"]
RULES = [d for _, _, d in DOCS if d.get("kind") == "DestinationRule"]


# --------------------------------------------------------------------------- CRD validation

def strict(schema):
    """A copy of a structural schema that rejects unknown fields (see ../shared/istio-crds/):
    `additionalProperties: false` on every object schema with `properties` and no
    `x-kubernetes-preserve-unknown-fields`. Only schema positions are walked (never `default`
    or `enum` values)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if (not schema.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in schema):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict(schema[key])
    if isinstance(schema.get("items"), list):
        out["items"] = [strict(s) for s in schema["items"]]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            out[key] = [strict(s) for s in schema[key]]
    return out


def load_crds() -> dict[str, dict]:
    """kind -> {group, versions: {name: strict schema}}."""
    if not CRDS.is_dir():
        pytest.skip(f"Istio CRD schemas not found at {CRDS} (the shared checkout ../shared/"
                    "istio-crds/ next to the repository); CRD validation cannot run")
    import jsonschema

    crds = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        versions = {}
        for v in crd["spec"]["versions"]:
            if not v.get("served", True):
                continue
            schema = strict(v["schema"]["openAPIV3Schema"])
            jsonschema.Draft4Validator.check_schema(schema)
            versions[v["name"]] = schema
        crds[crd["spec"]["names"]["kind"]] = {"group": crd["spec"]["group"], "versions": versions}
    return crds


@pytest.fixture(scope="module")
def crds():
    return load_crds()


def cel_errors(doc: dict) -> list[str]:
    """The x-kubernetes-validations (CEL) rules of the WasmPlugin CRD that JSON Schema skips."""
    errors = []
    if doc.get("kind") != "WasmPlugin":
        return errors
    spec = doc.get("spec") or {}
    if sum(k in spec for k in ("selector", "targetRef", "targetRefs")) > 1:
        errors.append("spec: only one of targetRefs or selector can be set")
    url = spec.get("url")
    if isinstance(url, str):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("", "http", "https", "oci", "file"):
            errors.append("spec.url: url must have schema one of [http, https, file, oci]")
    labels = ((spec.get("selector") or {}).get("matchLabels")) or {}
    for k, v in labels.items():
        if not k:
            errors.append("spec.selector.matchLabels: key must not be empty")
        if "*" in k:
            errors.append("spec.selector.matchLabels: wildcard not allowed in label key match")
        if isinstance(v, str) and "*" in v:
            errors.append("spec.selector.matchLabels: wildcard not allowed in label value match")
    for i, ref in enumerate(spec.get("targetRefs") or []):
        if isinstance(ref, dict) and ref.get("namespace") not in (None, "",
                                                                   doc["metadata"].get("namespace")):
            errors.append(f"spec.targetRefs[{i}].namespace: cross namespace referencing is not "
                          "currently supported")
    return errors


def validate(doc, crds) -> list[str]:
    """Everything wrong with a manifest, as messages (empty: valid)."""
    import jsonschema

    if not isinstance(doc, dict):
        return ["not a mapping"]
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind not in crds:
        return [f"kind {kind!r}: not one of {sorted(crds)}"]
    group, _, version = str(api).rpartition("/")
    crd = crds[kind]
    if group != crd["group"] or version not in crd["versions"]:
        return [f"apiVersion {api!r}: {kind} is served as "
                + ", ".join(f"{crd['group']}/{v}" for v in crd["versions"])]
    errors = []
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            errors.append(f"{key}: unknown top-level field")
    md = doc.get("metadata")
    if not isinstance(md, dict):
        errors.append("metadata: required mapping")
    else:
        errors += [f"metadata.{k}: unknown field" for k in md if k not in META_FIELDS]
        name = md.get("name")
        if not (isinstance(name, str) and len(name) <= 253 and DNS_SUBDOMAIN.match(name)):
            errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
        ns = md.get("namespace")
        if ns is not None and not (isinstance(ns, str) and len(ns) <= 63 and DNS_LABEL.match(ns)):
            errors.append(f"metadata.namespace: {ns!r} is not a DNS-1123 label")
        for m in ("labels", "annotations"):
            if m in md and not (isinstance(md[m], dict)
                                and all(isinstance(v, str) for v in md[m].values())):
                errors.append(f"metadata.{m}: must map strings to strings")
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft4Validator(crd["versions"][version])
    for e in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path) or "(root)"
        errors.append(f"{where}: {e.message}")
    return errors + cel_errors(doc)


@pytest.mark.parametrize("name,index,doc", DOCS, ids=[f"{f}#{i}" for f, i, _ in DOCS])
def it_istio_yaml_validates_against_the_istio_crds(crds, name, index, doc):
    if doc.get("kind") not in crds and doc.get("kind") in NO_CRD_HERE:
        pytest.skip(f"{name}: no {doc['kind']} CRD in {CRDS} (only {sorted(crds)}); "
                    f"it_requestauthentication_is_what_the_claim_pilot_needs checks it by hand")
    assert validate(doc, crds) == [], f"{name} document {index}"


# Kinds istio/ uses whose CRD ../shared/istio-crds does not carry.
NO_CRD_HERE = {"RequestAuthentication"}
AUTHNS = [d for _, _, d in DOCS if d.get("kind") == "RequestAuthentication"]


def it_requestauthentication_is_what_the_claim_pilot_needs():
    """requestauthentication.yaml against Istio 1.30's RequestAuthentication API (by hand: no
    CRD for it here): it selects the same gateway pods as the gateway WasmPlugin, whose rules
    read claims, and each jwtRule has an issuer and a key source."""
    assert len(AUTHNS) == 1, AUTHNS
    ra, gw = AUTHNS[0], _gateway()
    assert ra["apiVersion"] in ("security.istio.io/v1", "security.istio.io/v1beta1")
    assert set(ra) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = ra["spec"]
    assert set(spec) <= {"selector", "targetRef", "targetRefs", "jwtRules"}, spec
    assert spec["selector"] == gw["spec"]["selector"], "the same pods as the gateway's graysplit"
    assert ra["metadata"].get("namespace") == gw["metadata"].get("namespace")
    allowed = {"issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams",
               "outputPayloadToHeader", "forwardOriginalToken", "outputClaimToHeaders",
               "fromCookies", "timeout"}
    for rule in spec["jwtRules"]:
        assert set(rule) <= allowed and rule["issuer"] and ("jwksUri" in rule or "jwks" in rule), rule
    cfg = gw["spec"]["pluginConfig"]
    reads = [c for r in cfg["rules"] for c in (r.get("when") or {}).get("claims", [])]
    assert reads and cfg["identity"]["from"][0] == {"claim": "sub"}
    assert cfg.get("claims", {}).get("metadata_key", "payload") == "payload", \
        "Istio's jwt_authn writes the payload under `payload`"


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


@pytest.mark.parametrize("name,plugin", PLUGINS, ids=[f for f, _ in PLUGINS])
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


# --------------------------------------------------------------------------- filter validation

@pytest.mark.parametrize("name,plugin", PLUGINS, ids=[f for f, _ in PLUGINS])
def it_plugin_config_passes_the_filters_own_validation(name, plugin):
    r = cli("check", str(ISTIO / name))
    assert r.returncode == 0, r
    assert f"WasmPlugin {plugin['metadata']['name']}: ok" in r.stdout, r.stdout


def it_broken_plugin_config_in_a_wasmplugin_fails_the_check(tmp_path):
    gw = _gateway()
    gw["spec"]["pluginConfig"]["rules"][1]["split"][0]["percent"] = 120
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(gw))
    r = cli("check", str(path))
    assert r.returncode == 1, r
    assert "rules[1].split[0].percent" in r.stdout and "120" in r.stdout, r.stdout


@pytest.mark.parametrize("name,plugin", PLUGINS, ids=[f for f, _ in PLUGINS])
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

def vs_envoy_routes(vs: dict) -> list[dict]:
    """Envoy routes standing in for `vs`: one per (http route, match), same order, each a
    direct_response whose body is the destination subset."""
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
            routes.append({
                "name": f"{http.get('name', i)}-{j}",
                "match": match,
                "direct_response": {"status": 200, "body": {"inline_string": subset}},
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
    cfg = plugin["spec"]["pluginConfig"]
    stable = subset_for(cfg["stable"])
    envoy = istio_envoy(plugin)
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
    if name == "wasmplugin-gateway.yaml":
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
