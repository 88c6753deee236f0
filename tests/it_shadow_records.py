"""Paired shadow records (DESIGN.md "Shadow: the same question to the gray version, answers
paired", and /tmp/shadow-spec.md where DESIGN is silent), through a real Envoy: a stable user of
the shadow cohort asks with the real `openai` / `anthropic` clients (OpenAI chat completions and
Anthropic Messages, JSON and SSE), the primary is answered by the v1 app and the shadow by the v2
app (tests/llm_upstream.py, each its own scripted answer), and the one record the pair makes
reaches a real OTLP/HTTP receiver (tests/otlp_receiver.py, decoded with `opentelemetry-proto`)
through an Envoy cluster of its own.

What is proven, and against what oracle:
- Every attribute of a record, with its OTLP value kind, exactly DESIGN's table and nothing else:
  versions and statuses against the routing, tokens and endings against the scripts, the texts,
  `answer_chars`, `answer_sha256` and `*.text` against the text parsed back from the bytes each
  app actually wrote (which the client libraries also read), `graysplit.similarity` against
  tests/similarity_ref.py, `graysplit.user_hash` against hashlib, `graysplit.request_id` against
  the id the test sent and the apps received, the timings against delays the scripts inject and
  the test's own clocks (`timeUnixNano` between the test's wall clock before and after asking).
- The shadow that times out, fails to connect, or answers 500: the absent/aborted/empty fields.
- The sink: non-2xx, reset and a 5 s silence each lose a batch, counted exactly in
  `sink_failed` under the rule, and a recovered sink gets the records after; `batch` caps the
  records per POST, the remainder comes by the timer; `path` and `authority`.
- The histogram `graysplit_shadow_similarity_pct`: Envoy's own bins (/stats, detailed buckets)
  hold exactly each paired record's similarity x 100, rounded.
- `graysplit compare` on the file the receiver wrote as the Collector's file exporter does, from a
  real run: its --json figures against the figures computed here from the decoded records
  (tests/it_compare.py's DESIGN definitions), and those against what the test scripted.
- A config pushed through ECDS while a shadow is in flight: the old config's record still
  arrives, named and counted under the old rule.

Waits are on conditions (receiver.wait_for, harness.wait_until); orders are proven by state
(the shadow's app had not answered yet when ...), never by a sleep. The only upper time bounds
are containments (a duration the filter measured lies within the test's own interval around it)
and "the primary is not held by a 5 s shadow" (under 4 s).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
import similarity_ref as ref
from harness import bucket, plugin_config, wait_until
from it_compare import assert_close, figures
from llm_upstream import (Answer, Script, _padded, anthropic_client, llm_apps, openai_client,
                          sse_events)
from otlp_receiver import LogRecord, OtlpReceiver, read_export_file, log_records

SALT = "records"
SHADOW_SALT = "records-shadow"
SPLIT_BP = 1000                 # v2 gets 10 %; the other 90 % are stable
SINK = "otel-collector"         # the Envoy cluster of the OTLP receiver
SHADOW_CLUSTER = "shadow-v2"    # the Envoy cluster of the v2 app, for the shadows
VERSIONS = ("v1", "v2")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Make me 3 slides (幻灯片) about Envoy."}]

P_TEXT = ("Here are 3 slides (幻灯片) about Envoy:\n\n1. Filters  run   in order.\n"
          "2. ΟΔΟΣ café — clusters 🎉\n3. Ask  again.")
S_TEXT = ("Voici 3 SLIDES about ENVOY:\n1. filters run in order!\t\t2. Οδός café, "
          "clusters 🎉🎉 3. ask again")

# The attributes DESIGN's table names: every one a record may have, with its OTLP kind.
KINDS = {
    "graysplit.rule": "string", "graysplit.result": "string", "graysplit.user_hash": "string",
    "graysplit.request_id": "string",
    "primary.version": "string", "shadow.version": "string",
    "primary.status": "int", "shadow.status": "int",
    "primary.total_ms": "int", "shadow.total_ms": "int",
    "primary.first_token_ms": "int",
    "primary.tokens.input": "int", "primary.tokens.output": "int",
    "shadow.tokens.input": "int", "shadow.tokens.output": "int",
    "primary.finish": "string", "shadow.finish": "string",
    "primary.answer_chars": "int", "shadow.answer_chars": "int",
    "primary.answer_sha256": "string", "shadow.answer_sha256": "string",
    "graysplit.similarity": "double",
    "primary.text": "string", "shadow.text": "string",
}
TIMINGS = ("primary.total_ms", "shadow.total_ms", "primary.first_token_ms")

STABLE_USERS = [u for u in (f"user-{i}" for i in range(2000)) if bucket(SALT, u) >= SPLIT_BP]
_tags = iter(range(10**9))


def new_tag(what: str = "t") -> str:
    return f"{what}-{next(_tags)}"


def stable_user(i: int) -> str:
    return STABLE_USERS[i]


def expected_user_hash(salt: str, user: str) -> str:
    """DESIGN: the first 8 bytes of SHA-256 of shadow salt + ":" + user id, lower-case hex."""
    return hashlib.sha256(f"{salt}:{user}".encode("utf-8")).digest()[:8].hex()


# --------------------------------------------------------------------------- configs, Envoy

def rule(name: str = "ramp", *, salt: str | None = SALT, shadow_salt: str | None = SHADOW_SALT,
         cluster: str = SHADOW_CLUSTER, when: dict | None = None, **shadow) -> dict:
    s = {"version": "v2", "percent": 100, "cluster": cluster, "path_prefixes": ["/v1/"], **shadow}
    if shadow_salt is not None:
        s["salt"] = shadow_salt
    r = {"name": name, "split": [{"version": "v2", "percent": SPLIT_BP / 100}], "shadow": s}
    if salt is not None:
        r["salt"] = salt
    if when is not None:
        r["when"] = when
    return r


def config(*rules: dict, **sink) -> dict:
    return plugin_config(list(rules) or [rule()], shadow_sink={"cluster": SINK, **sink})


def static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}}}]}]}}


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_envoy(workdir: Path, cfg: dict, apps, receiver: OtlpReceiver, *, ecds: bool = False,
                concurrency: int = 2, clusters: dict[str, int] | None = None) -> harness.Envoy:
    """An Envoy whose v1/v2 routes go to `apps`, with a cluster `shadow-v2` (the v2 app), a
    cluster `otel-collector` (the receiver), and `clusters` (name -> port); the client's own
    `x-request-id` kept (an edge Envoy would otherwise replace it); stats flushed every 0.25 s
    (histograms merge at a flush). With `ecds`, `cfg` is the first config pushed from a file."""
    if not harness.WASM.exists():
        pytest.fail(f"{harness.WASM} is missing: run `make build` first", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    ecds_path = workdir / "ecds.yaml"
    if ecds:
        harness.write_ecds(ecds_path, cfg)
    doc = harness.bootstrap(None if ecds else cfg, access_log=workdir / "access.log",
                            ecds_path=ecds_path if ecds else None,
                            upstreams={v: apps[v].port for v in VERSIONS})
    listed = doc["static_resources"].setdefault("clusters", [])
    for name, port in {SHADOW_CLUSTER: apps["v2"].port, SINK: receiver.port,
                       **(clusters or {})}.items():
        listed.append(static_cluster(name, port))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["preserve_external_request_id"] = True
    doc["stats_flush_interval"] = "0.25s"
    return harness.Envoy(workdir, doc, concurrency=concurrency,
                         ecds_path=ecds_path if ecds else None).launch()


def shadow_total(envoy, result: str, rule_name: str = "ramp") -> int:
    return envoy.counter(f"wasmcustom.graysplit_shadow_total.rule.{rule_name}.result.{result}")


# --------------------------------------------------------------------------- asking

@dataclass
class Asked:
    """One primary question, as the client saw it."""
    tag: str
    user: str
    request_id: str | None
    text: str
    input: int | None
    output: int | None
    ending: str | None
    wall_before_ns: int      # time.time_ns() just before the client sent
    wall_after_ns: int       # ... and once it had read the whole answer
    mono_before: float       # time.monotonic(), the same two instants
    mono_after: float

    @property
    def elapsed_ms(self) -> float:
        return (self.mono_after - self.mono_before) * 1000


def ask(port: int, fmt: str, stream: bool, *, user: str, script: str, tag: str | None = None,
        request_id: str | None = "own", extra_headers: dict | None = None) -> Asked:
    """One question with the real client of `fmt` ("chat": openai, "anthropic": anthropic);
    `request_id` "own": a fresh x-request-id of the test's, None: none sent."""
    tag = tag or new_tag(fmt)
    rid = f"rid-{tag}-{uuid.uuid4().hex[:12]}" if request_id == "own" else request_id
    headers = {"x-user-id": user, "x-script": script, "x-test-id": tag, **(extra_headers or {})}
    if rid is not None:
        headers["x-request-id"] = rid
    text, inp, out, ending = "", None, None, None
    if fmt == "chat":
        c = openai_client(port, "/v1", None, headers)
        w0, m0 = time.time_ns(), time.monotonic()
        if stream:
            for ch in c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
                if ch.usage:
                    inp, out = ch.usage.prompt_tokens, ch.usage.completion_tokens
                for choice in ch.choices:
                    text += choice.delta.content or ""
                    ending = choice.finish_reason or ending
        else:
            r = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            text, ending = r.choices[0].message.content or "", r.choices[0].finish_reason
            if r.usage:
                inp, out = r.usage.prompt_tokens, r.usage.completion_tokens
    else:
        c = anthropic_client(port, None, headers)
        kw = dict(model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES[1:],
                  system=MESSAGES[0]["content"])
        w0, m0 = time.time_ns(), time.monotonic()
        if stream:
            for ev in c.messages.create(stream=True, **kw):
                if ev.type == "message_start":
                    inp = ev.message.usage.input_tokens
                elif ev.type == "content_block_delta":
                    text += getattr(ev.delta, "text", "") or ""
                elif ev.type == "message_delta":
                    out, ending = ev.usage.output_tokens, ev.delta.stop_reason
        else:
            m = c.messages.create(**kw)
            text = "".join(getattr(b, "text", "") or "" for b in m.content)
            inp, out, ending = m.usage.input_tokens, m.usage.output_tokens, m.stop_reason
    return Asked(tag, user, rid, text, inp, out, ending, w0, time.time_ns(), m0, time.monotonic())


