"""Session pins (DESIGN.md "Session pins" and "v2 corrections"): a conversation stays on its
version across ramp steps until its session idles out or reaches `max_s`; a pin is renewed at
half of idle_s; another user's pin, a forged one, an expired one or one in another spelling is
ignored and replaced; a rollback ignores pins at once; a pin to stable is void at 100 %; each
split rule keeps its own pin cookie (`<cookie>.<rule>`); pins of the v2 format still verify
until they expire.

Every pin Envoy issues is checked with tests/pins.py, an oracle that signs and verifies pins
with hmac/hashlib from the format alone."""

from __future__ import annotations

import http.cookiejar
import math
import re
import time
import urllib.request
from dataclasses import dataclass

import pytest

import harness
import pins as oracle
from harness import Conn, bucket, plugin_config, wait_until

SALT = "pins"
IDLE = 10
KEY = "k" * 40
PIN = {"cookie": "gp", "idle_s": IDLE, "key": KEY}
COOKIE = "gp.ramp"     # <session_pin.cookie>.<rule>
PIN_RE = re.compile(r"^gp\.ramp=(2:[^:;]+:\d+:\d+:[0-9a-f]{64}); Path=/; Max-Age=(\d+); HttpOnly; SameSite=Lax$")
# A cookie graysplit removes: the v2-format `gp` once its session moved to `gp.ramp`.
EXPIRED_RE = re.compile(r"^(gp(?:\.[a-z0-9_-]+)?)=[^;]*; Path=/; Max-Age=0; HttpOnly; SameSite=Lax$")


def config(percent: float, pin: dict = PIN, **rule) -> dict:
    return plugin_config([{"name": "ramp", "salt": SALT, "split": [{"version": "v2", "percent": percent}], **rule}],
                         session_pin=pin)


def user_between(lo: int, hi: int) -> str:
    return harness.user_in(SALT, lo, hi, prefix="pin-user-")


@dataclass
class Exchange:
    """One request of a Session: when it was sent and answered (time.time(), Envoy's clock),
    the version, the pin issued (its value, Max-Age and what the oracle read in it) if any, and
    the cookies the response removed."""
    sent: float
    got: float
    version: str
    issued: str | None
    max_age: int | None
    pin: oracle.Pin | None
    expired: list[str]


class Session:
    """A browser: one user, the cookies the responses set (a small jar: name -> value), sent
    back on every request. Every pin a response sets must be the oracle's: a canonical value
    that verifies under KEY for rule `ramp`, salt SALT and this user, and whose Max-Age is its
    expiry less Envoy's clock (whole seconds) when it answered, at most `idle_s`."""

    def __init__(self, envoy, user: str, idle_s: int = IDLE):
        self.envoy, self.user, self.idle_s = envoy, user, idle_s
        self.jar: dict[str, str] = {}
        self.log: list[Exchange] = []

    @property
    def pin(self) -> str | None:
        return self.jar.get(COOKIE)

    @pin.setter
    def pin(self, value: str | None) -> None:
        if value is None:
            self.jar.pop(COOKIE, None)
        else:
            self.jar[COOKIE] = value

    def get(self) -> tuple[str, str | None]:
        headers = [("x-user-id", self.user)]
        if self.jar:
            headers.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.jar.items())))
        sent = time.time()
        r = self.envoy.get("/", headers)
        got = time.time()
        assert r.status == 200, r
        issued = max_age = pin = None
        expired = []
        for c in r.all("set-cookie"):
            gone = EXPIRED_RE.match(c)
            if gone:
                expired.append(gone.group(1))
                self.jar.pop(gone.group(1), None)
                continue
            m = PIN_RE.match(c)
            assert m, f"odd Set-Cookie {c!r}"
            issued, max_age = m.group(1), int(m.group(2))
            pin = oracle.verify(issued, KEY, "ramp", SALT, self.user)
            assert pin, f"the oracle does not verify the pin Envoy issued: {issued!r}"
            now_s = pin.expires - max_age
            assert math.floor(sent) <= now_s <= math.floor(got), \
                f"Max-Age {max_age} is not expires {pin.expires} - now ({sent:.3f}..{got:.3f})"
            assert 0 < max_age <= self.idle_s, c
            assert pin.version == r.text, f"a pin to {pin.version} on a {r.text} answer"
            self.pin = issued
        self.log.append(Exchange(sent, got, r.text, issued, max_age, pin, expired))
        return r.text, issued


