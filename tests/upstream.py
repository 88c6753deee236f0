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
"""

from __future__ import annotations

import hashlib
import http.server
import socketserver
import threading
import time


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


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


class App:
    """One version of the app. `handle` may be replaced by a test (e.g. the OpenAI stub)."""

    def __init__(self, version: str, routing_header: str = "x-graysplit-version"):
        self.version = version
        self.routing_header = routing_header
        self.status = 200
        self.delay_s = 0.0
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet
                pass

            def handle_one(self) -> None:
                app.respond(self, read_body(self))

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
