"""Guards on answers (DESIGN.md "Guards on answers"): with `llm`, a guarded rule's answer is an
error also when its first token comes later than `first_token_ms` (or has not come by then), or
its ending is in `finishes` (default error, aborted); a 5xx answer is one error, not two; and
`max_output_ratio` trips a gray version whose answers got longer than stable's.

Each version is an LLM API stand-in (tests/llm_upstream.py) behind its own cluster; keep-alive
chat-completion traffic on every worker (the requests the openai client sends, over raw
HTTP/1.1 so a cut stream is just a sample) runs while the gray app turns slow to its first
token, starts ending `length`, cuts its streams, answers 5xx or answers three times longer.
What users get, the counters and the trip's log line are checked as in tests/it_guard.py; how
long each worker took to move is reported (graysplit measurements), never asserted.
"""

from __future__ import annotations

import json
import re
import time

import pytest

import harness
from harness import Conn, Sample, bucket, plugin_config, wait_until
from llm_upstream import Gate, Script, launch, llm_apps, llm_stats

SALT = "answers"
GUARD = {"max_error_percent": 10, "min_requests": 10, "window_s": 10}
USERS = [f"user-{i}" for i in range(400)]
GRAY = sorted(u for u in USERS if bucket(SALT, u) < 5000)
STABLE = sorted(u for u in USERS if bucket(SALT, u) >= 5000)
CHAT = "/v1/chat/completions"

stat = harness.graysplit_stat
tripped = harness.tripped

V2_LINE = re.compile(
    r"graysplit: guard tripped: rule ramp, version v2: (\d+) of (\d+) responses were errors "
    r"\(([\d.]+)%\) in the last 10 s, limit 10%; its users go to v1")
RATIO_LINE = re.compile(
    r"graysplit: guard tripped: rule ramp, version v2: mean ([\d.]+) output tokens per answer, "
    r"([\d.]+) times stable's ([\d.]+), limit ([\d.]+); its users go to v1")


def guarded(**guard) -> dict:
    return plugin_config([{"name": "ramp", "salt": SALT, "guard": {**GUARD, **guard},
                           "split": [{"version": "v2", "percent": 50}]}], llm={})


def chat_body(stream: bool) -> bytes:
    doc = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}],
           "stream": stream}
    if stream:
        doc["stream_options"] = {"include_usage": True}
    return json.dumps(doc).encode()


def post(c: Conn, user: str, stream: bool = True, path: str = CHAT, body: bytes | None = None,
         extra=()) -> harness.Resp:
    return c.request("POST", path, [("content-type", "application/json"), ("x-user-id", user),
                                    *extra], chat_body(stream) if body is None else body)


@pytest.fixture
def apps():
    a = llm_apps(["v1", "v2"])
    yield a
    a.close()


@pytest.fixture
def start(apps, tmp_path):
    """start(config, **bootstrap options) -> an Envoy in front of `apps`, stopped after the test."""
    started = []

    def go(config, **kw):
        e = launch(tmp_path / f"envoy{len(started)}", config, apps.ports, **kw)
        started.append(e)
        return e
    yield go
    for e in started:
        e.stop()


class Answers(harness.Traffic):
    """Chat answers asked from threads, one keep-alive connection each, on every worker, each
    recorded as a harness `Sample` (version: the app's x-app-version; a stream the app cut
    short: status 0, version "?"). `stream` alternates streamed and JSON answers when None."""

    def __init__(self, envoy, users, *, conns: int = 4, stream: bool | None = True,
                 max_seconds: float = 90.0):
        self.stream = stream
        super().__init__(envoy, users, conns=conns, max_seconds=max_seconds)

    def ask(self, conn: Conn, user: str, k: int) -> harness.Resp:
        return post(conn, user, (k % 2 == 0) if self.stream is None else self.stream)

    def cut(self, i: int, user: str, sent: float, exc: Exception) -> None:
        with self.lock:                           # cut short: the connection is gone
            self.samples.append(Sample(i, user, sent, time.time(), 0, "?"))

    def version_of(self, r: harness.Resp) -> str:
        return r.header("x-app-version") or "?"


def stable_everywhere(envoy, user: str) -> list[float]:
    """Waits until a connection on every worker routes `user` to v1; returns, per connection,
    the seconds it took from now."""
    t0 = time.monotonic()
    took = []
    conns = harness.open_on_every_worker(envoy, envoy.concurrency)
    try:
        for i, c in enumerate(conns):
            wait_until(lambda c=c: c.get("/", [("x-user-id", user)]).header("x-app-version") == "v1",
                       5, f"connection {i}: {user} on stable after the trip")
            took.append(time.monotonic() - t0)
    finally:
        for c in conns:
            c.close()
    return took


