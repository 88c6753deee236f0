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

Environment: SOAK_SECONDS (default 180), SOAK_USERS (10000), SOAK_CONNS (8).
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
from harness import Envoy, LiveRamp, LoadGen, ramp_cycle  # noqa: E402

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
        print("soak: OK")
    else:
        print(f"soak: FAILED (Envoy's log and configs kept in {workdir})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
