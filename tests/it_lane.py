"""Lanes (DESIGN.md "Lanes: the decision follows the request through the mesh"; issue 19) through
real Envoys: an edge (`lane.mode: "edge"`) writes its decision, whoever made it (a rule, a
trusted override, the default), into the request's W3C `baggage` as a signed member, and a hop
inside the mesh (`"follow"`) sends the request where a member that verifies says, although its
own rules say otherwise, and removes and counts any member it does not believe.

The independent oracles: the member's bytes and its HMAC-SHA256 are recomputed in this file with
Python's hmac/hashlib/base64 and urllib's percent-encoding, and compared byte for byte with what
the apps behind Envoy received; expiries are bounded by this process's clock read before and
after each request; who is gray at each hop comes from an independent murmur3 (mmh3,
harness.bucket); what every other baggage member must look like is written out by hand.

The path through an application (issue item 3): edge Envoy -> a WSGI service instrumented with
the OpenTelemetry SDK (tests/otel_app.py: `OpenTelemetryMiddleware`, `RequestsInstrumentor`,
default propagators), which copies no header by hand -> follow Envoy, whose own split (another
salt) disagrees with the edge's for about half the users -> apps v1 / v2 recording what they got.
OpenTelemetry Python re-sends our member with `;` and `=` percent-encoded into its value; the
follower must take it in that spelling too.

Counters are compared as deltas over one request or one test (the module shares its Envoys):
every `graysplit_lane_total.result.<r>` that moved, and by how much.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import urllib.parse

import pytest

import harness
from harness import Conn, expected_split, plugin_config, wait_until
from otel_app import OtelService
from upstream import App

KEY = "the mesh's lane key: 32 characters at the very least"
OLD_KEY = "last week's lane key, still verified for a while"
RETIRED_KEY = "a lane key nobody verifies with any more (retired)"
FOREIGN_KEY = "someone else's key, long enough to be a real key"
EDGE_SALT = "lane-edge"
FOLLOW_SALT = "lane-follow"        # the follower's own split: another salt, another cohort
OVERRIDE = {"header": "x-gray-release", "trusted_cidrs": ["127.0.0.1/32"]}
RESULTS = ("issued", "followed", "forged", "expired", "untrusted", "absent", "too_long")
TTL_DEFAULT = 300
MAX = 8192

EDGE_RULES = [
    {"name": "beta", "when": {"headers": [{"name": "x-beta", "exact": "1"}]}, "version": "v2"},
    # A request with `x-no-ramp` is decided by no rule: the default.
    {"name": "ramp", "salt": EDGE_SALT, "when": {"headers": [{"name": "x-no-ramp", "present": False}]},
     "split": [{"version": "v2", "percent": 50}]},
]
FOLLOW_RULES = [{"name": "ramp", "salt": FOLLOW_SALT, "split": [{"version": "v2", "percent": 50}]}]

EDGE = plugin_config(EDGE_RULES, override=OVERRIDE, lane={"mode": "edge", "key": KEY})
# Before the rotation: the edge signed with OLD_KEY (and a short ttl, to see ttl_s used).
OLD_EDGE = plugin_config(EDGE_RULES, override=OVERRIDE, lane={"mode": "edge", "key": OLD_KEY, "ttl_s": 10})
FOLLOW = plugin_config(FOLLOW_RULES, override=OVERRIDE,
                       lane={"mode": "follow", "key": KEY, "previous_keys": [OLD_KEY]})
# Takes lanes only from 10.0.0.0/8 (a config value: no traffic goes there) and 127.0.0.2.
STRICT = plugin_config(FOLLOW_RULES, lane={"mode": "follow", "key": KEY,
                                           "trusted_cidrs": ["10.0.0.0/8", "127.0.0.2/32"]})


# --------------------------------------------------------------------------- the oracle

def pct(name: str) -> str:
    """W3C baggage percent-encoding as DESIGN says: RFC 3986 unreserved bytes as they are,
    every other byte %XX (urllib writes upper-case hex)."""
    return urllib.parse.quote(name, safe="")


def member(version: str, rule: str, e: int, key: str = KEY, bkey: str = "graysplit") -> str:
    """`<bkey>=<version>;r=<rule>;e=<e>;s=<sig>`, sig = base64url, unpadded, of HMAC-SHA256
    under `key` of the bytes before `;s=`."""
    head = f"{bkey}={pct(version)};r={pct(rule)};e={e}"
    tag = hmac.new(key.encode(), head.encode(), hashlib.sha256).digest()
    return f"{head};s={base64.urlsafe_b64encode(tag).rstrip(b'=').decode()}"


def sdk_spelling(m: str) -> str:
    """What OpenTelemetry Python sends on for member `m`: its value (after the first `=`)
    with `;` and `=` percent-encoded (written out here, not asked of the SDK)."""
    k, _, v = m.partition("=")
    return k + "=" + v.replace(";", "%3B").replace("=", "%3D")


OURS = re.compile(r"graysplit=([A-Za-z0-9._~%-]*);r=([A-Za-z0-9._~%-]*);e=([0-9]+);s=([A-Za-z0-9_-]{43})")


def issued_expiry(header: str) -> int:
    """The expiry of the one member of ours at the end of `header`."""
    ms = OURS.findall(header)
    assert len(ms) == 1, f"not exactly one member of ours in {header!r}"
    return int(ms[0][2])


class Clock:
    """The Unix seconds an Envoy may have read while this block ran: [lo, hi]."""

    def __enter__(self) -> "Clock":
        self.lo = int(time.time())
        return self

    def __exit__(self, *exc) -> None:
        self.hi = int(time.time())

    def expiry_ok(self, e: int, ttl: int) -> bool:
        return self.lo + ttl <= e <= self.hi + ttl


def now_s() -> int:
    return int(time.time())


def edge_version(user: str) -> str:
    return expected_split(EDGE_SALT, user, [("v2", 50)], "v1")


def follow_version(user: str) -> str:
    return expected_split(FOLLOW_SALT, user, [("v2", 50)], "v1")


USERS = [f"lane-user-{i}" for i in range(400)]


def users(edge: str | None = None, follow: str | None = None, n: int = 1) -> list[str]:
    """`n` users the edge's split puts on `edge` and the follower's own split on `follow`."""
    out = [u for u in USERS if (edge is None or edge_version(u) == edge)
           and (follow is None or follow_version(u) == follow)][:n]
    assert len(out) == n, (edge, follow, n)
    return out


def other(version: str) -> str:
    return {"v1": "v2", "v2": "v1"}[version]


# --------------------------------------------------------------------------- apps and Envoys

class Recorder(App):
    """A version's app (tests/upstream.py) that keeps, by request path (without the query),
    every request's headers as they arrived, in order, repeated ones kept apart."""

    def __init__(self, version: str):
        super().__init__(version)
        self.got: dict[str, list[list[tuple[str, str]]]] = {}

    def respond(self, h, body: bytes) -> None:
        with self.records_lock:
            self.got.setdefault(h.path.split("?")[0], []).append(
                [(k.lower(), v) for k, v in h.headers.items()])
        super().respond(h, body)


