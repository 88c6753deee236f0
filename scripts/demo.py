#!/usr/bin/env python3
"""`make demo`: a scripted tour of graysplit against a real Envoy, in a few seconds.

It starts its own Envoy (free ports, plugin config by ECDS from a temporary directory, always
stopped at the end), sends 1000 distinct users through and prints the split, shows the tester
override, ramps the gray version live from 10% to 50% by replacing the ECDS file, waits until
every Envoy worker serves the new config, sends the same users again and checks that nobody went
back from gray to stable. Then the release runs itself: a config whose schedule steps by the
clock (no push) with a guard; the gray app starts failing (a fault filter in front of it, set
through Envoy's runtime), the guard trips, every user is back on stable, and the counters say
so. Exits non-zero when graysplit does not behave as DESIGN.md says.

Standard library only (plus the helpers in scripts/run.py).
"""
from __future__ import annotations

import copy
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (scripts/run.py: rendering, Envoy process, admin helpers, bucketing)

WORKERS = 2            # Envoy --concurrency: the ramp must reach every worker
USERS = [f"user-{i}@example.com" for i in range(1000)]
RAMP_TO = 50

failures: list[str] = []


def check(ok: bool, what: str) -> str:
    if not ok:
        failures.append(what)
    return "ok" if ok else "FAIL"


class Client:
    """One kept-alive HTTP/1.1 connection to the demo listener."""

    def __init__(self, port: int, source: str = "127.0.0.1"):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
        self.conn.connect()

    def get(self, headers: dict[str, str] | None = None) -> tuple[str, http.client.HTTPResponse, str]:
        """(version that served it, response, body). The version is the upstream app's answer."""
        self.conn.request("GET", "/", headers=headers or {})
        resp = self.conn.getresponse()
        body = resp.read().decode(errors="replace")
        m = re.fullmatch(r"hello from (\S+)\n", body)
        served = m.group(1) if m else f"<{resp.status}>"
        if m and resp.getheader("x-graysplit-version") != served:
            failures.append(f"x-graysplit-version {resp.getheader('x-graysplit-version')!r} "
                            f"but {served} answered")
        return served, resp, body

    def close(self) -> None:
        self.conn.close()


def once(port: int, headers: dict[str, str], source: str = "127.0.0.1") -> tuple[str, http.client.HTTPResponse]:
    c = Client(port, source)
    try:
        served, resp, _ = c.get(headers)
        return served, resp
    finally:
        c.close()


def worker_connections(admin: str) -> list[int]:
    prefix = "listener.graysplit.worker_"
    c = run.counters(admin, prefix)
    return [c.get(f"{prefix}{w}.downstream_cx_active", 0) for w in range(WORKERS)]


def send_all(clients: list[Client]) -> dict[str, str]:
    """Each user once, spread over the kept-alive connections (so over every worker)."""
    return {u: clients[i % len(clients)].get({"x-user-id": u})[0] for i, u in enumerate(USERS)}


def print_split(seen: dict[str, str], versions: list[str]) -> None:
    for v in versions + sorted(set(seen.values()) - set(versions)):
        n = sum(1 for s in seen.values() if s == v)
        print(f"   {v:<6} {n:>5}  {100 * n / len(seen):5.1f}%  {'#' * round(40 * n / len(seen))}")


def stat(admin: str, name: str) -> int:
    return run.counters(admin, name).get(name, 0)


