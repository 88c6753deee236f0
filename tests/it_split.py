"""Percent splits: DESIGN's bucketing contract checked against an independent murmur3 (mmh3)."""

import pytest

from conftest import module_envoy
from harness import bucket, expected_split, plugin_config


def split_rule(name, prefix, split, **extra):
    return {"name": name, "when": {"path_prefix": prefix},
            "split": [{"version": v, "percent": p} for v, p in split], **extra}


RULES = [
    split_rule("golden-a", "/golden-a/", [("v2", 16.5)], salt="release-2.1"),
    split_rule("golden-b", "/golden-b/", [("v2", 16.49)], salt="release-2.1"),
    split_rule("ramp", "/ramp/", [("v2", 38.33)]),                    # salt defaults to "ramp"
    split_rule("ramp-b", "/ramp-b/", [("v2", 38.32)], salt="ramp"),
    split_rule("ramp-c", "/ramp-c/", [("v2", 55.89)], salt="ramp"),
    split_rule("ramp-d", "/ramp-d/", [("v2", 55.88)], salt="ramp"),
    split_rule("ten", "/ten/", [("v2", 10)]),
    split_rule("thirty", "/thirty/", [("v2", 30)]),
    split_rule("half", "/half/", [("v2", 50)], salt="cohort-7"),
    split_rule("multi", "/multi/", [("va", 10), ("vb", 20.5), ("vc", 0), ("vd", 30)]),
    split_rule("everyone", "/everyone/", [("v2", 100)]),
    split_rule("nobody", "/nobody/", [("v2", 0)]),
]
CONFIG = plugin_config(RULES)


@pytest.fixture(scope="module")
def envoy(request, tmp_path_factory):
    return module_envoy(request, tmp_path_factory, CONFIG)


def served(envoy, path, uid):
    r = envoy.get(path, [("x-user-id", uid)])
    assert r.status == 200, r
    return r.text


def it_golden_values_fall_on_the_documented_buckets(envoy):
    # DESIGN: ("release-2.1","alice") -> 9862, ("release-2.1","bob") -> 1649,
    #         ("ramp","user-42") -> 3832, ("ramp","用户-7") -> 5588.
    assert [bucket("release-2.1", "alice"), bucket("release-2.1", "bob"),
            bucket("ramp", "user-42"), bucket("ramp", "用户-7")] == [9862, 1649, 3832, 5588]
    assert served(envoy, "/golden-a/", "bob") == "v2", "1649 < 1650"
    assert served(envoy, "/golden-b/", "bob") == "v1", "1649 is not < 1649"
    assert served(envoy, "/golden-a/", "alice") == "v1"
    assert served(envoy, "/ramp/", "user-42") == "v2", "3832 < 3833"
    assert served(envoy, "/ramp-b/", "user-42") == "v1", "3832 is not < 3832"
    assert served(envoy, "/ramp-c/", "用户-7") == "v2", "5588 < 5589 (UTF-8 header value)"
    assert served(envoy, "/ramp-d/", "用户-7") == "v1"
    assert envoy.version("/ramp-c/?uid=%E7%94%A8%E6%88%B7-7") == "v2", "same id via the query"


def it_split_agrees_user_by_user_with_an_independent_murmur3(envoy):
    users = [f"user-{i}" for i in range(200)] + [f"用户-{i}" for i in range(60)] + \
            [f"émile.{i}@example.fr" for i in range(40)] + ["a", "0", "x" * 300, "🙂"]
    with envoy.pool() as pool:
        got = pool.run([("/half/", [("x-user-id", u)]) for u in users])
    wrong = [(u, r.text, bucket("cohort-7", u)) for u, r in zip(users, got)
             if r.text != expected_split("cohort-7", u, [("v2", 50)], "v1")]
    assert not wrong, f"{len(wrong)} users disagree (user, served, bucket): {wrong[:10]}"
    assert {r.text for r in got} == {"v1", "v2"}


def it_salt_defaults_to_the_rule_name(envoy):
    users = [f"u{i}" for i in range(300)]
    with envoy.pool() as pool:
        got = pool.run([("/thirty/", [("x-user-id", u)]) for u in users])
    wrong = [u for u, r in zip(users, got)
             if r.text != expected_split("thirty", u, [("v2", 30)], "v1")]
    assert not wrong, f"salt 'thirty' predicts otherwise for {wrong[:10]}"


def it_multi_version_split_gives_each_version_its_bucket_range(envoy):
    split = [("va", 10), ("vb", 20.5), ("vc", 0), ("vd", 30)]
    users = [f"m-{i}" for i in range(400)]
    with envoy.pool() as pool:
        got = pool.run([("/multi/", [("x-user-id", u)]) for u in users])
    wrong = [(u, r.text, bucket("multi", u)) for u, r in zip(users, got)
             if r.text != expected_split("multi", u, split, "v1")]
    assert not wrong, f"(user, served, bucket): {wrong[:10]}"
    assert {r.text for r in got} == {"va", "vb", "vd", "v1"}, "vc has 0% and no bucket"


@pytest.mark.parametrize("path,percent", [("/ten/", 10), ("/thirty/", 30)])
def it_split_share_of_10000_users_is_within_one_point(envoy, path, percent):
    with envoy.pool() as pool:
        got = pool.run([(path, [("x-user-id", f"user-{i}")]) for i in range(10000)])
    assert {r.status for r in got} == {200}
    assert {r.text for r in got} <= {"v1", "v2"}
    share = 100 * sum(r.text == "v2" for r in got) / len(got)
    assert abs(share - percent) <= 1, f"{share:.2f}% on v2, configured {percent}%"


def it_a_user_stays_on_the_same_version(envoy):
    users = [f"sticky-{i}" for i in range(6)]
    with envoy.pool() as pool:
        got = pool.run([("/half/", [("x-user-id", u)]) for u in users for _ in range(50)])
    for i, u in enumerate(users):
        versions = {r.text for r in got[i * 50:(i + 1) * 50]}
        assert len(versions) == 1, f"{u} served by {versions}"
    assert {r.text for r in got} == {"v1", "v2"}, "the sample covers both versions"


def it_split_without_a_user_id_goes_to_stable(envoy):
    assert envoy.version("/everyone/") == "v1"
    assert envoy.version("/everyone/", [("x-user-id", "")]) == "v1"
    assert envoy.version("/everyone/", [("x-user-id", "anyone")]) == "v2"


def it_zero_percent_sends_nobody_and_hundred_percent_everybody(envoy):
    users = [f"z-{i}" for i in range(100)]
    with envoy.pool() as pool:
        none = pool.run([("/nobody/", [("x-user-id", u)]) for u in users])
        every = pool.run([("/everyone/", [("x-user-id", u)]) for u in users])
    assert {r.text for r in none} == {"v1"}
    assert {r.text for r in every} == {"v2"}
