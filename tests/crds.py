"""Offline validation of Kubernetes manifests against published CRDs, as kubectl with strict
field validation and the API server would do it: the CRD schemas in ../shared/istio-crds
(Istio 1.30.3), ../shared/gateway-api-crds (Gateway API v1.6.1, standard channel) and
../shared/envoy-gateway-crds (Envoy Gateway v1.9.0).

- `load_docs(path)`: a YAML file's documents, resolved the way Kubernetes resolves YAML
  (sigs.k8s.io/yaml over go-yaml): besides PyYAML's YAML 1.1 types, a plain scalar like
  `12e45` or `1e3` is a float there (go-yaml's float pattern needs no dot), so an unquoted
  sha256 of digits and one `e` is a number, not a string, and fails a `type: string` field.
- `load_crds()`: kind -> {group, dir, versions: {name: strict schema}} for every CRD found, with
  the directories that are missing (a document of a kind whose CRD directory is missing is
  skipped with that reason; a kind with no CRD anywhere fails).
- `strict(schema)`: unknown fields rejected (`additionalProperties: false` on every object
  schema with `properties` and no `x-kubernetes-preserve-unknown-fields`).
- `validate(doc, crds)`: apiVersion against the served versions, metadata, the schema, and the
  CEL rules (`x-kubernetes-validations`) a JSON-Schema validator ignores, re-implemented for
  the fields our manifests use (CEL_CHECKED lists them; UNCHECKED_FIELDS names the fields whose
  CEL rules are NOT implemented, and a manifest using one fails rather than passing unchecked).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CRD_DIRS = {
    "istio-crds": "Istio 1.30.3",
    "gateway-api-crds": "Gateway API v1.6.1",
    "envoy-gateway-crds": "Envoy Gateway v1.9.0",
}
META_FIELDS = {"name", "generateName", "namespace", "labels", "annotations", "finalizers",
               "ownerReferences"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------------- YAML as Kubernetes reads it

class KubeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader plus go-yaml's float pattern (resolve.go: yamlStyleFloat,
    `^[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?$`)."""


KubeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.load_all(path.read_text(), Loader=KubeLoader) if d is not None]


def loads(text: str):
    return yaml.load(text, Loader=KubeLoader)


# --------------------------------------------------------------------------- Gateway API

def httproute_matches(route: dict) -> list[tuple[dict, dict]]:
    """(rule, match) of `route` in Gateway API's precedence, for the matches the recipes use
    (header matches only): more header matches first, then rule order, then match order. A rule without
    matches matches every request."""
    ordered = []
    for i, rule in enumerate(route["spec"]["rules"]):
        for j, m in enumerate(rule.get("matches") or [{}]):
            assert set(m) <= {"headers"}, f"rules[{i}].matches[{j}]: extend the model: {set(m)}"
            for h in m.get("headers") or []:
                assert h.get("type", "Exact") == "Exact", "only Exact header matches are modelled"
            ordered.append((-len(m.get("headers") or []), i, j, rule, m))
    ordered.sort(key=lambda x: x[:3])
    return [(rule, m) for *_, rule, m in ordered]



# --------------------------------------------------------------------------- schemas

def strict(schema):
    """A copy of a structural schema that rejects unknown fields. Only schema positions are
    walked (never `default` or `enum` values)."""
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


class Crds(dict):
    """kind -> {group, dir, versions}; `missing`: CRD directories not found, with what they hold."""
    missing: dict[str, str]


def load_crds(dirs: dict[str, str] = CRD_DIRS) -> Crds:
    import jsonschema

    crds = Crds()
    crds.missing = {}
    for d, what in dirs.items():
        path = SHARED / d
        if not path.is_dir():
            crds.missing[d] = what
            continue
        for f in sorted(path.glob("*.yaml")):
            crd = yaml.safe_load(f.read_text())
            versions = {}
            for v in crd["spec"]["versions"]:
                if not v.get("served", True):
                    continue
                schema = strict(v["schema"]["openAPIV3Schema"])
                jsonschema.Draft4Validator.check_schema(schema)
                versions[v["name"]] = schema
            kind = crd["spec"]["names"]["kind"]
            assert kind not in crds, f"{kind}: two CRDs"
            crds[kind] = {"group": crd["spec"]["group"], "dir": d, "versions": versions}
    return crds