push = harness.push_everywhere   # waits until every worker serves the pushed config


def pins(envoy, result: str) -> int:
    return envoy.counter(f"wasmcustom.graysplit_pins_total.result.{result}")


def pin_counts(envoy) -> dict[str, int]:
    return {r: pins(envoy, r) for r in ("kept", "issued", "ignored")}


def since(envoy, before: dict[str, int]) -> dict[str, int]:
    return {r: n - before[r] for r, n in pin_counts(envoy).items()}


def it_a_pinned_session_stays_across_a_ramp_and_a_new_session_moves(start_envoy):
    envoy = start_envoy(config(10), ecds=True, versions=["v1", "v2"])
    mover = user_between(1000, 5000)         # stable at 10%, gray at 50%
    s = Session(envoy, mover)
    assert s.get()[0] == "v1" and s.pin, "the first answer sets a pin"
    push(envoy, config(50))
    counts = pin_counts(envoy)   # after the push's probes
    for _ in range(3):
        version, issued = s.get()
        assert (version, issued) == ("v1", None), "the ramp step waits for the next session"
    fresh = Session(envoy, mover)
    assert fresh.get()[0] == "v2", "a new session (no pin) gets the new percent"
    assert since(envoy, counts) == {"kept": 3, "issued": 1, "ignored": 0}


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
        harness.wait_on_every_worker(envoy, [("x-user-id", gray), ("cookie", f"{COOKIE}={s.pin}")],
                                     lambda r: r.header("x-app-version") == "v1",
                                     "a pin to the tripped version is ignored")
    finally:
        apps.close()


# --------------------------------------------------------------------------- v2 corrections

LONG = {**PIN, "idle_s": 600}    # sessions that need no renewal while a test runs


def it_a_pin_to_stable_is_void_once_the_split_reaches_100_percent(start_envoy):
    """A pin to stable holds only while the split still gives stable to somebody: a user pinned
    to stable at 10 % goes to gray on the first request after the push to 100 % (the pin is
    counted ignored and replaced by a pin to gray), and stays there. (v2 kept such a user on
    stable for as long as the session lasted, with nobody else on stable.)"""
    envoy = start_envoy(config(10, pin=LONG), ecds=True, versions=["v1", "v2"])
    user = user_between(1000, 10000)
    s = Session(envoy, user, idle_s=600)
    assert s.get()[0] == "v1" and s.pin, "pinned to stable at 10 %"
    push(envoy, config(99.99, pin=LONG))
    assert s.get() == ("v1", None), "below 100 % the pin to stable holds (bucket >= 1000)"
    push(envoy, config(100, pin=LONG))
    counts = pin_counts(envoy)
    version, issued = s.get()
    assert version == "v2", "at 100 % a pin to stable is ignored"
    assert issued and s.log[-1].pin.version == "v2", "and replaced by a pin to gray"
    assert since(envoy, counts) == {"kept": 0, "issued": 1, "ignored": 1}
    assert s.get() == ("v2", None), "the new pin holds"