def release_runs_itself(admin: str, clients: list[Client], ecds: Path, rule: dict, stable: str,
                        gray: str, salt: str) -> None:
    """6) a schedule steps by the clock, no push; 7) the gray app fails, the guard trips."""
    t0 = time.time() + 0.5
    steps = [(t0 + 2.0, 20), (t0 + 4.0, 60)]
    guard = {"max_error_percent": 10, "min_requests": 50, "window_s": 10}
    scheduled = {**rule, "split": [{"version": gray, "schedule": [
        {"at": run.rfc3339_ms(t), "percent": p} for t, p in steps]}], "guard": guard}
    _, config = run.read_plugin_config()
    config["rules"] = [scheduled if r["name"] == rule["name"] else r for r in config["rules"]]
    print(f"\n6) the release runs itself: push once a schedule (+2 s: 20%, +4 s: 60%) with a guard "
          f"(trip above {guard['max_error_percent']}% errors of at least {guard['min_requests']} "
          f"responses in {guard['window_s']} s)")
    applied = run.push_config(admin, ecds, json.dumps(config), version_info="3")
    print(f"   Envoy {'applied' if applied else 'did NOT apply'} it; "
          f"from now on, no push")
    gauge = f"wasmcustom.graysplit_split_basis_points.rule.{rule['name']}.version.{gray}"
    previous: dict[str, str] = {}
    for at, percent in [(t0, 0)] + steps:
        while time.time() < at + 0.6:   # past the step and the gauge's next tick
            time.sleep(0.05)
        seen = send_all(clients)
        want = {u: gray if run.bucket(salt, u) < percent * 100 else stable for u in USERS}
        wrong = [u for u in USERS if seen[u] != want[u]]
        back = [u for u in USERS if previous.get(u) == gray and seen[u] == stable]
        n = sum(1 for v in seen.values() if v == gray)
        print(f"   t={at - t0:+.0f} s  {gray} {n:>4} of {len(USERS)} users, gauge "
              f"{stat(admin, gauge) / 100:g}%  "
              f"{check(not wrong and not back, f'at {percent}%: {len(wrong)} off the contract, {len(back)} moved back')}")
        previous = seen

    print(f"\n7) the gray app {gray} starts failing: curl -X POST '{admin}/runtime_modify?demo.v2.abort_percent=100'")
    run.http_post(f"{admin}/runtime_modify?demo.v2.abort_percent=100")
    tripped = f"wasmcustom.graysplit_guard_tripped.rule.{rule['name']}.version.{gray}"
    failed_at = time.monotonic()
    errors = sent = 0
    while stat(admin, tripped) == 0 and time.monotonic() < failed_at + 15:
        for c in clients:
            served, resp, _ = c.get({"x-user-id": USERS[sent % len(USERS)]})
            sent += 1
            errors += resp.status == 503
    trip_s = time.monotonic() - failed_at
    print(f"   the guard tripped after {trip_s:.2f} s and {errors} failed requests  "
          f"{check(stat(admin, tripped) == 1, 'the guard did not trip within 15 s')}")
    time.sleep(1.2)   # two ticks: every worker knows
    seen = send_all(clients)
    on_gray = sum(1 for v in seen.values() if v != stable)
    print(f"   the same {len(USERS)} users: {len(USERS) - on_gray} on {stable}, {on_gray} elsewhere  "
          f"{check(on_gray == 0, f'{on_gray} users still off stable after the trip')}")
    run.http_post(f"{admin}/runtime_modify?demo.v2.abort_percent=0")
    print(f"   (the trip holds until a config with another guard, e.g. \"attempt\": 2, is pushed)")
    print(f"\n   curl {admin}/stats/prometheus | grep -E 'graysplit_(guard|split)'")
    _, prom = run.http_get(f"{admin}/stats/prometheus")
    for ln in prom.splitlines():
        if re.match(r"graysplit_(guard_tripped|split_basis_points)\{", ln) or \
                (re.match(r"graysplit_guard_", ln) and not ln.endswith(" 0")):
            print(f"   {ln}")


