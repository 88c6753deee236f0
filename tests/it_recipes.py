"""Every YAML document in istio/ (with its subdirectories) and envoy-gateway/ validates against
its CRD (tests/crds.py: ../shared/istio-crds, gateway-api-crds, envoy-gateway-crds; unknown
fields rejected, the CEL rules of crds.CEL_CHECKED); a kind with no CRD there fails. The files
are read as Kubernetes reads YAML: an unquoted sha256 that YAML turns into a number fails."""

from __future__ import annotations

import copy
import pytest
import yaml

import crds as kube
import wasm_image  # scripts/wasm_image.py: which files are recipes
from harness import REPO

PATCHES = REPO / "istio" / "lane" / "proxy-env"


def recipe_docs() -> list[tuple[str, int, dict]]:
    out = []
    for path in wasm_image.recipe_files(REPO):
        for i, doc in enumerate(kube.load_docs(path)):
            if PATCHES in path.parents and "kind" not in doc and "apiVersion" not in doc:
                continue   # a strategic-merge patch for `kubectl patch`, not a resource
            out.append((str(path.relative_to(REPO)), i, doc))
    return out


DOCS = recipe_docs()


@pytest.fixture(scope="module")
def crds():
    return kube.load_crds()


@pytest.mark.parametrize("name,index,doc", DOCS, ids=[f"{f}#{i}" for f, i, _ in DOCS])
def it_recipe_validates_against_its_crd(crds, name, index, doc):
    why = kube.skip_reason(doc, crds)
    if why:
        pytest.skip(why)
    assert kube.validate(doc, crds) == [], f"{name} document {index}"


def it_the_recipes_cover_the_apis_operators_run():
    kinds = {}
    for f, _, d in DOCS:
        kinds.setdefault(d.get("kind"), []).append(f)
    for kind in ("WasmPlugin", "TrafficExtension", "VirtualService", "HTTPRoute", "Gateway",
                 "EnvoyExtensionPolicy", "EnvoyPatchPolicy"):
        assert kind in kinds, kind
    te = [d for _, _, d in DOCS if d.get("kind") == "TrafficExtension"]
    assert any("targetRefs" in d["spec"] for d in te), "an ambient waypoint by targetRefs"
    assert any(m.get("mode") == "CLIENT" for d in te for m in d["spec"].get("match", []))
    codes = {w["code"]["type"] for _, _, d in DOCS if d.get("kind") == "EnvoyExtensionPolicy"
             for w in d["spec"]["wasm"]}
    assert codes == {"Image", "HTTP"}
    for _, _, d in DOCS:
        if d.get("kind") == "EnvoyExtensionPolicy":
            assert all(w.get("failOpen") is False for w in d["spec"]["wasm"])


def _doc(kind: str) -> dict:
    return copy.deepcopy(next(d for _, _, d in DOCS if d.get("kind") == kind))


def it_a_sha256_that_yaml_reads_as_a_number_fails(crds):
    for kind in ("TrafficExtension", "WasmPlugin", "EnvoyExtensionPolicy"):
        why = kube.skip_reason(_doc(kind), crds)
        if why:
            pytest.skip(why)
        for digits in ("1" * 64, "12" + "e" + "3" * 61):
            raw = yaml.safe_dump(_doc(kind), sort_keys=False)
            old = next(ln for ln in raw.splitlines() if "sha256:" in ln)
            value = old.split("sha256:", 1)[1].strip()
            errors = kube.validate(kube.loads(raw.replace(value, digits, 1)), crds)
            assert any("sha256" in e for e in errors), (kind, digits, errors)


BROKEN = {
    "te wasm and lua": ("TrafficExtension", lambda d: d["spec"].update(lua={"inlineCode": "x"}),
                        "exactly one of wasm or lua"),
    "te unknown wasm field": ("TrafficExtension",
                              lambda d: d["spec"]["wasm"].update(failPolicy="x"), "failPolicy"),
    "route service without port": ("HTTPRoute",
                                   lambda d: d["spec"]["rules"][0]["backendRefs"][0].pop("port"),
                                   "Must have port"),
    "route relative path": ("HTTPRoute", lambda d: d["spec"]["rules"][0]["matches"][0].update(
        path={"type": "PathPrefix", "value": "v1"}), "start with '/'"),
    "route filters unchecked": ("HTTPRoute", lambda d: d["spec"]["rules"][0].update(
        filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": {}}]), "not check"),
    "gateway duplicate listener": ("Gateway", lambda d: d["spec"]["listeners"].append(
        copy.deepcopy(d["spec"]["listeners"][0])), "unique"),
    "eep both targets": ("EnvoyExtensionPolicy", lambda d: d["spec"].update(
        targetRef=d["spec"]["targetRefs"][0]), "either targetRef or targetRefs"),
    "eep image without image": ("EnvoyExtensionPolicy",
                                lambda d: d["spec"]["wasm"][0]["code"].update(
                                    type={"HTTP": "Image", "Image": "HTTP"}[
                                        d["spec"]["wasm"][0]["code"]["type"]]),
                                "If type is"),
    "eep bad target kind": ("EnvoyExtensionPolicy",
                            lambda d: d["spec"]["targetRefs"][0].update(kind="Service"),
                            "targetRef.kind"),
    "epp bad op": ("EnvoyPatchPolicy", lambda d: d["spec"]["jsonPatches"][0]["operation"].update(
        op="merge"), "merge"),
    "no crd for the kind": ("Gateway", lambda d: d.update(kind="Service", apiVersion="v1"),
                            "no CRD"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def it_crd_validation_rejects_broken_recipes(crds, case):
    kind, breaks, needle = BROKEN[case]
    doc = _doc(kind)
    why = kube.skip_reason(doc, crds)
    if why:
        pytest.skip(why)
    breaks(doc)
    errors = kube.validate(doc, crds)
    assert any(needle in e for e in errors), f"{case}: {errors}"