def it_max_s_ends_an_active_session_s_pin(start_envoy):
    """`session_pin.max_s` ends a session however active it is. idle_s 10, max_s 12: a user
    pinned to stable at 10 %, the split pushed to 50 % (the hash now gives gray), requests
    every 2.5 s (each gap well under idle_s, so the session never idles out). Until
    began + max_s the pin keeps stable; it is renewed past half of idle_s with the same `began`
    and an expiry, hence a Max-Age, that never reaches past began + max_s; from began + max_s
    on, the pin is ignored (counted once), the hash decides (gray) and a new session begins
    (a new `began`, a full idle_s). Every pin is read and verified by the oracle."""
    max_s = 12
    pin_cfg = {**PIN, "max_s": max_s}
    envoy = start_envoy(config(10, pin=pin_cfg), ecds=True, versions=["v1", "v2"])
    user = user_between(1000, 5000)          # stable at 10 %, gray at 50 %
    s = Session(envoy, user)
    assert s.get()[0] == "v1"
    first = s.log[-1].pin
    began = first.began
    assert first.expires == began + IDLE and s.log[-1].max_age == IDLE, first
    push(envoy, config(50, pin=pin_cfg))
    counts = pin_counts(envoy)
    start = len(s.log)
    for _ in range(12):                       # bounded: about 30 s at most
        time.sleep(2.5)
        s.get()
        last = s.log[-1]
        if math.floor(last.sent) >= began + max_s + 3:
            break
    run = s.log[start:]
    assert math.floor(run[-1].sent) >= began + max_s, "the session ran past began + max_s"
    assert all(b.sent - a.got < IDLE - 2 for a, b in zip(s.log, s.log[1:])), \
        "the session stayed active (gaps under idle_s)"
    before = [x for x in run if math.floor(x.got) < began + max_s]
    after = [x for x in run if math.floor(x.sent) >= began + max_s]
    assert before and after
    assert all(x.version == "v1" for x in before), \
        [(x.sent - began, x.version) for x in before]
    renewals = [x for x in before if x.issued]
    assert renewals, "the pin was renewed before began + max_s"
    expiry = first.expires
    for x in renewals:
        assert x.pin.version == "v1" and x.pin.began == began, \
            f"a renewal keeps the session's start: {x.pin} (began {began})"
        assert expiry < x.pin.expires <= began + max_s, \
            f"renewed to {x.pin.expires - began} s after began (max_s {max_s}, last {expiry - began})"
        assert x.pin.expires - x.max_age >= math.floor(x.sent) and x.max_age < IDLE, \
            "Max-Age ends at began + max_s, before idle_s"
        expiry = x.pin.expires
    assert expiry == began + max_s, "the last renewal ends at began + max_s"
    assert all(x.version == "v2" for x in after), \
        [(x.sent - began, x.version) for x in after]
    moved = next(x for x in run if x.version == "v2")
    assert moved.issued and moved.pin.began >= began + max_s and moved.pin.version == "v2", \
        "past began + max_s a new session begins, pinned to what the hash gives"
    assert moved.max_age == IDLE
    # Every other request of the run was kept by a pin (the old session's, then the new one's).
    assert since(envoy, counts) == {"kept": len(run) - 1, "issued": sum(1 for x in run if x.issued),
                                  "ignored": 1}


# Two split rules on different paths, one browser.
SALT_A, SALT_B = "pins-a", "pins-b"


def two_rules(pa: float, pb: float, idle_s: int = 600) -> dict:
    return plugin_config([
        {"name": "a", "salt": SALT_A, "when": {"path_prefix": "/a/"}, "split": [{"version": "v2", "percent": pa}]},
        {"name": "b", "salt": SALT_B, "when": {"path_prefix": "/b/"}, "split": [{"version": "v3", "percent": pb}]},
    ], session_pin={**PIN, "idle_s": idle_s})


class Browser:
    """A real cookie jar (http.cookiejar via urllib) on one Envoy, for one user: the Cookie
    header each request carried, the Set-Cookie headers each response had."""

    def __init__(self, envoy, user: str):
        self.envoy, self.user = envoy, user
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(   # no proxy from the environment: 127.0.0.1 only
            urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(self.jar))
        self.sent_cookies: list[str] = []

    def cookies(self) -> dict[str, str]:
        return {c.name: c.value for c in self.jar}

    def get(self, path: str) -> tuple[str, list[str]]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.envoy.port}{path}",
                                     headers={"x-user-id": self.user})
        with self.opener.open(req, timeout=10) as r:
            assert r.status == 200
            body = r.read().decode()
            set_cookies = r.headers.get_all("set-cookie") or []
        self.sent_cookies.append(req.get_header("Cookie") or "")
        return body, set_cookies


def names_set(set_cookies: list[str]) -> set[str]:
    return {c.split("=", 1)[0] for c in set_cookies}