def trip_line(envoy, pattern: re.Pattern) -> re.Match:
    lines = re.findall(r"graysplit: guard tripped: .*", envoy.log())
    assert len(lines) == 1, lines
    m = pattern.fullmatch(lines[0])
    assert m, lines[0]
    return m


def after_trip_all_on_stable(load: Answers, t: float) -> None:
    """Every gray user asked for a second after the trip was served by v1."""
    late = [s for s in load.snapshot() if s.sent > t + 1 and s.user in GRAY]
    assert late, "no gray user was asked for after the trip"
    assert all(s.version == "v1" and s.status == 200 for s in late), \
        [s for s in late if s.version != "v1"][:5]


# --------------------------------------------------------------------------- first_token_ms

def it_trips_a_gray_version_whose_first_token_comes_late(start, apps):
    """v2 sends its headers (and a role-only chunk) at once, its first text 600 ms later;
    first_token_ms 300. Every answer is a 200, headers at once (slow_ms would see nothing): only
    the first token is late. v2 trips with the v2 line, stable never counts an error."""
    envoy = start(guarded(first_token_ms=300))
    apps["v2"].default = Script(first_token_delay_s=0.6)
    with Answers(envoy, USERS, conns=4) as load:
        wait_until(lambda: tripped(envoy, "v2"), 30, "the guard to trip v2 on late first tokens")
        t = time.time()
        took = stable_everywhere(envoy, GRAY[0])
        load.wait_for(3, "traffic after the trip", where=lambda s: s.sent > t + 1)
    samples = load.snapshot()
    assert all(s.status == 200 for s in samples), [s for s in samples if s.status != 200][:5]
    after_trip_all_on_stable(load, t)
    e, n, _ = trip_line(envoy, V2_LINE).groups()
    assert int(e) * 100 > 10 * int(n) and int(n) >= 10
    assert stat(envoy, "guard_trips_total", "v2") == 1
    # Every v2 answer was late: one error each (the GET probes of the workers are no answers).
    wait_until(lambda: stat(envoy, "guard_responses_total", "v2", ".result.error")
               == llm_stats(envoy, "v2")["finish.stop"] >= int(e), 5,
               "every v2 answer (late) counted as one error")
    assert stat(envoy, "guard_responses_total", "v1", ".result.error") == 0
    assert stat(envoy, "guard_responses_total", "v1", ".result.ok") > 0
    harness.SUMMARY.append(f"llm guard (first_token_ms): every worker on stable "
                           f"{max(took):.2f} s after the trip was seen")


def it_counts_answers_whose_first_token_comes_in_time_as_ok(start, apps):
    """The same, first text 50 ms after the headers and first_token_ms 1000: 20 gray answers, 20
    ok, no error."""
    envoy = start(guarded(first_token_ms=1000))
    apps["v2"].default = Script(first_token_delay_s=0.05)
    with envoy.conn() as c:
        for u in GRAY[:20]:
            assert post(c, u).header("x-app-version") == "v2"
    wait_until(lambda: stat(envoy, "guard_responses_total", "v2", ".result.ok") == 20, 5,
               "20 ok answers")
    assert stat(envoy, "guard_responses_total", "v2", ".result.error") == 0
    assert not tripped(envoy, "v2")


def it_counts_a_stream_without_a_first_token_by_first_token_ms_at_once_and_once(start, apps):
    """12 gray streams whose app sends a role-only chunk and then nothing: with first_token_ms
    300 each is an error before it ends (on the next tick), so the guard trips while all 12 are
    still open. When they are let go and end, none counts a second time."""
    envoy = start(guarded(first_token_ms=300))
    gate = Gate(timeout=60)
    apps["v2"].default = Script(gate=gate)
    hung = []
    try:
        for u in GRAY[:12]:
            c = Conn(envoy.port, timeout=60)
            c.sock.sendall(harness.encode_request("POST", CHAT, [
                ("content-type", "application/json"), ("x-user-id", u)], body=chat_body(True)))
            hung.append(c)
        wait_until(lambda: len(apps["v2"].answers) == 12, 10, "12 streams open at v2")
        wait_until(lambda: tripped(envoy, "v2"), 10, "the guard to trip v2 on streams with no token")
        assert not any(a.done for a in apps["v2"].answers), "an answer ended before the trip"
        wait_until(lambda: stat(envoy, "guard_responses_total", "v2", ".result.error") == 12, 5,
                   "the 12 open streams to count as errors")
        trip_line(envoy, V2_LINE)
        gate.open()
        for c in hung:
            r = c._read_response("POST")
            assert r.status == 200 and b"data: [DONE]" in r.body, r
        wait_until(lambda: all(a.done for a in apps["v2"].answers), 5, "the 12 answers to end")
        wait_until(lambda: llm_stats(envoy, "v2")["finish.stop"] == 12, 5,
                   "the 12 answers to be read to their end")
        assert stat(envoy, "guard_responses_total", "v2", ".result.error") == 12
        assert stat(envoy, "guard_responses_total", "v2", ".result.ok") == 0
        stable_everywhere(envoy, GRAY[20])
    finally:
        gate.open()
        for c in hung:
            c.close()


