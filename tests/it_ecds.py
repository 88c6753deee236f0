"""Live config through ECDS from a file (Istio's way): a ramp only moves users from stable to
gray, a rollback puts everyone back, a bad push is refused and the old config keeps serving,
and a refused FIRST config leaves the listener answering 500 until a good one arrives.

A pushed config reaches each Envoy worker separately, so after every push each connection
(each pinned to one worker) polls until it sees the new config before anything is measured."""

from harness import ECDS_STAT, plugin_config, user_in, wait_until, write_ecds

VERSIONS = ["v1", "v2"]
USERS = [f"user-{i}" for i in range(10000)]


def ramp(percent, extra_rules=()):
    return plugin_config([*extra_rules, {"name": "ramp",
                                         "split": [{"version": "v2", "percent": percent}]}])


def start(start_envoy, first_config):
    return start_envoy(first_config, ecds=True, versions=VERSIONS)


def push(envoy, config):
    write_ecds(envoy.ecds_path, config)


def served(pool, users):
    got = pool.run([("/", [("x-user-id", u)]) for u in users])
    assert {r.status for r in got} == {200}, {r.status for r in got}
    return {u: r.text for u, r in zip(users, got)}


def wait_routes(pool, uid, version, what):
    pool.wait_all_see("/", [("x-user-id", uid)],
                      lambda r: r.status == 200 and r.text == version, what)


def share(by_user):
    return 100 * sum(v == "v2" for v in by_user.values()) / len(by_user)


def it_live_ramp_only_moves_users_from_stable_to_gray(start_envoy):
    envoy = start(start_envoy, ramp(5))
    with envoy.pool() as pool:
        wait_routes(pool, user_in("ramp", 0, 500, "probe-"), "v2", "the 5% config")
        at5 = served(pool, USERS)
        assert abs(share(at5) - 5) <= 1, share(at5)

        push(envoy, ramp(25))
        wait_routes(pool, user_in("ramp", 500, 2500, "probe-"), "v2", "the 25% config")
        at25 = served(pool, USERS)
    left_gray = [u for u, v in at5.items() if v == "v2" and at25[u] != "v2"]
    assert not left_gray, f"{len(left_gray)} users left gray on a ramp up: {left_gray[:10]}"
    assert abs(share(at25) - 25) <= 1, share(at25)


def it_rollback_to_zero_puts_everyone_on_stable(start_envoy):
    envoy = start(start_envoy, ramp(25))
    with envoy.pool() as pool:
        gray = user_in("ramp", 0, 2500, "probe-")
        wait_routes(pool, gray, "v2", "the 25% config")
        push(envoy, ramp(0))
        wait_routes(pool, gray, "v1", "the 0% config")
        after = served(pool, USERS)
    assert set(after.values()) == {"v1"}, f"{share(after):.2f}% still on gray"


def it_bad_live_config_is_refused_and_the_old_config_keeps_routing(start_envoy):
    envoy = start(start_envoy, ramp(5))
    in5, in25 = user_in("ramp", 0, 500, "probe-"), user_in("ramp", 500, 2500, "probe-")
    with envoy.pool() as pool:
        wait_routes(pool, in5, "v2", "the 5% config")
        rejected = envoy.counter(ECDS_STAT + "update_rejected")
        # Valid ramp to 25% next to a broken rule: nothing of it may apply.
        push(envoy, ramp(25, [{"name": "bad", "when": {"source_cidrs": ["300.1.2.3/8"]},
                               "version": "v2"}]))
        wait_until(lambda: envoy.counter(ECDS_STAT + "update_rejected") > rejected, 15,
                   "Envoy to reject the bad ECDS config")
        assert served(pool, [in5, in25]) == {in5: "v2", in25: "v1"}, "old config on old conns"
    with envoy.pool() as fresh:
        assert served(fresh, [in5, in25] * 10) == {in5: "v2", in25: "v1"}, "and on new ones"
        push(envoy, ramp(25))
        wait_routes(fresh, in25, "v2", "the good 25% config after the bad one")


def it_refused_first_ecds_config_answers_500_until_a_good_one_arrives(start_envoy):
    bad = ramp(120)
    envoy = start(start_envoy, bad)
    wait_until(lambda: envoy.counter(ECDS_STAT + "update_rejected") >= 1, 15,
               "Envoy to reject the first ECDS config")
    with envoy.pool() as pool:
        got = pool.run([("/", [("x-user-id", f"u{i}")]) for i in range(20)])
        assert {r.status for r in got} == {500}, got[:3]
        push(envoy, ramp(100))
        wait_routes(pool, "anyone", "v2", "the first good config")
