"""Session pins (DESIGN.md "Session pins"): a conversation stays on its version across ramp
steps until its session idles out; a pin is renewed at half of idle_s; another user's pin, a
forged one or an expired one is ignored and replaced; a rollback ignores pins at once."""

from __future__ import annotations

import re
import time

import pytest

import harness
from harness import Conn, bucket, plugin_config, wait_until

SALT = "pins"
IDLE = 10
PIN = {"cookie": "gp", "idle_s": IDLE, "key": "k" * 40}
PIN_RE = re.compile(r"^gp=(1:ramp:[^:;]+:\d+:[0-9a-f]{64}); Path=/; Max-Age=10; HttpOnly; SameSite=Lax$")


def config(percent: float, **rule) -> dict:
    return plugin_config([{"name": "ramp", "salt": SALT, "split": [{"version": "v2", "percent": percent}], **rule}],
                         session_pin=PIN)


def user_between(lo: int, hi: int) -> str:
    return harness.user_in(SALT, lo, hi, prefix="pin-user-")


class Session:
    """A browser: one user, the cookies the responses set, sent back on every request."""

    def __init__(self, envoy, user: str):
        self.envoy, self.user, self.pin = envoy, user, None

    def get(self) -> tuple[str, str | None]:
        headers = [("x-user-id", self.user)] + ([("cookie", f"gp={self.pin}")] if self.pin else [])
        r = self.envoy.get("/", headers)
        assert r.status == 200, r
        issued = None
        for c in r.all("set-cookie"):
            m = PIN_RE.match(c)
            assert m, f"odd Set-Cookie {c!r}"
            issued = self.pin = m.group(1)
        return r.text, issued


push = harness.push_everywhere   # waits until every worker serves the pushed config


def pins(envoy, result: str) -> int:
    return envoy.counter(f"wasmcustom.graysplit_pins_total.result.{result}")


def it_a_pinned_session_stays_across_a_ramp_and_a_new_session_moves(start_envoy):
    envoy = start_envoy(config(10), ecds=True, versions=["v1", "v2"])
    mover = user_between(1000, 5000)         # stable at 10%, gray at 50%
    s = Session(envoy, mover)
    assert s.get()[0] == "v1" and s.pin, "the first answer sets a pin"
    push(envoy, config(50))
    counts = {r: pins(envoy, r) for r in ("kept", "issued", "ignored")}   # the push's probes too
    for _ in range(3):
        version, issued = s.get()
        assert (version, issued) == ("v1", None), "the ramp step waits for the next session"
    fresh = Session(envoy, mover)
    assert fresh.get()[0] == "v2", "a new session (no pin) gets the new percent"
    assert {r: pins(envoy, r) - n for r, n in counts.items()} == {"kept": 3, "issued": 1, "ignored": 0}


def it_a_pin_is_renewed_at_half_of_idle_s_and_expires_when_idle(start_envoy):
    envoy = start_envoy(config(10), ecds=True, versions=["v1", "v2"])
    mover = user_between(1000, 5000)
    s = Session(envoy, mover)
    s.get()
    push(envoy, config(50))
    first = s.pin
    time.sleep(IDLE / 2 + 1.1)               # expiry is whole seconds: > idle_s/2 + 1 s is past half
    version, renewed = s.get()
    assert version == "v1" and renewed and renewed != first, "renewed past half of idle_s"
    time.sleep(IDLE / 2 + 1.1)               # past the first pin's expiry, within the renewed one's
    assert s.get()[0] == "v1", "renewal extended the session"
    idle = Session(envoy, mover)
    idle.pin = first                          # a pin that idled out
    version, replaced = idle.get()
    assert version == "v2" and replaced, "an expired pin is ignored: the hash decides, a new pin"


def it_another_user_s_pin_or_a_forged_one_is_ignored(start_envoy):
    envoy = start_envoy(config(10), versions=["v1", "v2"])
    gray = user_between(0, 1000)
    stable = user_between(5000, 10000)
    g = Session(envoy, gray)
    assert g.get()[0] == "v2"
    thief = Session(envoy, stable)
    thief.pin = g.pin                         # a gray user's pin, sent by another user
    assert thief.get()[0] == "v1"
    forger = Session(envoy, stable)
    forger.pin = re.sub(r":[0-9a-f]{64}$", ":" + "0" * 64, g.pin)   # a MAC made up
    assert forger.get()[0] == "v1"
    edited = Session(envoy, gray)
    edited.pin = g.pin.replace(":v2:", ":v1:")
    assert edited.get()[0] == "v2", "an edited pin does not verify: the hash decides"
    assert pins(envoy, "ignored") == 3


@pytest.mark.parametrize("rollback", ["percent 0", "enabled false", "version gone"])
def it_a_rollback_ignores_pins_at_once(start_envoy, rollback):
    envoy = start_envoy(config(10), ecds=True, versions=["v1", "v2", "v3"])
    gray = user_between(0, 1000)
    s = Session(envoy, gray)
    assert s.get()[0] == "v2"
    cfg = {"percent 0": config(0), "enabled false": config(10, enabled=False),
           "version gone": plugin_config([{"name": "ramp", "salt": SALT, "split": [
               {"version": "v3", "percent": 10}]}], session_pin=PIN)}[rollback]
    push(envoy, cfg)
    want = "v3" if rollback == "version gone" else "v1"
    assert s.get()[0] == want, f"{rollback}: the pin to v2 no longer holds"


def it_a_tripped_guard_ignores_pins_to_its_version(start_envoy):
    from upstream import Apps
    apps = Apps(["v1", "v2"])
    try:
        guard = {"max_error_percent": 10, "min_requests": 10, "window_s": 10}
        envoy = start_envoy(config(10, guard=guard), upstreams=apps.ports)
        gray = user_between(0, 1000)
        s = Session(envoy, gray)
        assert s.get()[0] == "v2"
        apps["v2"].status = 503
        with Conn(envoy.port) as c:
            for i in range(30):
                c.get("/", [("x-user-id", harness.user_in(SALT, 0, 1000, prefix=f"t{i}-"))])
        wait_until(lambda: harness.tripped(envoy, "v2"), 10, "the trip")
        apps["v2"].status = 200
        # Every worker learns of the trip within two ticks.
        harness.wait_on_every_worker(envoy, [("x-user-id", gray), ("cookie", f"gp={s.pin}")],
                                     lambda r: r.header("x-app-version") == "v1",
                                     "a pin to the tripped version is ignored")
    finally:
        apps.close()
