"""Reading LLM answers (`llm`) through a real Envoy, per DESIGN.md "Reading LLM answers".

Each version is an LLM API stand-in of its own (tests/llm_upstream.py: OpenAI chat completions,
legacy completions and Responses, Anthropic Messages, Dify's chat app, in their documented wire
formats) behind its own cluster; a split rule sends one user to each. The answers are asked for
with the real `openai` and `anthropic` clients (streamed and not), which parse them, so every
answer whose counts are asserted is one those libraries accept. What is proven, per version:
the exact token counts and endings (the counters of DESIGN "Observability" v3), the first-token
and output-token histograms, the access log's `graysplit_llm` property, the bytes unchanged end to
end (sha256 of what the client received against what the app sent), each event reaching the
client before the app sends the next, what is not read (gzip, other content types, paths outside
`llm.paths`), aborted streams (cut by the app, reset by the client), events longer than
`max_event_bytes` losing only their signals, SSE split at any byte, and bad `llm` / guard v3
fields refused with their JSON paths.

Counters are compared as deltas over one test (the module shares an Envoy), exactly: every
counter of both versions that moved, and by how much.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import time
from dataclasses import dataclass

import pytest

import harness
from harness import Conn, plugin_config, user_in, wait_until
from it_config import refused_at
from llm_upstream import (Gate, Histogram, RawTee, Script, access_log_lines, anthropic_client,
                          delta, histogram, launch, llm_apps, llm_property, llm_stats,
                          openai_client, parse_llm_property, sse_events)

SALT = "llm"
RULES = [{"name": "ramp", "salt": SALT, "split": [{"version": "v2", "percent": 50}]}]
CONFIG = plugin_config(RULES, llm={})
USER = {"v1": user_in(SALT, 5000, 10000), "v2": user_in(SALT, 0, 5000)}
VERSIONS = ("v1", "v2")

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
         "responses": "/v1/responses", "anthropic": "/v1/messages", "dify": "/v1/chat-messages"}
MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Make me 3 slides (幻灯片) about Envoy."}]

_tags = iter(range(10**9))


def new_tag(what: str = "t") -> str:
    return f"{what}-{next(_tags)}"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def apps():
    a = llm_apps(VERSIONS)
    yield a
    a.close()


@pytest.fixture(scope="module")
def envoy(apps, tmp_path_factory):
    e = launch(tmp_path_factory.mktemp("llm"), CONFIG, apps.ports)
    yield e
    e.stop()


def script(apps, name: str, per_version: dict | None = None, **common) -> dict[str, Script]:
    """Registers script `name` on both apps (`per_version[v]` fields over `common`)."""
    return {v: apps[v].script(name, **{**common, **(per_version or {}).get(v, {})})
            for v in VERSIONS}


# --------------------------------------------------------------------------- what moved

class Watch:
    """The llm counters of both versions and the access log's length at the start, so a test
    asserts exactly what its answers moved."""

    def __init__(self, envoy, rule: str = "ramp", versions=VERSIONS):
        self.envoy, self.rule, self.versions = envoy, rule, versions
        self.before = {v: llm_stats(envoy, v, rule) for v in versions}
        self.lines0 = len(access_log_lines(envoy))

    def moved(self) -> dict[str, dict[str, int]]:
        return {v: delta(llm_stats(self.envoy, v, self.rule), self.before[v]) for v in self.versions}

    def lines(self, n: int, timeout: float = 10.0) -> list[str]:
        """The access log lines written since the start, once there are `n` of them."""
        def enough():
            got = access_log_lines(self.envoy)[self.lines0:]
            return got if len(got) >= n else None
        got = wait_until(enough, timeout, f"{n} access log lines")
        assert len(got) == n, got
        return got

    def expect(self, want: dict[str, dict[str, int]], timeout: float = 5.0) -> None:
        """Waits until what moved is exactly `want` (absent versions: nothing moved)."""
        want = {v: want.get(v, {}) for v in self.versions}
        try:
            wait_until(lambda: self.moved() == want, timeout, "the llm counters")
        except AssertionError:
            pass
        assert self.moved() == want


def finish_of(fmt: str, s: Script) -> str:
    """The ending DESIGN gives the answer `s` scripts in format `fmt`."""
    if s.status >= 500:
        return "error"
    if s.cut_after is not None:
        return "aborted"
    native = {"function_call": "tool_calls", "stop_sequence": "stop",
              "max_output_tokens": "length", "content_filter": "content_filter"}
    if s.native_ending:
        return native[s.native_ending]
    return s.ending


def expected(fmt: str, s: Script, *, stream: bool, include_usage: bool = True, n: int = 1,
             tokens: bool = True) -> dict[str, int]:
    """The counters `n` whole answers of script `s` move."""
    out: dict[str, int] = {}
    no_usage = (fmt in ("chat", "completions") and stream and not include_usage) or \
        (fmt in ("responses", "dify") and s.ending == "error")
    if tokens and not no_usage:
        kinds = {"input": s.input_tokens, "output": s.output_tokens}
        if fmt in ("chat", "completions", "anthropic"):
            kinds["cached"] = s.cached_tokens
        if fmt in ("chat", "completions"):
            kinds["reasoning"] = s.reasoning_tokens
        if fmt == "responses":           # the Responses usage always has both details
            kinds["cached"], kinds["reasoning"] = s.cached_tokens or 0, s.reasoning_tokens or 0
        for k, v in kinds.items():
            if v:
                out[f"tokens.{k}"] = v * n
    out[f"finish.{finish_of(fmt, s)}"] = n
    return out


# --------------------------------------------------------------------------- the real clients

@dataclass
class Seen:
    """What the client library parsed of one answer."""
    input: int | None = None
    output: int | None = None
    cached: int | None = None
    reasoning: int | None = None
    ending: str | None = None        # the format's own word
    text: str = ""
    items: int = 0                   # chunks / events the library yielded


def headers_for(version: str, name: str, tag: str) -> dict[str, str]:
    return {"x-user-id": USER[version], "x-script": name, "x-test-id": tag}


def ask(port: int, fmt: str, stream: bool, headers: dict, *, how: str = "create",
        include_usage: bool = True, prefix: str = "/v1", tee: RawTee | None = None,
        on_item=None) -> Seen:
    """One answer with the real client of its format (Dify: httpx, it has no official one);
    `on_item(item)` is called as each chunk / event arrives."""
    seen = Seen()
    note = on_item or (lambda item: None)
    if fmt in ("chat", "completions", "responses"):
        c = openai_client(port, prefix, tee, headers)
        extra = {"stream_options": {"include_usage": True}} if stream and include_usage and \
            fmt != "responses" else {}
        if fmt == "chat":
            if how == "stream":
                with c.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES, **extra) as st:
                    for ev in st:
                        seen.items += 1
                        note(ev)
                    r = st.get_final_completion()
                seen.ending, seen.text = r.choices[0].finish_reason, r.choices[0].message.content or ""
                u = r.usage
            elif stream:
                u = None
                for ch in c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                    stream=True, **extra):
                    seen.items += 1
                    note(ch)
                    if ch.usage:
                        u = ch.usage
                    for choice in ch.choices:
                        seen.text += choice.delta.content or ""
                        if choice.delta.tool_calls:
                            seen.text += choice.delta.tool_calls[0].function.arguments or ""
                        seen.ending = choice.finish_reason or seen.ending
            else:
                r = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                m = r.choices[0].message
                seen.ending = r.choices[0].finish_reason
                seen.text = m.content or (m.tool_calls[0].function.arguments if m.tool_calls else "")
                u = r.usage
            if u is not None:
                seen.input, seen.output = u.prompt_tokens, u.completion_tokens
                seen.cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else None
                seen.reasoning = (u.completion_tokens_details.reasoning_tokens
                                  if u.completion_tokens_details else None)
        elif fmt == "completions":
            u = None
            if stream:
                for ch in c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi",
                                               stream=True, **extra):
                    seen.items += 1
                    note(ch)
                    u = ch.usage or u
                    for choice in ch.choices:
                        seen.text += choice.text
                        seen.ending = choice.finish_reason or seen.ending
            else:
                r = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
                seen.text, seen.ending, u = r.choices[0].text, r.choices[0].finish_reason, r.usage
            if u is not None:
                seen.input, seen.output = u.prompt_tokens, u.completion_tokens
                seen.cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else None
                seen.reasoning = (u.completion_tokens_details.reasoning_tokens
                                  if u.completion_tokens_details else None)
        else:
            if stream:
                r = None
                for ev in c.responses.create(model="gpt-4.1", input="Say hi", stream=True):
                    seen.items += 1
                    note(ev)
                    if ev.type == "response.output_text.delta":
                        seen.text += ev.delta
                    if ev.type in ("response.completed", "response.incomplete", "response.failed"):
                        r = ev.response
            else:
                r = c.responses.create(model="gpt-4.1", input="Say hi")
                seen.text = r.output_text
            if r is not None:
                seen.ending = r.status + (f":{r.incomplete_details.reason}"
                                          if r.incomplete_details else "")
                if r.usage:
                    seen.input, seen.output = r.usage.input_tokens, r.usage.output_tokens
                    seen.cached = r.usage.input_tokens_details.cached_tokens
                    seen.reasoning = r.usage.output_tokens_details.reasoning_tokens
    elif fmt == "anthropic":
        c = anthropic_client(port, tee, headers, root=prefix[:-len("/v1")])
        kw = dict(model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES[1:],
                  system=MESSAGES[0]["content"])
        if how == "stream":
            with c.messages.stream(**kw) as st:
                for ev in st:
                    seen.items += 1
                    note(ev)
                m = st.get_final_message()
        elif stream:
            m = None
            for ev in c.messages.create(stream=True, **kw):
                seen.items += 1
                note(ev)
                if ev.type == "message_start":
                    seen.input = ev.message.usage.input_tokens
                    seen.cached = ev.message.usage.cache_read_input_tokens
                elif ev.type == "content_block_delta":
                    seen.text += getattr(ev.delta, "text", None) or getattr(ev.delta, "partial_json", "")
                elif ev.type == "message_delta":
                    seen.output, seen.ending = ev.usage.output_tokens, ev.delta.stop_reason
        else:
            m = c.messages.create(**kw)
        if m is not None:
            seen.input, seen.output = m.usage.input_tokens, m.usage.output_tokens
            seen.cached, seen.ending = m.usage.cache_read_input_tokens, m.stop_reason
            seen.text = "".join(getattr(b, "text", "") or json.dumps(getattr(b, "input", ""))
                                for b in m.content)
    else:
        import httpx2
        http = httpx2.Client(transport=tee.transport) if tee else httpx2.Client()
        body = {"inputs": {}, "query": "Say hi", "user": "abc-123", "conversation_id": "",
                "response_mode": "streaming" if stream else "blocking"}
        url = f"http://127.0.0.1:{port}{prefix}/chat-messages"
        with http:
            if stream:
                with http.stream("POST", url, json=body, headers=headers, timeout=30) as r:
                    for _, data in sse_events(r.iter_raw()):
                        ev = json.loads(data)
                        seen.items += 1
                        note(ev)
                        if ev["event"] in ("message", "agent_message"):
                            seen.text += ev["answer"]
                        elif ev["event"] == "message_end":
                            u = ev["metadata"]["usage"]
                            seen.input, seen.output = u["prompt_tokens"], u["completion_tokens"]
                            seen.ending = "message_end"
                        elif ev["event"] == "error":
                            seen.ending = "error"
            else:
                doc = http.post(url, json=body, headers=headers, timeout=30).json()
                u = doc["metadata"]["usage"]
                seen.input, seen.output, seen.text = u["prompt_tokens"], u["completion_tokens"], doc["answer"]
                seen.ending = "message"
    return seen


def native_word(fmt: str, s: Script) -> str:
    """What the client reads as the ending of script `s` in format `fmt`."""
    if fmt == "anthropic":
        return s.native_ending or {"stop": "end_turn", "length": "max_tokens",
                                   "tool_calls": "tool_use", "content_filter": "refusal"}[s.ending]
    if fmt == "responses":
        return {"stop": "completed", "length": "incomplete:max_output_tokens",
                "content_filter": "incomplete:content_filter", "error": "failed"}[s.ending]
    if fmt == "dify":
        return "error" if s.ending == "error" else "message_end"
    return s.native_ending or s.ending


def check_seen(seen: Seen, fmt: str, s: Script, stream: bool, include_usage: bool = True) -> None:
    """The client read the whole answer: its scripted counts and ending."""
    if fmt == "dify" and not stream:
        assert (seen.input, seen.output) == (s.input_tokens, s.output_tokens), seen
        return
    assert seen.ending == native_word(fmt, s), seen
    if fmt in ("chat", "completions") and stream and not include_usage:
        assert seen.input is None and seen.output is None, seen
        return
    if fmt == "responses" and s.ending == "error":
        return
    if fmt == "dify" and s.ending == "error":
        return
    assert (seen.input, seen.output) == (s.input_tokens, s.output_tokens), seen
    if fmt in ("chat", "completions", "anthropic") and s.cached_tokens is not None:
        assert seen.cached == s.cached_tokens, seen


def raw_request(fmt: str, stream: bool, include_usage: bool = True) -> bytes:
    """The JSON body each format's client sends."""
    if fmt == "chat":
        doc = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
        if stream and include_usage:
            doc["stream_options"] = {"include_usage": True}
    elif fmt == "completions":
        doc = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": stream}
        if stream and include_usage:
            doc["stream_options"] = {"include_usage": True}
    elif fmt == "responses":
        doc = {"model": "gpt-4.1", "input": "Say hi", "stream": stream}
    elif fmt == "anthropic":
        doc = {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": MESSAGES[1:],
               "stream": stream}
    else:
        doc = {"inputs": {}, "query": "Say hi", "user": "abc-123",
               "response_mode": "streaming" if stream else "blocking"}
    return json.dumps(doc).encode()


