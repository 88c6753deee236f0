#!/usr/bin/env python3
"""`make soak`: live ramps and rollbacks under sustained load, for minutes (bounded).

Starts one Envoy (2 workers) with graysplit fed through ECDS from a file (Istio's way), keeps
steady keep-alive traffic for 10 000 users on it, and repeats the release cycle
  1% -> 10% -> a broken push (refused) -> 50% -> 100% -> 0% (rollback) -> 50% -> kill switch
until SOAK_SECONDS (default 180) have passed, finishing the cycle it is in.

Prints: requests, failed requests (non-200, unrouted, connection errors: must be 0), wrong
answers (a version other than the one the serving config gives the user), users moved
gray -> stable on a ramp up, per-step visibility in ms (rename of the ECDS file -> the last
connection's first response under the new config; min/median/max per step), Envoy's RSS and
wasm VM gauges before and after. Exits 1 if anything failed.

Then a guard phase on an Envoy whose versions are real apps (tests/upstream.py): a guarded 50%
split under the same kind of load, whose gray app starts answering 503 SOAK_TRIPS times (default
5); each time the guard must trip and every connection (so both workers) end up on stable, and
the next `attempt` re-arms it once the app is fixed. Prints each trip's latency (from the
response that crossed the limit, as the client saw it, to the last connection's first request
routed to stable; median and max) and the failures that were not the gray app's own 503s (must
be 0).

Environment: SOAK_SECONDS (default 180), SOAK_USERS (10000), SOAK_CONNS (8), SOAK_TRIPS (5).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import harness  # noqa: E402
from harness import Envoy, LiveRamp, LoadGen, Traffic, ramp_cycle  # noqa: E402
from upstream import Apps  # noqa: E402

UP_STEPS = {"10%": "1%", "50%": "10%", "100%": "50%", "50% again": "0% rollback"}
WASM_GAUGES = ("wasm.envoy.wasm.runtime.v8.active", "wasm.envoy.wasm.runtime.v8.created",
               "wasm.wasm_vm_count")


def figures(envoy: Envoy) -> dict[str, int]:
    out = {"rss_kb": harness.process_rss_kb(envoy.pid())}
    stats = envoy.stats(r"^wasm\.")
    for g in WASM_GAUGES:
        out[g] = stats.get(g, -1)
    return out


def fmt_figures(f: dict[str, int]) -> str:
    return (f"RSS {f['rss_kb'] / 1024:.1f} MiB, wasm VMs active "
            f"{f['wasm.envoy.wasm.runtime.v8.active']} (created "
            f"{f['wasm.envoy.wasm.runtime.v8.created']}, wasm_vm_count {f['wasm.wasm_vm_count']})")


GUARD = {"max_error_percent": 10, "min_requests": 50, "window_s": 10}


def guarded(attempt: int) -> dict:
    return harness.plugin_config([{"name": "ramp", "salt": "soak-guard", "split": [
        {"version": "v2", "percent": 50}], "guard": {**GUARD, "attempt": attempt}}])


def guard_phase(trips: int, users: list[str], conns: int) -> tuple[list[float], list[str], int]:
    """Trips the guard `trips` times under load; returns each trip's latency (s), the failures
    that were not the gray app's own 503s, and the requests sent."""
    apps = Apps(["v1", "v2"])
    workdir = Path(tempfile.mkdtemp(prefix="graysplit-soak-guard-"))
    ecds = workdir / "ecds.yaml"
    harness.write_ecds(ecds, guarded(1))
    doc = harness.bootstrap(None, access_log=Path("/dev/null"), ecds_path=ecds, upstreams=apps.ports)
    envoy = Envoy(workdir, doc, concurrency=2, ecds_path=ecds)
    latencies: list[float] = []
    failures: list[str] = []
    requests = 0
    gray = {u for u in users if harness.bucket("soak-guard", u) < 5000}
    envoy.start()
    try:
        envoy.wait_ready()
        with Traffic(envoy, users, conns=conns, max_seconds=3600) as load:
            for attempt in range(1, trips + 1):
                if attempt > 1:
                    apps["v2"].status = 200
                    harness.write_ecds(ecds, guarded(attempt))
                    harness.wait_until(lambda: not harness.tripped(envoy, "v2"), 15, f"attempt {attempt} to re-arm")
                t = time.time()
                load.wait_for(200, f"healthy gray traffic (attempt {attempt})",
                              where=lambda s: s.sent > t + 0.5 and s.version == "v2" and s.status == 200)
                apps["v2"].status = 503
                t_fail = time.time()
                harness.wait_until(lambda: harness.tripped(envoy, "v2"), 15, f"trip {attempt}")
                t_trip = time.time()
                load.wait_for(20, "traffic after the trip", where=lambda s: s.sent > t_trip + 2)
                window = [s for s in load.snapshot() if s.sent > t_fail - GUARD["window_s"]]
                t_cross = harness.crossing(window, GUARD)
                lat = harness.switch_latencies([s for s in window if s.sent > t_fail], t_cross)
                latencies.append(max(lat))
                late_gray = [s for s in load.snapshot() if s.sent > t_trip + 2 and s.version == "v2"]
                if late_gray:
                    failures.append(f"trip {attempt}: {len(late_gray)} requests still on v2 2 s after the trip")
                print(f"  trip {attempt}: every connection on stable {max(lat):.2f} s after the crossing", flush=True)
        samples = load.snapshot()
        requests = len(samples)
        failures += [f"{s.status} from {s.version} for {s.user}" for s in samples
                     if s.status != 200 and not (s.status == 503 and s.version == "v2")][:20]
        failures += load.errors[:20]
        if not any(s.user in gray for s in samples):
            failures.append("no gray user was asked for")
    except (AssertionError, OSError, RuntimeError) as exc:
        failures.append(str(exc))
        print(envoy.log()[-3000:])
    finally:
        envoy.stop()
        apps.close()
        if not failures:
            shutil.rmtree(workdir, ignore_errors=True)
    return latencies, failures, requests


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "180"))
    users = [f"soak-user-{i}" for i in range(int(os.environ.get("SOAK_USERS", "10000")))]
    conns = int(os.environ.get("SOAK_CONNS", "8"))
    if not harness.WASM.exists():
        print(f"soak: {harness.WASM} is missing: run `make build`", file=sys.stderr)
        return 2
    cycle = ramp_cycle("v1", "v2")
    workdir = Path(tempfile.mkdtemp(prefix="graysplit-soak-"))
    ecds = workdir / "ecds.yaml"
    harness.write_ecds(ecds, harness.marked(cycle[0][1], 1))
    doc = harness.bootstrap(None, access_log=Path("/dev/null"), ecds_path=ecds,
                            versions=["v1", "v2"])
    envoy = Envoy(workdir, doc, concurrency=2, ecds_path=ecds)
    problems: list[str] = []
    moved_back = 0
    load: LoadGen | None = None
    ramp: LiveRamp | None = None
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    started = time.monotonic()
    envoy.start()
    try:
        envoy.wait_ready()
        load = LoadGen(envoy, users, conns=conns, max_requests=50_000_000,
                       max_seconds=seconds + 300, versions=["v1", "v2"])
        ramp = LiveRamp(envoy, load)
        ramp.initial(cycle[0][1])
        hold = -(-len(users) // len(load.conns))
        print(f"soak: {seconds:.0f} s, {len(users)} users, {len(load.conns)} connections, "
              f"{envoy.concurrency} workers; envoy log {envoy.log_path}", flush=True)
        with load:
            ramp.wait_for(lambda: all(bg.get(1, 0) >= hold for bg in load.by_gen),
                       "the first config on every connection")
            before = figures(envoy)
            print(f"before: {fmt_figures(before)}", flush=True)
            last_gen = {cycle[0][0]: 1}
            cycles = 0
            while True:
                steps = cycle[1:] if cycles == 0 else cycle
                for label, config, bad in steps:
                    step = ramp.push(label, config, hold, bad=bad)
                    if not bad:
                        prev = UP_STEPS.get(label)
                        with load.lock:
                            if prev in last_gen:
                                a = load.observed.get(last_gen[prev], {})
                                b = load.observed.get(step.gen, {})
                                back = [u for u, v in a.items() if v == "v2" and b.get(u) == "v1"]
                                moved_back += len(back)
                            last_gen[label] = step.gen
                            keep = set(last_gen.values())
                            for g in [g for g in load.observed if g not in keep]:
                                del load.observed[g]
                            for g in [g for g in load.expected if g < step.gen - 1]:
                                del load.expected[g]
                cycles += 1
                elapsed = time.monotonic() - started
                print(f"  cycle {cycles} done at {elapsed:.0f} s: {load.requests} requests, "
                      f"{len(load.failures)} failed", flush=True)
                if elapsed >= seconds:
                    break
            after = figures(envoy)
    except (AssertionError, OSError, RuntimeError) as exc:
        problems.append(str(exc))
    finally:
        envoy.stop()

    elapsed = time.monotonic() - started
    if load is None:
        print("soak: FAILED before the load started:", *problems, sep="\n  ")
        print(envoy.log()[-5000:])
        return 1
    print(f"\nsoak: {elapsed:.0f} s, {load.requests} requests "
          f"({load.requests / max(elapsed, 1e-9):.0f}/s), {len(load.failures)} failed, "
          f"{len(load.wrong)} wrong versions, {moved_back} users moved gray -> stable on a ramp up")
    by_label: dict[str, list[float]] = {}
    for s in ramp.steps if ramp else []:
        by_label.setdefault(s.label, []).append(s.visible_ms if s.accepted else s.rejected_ms)
    print("step visibility, ms (rename -> every connection serves it; bad push: -> rejected):")
    for label, _, _ in cycle:
        ms = by_label.get(label)
        if ms:
            print(f"  {label:<12} n={len(ms):<3} min {min(ms):7.1f}  median "
                  f"{statistics.median(ms):7.1f}  max {max(ms):7.1f}")
    if before:
        print(f"before: {fmt_figures(before)}")
    if after:
        print(f"after:  {fmt_figures(after)}")
        print(f"RSS growth: {(after['rss_kb'] - before['rss_kb']) / 1024:+.1f} MiB")
    for p in problems:
        print(f"PROBLEM: {p}")
    for f in load.failures[:10]:
        print(f"FAILED: {f}")
    for w in load.wrong[:10]:
        print(f"WRONG: {w}")
    ok = not problems and not load.failures and not load.wrong and moved_back == 0
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"soak: ramps FAILED (Envoy's log and configs kept in {workdir})")

    trips = int(os.environ.get("SOAK_TRIPS", "5"))
    print(f"\nguard phase: {trips} trips of a guarded 50% split, {len(users)} users, {conns} connections",
          flush=True)
    latencies, guard_failures, guard_requests = guard_phase(trips, users, conns)
    if latencies:
        print(f"guard phase: {guard_requests} requests, {len(guard_failures)} failures besides the gray "
              f"app's own 503s; trip latency (crossing -> every connection on stable) median "
              f"{statistics.median(latencies):.2f} s, max {max(latencies):.2f} s over {len(latencies)} trips")
    for f in guard_failures:
        print(f"GUARD PROBLEM: {f}")
    ok = ok and not guard_failures and len(latencies) == trips
    print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
