"""A stand-in for LLM APIs behind Envoy, for the v3 tests (tests/it_llm.py, tests/it_llm_guard.py).

`LLMApp` is a tests/upstream.py `App` (one real HTTP/1.1 server per version on 127.0.0.1, in a
thread of the test process, keep-alive, the same x-test-id records) that answers POSTs in each
provider's documented wire format, so that the real `openai` and `anthropic` packages accept
every answer:

  POST .../chat/completions   OpenAI chat completions (JSON, or SSE `data: {chunk}` ... `data: [DONE]`,
                              usage in a last `choices: []` chunk when the request asks
                              `stream_options.include_usage`)
  POST .../completions        OpenAI legacy completions (same framing, `object: text_completion`)
  POST .../responses          OpenAI Responses (JSON `object: response`, or SSE `event: response.*`
                              with `sequence_number`, usage in response.completed / incomplete)
  POST .../messages           Anthropic Messages (JSON, or SSE message_start / content_block_* /
                              ping / message_delta / message_stop)
  POST .../chat-messages      Dify chat app (`response_mode` blocking: JSON; streaming:
                              `data: {"event": "message" | "agent_message" | "message_end" | "error"}`)

Only the path's ending picks the format, so the same answers can be served under any prefix
(a test of `llm.paths`). Anything else (the harness's GET probes) gets the App's plain answer.

What an answer says and how it is sent is a `Script`: token counts, the ending (in neutral words,
mapped to each format's own), the number of text events, delays (before the headers, before the
first event, before the first event that carries text, between events), a `Gate` the test opens
once per event (so a test proves each event reached the client before the upstream sent the
next), a cut (the connection closed after N events, without the final event or the last chunk),
gzip, another content type, an HTTP 5xx, CRLF line endings, SSE comments, multi-line `data:`,
and writes split at odd places (inside multi-byte UTF-8 characters, between CR and LF, one byte
per write) or all events in one write. A test registers scripts by name (`app.scripts[name]`)
and picks one per request with the `x-script` header; `app.default` answers the rest.

Every answer is recorded (`Answer`): the request's headers, the exact bytes written as the HTTP
body (after any content-encoding, before the chunked framing), their sha256, when each event
left, and whether the answer was sent whole, cut, or broken off by the peer. By `x-test-id` (`app.answer(tag)`)
or in order (`app.answers`).

The second half of this file: what the tests read back (counters, Prometheus histograms, the
access log), an Envoy launcher with a short stats flush interval, and the real clients with a
transport that keeps the raw bytes each response brought.
"""

from __future__ import annotations

import gzip as gzip_mod
import hashlib
import http.server
import itertools
import json
import re
import secrets
import socket
import string
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from upstream import App, Apps, TEST_ID_HEADER

SCRIPT_HEADER = "x-script"
ENDINGS = ("stop", "length", "tool_calls", "content_filter", "error")
SPLITS = (None, "odd", "bytes", "together")