def raw_post(port: int, fmt: str, stream: bool, headers: dict, path: str | None = None,
             include_usage: bool = True) -> harness.Resp:
    """The same request with the raw client (the exact body bytes, nothing decoded)."""
    with Conn(port, timeout=30) as c:
        return c.request("POST", path or PATHS[fmt],
                         [("content-type", "application/json"), *headers.items()],
                         raw_request(fmt, stream, include_usage))


# --------------------------------------------------------------------------- counts per version

@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def it_counts_the_tokens_and_endings_of_openai_chat_answers_per_version(envoy, apps, stream):
    """v1 answers one chat completion (11/22/3/4 tokens, stop), v2 two (101/202/30/40, length):
    each version's counters move by exactly its answers' counts, and the client received the
    bytes the app sent."""
    name = new_tag("chat")
    s = script(apps, name, {"v1": dict(input_tokens=11, output_tokens=22, cached_tokens=3,
                                       reasoning_tokens=4),
                            "v2": dict(input_tokens=101, output_tokens=202, cached_tokens=30,
                                       reasoning_tokens=40, ending="length")})
    w = Watch(envoy)
    tee = RawTee()
    tags = []
    for v, n in (("v1", 1), ("v2", 2)):
        for _ in range(n):
            tag = new_tag()
            tags.append((v, tag))
            seen = ask(envoy.port, "chat", stream, headers_for(v, name, tag), tee=tee)
            check_seen(seen, "chat", s[v], stream)
            assert seen.text == s[v].text
    w.lines(3)
    w.expect({"v1": expected("chat", s["v1"], stream=stream),
              "v2": expected("chat", s["v2"], stream=stream, n=2)})
    for v, tag in tags:
        assert tee.sha256(tag) == apps[v].wait_answer(tag).sha256, f"{v} {tag}: bytes changed"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def it_counts_openai_legacy_completions(envoy, apps, stream):
    name = new_tag("cmpl")
    s = script(apps, name, {"v1": dict(input_tokens=5, output_tokens=7),
                            "v2": dict(input_tokens=50, output_tokens=70, cached_tokens=8,
                                       ending="length")})
    w = Watch(envoy)
    for v in VERSIONS:
        check_seen(ask(envoy.port, "completions", stream, headers_for(v, name, new_tag())),
                   "completions", s[v], stream)
    w.lines(2)
    w.expect({v: expected("completions", s[v], stream=stream) for v in VERSIONS})


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def it_counts_openai_responses_api_answers(envoy, apps, stream):
    """Responses: input_tokens, output_tokens, input_tokens_details.cached_tokens,
    output_tokens_details.reasoning_tokens; status completed -> stop, incomplete
    (max_output_tokens) -> length."""
    name = new_tag("resp")
    s = script(apps, name, {"v1": dict(input_tokens=36, output_tokens=87, cached_tokens=12,
                                       reasoning_tokens=64),
                            "v2": dict(input_tokens=360, output_tokens=870, ending="length")})
    w = Watch(envoy)
    for v in VERSIONS:
        check_seen(ask(envoy.port, "responses", stream, headers_for(v, name, new_tag())),
                   "responses", s[v], stream)
    w.lines(2)
    w.expect({v: expected("responses", s[v], stream=stream) for v in VERSIONS})