def main() -> int:
    t0 = time.monotonic()
    run.require_wasm()
    text, config = run.read_plugin_config()
    rule = run.ramp_rule(config)
    stable, gray = config["stable"], rule["split"][0]["version"]
    salt = rule.get("salt", rule["name"])
    percent = rule["split"][0]["percent"]

    tmp = Path(tempfile.mkdtemp(prefix="graysplit-demo-"))
    ecds, log, access_log = tmp / "ecds.json", tmp / "envoy.log", tmp / "access.log"
    admin_address = tmp / "admin-address"
    v1_port, v2_port = run.free_port(), run.free_port()
    run.write_atomic(ecds, run.ecds_document(text, version_info="1"))
    bootstrap = tmp / "envoy.yaml"
    secret = os.urandom(32)
    bootstrap.write_text(run.render_bootstrap({
        "LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": 0, "ADMIN_PORT": 0,
        "V1_PORT": v1_port, "V2_PORT": v2_port, "ECDS_PATH": ecds, "ACCESS_LOG": access_log,
        "DEMO_JWKS": run.demo_jwks(secret),
    }))
    proc = run.start_envoy(bootstrap, admin_address_path=admin_address, log=log,
                           extra=["--concurrency", str(WORKERS)])
    clients: list[Client] = []
    ok = False
    try:
        admin = run.wait_ready(proc, admin_address)
        port = run.listener_port(admin, "graysplit")
        print(f"graysplit demo: Envoy 1.40 with {WORKERS} workers on 127.0.0.1:{port}, "
              f"filter {run.WASM.name} ({run.WASM.stat().st_size} bytes)")
        print(f"config envoy/demo-config.json: stable {stable}; rule '{rule['name']}' sends {percent}% "
              f"of users to {gray} (salt '{salt}')\n")

        # Hold one connection per worker (the listener's exact_balance gives each new connection
        # to the least busy worker); the per-worker stats confirm it.
        while min(worker_connections(admin)) == 0 and len(clients) < 8 * WORKERS:
            clients.append(Client(port))
            clients[-1].get()  # the connection is accepted and balanced by now
        per_worker = worker_connections(admin)

        # 1. The split.
        print(f"1) {len(USERS)} distinct users (x-user-id), over {len(clients)} kept-alive connections "
              f"(per worker: {per_worker})")
        before = send_all(clients)
        print_split(before, [stable, gray])
        predicted = {u: run.split_version(rule, stable, u)[1] for u in USERS}
        wrong = [u for u in USERS if before[u] != predicted[u]]
        print(f"   {len(USERS) - len(wrong)}/{len(USERS)} got the version the bucketing contract predicts "
              f"(murmur3_x86_32('{salt}:' + id) % 10000 < {round(percent * 100)} -> {gray}): "
              f"{check(not wrong, f'{len(wrong)} users differ from the bucketing contract, e.g. {wrong[:3]}')}")

        # 2. Overrides, spoofing, pilot, sticky cookie.
        tester = next(u for u in USERS if predicted[u] == stable)
        print(f"\n2) tester override, x-gray-release: {gray}, for {tester} (on {stable}):")

        def row(label: str, got: str, ok: bool, failure: str, extra: str = "") -> None:
            print(f"   {label:<52} -> {got}{extra}  {check(ok, failure)}")

        got, _ = once(port, {"x-user-id": tester, "x-gray-release": gray})
        row("from 127.0.0.1 (trusted)", got, got == gray, "trusted override ignored")
        got, _ = once(port, {"x-user-id": tester, "x-gray-release": gray}, source="127.0.0.2")
        row("from 127.0.0.2 (not trusted)", got, got == stable, "untrusted override accepted")
        got, _ = once(port, {"x-user-id": tester, "x-gray-release": gray, "x-forwarded-for": "127.0.0.1"},
                      source="127.0.0.2")
        row("from 127.0.0.2, claiming X-Forwarded-For: 127.0.0.1", got, got == stable,
            "override trusted a client-sent X-Forwarded-For")
        got, resp = once(port, {"x-user-id": tester, "x-graysplit-version": gray})
        saw = resp.getheader("x-app-saw-version")
        row(f"spoofed x-graysplit-version: {gray}", got, got == stable and saw == stable,
            "a client-sent routing header got through", f", the app saw {saw}")
        token = run.demo_token(secret, {"sub": tester, "department": "legal"})
        got, _ = once(port, {"authorization": f"Bearer {token}"})
        row("an SSO token with department=legal (rule legal-pilot)", got, got == gray,
            "legal-pilot did not apply to a verified claim")
        got, _ = once(port, {"x-user-id": tester, "x-department": "legal", "department": "legal"})
        row("the same as headers, no token: no claim", got, got == stable,
            "a header counted as a claim")
        got, resp = once(port, {})
        cookie = resp.getheader("set-cookie") or ""
        sticky = re.fullmatch(r"graysplit_uid=([0-9a-f]{32}); Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax", cookie)
        row("a new visitor (no id)", got, bool(sticky), "no/odd sticky cookie on a request without id",
            f", Set-Cookie: {cookie or '(none)'}")
        if sticky:
            again, _ = once(port, {"cookie": f"graysplit_uid={sticky.group(1)}"})
            row("... back with that cookie", again,
                again == got == run.split_version(rule, stable, sticky.group(1))[1], "sticky cookie not honoured")

        # 3. The live ramp: replace the ECDS file, then wait until every held connection (one per
        #    worker) routes a user who must move. A pushed config reaches workers separately.
        ramped = copy.deepcopy(config)
        ramped_rule = run.ramp_rule(ramped)
        ramped_rule["split"][0]["percent"] = RAMP_TO
        predicted_after = {u: run.split_version(ramped_rule, stable, u)[1] for u in USERS}
        probe = next((u for u in USERS if predicted_after[u] == gray and predicted[u] == stable), None)
        print(f"\n3) live ramp to {RAMP_TO}%: rewrite the ECDS file (write + rename)")
        pushed = time.monotonic()
        accepted = run.push_config(admin, ecds, json.dumps(ramped), version_info="2")
        print(f"   Envoy {'applied' if accepted else 'did NOT apply'} it  {check(bool(accepted), 'ECDS update not applied')}")
        if accepted and probe:
            deadline = time.monotonic() + 10
            pending = list(clients)
            while pending and time.monotonic() < deadline:
                pending = [c for c in pending if c.get({"x-user-id": probe})[0] != gray]
            ms = (time.monotonic() - pushed) * 1000
            print(f"   {probe} (bucket {run.bucket(salt, probe)}) moves to {gray} on all {WORKERS} workers "
                  f"within {ms:.0f} ms  {check(not pending, 'the ramp did not reach every worker in 10s')}")

        # 4. The same users again: only stable -> gray moves.
        print(f"\n4) the same {len(USERS)} users again")
        after = send_all(clients)
        print_split(after, [stable, gray])
        up = sum(1 for u in USERS if before[u] == stable and after[u] == gray)
        back = [u for u in USERS if before[u] == gray and after[u] == stable]
        expected_up = sum(1 for u in USERS if predicted[u] == stable and predicted_after[u] == gray)
        print(f"   moved stable->gray: {up} (the contract says {expected_up})  "
              f"{check(up == expected_up, 'stable->gray moves differ from the contract')}")
        print(f"   moved gray->stable: {len(back)}  {check(not back, f'{len(back)} users went back to stable, e.g. {back[:3]}')}")

        # 5. Counters, as Prometheus scrapes them (stats tags of envoy/demo.yaml).
        print(f"\n5) counters: curl {admin}/stats/prometheus | grep graysplit_")
        _, prom = run.http_get(f"{admin}/stats/prometheus")
        lines = [ln for ln in prom.splitlines() if ln.startswith("graysplit_")]
        for ln in lines:
            print(f"   {ln}")
        check(any('rule="ramp"' in ln for ln in lines), "no labelled graysplit_decisions_total in /stats/prometheus")

        release_runs_itself(admin, clients, ecds, rule, stable, gray, salt)

        ok = not failures
    except Exception as e:  # Envoy's log (printed below) says why
        failures.append(f"demo failed: {e!r}")
    finally:
        for c in clients:
            c.close()
        run.stop_envoy(proc)  # also flushes the access log
        if access_log.exists():
            print("\naccess log (last lines):")
            for ln in [ln for ln in access_log.read_text().splitlines() if "version=" in ln][-3:]:
                print(f"   {ln}")
        if not ok and log.exists():
            print(f"\n--- Envoy log ---\n{log.read_text()[-6000:]}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'OK' if ok else 'FAILED: ' + '; '.join(failures)}  ({time.monotonic() - t0:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
