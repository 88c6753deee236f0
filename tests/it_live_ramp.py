"""A live release under load: while threads send steady keep-alive traffic for thousands of
users, push 1% -> 10% -> (a broken config) -> 50% -> 100% -> 0% (rollback) -> 50% -> kill
switch through ECDS, the way istiod updates a WasmPlugin.

Asserted: not one failed request (non-200, an unrouted answer, a connection error); every
response carries exactly the version its config gives its user (each pushed config marks its
responses, see harness.LiveRamp); on the way up users only move stable -> gray; the broken
config is rejected (Envoy's update_rejected counter) and every connection carries on under the
last good one; after the rollback and after the kill switch everybody is on stable.

Each step's visibility (ms from the rename of the ECDS file to the first response under the new
config on the LAST connection, connections spread over every worker) is printed in pytest's
summary and written to .run/live-ramp.txt; only a generous deadline (10 s) is asserted, since
the machine is shared and timings are reported, not tested."""

from harness import REPO, SUMMARY, LiveRamp, LoadGen, marked, ramp_cycle

USERS = [f"user-{i}" for i in range(10000)]
STABLE, GRAY = "v1", "v2"


def moved_back(before: dict, after: dict) -> list[str]:
    return [u for u, v in before.items() if v == GRAY and after.get(u) == STABLE]


def it_live_ramp_rollback_and_kill_switch_under_load_fail_no_request(start_envoy):
    cycle = ramp_cycle(STABLE, GRAY)
    label0, first, _ = cycle[0]
    envoy = start_envoy(marked(first, 1), ecds=True,
                        versions=[STABLE, GRAY], concurrency=2)
    load = LoadGen(envoy, USERS, conns=8, max_requests=400_000, max_seconds=120,
                   versions=[STABLE, GRAY])
    ramp = LiveRamp(envoy, load)
    ramp.initial(first)
    hold = -(-len(USERS) // len(load.conns))  # every connection goes through all its users
    with load:
        ramp.wait_for(lambda: all(bg.get(1, 0) >= hold for bg in load.by_gen),
                   f"{hold} responses per connection under the first config")
        for label, config, bad in cycle[1:]:
            ramp.push(label, config, hold, bad=bad)
    steps = {s.label: s for s in ramp.steps}
    gens = {s.label: s.gen for s in ramp.steps}
    gens[label0] = 1

    summary = (f"live ramp: {load.requests} requests on {len(load.conns)} connections "
               f"({envoy.concurrency} workers), {len(load.failures)} failed; visible after "
               + ", ".join(f"{s.label} {s.visible_ms:.0f} ms" if s.accepted
                           else f"{s.label} rejected after {s.rejected_ms:.0f} ms"
                           for s in ramp.steps))
    SUMMARY.append(summary)
    (REPO / ".run").mkdir(exist_ok=True)
    (REPO / ".run" / "live-ramp.txt").write_text(summary + "\n")
    print(summary)

    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:10]}"
    assert not load.wrong, f"{len(load.wrong)} wrong answers: {load.wrong[:10]}"
    assert all(s.accepted != (s.label == "bad push") for s in ramp.steps)
    bad_gen = steps["bad push"].gen
    assert bad_gen not in load.observed, "a response was served by the rejected config"

    obs = load.observed
    for a, b in [("1%", "10%"), ("10%", "50%"), ("50%", "100%"), ("0% rollback", "50% again")]:
        ga, gb = obs[gens[a]], obs[gens[b]]
        assert set(ga) == set(USERS) and set(gb) == set(USERS), f"{a}/{b}: not every user served"
        back = moved_back(ga, gb)
        assert not back, f"{a} -> {b}: {len(back)} users moved gray -> stable: {back[:10]}"
    for label, percent in [("1%", 1), ("10%", 10), ("50%", 50), ("100%", 100)]:
        share = 100 * sum(v == GRAY for v in obs[gens[label]].values()) / len(USERS)
        assert abs(share - percent) <= 2, f"{label}: {share:.2f}% on gray"
    for label in ("0% rollback", "kill switch"):
        assert set(obs[gens[label]].values()) == {STABLE}, f"after {label} not all on stable"