def raw_chat(port: int, *, user: str, script: str, tag: str, request_id: str | None = None,
             stream: bool = False, extra=()) -> harness.Resp:
    """A chat completions POST on a raw connection of its own (for many at once)."""
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    headers = [("content-type", "application/json"), ("x-user-id", user), ("x-script", script),
               ("x-test-id", tag), *extra]
    if request_id is not None:
        headers.append(("x-request-id", request_id))
    with harness.Conn(port, timeout=30) as c:
        return c.request("POST", "/v1/chat/completions", headers, json.dumps(body).encode())


# --------------------------------------------------------------------------- what the apps sent

def sent_text(a: Answer) -> str:
    """The output text of the answer an app wrote, parsed back from its bytes (DESIGN: the
    concatenated output text of the format; "" for a body of no known format, e.g. an error)."""
    body = bytes(a.body)
    if a.status >= 400:
        return ""
    if not a.stream:
        doc = json.loads(body)
        if a.fmt == "chat":
            return doc["choices"][0]["message"]["content"] or ""
        if a.fmt == "anthropic":
            return "".join(b.get("text", "") for b in doc["content"] if b["type"] == "text")
        raise AssertionError(a.fmt)
    out = []
    for _, data in sse_events([body]):
        if data == "[DONE]":
            continue
        ev = json.loads(data)
        if a.fmt == "chat":
            out += [c["delta"].get("content") or "" for c in ev.get("choices", [])]
        elif ev.get("type") == "content_block_delta" and ev["delta"]["type"] == "text_delta":
            out.append(ev["delta"]["text"])
    return "".join(out)


