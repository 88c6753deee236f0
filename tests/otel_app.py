"""A service between two Envoys for tests/it_lane.py: a WSGI application served by wsgiref in a
thread of the test process, instrumented the way a Python service in a mesh is, with the
OpenTelemetry SDK: `OpenTelemetryMiddleware` (opentelemetry-instrumentation-wsgi) reads the
incoming request's context, and `RequestsInstrumentor` (opentelemetry-instrumentation-requests)
sends it on with every `requests` call, through the default propagators (W3C tracecontext and
baggage), under an SDK `TracerProvider`.

The application itself copies no header: for `GET <path>?<query>` it calls
`requests.get(<next hop><path>?<query>)`, as a service calls the one behind it, and answers
with what that call answered (status, body, and the next hop's `x-app-version` as
`x-next-version`), adding its own name as `x-service`. Whatever reaches the next hop besides
what `requests` writes itself was put there by OpenTelemetry.
"""

from __future__ import annotations

import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import requests
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider

# One SDK provider for the process (spans are made and dropped: nothing exports them).
PROVIDER = TracerProvider()
_instrumented = threading.Lock()
_users = 0


def instrument() -> None:
    """Patches `requests` (process-wide) while at least one OtelService runs."""
    global _users
    with _instrumented:
        if _users == 0:
            RequestsInstrumentor().instrument(tracer_provider=PROVIDER)
        _users += 1


def uninstrument() -> None:
    global _users
    with _instrumented:
        _users -= 1
        if _users == 0:
            RequestsInstrumentor().uninstrument()


class _Threading(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class OtelService:
    """One instrumented service on 127.0.0.1:<port>, calling `next_port` on 127.0.0.1 (a test
    may point it elsewhere between requests)."""

    def __init__(self, name: str, next_port: int = 0):
        self.name = name
        self.next_port = next_port
        self.calls = 0
        instrument()
        self.server = make_server("127.0.0.1", 0, OpenTelemetryMiddleware(self.app, tracer_provider=PROVIDER),
                                  server_class=_Threading, handler_class=_Quiet)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"otel-{name}")
        self.thread.start()

    def app(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        query = environ.get("QUERY_STRING", "")
        url = f"http://127.0.0.1:{self.next_port}{path}" + (f"?{query}" if query else "")
        self.calls += 1
        r = requests.get(url, timeout=10)
        start_response(f"{r.status_code} {r.reason}", [
            ("content-type", "text/plain"), ("content-length", str(len(r.content))),
            ("x-service", self.name), ("x-next-version", r.headers.get("x-app-version", "")),
        ])
        return [r.content]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        uninstrument()