class Seen:
    """What one app received for one request."""

    def __init__(self, version: str, headers: list[tuple[str, str]]):
        self.version = version
        self.headers = headers

    @property
    def baggage(self) -> list[str]:
        return [v for k, v in self.headers if k == "baggage"]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def __repr__(self) -> str:
        return f"Seen({self.version}, baggage={self.baggage})"


_tags = iter(range(10**9))


def new_tag(what: str) -> str:
    return f"{what}-{next(_tags)}"


@pytest.fixture(scope="module")
def apps():
    a = {"v1": Recorder("v1"), "v2": Recorder("v2")}
    yield a
    for x in a.values():
        x.close()


def seen(apps, tag: str) -> Seen:
    """The one request with path /<tag> that reached an app (fails if none or several did)."""
    found = [(v, hs) for v, a in apps.items() for hs in a.got.get(f"/{tag}", [])]
    assert len(found) == 1, f"/{tag} reached the apps {len(found)} times: {found}"
    return Seen(*found[0])


@pytest.fixture(scope="module")
def services():
    """The instrumented service, one per version of the edge's decision (api-v1, api-v2), each
    calling the follower (tests point them at another one as they need)."""
    s = {v: OtelService(f"api-{v}") for v in ("v1", "v2")}
    yield s
    for x in s.values():
        x.close()


def _launch(tmp_path_factory, request, name: str, config: dict, upstreams: dict[str, int]) -> harness.Envoy:
    d = tmp_path_factory.mktemp(name)
    doc = harness.bootstrap(config, access_log=d / "access.log", upstreams=upstreams)
    e = harness.Envoy(d, doc).launch()
    request.addfinalizer(e.stop)
    return e


@pytest.fixture(scope="module")
def mesh(request, tmp_path_factory, apps, services):
    """Every Envoy of the module, by name:
    edge      EDGE in front of the apps (what an edge writes, byte for byte)
    edge_app  EDGE in front of the instrumented services (the path through an application)
    old_edge  OLD_EDGE in front of the apps (an edge before the key rotation)
    follow    FOLLOW in front of the apps (what the services call)
    strict    STRICT in front of the apps"""
    ports = {v: a.port for v, a in apps.items()}
    m = {
        "edge": _launch(tmp_path_factory, request, "edge", EDGE, ports),
        "edge_app": _launch(tmp_path_factory, request, "edge_app", EDGE,
                            {v: s.port for v, s in services.items()}),
        "old_edge": _launch(tmp_path_factory, request, "old_edge", OLD_EDGE, ports),
        "follow": _launch(tmp_path_factory, request, "follow", FOLLOW, ports),
        "strict": _launch(tmp_path_factory, request, "strict", STRICT, ports),
    }
    for s in services.values():
        s.next_port = m["follow"].port
    return m