def scripted_text(s: Script) -> str:
    return "".join(_padded(s))


# --------------------------------------------------------------------------- the records

def find_records(receiver: OtlpReceiver, request_id: str) -> list[LogRecord]:
    return [r for r in receiver.records if r.get("graysplit.request_id") == request_id]


def wait_record(receiver: OtlpReceiver, request_id: str, timeout: float = 10.0) -> LogRecord:
    """The one record of the request `request_id`, once it arrived."""
    got = wait_until(lambda: find_records(receiver, request_id), timeout,
                     f"the record of request {request_id}")
    assert len(got) == 1, f"{len(got)} records of request {request_id}: {got}"
    return got[0]


def post_of(receiver: OtlpReceiver, record: LogRecord):
    """The HTTP request that carried `record`."""
    (q,) = [q for q in receiver.requests if any(r is record for r in q.records)]
    return q


def side(prefix: str, *, version: str, status: int | None, script: Script | None, text: str,
         finish: str, tokens: bool = True, capture: bool = True) -> dict:
    """The attributes (kind, value) of one side of a record, timings left out."""
    out = {f"{prefix}.version": ("string", version)}
    if status is not None:
        out[f"{prefix}.status"] = ("int", status)
    if tokens and script is not None:
        if script.input_tokens is not None:
            out[f"{prefix}.tokens.input"] = ("int", script.input_tokens)
        if script.output_tokens is not None:
            out[f"{prefix}.tokens.output"] = ("int", script.output_tokens)
    out[f"{prefix}.finish"] = ("string", finish)
    out[f"{prefix}.answer_chars"] = ("int", ref.answer_chars(text))
    out[f"{prefix}.answer_sha256"] = ("string", hashlib.sha256(text.encode("utf-8")).hexdigest())
    if capture:
        out[f"{prefix}.text"] = ("string", ref.captured_text(text))
    return out


def check_record(rec: LogRecord, want: dict, *, first_token: bool = True) -> None:
    """`rec` has exactly the attributes of `want` (key -> (kind, value)) plus the timings, each
    named once, each of DESIGN's kind; the similarity within 1e-12."""
    keys = [k for k, _, _ in rec.attribute_list]
    assert len(keys) == len(set(keys)), f"an attribute named twice: {keys}"
    timings = {"primary.total_ms", "shadow.total_ms"} | ({"primary.first_token_ms"} if first_token
                                                         else set())
    assert set(keys) == set(want) | timings, (
        f"missing {sorted((set(want) | timings) - set(keys))}, "
        f"not in DESIGN's record here {sorted(set(keys) - set(want) - timings)}; "
        f"the record: {rec.values()}")
    for k in keys:
        assert rec.kind(k) == KINDS[k], f"{k}: a {rec.kind(k)}Value, DESIGN says {KINDS[k]}"
    for k, (kind, value) in want.items():
        got = rec.get(k)
        if k == "graysplit.similarity":
            assert abs(got - value) <= 1e-12, f"similarity {got!r}, the reference says {value!r}"
        else:
            assert got == value, f"{k}: {got!r}, expected {value!r}"
    for k in timings:
        assert rec.get(k) >= 0, f"{k} = {rec.get(k)}"


def check_export(receiver: OtlpReceiver, rec: LogRecord, *, path: str = "/v1/logs",
                 authority: str = SINK) -> None:
    """The POST that carried `rec`: DESIGN's path, authority, content type, resource, scope, and
    OTLP/JSON without a deviation (64-bit integers as strings)."""
    q = post_of(receiver, rec)
    assert q.method == "POST" and q.path == path, (q.method, q.path)
    assert q.headers.get("host") == authority, q.headers
    assert q.headers.get("content-type", "").split(";")[0].strip() == "application/json", q.headers
    assert q.encoding == "json" and q.notes == [], q.notes
    assert rec.resource == {"service.name": ("string", "graysplit")}, rec.resource
    assert rec.scope_name == "graysplit", rec.scope_name


def check_times(rec: LogRecord, asked: Asked, *, primary_delay_ms: float = 0,
                shadow_delay_ms: float = 0, arrived: float | None = None) -> None:
    """`timeUnixNano` within the test's wall clock around the question; the durations at least
    the delays the scripts injected and within the test's own interval around them."""
    assert asked.wall_before_ns <= rec.time_unix_nano <= asked.wall_after_ns, (
        asked.wall_before_ns, rec.time_unix_nano, asked.wall_after_ns)
    p = rec.get("primary.total_ms")
    assert primary_delay_ms <= p <= asked.elapsed_ms + 50, (p, primary_delay_ms, asked.elapsed_ms)
    if "primary.first_token_ms" in rec:
        ft = rec.get("primary.first_token_ms")
        assert primary_delay_ms <= ft <= p, (ft, primary_delay_ms, p)
    s = rec.get("shadow.total_ms")
    assert s >= shadow_delay_ms, (s, shadow_delay_ms)
    if arrived is not None:
        assert s <= (arrived - asked.mono_before) * 1000 + 50, (s, arrived - asked.mono_before)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def apps():
    a = llm_apps(VERSIONS)
    yield a
    a.close()


@pytest.fixture(scope="module")
def shared_receiver():
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def shared(apps, shared_receiver, tmp_path_factory):
    """One Envoy for the record-by-record tests: rule `ramp`, its shadow to v2, capture_text on,
    shadows timed out after 1 s, a rule `broken` (header x-broken: 1) shadowing to a closed
    port."""
    cfg = config(rule("broken", when={"headers": [{"name": "x-broken", "exact": "1"}]},
                      cluster="closed", timeout_ms=1000),
                 rule(timeout_ms=1000), capture_text=True)
    e = start_envoy(tmp_path_factory.mktemp("records"), cfg, apps, shared_receiver,
                    clusters={"closed": closed_port()})
    yield e
    e.stop()


