"""Every Envoy config of the project lets graysplit hold a request's headers while it reads a
JSON body: `allow_on_headers_stop_iteration: true` in every graysplit Wasm filter config,
inline or delivered by ECDS (DESIGN "v2 corrections"). Offline: no Envoy is started (the
Istio EnvoyFilter's flag is proven in a real Envoy by tests/it_istio.py, the others by the
body tests that run on these configs).

What is walked:
- every Envoy bootstrap in envoy/*.yaml, its placeholders filled in with stand-ins
  (envoy/bench.yaml once per scenario of scripts/bench.py, with that scenario's filters;
  envoy/test-bootstrap.yaml also as tests/harness.py fills it, inline and switched to ECDS);
- in each, every Wasm HTTP filter config (a typed_config, a TypedStruct, an ECDS
  default_config), and every filter whose config comes by ECDS, with the documents that
  deliver it: scripts/run.py's ecds_document (envoy/demo.yaml, and the tests' ECDS), and for
  envoy/istio-ecds-bootstrap.yaml what istiod sends each WasmPlugin of istio/ once istio/'s
  EnvoyFilters are applied (tests/it_istio.py's model of istiod 1.30 and 1.29).
An ECDS filter whose documents this file does not know fails the walk: a new config cannot
forget the flag by moving it out of sight.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Callable, Iterator

import yaml

import harness
import run  # scripts/run.py (harness puts scripts/ on the path)

ENVOY_DIR = harness.REPO / "envoy"
WASM_TYPE = harness.WASM_TYPE_URL
TYPED_STRUCTS = ("type.googleapis.com/udpa.type.v1.TypedStruct",
                 "type.googleapis.com/xds.type.v3.TypedStruct")
FLAG = "allow_on_headers_stop_iteration"
# The files in envoy/ that are no Envoy bootstrap.
NOT_BOOTSTRAPS = {"docker-compose.yaml"}

EcdsSource = Callable[[], list[tuple[str, list[dict]]]]


# --------------------------------------------------------------------------- ECDS documents

def run_ecds() -> list[tuple[str, list[dict]]]:
    """scripts/run.py's ECDS document (`make run`, `make run --push`, demo.py, and every test
    that delivers its config by ECDS through harness.write_ecds)."""
    doc = json.loads(run.ecds_document(run.DEMO_CONFIG.read_text(), "1"))
    return [("scripts/run.py ecds_document", doc["resources"])]


def istio_ecds() -> list[tuple[str, list[dict]]]:
    """What istiod sends each WasmPlugin and TrafficExtension of istio/ with istio/'s
    EnvoyFilters applied."""
    import it_istio

    envoyfilters = [ef for _, ef in it_istio.ENVOYFILTERS]
    return [(f"istio/{name} with istio/'s EnvoyFilters, istiod {naming}",
             it_istio.delivered(plugin, envoyfilters, naming)[1])
            for name, plugin in it_istio.EXTENSIONS for naming in it_istio.namings(plugin)]


# --------------------------------------------------------------------------- the configs

def _stand_in(name: str) -> str:
    return "1" if name.endswith("PORT") else f"placeholder-{name.lower()}"


def bootstraps() -> Iterator[tuple[str, dict, EcdsSource | None]]:
    """(label, bootstrap, where its ECDS configs come from) for every Envoy config."""
    import bench  # scripts/bench.py

    for path in sorted(ENVOY_DIR.glob("*.yaml")):
        if path.name in NOT_BOOTSTRAPS:
            continue
        if path.name == "bench.yaml":
            for s in bench.scenarios(run.WASM):
                text = run.render_bootstrap({"V1_PORT": 1, "V2_PORT": 2, **s.values}, path)
                yield f"bench.yaml scenario ({s.key})", yaml.safe_load(text), None
            continue
        text = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: _stand_in(m.group(1)), path.read_text())
        source = {"demo.yaml": run_ecds, "istio-ecds-bootstrap.yaml": istio_ecds}.get(path.name)
        yield path.name, yaml.safe_load(text), source
    log = Path("/dev/null")
    yield ("test-bootstrap.yaml as tests/harness.py fills it, inline",
           harness.bootstrap({"stable": "v1"}, access_log=log), None)
    yield ("test-bootstrap.yaml as tests/harness.py fills it, ECDS",
           harness.bootstrap(None, access_log=log, ecds_path=Path("/dev/null/ecds.yaml")), run_ecds)


def wasm_configs(node, where: str = "") -> Iterator[tuple[str, dict]]:
    """(where, PluginConfig) of every Wasm HTTP filter config in `node`."""
    if isinstance(node, dict):
        if node.get("@type") == WASM_TYPE:
            yield where, node.get("config") or {}
        elif node.get("@type") in TYPED_STRUCTS and node.get("type_url") == WASM_TYPE:
            yield where, (node.get("value") or {}).get("config") or {}
        for k, v in node.items():
            yield from wasm_configs(v, f"{where}.{k}" if where else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from wasm_configs(v, f"{where}[{i}]")


def ecds_filters(node, where: str = "") -> Iterator[tuple[str, str]]:
    """(where, name) of every filter whose Wasm config comes by ECDS."""
    if isinstance(node, dict):
        cd = node.get("config_discovery")
        if isinstance(cd, dict) and WASM_TYPE in (cd.get("type_urls") or []):
            yield where, str(node.get("name"))
        for k, v in node.items():
            yield from ecds_filters(v, f"{where}.{k}" if where else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from ecds_filters(v, f"{where}[{i}]")


def problems(label: str, doc: dict, source: EcdsSource | None) -> tuple[list[str], int]:
    """(what is wrong, how many Wasm filters were checked) for one bootstrap."""
    found, checked = [], 0
    for where, cfg in wasm_configs(doc):
        checked += 1
        if cfg.get(FLAG) is not True:
            found.append(f"{label}: {where}: {FLAG} is {cfg.get(FLAG)!r}, not true")
    for where, name in ecds_filters(doc):
        checked += 1
        if source is None:
            found.append(f"{label}: {where}: filter {name} gets its config by ECDS, and this test "
                         "does not know the documents that deliver it (add them to bootstraps())")
            continue
        for what, resources in source():
            wasm = [r for r in resources if (r.get("typed_config") or {}).get("@type") == WASM_TYPE]
            if not wasm:
                found.append(f"{label}: {where}: {what} delivers no Wasm config")
            for r in wasm:
                if r["typed_config"].get("config", {}).get(FLAG) is not True:
                    found.append(f"{label}: {where}: {what}: resource {r.get('name')}: "
                                 f"{FLAG} is not true")
    return found, checked


def it_every_envoy_config_lets_graysplit_hold_headers_for_the_body():
    """Every graysplit Wasm filter config in every Envoy config of envoy/ (and as the scripts and
    the test harness render them), inline or by ECDS, sets allow_on_headers_stop_iteration:
    true; and every bootstrap file in envoy/ has at least one such filter (the walk saw it)."""
    labels, all_problems = [], []
    per_file: dict[str, int] = {}
    for label, doc, source in bootstraps():
        is_bootstrap = isinstance(doc, dict) and bool({"static_resources", "dynamic_resources"}
                                                      & set(doc))
        assert is_bootstrap, \
            f"{label}: not an Envoy bootstrap (list it in NOT_BOOTSTRAPS if it is no Envoy config)"
        found, checked = problems(label, doc, source)
        all_problems += found
        labels.append(label)
        per_file[label.split(" ")[0]] = per_file.get(label.split(" ")[0], 0) + checked
    assert all_problems == [], "\n".join(all_problems)
    files = {p.name for p in ENVOY_DIR.glob("*.yaml")} - NOT_BOOTSTRAPS
    assert files <= set(per_file), f"not walked: {sorted(files - set(per_file))}"
    assert all(per_file[f] > 0 for f in files), f"no Wasm filter found in: {per_file}"
    assert any(label.startswith("bench.yaml scenario (k)") for label in labels), labels


def it_the_walk_catches_a_config_without_the_flag():
    """The walk is no rubber stamp: it reports an inline config without the flag (also as a
    TypedStruct, also false), an ECDS document without it, and an ECDS filter whose documents
    it does not know."""
    doc = harness.bootstrap({"stable": "v1"}, access_log=Path("/dev/null"))
    assert problems("t", doc, None) == ([], 1)
    flagless = copy.deepcopy(doc)
    cfg = next(c for _, c in wasm_configs(flagless))
    del cfg[FLAG]
    found, _ = problems("t", flagless, None)
    assert len(found) == 1 and "http_filters[0]" in found[0], found
    cfg[FLAG] = False
    assert len(problems("t", flagless, None)[0]) == 1
    gray = next(f for f in doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"] if f["name"] == harness.FILTER_NAME)
    typed = gray["typed_config"]
    gray["typed_config"] = {"@type": TYPED_STRUCTS[0], "type_url": WASM_TYPE,
                            "value": {"config": {k: v for k, v in typed["config"].items()
                                                 if k != FLAG}}}
    assert len(problems("t", doc, None)[0]) == 1, "a TypedStruct without the flag"

    ecds = harness.bootstrap(None, access_log=Path("/dev/null"), ecds_path=Path("/x/ecds.yaml"))
    assert problems("t", ecds, run_ecds)[0] == []
    assert "does not know" in problems("t", ecds, None)[0][0]
    resources = run_ecds()[0][1]
    del resources[0]["typed_config"]["config"][FLAG]
    found, _ = problems("t", ecds, lambda: [("doc", resources)])
    assert len(found) == 1 and "resource graysplit" in found[0], found


def it_every_script_that_writes_a_wasm_config_sets_the_flag():
    """A script that builds a Wasm filter config in Python (scripts/run.py's ECDS document,
    scripts/bench.py's scenarios) sets the flag next to it; the walk above checks what they
    build, this catches a new script the walk does not render."""
    for path in sorted((harness.REPO / "scripts").glob("*.py")):
        text = path.read_text()
        if "filters.http.wasm.v3.Wasm" in text:
            assert f'"{FLAG}": True' in text, f"{path.name} builds a Wasm config without {FLAG}"
