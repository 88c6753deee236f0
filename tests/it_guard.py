"""Guards: a gray version that fails is rolled back by Envoy itself, per DESIGN.md "Guards".

Each version is a real app (tests/upstream.py) behind its own cluster; a test makes the gray one
answer 503, or slowly, or not at all, while keep-alive traffic on every worker runs, and checks
what users get, the counters and gauges, and the trip's log line. Trip latencies are measured
and reported (graysplit measurements), never asserted: the machine is shared.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

import harness
from harness import Conn, Traffic, bucket, crossing, plugin_config, switch_latencies, wait_until
from upstream import Apps

SALT = "guarded"
GUARD = {"max_error_percent": 10, "min_requests": 20, "window_s": 10}
USERS = [f"user-{i}" for i in range(400)]


def gray_users(percent: float, salt: str = SALT) -> set[str]:
    return {u for u in USERS if bucket(salt, u) < percent * 100}


def guarded(split=(("v2", 50),), guard=GUARD, **rule) -> dict:
    return plugin_config([{"name": "ramp", "salt": SALT, "guard": guard,
                           "split": [{"version": v, "percent": p} for v, p in split], **rule}])


stat = harness.graysplit_stat
tripped = harness.tripped


def fail_until_tripped(envoy, apps, gray: list[str]) -> None:
    """The gray app answers 503 to 40 gray requests, the guard trips, the app is fixed again."""
    apps["v2"].status = 503
    with envoy.conn() as c:
        for u in (gray * 2)[:40]:
            c.get("/", [("x-user-id", u)])
    wait_until(lambda: tripped(envoy, "v2"), 10, "the trip")
    stable_everywhere(envoy, [("x-user-id", gray[0])])
    apps["v2"].status = 200


def stable_everywhere(envoy, headers) -> None:
    """Waits until a connection on every worker routes the request to v1: the VM that tripped
    sets the gauge, the others follow at their next tick."""
    harness.wait_on_every_worker(envoy, headers, lambda r: r.header("x-app-version") == "v1",
                                 "on stable after the trip", timeout=5)


@pytest.fixture
def apps():
    a = Apps(["v1", "v2", "v3"])
    yield a
    a.close()


def it_a_gray_version_that_starts_failing_trips_and_its_users_go_to_stable_on_every_worker(
        start_envoy, apps):
    envoy = start_envoy(guarded(), upstreams=apps.ports)
    gray = gray_users(50)
    with Traffic(envoy, USERS, conns=8) as load:
        load.wait_for(30, "healthy traffic on every connection")
        apps["v2"].status = 503
        t_flip = time.time()
        wait_until(lambda: tripped(envoy, "v2"), 15, "the guard to trip v2")
        t_gauge = time.time()
        # Two more seconds of traffic, so every connection shows where its users go now.
        load.wait_for(20, "traffic after the trip", where=lambda s: s.sent > t_gauge + 2)
    samples = load.snapshot()
    assert not load.errors, load.errors[:5]
    # The only failures are the gray app's own 503s: Envoy failed nothing itself.
    bad = [s for s in samples if s.status != 200 and not (s.status == 503 and s.version == "v2")]
    assert not bad, bad[:5]
    # After the trip, every gray user of the rule is on stable, on every connection (worker).
    last_gray = max(s.got for s in samples if s.version == "v2")
    after = [s for s in samples if s.sent > last_gray]
    assert {s.user for s in after} & gray, "no gray user was asked for after the trip"
    assert all(s.version == "v1" and s.status == 200 for s in after), \
        [s for s in after if s.version != "v1"][:5]
    # Stable users never moved.
    assert all(s.version == "v1" for s in samples if s.user not in gray)
    t_cross = crossing(samples, GUARD)
    lat = switch_latencies(samples, t_cross)
    harness.SUMMARY.append(
        f"guard trip (503): limit crossed {t_cross - t_flip:.2f} s after the gray app failed; "
        f"every connection ({len(lat)}, both workers) on stable {max(lat):.2f} s after the crossing "
        f"(per connection: {', '.join(f'{x:.2f}' for x in sorted(lat))} s); "
        f"{sum(1 for s in samples if s.status == 503)} gray 503s, 0 other failures")
    # The counters and gauges say so; one worker tripped it, once, and said so once.
    assert stat(envoy, "guard_trips_total", "v2") == 1
    assert stat(envoy, "split_basis_points", "v2") == 0
    assert stat(envoy, "guard_responses_total", "v2", ".result.error") > 0
    assert stat(envoy, "guard_responses_total", "v1", ".result.error") == 0
    assert stat(envoy, "guard_responses_total", "v1", ".result.ok") > 0
    lines = re.findall(r"graysplit: guard tripped: .*", envoy.log())
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"graysplit: guard tripped: rule ramp, version v2: (\d+) of (\d+) responses were errors "
        r"\(([\d.]+)%\) in the last 10 s, limit 10%; its users go to v1", lines[0]), lines[0]


def it_a_version_that_turns_slow_trips_with_slow_ms(start_envoy, apps):
    envoy = start_envoy(guarded(guard={**GUARD, "slow_ms": 100}), upstreams=apps.ports)
    gray = gray_users(50)
    with Traffic(envoy, USERS, conns=4) as load:
        load.wait_for(20, "healthy traffic")
        apps["v2"].delay_s = 0.3     # 200s, but 300 ms late
        wait_until(lambda: tripped(envoy, "v2"), 20, "the guard to trip v2 for slowness")
        t = time.time()
        load.wait_for(5, "traffic after the trip", where=lambda s: s.sent > t + 1)
    after = [s for s in load.snapshot() if s.sent > t + 1 and s.user in gray]
    assert after and all(s.version == "v1" for s in after), after[:5]
    # Every response was a 200: only lateness counted.
    assert all(s.status == 200 for s in load.snapshot())
    assert stat(envoy, "guard_responses_total", "v2", ".result.error") > 0
    assert stat(envoy, "guard_trips_total", "v2") == 1


def it_a_version_that_hangs_trips_before_any_response(start_envoy, apps):
    """No route timeout, the gray app never answers in time: the requests still waiting after
    slow_ms count as errors, so the guard trips without a single response from gray."""
    envoy = start_envoy(guarded(guard={**GUARD, "slow_ms": 200, "min_requests": 10}),
                        upstreams=apps.ports, route_timeout_s=0)
    gray = sorted(gray_users(50))
    apps["v2"].delay_s = 30
    hung: list[Conn] = []
    for u in gray[:12]:            # 12 requests left waiting, each on its own connection
        c = Conn(envoy.port, timeout=60)
        c.sock.sendall(harness.encode_request("GET", "/", [("x-user-id", u)]))
        hung.append(c)
    try:
        wait_until(lambda: tripped(envoy, "v2"), 15, "the guard to trip v2 on hung requests")

        def all_on_stable() -> bool:
            # Fresh connections, whichever worker takes them (each learns of the trip within
            # two ticks); one still routing to the hung v2 times out and is asked again.
            for u in gray[20:30]:
                with Conn(envoy.port, timeout=2) as c:
                    if c.get("/", [("x-user-id", u)]).text != "v1":
                        return False
            return True
        wait_until(all_on_stable, 15, "every worker to route the gray users to v1")
        assert stat(envoy, "guard_responses_total", "v2", ".result.error") >= 10
    finally:
        for c in hung:
            c.close()


def it_does_not_trip_when_stable_fails_as_much(start_envoy, apps):
    envoy = start_envoy(guarded(), upstreams=apps.ports)
    gray = gray_users(50)
    with Traffic(envoy, USERS, conns=4) as load:
        load.wait_for(10, "healthy traffic")
        apps["v1"].status = 503      # a shared dependency fails: stable first ...
        wait_until(lambda: stat(envoy, "guard_responses_total", "v1", ".result.error") >= 40, 15,
                   "stable's errors to reach the guard")
        apps["v2"].status = 503      # ... then gray just as much
        wait_until(lambda: stat(envoy, "guard_responses_total", "v2", ".result.error") >= 60, 15,
                   "gray's errors to reach the guard")
        t = time.time()
        load.wait_for(10, "traffic after three ticks", where=lambda s: s.sent > t + 1.5)
    assert not tripped(envoy, "v2") and stat(envoy, "guard_trips_total", "v2") == 0
    late = [s for s in load.snapshot() if s.sent > t + 1.5 and s.user in gray]
    assert late and all(s.version == "v2" for s in late), "gray users stay on gray"


def it_does_not_trip_below_min_requests(start_envoy, apps):
    envoy = start_envoy(guarded(guard={**GUARD, "min_requests": 50}), upstreams=apps.ports)
    apps["v2"].status = 503
    gray = sorted(gray_users(50))
    with envoy.conn() as c:
        for u in gray[:30]:
            assert c.get("/", [("x-user-id", u)]).status == 503
    wait_until(lambda: stat(envoy, "guard_responses_total", "v2", ".result.error") == 30, 10,
               "the 30 errors to reach the guard")
    time.sleep(1.5)   # three more ticks: nothing may trip on 30 responses
    assert not tripped(envoy, "v2")
    assert envoy.get("/", [("x-user-id", gray[0])]).header("x-app-version") == "v2"


def it_a_trip_holds_across_pushes_until_attempt_re_arms_it(start_envoy, apps):
    """The same guard pushed again, other rules changed, `llm` added: still tripped; `attempt`
    re-arms it."""
    config = guarded()
    envoy = start_envoy(config, ecds=True, upstreams=apps.ports)
    gray = sorted(gray_users(50))
    fail_until_tripped(envoy, apps, gray)    # fixed now, but the trip holds

    def push(cfg) -> None:
        harness.push_everywhere(envoy, cfg, headers=[("x-user-id", gray[0])])

    def served(users) -> set[str]:
        with harness.Pool(envoy.port, 4) as pool:
            return {r.header("x-app-version") for r in pool.run([("/", [("x-user-id", u)]) for u in users])}

    push(config)                                          # the same guard again
    assert served(gray[:40]) == {"v1"} and tripped(envoy, "v2")
    other = {**config, "rules": [{"name": "pilot", "when": {"headers": [
        {"name": "x-pilot", "exact": "1"}]}, "version": "v3"}, *config["rules"]]}
    push(other)                                           # other rules changed
    assert served(gray[:40]) == {"v1"} and tripped(envoy, "v2")
    push({**config, "llm": {}})                           # answers read from now on (v3)
    assert served(gray[:40]) == {"v1"} and tripped(envoy, "v2"), "adding llm is no new guard"
    rearmed = guarded(guard={**GUARD, "attempt": 2})
    push(rearmed)                                         # re-armed: from an empty window
    wait_until(lambda: served(gray[:40]) == {"v2"}, 10, "gray users back on v2 after attempt 2")
    assert not tripped(envoy, "v2")
    assert stat(envoy, "split_basis_points", "v2") == 5000


def it_a_trip_leaves_the_other_versions_of_the_split_alone(start_envoy, apps):
    envoy = start_envoy(guarded(split=(("v2", 20), ("v3", 20))), upstreams=apps.ports)
    on_v2 = {u for u in USERS if bucket(SALT, u) < 2000}
    on_v3 = {u for u in USERS if 2000 <= bucket(SALT, u) < 4000}
    apps["v2"].status = 503
    with Traffic(envoy, USERS, conns=4) as load:
        wait_until(lambda: tripped(envoy, "v2"), 15, "v2 to trip")
        t = time.time()
        load.wait_for(10, "traffic after the trip", where=lambda s: s.sent > t + 1.5)
    late = [s for s in load.snapshot() if s.sent > t + 1.5]
    assert all(s.version == "v1" for s in late if s.user in on_v2)
    assert all(s.version == "v3" for s in late if s.user in on_v3), "v3 is untouched"
    assert {s.user for s in late} & on_v3
    assert not tripped(envoy, "v3")
    assert stat(envoy, "split_basis_points", "v2") == 0
    assert stat(envoy, "split_basis_points", "v3") == 2000


def it_the_tester_override_still_reaches_a_tripped_version(start_envoy, apps):
    config = {**guarded(), "override": {"header": "x-gray-release", "trusted_cidrs": ["127.0.0.1/32"]}}
    envoy = start_envoy(config, upstreams=apps.ports)
    gray = sorted(gray_users(50))
    fail_until_tripped(envoy, apps, gray)
    assert envoy.get("/", [("x-user-id", gray[0])]).header("x-app-version") == "v1"
    r = envoy.get("/", [("x-user-id", gray[0]), ("x-gray-release", "v2")])
    assert r.header("x-app-version") == "v2", r
    with Conn(envoy.port, source="127.0.0.2") as c:
        r = c.get("/", [("x-user-id", gray[0]), ("x-gray-release", "v2")])
    assert r.header("x-app-version") == "v1", "only from trusted addresses"


def it_counts_envoy_local_replies_as_errors(start_envoy, apps):
    """A version with no healthy upstream: Envoy answers 503 itself, and the guard sees it."""
    envoy = start_envoy(guarded(), upstreams={"v1": apps["v1"].port, "v2": apps["v2"].port})
    apps["v2"].close()               # nothing listens on v2's port any more
    gray = sorted(gray_users(50))
    with envoy.conn() as c:
        for u in (gray * 2)[:40]:
            r = c.get("/", [("x-user-id", u)])
            assert r.status == 503 and r.header("x-app-version") is None, r
            if tripped(envoy, "v2"):
                break
    wait_until(lambda: tripped(envoy, "v2"), 10, "the trip on Envoy's own 503s")
    stable_everywhere(envoy, [("x-user-id", gray[0])])


def it_a_push_that_adds_a_version_under_the_same_guard_watches_it_too(start_envoy, apps):
    envoy = start_envoy(guarded(), ecds=True, upstreams=apps.ports)
    on_v3 = sorted(u for u in USERS if 2500 <= bucket(SALT, u) < 5000)
    wider = guarded(split=(("v2", 25), ("v3", 25)))
    harness.push_everywhere(envoy, wider, headers=[("x-user-id", on_v3[0])])
    apps["v3"].status = 503
    with envoy.conn() as c:
        for u in (on_v3 * 3)[:40]:
            c.get("/", [("x-user-id", u)])
    wait_until(lambda: tripped(envoy, "v3"), 10, "the guard to trip the version the push added")
    assert not tripped(envoy, "v2")
    assert stat(envoy, "guard_responses_total", "v3", ".result.error") > 0