@pytest.fixture
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture
def envoys(tmp_path):
    started: list[harness.Envoy] = []

    def go(*args, **kw) -> harness.Envoy:
        e = start_envoy(tmp_path / f"envoy{len(started)}", *args, **kw)
        started.append(e)
        return e
    yield go
    for e in started:
        e.stop()


def scripts(apps, name: str, v1: dict, v2: dict) -> tuple[Script, Script]:
    return apps["v1"].script(name, **v1), apps["v2"].script(name, **v2)


# --------------------------------------------------------------------------- 1. every attribute

CASES = {
    ("chat", False): (dict(text=P_TEXT, events=1, input_tokens=21, output_tokens=55,
                           first_token_delay_s=0.3, ending="stop"),
                      dict(text=S_TEXT, events=1, input_tokens=21, output_tokens=89,
                           headers_delay_s=0.25, ending="length")),
    ("chat", True): (dict(text=P_TEXT, events=5, input_tokens=17, output_tokens=40,
                          first_token_delay_s=0.3, ending="stop"),
                     dict(text=S_TEXT, events=3, input_tokens=17, output_tokens=61,
                          headers_delay_s=0.25, ending="stop")),
    ("anthropic", False): (dict(text=P_TEXT, events=1, input_tokens=33, output_tokens=47,
                                first_token_delay_s=0.3, ending="length"),
                           dict(text=S_TEXT, events=1, input_tokens=33, output_tokens=52,
                                headers_delay_s=0.25, ending="stop")),
    ("anthropic", True): (dict(text=P_TEXT, events=6, input_tokens=9, output_tokens=71,
                               first_token_delay_s=0.3, ending="stop"),
                          dict(text=S_TEXT, events=2, input_tokens=9, output_tokens=38,
                               headers_delay_s=0.25, ending="length")),
}


@pytest.mark.parametrize("fmt,stream", list(CASES), ids=lambda x: str(x).lower())
def it_writes_every_attribute_of_a_paired_record_exactly(shared, apps, shared_receiver, fmt,
                                                         stream):
    """One question through the real client; the record names the rule, the user by hash, the
    request by the id the test sent; each side's version, status, tokens and ending as
    scripted; texts, lengths and hashes of what each app wrote; the reference similarity."""
    assert "writes no paired records to shadow_sink yet" not in shared.log()
    name = new_tag("script")
    s1, s2 = scripts(apps, name, *CASES[(fmt, stream)])
    user = stable_user(3)
    asked = ask(shared.port, fmt, stream, user=user, script=name)
    rec = wait_record(shared_receiver, asked.request_id)
    arrived = time.monotonic()

    primary, shadow = apps["v1"].wait_answer(asked.tag), apps["v2"].wait_answer(asked.tag)
    assert shadow.headers.get("x-graysplit-shadow") == "1", shadow.headers
    p_text, s_text = sent_text(primary), sent_text(shadow)
    assert p_text == scripted_text(s1) == asked.text, "the app wrote, the client read, the script"
    assert s_text == scripted_text(s2)
    assert (asked.input, asked.output) == (s1.input_tokens, s1.output_tokens)
    # The id the filter saw: the test's own, as both apps received it.
    assert primary.headers["x-request-id"] == shadow.headers["x-request-id"] == asked.request_id

    want = {
        "graysplit.rule": ("string", "ramp"),
        "graysplit.result": ("string", "paired"),
        "graysplit.user_hash": ("string", expected_user_hash(SHADOW_SALT, user)),
        "graysplit.request_id": ("string", asked.request_id),
        **side("primary", version="v1", status=200, script=s1, text=p_text, finish=s1.ending),
        **side("shadow", version="v2", status=200, script=s2, text=s_text, finish=s2.ending),
        "graysplit.similarity": ("double", ref.similarity(p_text, s_text)),
    }
    assert want["graysplit.user_hash"][1] == ref.user_hash(SHADOW_SALT, user)
    check_record(rec, want)
    check_times(rec, asked, primary_delay_ms=300, shadow_delay_ms=250, arrived=arrived)
    check_export(shared_receiver, rec)