class Gate:
    """Holds each event after the first until the test calls `release()` once for it (an event
    after a silent one, a ping, goes without waiting). A wait
    that times out (the client never saw the previous event) lets the event go and is counted
    in `timeouts`, so a test can assert there were none. `open()` lets everything go."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.sem = threading.Semaphore(0)
        self.opened = threading.Event()
        self.timeouts = 0
        self.waits = 0

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.sem.release()

    def open(self) -> None:
        self.opened.set()
        self.sem.release(1000)

    def wait(self) -> None:
        self.waits += 1
        if self.opened.is_set():
            return
        if not self.sem.acquire(timeout=self.timeout):
            self.timeouts += 1


@dataclass
class Script:
    """What one answer says and how it is sent (see the module docstring)."""
    text: str = "Hello from the model: 幻灯片 ready, café é."
    events: int = 4                    # text (or tool-argument) events
    input_tokens: int | None = 12
    output_tokens: int | None = 34
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    ending: str = "stop"               # one of ENDINGS, in neutral words
    native_ending: str | None = None   # the format's own word instead (e.g. "stop_sequence")
    status: int = 200                  # >= 400: the format's error body, JSON
    headers_delay_s: float = 0.0       # before the response headers
    first_delay_s: float = 0.0         # headers at once, then this before the first event
    first_token_delay_s: float = 0.0   # before the first event that carries text / a tool call
    delay_s: float = 0.0               # between events
    gate: Gate | None = None           # each event after the first waits for gate.release()
    cut_after: int | None = None       # close the connection after this many events
    gzip: bool = False                 # content-encoding: gzip
    content_type: str | None = None    # instead of the format's own
    crlf: bool = False                 # CRLF line endings
    comments: bool = False             # SSE comment lines and comment-only blocks
    multiline: bool = False            # each event's JSON over several `data:` lines
    split: str | None = None           # one of SPLITS
    split_pause_s: float = 0.002       # between the writes of a split event
    pad: dict[int, int] = field(default_factory=dict)  # text event index -> extra characters
    pad_usage: int = 0                 # padding in the event with the usage (chat/completions: its
                                       # system_fingerprint; Dify: a retriever resource)
    cumulative_usage: bool = False     # Anthropic: message_delta repeats input/cache counts too
    dify_agent: bool = False           # Dify: agent_message / agent_thought events
    stream: bool | None = None         # None: as the request asks
    model: str = "test-model"


@dataclass
class Answer:
    """What the app sent for one request."""
    tag: str | None
    path: str
    fmt: str
    stream: bool
    script: str
    status: int
    request: dict
    body: bytearray = field(default_factory=bytearray)
    events: int = 0                     # events in the answer as scripted
    sent_at: list[float] = field(default_factory=list)   # monotonic, per event sent
    headers_at: float = 0.0
    done: bool = False                  # sent whole (the last chunk too)
    cut: bool = False                   # closed on purpose before the end
    broken: str | None = None           # the peer went away while we wrote
    headers: dict = field(default_factory=dict)   # the request's headers (lower-case names)
    raw: bytes = b""                    # the request's body, byte for byte as it arrived

    @property
    def sha256(self) -> str:
        return hashlib.sha256(bytes(self.body)).hexdigest()


# --------------------------------------------------------------------------- the formats

def _rid(prefix: str, n: int = 24, alphabet: str = string.ascii_letters + string.digits) -> str:
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def _pieces(text: str, n: int) -> list[str]:
    """`text` cut into `n` non-empty pieces (by characters)."""
    n = max(1, n)
    while len(text) < n:
        text += " more"
    k, r = divmod(len(text), n)
    out, at = [], 0
    for i in range(n):
        step = k + (1 if i < r else 0)
        out.append(text[at:at + step])
        at += step
    return out


def _padded(s: Script) -> list[str]:
    return [p + ("x" * s.pad.get(i, 0)) for i, p in enumerate(_pieces(s.text, s.events))]


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Ev:
    """One SSE event: its name (None: no `event:` line) and data (a dict, or raw text)."""
    data: object
    name: str | None = None
    content: bool = False     # carries output text or a tool call
    silent: bool = False      # a keep-alive the client libraries do not hand on (ping)


def _tool_args() -> str:
    return _dumps({"city": "Paris", "unit": "celsius"})


def _openai_usage(s: Script) -> dict:
    u: dict = {"prompt_tokens": s.input_tokens or 0, "completion_tokens": s.output_tokens or 0,
               "total_tokens": (s.input_tokens or 0) + (s.output_tokens or 0)}
    if s.cached_tokens is not None:
        u["prompt_tokens_details"] = {"cached_tokens": s.cached_tokens, "audio_tokens": 0}
    if s.reasoning_tokens is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": s.reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}
    return u


def chat(s: Script, req: dict, stream: bool):
    """OpenAI chat completions: (JSON body dict) or (list of Ev)."""
    rid, created = _rid("chatcmpl-", 29), int(time.time())
    model = req.get("model") or s.model
    ending = s.native_ending or s.ending
    tool = s.ending == "tool_calls"
    call_id = _rid("call_", 24)
    if not stream:
        if tool:
            message = {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                       "tool_calls": [{"id": call_id, "type": "function", "function": {
                           "name": "get_weather", "arguments": _tool_args()}}]}
        else:
            message = {"role": "assistant", "content": "".join(_padded(s)), "refusal": None,
                       "annotations": []}
        doc = {"id": rid, "object": "chat.completion", "created": created, "model": model,
               "choices": [{"index": 0, "message": message, "logprobs": None,
                            "finish_reason": ending}],
               "service_tier": "default", "system_fingerprint": "fp_test0001"}
        if s.input_tokens is not None or s.output_tokens is not None:
            doc["usage"] = _openai_usage(s)
        return doc
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_test0001"}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict, finish=None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}]}
    evs = [Ev(chunk({"role": "assistant", "content": None if tool else "", "refusal": None}))]
    if tool:
        args = _pieces(_tool_args(), s.events)
        evs.append(Ev(chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                             "function": {"name": "get_weather", "arguments": ""}}]}),
                      content=True))
        evs += [Ev(chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}), content=True)
                for a in args]
    else:
        evs += [Ev(chunk({"content": p}), content=True) for p in _padded(s)]
    evs.append(Ev(chunk({}, ending)))
    if include_usage:
        evs.append(Ev({**base, "system_fingerprint": "fp_test0001" + "0" * s.pad_usage,
                       "choices": [], "usage": _openai_usage(s)}))
    evs.append(Ev("[DONE]"))
    return evs


def completions(s: Script, req: dict, stream: bool):
    """OpenAI legacy completions."""
    rid, created = _rid("cmpl-", 29), int(time.time())
    model = req.get("model") or s.model
    ending = s.native_ending or s.ending
    if not stream:
        doc = {"id": rid, "object": "text_completion", "created": created, "model": model,
               "system_fingerprint": "fp_test0001",
               "choices": [{"text": "".join(_padded(s)), "index": 0, "logprobs": None,
                            "finish_reason": ending}]}
        if s.input_tokens is not None or s.output_tokens is not None:
            doc["usage"] = _openai_usage(s)
        return doc
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    base = {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_test0001"}
    if include_usage:
        base["usage"] = None
    pieces = _padded(s)
    evs = [Ev({**base, "choices": [{"text": p, "index": 0, "logprobs": None,
                                    "finish_reason": ending if i == len(pieces) - 1 else None}]},
              content=True) for i, p in enumerate(pieces)]
    if include_usage:
        evs.append(Ev({**base, "system_fingerprint": "fp_test0001" + "0" * s.pad_usage,
                       "choices": [], "usage": _openai_usage(s)}))
    evs.append(Ev("[DONE]"))
    return evs


def _responses_usage(s: Script) -> dict:
    return {"input_tokens": s.input_tokens or 0,
            "input_tokens_details": {"cached_tokens": s.cached_tokens or 0},
            "output_tokens": s.output_tokens or 0,
            "output_tokens_details": {"reasoning_tokens": s.reasoning_tokens or 0},
            "total_tokens": (s.input_tokens or 0) + (s.output_tokens or 0)}


def responses(s: Script, req: dict, stream: bool):
    """OpenAI Responses API. Endings: stop -> completed; length -> incomplete
    (max_output_tokens); content_filter -> incomplete (content_filter); error -> failed;
    tool_calls -> a function_call item, completed."""
    rid, created = _rid("resp_", 48, "0123456789abcdef"), int(time.time())
    mid = _rid("msg_", 48, "0123456789abcdef")
    model = req.get("model") or s.model
    status = {"stop": "completed", "tool_calls": "completed", "length": "incomplete",
              "content_filter": "incomplete", "error": "failed"}[s.ending]
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(s.ending)
    if s.native_ending:
        reason = s.native_ending
    tool = s.ending == "tool_calls"
    text = "".join(_padded(s))
    item_status = "completed" if status == "completed" else "incomplete"
    if tool:
        fid, call_id = _rid("fc_", 48, "0123456789abcdef"), _rid("call_", 24)
        item_done = {"type": "function_call", "id": fid, "call_id": call_id, "name": "get_weather",
                     "arguments": _tool_args(), "status": "completed"}
    else:
        item_done = {"type": "message", "id": mid, "status": item_status, "role": "assistant",
                     "content": [{"type": "output_text", "text": text, "annotations": [],
                                  "logprobs": []}]}

    def response(st: str, final: bool) -> dict:
        return {"id": rid, "object": "response", "created_at": created, "status": st,
                "background": False,
                "error": ({"code": "server_error", "message": "The model failed."}
                          if final and st == "failed" else None),
                "incomplete_details": {"reason": reason} if final and st == "incomplete" else None,
                "instructions": None, "max_output_tokens": req.get("max_output_tokens"),
                "model": model, "output": [item_done] if final and st != "failed" else [],
                "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None}, "store": True,
                "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
                "tools": [], "top_p": 1.0, "truncation": "disabled",
                "usage": _responses_usage(s) if final and st != "failed" else None,
                "user": None, "metadata": {}}
    if not stream:
        return response(status, True)
    seq = itertools.count()

    def ev(kind: str, content: bool = False, **fields) -> Ev:
        return Ev({"type": f"response.{kind}", "sequence_number": next(seq), **fields},
                  f"response.{kind}", content)
    evs = [ev("created", response=response("in_progress", False)),
           ev("in_progress", response=response("in_progress", False))]
    if tool:
        evs.append(ev("output_item.added", True, output_index=0,     # the call's id and name
                      item={**item_done, "arguments": "", "status": "in_progress"}))
        evs += [ev("function_call_arguments.delta", True, item_id=item_done["id"], output_index=0,
                   delta=a) for a in _pieces(_tool_args(), s.events)]
        evs.append(ev("function_call_arguments.done", item_id=item_done["id"], output_index=0,
                      arguments=_tool_args()))
    else:
        evs.append(ev("output_item.added", output_index=0,
                      item={"id": mid, "type": "message", "status": "in_progress", "content": [],
                            "role": "assistant"}))
        evs.append(ev("content_part.added", item_id=mid, output_index=0, content_index=0,
                      part={"type": "output_text", "text": "", "annotations": []}))
        evs += [ev("output_text.delta", True, item_id=mid, output_index=0, content_index=0,
                   delta=p, logprobs=[]) for p in _padded(s)]
        evs.append(ev("output_text.done", item_id=mid, output_index=0, content_index=0, text=text,
                      logprobs=[]))
        evs.append(ev("content_part.done", item_id=mid, output_index=0, content_index=0,
                      part={"type": "output_text", "text": text, "annotations": []}))
    evs.append(ev("output_item.done", output_index=0, item=item_done))
    final = {"completed": "completed", "incomplete": "incomplete", "failed": "failed"}[status]
    evs.append(ev(final, response=response(status, True)))
    return evs


def _anthropic_usage(s: Script, output: int) -> dict:
    u: dict = {"input_tokens": s.input_tokens or 0}
    if s.cached_tokens is not None:
        u["cache_creation_input_tokens"] = 0
        u["cache_read_input_tokens"] = s.cached_tokens
    u["output_tokens"] = output
    return u


def anthropic(s: Script, req: dict, stream: bool):
    """Anthropic Messages. Endings: stop -> end_turn, length -> max_tokens, tool_calls ->
    tool_use, content_filter -> refusal (native_ending e.g. stop_sequence)."""
    mid = _rid("msg_01", 22)
    model = req.get("model") or s.model
    stop_reason = s.native_ending or {"stop": "end_turn", "length": "max_tokens",
                                      "tool_calls": "tool_use", "content_filter": "refusal",
                                      "error": "end_turn"}[s.ending]
    stop_sequence = "\n\nHuman:" if stop_reason == "stop_sequence" else None
    tool = s.ending == "tool_calls"
    tid = _rid("toolu_01", 22)
    out = s.output_tokens or 0
    if not stream:
        content = ([{"type": "text", "text": "I'll check."},
                    {"type": "tool_use", "id": tid, "name": "get_weather",
                     "input": json.loads(_tool_args())}] if tool
                   else [{"type": "text", "text": "".join(_padded(s))}])
        return {"id": mid, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                "usage": _anthropic_usage(s, out)}

    def ev(kind: str, content: bool = False, **fields) -> Ev:
        return Ev({"type": kind, **fields}, kind, content)
    evs = [ev("message_start", message={
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _anthropic_usage(s, 1)})]
    if tool:
        # The tool call starts here (its id and name), as chat's first tool_calls delta does.
        evs.append(ev("content_block_start", True, index=0,
                      content_block={"type": "tool_use", "id": tid, "name": "get_weather",
                                     "input": {}}))
        evs.append(Ev({"type": "ping"}, "ping", silent=True))
        evs += [ev("content_block_delta", True, index=0,
                   delta={"type": "input_json_delta", "partial_json": a})
                for a in _pieces(_tool_args(), s.events)]
    else:
        evs.append(ev("content_block_start", index=0, content_block={"type": "text", "text": ""}))
        evs.append(Ev({"type": "ping"}, "ping", silent=True))
        evs += [ev("content_block_delta", True, index=0, delta={"type": "text_delta", "text": p})
                for p in _padded(s)]
    evs.append(ev("content_block_stop", index=0))
    usage = _anthropic_usage(s, out) if s.cumulative_usage else {"output_tokens": out}
    evs.append(ev("message_delta", delta={"stop_reason": stop_reason,
                                          "stop_sequence": stop_sequence}, usage=usage))
    evs.append(ev("message_stop"))
    return evs


def _dify_usage(s: Script) -> dict:
    i, o = s.input_tokens or 0, s.output_tokens or 0
    return {"prompt_tokens": i, "prompt_unit_price": "0.001", "prompt_price_unit": "0.001",
            "prompt_price": f"{i * 0.000001:.7f}", "completion_tokens": o,
            "completion_unit_price": "0.002", "completion_price_unit": "0.001",
            "completion_price": f"{o * 0.000002:.7f}", "total_tokens": i + o,
            "total_price": f"{i * 0.000001 + o * 0.000002:.7f}", "currency": "USD",
            "latency": 0.5}


def dify(s: Script, req: dict, stream: bool):
    """Dify chat app API (POST /v1/chat-messages). Endings: stop -> message_end, error ->
    `event: error` (in the data) after the text events."""
    task, msg = str(uuid.uuid4()), str(uuid.uuid4())
    conv = req.get("conversation_id") or str(uuid.uuid4())
    created = int(time.time())
    if not stream:
        return {"event": "message", "task_id": task, "id": msg, "message_id": msg,
                "conversation_id": conv, "mode": "agent-chat" if s.dify_agent else "chat",
                "answer": "".join(_padded(s)),
                "metadata": {"usage": _dify_usage(s), "retriever_resources": []},
                "created_at": created}
    kind = "agent_message" if s.dify_agent else "message"
    common = {"task_id": task, "message_id": msg, "conversation_id": conv, "created_at": created}
    evs = []
    if s.dify_agent:
        evs.append(Ev({"event": "agent_thought", "id": str(uuid.uuid4()), "task_id": task,
                       "message_id": msg, "position": 1, "thought": "", "observation": "",
                       "tool": "", "tool_input": "", "created_at": created,
                       "message_files": [], "conversation_id": conv}))
    evs += [Ev({"event": kind, "id": msg, **common, "answer": p}, content=True) for p in _padded(s)]
    evs.append(Ev(None, "ping", silent=True))
    if s.ending == "error":
        evs.append(Ev({"event": "error", "task_id": task, "message_id": msg, "status": 500,
                       "code": "internal_server_error", "message": "The model failed."}))
    else:
        resources = [{"position": 1, "dataset_id": str(uuid.uuid4()), "dataset_name": "docs",
                      "document_id": str(uuid.uuid4()), "document_name": "envoy.md",
                      "segment_id": str(uuid.uuid4()), "score": 0.98,
                      "content": "x" * s.pad_usage}] if s.pad_usage else []
        evs.append(Ev({"event": "message_end", "task_id": task, "id": msg, "message_id": msg,
                       "conversation_id": conv,
                       "metadata": {"usage": _dify_usage(s), "retriever_resources": resources}}))
    return evs


FORMATS = {"chat": chat, "completions": completions, "responses": responses,
           "anthropic": anthropic, "dify": dify}


def format_of(path: str) -> str | None:
    p = path.split("?", 1)[0]
    for suffix, fmt in (("/chat-messages", "dify"), ("/chat/completions", "chat"),
                        ("/completions", "completions"), ("/responses", "responses"),
                        ("/messages", "anthropic")):
        if p.endswith(suffix):
            return fmt
    return None


def error_body(fmt: str, status: int) -> dict:
    """Each provider's documented error body for an HTTP error."""
    if fmt == "anthropic":
        kind = "overloaded_error" if status == 529 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": "Internal server error"}}
    if fmt == "dify":
        return {"code": "internal_server_error", "message": "Internal Server Error",
                "status": status}
    return {"error": {"message": "The server had an error while processing your request.",
                      "type": "server_error", "param": None, "code": None}}