def lanes(envoy) -> dict[str, int]:
    s = envoy.stats(r"^wasmcustom\.graysplit_lane_total\.")
    return {r: s.get(f"wasmcustom.graysplit_lane_total.result.{r}", 0) for r in RESULTS}


def lane_delta(envoy, before: dict[str, int]) -> dict[str, int]:
    after = lanes(envoy)
    return {r: after[r] - before[r] for r in RESULTS if after[r] != before[r]}


def decisions(envoy, rule: str) -> dict[str, int]:
    prefix = f"wasmcustom.graysplit_decisions_total.rule.{rule}.version."
    s = envoy.stats("^" + re.escape(prefix))
    return {v: s.get(prefix + v, 0) for v in ("v1", "v2")}


def send(to, tag: str, headers=(), source: str | None = None, query: str = "") -> harness.Resp:
    """GET /<tag><query> on a new connection to `to` (an Envoy, or a port), from `source` (a
    loopback address) when given."""
    with Conn(to if isinstance(to, int) else to.port, source=source) as c:
        return c.get(f"/{tag}{query}", [*headers])


# --------------------------------------------------------------------------- through an application

def it_keeps_gray_users_on_gray_through_an_opentelemetry_instrumented_service(mesh, apps, services):
    """Issue 19 item 3. Each user asks the edge; the edge's split sends them to api-v1 or api-v2
    (the instrumented service), which calls the follower with `requests` and copies nothing:
    the follower sends them on to the same version although its own split (another salt) says
    the other one for half of them, counts `followed`, and decides under rule `lane`. What the
    second hop's app got is the edge's member in OpenTelemetry's spelling, after the client's
    own member, with a trace context (the SDK really carried it)."""
    edge, follow = mesh["edge_app"], mesh["follow"]
    chosen = [u for e in ("v1", "v2") for f in ("v1", "v2") for u in users(e, f, n=3)]
    assert {(edge_version(u), follow_version(u)) for u in chosen} == \
        {("v1", "v1"), ("v1", "v2"), ("v2", "v1"), ("v2", "v2")}
    e0, f0, d0 = lanes(edge), lanes(follow), decisions(follow, "lane")
    calls0 = {v: s.calls for v, s in services.items()}
    for u in chosen:
        want = edge_version(u)
        tag = new_tag("app")
        with Clock() as clock:
            r = send(edge, tag, [("x-user-id", u), ("baggage", "tenant=acme")], query=f"?uid={u}")
        assert r.status == 200, r
        assert r.header("x-service") == f"api-{want}", (u, r)
        assert r.text == want and r.header("x-next-version") == want, \
            f"{u}: gray at the edge {want}, the second hop served {r.text} " \
            f"(its own split says {follow_version(u)})"
        got = seen(apps, tag)
        assert got.version == want
        assert got.header("x-graysplit-version") == want
        assert got.header("traceparent"), f"no trace context: not through the SDK? {got.headers}"
        (bag,) = got.baggage
        e = int(re.search(r"%3Be%3D([0-9]+)%3B", bag).group(1))
        assert clock.expiry_ok(e, TTL_DEFAULT), (e, clock.lo, clock.hi)
        assert bag == "tenant=acme," + sdk_spelling(member(want, "ramp", e)), \
            f"{u}: the second hop got {bag!r}"
    n_gray = sum(edge_version(u) == "v2" for u in chosen)
    assert lane_delta(edge, e0) == {"issued": len(chosen)}
    assert lane_delta(follow, f0) == {"followed": len(chosen)}
    d1 = decisions(follow, "lane")
    assert (d1["v1"] - d0["v1"], d1["v2"] - d0["v2"]) == (len(chosen) - n_gray, n_gray)
    assert {v: s.calls - calls0[v] for v, s in services.items()} == \
        {"v1": len(chosen) - n_gray, "v2": n_gray}

    # The same users straight at the follower, with no lane: its own rules decide (they do
    # disagree), counted `absent`.
    f0 = lanes(follow)
    for u in chosen:
        r = send(follow, new_tag("nolane"), [("x-user-id", u)])
        assert r.header("x-app-version") == follow_version(u), (u, r)
    assert lane_delta(follow, f0) == {"absent": len(chosen)}


def it_logs_followed_decisions_under_rule_lane(mesh, apps):
    """DESIGN: rule `lane` in metrics and logs: the follower's access log (the filter state
    `wasm.graysplit_rule`) says rule=lane for a followed request, its rule for the rest."""
    edge, follow = mesh["edge"], mesh["follow"]
    u = users("v2", "v1")[0]
    tag = new_tag("issue")
    send(edge, tag, [("x-user-id", u)])
    (bag,) = seen(apps, tag).baggage
    lane_tag, rule_tag = new_tag("log-lane"), new_tag("log-rule")
    assert send(follow, lane_tag, [("x-user-id", u), ("baggage", bag)]).header("x-app-version") == "v2"
    assert send(follow, rule_tag, [("x-user-id", u)]).header("x-app-version") == "v1"

    def line(tag):
        text = follow.access_log.read_text() if follow.access_log.exists() else ""
        return next((x for x in text.splitlines() if f" /{tag} " in x), None)
    assert " version=v2 rule=lane " in wait_until(lambda: line(lane_tag), 10, "the access log")
    assert " version=v1 rule=ramp " in wait_until(lambda: line(rule_tag), 10, "the access log")


