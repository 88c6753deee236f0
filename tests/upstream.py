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
        self.requests = 0
        self.lock = threading.Lock()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet
                pass

            def handle_one(self) -> None:
                body = read_body(self)
                with app.lock:
                    app.requests += 1
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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Apps(dict):
    """Apps by version; closes them all."""

    def __init__(self, versions, **kw):
        super().__init__((v, App(v, **kw)) for v in versions)

    @property
    def ports(self) -> dict[str, int]:
        return {v: a.port for v, a in self.items()}

    def close(self) -> None:
        for a in self.values():
            a.close()
