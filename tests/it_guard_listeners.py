"""Guards of different listeners never mix (DESIGN.md "v2 corrections"): one Envoy, two
listeners, each with its own graysplit filter config under the same plugin name (`graysplit`)
and the same rule name (`ramp`), with different guards. Each listener routes to its own gray
app (tests/upstream.py): listener 1's answers 503, listener 2's is healthy.

The guard's shared-data key is the plugin name, the rule name and the guard's fingerprint, so
each listener keeps its own window and trip. v2 keyed it by plugin and rule alone, and a guard
that found the other's value there threw its own counts away.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import time
from pathlib import Path

import pytest

import harness
from harness import Conn, Envoy, bucket, plugin_config, wait_until
from upstream import Apps

SALT = "listeners"
GUARD_1 = {"max_error_percent": 10, "min_requests": 10, "window_s": 30}
GUARD_2 = {"max_error_percent": 50, "min_requests": 20, "window_s": 30}
USERS = [f"user-{i}" for i in range(200)]
GRAY = [u for u in USERS if bucket(SALT, u) < 5000]
STABLE = [u for u in USERS if bucket(SALT, u) >= 5000]
SECOND = "app_second"


def guarded(guard: dict) -> dict:
    return plugin_config([{"name": "ramp", "salt": SALT, "guard": guard,
                           "split": [{"version": "v2", "percent": 50}]}])


def two_listeners(workdir: Path, apps: Apps) -> dict:
    """The harness's bootstrap for listener 1 (v1 and v2 on apps `v1` and `v2-failing`), plus a
    copy of its listener on its own port with its own graysplit config (GUARD_2) and v2 route to app `v2-healthy` (stable shares the `v1` app's cluster)."""
    doc = harness.bootstrap(guarded(GUARD_1), access_log=workdir / "access.log",
                            upstreams={"v1": apps["v1"].port, "v2": apps["v2-failing"].port})
    first = doc["static_resources"]["listeners"][0]
    second = copy.deepcopy(first)
    second["name"] = SECOND
    # Both bind 127.0.0.1:0, which would be both listeners' stat name: name them apart.
    first["stat_prefix"], second["stat_prefix"] = "first", "second"
    second["address"]["socket_address"]["port_value"] = 0
    hcm = second["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "app2"
    # (/dev/null: with ENVOY_RUNTIME=container only the first listener's log is mounted writable)
    hcm["access_log"][0]["typed_config"]["path"] = "/dev/null"
    wasm = next(f for f in hcm["http_filters"] if f["name"] == harness.FILTER_NAME)
    wasm["typed_config"]["config"]["configuration"]["value"] = json.dumps(guarded(GUARD_2))
    assert wasm["typed_config"]["config"]["name"] == "graysplit", "the same plugin name on both"
    vhost = next(v for v in hcm["route_config"]["virtual_hosts"] if v["name"] == "app")
    v2 = next(r for r in vhost["routes"]
              if r["match"].get("headers", [{}])[0].get("string_match", {}).get("exact") == "v2")
    v2["route"]["cluster"] = "second-v2"
    doc["static_resources"]["clusters"].append({
        "name": "second-v2", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "second-v2", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": apps["v2-healthy"].port}}}}]}]}})
    doc["static_resources"]["listeners"].append(second)
    return doc


def listener_port(envoy: Envoy, name: str) -> int:
    _, body = envoy.admin_get("/listeners?format=json")
    for ls in json.loads(body)["listener_statuses"]:
        if ls["name"] == name:
            return ls["local_address"]["socket_address"]["port_value"]
    raise AssertionError(f"no listener {name} in {body}")


class Sent:
    """Every request the test sends, per listener, with what answered it: the guard counters
    must add up to exactly these."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, str, int]] = []    # (listener, app version, status)

    def get(self, conn: Conn, listener: int, user: str) -> tuple[str, int]:
        r = conn.get("/", [("x-user-id", user)])
        version = r.header("x-app-version")
        assert version in ("v1", "v2"), r     # every answer comes from an app: none was Envoy's
        self.responses.append((listener, version, r.status))
        return version, r.status

    def expected_counters(self) -> dict[str, int]:
        n = collections.Counter((v, "error" if s >= 500 else "ok") for _, v, s in self.responses)
        return {f"{v}.{res}": n[(v, res)] for v in ("v1", "v2") for res in ("ok", "error")}


def guard_counters(envoy: Envoy) -> dict[str, int]:
    return {f"{v}.{res}": harness.graysplit_stat(envoy, "guard_responses_total", v, f".result.{res}")
            for v in ("v1", "v2") for res in ("ok", "error")}


def on_every_worker(envoy: Envoy, port: int, sent: Sent, listener: int, max_conns: int = 16) -> list[Conn]:
    """Connections to listener `listener` (on `port`) until every worker holds one (its
    per-worker downstream_cx_active); each answers one request first (counted)."""
    prefix = {1: "first", 2: "second"}[listener]
    out: list[Conn] = []
    while True:
        c = Conn(port)
        out.append(c)
        sent.get(c, listener, STABLE[len(out) % len(STABLE)])
        per = {k: v for k, v in envoy.stats(
            rf"^listener\.{prefix}\.worker_[0-9]+\.downstream_cx_active$").items()}
        if len(per) == envoy.concurrency and min(per.values()) > 0:
            return out
        if len(out) >= max_conns:
            for c in out:
                c.close()
            raise AssertionError(f"{len(out)} connections to {port} did not reach every worker: {per}")


@pytest.fixture
def apps():
    a = Apps(["v1", "v2-failing", "v2-healthy"])
    a["v2-failing"].version = a["v2-healthy"].version = "v2"   # both answer as v2
    a["v2-failing"].status = 503
    yield a
    a.close()


def it_two_listeners_with_the_same_rule_keep_their_own_guards(tmp_path, apps):
    """Two listeners, plugin `graysplit` and rule `ramp` on both, guards 10 %/10 and 50 %/20.
    Gray traffic on both: listener 1's gray app answers 503, listener 2's 200. Only listener 1's
    guard trips (one trip, one log line with its limit, 10 %): on every worker its gray users
    go to stable, while listener 2's gray users stay on gray. And no count is lost: the guard
    counters (`graysplit_guard_responses_total`, per version and result, summed over both
    listeners) come to exactly the responses the test got, per version and ok/error."""
    workdir = tmp_path / "envoy"
    workdir.mkdir()
    envoy = Envoy(workdir, two_listeners(workdir, apps), concurrency=2).launch()   # its log is
    # printed by conftest when the test fails
    try:
        port1, port2 = envoy.port, listener_port(envoy, SECOND)
        sent = Sent()
        one = on_every_worker(envoy, port1, sent, 1)
        two = on_every_worker(envoy, port2, sent, 2)
        try:
            # Interleaved gray and stable traffic on both listeners, every connection.
            for k in range(20):
                for i, c in enumerate(one):
                    sent.get(c, 1, GRAY[(k * len(one) + i) % len(GRAY)])
                for i, c in enumerate(two):
                    sent.get(c, 2, GRAY[(k * len(two) + i) % len(GRAY)])
                if k % 4 == 0:
                    sent.get(one[0], 1, STABLE[k % len(STABLE)])
                    sent.get(two[0], 2, STABLE[k % len(STABLE)])
            failed = sum(1 for lst, v, s in sent.responses if lst == 1 and v == "v2" and s == 503)
            assert failed >= GUARD_1["min_requests"], "listener 1's gray app failed enough"
            served = sum(1 for lst, v, _ in sent.responses if lst == 2 and v == "v2")
            assert served >= GUARD_2["min_requests"], "listener 2's guard saw enough to judge"

            def gray_to(conns, listener, want) -> bool:
                return all(sent.get(c, listener, u)[0] == want for c in conns for u in GRAY[:5])

            wait_until(lambda: gray_to(one, 1, "v1"), 10,
                       "listener 1's gray users on stable on every worker (its guard tripped)")
            assert gray_to(two, 2, "v2"), "listener 2's gray users stay on gray"
            # A few more rounds on both, after listener 1's trip reached every worker.
            for _ in range(5):
                assert gray_to(one, 1, "v1") and gray_to(two, 2, "v2")
        finally:
            for c in one + two:
                c.close()
        # Listener 2 answered only 200s, listener 1's errors were all gray's.
        assert all(s == 200 for lst, _, s in sent.responses if lst == 2)
        assert all(s == 200 or v == "v2" for lst, v, s in sent.responses if lst == 1)
        want = sent.expected_counters()
        assert want["v2.error"] > 0 and want["v2.ok"] > 0 and want["v1.ok"] > 0
        # The counters move on each VM's flush (500 ms tick): wait until they reach what was
        # sent, then three more ticks that must add nothing.
        try:
            wait_until(lambda: guard_counters(envoy) == want, 10,
                       f"the guard counters to add up to {want}")
        except AssertionError:
            raise AssertionError(f"guard counters {guard_counters(envoy)}, responses sent {want}")
        time.sleep(1.5)
        assert guard_counters(envoy) == want, "counted more than was sent"
        assert harness.graysplit_stat(envoy, "guard_trips_total", "v2") == 1, "one trip, listener 1's"
        lines = re.findall(r"graysplit: guard tripped: .*", envoy.log())
        assert len(lines) == 1 and "limit 10%" in lines[0], lines
    finally:
        envoy.stop()