def it_two_split_rules_keep_independent_pins_in_one_cookie_jar(start_envoy):
    """Several split rules keep independent pins: rules `a` (/a/) and `b` (/b/), each with its
    own split, one browser cookie jar (http.cookiejar) for a user on stable in both at 10 %.
    Requests alternate between the two rules across two ramp steps (10 -> 40 -> 80 %, where the
    hash gives that user gray in both): each rule's pin keeps stable; a request decided by `a`
    sets only `gp.a` and never changes `gp.b` (and the other way round); the jar never sends
    more than 4096 bytes of cookies. A fresh jar afterwards gets gray from both (the ramps were
    real). (v2 had one pin cookie for all rules: each rule's request replaced the other's pin,
    so after a ramp step the other rule's session moved.)"""
    envoy = start_envoy(two_rules(10, 10), ecds=True, versions=["v1", "v2", "v3"])
    user = next(u for u in (f"jar-user-{i}" for i in range(100000))
                if 1000 <= bucket(SALT_A, u) < 4000 and 1000 <= bucket(SALT_B, u) < 4000)
    b = Browser(envoy, user)
    own = {"/a/": "gp.a", "/b/": "gp.b"}
    other = {"/a/": "gp.b", "/b/": "gp.a"}

    def visit(path: str) -> str:
        before = b.cookies()
        version, set_cookies = b.get(path + "page")
        assert names_set(set_cookies) <= {own[path]}, \
            f"a request decided by rule {own[path][3:]} set {set_cookies}"
        assert b.cookies().get(other[path]) == before.get(other[path]), \
            f"{path}: the other rule's pin changed"
        assert b.cookies().get(own[path]), f"{path}: no pin of its own"
        return version

    assert [visit(p) for p in ("/a/", "/b/", "/a/", "/b/")] == ["v1"] * 4
    pins_before = b.cookies()
    for step in (40, 80):
        push(envoy, two_rules(step, step))
        assert [visit(p) for p in ("/b/", "/a/", "/a/", "/b/", "/a/")] == ["v1"] * 5, \
            f"at {step} %, each rule's session keeps its version"
    assert b.cookies() == pins_before, "nothing needed renewing: the same two pins throughout"
    assert set(pins_before) == {"gp.a", "gp.b"}
    for name, rule, salt in (("gp.a", "a", SALT_A), ("gp.b", "b", SALT_B)):
        pin = oracle.verify(pins_before[name], KEY, rule, salt, user)
        assert pin and pin.version == "v1", (name, pins_before[name])
    assert all(len(c.encode()) <= 4096 for c in b.sent_cookies), max(map(len, b.sent_cookies))
    assert "gp.a=" in b.sent_cookies[-1] and "gp.b=" in b.sent_cookies[-1]
    fresh = Browser(envoy, user)
    assert (fresh.get("/a/x")[0], fresh.get("/b/x")[0]) == ("v2", "v3"), \
        "a new session gets the new percent of each rule"


