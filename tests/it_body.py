"""API clients pinned and routed by their JSON body (DESIGN.md "JSON request bodies"): the
real `openai` client sends chat completions, streamed and not, through Envoy to an
OpenAI-compatible app per version (tests/upstream.py); raw clients send the bodies the
contract names (empty, small, exactly max_bytes, one byte more, 5 MB, chunked, HTTP/2, broken
JSON, gzip, not JSON). Whatever graysplit decides, the app receives the body byte for byte
(its sha256 comes back in x-body-sha256), and nothing is answered 413 or left waiting."""

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


def chat(user: str, size: int = 0) -> bytes:
    """An OpenAI-style chat body for `user`, padded to exactly `size` bytes when given."""
    doc = {"model": "gpt-4o-mini", "user": user, "messages": [{"role": "user", "content": ""}]}
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


def it_without_allow_on_headers_stop_iteration_nothing_stalls(apps, tmp_path):
    """A Wasm filter config without allow_on_headers_stop_iteration (Istio's WasmPlugin cannot
    set it): Envoy would never hand graysplit the body it waits for. Each held request is
    decided without its body after a second; after three such requests the VM stops holding
    bodies and decides at the headers. Every request is answered, its body intact."""
    cfg = harness.bootstrap(CONFIG, access_log=tmp_path / "access.log", upstreams=apps.ports)
    gray = next(f for f in cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"] if f["name"] == harness.FILTER_NAME)
    del gray["typed_config"]["config"]["allow_on_headers_stop_iteration"]
    envoy = harness.Envoy(tmp_path / "no-flag", cfg, concurrency=1).launch()
    try:
        body_user, header_user = pair()
        body = chat(body_user, 1024)
        took = []
        for _ in range(6):
            t = time.monotonic()
            r = post(envoy, body, [*JSON, ("x-user-id", header_user)])
            took.append(time.monotonic() - t)
            assert r.status == 200 and r.header("x-app-version") == version_for(header_user), r
            assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()
        harness.SUMMARY.append("bodies without allow_on_headers_stop_iteration: answered after "
                               + ", ".join(f"{t:.2f}" for t in took) + " s (decided at the headers "
                               "once the VM gave up holding)")
    finally:
        envoy.stop()


def it_a_body_that_makes_no_progress_is_decided_without_it(envoy):
    """Headers, then two seconds of nothing: the request is decided without its body (its
    header identity) and goes on; the body, when it comes, arrives intact. The VM keeps reading
    the bodies of the requests after it."""
    body_user, header_user = pair()
    body = chat(body_user, 1024)
    with Conn(envoy.port, timeout=30) as c:
        req = harness.encode_request("POST", "/v1/chat/completions",
                                     [*JSON, ("x-user-id", header_user)], body=body)
        c.sock.sendall(req[:-len(body)])    # the headers
        time.sleep(2.0)
        c.sock.sendall(body)
        r = c._read_response("POST")
    assert r.status == 200 and r.header("x-app-version") == version_for(header_user), r
    assert r.header("x-body-sha256") == hashlib.sha256(body).hexdigest()
    r = post(envoy, body, [*JSON, ("x-user-id", header_user)])
    assert r.header("x-app-version") == version_for(body_user), "bodies are still read"
