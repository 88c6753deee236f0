"""Stand-in apps for the functional tests: one real HTTP/1.1 server per version, on 127.0.0.1,
in a thread of the test process, whose behaviour a test changes while Envoy sends it traffic.

Each `App` answers every request with its version as the body (like the harness's
direct_response routes) and these headers:
  x-app-version    the version that served
  x-body-sha256    sha256 of the request body it received (hex), x-body-length its length
  x-echo-version   the routing header as the app saw it (what graysplit set)
`app.status` makes it answer that status instead (a gray version that starts failing),
`app.delay_s` makes it wait before answering (one that turns slow). Request bodies are read
whole, with content-length or chunked. Keep-alive HTTP/1.1, so Envoy's connection pool is used
as with a real app.

A request that carries `x-test-id: <tag>` is also recorded (`app.record(tag)`, a `Record`) as
soon as its headers arrived: when they did, the routing header, and once its body was read to
the end, when that was and the body's length. Times are `time.monotonic()` of this process, the clock the test's clients read too, so
a test can order "the client sent its body" against "the app had the headers" without any
threshold. Untagged requests (load, soaks) are not recorded.

The second half of this file: raw clients that misbehave on purpose (`Stall`: a JSON POST whose
body stops, or never starts), and `conns_by_worker` to place connections on every Envoy worker.
"""

from __future__ import annotations

import hashlib
import http.server
import select
import socketserver
import threading
import time
from dataclasses import dataclass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        """A request whose client went away (Envoy reset the upstream stream of a client that
        hung up mid-body) is nothing to print; anything else is."""
        import sys
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    """The request body, as sent (content-length or chunked)."""
    length = handler.headers.get("content-length")
    if length is not None:
        return handler.rfile.read(int(length))
    if "chunked" in handler.headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass   # trailers
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return b""


TEST_ID_HEADER = "x-test-id"


@dataclass
class Record:
    """What an app saw of one tagged request (times: time.monotonic())."""
    tag: str
    version: str              # the app that served it
    headers_at: float         # its request headers had arrived (the handler started)
    routing: str              # the routing header, as graysplit set it
    body_done_at: float | None = None    # its body was read to the end (None: not yet)
    body_length: int | None = None