# Which CRD directory each kind our manifests use lives in: a doc of one of these kinds whose
# directory is missing is skipped with the reason; any other unknown kind fails.
KIND_DIRS = {
    **{k: "istio-crds" for k in ("WasmPlugin", "TrafficExtension", "EnvoyFilter",
                                 "VirtualService", "DestinationRule", "RequestAuthentication",
                                 "PeerAuthentication", "AuthorizationPolicy", "Telemetry")},
    **{k: "gateway-api-crds" for k in ("Gateway", "HTTPRoute", "GatewayClass",
                                       "ReferenceGrant")},
    **{k: "envoy-gateway-crds" for k in ("EnvoyExtensionPolicy", "EnvoyPatchPolicy")},
}


def skip_reason(doc: dict, crds: Crds) -> str | None:
    """Why `doc` cannot be checked here (its CRD directory is missing), or None."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    d = KIND_DIRS.get(kind)
    if kind not in crds and d in crds.missing:
        return (f"{kind}: the {crds.missing[d]} CRDs are not at {SHARED / d} (the shared "
                "checkout next to the repository); its validation cannot run")
    return None


def validate(doc, crds: Crds) -> list[str]:
    """Everything wrong with a manifest, as messages (empty: valid)."""
    import jsonschema

    if not isinstance(doc, dict):
        return ["not a mapping"]
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind not in crds:
        return [f"kind {kind!r}: no CRD for it in {', '.join(CRD_DIRS)} (only {sorted(crds)})"]
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
    try:
        return errors + cel_errors(doc)
    except (AttributeError, TypeError, KeyError):
        if errors:      # the schema errors already say what is wrong
            return errors
        raise


# --------------------------------------------------------------------------- CEL rules

def _ns_ok(ref: dict) -> bool:
    return ref.get("namespace") in (None, "")


def _labels_cel(labels: dict, where: str) -> list[str]:
    errors = []
    for k, v in (labels or {}).items():
        if not k:
            errors.append(f"{where}: key must not be empty")
        if "*" in k:
            errors.append(f"{where}: wildcard not allowed in label key match")
        if isinstance(v, str) and "*" in v:
            errors.append(f"{where}: wildcard not allowed in label value match")
    return errors


def _url_cel(url, where: str) -> list[str]:
    if isinstance(url, str):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("", "http", "https", "oci", "file"):
            return [f"{where}: url must have schema one of [http, https, file, oci]"]
    return []


def _env_cel(env, where: str) -> list[str]:
    return [f"{where}[{i}]: value may only be set when valueFrom is INLINE"
            for i, e in enumerate(env or [])
            if isinstance(e, dict) and e.get("valueFrom") == "HOST" and "value" in e]


def _same_ns_refs(spec: dict) -> list[str]:
    return [f"spec.targetRefs[{i}].namespace: cross namespace referencing is not currently "
            "supported" for i, ref in enumerate(spec.get("targetRefs") or [])
            if isinstance(ref, dict) and not _ns_ok(ref)]


def _istio_target(spec: dict) -> list[str]:
    errors = []
    if sum(k in spec for k in ("selector", "targetRef", "targetRefs")) > 1:
        errors.append("spec: only one of targetRefs or selector can be set")
    return errors + _same_ns_refs(spec)


def wasmplugin_cel(doc: dict) -> list[str]:
    spec = doc.get("spec") or {}
    return (_istio_target(spec) + _url_cel(spec.get("url"), "spec.url")
            + _labels_cel((spec.get("selector") or {}).get("matchLabels"),
                          "spec.selector.matchLabels")
            + _env_cel((spec.get("vmConfig") or {}).get("env"), "spec.vmConfig.env"))


def trafficextension_cel(doc: dict) -> list[str]:
    spec = doc.get("spec") or {}
    errors = _istio_target(spec)
    if ("wasm" in spec) == ("lua" in spec):
        errors.append("spec: exactly one of wasm or lua must be set")
    wasm = spec.get("wasm") or {}
    return (errors + _url_cel(wasm.get("url"), "spec.wasm.url")
            + _labels_cel((spec.get("selector") or {}).get("matchLabels"),
                          "spec.selector.matchLabels")
            + _env_cel((wasm.get("vmConfig") or {}).get("env"), "spec.wasm.vmConfig.env"))


def envoyfilter_cel(doc: dict) -> list[str]:
    errors = []
    spec = doc.get("spec") or {}
    if "workloadSelector" in spec and "targetRefs" in spec:
        errors.append("spec: only one of targetRefs or workloadSelector can be set")
    for k, v in ((spec.get("workloadSelector") or {}).get("labels") or {}).items():
        if isinstance(v, str) and "*" in v:
            errors.append(f"spec.workloadSelector.labels.{k}: wildcard is not supported in "
                          "selector")
    errors += _same_ns_refs(spec)
    for i, cp in enumerate(spec.get("configPatches") or []):
        match = (cp or {}).get("match") or {}
        if (match.get("context") == "WAYPOINT") != ("waypoint" in match):
            errors.append(f"spec.configPatches[{i}].match: only support waypointMatch when "
                          "context is WAYPOINT")
        port = (match.get("waypoint") or {}).get("portNumber")
        if port is not None and not 0 < port <= 65535:
            errors.append(f"spec.configPatches[{i}].match.waypoint.portNumber: port must be "
                          "between 1-65535")
    return errors


def _same_parent(a: dict, b: dict) -> bool:
    return (a.get("group", "gateway.networking.k8s.io") == b.get("group", "gateway.networking.k8s.io")
            and a.get("kind", "Gateway") == b.get("kind", "Gateway")
            and a.get("name") == b.get("name")
            and (a.get("namespace") or "") == (b.get("namespace") or ""))


PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")


def httproute_cel(doc: dict) -> list[str]:
    errors = []
    spec = doc.get("spec") or {}
    refs = spec.get("parentRefs") or []
    for i, a in enumerate(refs):
        same = [b for b in refs if _same_parent(a, b)]
        if len(same) > 1:
            if any(not b.get("sectionName") for b in same):
                errors.append("spec.parentRefs: sectionName must be specified when parentRefs "
                              "includes 2 or more references to the same parent")
            if sum(b.get("sectionName") == a.get("sectionName") for b in same) != 1:
                errors.append("spec.parentRefs: sectionName must be unique when parentRefs "
                              "includes 2 or more references to the same parent")
    rules = spec.get("rules") or []
    if sum(len(r.get("matches") or []) for r in rules) >= 128:
        errors.append("spec.rules: the total number of matches across all rules in a route "
                      "must be less than 128")
    for i, r in enumerate(rules):
        for j, b in enumerate(r.get("backendRefs") or []):
            if b.get("group", "") == "" and b.get("kind", "Service") == "Service" and "port" not in b:
                errors.append(f"spec.rules[{i}].backendRefs[{j}]: Must have port for Service "
                              "reference")
        for j, m in enumerate(r.get("matches") or []):
            p = m.get("path")
            if p is None:
                continue
            t, v = p.get("type", "PathPrefix"), p.get("value", "/")
            where = f"spec.rules[{i}].matches[{j}].path"
            if t not in ("Exact", "PathPrefix", "RegularExpression"):
                errors.append(f"{where}: type must be one of ['Exact', 'PathPrefix', "
                              "'RegularExpression']")
            if t in ("Exact", "PathPrefix"):
                if not v.startswith("/"):
                    errors.append(f"{where}: value must be an absolute path and start with '/'")
                for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
                    if bad in v:
                        errors.append(f"{where}: must not contain {bad!r}")
                if v.endswith("/..") or v.endswith("/."):
                    errors.append(f"{where}: must not end with '/..' or '/.'")
                if not PATH_CHARS.match(v):
                    errors.append(f"{where}: must only contain valid characters")
    return errors


def gateway_cel(doc: dict) -> list[str]:
    errors = []
    listeners = (doc.get("spec") or {}).get("listeners") or []
    names = [ls.get("name") for ls in listeners]
    if len(names) != len(set(names)):
        errors.append("spec.listeners: Listener name must be unique within the Gateway")
    combos = [(ls.get("port"), ls.get("protocol"), ls.get("hostname")) for ls in listeners]
    if len(combos) != len(set(combos)):
        errors.append("spec.listeners: Combination of port, protocol and hostname must be unique "
                      "for each listener")
    for ls in listeners:
        if ls.get("protocol") in ("HTTP", "TCP", "UDP") and "tls" in ls:
            errors.append("spec.listeners: tls must not be specified for protocols "
                          "['HTTP', 'TCP', 'UDP']")
        if ls.get("protocol") in ("TCP", "UDP") and ls.get("hostname"):
            errors.append("spec.listeners: hostname must not be specified for protocols "
                          "['TCP', 'UDP']")
    return errors


EEP_KINDS = ("Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute", "TLSRoute")


def envoyextensionpolicy_cel(doc: dict) -> list[str]:
    errors = []
    spec = doc.get("spec") or {}
    has_ref, has_refs = "targetRef" in spec, "targetRefs" in spec
    if not ((has_ref != has_refs) or (spec.get("targetSelectors") or [])):
        errors.append("spec: either targetRef or targetRefs must be used")
    refs = ([spec["targetRef"]] if has_ref else []) + list(spec.get("targetRefs") or [])
    for ref in refs:
        if ref.get("group") != "gateway.networking.k8s.io":
            errors.append("spec: this policy can only have a targetRef.group of "
                          "gateway.networking.k8s.io")
        if ref.get("kind") not in EEP_KINDS:
            errors.append("spec: this policy can only have a targetRef.kind of "
                          "Gateway/ListenerSet/HTTPRoute/GRPCRoute/TCPRoute/UDPRoute/TLSRoute")
    if "mergeType" in spec:
        errors.append("spec.mergeType: not checked here (its CEL rules are not modelled)")
    for i, w in enumerate(spec.get("wasm") or []):
        code = w.get("code") or {}
        t = code.get("type")
        if (t == "HTTP") != ("http" in code):
            errors.append(f"spec.wasm[{i}].code: If type is HTTP, http field needs to be set.")
        if (t == "Image") != ("image" in code):
            errors.append(f"spec.wasm[{i}].code: If type is Image, image field needs to be set.")
        secret = (code.get("image") or {}).get("pullSecretRef")
        if secret is not None and secret.get("kind", "Secret") != "Secret":
            errors.append(f"spec.wasm[{i}].code.image.pullSecretRef: only support Secret kind.")
    return errors


CEL = {
    "WasmPlugin": wasmplugin_cel,
    "TrafficExtension": trafficextension_cel,
    "EnvoyFilter": envoyfilter_cel,
    "HTTPRoute": httproute_cel,
    "Gateway": gateway_cel,
    "EnvoyExtensionPolicy": envoyextensionpolicy_cel,
}

# The CEL rules checked above, per kind (for the README and the issue note).
CEL_CHECKED = {
    "WasmPlugin": "only one of selector/targetRef/targetRefs; url scheme; no wildcard or empty "
                  "label keys, no wildcard values; targetRefs in the same namespace; vmConfig.env "
                  "value only with valueFrom INLINE",
    "TrafficExtension": "the same, on spec.wasm; exactly one of wasm or lua",
    "EnvoyFilter": "only one of workloadSelector/targetRefs; no wildcard selector values; "
                   "targetRefs in the same namespace; waypoint match only with context WAYPOINT; "
                   "waypoint portNumber 1-65535",
    "HTTPRoute": "parentRefs to the same parent need unique sectionNames; fewer than 128 matches; "
                 "a Service backendRef has a port; the path match rules (type, leading '/', no "
                 "'//', '/./', '/../', '%2f', '#', no trailing '/.' or '/..', valid characters)",
    "Gateway": "listener names unique; port/protocol/hostname unique; no tls on HTTP/TCP/UDP; no "
               "hostname on TCP/UDP",
    "EnvoyExtensionPolicy": "exactly one of targetRef/targetRefs (or targetSelectors); target "
                            "group gateway.networking.k8s.io and kind in the allowed list; code "
                            "type matches http/image; pullSecretRef kind Secret",
}

# Fields that carry CEL rules this module does NOT implement: a manifest using one fails here
# ("not checked") instead of passing as if it were.
UNCHECKED_FIELDS = {
    "HTTPRoute": ("filters", "timeouts"),
    "Gateway": ("addresses", "infrastructure"),
}


def _uses(node, field: str) -> bool:
    if isinstance(node, dict):
        return field in node or any(_uses(v, field) for v in node.values())
    if isinstance(node, list):
        return any(_uses(v, field) for v in node)
    return False


def cel_errors(doc: dict) -> list[str]:
    errors = list(CEL.get(doc.get("kind"), lambda d: [])(doc))
    for field in UNCHECKED_FIELDS.get(doc.get("kind"), ()):
        if _uses(doc.get("spec"), field):
            errors.append(f"spec: uses {field!r}, whose CEL rules tests/crds.py does not check; "
                          "implement them before using it")
    return errors
