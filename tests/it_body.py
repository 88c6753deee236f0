"""API clients pinned and routed by their JSON body (DESIGN.md "JSON request bodies"): the
real `openai` client sends chat completions, streamed and not, through Envoy to an
OpenAI-compatible app per version (tests/upstream.py); raw clients send the bodies the
contract names (empty, small, exactly max_bytes, one byte more, 5 MB, chunked, HTTP/2, broken
JSON, gzip, not JSON). Whatever graysplit decides, the app receives the body byte for byte
(its sha256 comes back in x-body-sha256), and nothing is answered 413; a client that pauses its
body waits for itself only, and is still decided by it (tests/it_body_hostile.py has the
clients that stall in numbers, and the requests that need not wait)."""

from __future__ import annotations

import gzip
import hashlib
import json
import time

import httpx2 as httpx  # what openai 3 is built on
import openai
import pytest

import harness
from harness import Conn, bucket, plugin_config, wait_until
from upstream import Apps, OpenAIApp

MAX = 4096
SALT = "api"
CONFIG = plugin_config([
    {"name": "qwen-canary", "when": {"body": [{"pointer": "/model", "one_of": ["qwen2.5-72b"]}]},
     "version": "v3"},
    {"name": "ramp", "salt": SALT, "split": [{"version": "v2", "percent": 50}]},
], identity={"from": [{"body": "/user"}, {"header": "x-user-id"}]}, body={"max_bytes": MAX})


def version_for(user: str) -> str:
    return "v2" if bucket(SALT, user) < 5000 else "v1"


def pair() -> tuple[str, str]:
    """A body user and a header user on different versions, so a response says which decided."""
    body_user = next(u for u in (f"api-user-{i}" for i in range(1000)) if version_for(u) == "v2")
    header_user = next(u for u in (f"hdr-user-{i}" for i in range(1000)) if version_for(u) == "v1")
    return body_user, header_user


@pytest.fixture(scope="module")
def apps():
    a = Apps(["v1", "v2", "v3"], kind=OpenAIApp)
    yield a
    a.close()


@pytest.fixture(scope="module")
def envoy(request, tmp_path_factory, apps):
    from conftest import module_envoy
    return module_envoy(request, tmp_path_factory, CONFIG, upstreams=apps.ports)


def client(envoy, sent: list) -> openai.OpenAI:
    """The real OpenAI client; every request body it sends is kept in `sent`."""
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.read())]})
    return openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key="sk-test",
                         http_client=http, max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def it_the_openai_client_is_pinned_by_its_user_field(envoy, stream):
    sent: list[bytes] = []
    c = client(envoy, sent)
    for i in range(12):
        user = f"openai-user-{i}"
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", user=user, stream=stream,
            messages=[{"role": "system", "content": "You answer briefly."},
                      {"role": "user", "content": f"question {i}: " + "why " * 50}])
        served = raw.headers["x-app-version"]
        assert served == version_for(user), f"{user}: bucket {bucket(SALT, user)}, served by {served}"
        assert raw.headers["x-body-sha256"] == hashlib.sha256(sent[-1]).hexdigest(), "body changed"
        completion = raw.parse()
        if stream:
            text = "".join(ch.choices[0].delta.content or "" for ch in completion if ch.choices)
            assert text == f"served by {served}", text
        else:
            assert completion.model.startswith(served + "/") and \
                completion.choices[0].message.content == f"served by {served}"


def it_routes_a_model_to_its_canary(envoy):
    sent: list[bytes] = []
    c = client(envoy, sent)
    r = c.chat.completions.create(model="qwen2.5-72b", user="anyone",
                                  messages=[{"role": "user", "content": "hi"}])
    assert r.model == "v3/qwen2.5-72b", r.model
    r = c.chat.completions.create(model="gpt-4o", user="anyone",
                                  messages=[{"role": "user", "content": "hi"}])
    assert r.model.startswith(version_for("anyone") + "/")


