"""A real OTLP/HTTP logs receiver in the test process, standing in for the OpenTelemetry Collector
behind `shadow_sink` (DESIGN.md "Shadow: the same question to the gray version, answers
paired"): a threaded HTTP/1.1 server on 127.0.0.1 (a free port, keep-alive, as Envoy's
connection pool expects; HTTP/1.1 only, which is what an Envoy cluster without
`http2_protocol_options` speaks) taking `POST /v1/logs` (the path is configurable). Each request's
headers are kept (`host` is the `:authority` the filter set, `shadow_sink.authority`).

Bodies are decoded with the `opentelemetry-proto` package into
`opentelemetry.proto.collector.logs.v1.logs_service_pb2.ExportLogsServiceRequest`:

- `content-type: application/x-protobuf`: the binary encoding (`FromString`).
- `content-type: application/json`: OTLP/JSON, read with `google.protobuf.json_format` after
  the spec's deviations from protobuf's JSON mapping (opentelemetry-proto's
  docs/specification.md, "JSON Protobuf Encoding") are handled here, walking the body by the
  message descriptors: `traceId`/`spanId`/`parentSpanId` are case-insensitive hex, not base64
  (turned into bytes here; anything but hex is bad data, as is a length other than 16 (trace)
  or 8 (span) bytes or empty); enums MUST be integers (a name is refused); keys MUST be
  lowerCamelCase (an original field name such as `time_unix_nano`, which json_format would
  take, is refused); fields of unknown name MUST be ignored (dropped here, and noted); 64-bit
  integers may be numbers or decimal strings (both taken; a number is noted, for DESIGN wants
  strings). A JSON object with a key twice is refused. `strict=False` takes the refused
  spellings too, as notes.
- `content-encoding: gzip` is taken (the spec's MUST); a body past `max_body` (20 MiB, the
  spec's recommended limit, after decompression) gets 413.

Answers as the spec says: 200 with an `ExportLogsServiceResponse` in the request's encoding
(`{}` in JSON, empty bytes in protobuf) and the request's content type; bad data 400, another
path 404, another method 405, another content type 415, each with a `google.rpc.Status` body
(`{"code": .., "message": ..}` in JSON). A test makes it fail on purpose (sink-failure tests):
`answer(status=500)` from now on, `answer_next(status=503, times=2)` for the next requests, a
`delay_s` before the answer (the records are kept, and `wait_for` sees them, as soon as the body
is decoded, before the delay), or `reset=True` (the connection is reset with no answer at all).
`close()` cuts every pending delay short.

What arrived is kept: `requests` (every HTTP request, refused ones included, with its headers,
decoded body, status answered and why refused), `records` (every LogRecord decoded, whatever
was answered; `accepted_records` those of requests answered 2xx), as `LogRecord`s whose
`attributes` map each key to `(kind, value)`: ("string", "x"), ("int", 3), ("double", 0.5),
("bool", True), ("bytes", b".."), ("array", [(kind, value), ...]), ("kvlist", {key: (kind,
value)}), ("empty", None). `wait_for(n, timeout)` blocks on a condition, no sleeps.

`export_file=PATH` writes what it accepted (answered 2xx) the way the Collector's file exporter
(`exporters: file: path: ...`, its default `format: json`) does: each export one
`ExportLogsServiceRequest` as OTLP/JSON (pdata's marshaler: lowerCamelCase, 64-bit integers as
decimal strings, enums as integers, hex ids) on one line, appended, in the order accepted; with
`collector_style` (default) the LogRecords also carry what pdata writes for unset fields of
theirs (`"body":{}`, `"traceId":""`, `"spanId":""`, and `"resource":{}` / `"scope":{}`). This is
what `graysplit compare FILE` reads. `bodies_file=PATH` appends the JSON bodies as POSTed (one
per line when the client wrote them on one line), the other input `compare` takes.

Also here, for tests that build requests by hand: `attribute`, `log_record`, `export_request`
(OTLP/JSON dicts from Python values), `parse_otlp_json`, `to_otlp_json`, `log_records`.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import socketserver
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse)

from upstream import read_body

DEFAULT_PATH = "/v1/logs"
MAX_BODY = 20 * 1024 * 1024

JSON = "application/json"
PROTOBUF = "application/x-protobuf"


class BadData(ValueError):
    """A body that is not an OTLP logs request (the receiver answers 400)."""


# --------------------------------------------------------------------------- decoded records

@dataclass
class LogRecord:
    """One decoded LogRecord, with where it came from."""
    attributes: dict[str, tuple[str, Any]]          # key -> (kind, value); a repeated key: the last
    attribute_list: list[tuple[str, str, Any]]      # (key, kind, value) in the order sent
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: int
    severity_text: str
    body: tuple[str, Any] | None                    # None: no body field
    trace_id: str                                   # lower-case hex; "" when unset
    span_id: str
    flags: int
    event_name: str
    dropped_attributes_count: int
    resource: dict[str, tuple[str, Any]]            # the resource's attributes
    scope_name: str
    scope_version: str
    proto: Any = field(repr=False, compare=False)   # the LogRecord message itself

    def __contains__(self, key: str) -> bool:
        return key in self.attributes

    def get(self, key: str, default: Any = None) -> Any:
        """The attribute's value without its kind."""
        kv = self.attributes.get(key)
        return default if kv is None else kv[1]

    def kind(self, key: str) -> str | None:
        kv = self.attributes.get(key)
        return None if kv is None else kv[0]

    def values(self) -> dict[str, Any]:
        return {k: v for k, (_, v) in self.attributes.items()}