@pytest.mark.parametrize("how", ["create", "create-stream", "messages.stream"])
def it_counts_anthropic_messages_with_the_last_output_count(envoy, apps, how):
    """Anthropic: input_tokens, cache_read_input_tokens, output_tokens; streamed, message_start
    says output_tokens 1 and message_delta the cumulative count, which is the one that counts
    (v2's message_delta repeats the input and cache counts, cumulative too: counted once)."""
    name = new_tag("anth")
    s = script(apps, name, {"v1": dict(input_tokens=25, output_tokens=15, cached_tokens=7),
                            "v2": dict(input_tokens=250, output_tokens=150, cached_tokens=70,
                                       ending="length", cumulative_usage=True)})
    stream = how != "create"
    w = Watch(envoy)
    for v in VERSIONS:
        seen = ask(envoy.port, "anthropic", stream, headers_for(v, name, new_tag()),
                   how="stream" if how == "messages.stream" else "create")
        check_seen(seen, "anthropic", s[v], stream)
    w.lines(2)
    w.expect({v: expected("anthropic", s[v], stream=stream) for v in VERSIONS})


@pytest.mark.parametrize("agent", [False, True], ids=["chat", "agent"])
@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def it_counts_dify_answers(envoy, apps, stream, agent):
    """Dify chat-messages: metadata.usage prompt_tokens / completion_tokens of message_end (or
    the blocking JSON); message / agent_message events; message_end -> stop."""
    name = new_tag("dify")
    s = script(apps, name, {"v1": dict(input_tokens=1033, output_tokens=135),
                            "v2": dict(input_tokens=10, output_tokens=13)}, dify_agent=agent)
    w = Watch(envoy)
    for v in VERSIONS:
        check_seen(ask(envoy.port, "dify", stream, headers_for(v, name, new_tag())), "dify",
                   s[v], stream)
    w.lines(2)
    w.expect({v: expected("dify", s[v], stream=stream) for v in VERSIONS})