def it_cuts_captured_texts_at_16_kib_on_a_character_boundary_and_reads_long_texts_whole(
        shared, apps, shared_receiver):
    """A 20 KiB JSON answer against an 80 KiB stream (ten events, no usage: the request asked
    none): `*.text` are their first 16384 bytes at most, cut before a character that would
    cross; `answer_chars` and `answer_sha256` cover the whole texts; the similarity reads the
    first 65536 bytes of each (tests/similarity_ref.py cuts as DESIGN says)."""
    unit = "Ωμέγα 漢字 🎉 naïve café, "          # 1-, 2-, 3- and 4-byte characters
    base = unit * (20 * 1024 // len(unit.encode()) + 1)
    big = next(t for t in ("x" * k + base for k in range(8))
               if (t.encode()[ref.TEXT_CAP] & 0xC0) == 0x80)   # byte 16384 inside a character
    huge = ("ΣΊΣΥΦΟΣ 漢字 🎉 " * 6000)[:40000]
    assert len(huge.encode()) > ref.MAX_BYTES
    name = new_tag("big")
    s1, s2 = scripts(apps, name, dict(text=big, events=1, input_tokens=5, output_tokens=4000),
                     dict(text=huge, events=10, input_tokens=5, output_tokens=9000, stream=True))
    user = stable_user(4)
    asked = ask(shared.port, "chat", False, user=user, script=name)
    rec = wait_record(shared_receiver, asked.request_id)
    p_text = sent_text(apps["v1"].wait_answer(asked.tag))
    s_text = sent_text(apps["v2"].wait_answer(asked.tag))
    assert p_text == big == asked.text and s_text == scripted_text(s2)

    for key, text in (("primary.text", p_text), ("shadow.text", s_text)):
        got = rec.get(key)
        assert got is not None, f"{key} absent"
        n = len(got.encode("utf-8"))
        assert n <= ref.TEXT_CAP and text.startswith(got), (key, n)
        assert got == ref.captured_text(text), f"{key}: {n} bytes, the longest whole prefix is " \
                                               f"{len(ref.captured_text(text).encode())}"
    assert len(rec.get("primary.text").encode()) < ref.TEXT_CAP, "the cut fell inside a character"
    want = {
        "graysplit.rule": ("string", "ramp"),
        "graysplit.result": ("string", "paired"),
        "graysplit.user_hash": ("string", expected_user_hash(SHADOW_SALT, user)),
        "graysplit.request_id": ("string", asked.request_id),
        **side("primary", version="v1", status=200, script=s1, text=p_text, finish="stop"),
        # The stream carries no usage (no include_usage asked): no shadow tokens.
        **side("shadow", version="v2", status=200, script=s2, text=s_text, finish="stop",
               tokens=False),
        "graysplit.similarity": ("double", ref.similarity(p_text, s_text)),
    }
    check_record(rec, want)
    check_times(rec, asked)


def it_writes_no_text_without_capture_text_and_salts_the_user_hash_by_default(
        envoys, apps, receiver):
    """capture_text off (the default): no `primary.text` / `shadow.text`, all else there. The
    shadow salt left out is the rule's salt + ":shadow"; the request id the client did not send
    is the one Envoy made, as the apps received it."""
    e = envoys(config(rule(shadow_salt=None)), apps, receiver)
    name = new_tag("nocap")
    s1, s2 = scripts(apps, name, dict(text=P_TEXT, events=3, ending="stop"),
                     dict(text=P_TEXT, events=2, ending="stop", input_tokens=None,
                          output_tokens=None))
    user = stable_user(5)
    asked = ask(e.port, "chat", True, user=user, script=name, request_id=None)
    primary, shadow = apps["v1"].wait_answer(asked.tag), apps["v2"].wait_answer(asked.tag)
    rid = primary.headers["x-request-id"]
    assert rid and shadow.headers["x-request-id"] == rid
    rec = wait_record(receiver, rid)
    p_text, s_text = sent_text(primary), sent_text(shadow)
    assert p_text == s_text == P_TEXT
    want = {
        "graysplit.rule": ("string", "ramp"),
        "graysplit.result": ("string", "paired"),
        "graysplit.user_hash": ("string", expected_user_hash(SALT + ":shadow", user)),
        "graysplit.request_id": ("string", rid),
        **side("primary", version="v1", status=200, script=s1, text=p_text, finish="stop",
               capture=False),
        # A usage chunk of zeros, as the app writes one when the script has no counts.
        **side("shadow", version="v2", status=200, script=Script(input_tokens=0, output_tokens=0),
               text=s_text, finish="stop", capture=False),
        "graysplit.similarity": ("double", 1.0),
    }
    check_record(rec, want)
    check_times(rec, asked)
    check_export(receiver, rec)


# --------------------------------------------------------------------------- 2. failed shadows

def it_records_a_shadow_that_timed_out_without_holding_the_primary(shared, apps, shared_receiver):
    """The shadow's app answers 5 s late, the shadow's timeout_ms is 1000: the user has the
    primary answer while the shadow is unanswered, and the record (timed_out) arrives while the
    app still has not answered: no status, no tokens, no similarity, `aborted`, the empty text."""
    name = new_tag("late")
    s1, _ = scripts(apps, name, dict(text=P_TEXT, events=1, input_tokens=3, output_tokens=8),
                    dict(text=S_TEXT, events=1, headers_delay_s=5.0))
    user = stable_user(6)
    asked = ask(shared.port, "chat", False, user=user, script=name)
    assert asked.elapsed_ms < 4000, \
        f"the primary took {asked.elapsed_ms:.0f} ms: held by the shadow"
    shadow = wait_until(lambda: apps["v2"].answer(asked.tag), 5, "the shadow at the v2 app")
    assert not shadow.done, "the primary was answered only after the shadow's app answered"
    rec = wait_record(shared_receiver, asked.request_id)
    assert not shadow.done, "the record came before the shadow's app answered"
    p_text = sent_text(apps["v1"].wait_answer(asked.tag))
    want = {
        "graysplit.rule": ("string", "ramp"),
        "graysplit.result": ("string", "timed_out"),
        "graysplit.user_hash": ("string", expected_user_hash(SHADOW_SALT, user)),
        "graysplit.request_id": ("string", asked.request_id),
        **side("primary", version="v1", status=200, script=s1, text=p_text, finish="stop"),
        **side("shadow", version="v2", status=None, script=None, text="", finish="aborted"),
    }
    assert want["shadow.answer_sha256"] == ("string", EMPTY_SHA256)
    check_record(rec, want)
    check_times(rec, asked)
    waited = rec.get("shadow.total_ms")
    assert 1000 <= waited < 5000, f"shadow.total_ms {waited}: the time waited, timeout_ms 1000"


def it_records_a_shadow_to_a_closed_port_as_failed(shared, apps, shared_receiver):
    """Rule `broken` shadows to a cluster whose port nothing listens on: no HTTP answer, so
    shadow_failed, with the fields of a shadow without an answer."""
    name = new_tag("closed")
    s1, _ = scripts(apps, name, dict(text=P_TEXT, events=2, input_tokens=4, output_tokens=9),
                    dict(text=S_TEXT))
    user = stable_user(8)     # rule `broken` splits with the same salt
    asked = ask(shared.port, "chat", True, user=user, script=name, extra_headers={"x-broken": "1"})
    rec = wait_record(shared_receiver, asked.request_id)
    assert apps["v2"].answer(asked.tag) is None, "the shadow reached the v2 app"
    p_text = sent_text(apps["v1"].wait_answer(asked.tag))
    want = {
        "graysplit.rule": ("string", "broken"),
        "graysplit.result": ("string", "shadow_failed"),
        "graysplit.user_hash": ("string", expected_user_hash(SHADOW_SALT, user)),
        "graysplit.request_id": ("string", asked.request_id),
        **side("primary", version="v1", status=200, script=s1, text=p_text, finish="stop"),
        **side("shadow", version="v2", status=None, script=None, text="", finish="aborted"),
    }
    check_record(rec, want)
    check_times(rec, asked)
    wait_until(lambda: shadow_total(shared, "shadow_failed", "broken") >= 1, 5,
               "shadow_failed counted under rule broken")


@pytest.mark.parametrize("fmt", ["chat", "anthropic"])
def it_pairs_a_shadow_that_answered_500_ending_error(shared, apps, shared_receiver, fmt):
    """The shadow's app answers 500 with its format's error body: paired, shadow.status 500,
    ending `error`, no tokens, the empty text, and the similarity of the primary's text to it."""
    name = new_tag("err")
    s1, _ = scripts(apps, name, dict(text=P_TEXT, events=1, input_tokens=6, output_tokens=11),
                    dict(status=500))
    user = stable_user(7)
    asked = ask(shared.port, fmt, False, user=user, script=name)
    rec = wait_record(shared_receiver, asked.request_id)
    p_text = sent_text(apps["v1"].wait_answer(asked.tag))
    assert apps["v2"].wait_answer(asked.tag).status == 500
    want = {
        "graysplit.rule": ("string", "ramp"),
        "graysplit.result": ("string", "paired"),
        "graysplit.user_hash": ("string", expected_user_hash(SHADOW_SALT, user)),
        "graysplit.request_id": ("string", asked.request_id),
        **side("primary", version="v1", status=200, script=s1, text=p_text, finish="stop"),
        **side("shadow", version="v2", status=500, script=None, text="", finish="error"),
        "graysplit.similarity": ("double", ref.similarity(p_text, "")),
    }
    check_record(rec, want)
    check_times(rec, asked)


# --------------------------------------------------------------------------- 3. the sink

def it_counts_each_lost_batch_as_sink_failed_and_sends_later_records_to_the_recovered_sink(
        envoys, apps, receiver):
    """The receiver answers 500, then resets, then keeps one POST past the 5 s timeout, then
    answers again: `sink_failed` counts exactly the records of the lost POSTs, under the rule;
    a request while the sink is silent is answered at once; the records after reach it."""
    e = envoys(config(), apps, receiver)
    name = new_tag("sink")
    scripts(apps, name, dict(text=P_TEXT), dict(text=S_TEXT))
    users = iter(STABLE_USERS[10:])
    rids: dict[str, str] = {}

    def one(tag: str) -> None:
        rid = f"rid-{tag}-{uuid.uuid4().hex[:8]}"
        r = raw_chat(e.port, user=next(users), script=name, tag=tag, request_id=rid)
        assert r.status == 200 and r.header("x-app-version") == "v1", r
        rids[tag] = rid

    def sink_failed() -> int:
        return shadow_total(e, "sink_failed")

    receiver.answer(status=500)
    for i in range(3):
        one(f"a{i}")
    receiver.wait_for(3, 10)
    wait_until(lambda: sink_failed() == 3, 10, "3 records lost to the 500s")

    receiver.answer(reset=True)
    for i in range(2):
        one(f"b{i}")
    receiver.wait_for(5, 10)
    wait_until(lambda: sink_failed() == 5, 10, "2 more lost to the resets")

    receiver.answer(status=200)
    receiver.answer_next(delay_s=8.0)    # the next POST: a 200, but 8 s late
    one("c0")
    hung = wait_until(lambda: [q for q in receiver.requests
                               if any(r.get("graysplit.request_id") == rids["c0"]
                                      for r in q.records)], 10, "the POST kept waiting")[0]
    one("c1")                            # answered while the sink is silent
    assert not hung.done, "the request was answered only after the sink POST ended"
    wait_until(lambda: sink_failed() == 6, 12, "the silent POST lost after 5 s")
    assert not hung.done, "counted lost when the receiver answered (8 s), not at the 5 s timeout"

    for i in range(2):
        one(f"d{i}")
    wait_until(lambda: sum(len(q.records) for q in receiver.requests
                           if q.accepted and q.done and q is not hung) >= 3, 10,
               "the records after the sink recovered")
    on_time = [r.get("graysplit.request_id") for q in receiver.requests
               if q.accepted and q is not hung for r in q.records]
    assert sorted(on_time) == sorted(rids[t] for t in ("c1", "d0", "d1"))
    assert shadow_total(e, "paired") == 9 and shadow_total(e, "sent") == 9
    assert sink_failed() == 6, "exactly the records of the lost POSTs"
    lost = [r.get("graysplit.request_id") for q in receiver.requests
            if not q.accepted or q is hung for r in q.records]
    assert sorted(lost) == sorted(rids[t] for t in ("a0", "a1", "a2", "b0", "b1", "c0"))


def it_posts_at_most_batch_records_and_the_rest_by_the_timer(envoys, apps, receiver):
    """`batch: 3`, one worker, seven shadows answered at about the same moment: POSTs of at most
    3 records (one of 3), all seven arrive, the last within 2 s of the shadows' answers; to
    `path` with `authority`."""
    receiver.path = "/otlp/v1/logs"
    e = envoys(config(batch=3, path="/otlp/v1/logs", authority="collector.test:4318"),
               apps, receiver, concurrency=1)
    name = new_tag("batch")
    scripts(apps, name, dict(text=P_TEXT), dict(text=S_TEXT, headers_delay_s=1.0))
    tags = [f"{name}-{i}" for i in range(7)]
    rids = {t: f"rid-{t}" for t in tags}
    results: dict[str, harness.Resp] = {}

    def go(i: int, t: str) -> None:
        results[t] = raw_chat(e.port, user=STABLE_USERS[20 + i], script=name, tag=t,
                              request_id=rids[t])
    threads = [threading.Thread(target=go, args=(i, t)) for i, t in enumerate(tags)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(results[t].status == 200 for t in tags), results
    got = receiver.wait_for(7, 10)
    assert sorted(r.get("graysplit.request_id") for r in got) == sorted(rids.values())
    sizes = [len(q.records) for q in receiver.requests]
    assert max(sizes) == 3 and sum(sizes) == 7 and len(sizes) >= 3, sizes
    answered = max(apps["v2"].wait_answer(t).sent_at[-1] for t in tags)
    last = max(q.at for q in receiver.requests)
    assert last - answered < 2.0, f"the last records came {last - answered:.2f} s after the answers"
    for r in got:
        check_export(receiver, r, path="/otlp/v1/logs", authority="collector.test:4318")
    assert shadow_total(e, "sink_failed") == 0


# --------------------------------------------------------------------------- 4. the histogram

def similarity_bins(envoy, rule_name: str = "ramp") -> collections.Counter | None:
    """The values in `graysplit_shadow_similarity_pct.rule.<r>` as Envoy's admin /stats shows its
    bins (`histogram_buckets=detailed`: `lower,width:count`; for integers 0..100 the lower bound
    is the value itself), or None when there is no such histogram."""
    name = f"wasmcustom.graysplit_shadow_similarity_pct.rule.{rule_name}"
    _, body = envoy.admin_get("/stats?histogram_buckets=detailed&filter="
                              + urllib.parse.quote("^" + name.replace(".", r"\.") + "$"))
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if line.split(":")[0] == name:
            if "No recorded values" in line:
                return collections.Counter()
            totals = next(x.strip() for x in lines[i + 1:i + 4] if x.strip().startswith("totals="))
            out: collections.Counter = collections.Counter()
            for part in totals[len("totals="):].split(", "):
                if part:
                    where, count = part.rsplit(":", 1)
                    out[float(where.split(",")[0])] += int(count)
            return out
    return None


def rounded(x: float) -> tuple[int, int]:
    """x rounded to the nearest integer: (the integer, the integer) or, exactly half way, both
    neighbours (DESIGN does not say which way a tie goes)."""
    lo = math.floor(x)
    if x - lo == 0.5:
        return lo, lo + 1
    return (lo + 1, lo + 1) if x - lo > 0.5 else (lo, lo)


def it_records_each_paired_similarity_in_the_histogram(envoys, apps, receiver):
    """Texts from the same to nothing in common, a 500 (paired, similarity 0) and a timed-out
    shadow (no similarity): Envoy's bins hold exactly one value per paired record,
    round(similarity x 100)."""
    e = envoys(config(rule(timeout_ms=1000)), apps, receiver)
    pairs = [(P_TEXT, P_TEXT), (P_TEXT, S_TEXT), ("abcdef", "uvwxyz"),
             ("the cat sat", "the cat sat on"),
             ("Envoy filters", "ENVOY   filters!"), ("幻灯片 about Envoy", "slides about Envoy"),
             ("a", "a b"), ("one two three four five", "five four three two one")]
    tags = []
    for i, (a, b) in enumerate(pairs):
        name = new_tag("hist")
        scripts(apps, name, dict(text=a, events=1), dict(text=b, events=1))
        tags.append(ask(e.port, "chat", i % 2 == 1, user=stable_user(30 + i), script=name))
    name = new_tag("hist500")
    scripts(apps, name, dict(text=P_TEXT), dict(status=500))
    tags.append(ask(e.port, "chat", False, user=stable_user(40), script=name))
    name = new_tag("histlate")
    scripts(apps, name, dict(text=P_TEXT), dict(text=P_TEXT, headers_delay_s=3.0))
    tags.append(ask(e.port, "chat", False, user=stable_user(41), script=name))

    recs = [wait_record(receiver, a.request_id) for a in tags]
    sims = [r.get("graysplit.similarity") for r in recs if "graysplit.similarity" in r]
    paired = [r for r in recs if r.get("graysplit.result") == "paired"]
    # The histogram against the records, whatever they say: one sample per similarity.
    want = sorted(rounded(s * 100) for s in sims)
    wait_until(lambda: sum((similarity_bins(e) or {}).values()) >= len(sims), 10,
               f"{len(sims)} samples in graysplit_shadow_similarity_pct.rule.ramp")
    got = similarity_bins(e)
    values = sorted(v for v, n in got.items() for _ in range(n))
    assert len(values) == len(want) == len(paired) == shadow_total(e, "paired"), (values, want)
    assert all(lo <= v <= hi for v, (lo, hi) in zip(values, want)), (values, want)
    # And the records against the scripts: nine paired, the late shadow timed out.
    for (a, b), s in zip(pairs + [(P_TEXT, "")], sims):
        assert abs(s - ref.similarity(a, b)) <= 1e-12, (a, b, s)
    assert [r.get("graysplit.result") for r in recs] == ["paired"] * 9 + ["timed_out"], \
        recs[-1].values()


# --------------------------------------------------------------------------- 5. compare

def it_compare_gives_the_figures_of_a_real_run(envoys, apps, receiver, tmp_path):
    """~30 shadowed questions with varied token counts, delays and endings, some shadows
    answering 500 or too late, three more to a closed port under a second rule; the receiver
    writes the file as the Collector's file exporter; `graysplit compare --json` on it gives
    the figures computed here from the decoded records, and those agree with the scripts."""
    export = tmp_path / "collector.jsonl"
    receiver.export_file = export
    pilot_when = {"headers": [{"name": "x-department", "exact": "legal"}]}
    e = envoys(config(rule("pilot", when=pilot_when, cluster="closed"),
                      rule(timeout_ms=1500)), apps, receiver, clusters={"closed": closed_port()})
    planned = collections.Counter()
    scripted_tokens = []          # (primary, shadow) output tokens of the pairs with both
    asked = []
    for i in range(30):
        name = new_tag("cmp")
        p = dict(text=P_TEXT[: 20 + 3 * i], events=1 + i % 4, input_tokens=10 + i,
                 output_tokens=20 + (7 * i) % 53, ending=("stop", "length")[i % 5 == 4],
                 first_token_delay_s=0.02 * (i % 6))
        s = dict(text=S_TEXT[: 10 + 4 * i], events=1 + i % 3, input_tokens=10 + i,
                 output_tokens=15 + (11 * i) % 71, ending=("stop", "length")[i % 3 == 2],
                 headers_delay_s=0.03 * (i % 5))
        if i % 10 == 7:
            s = dict(status=500)
            planned["paired"] += 1
        elif i % 10 == 9:
            s["headers_delay_s"] = 2.5
            planned["timed_out"] += 1
        else:
            planned["paired"] += 1
            scripted_tokens.append((p["output_tokens"], s["output_tokens"]))
        scripts(apps, name, p, s)
        fmt = ("chat", "anthropic")[i % 2]
        asked.append(ask(e.port, fmt, i % 3 != 0, user=stable_user(50 + i), script=name))
    for i in range(3):
        name = new_tag("cmp-pilot")
        scripts(apps, name, dict(text=P_TEXT, output_tokens=10 + i), dict(text=S_TEXT))
        asked.append(ask(e.port, "chat", False, user=stable_user(100 + i), script=name,
                         extra_headers={"x-department": "legal"}))
    receiver.wait_for(33, 20, accepted=True)

    decoded = [log_records(m) for m in read_export_file(export)]
    records = [r.values() for batch in decoded for r in batch]
    assert sorted(r["graysplit.request_id"] for r in records) == sorted(a.request_id for a in asked)
    by_rule: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        by_rule[r["graysplit.rule"]].append(r)
    want = {"rules": {name: figures(rs, 0) for name, rs in sorted(by_rule.items())}}

    # The CLI against the figures of the records it read.
    r = harness.cli("compare", "--json", export)
    assert r.returncode == 0, r
    assert_close(json.loads(r.stdout), want)
    table = harness.cli("compare", export)
    assert table.returncode == 0, table
    print(f"\n`graysplit compare` on {len(records)} records of a real run:\n{table.stdout}")
    for name, f in want["rules"].items():
        res = f["results"]
        assert (f"rule {name}: {f['pairs']} pairs ({res['paired']} paired, "
                f"{res['shadow_failed']} shadow_failed, {res['timed_out']} timed_out)") \
            in table.stdout, table.stdout

    # The figures of the records against what the test scripted.
    ramp = want["rules"]["ramp"]
    assert ramp["results"] == {"paired": planned["paired"], "shadow_failed": 0,
                               "timed_out": planned["timed_out"]}, ramp["results"]
    assert want["rules"]["pilot"]["results"] == {"paired": 0, "shadow_failed": 3, "timed_out": 0}
    n = len(scripted_tokens)
    assert_close(ramp["output_tokens"]["primary"], sum(p for p, _ in scripted_tokens) / n)
    assert_close(ramp["output_tokens"]["shadow"], sum(s for _, s in scripted_tokens) / n)


# --------------------------------------------------------------------------- 6. config change

def it_sends_and_counts_the_record_of_a_shadow_in_flight_across_a_config_change(
        envoys, apps, receiver):
    """A shadow under rule `before` is in flight (its app holds it 3 s) when a config whose rule
    is `after` reaches every worker (ECDS from a file): the old shadow's record still arrives,
    named `before`, counted under `before`; the next question is recorded under `after`."""
    old, new = config(rule("before")), config(rule("after"))
    e = envoys(old, apps, receiver, ecds=True)
    harness.push_everywhere(e, old)
    name = new_tag("drain")
    s1, s2 = scripts(apps, name, dict(text=P_TEXT, output_tokens=13),
                     dict(text=S_TEXT, output_tokens=31, headers_delay_s=3.0))
    user = stable_user(60)
    asked = ask(e.port, "chat", False, user=user, script=name)
    shadow = wait_until(lambda: apps["v2"].answer(asked.tag), 5, "the shadow at the v2 app")
    harness.push_everywhere(e, new)
    assert not shadow.done, "the new config was everywhere only after the shadow was answered"
    assert not find_records(receiver, asked.request_id)
    rec = wait_record(receiver, asked.request_id, timeout=15)
    assert shadow.done
    assert rec.get("graysplit.rule") == "before" and rec.get("graysplit.result") == "paired", \
        rec.values()
    assert (rec.get("shadow.status"), rec.get("shadow.tokens.output")) == (200, 31)
    assert rec.get("graysplit.similarity") == pytest.approx(
        ref.similarity(scripted_text(s1), scripted_text(s2)), abs=1e-12)
    wait_until(lambda: shadow_total(e, "paired", "before") == 1, 5, "paired counted under before")
    assert shadow_total(e, "sent", "before") == 1 and shadow_total(e, "paired", "after") == 0

    fast = new_tag("after")
    scripts(apps, fast, dict(text=P_TEXT), dict(text=S_TEXT))
    later = ask(e.port, "chat", False, user=stable_user(61), script=fast)
    rec2 = wait_record(receiver, later.request_id, timeout=15)
    assert rec2.get("graysplit.rule") == "after", rec2.values()
    wait_until(lambda: shadow_total(e, "paired", "after") == 1, 5, "paired counted under after")
    assert shadow_total(e, "paired", "before") == 1