def any_value(v) -> tuple[str, Any]:
    """An AnyValue message as (kind, python value)."""
    which = v.WhichOneof("value")
    if which is None:
        return ("empty", None)
    if which == "array_value":
        return ("array", [any_value(x) for x in v.array_value.values])
    if which == "kvlist_value":
        return ("kvlist", {kv.key: any_value(kv.value) for kv in v.kvlist_value.values})
    return (which.removesuffix("_value"), getattr(v, which))


def _attributes(kvs) -> tuple[dict, list]:
    listed = [(kv.key, *any_value(kv.value)) for kv in kvs]
    return {k: (kind, val) for k, kind, val in listed}, listed


def log_records(message) -> list[LogRecord]:
    """The LogRecords of an ExportLogsServiceRequest, in order."""
    out = []
    for rl in message.resource_logs:
        resource, _ = _attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                attrs, listed = _attributes(r.attributes)
                out.append(LogRecord(
                    attributes=attrs, attribute_list=listed,
                    time_unix_nano=r.time_unix_nano,
                    observed_time_unix_nano=r.observed_time_unix_nano,
                    severity_number=int(r.severity_number), severity_text=r.severity_text,
                    body=any_value(r.body) if r.HasField("body") else None,
                    trace_id=r.trace_id.hex(), span_id=r.span_id.hex(), flags=r.flags,
                    event_name=r.event_name,
                    dropped_attributes_count=r.dropped_attributes_count,
                    resource=resource, scope_name=sl.scope.name, scope_version=sl.scope.version,
                    proto=r))
    return out


# --------------------------------------------------------------------------- OTLP/JSON

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
# The byte fields OTLP/JSON writes as hex, with their lengths (OTLP: 16-byte trace ids, 8-byte
# span ids; empty when unset).
_HEX_IDS = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _repeated(f: FieldDescriptor) -> bool:
    flag = getattr(f, "is_repeated", None)   # protobuf >= 6; `label` before
    return bool(flag) if flag is not None else f.label == FieldDescriptor.LABEL_REPEATED


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise BadData(f"key {k!r} given twice in one JSON object")
        out[k] = v
    return out


def _walk(obj, desc: Descriptor, path: str, strict: bool, notes: list[str]) -> dict:
    """`obj` (a JSON object of message `desc`) as protobuf's JSON mapping takes it."""
    where = path or "the body"
    if not isinstance(obj, dict):
        raise BadData(f"{where}: a JSON object ({desc.name}) expected, got {type(obj).__name__}")
    by_json = {f.json_name: f for f in desc.fields}
    by_name = {f.name: f for f in desc.fields}
    out: dict = {}
    for key, value in obj.items():
        f = by_json.get(key)
        if f is None:
            f = by_name.get(key)
            if f is None:
                notes.append(f"{path + '.' if path else ''}{key}: unknown field, ignored")
                continue
            problem = (f"{path + '.' if path else ''}{key}: an original field name; OTLP/JSON "
                       f"keys are lowerCamelCase ({f.json_name})")
            if strict:
                raise BadData(problem)
            notes.append(problem)
        p = f"{path}.{f.json_name}" if path else f.json_name
        if f.json_name in out:
            raise BadData(f"{p}: given twice")
        if value is None:
            continue   # protobuf's JSON mapping: null is the default value
        if _repeated(f):
            if not isinstance(value, list):
                raise BadData(f"{p}: a JSON array expected, got {type(value).__name__}")
            out[f.json_name] = [_field(f, v, f"{p}[{i}]", strict, notes) for i, v in enumerate(value)]
        else:
            out[f.json_name] = _field(f, value, p, strict, notes)
    return out