ENDINGS = [
    # (format, streamed?, script fields)
    *[(f, st, {"ending": e}) for f in ("chat", "anthropic") for st in (False, True)
      for e in ("stop", "length", "tool_calls", "content_filter")],
    ("chat", False, {"native_ending": "function_call", "ending": "tool_calls"}),
    ("chat", True, {"native_ending": "function_call"}),
    ("anthropic", False, {"native_ending": "stop_sequence"}),
    ("anthropic", True, {"native_ending": "stop_sequence"}),
    *[("completions", st, {"ending": e}) for st in (False, True)
      for e in ("stop", "length", "content_filter")],
    *[("responses", st, {"ending": e}) for st in (False, True)
      for e in ("stop", "length", "content_filter")],
    ("responses", True, {"ending": "error"}),
    ("dify", True, {"ending": "error"}),
]


@pytest.mark.parametrize("fmt,stream,fields", ENDINGS,
                         ids=[f"{f}-{'stream' if st else 'json'}-{x.get('native_ending') or x['ending']}"
                              for f, st, x in ENDINGS])
def it_maps_each_formats_ending_to_its_finish(envoy, apps, fmt, stream, fields):
    """OpenAI finish_reason as it is (function_call -> tool_calls); Anthropic end_turn /
    stop_sequence -> stop, max_tokens -> length, tool_use -> tool_calls, refusal ->
    content_filter; Responses completed -> stop, incomplete -> length or content_filter, failed
    -> error; Dify error -> error. One answer of the gray version, nothing on stable."""
    name = new_tag("end")
    s = apps["v2"].script(name, input_tokens=9, output_tokens=19, **fields)
    w = Watch(envoy)
    seen = ask(envoy.port, fmt, stream, headers_for("v2", name, new_tag()))
    check_seen(seen, fmt, s, stream)
    w.lines(1)
    w.expect({"v2": expected(fmt, s, stream=stream)})


def it_counts_no_tokens_when_the_stream_carries_no_usage(envoy, apps):
    """A chat stream asked without stream_options.include_usage has no usage: the answer counts
    (finish stop, a first token) and no token counter moves; the access log says so."""
    name = new_tag("nousage")
    s = script(apps, name)
    w = Watch(envoy)
    check_seen(ask(envoy.port, "chat", True, headers_for("v2", name, new_tag()),
                   include_usage=False), "chat", s["v2"], True, include_usage=False)
    (line,) = w.lines(1)
    w.expect({"v2": {"finish.stop": 1}})
    assert re.fullmatch(r"first_token_ms=\d+ finish=stop", llm_property(line)), line


# --------------------------------------------------------------------------- the access log

def it_prints_each_answers_signals_in_the_access_log(envoy, apps):
    """`llm="in=.. out=.. cached=.. reasoning=.. first_token_ms=.. finish=.."`, absent parts
    left out; `-` for a response that is not an answer."""
    name = new_tag("log")
    script(apps, name, {"v2": dict(input_tokens=11, output_tokens=22, cached_tokens=3,
                                   reasoning_tokens=4)})
    nocache = new_tag("log")
    script(apps, nocache, input_tokens=8, output_tokens=9)
    w = Watch(envoy)
    ask(envoy.port, "chat", False, headers_for("v2", name, new_tag()))
    ask(envoy.port, "chat", True, headers_for("v2", name, new_tag()))
    ask(envoy.port, "anthropic", True, headers_for("v1", nocache, new_tag()))
    ask(envoy.port, "dify", True, headers_for("v1", nocache, new_tag()))
    assert envoy.get("/", [("x-user-id", USER["v2"])]).header("x-app-version") == "v2"
    lines = w.lines(5)
    props = [llm_property(ln) for ln in lines]
    assert re.fullmatch(r"in=11 out=22 cached=3 reasoning=4 first_token_ms=\d+ finish=stop",
                        props[0]), lines[0]
    assert re.fullmatch(r"in=11 out=22 cached=3 reasoning=4 first_token_ms=\d+ finish=stop",
                        props[1]), lines[1]
    assert re.fullmatch(r"in=8 out=9 first_token_ms=\d+ finish=stop", props[2]), lines[2]
    assert re.fullmatch(r"in=8 out=9 first_token_ms=\d+ finish=stop", props[3]), lines[3]
    assert props[4] == "-", lines[4]


# --------------------------------------------------------------------------- histograms

def hist_count(envoy, family: str, version: str) -> float:
    h = histogram(envoy, family, version)
    return h.count if h else 0.0


def hist_delta(envoy, family: str, version: str, before: Histogram | None):
    """(bucket le -> count moved, sum moved, count moved) since `before`."""
    after = histogram(envoy, family, version)
    assert after is not None, f"no {family} histogram of ramp/{version} in /stats/prometheus"
    b = before or Histogram({}, 0.0, 0.0)
    return {le: after.at(le) - b.at(le) for le in after.buckets}, after.sum - b.sum, \
        after.count - b.count


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def it_records_the_first_token_time_and_output_tokens_in_histograms(apps, tmp_path, stream):
    """The gray app sends its headers (and, streamed, a role-only chunk) at once and the first
    text 1.2 s later: its first-token sample is >= 1000 ms (in /stats/prometheus: the le=1000
    bucket does not move, le=2500 does, _sum by at least 1000), and no more than what the client
    itself measured; stable's answer is fast (le=1000). The output-token histogram takes each
    answer's output count (202 -> le=250, not le=100). An Envoy of its own: no sample of another
    test may still be on its way to the next stats flush."""
    envoy = launch(tmp_path, CONFIG, apps.ports)
    try:
        histograms_of_two_answers(envoy, apps, stream)
    finally:
        envoy.stop()