def encode_event(ev: Ev, s: Script) -> bytes:
    """One SSE event as the wire has it (with the Script's line endings, comments, multi-line
    data), ending with its blank line."""
    nl = "\r\n" if s.crlf else "\n"
    lines = []
    if s.comments:
        lines.append(": keep-alive")
    if ev.name is not None:
        lines.append(f"event: {ev.name}")
    if ev.data is not None:
        text = ev.data if isinstance(ev.data, str) else _dumps(ev.data)
        if s.multiline and not isinstance(ev.data, str):
            text = json.dumps(ev.data, separators=(",\n", ":"), ensure_ascii=False)
        lines += [f"data: {line}" for line in text.split("\n")]
    out = nl.join(lines) + nl + nl
    if s.comments:
        out += f": OPENROUTER PROCESSING{nl}{nl}"
    return out.encode("utf-8")


def split_points(data: bytes, mode: str | None) -> list[bytes]:
    """The writes one event is sent in: whole; `bytes`: one byte each; `odd`: cut inside every
    multi-byte UTF-8 character, between every CR and LF, after `data:` and after every `{`."""
    if mode in (None, "together") or len(data) <= 1:
        return [data]
    if mode == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    cuts = set()
    for i in range(1, len(data)):
        b, prev = data[i], data[i - 1]
        if 0x80 <= b < 0xC0:                       # a continuation byte: inside a character
            cuts.add(i)
        elif prev == 0x0D and b == 0x0A:           # between CR and LF
            cuts.add(i)
        elif data[:i].endswith(b"data:") or prev == ord("{"):
            cuts.add(i)
    pieces, at = [], 0
    for c in sorted(cuts):
        pieces.append(data[at:c])
        at = c
    pieces.append(data[at:])
    return [p for p in pieces if p]