BEHIND_THE_SERVICE = ["version altered", "expiry altered", "signature altered",
                      "foreign key", "expired", "untrusted source"]


@pytest.mark.parametrize("case", BEHIND_THE_SERVICE)
def it_refuses_bad_lanes_behind_the_instrumented_service(mesh, apps, services, case):
    """Issue 19 item 3's refusals, at the second hop: a caller inside the mesh (no edge in front
    of it) sends the instrumented service a lane for gray; the SDK carries it on to the follower
    in its own spelling, which refuses it: the request goes where the follower's own rules say
    (stable), the member is removed, the client's other member kept, the reason counted."""
    u = users(follow="v1")[0]
    e = now_s() + 120
    good = member("v2", "ramp", e)
    lane, follower, result = {
        "version altered": (member("v1", "ramp", e).replace("=v1;", "=v2;"), "follow", "forged"),
        "expiry altered": (member("v2", "ramp", e - 240).replace(f";e={e - 240};", f";e={e};"),
                           "follow", "forged"),
        "signature altered": (good[:-43] + ("B" if good[-43] == "A" else "A") + good[-42:],
                              "follow", "forged"),
        "foreign key": (member("v2", "ramp", e, key=FOREIGN_KEY), "follow", "forged"),
        "expired": (member("v2", "ramp", now_s() - 60), "follow", "expired"),
        "untrusted source": (good, "strict", "untrusted"),
    }[case]
    target = mesh[follower]
    services["v1"].next_port = target.port
    try:
        before = lanes(target)
        tag = new_tag("behind")
        r = send(services["v1"].port, tag,
                 [("baggage", f"{lane},tenant=acme")], query=f"?uid={u}")
        assert r.status == 200, r
        got = seen(apps, tag)
        assert (got.version, got.baggage) == ("v1", ["tenant=acme"]), \
            f"{case}: sent {lane!r} through the SDK, the app behind the follower got {got}"
        assert lane_delta(target, before) == {result: 1}
    finally:
        services["v1"].next_port = mesh["follow"].port


# --------------------------------------------------------------------------- the edge

def it_issues_a_member_signed_as_recomputed_here_after_a_rule_decision(mesh, apps):
    """After a split (gray and stable users) and a fixed rule: exactly one `baggage` header
    whose only member is ours, `graysplit=<v>;r=<rule>;e=<now + 300>;s=<HMAC>`, byte for byte
    as recomputed here; counted `issued` each."""
    edge = mesh["edge"]
    cases = [(users("v2")[0], [], "v2", "ramp"), (users("v1")[0], [], "v1", "ramp"),
             (users("v1")[0], [("x-beta", "1")], "v2", "beta")]
    for u, extra, version, rule in cases:
        before = lanes(edge)
        tag = new_tag("rule")
        with Clock() as clock:
            r = send(edge, tag, [("x-user-id", u), *extra])
        assert r.status == 200 and r.header("x-app-version") == version, r
        got = seen(apps, tag)
        (bag,) = got.baggage
        e = issued_expiry(bag)
        assert clock.expiry_ok(e, TTL_DEFAULT), (e, clock.lo, clock.hi)
        assert bag == member(version, rule, e), f"{u} {extra}: {bag!r}"
        assert lane_delta(edge, before) == {"issued": 1}


def it_issues_a_member_after_an_override_and_after_the_default(mesh, apps):
    """A trusted override (from 127.0.0.1) is signed as rule `override`; the same header from
    127.0.0.2, outside override.trusted_cidrs, is rejected and the rules decide; a gray user's
    request that no rule matches (`x-no-ramp`) is signed as `default`, stable."""
    edge = mesh["edge"]
    stable_user = users("v1")[0]
    cases = [
        ([("x-user-id", stable_user), ("x-gray-release", "v2")], None, "v2", "override"),
        ([("x-user-id", stable_user), ("x-gray-release", "v2")], "127.0.0.2", "v1", "ramp"),
        ([("x-user-id", users("v2")[0]), ("x-no-ramp", "1")], None, "v1", "default"),
    ]
    for headers, source, version, rule in cases:
        tag = new_tag("who")
        with Clock() as clock:
            r = send(edge, tag, headers, source=source)
        assert r.header("x-app-version") == version, (headers, source, r)
        (bag,) = seen(apps, tag).baggage
        e = issued_expiry(bag)
        assert clock.expiry_ok(e, TTL_DEFAULT)
        assert bag == member(version, rule, e), (headers, source, bag)