def histograms_of_two_answers(envoy, apps, stream: bool) -> None:
    name = new_tag("ftt")
    s = script(apps, name, {"v1": dict(output_tokens=20),
                            "v2": dict(output_tokens=202, first_token_delay_s=1.2)})
    before = {v: (histogram(envoy, "llm_first_token_ms", v), histogram(envoy, "llm_output_tokens", v))
              for v in VERSIONS}
    w = Watch(envoy)
    client_ms = {}
    for v in VERSIONS:
        first: list[float] = []
        t0 = time.monotonic()

        def on_item(ch):
            if not first and ch.choices and ch.choices[0].delta.content:
                first.append(time.monotonic())
        seen = ask(envoy.port, "chat", stream, headers_for(v, name, new_tag()), on_item=on_item)
        check_seen(seen, "chat", s[v], stream)
        client_ms[v] = ((first[0] if first else time.monotonic()) - t0) * 1000
    lines = w.lines(2)
    w.expect({v: expected("chat", s[v], stream=stream) for v in VERSIONS})
    ftt = {v: int(parse_llm_property(llm_property(ln))["first_token_ms"])
           for v, ln in zip(VERSIONS, lines)}
    assert 1200 <= ftt["v2"] <= client_ms["v2"] + 1, (ftt, client_ms)
    assert ftt["v1"] <= client_ms["v1"] + 1, (ftt, client_ms)

    n0 = {(f, v): (before[v][i].count if before[v][i] else 0.0)
          for v in VERSIONS for i, f in enumerate(("llm_first_token_ms", "llm_output_tokens"))}
    wait_until(lambda: all(hist_count(envoy, f, v) > n for (f, v), n in n0.items()), 10,
               "the samples to reach /stats/prometheus (at a stats flush)")
    b2, sum2, n2 = hist_delta(envoy, "llm_first_token_ms", "v2", before["v2"][0])
    assert n2 == 1 and b2[1000.0] == 0 and b2[2500.0] == 1 and sum2 >= 1000, (b2, sum2, n2)
    b1, sum1, n1 = hist_delta(envoy, "llm_first_token_ms", "v1", before["v1"][0])
    assert n1 == 1 and b1[1000.0] == 1 and sum1 < 1000, (b1, sum1, n1)
    o2, osum2, on2 = hist_delta(envoy, "llm_output_tokens", "v2", before["v2"][1])
    assert on2 == 1 and o2[100.0] == 0 and o2[250.0] == 1 and 150 <= osum2 <= 250, (o2, osum2)
    o1, osum1, on1 = hist_delta(envoy, "llm_output_tokens", "v1", before["v1"][1])
    assert on1 == 1 and o1[10.0] == 0 and o1[25.0] == 1, (o1, osum1)


def it_times_a_json_answers_first_token_at_its_first_body_byte(envoy, apps):
    """A JSON answer whose headers come at once and whose body 1.2 s later: first_token_ms >=
    1200."""
    name = new_tag("fttjson")
    s = script(apps, name, {"v2": dict(first_delay_s=1.2)})
    w = Watch(envoy)
    check_seen(ask(envoy.port, "anthropic", False, headers_for("v2", name, new_tag())),
               "anthropic", s["v2"], False)
    (line,) = w.lines(1)
    assert int(parse_llm_property(llm_property(line))["first_token_ms"]) >= 1200, line


FIRST = [("chat", "stop"), ("chat", "tool_calls"), ("completions", "stop"), ("responses", "stop"),
         ("responses", "tool_calls"), ("anthropic", "stop"), ("anthropic", "tool_calls"),
         ("dify", "stop")]


@pytest.mark.parametrize("fmt,ending", FIRST, ids=[f"{f}-{e}" for f, e in FIRST])
def it_times_the_first_token_at_the_first_event_with_text_or_a_tool_call(envoy, apps, fmt,
                                                                           ending):
    """The events before the first text or tool-call delta (a role-only chunk, message_start,
    content_block_start, ping, response.created / in_progress / output_item.added, a Dify
    agent_thought) go at once, that delta 1 s later: first_token_ms >= 1000, and no more than
    the client itself measured from sending the request to that event."""
    name = new_tag("first")
    apps["v2"].script(name, ending=ending, first_token_delay_s=1.0, dify_agent=fmt == "dify")
    w = Watch(envoy)
    got: list[float] = []
    t0 = time.monotonic()
    ask(envoy.port, fmt, True, headers_for("v2", name, new_tag()),
        on_item=lambda item: got.append(time.monotonic()))
    (line,) = w.lines(1)
    sent = apps["v2"].answers[-1]
    assert sent.done
    prop = parse_llm_property(llm_property(line))
    # The client's clock: from before the request to the last event it read (an upper bound).
    assert 1000 <= int(prop["first_token_ms"]) <= (got[-1] - t0) * 1000 + 1, (prop, line)


def it_counts_a_5xx_as_an_answer_ending_error_whatever_its_content_type(envoy, apps):
    """OpenAI 500, Anthropic 529 (overloaded), Dify 500 (each format's JSON error body) and a
    502 in text/html: each one answer ending `error`, no tokens; the client libraries raise
    their server errors."""
    import anthropic
    import openai
    e500, e529, html = new_tag("e500"), new_tag("e529"), new_tag("html")
    script(apps, e500, status=500)
    script(apps, e529, status=529)
    script(apps, html, status=502, content_type="text/html")
    w = Watch(envoy)
    with pytest.raises(openai.InternalServerError):
        ask(envoy.port, "chat", True, headers_for("v2", e500, new_tag()))
    with pytest.raises(anthropic.InternalServerError) as err:
        ask(envoy.port, "anthropic", False, headers_for("v2", e529, new_tag()))
    assert err.value.status_code == 529
    r = raw_post(envoy.port, "dify", True, headers_for("v2", e500, new_tag()))
    assert r.status == 500 and json.loads(r.body)["code"] == "internal_server_error", r
    r = raw_post(envoy.port, "chat", False, headers_for("v2", html, new_tag()))
    assert r.status == 502 and r.header("content-type") == "text/html", r
    lines = w.lines(4)
    for ln in lines:
        assert re.fullmatch(r"(first_token_ms=\d+ )?finish=error", llm_property(ln)), ln
    w.expect({"v2": {"finish.error": 4}})


# --------------------------------------------------------------------------- bytes, timing

VARIANTS = {
    "plain": {},
    "crlf": {"crlf": True},
    "comments": {"comments": True},
    "multiline-data": {"multiline": True},
    "odd-writes": {"split": "odd"},
    "odd-writes-crlf": {"split": "odd", "crlf": True},
    "one-write": {"split": "together"},
}


FRAMINGS = [(f, True, v) for f in ("chat", "completions", "responses", "anthropic", "dify")
            for v in sorted(VARIANTS)] + \
           [(f, False, v) for f in ("chat", "anthropic") for v in ("plain", "odd-writes")]


@pytest.mark.parametrize("fmt,stream,variant", FRAMINGS,
                         ids=[f"{f}-{'stream' if st else 'json'}-{v}" for f, st, v in FRAMINGS])