def _field(f: FieldDescriptor, v, p: str, strict: bool, notes: list[str]):
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return _walk(v, f.message_type, p, strict, notes)
    if f.type == FieldDescriptor.TYPE_ENUM and isinstance(v, str):
        problem = f"{p}: an enum by name ({v!r}); OTLP/JSON enums MUST be integers"
        if strict:
            raise BadData(problem)
        notes.append(problem)
        return v
    if f.type == FieldDescriptor.TYPE_BYTES and f.name in _HEX_IDS:
        if not isinstance(v, str) or not _HEX.fullmatch(v):
            raise BadData(f"{p}: {v!r} is not hex (OTLP/JSON ids are hex, not base64)")
        raw = bytes.fromhex(v)
        if len(raw) not in (0, _HEX_IDS[f.name]):
            problem = f"{p}: {len(raw)} bytes; a {f.name} is {_HEX_IDS[f.name]} bytes or empty"
            if strict:
                raise BadData(problem)
            notes.append(problem)
        return base64.b64encode(raw).decode("ascii")
    if f.type in _INT64 and isinstance(v, (int, float)) and not isinstance(v, bool):
        notes.append(f"{p}: a 64-bit integer as a JSON number ({v!r}); OTLP/JSON writes "
                     "decimal strings")
    return v


def parse_otlp_json(body: bytes | str, *, strict: bool = True):
    """(ExportLogsServiceRequest, notes) from an OTLP/JSON body; BadData if it is not one."""
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    except UnicodeDecodeError as e:
        raise BadData(f"not UTF-8: {e}") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise BadData(f"not JSON: {e}") from None
    notes: list[str] = []
    cleaned = _walk(doc, ExportLogsServiceRequest.DESCRIPTOR, "", strict, notes)
    message = ExportLogsServiceRequest()
    try:
        json_format.ParseDict(cleaned, message)
    except json_format.ParseError as e:
        raise BadData(f"not an ExportLogsServiceRequest: {e}") from None
    return message, notes


def _out(d: dict, desc: Descriptor, collector_style: bool) -> dict:
    """A MessageToDict dict in the .proto's field order, ids as hex, pdata's empty fields."""
    out = {}
    for f in desc.fields:
        if f.json_name not in d:
            continue
        v = d[f.json_name]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            v = ([_out(x, f.message_type, collector_style) for x in v] if _repeated(f)
                 else _out(v, f.message_type, collector_style))
        elif f.type == FieldDescriptor.TYPE_BYTES and f.name in _HEX_IDS:
            v = base64.b64decode(v).hex()
        out[f.json_name] = v
    if collector_style:
        name = desc.full_name
        if name == "opentelemetry.proto.logs.v1.LogRecord":
            order = [f.json_name for f in desc.fields]
            out = {k: out.get(k, {"body": {}, "traceId": "", "spanId": ""}.get(k)) for k in order
                   if k in out or k in ("body", "traceId", "spanId")}
        elif name == "opentelemetry.proto.logs.v1.ResourceLogs":
            out = {"resource": out.get("resource", {}), **out}
        elif name == "opentelemetry.proto.logs.v1.ScopeLogs":
            out = {"scope": out.get("scope", {}), **out}
    return out


def to_otlp_json(message, *, collector_style: bool = True) -> str:
    """`message` (an ExportLogsServiceRequest) as one line of OTLP/JSON, as the Collector's file
    exporter writes an export (without the newline)."""
    d = json_format.MessageToDict(message, use_integers_for_enums=True)
    return json.dumps(_out(d, message.DESCRIPTOR, collector_style), ensure_ascii=False,
                      separators=(",", ":"))