# --------------------------------------------------------------------------- the server

class LLMApp(App):
    """One version of an LLM API (see the module docstring)."""

    def __init__(self, version: str, **kw):
        self.scripts: dict[str, Script] = {}
        self.default = Script()
        self.answers: list[Answer] = []
        self.answers_lock = threading.Lock()
        self.gates: list[Gate] = []
        super().__init__(version, **kw)

    # -- what tests call
    def script(self, name: str, **fields) -> Script:
        """Registers (or replaces) the script `name`; returns it."""
        s = Script(**fields)
        if s.gate is not None:
            self.gates.append(s.gate)
        self.scripts[name] = s
        return s

    def answer(self, tag: str) -> Answer | None:
        with self.answers_lock:
            found = [a for a in self.answers if a.tag == tag]
        assert len(found) <= 1, f"several answers tagged {tag}"
        return found[0] if found else None

    def wait_answer(self, tag: str, timeout: float = 10.0, ended: bool = True) -> Answer:
        """The answer tagged `tag`, once it was sent whole, cut or broken off (`ended`)."""
        deadline = time.monotonic() + timeout
        while True:
            a = self.answer(tag)
            if a is not None and (not ended or a.done or a.cut or a.broken):
                return a
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.version}: no ended answer tagged {tag}: {a}")
            time.sleep(0.01)

    def close(self) -> None:
        for g in self.gates:
            g.open()
        for s in self.scripts.values():
            if s.gate is not None:
                s.gate.open()
        super().close()

    # -- serving
    def respond(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        fmt = format_of(h.path)
        if h.command != "POST" or fmt is None:
            return super().respond(h, body)
        h.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                req = {}
        except ValueError:
            req = {}
        name = h.headers.get(SCRIPT_HEADER)
        if name is not None and name not in self.scripts:
            raise AssertionError(f"{self.version}: no script {name!r}")
        s = self.scripts[name] if name is not None else self.default
        if s.gate is not None and s.gate not in self.gates:
            self.gates.append(s.gate)
        asked = (req.get("response_mode") == "streaming") if fmt == "dify" else bool(req.get("stream"))
        stream = asked if s.stream is None else s.stream
        ans = Answer(h.headers.get(TEST_ID_HEADER), h.path, fmt, stream, name or "default",
                     s.status, req, headers={k.lower(): v for k, v in h.headers.items()},
                     raw=bytes(body))
        with self.answers_lock:
            self.answers.append(ans)
        try:
            self._send(h, s, fmt, req, stream, ans)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError) as exc:
            ans.broken = repr(exc)
            h.close_connection = True

    def _head(self, h, s: Script, status: int, ctype: str, extra: Sequence[tuple[str, str]],
              ans: Answer) -> None:
        if s.headers_delay_s:
            time.sleep(s.headers_delay_s)
        h.send_response(status)
        h.send_header("content-type", s.content_type or ctype)
        for k, v in extra:
            h.send_header(k, v)
        if s.gzip:
            h.send_header("content-encoding", "gzip")
        h.send_header("x-app-version", self.version)
        h.send_header("x-request-id", _rid("req_", 24))
        h.end_headers()
        ans.headers_at = time.monotonic()

    def _send(self, h, s: Script, fmt: str, req: dict, stream: bool, ans: Answer) -> None:
        if s.status >= 400:
            out = _dumps(error_body(fmt, s.status)).encode()
            if s.gzip:
                out = gzip_mod.compress(out)
            self._head(h, s, s.status, "application/json",
                       [("content-length", str(len(out)))], ans)
            if s.first_delay_s:
                time.sleep(s.first_delay_s)
            ans.body += out
            h.wfile.write(out)
            ans.events = 1
            ans.sent_at.append(time.monotonic())
            ans.done = True
            return
        built = FORMATS[fmt](s, req, stream)
        if isinstance(built, dict):             # a JSON answer
            out = _dumps(built).encode("utf-8")
            if s.gzip:
                out = gzip_mod.compress(out)
            self._head(h, s, 200, "application/json", [("content-length", str(len(out)))], ans)
            if s.first_delay_s or s.first_token_delay_s:
                time.sleep(s.first_delay_s + s.first_token_delay_s)
            ans.events = 1
            pieces = split_points(out, s.split)
            for i, p in enumerate(pieces):
                if i and s.split_pause_s:
                    time.sleep(s.split_pause_s)
                ans.body += p
                h.wfile.write(p)
            ans.sent_at.append(time.monotonic())
            ans.done = True
            return
        evs: list[Ev] = built
        ans.events = len(evs)
        ctype = "text/event-stream; charset=utf-8"
        self._head(h, s, 200, ctype, [("cache-control", "no-cache"),
                                      ("transfer-encoding", "chunked")], ans)
        comp = zlib.compressobj(wbits=31) if s.gzip else None

        def write(data: bytes, last: bool = False) -> None:
            if comp is not None:   # each write decodable at once; the gzip trailer with the last
                data = comp.compress(data) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
            if not data:
                return
            ans.body += data       # recorded first: the client may have it before we return
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        encoded = [encode_event(e, s) for e in evs]
        if s.split == "together" and s.cut_after is None and not s.gate:
            if s.first_delay_s:
                time.sleep(s.first_delay_s)
            write(b"".join(encoded), last=True)
            now = time.monotonic()
            ans.sent_at += [now] * len(evs)
        else:
            first_content = next((i for i, e in enumerate(evs) if e.content), None)
            for i, (ev, data) in enumerate(zip(evs, encoded)):
                if s.cut_after is not None and i >= s.cut_after:
                    ans.cut = True
                    h.close_connection = True
                    h.wfile.flush()
                    try:
                        h.connection.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if i == 0 and s.first_delay_s:
                    time.sleep(s.first_delay_s)
                if i == first_content and s.first_token_delay_s:
                    time.sleep(s.first_token_delay_s)
                if i > 0:
                    # The gate holds each event until the client saw the one before; after a
                    # ping (which no client library hands on) the next goes with it.
                    if s.gate is not None and not evs[i - 1].silent:
                        s.gate.wait()
                    if s.delay_s:
                        time.sleep(s.delay_s)
                pieces = split_points(data, s.split)
                for k, piece in enumerate(pieces):
                    if k and s.split_pause_s:
                        time.sleep(s.split_pause_s)
                    write(piece, last=(i == len(evs) - 1 and k == len(pieces) - 1))
                ans.sent_at.append(time.monotonic())
        h.wfile.write(b"0\r\n\r\n")
        ans.done = True