def post(envoy, body: bytes, headers=(), chunks: int = 0) -> harness.Resp:
    """POST /v1/chat/completions on a raw connection; `chunks` > 0 sends it chunked."""
    with Conn(envoy.port, timeout=30) as c:
        if not chunks:
            return c.request("POST", "/v1/chat/completions", list(headers), body=body)
        head = [b"POST /v1/chat/completions HTTP/1.1", b"host: graysplit.test", b"transfer-encoding: chunked"]
        head += [k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) for k, v in headers]
        c.sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        step = max(1, -(-len(body) // chunks))
        for i in range(0, len(body), step):
            part = body[i:i + step]
            c.sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            time.sleep(0.01)        # separate chunks, separate reads
        c.sock.sendall(b"0\r\n\r\n")
        return c._read_response("POST")


def chat(user: str, size: int = 0, model: str = "gpt-4o-mini") -> bytes:
    """An OpenAI-style chat body for `user`, padded to exactly `size` bytes when given."""
    doc = {"model": model, "user": user, "messages": [{"role": "user", "content": ""}]}
    base = len(json.dumps(doc).encode())
    if size:
        assert size >= base, (size, base)
        doc["messages"][0]["content"] = "x" * (size - base)
    out = json.dumps(doc).encode()
    assert not size or len(out) == size
    return out


JSON = [("content-type", "application/json")]


@pytest.mark.parametrize("case", [
    "empty", "1kb", "exactly-max", "max-plus-1", "5mb", "chunked", "chunked-over-max", "invalid-json",
    "gzip", "text-plain", "vendor-json"])
def it_the_body_decides_when_it_can_and_always_arrives_intact(envoy, case):
    body_user, header_user = pair()
    decided_by_body, by_header = version_for(body_user), version_for(header_user)
    cases = {
        # (body, headers, chunks, the version it must get)
        "empty": (b"", JSON, 0, by_header),
        "1kb": (chat(body_user, 1024), JSON, 0, decided_by_body),
        "exactly-max": (chat(body_user, MAX), JSON, 0, decided_by_body),
        "max-plus-1": (chat(body_user, MAX + 1), JSON, 0, by_header),
        "5mb": (chat(body_user, 5 * 1024 * 1024), JSON, 0, by_header),
        "chunked": (chat(body_user, 3000), JSON, 5, decided_by_body),
        "chunked-over-max": (chat(body_user, 3 * MAX), JSON, 6, by_header),
        "invalid-json": (chat(body_user, 1024)[:-1], JSON, 0, by_header),
        "gzip": (gzip.compress(chat(body_user, 1024)), JSON + [("content-encoding", "gzip")], 0, by_header),
        "text-plain": (chat(body_user, 1024), [("content-type", "text/plain")], 0, by_header),
        "vendor-json": (chat(body_user, 1024), [("content-type", "application/vnd.api+json; charset=utf-8")], 0,
                        decided_by_body),
    }
    body, headers, chunks, want = cases[case]
    r = post(envoy, body, [*headers, ("x-user-id", header_user)], chunks=chunks)
    assert r.status == 200, r
    assert r.header("x-app-version") == want, f"{case}: served by {r.header('x-app-version')}, want {want}"
    assert r.header("x-body-length") == str(len(body))
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest(), f"{case}: the body changed"


@pytest.mark.parametrize("size,by_body", [(2000, True), (MAX + 500, False)])
def it_reads_bodies_over_http2(envoy, size, by_body):
    body_user, header_user = pair()
    body = chat(body_user, size)
    [r] = harness.h2_requests(envoy.port, [("POST", "/v1/chat/completions", [
        ("content-type", "application/json"), ("x-user-id", header_user)], body)])
    assert r.status == 200, r
    assert r.header("x-app-version") == version_for(body_user if by_body else header_user)
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()


def it_a_plan_without_body_rules_holds_nothing(start_envoy, apps):
    """The same POST under a config with no body rule: decided at the headers (the body user is
    never seen), and no body is read."""
    envoy = start_envoy(plugin_config([{"name": "ramp", "salt": SALT, "split": [
        {"version": "v2", "percent": 50}]}]), upstreams=apps.ports)
    body_user, header_user = pair()
    body = chat(body_user, 1024)
    r = post(envoy, body, [*JSON, ("x-user-id", header_user)])
    assert r.header("x-app-version") == version_for(header_user)
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()


NOT_DELIVERED = "graysplit: request bodies are not delivered to the filter"


def it_without_allow_on_headers_stop_iteration_every_request_is_answered(apps, tmp_path):
    """A Wasm filter config without allow_on_headers_stop_iteration (Istio's WasmPlugin cannot
    set it): Envoy never hands graysplit the body it holds a request for.
    - Clients on both workers that open JSON POSTs and send no body byte at all (chunked or by
      content-length) make the VM conclude nothing: for longer than the old build's give-up
      they are neither sent upstream nor answered (it would have decided them without their
      body, and after three, stopped holding anyone).
    - Other requests with whole JSON bodies, on both workers, are all answered 200 with their
      body intact, decided without it (their header identity): Envoy's holding their bytes is
      the evidence no client controls.
    - The stalled clients, once they send their bodies, are answered too, bodies intact.
    The VM's error line comes at most once per worker (its VM)."""
    from upstream import STALL_KINDS, Stall, conns_by_worker
    cfg = harness.bootstrap(CONFIG, access_log=tmp_path / "access.log", upstreams=apps.ports)
    gray = next(f for f in cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"] if f["name"] == harness.FILTER_NAME)
    del gray["typed_config"]["config"]["allow_on_headers_stop_iteration"]
    envoy = harness.Envoy(tmp_path / "no-flag", cfg, concurrency=2).launch()
    opened = []
    try:
        by_worker, opened = conns_by_worker(envoy, per_worker=6)
        body_user, header_user = pair()
        headers = [*JSON, ("x-user-id", header_user)]
        stalls, good = [], []
        for w, conns in sorted(by_worker.items()):
            good += conns[:2]
            for i, c in enumerate(conns[2:6]):
                kind = [k for k in STALL_KINDS if k.startswith("no-body")][i % 2]
                stalls.append(Stall(c, kind, "/v1/chat/completions", headers, chat(body_user, 1024),
                                    f"no-flag-{w}-{i}").start())
        time.sleep(3.0)   # longer than the old build's 1-1.5 s give-up (the condition, not a wait for Envoy)
        early = [s.tag for s in stalls if s.answered() or any(a.record(s.tag) for a in apps.values())]
        assert not early, f"requests that sent no body byte were decided without it: {early}"

        wrong = []
        for i in range(24):
            body = chat(body_user, [1024, 3000, 200][i % 3])
            r = good[i % len(good)].request("POST", "/v1/chat/completions", headers, body=body)
            if r.status != 200 or r.header("x-app-version") != version_for(header_user) \
                    or r.header("x-body-sha256") != hashlib.sha256(body).hexdigest():
                wrong.append(f"request {i}: {r}")
        for s in stalls:
            s.finish()
        for s in stalls:
            r = s.response()
            if r.status != 200 or r.header("x-app-version") != version_for(header_user) \
                    or r.header("x-body-sha256") != hashlib.sha256(s.body).hexdigest():
                wrong.append(f"stalled {s.tag}: {r}")
        assert not wrong, wrong
        lines = envoy.log().count(NOT_DELIVERED)
        assert lines <= envoy.concurrency, f"the error line {lines} times, on {envoy.concurrency} workers"
    finally:
        for c in opened:
            c.close()
        envoy.stop()


@pytest.mark.parametrize("pause", ["midway", "before-any-byte"])
def it_a_body_paused_for_seconds_is_still_decided_by_it(envoy, pause):
    """Headers (and, midway, half the body), then 2.5 s of nothing (longer than the 1.5 s after
    which the old build decided without the body), then the rest: the request waited for its
    body and is decided by it (its body identity, not its header identity), body intact. The
    bodies of the requests after it are read too."""
    body_user, header_user = pair()
    body = chat(body_user, 1024)
    with Conn(envoy.port, timeout=30) as c:
        req = harness.encode_request("POST", "/v1/chat/completions",
                                     [*JSON, ("x-user-id", header_user)], body=body)
        cut = len(req) - len(body) + (len(body) // 2 if pause == "midway" else 0)
        c.sock.sendall(req[:cut])
        time.sleep(2.5)
        c.sock.sendall(req[cut:])
        r = c._read_response("POST")
    assert r.status == 200 and r.header("x-app-version") == version_for(body_user), r
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()
    r = post(envoy, body, [*JSON, ("x-user-id", header_user)])
    assert r.header("x-app-version") == version_for(body_user), "bodies are still read"