def it_passes_every_byte_and_still_reads_the_answer(envoy, apps, fmt, stream, variant):
    """Whatever the framing (CRLF, SSE comments, multi-line data:, writes cut inside UTF-8
    characters and between CR and LF, all events in one write), the real client reads the answer,
    a raw client receives exactly the bytes the app sent, and the counts of both are exact."""
    name = new_tag("bytes")
    s = script(apps, name, {"v2": dict(input_tokens=41, output_tokens=42, cached_tokens=5,
                                       reasoning_tokens=6, **VARIANTS[variant])})
    w = Watch(envoy)
    check_seen(ask(envoy.port, fmt, stream, headers_for("v2", name, new_tag())), fmt, s["v2"],
               stream)
    tag = new_tag()
    r = raw_post(envoy.port, fmt, stream, headers_for("v2", name, tag))
    assert r.status == 200 and r.header("x-app-version") == "v2", r
    sent = apps["v2"].wait_answer(tag)
    assert sent.done, sent
    assert hashlib.sha256(r.body).hexdigest() == sent.sha256, "the bytes changed on the way"
    w.lines(2)
    w.expect({"v2": expected(fmt, s["v2"], stream=stream, n=2)})


@pytest.mark.parametrize("fmt", ["chat", "responses", "anthropic", "dify"])
def it_passes_each_event_on_before_the_app_sends_the_next(envoy, apps, fmt):
    """The app sends each event only after the client received the one before (a Gate the
    client opens per event, waits of 5 s at most): no wait timed out, so no event was held
    until more came; and the answer was still read."""
    gate = Gate(timeout=5)
    name = new_tag("gate")
    s = apps["v2"].script(name, gate=gate, events=6)
    w = Watch(envoy)
    tag = new_tag()
    seen = ask(envoy.port, fmt, True, headers_for("v2", name, tag), on_item=lambda _: gate.release())
    sent = apps["v2"].wait_answer(tag)
    assert gate.timeouts == 0, f"{gate.timeouts} events waited out their gate: the client " \
                               f"did not get the event before (after {seen.items} items)"
    assert gate.waits >= 6, gate.waits
    check_seen(seen, fmt, s, True)
    w.lines(1)
    w.expect({"v2": expected(fmt, s, stream=True)})


# --------------------------------------------------------------------------- what is not read

def it_does_not_read_gzip_or_other_content_types(envoy, apps):
    """A gzip answer (the client decodes it and reads its counts), a JSON answer labelled
    text/plain, and an SSE answer labelled application/octet-stream pass byte for byte and move
    no llm counter; their access log says `-`. The same answers with `application/json;
    charset=utf-8` and `text/event-stream` (no parameters) are read."""
    gz, plain, octet = new_tag("gz"), new_tag("plain"), new_tag("octet")
    s_gz = script(apps, gz, gzip=True)
    script(apps, plain, content_type="text/plain")
    script(apps, octet, content_type="application/octet-stream")
    w = Watch(envoy)
    tee = RawTee()
    tags = []
    for stream in (False, True):
        tag = new_tag()
        tags.append(tag)
        check_seen(ask(envoy.port, "chat", stream, headers_for("v2", gz, tag), tee=tee), "chat",
                   s_gz["v2"], stream)
    r1 = raw_post(envoy.port, "chat", False, headers_for("v2", plain, new_tag()))
    assert r1.header("content-type") == "text/plain" and json.loads(r1.body)["usage"], r1
    r2 = raw_post(envoy.port, "anthropic", True, headers_for("v2", octet, new_tag()))
    assert b"event: message_stop" in r2.body, r2
    lines = w.lines(4)
    assert [llm_property(ln) for ln in lines] == ["-"] * 4, lines
    w.expect({})
    for tag in tags:
        assert tee.sha256(tag) == apps["v2"].wait_answer(tag).sha256

    params, bare = new_tag("params"), new_tag("bare")
    s_p = script(apps, params, content_type="application/json; charset=utf-8")
    s_b = script(apps, bare, content_type="text/event-stream")
    w = Watch(envoy)
    raw_post(envoy.port, "chat", False, headers_for("v2", params, new_tag()))
    raw_post(envoy.port, "chat", True, headers_for("v2", bare, new_tag()))
    w.lines(2)
    w.expect({"v2": {k: 2 * n for k, n in expected("chat", s_p["v2"], stream=False).items()}})
    assert s_b["v2"].input_tokens == s_p["v2"].input_tokens


def it_reads_only_the_answers_under_llm_paths(apps, tmp_path):
    """`llm.paths: ["/v1/"]`: the same answers under /api/v1/ move nothing (a 5xx there neither),
    under /v1/ they are read."""
    e = launch(tmp_path, plugin_config(RULES, llm={"paths": ["/v1/"]}), apps.ports)
    try:
        name, bad = new_tag("paths"), new_tag("paths5xx")
        s = script(apps, name)
        script(apps, bad, status=500)
        w = Watch(e)
        check_seen(ask(e.port, "chat", True, headers_for("v2", name, new_tag()), prefix="/api/v1"),
                   "chat", s["v2"], True)
        check_seen(ask(e.port, "anthropic", False, headers_for("v2", name, new_tag()),
                       prefix="/api/v1"), "anthropic", s["v2"], False)
        r = raw_post(e.port, "chat", False, headers_for("v2", bad, new_tag()),
                     path="/api/v1/chat/completions")
        assert r.status == 500, r
        lines = w.lines(3)
        assert [llm_property(ln) for ln in lines] == ["-"] * 3, lines
        w.expect({})
        w = Watch(e)
        check_seen(ask(e.port, "chat", True, headers_for("v2", name, new_tag())), "chat",
                   s["v2"], True)
        w.lines(1)
        w.expect({"v2": expected("chat", s["v2"], stream=True)})
    finally:
        e.stop()


# --------------------------------------------------------------------------- aborted