def it_keeps_every_other_member_in_order_and_removes_the_clients_own(mesh, apps):
    """Several baggage headers, members with properties, OWS around them, empty members, a
    percent-encoded value, and members of our key the client wrote (one validly signed for
    gray, a bare key, one with a property): one header reaches the app, the other members byte
    for byte in their order joined by `,`, none of the client's members of our key, ours last,
    decided by the edge's own rules (the client's signed lane is not followed at an edge)."""
    edge = mesh["edge"]
    u = users("v1")[0]
    sent = [
        "userId=alice ; p ;q=1 ,\t" + member("v2", "ramp", now_s() + 600) + " , serverNode=DF%2028",
        "isProduction=false,,graysplit;p=1",
        "graysplit , k2=v2;prop2=x=y\t,graysplitx=1, GraySplit=kept",
    ]
    before = lanes(edge)
    tag = new_tag("others")
    with Clock() as clock:
        r = send(edge, tag, [("x-user-id", u), *(("baggage", v) for v in sent)])
    assert r.header("x-app-version") == "v1", r
    (bag,) = seen(apps, tag).baggage
    e = issued_expiry(bag)
    assert clock.expiry_ok(e, TTL_DEFAULT)
    others = "userId=alice ; p ;q=1,serverNode=DF%2028,isProduction=false," \
             "k2=v2;prop2=x=y,graysplitx=1,GraySplit=kept"
    assert bag == others + "," + member("v1", "ramp", e), bag
    assert lane_delta(edge, before) == {"issued": 1}


def _padded(total: int, member_len: int, extra_len: int = 0) -> str:
    """A client member `x=aaa…` such that it, `,` and our member (and `extra_len` more bytes of
    the client's) make `total` bytes."""
    return "x=" + "a" * (total - member_len - 1 - extra_len - len("x="))


def it_respects_the_8192_byte_limit(mesh, apps):
    """DESIGN: a baggage header that would pass 8192 bytes keeps the client's members and drops
    ours, counted `too_long`. One that comes to 8192 exactly gets ours; one byte more: the
    client's header as sent (nothing of ours to remove) — or, when it carried a member of our
    key, the client's other members without it. The upstream never sees a member of ours."""
    edge = mesh["edge"]
    u = users("v2")[0]
    ours_len = len(member("v2", "ramp", now_s() + TTL_DEFAULT))   # 10-digit expiries until 2286

    at = _padded(MAX, ours_len)
    before, tag = lanes(edge), new_tag("at-limit")
    with Clock() as clock:
        send(edge, tag, [("x-user-id", u), ("baggage", at)])
    (bag,) = seen(apps, tag).baggage
    e = issued_expiry(bag)
    assert clock.expiry_ok(e, TTL_DEFAULT)
    assert bag == at + "," + member("v2", "ramp", e) and len(bag) == MAX, len(bag)
    assert lane_delta(edge, before) == {"issued": 1}

    # One byte more, in two headers, with OWS inside: kept exactly as the client sent them.
    past = _padded(MAX + 1, ours_len, extra_len=len(",k=1 ;p"))
    sent = [past, "k=1 ;p"]
    before, tag = lanes(edge), new_tag("past-limit")
    r = send(edge, tag, [("x-user-id", u), *(("baggage", v) for v in sent)])
    assert r.header("x-app-version") == "v2", r
    got = seen(apps, tag)
    assert got.baggage == sent, [len(b) for b in got.baggage]
    assert lane_delta(edge, before) == {"too_long": 1}

    # One byte more with a member of our key from the client: the others, without it.
    past = _padded(MAX + 1, ours_len)
    before, tag = lanes(edge), new_tag("past-limit-ours")
    send(edge, tag, [("x-user-id", u), ("baggage", f"graysplit=v2;r=x;e=1;s=forged,{past}")])
    assert seen(apps, tag).baggage == [past]
    assert lane_delta(edge, before) == {"too_long": 1}


# --------------------------------------------------------------------------- the follower

def it_follows_a_lane_that_verifies_and_keeps_the_header_as_it_came(mesh, apps):
    """A member signed here with the key, for the version the follower's own rules do not give
    the user: the request goes there (rule `lane`), the baggage headers reach the app as they
    came (several, other members, OWS, ours among them), counted `followed`; also in the
    SDK's percent-encoded spelling (upper- or lower-case escapes), also from another source
    (no trusted_cidrs: any), also one second before its expiry."""
    follow = mesh["follow"]
    for want in ("v1", "v2"):
        u = users(follow=other(want))[0]
        m = member(want, "ramp", now_s() + 60)
        enc = sdk_spelling(m)
        variants = [
            (["a=1 ;p", f"b=2 , {m}\t, c=3"], None),
            ([m], "127.0.0.2"),
            ([f"k=v,{enc}"], None),
            ([enc.replace("%3B", "%3b").replace("%3D", "%3d")], None),
        ]
        for sent, source in variants:
            before, d0, tag = lanes(follow), decisions(follow, "lane"), new_tag("follow")
            r = send(follow, tag, [("x-user-id", u), *(("baggage", v) for v in sent)], source=source)
            got = seen(apps, tag)
            assert (r.header("x-app-version"), got.version) == (want, want), (sent, r)
            assert got.baggage == sent, f"kept as it came: sent {sent}, got {got.baggage}"
            assert lane_delta(follow, before) == {"followed": 1}, sent
            d1 = decisions(follow, "lane")
            assert d1[want] - d0[want] == 1, (d0, d1)

    # The last second of a lane: e = now + 1, sent and answered within one second of this
    # process's clock, so Envoy's now < e. (A request that straddles a second is sent again.)
    u = users(follow="v1")[0]
    for _ in range(20):
        t = now_s()
        m = member("v2", "ramp", t + 1)
        before, tag = lanes(follow), new_tag("last-second")
        r = send(follow, tag, [("x-user-id", u), ("baggage", m)])
        if now_s() == t:
            assert r.header("x-app-version") == "v2" and lane_delta(follow, before) == {"followed": 1}, r
            break
    else:
        pytest.fail("no request fitted within one second of the clock")