class App:
    """One version of the app. `handle` may be replaced by a test (e.g. the OpenAI stub)."""

    def __init__(self, version: str, routing_header: str = "x-graysplit-version"):
        self.version = version
        self.routing_header = routing_header
        self.status = 200
        self.delay_s = 0.0
        self.records: dict[str, Record] = {}      # by x-test-id
        self.records_lock = threading.Lock()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet
                pass

            def handle_one(self) -> None:
                headers_at = time.monotonic()     # parse_request has read the headers
                tag = self.headers.get(TEST_ID_HEADER)
                rec = None
                if tag is not None:
                    rec = Record(tag, app.version, headers_at, self.headers.get(app.routing_header, ""))
                    with app.records_lock:
                        app.records[tag] = rec
                body = read_body(self)
                if rec is not None:
                    with app.records_lock:
                        rec.body_done_at, rec.body_length = time.monotonic(), len(body)
                app.respond(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_one

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"app-{version}")
        self.thread.start()

    def respond(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = self.version.encode()
        h.send_response(self.status)
        h.send_header("content-type", "text/plain")
        h.send_header("content-length", str(len(out)))
        h.send_header("x-app-version", self.version)
        h.send_header("x-body-sha256", hashlib.sha256(body).hexdigest())
        h.send_header("x-body-length", str(len(body)))
        h.send_header("x-echo-version", h.headers.get(self.routing_header, ""))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(out)

    def record(self, tag: str) -> Record | None:
        """The record of the request tagged `tag` (None: its headers never came here)."""
        with self.records_lock:
            return self.records.get(tag)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Apps(dict):
    """Apps by version (`kind`: App, or OpenAIApp); closes them all."""

    def __init__(self, versions, kind=None, **kw):
        super().__init__((v, (kind or App)(v, **kw)) for v in versions)

    @property
    def ports(self) -> dict[str, int]:
        return {v: a.port for v, a in self.items()}

    def record(self, tag: str) -> Record | None:
        """The record of the request tagged `tag` in whichever app served it."""
        found = [r for r in (a.record(tag) for a in self.values()) if r is not None]
        assert len(found) <= 1, f"request {tag} reached several apps: {found}"
        return found[0] if found else None

    def close(self) -> None:
        for a in self.values():
            a.close()


class OpenAIApp(App):
    """An OpenAI-compatible chat completions server (POST /v1/chat/completions), as model
    gateways behind Envoy are: the answer says which version served it (`model` is
    `<version>/<requested model>`, the text `served by <version>`), streamed as server-sent
    events when the request asks for `"stream": true`; every response carries the app headers
    (x-app-version, x-body-sha256 of the request body it received)."""

    def respond(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        import json

        try:
            req = json.loads(body or b"{}")
        except ValueError:
            req = {}
        model = f"{self.version}/{req.get('model', '?')}"
        text = f"served by {self.version}"
        common = [("x-app-version", self.version), ("x-body-sha256", hashlib.sha256(body).hexdigest()),
                  ("x-body-length", str(len(body)))]
        if self.status != 200:
            out = json.dumps({"error": {"message": f"{self.version} is failing", "type": "server_error"}}).encode()
            h.send_response(self.status)
            for k, v in [("content-type", "application/json"), ("content-length", str(len(out))), *common]:
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(out)
            return
        if req.get("stream"):
            h.send_response(200)
            for k, v in [("content-type", "text/event-stream"), ("transfer-encoding", "chunked"), *common]:
                h.send_header(k, v)
            h.end_headers()
            base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
            events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
            words = text.split(" ")
            events += [{**base, "choices": [{"index": 0, "delta": {"content": w + (" " if i < len(words) - 1 else "")},
                                             "finish_reason": None}]} for i, w in enumerate(words)]
            events += [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            for e in [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]:
                chunk = e.encode()
                h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
            return
        out = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }).encode()
        h.send_response(200)
        for k, v in [("content-type", "application/json"), ("content-length", str(len(out))), *common]:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(out)


# --------------------------------------------------------------------------- clients that stall

STALL_KINDS = ("no-body-chunked", "no-body-length", "midway-length", "midway-chunked")


class Stall:
    """A JSON POST on its own connection whose body stops: `start()` sends the headers and, for a
    `midway-*` kind, the first half of the body (content-length or chunked), then nothing until
    `finish()` sends the rest; `response()` reads the answer. Kinds (STALL_KINDS):
      no-body-chunked   `transfer-encoding: chunked`, not one chunk
      no-body-length    `content-length: N`, not one byte
      midway-length     `content-length: N`, the first N/2 bytes
      midway-chunked    chunked, one chunk of the first half
    The request carries `x-test-id: <tag>`, so the apps can say whether it reached them."""

    def __init__(self, conn, kind: str, path: str, headers, body: bytes, tag: str):
        assert kind in STALL_KINDS, kind
        assert len(body) >= 2, "a body to cut in two"
        self.conn, self.kind, self.body, self.tag = conn, kind, body, tag
        self.chunked = kind.endswith("chunked")
        headers = [*headers, (TEST_ID_HEADER, tag)]
        import harness
        if self.chunked:
            head = harness.encode_request("POST", path, [*headers, ("transfer-encoding", "chunked")])
            # encode_request adds content-length: 0 to a POST without a body: not on a chunked one.
            head = head.replace(b"\r\ncontent-length: 0\r\n", b"\r\n")
        else:
            head = harness.encode_request("POST", path, headers, body=body)[:-len(body)]
        half = len(body) // 2 if kind.startswith("midway") else 0
        self.first = head + self._part(body[:half])
        self.rest = self._part(body[half:]) + (b"0\r\n\r\n" if self.chunked else b"")
        self.sent_at: float | None = None      # when the rest of the body was sent (monotonic)

    def _part(self, data: bytes) -> bytes:
        if not data or not self.chunked:
            return data
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def start(self) -> "Stall":
        self.conn.sock.sendall(self.first)
        return self

    def answered(self) -> bool:
        """Whether Envoy said anything on this connection yet (a response, or closing it)."""
        if self.conn.buf:
            return True
        # Readable now: data, or the end of the stream (closed). No wait (a timeout socket would
        # wait out its timeout in recv, MSG_DONTWAIT or not).
        readable, _, broken = select.select([self.conn.sock], [], [self.conn.sock], 0)
        return bool(readable or broken)

    def finish(self) -> None:
        self.sent_at = time.monotonic()
        self.conn.sock.sendall(self.rest)

    def response(self):
        return self.conn._read_response("POST")


def conns_by_worker(envoy, per_worker: int, max_conns: int = 400) -> tuple[dict[str, list], list]:
    """Opens keep-alive connections until every Envoy worker holds at least `per_worker` of
    them, and says which worker took each: after each new connection has answered one GET, the
    worker whose `downstream_cx_active` rose by one. Every connection stays open (closing one
    would blur the next reading); returns ({worker: [Conn]}, every Conn opened), the caller
    closes them all. For an Envoy that nothing else connects to while this runs."""
    import harness
    opened: list = []
    by_worker: dict[str, list] = {}
    try:
        before = harness.worker_connections(envoy)
        while True:
            if len(by_worker) == envoy.concurrency and \
                    min(len(v) for v in by_worker.values()) >= per_worker:
                return by_worker, opened
            assert len(opened) < max_conns, \
                f"{len(opened)} connections did not give {per_worker} to every worker: " \
                f"{ {w: len(c) for w, c in by_worker.items()} }"
            c = harness.Conn(envoy.port, timeout=30)
            opened.append(c)
            r = c.get("/", [("x-user-id", "worker-probe")])
            assert r.status == 200, r
            now = harness.worker_connections(envoy)
            grew = [w for w in now if now[w] > before.get(w, 0)]
            if len(grew) == 1 and now[grew[0]] == before.get(grew[0], 0) + 1:
                by_worker.setdefault(grew[0], []).append(c)
            before = now    # an unclear reading leaves that connection out, open
    except BaseException:
        for c in opened:
            c.close()
        raise
