"""Shadow requests (DESIGN.md "Shadow"; issue 18, first part): a stable-decided user of a rule's
shadow cohort is also sent, by Envoy, to the shadow's cluster, with the same method, path,
headers (the routing header set to the shadow's version, `x-graysplit-shadow: 1` added) and body,
while the user gets only the primary answer, never held by the shadow. What the shadow answered
is counted in `graysplit_shadow_total`. (The paired records the answers make are proven in
tests/it_shadow_records.py.)

The cohort is checked against an independent murmur3 (mmh3), the copy against what the test
sent, byte for byte."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

import harness
from harness import bucket, plugin_config, wait_until
from upstream import App

SALT = "shadowed"
USERS = [f"user-{i}" for i in range(120)]
SPLIT_BP = 2000       # v2 gets 20 %
SHADOW_BP = 5000      # half of the rest is shadowed to v2


class RecordingApp(App):
    """A version's app (tests/upstream.py) that also keeps every request it gets (its headers,
    its body) by `x-test-id`, and answers shadows `shadow_delay_s` late."""

    def __init__(self, version: str):
        super().__init__(version)
        self.shadow_delay_s = 0.0
        self.got: dict[str, list[tuple[dict, bytes]]] = {}

    def respond(self, h, body: bytes) -> None:
        with self.records_lock:
            self.got.setdefault(h.headers.get("x-test-id", ""), []).append(
                ({k.lower(): v for k, v in h.headers.items()}, body))
        if self.shadow_delay_s and h.headers.get("x-graysplit-shadow"):
            time.sleep(self.shadow_delay_s)
        super().respond(h, body)

    def requests(self, tag: str) -> list[tuple[dict, bytes]]:
        with self.records_lock:
            return list(self.got.get(tag, []))


@pytest.fixture
def apps():
    a = {"v1": RecordingApp("v1"), "v2": RecordingApp("v2")}
    yield a
    for x in a.values():
        x.close()


def config(cluster: str = "app-1", **shadow) -> dict:
    return plugin_config([{
        "name": "ramp", "salt": SALT, "split": [{"version": "v2", "percent": SPLIT_BP / 100}],
        "shadow": {"version": "v2", "percent": SHADOW_BP / 100, "cluster": cluster, **shadow},
    }], shadow_sink={"cluster": "app-0"})


@pytest.fixture
def envoy(apps, tmp_path):
    started = []

    def go(cfg):
        doc = harness.bootstrap(cfg, access_log=tmp_path / f"access{len(started)}.log",
                                upstreams={v: a.port for v, a in apps.items()})
        e = harness.Envoy(tmp_path / f"envoy{len(started)}", doc).launch()
        started.append(e)
        return e
    yield go
    for e in started:
        e.stop()


def shadow_stat(envoy, result: str) -> int:
    return envoy.stats(r"^wasmcustom\.graysplit_shadow_total\.").get(
        f"wasmcustom.graysplit_shadow_total.rule.ramp.result.{result}", 0)


def expected(user: str) -> tuple[str, bool]:
    """(the primary's version, whether the user is shadowed), from mmh3 alone."""
    gray = bucket(SALT, user) < SPLIT_BP
    return ("v2" if gray else "v1"), (not gray and bucket(SALT + ":shadow", user) < SHADOW_BP)


def ask(envoy, user: str, tag: str, body: bytes, extra=()) -> harness.Resp:
    with envoy.conn() as c:
        return c.request("POST", "/v1/chat/completions", [
            ("content-type", "application/json"), ("x-user-id", user), ("x-test-id", tag),
            ("x-custom", "kept as sent"), *extra], body)


def it_shadows_exactly_the_stable_users_of_the_cohort_with_a_faithful_copy(envoy, apps):
    e = envoy(config())
    want_shadowed = []
    for i, user in enumerate(USERS):
        body = json.dumps({"model": "m", "user": user, "n": i, "text": "é" * (i % 7)}).encode()
        r = ask(e, user, f"t{i}", body)
        version, shadowed = expected(user)
        assert r.status == 200 and r.header("x-app-version") == version, (user, r)
        if shadowed:
            want_shadowed.append((i, user, body))
    assert 20 < len(want_shadowed) < 80
    wait_until(lambda: shadow_stat(e, "paired") == len(want_shadowed), 10, "every shadow answered")
    assert shadow_stat(e, "sent") == len(want_shadowed)
    for i, user in enumerate(USERS):
        version, shadowed = expected(user)
        at_v2 = apps["v2"].requests(f"t{i}")
        shadows = [(h, b) for h, b in at_v2 if h.get("x-graysplit-shadow") == "1"]
        assert len(shadows) == int(shadowed), (user, at_v2)
        if version == "v1":
            (primary,) = apps["v1"].requests(f"t{i}")
        else:
            assert not apps["v1"].requests(f"t{i}")
            primary = next(x for x in at_v2 if "x-graysplit-shadow" not in x[0])
        if not shadowed:
            continue
        (h, b), (ph, pb) = shadows[0], primary
        assert hashlib.sha256(b).hexdigest() == hashlib.sha256(pb).hexdigest(), "the same body"
        assert h["x-graysplit-version"] == "v2" and ph["x-graysplit-version"] == "v1"
        assert h["x-custom"] == "kept as sent" and h["x-user-id"] == user
        assert h["content-type"] == "application/json"
        assert h.get(":path", "/v1/chat/completions")


def it_never_holds_the_primary_for_a_slow_shadow(envoy, apps):
    """The shadow's app answers 3 s late: the primary answers while the shadow is still
    unanswered (an order, not a timing), and the shadow is counted when it comes."""
    e = envoy(config())
    apps["v2"].shadow_delay_s = 3.0
    user = next(u for u in USERS if expected(u)[1])
    r = ask(e, user, "slow", b'{"q": 1}')
    assert r.status == 200 and r.header("x-app-version") == "v1"
    assert shadow_stat(e, "sent") == 1 and shadow_stat(e, "paired") == 0, "answered before the shadow"
    wait_until(lambda: shadow_stat(e, "paired") == 1, 10, "the slow shadow's answer")


def it_counts_a_shadow_to_a_cluster_envoy_does_not_have_as_failed_and_the_user_sees_nothing(envoy, apps):
    e = envoy(config(cluster="nowhere"))
    user = next(u for u in USERS if expected(u)[1])
    r = ask(e, user, "absent", b'{"q": 1}')
    assert r.status == 200 and r.header("x-app-version") == "v1"
    wait_until(lambda: shadow_stat(e, "shadow_failed") == 1, 10, "the failed shadow counted")
    assert shadow_stat(e, "paired") == 0


def it_skips_a_body_longer_than_max_bytes_and_a_request_already_a_shadow(envoy, apps):
    e = envoy(config(max_bytes=1024))
    user = next(u for u in USERS if expected(u)[1])
    r = ask(e, user, "big", b'{"pad": "' + b"x" * 2000 + b'"}')
    assert r.status == 200
    wait_until(lambda: shadow_stat(e, "skipped_size") == 1, 10, "the long body skipped")
    r = ask(e, user, "marked", b'{"q": 1}', extra=[("x-graysplit-shadow", "1")])
    assert r.status == 200
    # A shadowed request after it, on the same connection's worker: once its shadow is
    # answered, the marked one would have been sent before it.
    with e.conn() as c:
        c.request("POST", "/v1/chat/completions", [("content-type", "application/json"),
                                                   ("x-user-id", user), ("x-test-id", "after")],
                  b'{"q": 2}')
    wait_until(lambda: shadow_stat(e, "paired") == 1, 10, "the next request's shadow")
    assert shadow_stat(e, "sent") == 1
    assert not [h for h, _ in apps["v2"].requests("marked") if h.get("x-graysplit-shadow")]
    assert [h for h, _ in apps["v2"].requests("after") if h.get("x-graysplit-shadow") == "1"]


def it_labels_the_shadow_metrics_by_rule_and_result_in_prometheus(envoy, apps):
    """The stats tags of the test bootstrap (the same as every envoy/ config's and the Istio
    recipe's, tests/it_observability.py) make `rule` and `result` labels of
    graysplit_shadow_total and `rule` of the similarity histogram."""
    e = envoy(config())
    shadowed = [u for u in USERS if expected(u)[1]][:5]
    for i, user in enumerate(shadowed):
        assert ask(e, user, f"p{i}", b'{"q": 1}').status == 200
    wait_until(lambda: shadow_stat(e, "paired") == len(shadowed), 10, "the shadows answered")
    text = e.prometheus()
    assert f'graysplit_shadow_total{{rule="ramp",result="sent"}} {len(shadowed)}' in text, text
    assert f'graysplit_shadow_total{{rule="ramp",result="paired"}} {len(shadowed)}' in text, text
    assert 'graysplit_shadow_total{rule="ramp",result="sink_failed"}' in text, text
    assert 'graysplit_shadow_similarity_pct_bucket{rule="ramp",le="100"}' in text, text
    assert "wasmcustom" not in text and "graysplit_shadow_total_rule" not in text


def it_skips_a_shadow_past_max_in_flight_and_sends_again_once_one_is_answered(envoy, apps):
    """`max_in_flight: 1`: while one shadow waits (its app answers 2 s late), the next shadowed
    questions on the same worker (one connection) are answered and not shadowed
    (`skipped_busy`); once the first is answered, the next is sent."""
    e = envoy(config(max_in_flight=1))
    apps["v2"].shadow_delay_s = 2.0
    users = [u for u in USERS if expected(u)[1]][:4]
    with e.conn() as c:
        for i, user in enumerate(users[:3]):
            r = c.request("POST", "/v1/chat/completions", [
                ("content-type", "application/json"), ("x-user-id", user), ("x-test-id", f"busy{i}")],
                b'{"q": 1}')
            assert r.status == 200 and r.header("x-app-version") == "v1"
        assert (shadow_stat(e, "sent"), shadow_stat(e, "skipped_busy")) == (1, 2)
        wait_until(lambda: shadow_stat(e, "paired") == 1, 10, "the first shadow answered")
        apps["v2"].shadow_delay_s = 0.0
        r = c.request("POST", "/v1/chat/completions", [
            ("content-type", "application/json"), ("x-user-id", users[3]), ("x-test-id", "busy3")],
            b'{"q": 1}')
        assert r.status == 200
    wait_until(lambda: shadow_stat(e, "paired") == 2, 10, "the next shadow sent and answered")
    assert (shadow_stat(e, "sent"), shadow_stat(e, "skipped_busy")) == (2, 2)


def sinked(shadow: dict | None = None, sink: dict | None = None, split: bool = True) -> dict:
    rule = {"name": "ramp", "salt": SALT}
    rule.update({"split": [{"version": "v2", "percent": 10}]} if split else {"version": "v2"})
    if shadow is not None:
        rule["shadow"] = shadow
    return plugin_config([rule], **({"shadow_sink": sink} if sink is not None else {}))


SHADOW = {"version": "v2", "percent": 5, "cluster": "app-1"}
BAD = {
    "no-sink": (sinked(SHADOW), r"rules\[0\]\.shadow", "shadow_sink"),
    "sink-without-cluster": (sinked(SHADOW, {"path": "/v1/logs"}), r"shadow_sink\.cluster", "required"),
    "sink-path-without-slash": (sinked(SHADOW, {"cluster": "otel", "path": "v1/logs"}), r"shadow_sink\.path", ""),
    "sink-batch-zero": (sinked(SHADOW, {"cluster": "otel", "batch": 0}), r"shadow_sink\.batch", "0"),
    "sink-batch-above": (sinked(SHADOW, {"cluster": "otel", "batch": 1001}), r"shadow_sink\.batch", "1001"),
    "sink-unknown-field": (sinked(SHADOW, {"cluster": "otel", "capture": True}), r"shadow_sink(\.capture)?", ""),
    "stable-as-shadow": (sinked({**SHADOW, "version": "v1"}, {"cluster": "otel"}),
                         r"rules\[0\]\.shadow\.version", "v1"),
    "bad-version-name": (sinked({**SHADOW, "version": "v 9"}, {"cluster": "otel"}),
                         r"rules\[0\]\.shadow\.version", ""),
    "percent-above": (sinked({**SHADOW, "percent": 100.5}, {"cluster": "otel"}),
                      r"rules\[0\]\.shadow\.percent", ""),
    "percent-three-decimals": (sinked({**SHADOW, "percent": 1.555}, {"cluster": "otel"}),
                               r"rules\[0\]\.shadow\.percent", ""),
    "no-cluster": (sinked({"version": "v2", "percent": 5}, {"cluster": "otel"}),
                   r"rules\[0\]\.shadow\.cluster", "required"),
    "timeout-below": (sinked({**SHADOW, "timeout_ms": 99}, {"cluster": "otel"}),
                      r"rules\[0\]\.shadow\.timeout_ms", "99"),
    "in-flight-above": (sinked({**SHADOW, "max_in_flight": 257}, {"cluster": "otel"}),
                        r"rules\[0\]\.shadow\.max_in_flight", "257"),
    "max-bytes-above": (sinked({**SHADOW, "max_bytes": 983041}, {"cluster": "otel"}),
                        r"rules\[0\]\.shadow\.max_bytes", "983041"),
    "prefix-without-slash": (sinked({**SHADOW, "path_prefixes": ["/v1/", "v2"]}, {"cluster": "otel"}),
                             r"rules\[0\]\.shadow\.path_prefixes\[1\]", ""),
    "on-a-fixed-rule": (sinked(SHADOW, {"cluster": "otel"}, split=False), r"rules\[0\]\.shadow", "split"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def it_refuses_bad_shadow_and_sink_fields_with_their_json_paths(tmp_path, case):
    """A real Envoy refuses to start with each: one `graysplit: invalid config: <path>:
    <problem>` line, the path as DESIGN writes it."""
    from it_config import refused_at
    refused_at(tmp_path, *BAD[case])


def it_shadows_to_a_version_no_split_gives_users_yet(envoy, apps):
    """A version may be asked in shadow before anyone is routed to it: `shadow.version` v3,
    which no split entry names, is a version of the config; the copy carries it as its route
    header while every user stays on v1/v2 by the split."""
    e = envoy(config(version="v3"))
    user = next(u for u in USERS if expected(u)[1])
    r = ask(e, user, "v3", b'{"q": 1}')
    assert r.status == 200 and r.header("x-app-version") == "v1"
    wait_until(lambda: shadow_stat(e, "paired") == 1, 10, "the shadow answered")
    (copy,) = [h for h, _ in apps["v2"].requests("v3") if h.get("x-graysplit-shadow") == "1"]
    assert copy["x-graysplit-version"] == "v3", copy


def it_a_shadow_to_a_version_with_a_model_asks_that_model(envoy, apps):
    """`versions.v2.model`: the shadow's copy to v2 asks v2's model (only the top-level `model`
    changed, its content-length the new length), while the primary on v1 keeps the client's."""
    cfg = config()
    cfg["versions"] = {"v2": {"model": "qwen3-72b-canary"}}
    e = envoy(cfg)
    user = next(u for u in USERS if expected(u) == ("v1", True))
    body = b'{ "model" : "qwen3-72b", "metadata": {"model": "nested"}, "messages": [] }'
    r = ask(e, user, "m", body)
    assert r.status == 200 and r.header("x-app-version") == "v1"
    wait_until(lambda: shadow_stat(e, "paired") == 1, 10, "the shadow answered")
    (primary,) = apps["v1"].requests("m")
    assert primary[1] == body, "the primary's body as sent"
    (h, b), = [x for x in apps["v2"].requests("m") if x[0].get("x-graysplit-shadow") == "1"]
    want = body.replace(b'"qwen3-72b"', b'"qwen3-72b-canary"')
    assert b == want and h["content-length"] == str(len(want)), (h, b)