# --------------------------------------------------------------------------- finishes

def it_trips_a_gray_version_whose_answers_end_with_a_listed_finish(start, apps):
    """finishes ["length"]: v2's answers (streamed and JSON) all end `length`, stable's `stop`;
    v2 trips with the v2 line."""
    envoy = start(guarded(finishes=["length"]))
    apps["v2"].default = Script(ending="length")
    with Answers(envoy, USERS, conns=4, stream=None) as load:
        wait_until(lambda: tripped(envoy, "v2"), 30, "the guard to trip v2 on `length` answers")
        t = time.time()
        stable_everywhere(envoy, GRAY[0])
        load.wait_for(3, "traffic after the trip", where=lambda s: s.sent > t + 1)
    assert all(s.status == 200 for s in load.snapshot())
    after_trip_all_on_stable(load, t)
    e, _, _ = trip_line(envoy, V2_LINE).groups()
    assert stat(envoy, "guard_responses_total", "v1", ".result.error") == 0
    wait_until(lambda: stat(envoy, "guard_responses_total", "v2", ".result.error")
               == llm_stats(envoy, "v2")["finish.length"] >= int(e), 5,
               "every v2 answer (`length`) counted as one error")


def it_does_not_count_length_by_default(start, apps):
    """Default finishes (error, aborted): 20 answers ending `length` are 20 ok."""
    envoy = start(guarded())
    apps["v2"].default = Script(ending="length")
    with envoy.conn() as c:
        for i, u in enumerate(GRAY[:20]):
            assert post(c, u, stream=i % 2 == 0).header("x-app-version") == "v2"
    wait_until(lambda: stat(envoy, "guard_responses_total", "v2", ".result.ok") == 20, 5,
               "20 ok answers")
    assert stat(envoy, "guard_responses_total", "v2", ".result.error") == 0
    assert llm_stats(envoy, "v2")["finish.length"] == 20
    assert not tripped(envoy, "v2")


def it_counts_aborted_streams_as_errors_by_default(start, apps):
    """v2 closes every stream after 3 events: the default finishes count them; v2 trips."""
    envoy = start(guarded())
    apps["v2"].default = Script(cut_after=3)
    with Answers(envoy, USERS, conns=4) as load:
        wait_until(lambda: tripped(envoy, "v2"), 30, "the guard to trip v2 on aborted streams")
        t = time.time()
        stable_everywhere(envoy, GRAY[0])
        load.wait_for(3, "traffic after the trip", where=lambda s: s.sent > t + 1)
    after_trip_all_on_stable(load, t)
    trip_line(envoy, V2_LINE)
    # Every answer v2 cut is one sample its client saw broken off, one `aborted` answer, one error.
    cut = sum(1 for s in load.snapshot() if s.status == 0)
    assert cut >= 2
    wait_until(lambda: llm_stats(envoy, "v2")["finish.aborted"] == cut, 5,
               f"{cut} aborted answers")
    assert stat(envoy, "guard_responses_total", "v2", ".result.error") == cut
    assert stat(envoy, "guard_responses_total", "v1", ".result.error") == 0


# --------------------------------------------------------------------------- one error per answer