@pytest.mark.parametrize("fmt", ["chat", "completions", "responses", "anthropic", "dify"])
def it_counts_a_stream_the_app_cuts_as_aborted(envoy, apps, fmt):
    """The app closes the connection after 3 events, without the final one: the client gets an
    error, the answer counts as `aborted` (and as nothing else)."""
    name = new_tag("cut")
    apps["v2"].script(name, cut_after=3)
    w = Watch(envoy)
    tag = new_tag()
    with pytest.raises(Exception) as err:
        ask(envoy.port, fmt, True, headers_for("v2", name, tag))
    assert not isinstance(err.value, AssertionError), err.value
    assert apps["v2"].wait_answer(tag).cut
    (line,) = w.lines(1)
    wait_until(lambda: w.moved()["v2"].get("finish.aborted") == 1, 5, "the aborted answer")
    moved = w.moved()
    assert [k for k in moved["v2"] if k.startswith("finish.")] == ["finish.aborted"], moved
    assert moved["v1"] == {}, moved
    if fmt in ("chat", "completions", "dify"):    # no usage before the cut
        assert moved["v2"] == {"finish.aborted": 1}, moved
    assert parse_llm_property(llm_property(line))["finish"] == "aborted", line


def it_counts_a_stream_cut_before_its_first_token_as_aborted_without_a_first_token(envoy, apps):
    name = new_tag("cut1")
    apps["v2"].script(name, cut_after=1)
    w = Watch(envoy)
    with pytest.raises(Exception):
        ask(envoy.port, "chat", True, headers_for("v2", name, new_tag()))
    (line,) = w.lines(1)
    w.expect({"v2": {"finish.aborted": 1}})
    assert llm_property(line) == "finish=aborted", line


@pytest.mark.parametrize("how", ["reset", "close"])
def it_counts_a_stream_the_client_gives_up_on_as_aborted(envoy, apps, how):
    """The client reads the first events of a gated stream, then resets (RST) or closes its
    connection: the answer counts as `aborted`, once."""
    gate = Gate(timeout=10)
    name = new_tag("giveup")
    apps["v2"].script(name, gate=gate, events=5)
    w = Watch(envoy)
    tag = new_tag()
    c = Conn(envoy.port, timeout=10)
    c.sock.sendall(harness.encode_request(
        "POST", PATHS["chat"], [("content-type", "application/json"),
                                *headers_for("v2", name, tag).items()],
        body=raw_request("chat", True)))
    gate.release(2)
    wait_until(lambda: c._fill() or b'"content":"Hello' in c.buf or None, 10,
               "the first text event at the client")
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    # The stream is over at Envoy (its access log line) before the app may send the rest.
    w.lines(1)
    gate.open()
    w.expect({"v2": {"finish.aborted": 1}})


def it_counts_a_stream_the_client_gives_up_on_before_its_first_event_as_aborted(envoy, apps):
    """The user who stops waiting for a first token that does not come: the response headers
    reached the client, no event did, and the client resets. Aborted (DESIGN: a stream reset
    before its final event), with no first-token time; not `unknown`."""
    name = new_tag("giveup0")
    apps["v2"].script(name, first_delay_s=3.0, events=3)
    w = Watch(envoy)
    c = Conn(envoy.port, timeout=10)
    c.sock.sendall(harness.encode_request(
        "POST", PATHS["chat"], [("content-type", "application/json"),
                                *headers_for("v2", name, new_tag()).items()],
        body=raw_request("chat", True)))
    wait_until(lambda: c._fill() or b"\r\n\r\n" in c.buf or None, 10, "the response headers at the client")
    assert b"data:" not in c.buf
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    (line,) = w.lines(1)
    w.expect({"v2": {"finish.aborted": 1}})
    assert llm_property(line) == "finish=aborted", line


# --------------------------------------------------------------------------- max_event_bytes

@pytest.fixture(scope="module")
def small(apps, tmp_path_factory):
    """An Envoy with `llm.max_event_bytes: 4096`."""
    e = launch(tmp_path_factory.mktemp("llm-small"),
               plugin_config(RULES, llm={"max_event_bytes": 4096}), apps.ports)
    yield e
    e.stop()


LONG = [
    # (case, format, streamed?, script fields, the counters that move)
    ("long-text-event", "chat", True, {"pad": {1: 6000}}, "all"),
    ("text-event-under-the-limit", "chat", True, {"pad": {1: 3000}}, "all"),
    ("long-usage-event", "chat", True, {"pad_usage": 6000}, {"finish.stop": 1}),
    ("long-anthropic-delta", "anthropic", True, {"pad": {2: 6000}}, "all"),
    # Responses repeats the whole text in its final event (response.completed): that event is
    # long too, so the usage and the ending are lost: `unknown` (DESIGN: "the answer counts as
    # `unknown` unless already known").
    ("long-responses-answer", "responses", True, {"pad": {1: 6000}}, {"finish.unknown": 1}),
    # Dify's message_end carries the usage and the retriever resources (RAG citations, often
    # long): lost with it, the usage and the ending.
    ("long-dify-message-end", "dify", True, {"pad_usage": 6000}, {"finish.unknown": 1}),
    ("long-json-answer", "chat", False, {"pad": {0: 6000}}, {"finish.unknown": 1}),
    ("json-answer-under-the-limit", "chat", False, {"pad": {0: 3000}}, "all"),
]


@pytest.mark.parametrize("case,fmt,stream,fields,want", LONG, ids=[c[0] for c in LONG])
def it_loses_only_the_signals_of_an_event_longer_than_max_event_bytes(small, apps, case, fmt,
                                                                       stream, fields, want):
    """max_event_bytes 4096: a 6000-byte text event loses only its own signals (the usage and
    ending of the others still count); a long usage chunk loses the tokens, not the ending; a
    JSON answer longer than the limit counts as `unknown`; events under the limit are read. The
    client gets every byte, and reads the whole padded text."""
    name = new_tag("long")
    s = apps["v2"].script(name, input_tokens=17, output_tokens=71, cached_tokens=2, **fields)
    w = Watch(small)
    tee = RawTee()
    tag = new_tag()
    seen = ask(small.port, fmt, stream, headers_for("v2", name, tag), tee=tee)
    check_seen(seen, fmt, s, stream)
    assert len(seen.text) >= len(s.text) + max(s.pad.values(), default=0), "the padded text"
    assert tee.sha256(tag) == apps["v2"].wait_answer(tag).sha256
    w.lines(1)
    w.expect({"v2": expected(fmt, s, stream=stream) if want == "all" else want})


@pytest.mark.parametrize("size,read", [(60_000, True), (70_000, False)])
def it_reads_a_json_answer_up_to_the_default_max_event_bytes(envoy, apps, size, read):
    """Default max_event_bytes 65536: a 60 KB JSON answer is read, a 70 KB one is `unknown`."""
    name = new_tag("default-max")
    s = apps["v2"].script(name, pad={0: size})
    w = Watch(envoy)
    tag = new_tag()
    r = raw_post(envoy.port, "chat", False, headers_for("v2", name, tag))
    assert hashlib.sha256(r.body).hexdigest() == apps["v2"].wait_answer(tag).sha256
    assert size < len(r.body) < size + 1000
    w.lines(1)
    w.expect({"v2": expected("chat", s, stream=False) if read else {"finish.unknown": 1}})