def it_follows_a_lane_signed_before_a_key_rotation(mesh, apps):
    """Key rotation: the edge before it signed with OLD_KEY (ttl_s 10: e = now + 10); the
    follower now has `key` KEY and `previous_keys` [OLD_KEY], and follows both that member and
    one the rotated edge signs with KEY; a member signed with a key it no longer lists is
    forged."""
    old_edge, edge, follow = mesh["old_edge"], mesh["edge"], mesh["follow"]
    u = users("v2", "v1")[0]
    tag = new_tag("old-edge")
    with Clock() as clock:
        send(old_edge, tag, [("x-user-id", u), ("baggage", "a=1")])
    (bag,) = seen(apps, tag).baggage
    e = issued_expiry(bag)
    assert clock.expiry_ok(e, 10), (e, clock.lo, clock.hi)
    assert bag == "a=1," + member("v2", "ramp", e, key=OLD_KEY), bag
    tag = new_tag("new-edge")
    send(edge, tag, [("x-user-id", u), ("baggage", "a=1")])
    (new_bag,) = seen(apps, tag).baggage
    assert new_bag != bag
    for sent, want, result in [(bag, "v2", "followed"), (new_bag, "v2", "followed"),
                               ("a=1," + member("v2", "ramp", now_s() + 60, key=RETIRED_KEY), "v1", "forged")]:
        before, tag = lanes(follow), new_tag("rotated")
        send(follow, tag, [("x-user-id", u), ("baggage", sent)])
        got = seen(apps, tag)
        assert got.version == want, (sent, got)
        assert got.baggage == ([sent] if result == "followed" else ["a=1"]), got
        assert lane_delta(follow, before) == {result: 1}


def _refusals() -> dict[str, tuple[list[str] | str, str]]:
    """Lanes for gray (v2) the follower must not believe: case -> (its member(s), result).
    Built at call time: the expiries are relative to now."""
    now = now_s()
    e = now + 120
    good = member("v2", "ramp", e)
    sig = good[-43:]
    return {
        "version altered": (member("v1", "ramp", e).replace("=v1;", "=v2;"), "forged"),
        "rule altered": (good.replace(";r=ramp;", ";r=beta;"), "forged"),
        "expiry extended": (member("v2", "ramp", e).replace(f";e={e};", f";e={e + 3600};"), "forged"),
        "signature altered": (good[:-43] + ("B" if sig[0] == "A" else "A") + sig[1:], "forged"),
        "signature truncated": (good[:-1], "forged"),
        "foreign key": (member("v2", "ramp", e, key=FOREIGN_KEY), "forged"),
        "unknown version": (member("v9", "ramp", e), "forged"),
        "two of ours, both valid": ([good, member("v2", "beta", e)], "forged"),
        "ours and a bare key": ([good, "graysplit"], "forged"),
        "OWS inside": (good.replace("graysplit=", "graysplit = "), "forged"),
        "another property": (good.replace(";s=", ";x=1;s="), "forged"),
        "no signature": (good[:-len(";s=") - 43], "forged"),
        "at its expiry second": (member("v2", "ramp", now), "expired"),
        "long expired": (member("v2", "ramp", now - 3600), "expired"),
        "expired, in the SDK's spelling": (sdk_spelling(member("v2", "ramp", now - 3600)), "expired"),
        "expired and altered": (member("v2", "ramp", now - 3600).replace("=v2;", "=v1;"), "forged"),
    }


@pytest.mark.parametrize("case", sorted(_refusals()))
def it_removes_and_counts_a_lane_it_does_not_believe(mesh, apps, case):
    """Each refusal: the request goes where the follower's own rules say (stable for this
    user), every member of our key is removed and the client's other members kept in order
    (joined by `,`), or the header removed when none is left; counted under its reason."""
    follow = mesh["follow"]
    lane, result = _refusals()[case]
    ours = lane if isinstance(lane, list) else [lane]
    u = users(follow="v1")[0]
    for sent, left in [([f"a=1, {ours[0]} ", *(f"{m} ,b=2;p" for m in ours[1:]), "c=3"],
                        ["a=1,b=2;p,c=3" if len(ours) > 1 else "a=1,c=3"]),
                       ([",".join(ours)], [])]:
        before, tag = lanes(follow), new_tag("refused")
        r = send(follow, tag, [("x-user-id", u), *(("baggage", v) for v in sent)])
        got = seen(apps, tag)
        assert (r.header("x-app-version"), got.version) == ("v1", "v1"), \
            f"{case}: sent {sent}, served by {got.version}"
        assert got.baggage == left, f"{case}: sent {sent}, the app got {got.baggage}"
        assert lane_delta(follow, before) == {result: 1}, f"{case}: sent {sent}"