# --------------------------------------------------------------------------- building requests

def attribute(key: str, value) -> dict:
    """An OTLP/JSON KeyValue from a Python value: str -> stringValue, bool -> boolValue, int ->
    intValue (a decimal string), float -> doubleValue, bytes -> bytesValue, list -> arrayValue,
    dict -> kvlistValue; or an explicit (kind, value) tuple, e.g. ("double", 1)."""
    return {"key": key, "value": _any(value)}


def _any(value) -> dict:
    if isinstance(value, tuple):
        kind, v = value
        if kind == "empty":
            return {}
        if kind == "int":
            return {"intValue": str(v)}
        if kind == "bytes":
            return {"bytesValue": base64.b64encode(v).decode("ascii")}
        if kind == "array":
            return {"arrayValue": {"values": [_any(x) for x in v]}}
        if kind == "kvlist":
            return {"kvlistValue": {"values": [attribute(k, x) for k, x in v.items()]}}
        return {f"{kind}Value": v}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (bytes, bytearray)):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_any(x) for x in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [attribute(k, x) for k, x in value.items()]}}
    raise TypeError(f"no OTLP value for {value!r}")


def log_record(attributes: Mapping[str, Any], *, time_unix_nano: int | None = None,
               **fields) -> dict:
    """An OTLP/JSON LogRecord with these attributes (in order) and any other fields as given
    (already in OTLP/JSON, e.g. traceId="..." or body={"stringValue": "x"})."""
    r: dict = {}
    if time_unix_nano is not None:
        r["timeUnixNano"] = str(time_unix_nano)
    r.update(fields)
    r["attributes"] = [attribute(k, v) for k, v in attributes.items()]
    return r


def export_request(records: Iterable[dict], *, service_name: str = "graysplit",
                   scope: str = "graysplit") -> dict:
    """An OTLP/JSON ExportLogsServiceRequest of `records` (log_record dicts), one resource and
    one scope, as the filter writes them."""
    return {"resourceLogs": [{
        "resource": {"attributes": [attribute("service.name", service_name)]},
        "scopeLogs": [{"scope": {"name": scope}, "logRecords": list(records)}]}]}


# --------------------------------------------------------------------------- the receiver

class Answer(NamedTuple):
    status: int = 200
    delay_s: float = 0.0
    reset: bool = False