# --------------------------------------------------------------------------- SSE split anywhere

@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("fmt", ["chat", "completions", "responses", "anthropic", "dify"])
def it_reads_a_stream_written_one_byte_at_a_time(envoy, apps, fmt, crlf):
    """Every byte of the stream in its own write (its own HTTP chunk, 0.5 ms apart), so the
    filter gets events cut at every place, UTF-8 characters and CR LF pairs included: the counts
    are exact, the bytes unchanged."""
    name = new_tag("bytewise")
    s = apps["v2"].script(name, input_tokens=3, output_tokens=30, cached_tokens=1, events=2,
                          text="é幻灯片", split="bytes", split_pause_s=0.0005, crlf=crlf)
    w = Watch(envoy)
    check_seen(ask(envoy.port, fmt, True, headers_for("v2", name, new_tag())), fmt, s, True)
    # The bytes with the raw client: a library may stop reading at the CR before the last LF.
    tag = new_tag()
    r = raw_post(envoy.port, fmt, True, headers_for("v2", name, tag))
    assert hashlib.sha256(r.body).hexdigest() == apps["v2"].wait_answer(tag).sha256
    w.lines(2)
    w.expect({"v2": expected(fmt, s, stream=True, n=2)})


# --------------------------------------------------------------------------- metrics and config

def it_has_every_llm_counter_of_every_pair_a_rule_can_decide(envoy):
    """With `llm`: tokens by kind and answers by finish for (ramp, v1), (ramp, v2) and
    (default, v1), before any answer of theirs."""
    got = envoy.stats(r"^wasmcustom\.graysplit_llm_")
    for rule, version in (("ramp", "v1"), ("ramp", "v2"), ("default", "v1")):
        for kind in ("input", "output", "cached", "reasoning"):
            assert f"wasmcustom.graysplit_llm_tokens_total.rule.{rule}.version.{version}.kind.{kind}" in got
        for f in ("stop", "length", "tool_calls", "content_filter", "error", "aborted", "unknown"):
            assert f"wasmcustom.graysplit_llm_answers_total.rule.{rule}.version.{version}.finish.{f}" in got
    prom = envoy.prometheus()
    assert re.search(r'^graysplit_llm_tokens_total\{(?=[^}]*rule="ramp")'
                     r'(?=[^}]*version="v2")(?=[^}]*kind="cached")[^}]*\} \d+$', prom, re.M), \
        [ln for ln in prom.splitlines() if "llm_tokens" in ln][:8]
    assert re.search(r'^graysplit_llm_answers_total\{(?=[^}]*rule="ramp")'
                     r'(?=[^}]*version="v2")(?=[^}]*finish="tool_calls")[^}]*\} \d+$', prom, re.M)


def guarded(i_rule: int = 0, llm: bool = True, **guard) -> dict:
    rules = [{"name": "pilot", "when": {"headers": [{"name": "x-team", "exact": "a"}]},
              "version": "v2"}] if i_rule else []
    rules.append({"name": "ramp", "salt": SALT, "split": [{"version": "v2", "percent": 10}],
                  "guard": {"max_error_percent": 5, **guard}})
    return plugin_config(rules, **({"llm": {}} if llm else {}))


BAD = {
    "max-event-bytes-below": (plugin_config(RULES, llm={"max_event_bytes": 4095}),
                              r"llm\.max_event_bytes", "4095"),
    "max-event-bytes-above": (plugin_config(RULES, llm={"max_event_bytes": 1048577}),
                              r"llm\.max_event_bytes", "1048577"),
    "path-without-slash": (plugin_config(RULES, llm={"paths": ["/v1/", "v2/"]}),
                           r"llm\.paths\[1\]", ""),
    "unknown-llm-field": (plugin_config(RULES, llm={"max_event_byte": 5000}),
                          r"llm(\.max_event_byte)?", ""),
    "first-token-ms-zero": (guarded(first_token_ms=0), r"rules\[0\]\.guard\.first_token_ms", ""),
    "first-token-ms-above": (guarded(first_token_ms=600001),
                             r"rules\[0\]\.guard\.first_token_ms", "600001"),
    "finish-unknown": (guarded(finishes=["length", "timeout"]),
                       r"rules\[0\]\.guard\.finishes\[1\]", "timeout"),
    "ratio-one": (guarded(max_output_ratio=1.0), r"rules\[0\]\.guard\.max_output_ratio", ""),
    "ratio-above": (guarded(max_output_ratio=100.5), r"rules\[0\]\.guard\.max_output_ratio", ""),
    "ratio-three-decimals": (guarded(max_output_ratio=1.555),
                             r"rules\[0\]\.guard\.max_output_ratio", ""),
    "first-token-ms-without-llm": (guarded(llm=False, first_token_ms=3000),
                                   r"rules\[0\]\.guard\.first_token_ms", "llm"),
    "finishes-without-llm": (guarded(llm=False, finishes=["error"]),
                             r"rules\[0\]\.guard\.finishes", "llm"),
    "ratio-without-llm": (guarded(i_rule=1, llm=False, max_output_ratio=1.5),
                          r"rules\[1\]\.guard\.max_output_ratio", "llm"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def it_refuses_bad_llm_and_guard_v3_fields_with_their_json_paths(tmp_path, case):
    refused_at(tmp_path, *BAD[case])


def it_accepts_the_v3_fields_at_their_limits(start_envoy):
    """The bounds themselves are good: max_event_bytes 4096 and 1048576, first_token_ms 1 and
    600000, ratio 1.01 and 100, every finish."""
    for cfg in (plugin_config(RULES, llm={"max_event_bytes": 4096, "paths": ["/"]}),
                plugin_config(RULES, llm={"max_event_bytes": 1048576}),
                guarded(first_token_ms=1, max_output_ratio=1.01,
                        finishes=["stop", "length", "tool_calls", "content_filter", "error",
                                  "aborted", "unknown"]),
                guarded(first_token_ms=600000, max_output_ratio=100)):
        e = start_envoy(cfg)
        assert e.version("/", [("x-user-id", "u")]) in ("v1", "v2")