def llm_apps(versions: Sequence[str]) -> Apps:
    return Apps(versions, kind=LLMApp)


# --------------------------------------------------------------------------- what tests read back

def launch(workdir: Path, config: dict, upstreams: dict[str, int], *, flush_s: float = 0.25,
           concurrency: int = 2, **kw):
    """An Envoy for `config` (inline) whose versions are served by `upstreams`, with a stats
    flush every `flush_s` (histograms reach /stats/prometheus only when Envoy merges them, at
    each flush; the default is every 5 s). Stop it with `.stop()`."""
    import harness
    workdir.mkdir(parents=True, exist_ok=True)
    doc = harness.bootstrap(config, access_log=workdir / "access.log", upstreams=upstreams, **kw)
    doc["stats_flush_interval"] = f"{flush_s}s"
    return harness.Envoy(workdir, doc, concurrency=concurrency).launch()


TOKEN_KINDS = ("input", "output", "cached", "reasoning")
FINISHES = ("stop", "length", "tool_calls", "content_filter", "error", "aborted", "unknown")


def llm_stats(envoy, version: str, rule: str = "ramp") -> dict[str, int]:
    """Every v3 counter of (rule, version): `tokens.<kind>` and `finish.<kind>` -> value (0 when
    Envoy has none)."""
    prefix = f"wasmcustom.graysplit_llm_"
    got = envoy.stats(r"^wasmcustom\.graysplit_llm_(tokens|answers)_total\.")
    out = {}
    for k in TOKEN_KINDS:
        out[f"tokens.{k}"] = got.get(f"{prefix}tokens_total.rule.{rule}.version.{version}.kind.{k}", 0)
    for f in FINISHES:
        out[f"finish.{f}"] = got.get(f"{prefix}answers_total.rule.{rule}.version.{version}.finish.{f}", 0)
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """What moved between two llm_stats readings (only the keys that did)."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _PROM_LINE.match(line)
        if m:
            labels = dict(_PROM_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


@dataclass
class Histogram:
    buckets: dict[float, float]     # le -> cumulative count (+Inf as inf)
    sum: float
    count: float

    def at(self, le: float) -> float:
        return self.buckets.get(float(le), 0.0)


def histogram(envoy, family: str, version: str, rule: str = "ramp") -> Histogram | None:
    """`graysplit_<family>` of (rule, version) from /stats/prometheus (Envoy 1.40 writes the
    custom namespace `wasmcustom` without the `envoy_` prefix and without the namespace), or
    None when Envoy does not show it."""
    name = f"graysplit_{family}"   # Envoy exports its wasmcustom namespace without a prefix
    buckets, total, count, seen = {}, 0.0, 0.0, False
    for metric, labels, value in prometheus_samples(envoy.prometheus()):
        if labels.get("rule") != rule or labels.get("version") != version:
            continue
        if metric == name + "_bucket":
            buckets[float(labels["le"].replace("+Inf", "inf"))] = value
            seen = True
        elif metric == name + "_sum":
            total, seen = value, True
        elif metric == name + "_count":
            count, seen = value, True
    return Histogram(buckets, total, count) if seen else None


def access_log_lines(envoy) -> list[str]:
    try:
        return envoy.access_log.read_text(errors="replace").splitlines()
    except OSError:
        return []


def llm_property(line: str) -> str | None:
    m = re.search(r' llm="([^"]*)"', line)
    return m.group(1) if m else None


def parse_llm_property(value: str) -> dict[str, str]:
    """`in=1 out=2 finish=stop` -> {"in": "1", ...}; `-` -> {}."""
    if value in ("-", ""):
        return {}
    return dict(part.split("=", 1) for part in value.split(" "))


# --------------------------------------------------------------------------- real clients

def sse_events(chunks) -> "Iterator[tuple[str | None, str]]":
    """(event name, data) of each event in a byte stream, parsed as the WHATWG spec says (lines
    end with CRLF, LF or CR; `data:` lines joined with LF; comments skipped; an event without
    data is not dispatched)."""
    buf = b""
    name, data = None, []
    for chunk in chunks:
        buf += chunk
        while True:
            m = re.search(rb"\r\n|\r|\n", buf)
            if m is None or (m.group() == b"\r" and m.end() == len(buf)):
                break        # no whole line yet (a CR at the end may be half of a CRLF)
            line, buf = buf[:m.start()].decode("utf-8"), buf[m.end():]
            if line == "":
                if data:
                    yield name, "\n".join(data)
                name, data = None, []
            elif line.startswith(":"):
                continue
            else:
                field_, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field_ == "event":
                    name = value
                elif field_ == "data":
                    data.append(value)


class RawTee:
    """An httpx2 transport that keeps the raw bytes of every response body it delivered (before
    any decoding), in `bodies`, keyed by the request's x-test-id (or in order under None)."""

    def __init__(self):
        import httpx2
        self.bodies: dict[str | None, bytearray] = {}
        self.received_at: dict[str | None, list[float]] = {}
        tee = self

        class Transport(httpx2.HTTPTransport):
            def handle_request(self, request):
                resp = super().handle_request(request)
                tag = request.headers.get(TEST_ID_HEADER)
                buf = tee.bodies.setdefault(tag, bytearray())
                times = tee.received_at.setdefault(tag, [])
                raw = resp.stream

                class Stream(httpx2.SyncByteStream):
                    def __iter__(self):
                        for chunk in raw:
                            buf.extend(chunk)
                            times.append(time.monotonic())
                            yield chunk

                    def close(self):
                        raw.close()
                resp.stream = Stream()
                return resp
        self.transport = Transport()

    def sha256(self, tag: str) -> str:
        return hashlib.sha256(bytes(self.bodies[tag])).hexdigest()


def openai_client(port: int, prefix: str = "/v1", tee: RawTee | None = None,
                  headers: dict[str, str] | None = None):
    """The real OpenAI client against 127.0.0.1:`port` (no retries); `tee` keeps the raw bytes."""
    import httpx2
    import openai
    http = httpx2.Client(transport=tee.transport) if tee else None
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}{prefix}", api_key="sk-test",
                         max_retries=0, http_client=http, default_headers=headers or None,
                         timeout=30)


def anthropic_client(port: int, tee: RawTee | None = None, headers: dict[str, str] | None = None,
                     root: str = ""):
    """The real Anthropic client against 127.0.0.1:`port` (no retries); it asks `root`/v1/messages."""
    import anthropic
    import httpx2
    http = httpx2.Client(transport=tee.transport) if tee else None
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}{root}", api_key="sk-ant-test",
                               max_retries=0, http_client=http, default_headers=headers or None,
                               timeout=30)