@dataclass
class Received:
    """One HTTP request the receiver got."""
    method: str
    path: str
    headers: dict[str, str]                 # lower-case names; a repeated header: the last
    header_list: list[tuple[str, str]]
    body: bytes                             # after content-encoding
    at: float                               # time.monotonic() when its headers had arrived
    encoding: str | None = None             # "json" or "protobuf" when the content type is one
    message: Any = None                     # the ExportLogsServiceRequest (None: refused)
    records: list[LogRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # deviations taken (see the module's doc)
    error: str | None = None                # why it was refused (then status is 4xx)
    status: int | None = None               # the status answered (None: reset, no answer)
    answered: bool = False                  # the answer was written to the connection
    done: bool = False                      # handled: files written, answer (or reset) under way

    @property
    def accepted(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


_GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 413: 8, 415: 3, 429: 8, 500: 13,
              501: 12, 502: 14, 503: 14, 504: 4}


def _status_proto(code: int, message: str) -> bytes:
    """A google.rpc.Status (code = 1, message = 2), encoded by hand: opentelemetry-proto does
    not ship it."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    msg = message.encode("utf-8")
    return b"\x08" + varint(code) + b"\x12" + varint(len(msg)) + msg


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        import sys
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class OtlpReceiver:
    """An OTLP/HTTP logs receiver on 127.0.0.1 (see the module's doc). Use as a context manager,
    or call close()."""

    def __init__(self, path: str = DEFAULT_PATH, *, export_file: str | Path | None = None,
                 bodies_file: str | Path | None = None, strict: bool = True,
                 collector_style: bool = True, max_body: int = MAX_BODY,
                 host: str = "127.0.0.1"):
        self.path = path
        self.export_file = Path(export_file) if export_file is not None else None
        self.bodies_file = Path(bodies_file) if bodies_file is not None else None
        self.strict = strict
        self.collector_style = collector_style
        self.max_body = max_body
        self._default = Answer()
        self._planned: list[Answer] = []
        self._requests: list[Received] = []
        self._cond = threading.Condition()
        self._file_lock = threading.Lock()
        self._closing = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet
                pass

            def handle_one(self) -> None:
                receiver._handle(self)

            do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_one

        self.server = _Server((host, 0), Handler)
        self.host = host
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True, name=f"otlp-receiver-{self.port}")
        self.thread.start()

    # ---- what a test tells it

    def answer(self, status: int = 200, delay_s: float = 0.0, reset: bool = False) -> None:
        """How every OTLP request is answered from now on (after any answer_next)."""
        with self._cond:
            self._default = Answer(status, delay_s, reset)

    def answer_next(self, status: int = 200, delay_s: float = 0.0, reset: bool = False,
                    times: int = 1) -> None:
        """How the next `times` OTLP requests (decoded ones; a refused request answers its 4xx and
        takes no turn) are answered, before the default again."""
        with self._cond:
            self._planned.extend([Answer(status, delay_s, reset)] * times)

    def clear(self) -> None:
        """Forget what arrived (the files are left as they are)."""
        with self._cond:
            self._requests.clear()

    # ---- what arrived

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def requests(self) -> list[Received]:
        with self._cond:
            return list(self._requests)

    @property
    def records(self) -> list[LogRecord]:
        """Every LogRecord decoded, whatever was answered."""
        with self._cond:
            return [r for q in self._requests for r in q.records]

    @property
    def accepted_records(self) -> list[LogRecord]:
        """The LogRecords of the requests answered 2xx (once any delay before the answer ended)."""
        with self._cond:
            return [r for q in self._requests if q.accepted and q.done for r in q.records]

    @property
    def request_count(self) -> int:
        with self._cond:
            return len(self._requests)

    @property
    def record_count(self) -> int:
        with self._cond:
            return sum(len(q.records) for q in self._requests)

    @property
    def errors(self) -> list[str]:
        """Why each refused request was refused: `METHOD PATH: status: problem`."""
        with self._cond:
            return [f"{q.method} {q.path}: {q.status}: {q.error}" for q in self._requests
                    if q.error is not None]

    def _summary(self) -> str:
        qs = self.requests
        lines = [f"{len(qs)} requests, {sum(len(q.records) for q in qs)} records"]
        for q in qs[-10:]:
            lines.append(f"  {q.method} {q.path} {q.headers.get('content-type', '-')}: "
                         f"status {q.status}, {len(q.records)} records"
                         + (f", refused: {q.error}" if q.error else ""))
        return "\n".join(lines)

    def wait_for(self, n_records: int, timeout: float = 10.0, *,
                 accepted: bool = False) -> list[LogRecord]:
        """Blocks until at least `n_records` LogRecords arrived (decoded; with `accepted`, of
        requests whose 2xx answer was given) and returns all of them; AssertionError at
        `timeout` saying what did arrive."""
        def count() -> int:
            return sum(len(q.records) for q in self._requests
                       if not accepted or (q.accepted and q.done))
        with self._cond:
            if not self._cond.wait_for(lambda: count() >= n_records, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {n_records} "
                                     f"{'accepted ' if accepted else ''}records; got {count()}: "
                                     + self._summary())
        return self.accepted_records if accepted else self.records

    def wait_for_requests(self, n: int, timeout: float = 10.0, *,
                          done: bool = False) -> list[Received]:
        """Blocks until at least `n` requests arrived (with `done`, were handled to the end)."""
        def count() -> int:
            return sum(1 for q in self._requests if q.done or not done)
        with self._cond:
            if not self._cond.wait_for(lambda: count() >= n, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {n} requests: "
                                     + self._summary())
        return self.requests

    # ---- handling

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        at = time.monotonic()
        q = Received(method=h.command, path=h.path,
                     headers={k.lower(): v for k, v in h.headers.items()},
                     header_list=[(k.lower(), v) for k, v in h.headers.items()],
                     body=b"", at=at)
        try:
            raw = read_body(h)
        except (ConnectionError, TimeoutError, ValueError):
            h.close_connection = True
            return
        answer, encoding = self._decode(q, raw)
        with self._cond:
            if q.error is None:
                answer = self._planned.pop(0) if self._planned else self._default
            q.status = None if answer.reset else answer.status
            self._requests.append(q)
            self._cond.notify_all()
        try:
            if answer.delay_s:
                self._closing.wait(answer.delay_s)
            if q.accepted:
                self._write_files(q)
            # Done before the answer leaves: a client that has read it finds the request done.
            self._finish(q)
            if answer.reset:
                self._reset(h)
                return
            self._respond(h, q, encoding)
            q.answered = True
        except (ConnectionError, TimeoutError, OSError):
            h.close_connection = True
        finally:
            self._finish(q)

    def _finish(self, q: Received) -> None:
        with self._cond:
            if not q.done:
                q.done = True
                self._cond.notify_all()

    def _decode(self, q: Received, raw: bytes) -> tuple[Answer, str]:
        """Decodes the body into `q`; the answer for a refused request, and the encoding to
        answer in."""
        ctype = q.headers.get("content-type", "").split(";")[0].strip().lower()
        encoding = {"application/json": "json", "application/x-protobuf": "protobuf"}.get(ctype)
        q.encoding = encoding

        def refuse(status: int, problem: str) -> tuple[Answer, str]:
            q.error = problem
            return Answer(status), encoding or "json"

        if q.path.split("?")[0] != self.path:
            return refuse(404, f"not the receiver's path ({self.path})")
        if q.method != "POST":
            return refuse(405, "OTLP/HTTP takes POST only")
        if encoding is None:
            return refuse(415, f"content-type {q.headers.get('content-type')!r} is neither "
                               f"{JSON} nor {PROTOBUF}")
        if len(raw) > self.max_body:
            return refuse(413, f"{len(raw)} bytes, past {self.max_body}")
        content_encoding = q.headers.get("content-encoding", "identity").strip().lower()
        try:
            if content_encoding == "gzip":
                d = zlib.decompressobj(wbits=31)
                raw = d.decompress(raw, self.max_body + 1)
                if len(raw) > self.max_body:
                    return refuse(413, f"past {self.max_body} bytes once decompressed")
            elif content_encoding not in ("identity", ""):
                return refuse(400, f"content-encoding {content_encoding!r} is not taken")
        except zlib.error as e:
            return refuse(400, f"not gzip: {e}")
        q.body = raw
        try:
            if encoding == "json":
                q.message, q.notes = parse_otlp_json(raw, strict=self.strict)
            else:
                q.message = ExportLogsServiceRequest.FromString(raw)
        except BadData as e:
            return refuse(400, str(e))
        except DecodeError as e:
            return refuse(400, f"not a protobuf ExportLogsServiceRequest: {e}")
        q.records = log_records(q.message)
        return Answer(), encoding

    def _write_files(self, q: Received) -> None:
        with self._file_lock:
            if self.export_file is not None:
                with self.export_file.open("a", encoding="utf-8") as f:
                    f.write(to_otlp_json(q.message, collector_style=self.collector_style) + "\n")
            if self.bodies_file is not None and q.encoding == "json":
                with self.bodies_file.open("ab") as f:
                    f.write(q.body if q.body.endswith(b"\n") else q.body + b"\n")

    def _respond(self, h, q: Received, encoding: str) -> None:
        status = q.status
        if 200 <= status < 300:
            body = (b"{}" if encoding == "json"
                    else ExportLogsServiceResponse().SerializeToString())
        else:
            message = q.error or f"the receiver answers {status}, as the test told it"
            code = _GRPC_CODE.get(status, 2)
            body = (json.dumps({"code": code, "message": message}).encode()
                    if encoding == "json" else _status_proto(code, message))
        h.send_response(status)
        h.send_header("content-type", JSON if encoding == "json" else PROTOBUF)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        h.wfile.flush()

    @staticmethod
    def _reset(h) -> None:
        """Closes the connection with a TCP reset and no answer."""
        h.close_connection = True
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        except OSError:
            pass

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "OtlpReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_export_file(path: str | Path) -> list:
    """The ExportLogsServiceRequests of a file written as the file exporter does (one OTLP/JSON
    request per line), decoded the same way as POSTed bodies."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(parse_otlp_json(line)[0])
            except BadData as e:
                raise BadData(f"{path}:{n}: {e}") from None
    return out