def it_counts_no_member_of_ours_as_absent_and_leaves_the_header_alone(mesh, apps):
    """No baggage, an empty one, and members of other keys only (`graysplitx`, `GraySplit`: keys
    compare exactly): `absent`, the rules decide, the header reaches the app as sent; also at a
    follower with trusted_cidrs, from outside them (absent wherever it comes from)."""
    u = users(follow="v2")[0]
    for name, sent in [("follow", []), ("follow", [""]),
                       ("follow", ["a=1 ;p", "graysplitx=v1,GraySplit=v1;r=x", ",\t,"]),
                       ("strict", []), ("strict", ["k=1"])]:
        envoy = mesh[name]
        before, tag = lanes(envoy), new_tag("absent")
        r = send(envoy, tag, [("x-user-id", u), *(("baggage", v) for v in sent)])
        got = seen(apps, tag)
        assert got.version == "v2" and r.header("x-app-version") == "v2", (name, sent, r)
        assert got.baggage == sent, (name, sent, got)
        assert lane_delta(envoy, before) == {"absent": 1}, (name, sent)


def it_takes_lanes_only_from_trusted_cidrs(mesh, apps):
    """STRICT takes lanes from 10.0.0.0/8 and 127.0.0.2 only: a valid lane from 127.0.0.1 is
    removed (other members kept) and counted `untrusted`, the rules decide; the same lane from
    127.0.0.2 is followed."""
    strict = mesh["strict"]
    u = users(follow="v1")[0]
    m = member("v2", "ramp", now_s() + 60)
    for source, want, left, result in [(None, "v1", ["a=1,b=2"], "untrusted"),
                                       ("127.0.0.2", "v2", [f"a=1,{m},b=2"], "followed")]:
        before, tag = lanes(strict), new_tag("cidr")
        r = send(strict, tag, [("x-user-id", u), ("baggage", f"a=1,{m},b=2")], source=source)
        got = seen(apps, tag)
        assert (r.header("x-app-version"), got.version) == (want, want), (source, r)
        assert got.baggage == left, (source, got)
        assert lane_delta(strict, before) == {result: 1}, source
    before, tag = lanes(strict), new_tag("cidr-only")
    send(strict, tag, [("x-user-id", u), ("baggage", m)])
    assert seen(apps, tag).baggage == [], "the header goes when nothing is left"
    assert lane_delta(strict, before) == {"untrusted": 1}


def it_lets_a_trusted_override_beat_a_lane(mesh, apps):
    """At a follower, a trusted override decides before a lane: a valid lane for v2 and
    `x-gray-release: v1` from 127.0.0.1 go to v1, rule `override`."""
    follow = mesh["follow"]
    u = users(follow="v2")[0]
    d0 = decisions(follow, "override")
    tag = new_tag("override")
    r = send(follow, tag, [("x-user-id", u), ("x-gray-release", "v1"),
                           ("baggage", member("v2", "ramp", now_s() + 60))])
    assert r.header("x-app-version") == "v1" and seen(apps, tag).version == "v1", r
    d1 = decisions(follow, "override")
    assert (d1["v1"] - d0["v1"], d1["v2"] - d0["v2"]) == (1, 0), (d0, d1)


# --------------------------------------------------------------------------- metrics

def it_labels_the_lane_metrics_by_result_in_prometheus(mesh, apps):
    """envoy/test-bootstrap.yaml's stats tags make `result` a label of graysplit_lane_total for
    every result DESIGN lists, and `rule="lane"` one of the follower's decisions: each line's
    value is the /stats counter's."""
    edge, follow = mesh["edge"], mesh["follow"]
    u = users("v2", "v1")[0]
    tag = new_tag("prom")
    send(edge, tag, [("x-user-id", u)])
    send(edge, new_tag("prom-long"), [("x-user-id", u), ("baggage", "x=" + "a" * MAX)])
    (bag,) = seen(apps, tag).baggage
    send(follow, new_tag("prom-follow"), [("x-user-id", u), ("baggage", bag)])
    for envoy, moved in [(edge, ("issued", "too_long")), (follow, ("followed",))]:
        text = envoy.prometheus()
        counts = lanes(envoy)
        for r in RESULTS:
            line = f'graysplit_lane_total{{result="{r}"}} {counts[r]}'
            assert re.search("^" + re.escape(line) + "$", text, re.M), f"no line {line!r} in:\n{text}"
        assert all(counts[r] >= 1 for r in moved), counts
        assert "wasmcustom" not in text and "graysplit_lane_total_result" not in text
    d = decisions(follow, "lane")
    text = follow.prometheus()
    assert f'graysplit_decisions_total{{rule="lane",version="v2"}} {d["v2"]}' in text, text
    assert d["v2"] >= 1


