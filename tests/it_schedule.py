"""Scheduled ramps: a split entry's percent steps by the clock, with no push (DESIGN.md
"Schedules"), on every worker, and never moves a user back from gray; a schedule never brings
back a rule that is off, nor a version its guard tripped."""

from __future__ import annotations

import time

import harness
from harness import Traffic, bucket, plugin_config, wait_until
from upstream import Apps

SALT = "scheduled"
USERS = [f"user-{i}" for i in range(300)]


def ms_now() -> float:
    """Now, to the millisecond: the steps' times are then exact in RFC 3339 and here alike."""
    return round(time.time() * 1000) / 1000


iso = harness.run.rfc3339_ms


def schedule_rule(steps: list[tuple[float, float]], **rule) -> dict:
    return {"name": "ramp", "salt": SALT, "split": [{"version": "v2", "schedule": [
        {"at": iso(t), "percent": p} for t, p in steps]}], **rule}


def percent_at(steps: list[tuple[float, float]], t: float) -> float:
    live = [p for at, p in steps if at <= t]
    return live[-1] if live else 0.0


def gauge(envoy) -> int:
    return harness.graysplit_stat(envoy, "split_basis_points", "v2")


def it_a_schedule_steps_by_the_clock_on_every_worker_with_no_push(start_envoy):
    # Envoy first, the config once it is up (one push, its schedule counted from then), so a
    # slow start cannot eat the first step.
    envoy = start_envoy(plugin_config([]), ecds=True, versions=["v1", "v2"])
    pushes = envoy.counter(harness.ECDS_STAT + "update_success")
    t0 = ms_now()
    steps = [(t0 + 2.0, 10), (t0 + 3.5, 40), (t0 + 5.0, 100)]
    harness.push_everywhere(envoy, plugin_config([schedule_rule(steps)]))
    before_steps = time.time() < steps[0][0]
    seen_gauges: list[str] = []
    with Traffic(envoy, USERS, conns=4) as load:
        for at, p in steps:
            wait_until(lambda: gauge(envoy) == p * 100, 10, f"the gauge to show {p}%")
            seen_gauges.append(f"{p}% after {time.time() - at:.2f} s")
        load.wait_for(20, "traffic after the last step", where=lambda s: s.sent > steps[-1][0] + 0.5)
    samples = load.snapshot()
    assert not load.errors, load.errors[:5]
    assert before_steps, "the push took two seconds to reach every worker: the first step had passed"
    wrong, moved_back = [], []
    last_gray: dict[str, bool] = {}
    for s in sorted(samples, key=lambda s: s.got):
        # The filter decided between `sent` and `got`: where a step falls inside that interval
        # either side is right; elsewhere the version is the one the percent at the time gives.
        lo, hi = percent_at(steps, s.sent), percent_at(steps, s.got)
        allowed = {"v2" if bucket(SALT, s.user) < lo * 100 else "v1",
                   "v2" if bucket(SALT, s.user) < hi * 100 else "v1"}
        if s.version not in allowed:
            wrong.append(s)
        gray = s.version == "v2"
        if last_gray.get(s.user) and not gray:
            moved_back.append(s)
        last_gray[s.user] = gray
    assert not wrong, wrong[:5]
    assert not moved_back, f"users went back from gray: {moved_back[:5]}"
    # Every connection, hence every worker, served each step's newly gray users.
    for at, p in steps:
        prev = percent_at(steps, at - 0.001)
        for c in range(len(load.conns)):
            newly = [s for s in samples if s.conn == c and s.sent > at + 0.2
                     and prev * 100 <= bucket(SALT, s.user) < p * 100]
            assert newly and all(s.version == "v2" for s in newly), (c, p, newly[:3])
    assert envoy.counter(harness.ECDS_STAT + "update_success") == pushes + 1, "no push after the schedule's"
    harness.SUMMARY.append(f"schedule: {len(samples)} requests over 3 steps on {len(load.conns)} "
                           f"connections (2 workers), 0 wrong, 0 moved back; the "
                           f"split_basis_points gauge showed {', '.join(seen_gauges)}")


def it_a_schedule_never_brings_back_a_rule_that_is_off(start_envoy):
    past = time.time() - 60
    envoy = start_envoy(plugin_config([
        schedule_rule([(past, 100)], enabled=False),
        {**schedule_rule([(past, 100)], expires_at=iso(past + 1)), "name": "expired"},
        {**schedule_rule([(past, 100)], starts_at=iso(time.time() + 3600)), "name": "later"},
    ]))
    with envoy.conn() as c:
        for u in USERS[:50]:
            r = c.get("/", [("x-user-id", u)])
            assert r.text == "v1", f"{u}: {r}"


def it_a_later_step_does_not_bring_back_a_tripped_version(start_envoy):
    apps = Apps(["v1", "v2"])
    try:
        t0 = time.time()
        steps = [(t0 - 10, 50), (t0 + 4, 100)]
        rule = schedule_rule(steps, guard={"max_error_percent": 10, "min_requests": 20, "window_s": 10})
        envoy = start_envoy(plugin_config([rule]), upstreams=apps.ports)
        apps["v2"].status = 503
        with Traffic(envoy, USERS, conns=4) as load:
            wait_until(lambda: harness.tripped(envoy, "v2"), 15, "the trip")
            # After the 100% step, and after every worker learned of the trip (two ticks).
            after = max(steps[1][0], time.time() + 1.0) + 0.2
            load.wait_for(10, "traffic after the 100% step", where=lambda s: s.sent > after)
        late = [s for s in load.snapshot() if s.sent > after]
        assert late and all(s.version == "v1" and s.status == 200 for s in late), late[:5]
        assert gauge(envoy) == 0, "a tripped entry's live percent is 0"
    finally:
        apps.close()