def it_counts_one_error_per_5xx_answer(start, apps):
    """A 5xx answer matches `statuses`, ends `error` (in the default finishes) and, sent 500 ms
    late with first_token_ms 300, has a late first token too: each is exactly one error. So is
    a 200 Dify stream that ends with `event: error`. min_requests 1000: nothing trips."""
    envoy = start(guarded(min_requests=1000, first_token_ms=300))
    v2 = apps["v2"]
    v2.script("e500", status=500)
    v2.script("e503", status=503)
    v2.script("e500-late", status=500, first_delay_s=0.5)
    v2.script("dify-error", ending="error")
    sent = {"e500": 4, "e503": 2, "e500-late": 3}
    with envoy.conn() as c:
        for name, n in sent.items():
            for k in range(n):
                r = post(c, GRAY[k], stream=k % 2 == 0, extra=[("x-script", name)])
                assert r.status == int(name[1:4]) and r.header("x-app-version") == "v2", r
                assert json.loads(r.body)["error"]["type"] == "server_error"
        for k in range(2):
            r = post(c, GRAY[k], path="/v1/chat-messages", extra=[("x-script", "dify-error")],
                     body=json.dumps({"inputs": {}, "query": "hi", "user": "u",
                                      "response_mode": "streaming"}).encode())
            assert r.status == 200 and b'"event":"error"' in r.body, r
    total = sum(sent.values()) + 2
    wait_until(lambda: llm_stats(envoy, "v2")["finish.error"] == total, 5,
               f"{total} answers ending `error`")
    time.sleep(1.2)   # two more ticks: a late-first-token error may not come on top
    assert stat(envoy, "guard_responses_total", "v2", ".result.error") == total
    assert stat(envoy, "guard_responses_total", "v2", ".result.ok") == 0
    assert not tripped(envoy, "v2")


# --------------------------------------------------------------------------- max_output_ratio

def ratio_guard(**kw) -> dict:
    return guarded(max_error_percent=50, window_s=30, max_output_ratio=1.5, **kw)


def it_trips_a_gray_version_whose_answers_are_three_times_longer(start, apps):
    """Stable answers with 10 output tokens, gray with 30; max_output_ratio 1.5: v2 trips, its
    line says mean 30, 3 times stable's 10, limit 1.5; no answer was an error."""
    envoy = start(ratio_guard())
    apps["v1"].default = Script(output_tokens=10)
    apps["v2"].default = Script(output_tokens=30)
    with Answers(envoy, USERS, conns=4, stream=None) as load:
        wait_until(lambda: tripped(envoy, "v2"), 30, "the guard to trip v2 on long answers")
        t = time.time()
        took = stable_everywhere(envoy, GRAY[0])
        load.wait_for(3, "traffic after the trip", where=lambda s: s.sent > t + 1)
    after_trip_all_on_stable(load, t)
    a, x, b, limit = map(float, trip_line(envoy, RATIO_LINE).groups())
    assert (a, x, b, limit) == (30.0, 3.0, 10.0, 1.5), (a, x, b, limit)
    assert stat(envoy, "guard_responses_total", "v2", ".result.error") == 0
    assert stat(envoy, "guard_trips_total", "v2") == 1
    harness.SUMMARY.append(f"llm guard (max_output_ratio): every worker on stable "
                           f"{max(took):.2f} s after the trip was seen")


def it_does_not_trip_below_the_ratio(start, apps):
    """Gray answers 1.4 times as long as stable's, limit 1.5: 20 answers each, no trip."""
    envoy = start(ratio_guard())
    apps["v1"].default = Script(output_tokens=10)
    apps["v2"].default = Script(output_tokens=14)
    with envoy.conn() as c:
        for k in range(20):
            post(c, GRAY[k], stream=False)
            post(c, STABLE[k], stream=False)
    wait_until(lambda: llm_stats(envoy, "v2")["tokens.output"] == 280, 5, "gray's 20 answers")
    wait_until(lambda: llm_stats(envoy, "v1")["tokens.output"] == 200, 5, "stable's 20 answers")
    time.sleep(1.5)   # three more ticks: nothing may trip
    assert not tripped(envoy, "v2")


def it_needs_min_requests_stable_answers_to_compare(start, apps):
    """Gray answers 3 times as long, but stable has 5 answers in the window (min_requests 10):
    no trip; 5 more stable answers and it trips."""
    envoy = start(ratio_guard())
    apps["v1"].default = Script(output_tokens=10)
    apps["v2"].default = Script(output_tokens=30)
    with envoy.conn() as c:
        for k in range(20):
            post(c, GRAY[k], stream=False)
        for k in range(5):
            post(c, STABLE[k], stream=False)
        wait_until(lambda: llm_stats(envoy, "v1")["tokens.output"] == 50, 5, "stable's 5 answers")
        time.sleep(1.5)   # three more ticks: nothing may trip yet
        assert not tripped(envoy, "v2")
        for k in range(5, 10):
            post(c, STABLE[k], stream=False)
    wait_until(lambda: tripped(envoy, "v2"), 5, "the trip once stable has 10 answers")
    a, x, b, limit = map(float, trip_line(envoy, RATIO_LINE).groups())
    assert (a, x, b, limit) == (30.0, 3.0, 10.0, 1.5)