# --------------------------------------------------------------------------- validation

LANE = {"mode": "follow", "key": KEY}


def lane_config(lane, rules=None) -> dict:
    return plugin_config(FOLLOW_RULES if rules is None else rules, lane=lane)


BAD = {
    "not-an-object": (lane_config(["follow", KEY]), r"lane", "expected an object"),
    "no-mode": (lane_config({"key": KEY}), r"lane\.mode", "required"),
    "bad-mode": (lane_config({**LANE, "mode": "both"}), r"lane\.mode", "both"),
    "no-key": (lane_config({"mode": "edge"}), r"lane\.key", "required"),
    "short-key-in-characters": (lane_config({**LANE, "key": "é" * 31}), r"lane\.key", "got 31"),
    "short-previous-key": (lane_config({**LANE, "previous_keys": [OLD_KEY, "short"]}),
                           r"lane\.previous_keys\[1\]", "got 5"),
    "previous-keys-not-a-list": (lane_config({**LANE, "previous_keys": OLD_KEY}),
                                 r"lane\.previous_keys", "expected a sequence"),
    "ttl-below": (lane_config({**LANE, "ttl_s": 9}), r"lane\.ttl_s", "got 9"),
    "ttl-above": (lane_config({**LANE, "ttl_s": 86401}), r"lane\.ttl_s", "got 86401"),
    "empty-baggage-key": (lane_config({**LANE, "baggage_key": ""}), r"lane\.baggage_key", "1 to 64"),
    "baggage-key-with-comma": (lane_config({**LANE, "baggage_key": "a,b"}), r"lane\.baggage_key", "a,b"),
    "baggage-key-65-chars": (lane_config({**LANE, "baggage_key": "k" * 65}), r"lane\.baggage_key", "1 to 64"),
    "trusted-cidrs-on-an-edge": (lane_config({"mode": "edge", "key": KEY, "trusted_cidrs": ["10.0.0.0/8"]}),
                                 r"lane\.trusted_cidrs", "follow"),
    "trusted-cidrs-empty": (lane_config({**LANE, "trusted_cidrs": []}), r"lane\.trusted_cidrs", "at least one"),
    "bad-trusted-cidr": (lane_config({**LANE, "trusted_cidrs": ["10.0.0.0/8", "10.0.0.0/33"]}),
                         r"lane\.trusted_cidrs\[1\]", "10.0.0.0/33"),
    "unknown-field": (lane_config({**LANE, "keys": [KEY]}), r"lane\.keys", "unknown field `keys`"),
    "a-rule-named-lane": (lane_config(LANE, rules=[{"name": "ok", "version": "v2"},
                                                   {"name": "lane", "version": "v2"}]),
                          r"rules\[1\]\.name", "lane"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def it_refuses_bad_lane_fields_with_their_json_paths(tmp_path, case):
    """A real Envoy refuses to start with each: one `graysplit: invalid config: <path>:
    <problem>` line, the path as DESIGN writes it."""
    from it_config import refused_at
    refused_at(tmp_path, *BAD[case])


def it_accepts_a_rule_named_lane_without_lane(start_envoy):
    """`lane` is reserved only in a config with `lane`: without it, a rule may be so named."""
    e = start_envoy(plugin_config([{"name": "lane", "version": "v2"}]))
    assert e.version("/") == "v2"


def it_signs_at_the_bounds_of_every_field(start_envoy, apps):
    """The bounds that are accepted: a key of exactly 32 characters (of two bytes each: the
    HMAC key is its UTF-8 bytes), ttl_s 86400, a 64-character baggage_key of token characters.
    The member is written under that key, signed as recomputed here; a client's `graysplit`
    member is now someone else's and kept."""
    key, bkey = "é" * 32, ("lane!#$%&'*+-.^_`|~" + "k" * 64)[:64]
    e = start_envoy(plugin_config(EDGE_RULES, lane={"mode": "edge", "key": key, "ttl_s": 86400,
                                                    "baggage_key": bkey}),
                    upstreams={v: a.port for v, a in apps.items()})
    u = users("v2")[0]
    tag = new_tag("bounds")
    theirs = member("v1", "x", 1)
    with Clock() as clock:
        send(e, tag, [("x-user-id", u), ("baggage", f"{theirs},{bkey}=old")])
    (bag,) = seen(apps, tag).baggage
    prefix = theirs + "," + bkey + "=v2;r=ramp;e="
    assert bag.startswith(prefix), bag
    exp = int(bag[len(prefix):].split(";")[0])
    assert clock.expiry_ok(exp, 86400), (exp, clock.lo, clock.hi)
    assert bag == theirs + "," + member("v2", "ramp", exp, key=key, bkey=bkey), bag