def it_pin_cookies_stay_under_4_kib_and_the_oldest_go_first(start_envoy):
    """At most 4 KiB of pins in all: 30 split rules with 64-character names (each pin cookie
    about 160 bytes), one browser visiting each rule in turn, a quarter of a second apart (so
    the sessions begin in different seconds). Once the pins (name=value, all rules) would pass
    4096 bytes, the response expires (Max-Age=0) just enough others, the oldest by `began`
    first; otherwise it sets only its own rule's pin. The deciding rule's pin is always kept."""
    n = 30
    names = [f"r{i:02d}-" + "x" * 60 for i in range(n)]
    cfg = plugin_config([{"name": name, "when": {"path_prefix": f"/r{i:02d}/"},
                          "split": [{"version": "v2", "percent": 50}]} for i, name in enumerate(names)],
                        session_pin={**PIN, "idle_s": 600})
    envoy = start_envoy(cfg, versions=["v1", "v2"])
    b = Browser(envoy, "many-rules-user")

    def size(cookies: dict[str, str]) -> int:
        return sum(len(f"{k}={v}".encode()) for k, v in cookies.items())

    evicted = 0
    for i, name in enumerate(names):
        before = b.cookies()
        version, set_cookies = b.get(f"/r{i:02d}/x")
        after = b.cookies()
        mine = "gp." + name
        pin = oracle.verify(after.get(mine, ""), KEY, name, name, "many-rules-user")
        assert pin and pin.version == version, f"rule {i}: its own pin ({after.get(mine)!r})"
        gone = [k for k in before if k not in after]
        assert all(c.endswith("; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
                   for c in set_cookies if c.split("=", 1)[0] != mine), set_cookies
        assert names_set(set_cookies) == {mine, *gone}, "only its own pin, and the expired ones"
        assert size(after) <= 4096, f"rule {i}: {size(after)} bytes of pins"
        others = {k: v for k, v in before.items() if k != mine}
        if size(others) + len(f"{mine}={after[mine]}") <= 4096:
            assert not gone, f"rule {i}: {gone} expired while everything fit"
        else:
            assert gone, f"rule {i}: over 4096 bytes and nothing expired"
            began = {k: oracle.parse(v).began for k, v in others.items()}
            kept = [k for k in others if k not in gone]
            assert max(began[k] for k in gone) <= min(began[k] for k in kept), \
                f"rule {i}: expired {gone} but kept older ones"
            newest = max(gone, key=began.get)
            assert size({**after, newest: before[newest]}) > 4096, \
                f"rule {i}: expired more than needed ({gone})"
            evicted += len(gone)
        time.sleep(0.25)
    assert evicted >= 3, "the test reached the limit"
    # What the browser sent: at most 4096 bytes of name=value pairs (plus the "; " between them).
    assert all(sum(len(p.encode()) for p in c.split("; ") if p) <= 4096 for c in b.sent_cookies)


def it_a_pin_in_another_spelling_is_not_a_pin(start_envoy):
    """A pin verifies only in its canonical spelling: a valid pin (stable, kept at 50 % while the
    hash gives gray) re-spelt with upper-case hex, one upper-case hex digit, `+` before a number
    or a leading zero is not a pin: the hash decides (gray), it is counted ignored, and a new
    canonical pin is issued. The original spelling still holds (so only the spelling
    changed)."""
    envoy = start_envoy(config(10, pin=LONG), ecds=True, versions=["v1", "v2"])
    user = user_between(1000, 5000)
    s = Session(envoy, user, idle_s=600)
    assert s.get()[0] == "v1"
    valid = s.pin
    p = oracle.parse(valid)
    push(envoy, config(50, pin=LONG))
    assert s.get() == ("v1", None), "the canonical pin holds"
    first_letter = next(i for i, ch in enumerate(p.mac) if ch in "abcdef")
    spellings = {
        "upper-case hex": f"2:v1:{p.began}:{p.expires}:{p.mac.upper()}",
        "one upper-case digit": f"2:v1:{p.began}:{p.expires}:" + p.mac[:first_letter]
                                + p.mac[first_letter].upper() + p.mac[first_letter + 1:],
        "+began": f"2:v1:+{p.began}:{p.expires}:{p.mac}",
        "+expires": f"2:v1:{p.began}:+{p.expires}:{p.mac}",
        "0began": f"2:v1:0{p.began}:{p.expires}:{p.mac}",
        "0expires": f"2:v1:{p.began}:0{p.expires}:{p.mac}",
        "+format": f"+2:v1:{p.began}:{p.expires}:{p.mac}",
        "02 format": f"02:v1:{p.began}:{p.expires}:{p.mac}",
    }
    for what, value in spellings.items():
        assert value != valid
        odd = Session(envoy, user, idle_s=600)
        odd.pin = value
        counts = pin_counts(envoy)
        version, issued = odd.get()
        assert version == "v2", f"{what}: {value!r} was taken as a pin"
        assert issued and oracle.parse(issued) and odd.log[-1].pin.version == "v2", \
            f"{what}: a new canonical pin"
        assert since(envoy, counts) == {"kept": 0, "issued": 1, "ignored": 1}, what
    assert s.get() == ("v1", None), "the canonical spelling still holds"


def it_a_v2_format_pin_verifies_until_it_expires(start_envoy):
    """Pins issued in the v2 format (cookie `gp`, value `1:ramp:<version>:<expires>:<mac>`),
    forged here with the oracle and the config's key, keep verifying until they expire, as
    sessions that began idle_s before their expiry. A pin to gray for a user the hash puts on
    stable holds (counted kept; if it is re-issued in the new format before half of idle_s,
    then as the same session and expiry); one with less than half left is renewed in the new format (`gp.ramp`, began = its expiry - idle_s)
    and the old `gp` cookie is expired; a v2 pin naming another rule is left alone; once the
    first pin's expiry passed, the hash decides (stable), it is counted ignored and replaced,
    and `gp` is expired."""
    envoy = start_envoy(config(10), versions=["v1", "v2"])
    user = user_between(5000, 10000)          # stable by the hash at 10 %

    def old_pin(expires: int, rule: str = "ramp") -> str:
        return oracle.sign_v2(KEY, rule, "v2", expires, SALT, user)

    def get(cookie: str) -> tuple[harness.Resp, float]:
        sent = time.time()
        return envoy.get("/", [("x-user-id", user), ("cookie", cookie)]), sent

    expires = int(time.time()) + IDLE
    counts = pin_counts(envoy)
    r, _ = get(f"gp={old_pin(expires)}")
    assert (r.status, r.text) == (200, "v2"), r
    if r.all("set-cookie"):
        # The spec renews (re-issues in the new format) at half of idle_s, like any pin; the
        # filter may also re-issue it at once, but then as the same session (the same began
        # and expiry, the same version), and expire `gp`.
        cookies = {c.split("=", 1)[0]: c for c in r.all("set-cookie")}
        assert set(cookies) == {"gp", COOKIE} and EXPIRED_RE.match(cookies["gp"]), r.all("set-cookie")
        m = PIN_RE.match(cookies[COOKIE])
        same = oracle.verify(m.group(1), KEY, "ramp", SALT, user) if m else None
        assert same == oracle.Pin("v2", expires - IDLE, expires, same.mac if same else ""), \
            f"the v2 pin re-issued as another session: {cookies[COOKIE]}"
        assert since(envoy, counts) == {"kept": 1, "issued": 1, "ignored": 0}
    else:
        assert since(envoy, counts) == {"kept": 1, "issued": 0, "ignored": 0}

    soon = int(time.time()) + 3               # less than half of idle_s left
    counts = pin_counts(envoy)
    r, sent = get(f"gp={old_pin(soon)}")
    assert r.text == "v2", "kept"
    cookies = {c.split("=", 1)[0]: c for c in r.all("set-cookie")}
    assert set(cookies) == {"gp", COOKIE}, r.all("set-cookie")
    assert EXPIRED_RE.match(cookies["gp"]), cookies["gp"]
    m = PIN_RE.match(cookies[COOKIE])
    assert m, cookies[COOKIE]
    renewed = oracle.verify(m.group(1), KEY, "ramp", SALT, user)
    assert renewed and renewed.version == "v2" and renewed.began == soon - IDLE, \
        f"renewed as a session that began idle_s before its expiry: {renewed}"
    assert int(m.group(2)) == IDLE and renewed.expires >= math.floor(sent) + IDLE, cookies[COOKIE]
    assert since(envoy, counts)["kept"] == 1 and since(envoy, counts)["ignored"] == 0

    r, _ = get(f"gp={old_pin(expires, rule='other')}")
    assert r.text == "v1", "a pin of another rule does not decide this one"
    assert [c.split("=", 1)[0] for c in r.all("set-cookie")] == [COOKIE], \
        "the old cookie names another rule: it stays"

    wait_until(lambda: time.time() >= expires + 0.05, IDLE + 2, "the v2 pin's expiry")
    counts = pin_counts(envoy)
    r, _ = get(f"gp={old_pin(expires)}")
    assert r.text == "v1", "expired: the hash decides"
    cookies = {c.split("=", 1)[0]: c for c in r.all("set-cookie")}
    assert set(cookies) == {"gp", COOKIE} and EXPIRED_RE.match(cookies["gp"]), r.all("set-cookie")
    new = oracle.verify(PIN_RE.match(cookies[COOKIE]).group(1), KEY, "ramp", SALT, user)
    assert new and new.version == "v1"
    assert since(envoy, counts) == {"kept": 0, "issued": 1, "ignored": 1}
