"""Drive a real Envoy with the graysplit filter from the functional tests.

- `bootstrap(...)` fills in envoy/test-bootstrap.yaml: inline plugin config or ECDS from a file,
  one direct_response route per version (body = the version, headers echo the request), an
  optional second listener on [::1].
- `Envoy` owns one Envoy process: started with --disable-hot-restart, ports picked by the kernel
  (port 0, read back from the admin API), readiness polled on admin /ready, killed in `stop()`
  and, should pytest itself die, by the kernel (PR_SET_PDEATHSIG). With ENVOY_RUNTIME=container
  the same Envoy runs in a container of ENVOY_IMAGE instead (tests/engine.py: host networking,
  files mounted at their own paths), removed in `stop()`; a test that needs one is skipped,
  with the reason, where no container can run.
- `Conn` is a raw-socket HTTP/1.1 client (keep-alive) so tests can send what real
  clients send and libraries refuse: repeated headers, non-UTF-8 bytes, 100 cookie headers.
- `bucket()` is the DESIGN bucketing contract computed independently with the `mmh3` package.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import mmh3
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import run  # noqa: E402  (scripts/run.py: the Envoy binary and PR_SET_PDEATHSIG, shared with make run)
import engine  # noqa: E402  (tests/engine.py: Envoy in a container)
WASM = run.WASM   # GRAYSPLIT_WASM tests another build, as it runs one in the scripts
BOOTSTRAP_TEMPLATE = REPO / "envoy" / "test-bootstrap.yaml"

DEFAULT_ROUTE_HEADER = "x-graysplit-version"
DEFAULT_OVERRIDE_HEADER = "x-gray-release"
FILTER_NAME = run.FILTER_NAME
ECDS_STAT = run.ECDS_STATS   # stat prefix of the filter's ECDS subscription

# Every Envoy started and not yet stopped; conftest prints their logs when a test fails.
RUNNING: list["Envoy"] = []

# How Envoy runs: "process" (a child of pytest) or "container" (`docker run` of ENVOY_IMAGE).
RUNTIMES = ("process", "container")
RUNTIME = os.environ.get("ENVOY_RUNTIME") or "process"
if RUNTIME not in RUNTIMES:
    raise SystemExit(f"ENVOY_RUNTIME={RUNTIME!r}: must be one of {', '.join(RUNTIMES)}")


# --------------------------------------------------------------------------- bucketing contract

def bucket(salt: str, user_id: str | bytes) -> int:
    """DESIGN: murmur3_x86_32(salt + ":" + user_id, seed 0) mod 10000, over bytes."""
    uid = user_id if isinstance(user_id, bytes) else user_id.encode("utf-8")
    return mmh3.hash(salt.encode("utf-8") + b":" + uid, 0, signed=False) % 10000


def user_in(salt: str, lo: int, hi: int, prefix: str = "user-") -> str:
    """The first id `<prefix><n>` whose bucket under `salt` is in [lo, hi)."""
    return next(u for u in (f"{prefix}{i}" for i in range(100000)) if lo <= bucket(salt, u) < hi)


def expected_split(salt: str, user_id: str | bytes, split: Sequence[tuple[str, float]],
                   stable: str) -> str:
    """The version DESIGN's bucket ranges give: entry i owns [100*sum(p<i), 100*sum(p<=i))."""
    b = bucket(salt, user_id)
    upper = 0
    for version, percent in split:
        upper += round(percent * 100)
        if b < upper:
            return version
    return stable


# --------------------------------------------------------------------------- plumbing

def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.02):
    """Poll `predicate` until it returns a truthy value; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ConnectionError) as exc:  # Envoy not up yet, connection reset...
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def known_versions(config: dict) -> list[str]:
    """`stable`, every version a rule names and every one `versions` names (what the route
    table must serve)."""
    versions = [config.get("stable", "stable")]
    for rule in config.get("rules", []) or []:
        if not isinstance(rule, dict):
            continue
        if isinstance(rule.get("version"), str):
            versions.append(rule["version"])
        for entry in rule.get("split", []) or []:
            if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                versions.append(entry["version"])
    if isinstance(config.get("versions"), dict):
        versions.extend(config["versions"])
    return list(dict.fromkeys(v for v in versions if isinstance(v, str)))


def plugin_json(config: dict | str) -> str:
    return config if isinstance(config, str) else json.dumps(config, ensure_ascii=False)


# --------------------------------------------------------------------------- bootstrap

def bootstrap(config: dict | str | None, *, access_log: Path, ecds_path: Path | None = None,
              versions: Iterable[str] = (), ipv6: bool = False, strip_route_header: bool = True,
              scheme: str | None = None, route_header: str | None = None,
              upstreams: dict[str, int] | None = None, route_timeout_s: float | None = None,
              before_filters: Sequence[dict] = ()) -> dict:
    """Fill in envoy/test-bootstrap.yaml.

    config:  the plugin JSON (dict, or a raw string) for an inline filter; None with ecds_path
             for ECDS from a file; None without ecds_path for an Envoy without the filter.
    versions: extra versions to route (the config's known versions are always added).
    scheme:   HCM scheme_header_transformation.scheme_to_overwrite (`:scheme` seen by filters).
    upstreams: version -> port of a real app on 127.0.0.1 (tests/upstream.py): that version's
             route goes to a cluster of it instead of answering itself (route_timeout_s: the
             route's timeout, Envoy's default 15 s when None).
    before_filters: HTTP filters to run before graysplit (e.g. tokens.jwt_authn_filter()).
    """
    doc = yaml.safe_load(BOOTSTRAP_TEMPLATE.read_text())
    parsed = config if isinstance(config, dict) else None
    if route_header is None:
        route_header = (parsed or {}).get("route_header", DEFAULT_ROUTE_HEADER)
    override_header = ((parsed or {}).get("override") or {}).get("header", DEFAULT_OVERRIDE_HEADER)
    upstreams = upstreams or {}
    all_versions = list(dict.fromkeys(
        (known_versions(parsed) if parsed else []) + list(versions) + list(upstreams)))

    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["path"] = str(access_log)
    if scheme:
        hcm["scheme_header_transformation"] = {"scheme_to_overwrite": scheme}

    # Routes: clone the `version` route once per version.
    app_vhost = next(v for v in hcm["route_config"]["virtual_hosts"] if v["name"] == "app")
    routes = app_vhost["routes"]
    idx = next(i for i, r in enumerate(routes) if r["name"] == "version")
    template = routes.pop(idx)
    echo = copy.deepcopy(template["response_headers_to_add"])
    for h in echo:
        h["header"]["value"] = (h["header"]["value"]
                                .replace(DEFAULT_ROUTE_HEADER, route_header)
                                .replace(DEFAULT_OVERRIDE_HEADER, override_header))
    for r in routes:
        if "response_headers_to_add" in r:
            r["response_headers_to_add"] = copy.deepcopy(echo)
    for n, version in enumerate(all_versions):
        r = copy.deepcopy(template)
        r["name"] = f"version-{n}"
        r["match"]["headers"][0]["name"] = route_header
        r["match"]["headers"][0]["string_match"]["exact"] = version
        r["direct_response"]["body"]["inline_string"] = version
        r["response_headers_to_add"] = copy.deepcopy(echo)
        if version in upstreams:
            del r["direct_response"]
            r["route"] = {"cluster": f"app-{n}"}
            if route_timeout_s is not None:
                r["route"]["timeout"] = f"{route_timeout_s}s"
            doc["static_resources"].setdefault("clusters", []).append({
                "name": f"app-{n}",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": f"app-{n}", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": upstreams[version]}}}}]}]},
            })
        routes.insert(idx + n, r)

    # Filters.
    filters = hcm["http_filters"]
    hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"][0]["remove"] = \
        route_header
    gray = next(f for f in filters if f["name"] == FILTER_NAME)
    at = filters.index(gray)
    filters[at:at] = [copy.deepcopy(f) for f in before_filters]
    if ecds_path is not None:
        gray.pop("typed_config")
        gray["config_discovery"] = {
            "config_source": {
                "path_config_source": {"path": str(ecds_path)},
                "initial_fetch_timeout": "0s",
                "resource_api_version": "V3",
            },
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
        }
    elif config is not None:
        wasm_cfg = gray["typed_config"]["config"]
        wasm_cfg["vm_config"]["code"]["local"]["filename"] = str(WASM)
        wasm_cfg["configuration"]["value"] = plugin_json(config)
    else:
        filters.remove(gray)
    if not strip_route_header:
        del hcm["early_header_mutation_extensions"]

    if ipv6:
        l6 = copy.deepcopy(listener)
        l6["name"] = "app_ipv6"
        l6["address"]["socket_address"]["address"] = "::1"
        doc["static_resources"]["listeners"].append(l6)
    return doc


_ecds_counter = 0


def write_ecds(path: Path, config: dict | str) -> None:
    """Publish a plugin config through ECDS the way `make run --push` does (scripts/run.py):
    the same document, written to a new file renamed over the watched path."""
    global _ecds_counter
    _ecds_counter += 1
    run.write_atomic(path, run.ecds_document(plugin_json(config), str(_ecds_counter), WASM))


# --------------------------------------------------------------------------- HTTP client

@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, values decoded as latin-1, in order
    body: bytes

    def header(self, name: str) -> str | None:
        vals = self.all(name)
        return vals[0] if vals else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"Resp({self.status}, headers={self.headers!r}, body={self.body[:200]!r})"


Header = tuple[str, "str | bytes"]


def encode_request(method: str, path: str | bytes, headers: Sequence[Header] = (),
                   host: str = "graysplit.test", body: bytes = b"") -> bytes:
    p = path if isinstance(path, bytes) else path.encode("utf-8")
    out = [method.encode("ascii") + b" " + p + b" HTTP/1.1"]
    if not any(k.lower() == "host" for k, _ in headers):
        out.append(b"host: " + host.encode("ascii"))
    for k, v in headers:
        out.append(k.encode("latin-1") + b": " + (v if isinstance(v, bytes) else v.encode("utf-8")))
    if body or method in ("POST", "PUT", "PATCH"):
        out.append(b"content-length: " + str(len(body)).encode())
    return b"\r\n".join(out) + b"\r\n\r\n" + body


class Conn:
    """One keep-alive HTTP/1.1 connection (pinned to one Envoy worker for its lifetime)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 source: str | None = None):
        """`source`: the local address to connect from (e.g. 127.0.0.2, another loopback
        address), which Envoy sees as the downstream address."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("connection closed by Envoy")
        self.buf += chunk

    def _read_response(self, method: str = "GET") -> Resp:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.strip().lower().decode("latin-1"), v.strip().decode("latin-1")))
        hdict = {k: v for k, v in headers}
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "content-length" in hdict:
            n = int(hdict["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif hdict.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
        else:
            try:
                while True:
                    self._fill()
            except ConnectionError:
                pass
            body, self.buf = self.buf, b""
        return Resp(status, headers, body)

    def request(self, method: str, path: str | bytes, headers: Sequence[Header] = (),
                body: bytes = b"") -> Resp:
        self.sock.sendall(encode_request(method, path, headers, body=body))
        return self._read_response(method)

    def get(self, path: str | bytes, headers: Sequence[Header] = ()) -> Resp:
        return self.request("GET", path, headers)

    def many(self, requests: Sequence[tuple[str | bytes, Sequence[Header]]]) -> list[Resp]:
        """GETs one after the other on this connection (Envoy's HTTP/1 codec answers pipelined
        requests with a protocol error, so no pipelining)."""
        return [self.get(p, h) for p, h in requests]


class Pool:
    """A few keep-alive connections; requests are spread over them by threads."""

    def __init__(self, port: int, size: int = 4, host: str = "127.0.0.1"):
        self.conns = [Conn(port, host) for _ in range(size)]

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, requests: Sequence[tuple[str | bytes, Sequence[Header]]]) -> list[Resp]:
        n = len(self.conns)
        results: list[list[Resp] | None] = [None] * n
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                results[i] = self.conns[i].many(requests[i::n])
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        out: list[Resp] = [None] * len(requests)  # type: ignore[list-item]
        for i in range(n):
            out[i::n] = results[i]  # type: ignore[index]
        return out

    def wait_all_see(self, path: str, headers: Sequence[Header],
                     check: Callable[[Resp], bool], what: str, timeout: float = 15.0) -> None:
        """Poll on every connection (hence every worker holding one) until `check` holds."""
        for i, c in enumerate(self.conns):
            wait_until(lambda c=c: check(c.get(path, headers)), timeout,
                       f"connection {i} to see {what}")


def h2_requests(port: int, requests: Sequence[tuple[str, str, Sequence[Header], bytes | None]]
                ) -> list[Resp]:
    """Sends every request (method, path, headers, body or None) as its own stream on ONE
    HTTP/2 connection, all before reading any response (a body in DATA frames of 1000 bytes),
    and returns the responses in request order."""
    import h2.config
    import h2.connection
    import h2.events
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        ids = []
        for method, path, headers, body in requests:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", method), (":scheme", "http"), (":authority", "graysplit.test"),
                                    (":path", path), *headers], end_stream=body is None)
            if body is not None:
                for i in range(0, len(body), 1000):     # several DATA frames
                    conn.send_data(sid, body[i:i + 1000])
                conn.end_stream(sid)
            ids.append(sid)
        sock.sendall(conn.data_to_send())
        got: dict[int, dict] = {sid: {"headers": [], "body": b"", "done": False} for sid in ids}
        while not all(s["done"] for s in got.values()):
            data = sock.recv(65536)
            assert data, "Envoy closed the connection"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    got[ev.stream_id]["headers"] = list(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    got[ev.stream_id]["body"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    got[ev.stream_id]["done"] = True
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(f"HTTP/2 error: {ev}")
            sock.sendall(conn.data_to_send())
        out = []
        for sid in ids:
            headers = got[sid]["headers"]
            status = int(dict(headers)[":status"])
            out.append(Resp(status, [(k, v) for k, v in headers if not k.startswith(":")], got[sid]["body"]))
        return out
    finally:
        sock.close()


# --------------------------------------------------------------------------- Envoy process

@dataclass
class Envoy:
    workdir: Path
    config: dict
    concurrency: int = 2
    name: str = "envoy"
    proc: subprocess.Popen | None = None
    admin: str = ""
    port: int = 0
    port6: int | None = None
    ecds_path: Path | None = None   # the ECDS file its bootstrap watches, if any
    runtime: str = RUNTIME
    container: str | None = None    # the container's name, while it may exist
    log_path: Path = field(init=False)
    access_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.access_log = Path(
            self.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["access_log"][0]["typed_config"]["path"])

    # -- lifecycle
    def start(self) -> "Envoy":
        cfg_path = self.workdir / f"{self.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.admin_file = self.workdir / f"{self.name}.admin"
        if self.admin_file.exists():
            self.admin_file.unlink()
        args = ["-c", str(cfg_path), "--disable-hot-restart",
                "--concurrency", str(self.concurrency), "--admin-address-path", str(self.admin_file),
                "-l", "info", "--file-flush-interval-msec", "50"]
        if self.runtime == "container":
            argv = self._container_argv(args)
        else:
            argv = [run.envoy_binary(), *args]
        self.log_file = open(self.log_path, "wb")
        # In a container, the child is `docker run`: it passes signals on to Envoy and exits
        # with Envoy's status, so poll(), returncode and SIGTERM mean the same in both runtimes.
        self.proc = subprocess.Popen(
            argv, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=run.die_with_parent)
        RUNNING.append(self)
        return self

    def _container_argv(self, args: list[str]) -> list[str]:
        why = engine.problem()
        if why:
            import pytest  # here, not at the top: scripts/soak.py imports this module too
            pytest.skip(f"ENVOY_RUNTIME=container: {why}")
        self.container = engine.unique_name("envoy")
        # The workdir holds the bootstrap and, by the tests' habit, the ECDS file.
        read_only = [WASM, self.workdir] + ([self.ecds_path.parent] if self.ecds_path else [])
        writable = [p for p in (self.admin_file, self.access_log)
                    if not str(p).startswith("/dev/")]
        return engine.run_argv(self.container, args, read_only=read_only, writable=writable)

    def launch(self) -> "Envoy":
        """start() and wait_ready(); an Envoy that never gets ready is stopped."""
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> "Envoy":
        def admin_up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"Envoy exited with {self.proc.returncode} before it was ready:\n{self.log()}")
            if not self.admin_file.exists():
                return False
            addr = self.admin_file.read_text().strip()
            if not addr:
                return False
            self.admin = addr
            status, body = self.admin_get("/ready")
            return status == 200 and body.strip() == "LIVE"

        wait_until(admin_up, timeout, "Envoy admin /ready == LIVE")
        _, body = self.admin_get("/listeners?format=json")
        for ls in json.loads(body)["listener_statuses"]:
            sa = ls.get("local_address", {}).get("socket_address")
            if sa is None:      # an internal listener
                continue
            if ls["name"] == "app_ipv4":
                self.port = sa["port_value"]
            elif ls["name"] == "app_ipv6":
                self.port6 = sa["port_value"]
        assert self.port, f"no app listener in {body}"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            run.stop_envoy(self.proc)
        if self.container is not None:
            engine.remove(self.container)   # `--rm` did, unless `docker run` itself was killed
            self.container = None
        if getattr(self, "log_file", None):
            self.log_file.close()
        if self in RUNNING:
            RUNNING.remove(self)

    def pid(self) -> int:
        """Envoy's pid on this host (in a container: the host's pid of its Envoy, not of
        `docker run`)."""
        if self.container is not None:
            return int(engine.docker("inspect", "--format", "{{.State.Pid}}", self.container,
                                     check=True).stdout)
        assert self.proc is not None, "Envoy was not started"
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- admin
    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges from /stats (text format), name -> value."""
        path = "/stats"
        if filter_regex:
            path += "?filter=" + urllib.request.quote(filter_regex)
        _, body = self.admin_get(path)
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def counter(self, name: str) -> int:
        """A stat's value, 0 when Envoy does not (yet) have it."""
        return self.stats("^" + name.replace(".", r"\.") + "$").get(name, 0)

    def prometheus(self) -> str:
        return self.admin_get("/stats/prometheus")[1]

    # -- traffic
    def conn(self, ipv6: bool = False) -> Conn:
        if ipv6:
            assert self.port6, "this Envoy has no [::1] listener"
            return Conn(self.port6, "::1")
        return Conn(self.port)

    def pool(self, size: int = 4) -> Pool:
        return Pool(self.port, size)

    def request(self, method: str, path: str | bytes, headers: Sequence[Header] = (),
                ipv6: bool = False) -> Resp:
        with self.conn(ipv6) as c:
            return c.request(method, path, headers)

    def get(self, path: str | bytes = "/", headers: Sequence[Header] = (),
            ipv6: bool = False) -> Resp:
        """One GET on a fresh connection: status, headers (list, multi-valued), body."""
        return self.request("GET", path, headers, ipv6)

    def version(self, path: str | bytes = "/", headers: Sequence[Header] = ()) -> str:
        """The version that served a GET (the body of the version routes), asserting 200."""
        r = self.get(path, headers)
        assert r.status == 200, r
        return r.text


# --------------------------------------------------------------------------- the operator CLI

CLI = REPO / "target" / "release" / "graysplit"


def cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Runs the operator CLI (`make cli` builds it, `make functional` too)."""
    import pytest  # here, not at the top: scripts/soak.py imports this module too
    if not CLI.exists():
        pytest.fail(f"{CLI} is missing: run `make cli` first", pytrace=False)
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=60)


# --------------------------------------------------------------------------- plugin configs

IDENTITY = {"from": [{"header": "x-user-id"}, {"cookie": "uid"}, {"query": "uid"}]}


def plugin_config(rules: list[dict], **top) -> dict:
    """A plugin config in DESIGN's shape: stable `v1`, identity header > cookie > query,
    the version echoed in `x-graysplit-version` on responses. `top` overrides fields
    (a value of None removes the field)."""
    cfg: dict = {
        "route_header": DEFAULT_ROUTE_HEADER,
        "stable": "v1",
        "identity": IDENTITY,
        "response_header": "x-graysplit-version",
        "rules": rules,
    }
    cfg.update(top)
    return {k: v for k, v in cfg.items() if v is not None}


# --------------------------------------------------------------------------- Istio's rendering

ISTIO_BOOTSTRAP_TEMPLATE = REPO / "envoy" / "istio-ecds-bootstrap.yaml"
WASM_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"

# WasmPlugin.spec.failStrategy -> Wasm.failure_policy (istiod's toEnvoyFailurePolicy); unset
# means FAIL_CLOSE.
ISTIO_FAILURE_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN",
                        "FAIL_RELOAD": "FAIL_RELOAD"}

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\b": "\\b", "\f": "\\f", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_string(s: str) -> str:
    """A string as Go's encoding/json writes it (HTML-safe: <, >, & as \\u003c \\u003e \\u0026;
    U+2028/U+2029 escaped; other control characters as lower-case \\u00XX; the rest as UTF-8)."""
    out = ['"']
    for ch in s:
        esc = _GO_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_float(x: float) -> str:
    """A float64 as Go's encoding/json writes it: the shortest round-trip digits, positional
    ('f') for 1e-6 <= |x| < 1e21 (so 10.0 is `10`), else exponent ('e') with e-07 cleaned to
    e-7 and positive exponents of at least two digits (1e+21)."""
    from decimal import Decimal

    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"json: unsupported value: {x!r}")  # what Go's encoder says too
    d = Decimal(repr(x)).normalize()  # repr is the shortest round-trip, like Go's -1 precision
    if x == 0 or 1e-6 <= abs(x) < 1e21:
        return format(d, "f")
    sign, digits, exp = d.as_tuple()
    e = exp + len(digits) - 1
    mant = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mant}e{'-' if e < 0 else '+'}{abs(e) if e < 0 else f'{e:02d}'}"


def go_json(value) -> str:
    """istiod's rendering of a WasmPlugin's pluginConfig (a protobuf Struct) into the plugin's
    configuration string: compact JSON, object keys sorted, every number a float64, Go string
    escaping."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return go_float(value)
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_string(str(k))}:{go_json(value[k])}"
                              for k in sorted(value, key=lambda k: str(k).encode("utf-8"))) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"not representable in a protobuf Struct: {value!r}")


def istio_resource_name(plugin: dict) -> str:
    """The ECDS resource (and HTTP filter) name istiod (<= 1.29) gives a WasmPlugin."""
    md = plugin["metadata"]
    return f"extensions.istio.io/wasmplugin/{md.get('namespace', 'default')}.{md['name']}"


def istio_ecds_document(plugin: dict, version_info: str = "1",
                        plugin_config: dict | None = None) -> dict:
    """The ECDS DiscoveryResponse istiod + istio-agent deliver for a WasmPlugin (see
    ../shared/istio-envoy-ecds-example/), with the module rewritten to the local build (WASM) as
    istio-agent does after fetching it. `plugin_config` replaces spec.pluginConfig."""
    md, spec = plugin["metadata"], plugin["spec"]
    cfg = spec.get("pluginConfig") if plugin_config is None else plugin_config
    vm_config: dict = {"runtime": "envoy.wasm.runtime.v8",
                       "code": {"local": {"filename": str(WASM)}}}
    if str(spec.get("url", "")).startswith("file://"):
        # istiod adds this variable; istio-agent strips it only when it fetched the module.
        vm_config["environment_variables"] = {
            "key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": version_info}}
    wasm_config: dict = {
        "name": f"{md.get('namespace', 'default')}.{md['name']}",
        "root_id": spec.get("pluginName", ""),
        "vm_config": vm_config,
        "failure_policy": ISTIO_FAILURE_POLICY[spec.get("failStrategy", "FAIL_CLOSE")],
    }
    if cfg is not None:
        wasm_config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                        "value": go_json(cfg)}
    return {
        "version_info": version_info,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": istio_resource_name(plugin),
            "typed_config": {"@type": WASM_TYPE_URL, "config": wasm_config},
        }],
    }


def write_istio_ecds(path: Path, plugin: dict, version_info: str = "1",
                     plugin_config: dict | None = None) -> str:
    """Write the ECDS file for `plugin` (new file + rename); returns the configuration string."""
    doc = istio_ecds_document(plugin, version_info, plugin_config=plugin_config)
    run.write_atomic(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return doc["resources"][0]["typed_config"]["config"].get("configuration", {}).get("value", "")


def istio_bootstrap(plugin: dict, *, ecds_path: Path, access_log: Path,
                    routes: list[dict], before_filters: Sequence[dict] = ()) -> dict:
    """Fill in envoy/istio-ecds-bootstrap.yaml for `plugin`, with `routes` for the app vhost
    (and `before_filters` ahead of the WasmPlugin's entry, as istiod puts jwt_authn)."""
    doc = yaml.safe_load(ISTIO_BOOTSTRAP_TEMPLATE.read_text())
    hcm = (doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
           ["typed_config"])
    hcm["access_log"][0]["typed_config"]["path"] = str(access_log)
    hcm["route_config"]["virtual_hosts"][0]["routes"] = routes
    entry = hcm["http_filters"][0]
    hcm["http_filters"][0:0] = [copy.deepcopy(f) for f in before_filters]
    entry["name"] = istio_resource_name(plugin)
    entry["config_discovery"]["config_source"]["path_config_source"]["path"] = str(ecds_path)
    return doc


# --------------------------------------------------------------------------- live load

def worker_connections(envoy: "Envoy") -> dict[str, int]:
    """Active downstream connections per Envoy worker on the app listener."""
    out: dict[str, int] = {}
    for name, value in envoy.stats(r"^listener\..*\.worker_[0-9]+\.downstream_cx_active$").items():
        if name.startswith("listener.127.0.0.1_"):
            out[name.rsplit(".", 2)[-2]] = value
    return out


def process_rss_kb(pid: int) -> int:
    """VmRSS of a process, in kB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


GEN_HEADER_PREFIX = "x-graysplit-gen-"


def marked(config: dict, gen: int) -> dict:
    """`config` with its responses marked as served by generation `gen` (the response_header
    `x-graysplit-gen-<gen>` echoes the version)."""
    return {**config, "response_header": f"{GEN_HEADER_PREFIX}{gen}"}


def open_on_every_worker(envoy: "Envoy", conns: int, max_conns: int = 32) -> list[Conn]:
    """At least `conns` keep-alive connections, more until every Envoy worker holds one (the
    kernel spreads them): a check on every connection is then a check on every worker. Each
    new connection answers one request first, so the worker that took it counts it."""
    out: list[Conn] = []
    deadline = time.monotonic() + 20
    while True:
        c = Conn(envoy.port)
        out.append(c)
        c.get("/", [("x-user-id", "worker-probe")])
        if len(out) >= conns:
            per = worker_connections(envoy)
            if len(per) == envoy.concurrency and min(per.values()) > 0:
                return out
            if len(out) >= max_conns or time.monotonic() > deadline:
                raise AssertionError(f"{len(out)} connections did not reach every worker: {per}")


@dataclass
class Sample:
    """One response of `Traffic`: on which connection, for which user, sent and received when
    (time.time(), the clock Envoy reads), its status and the version that served it (the app's
    x-app-version, else the body of a direct_response version route)."""
    conn: int
    user: str
    sent: float
    got: float
    status: int
    version: str


class Traffic:
    """Keep-alive GETs with `x-user-id` from threads, one connection each, on every worker,
    each response recorded as a `Sample`. For tests that watch what the filter does on its own
    (schedules stepping, guards tripping) while requests flow. A subclass may ask something
    else (`ask`), count a connection cut short otherwise (`cut`) or read the version otherwise
    (`version_of`)."""

    def __init__(self, envoy: "Envoy", users: Sequence[str], *, conns: int = 4,
                 max_seconds: float = 120.0):
        self.envoy = envoy
        self.users = list(users)
        self.deadline = time.monotonic() + max_seconds
        self.conns = open_on_every_worker(envoy, conns)
        self.lock = threading.Lock()
        self.samples: list[Sample] = []
        self.errors: list[str] = []          # connection errors (never an HTTP status)
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(self.conns))]

    def __enter__(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)
        for c in self.conns:
            c.close()

    def ask(self, conn: Conn, user: str, k: int) -> Resp:
        """The `k`-th request of a connection, for `user`."""
        return conn.get("/", [("x-user-id", user)])

    def cut(self, i: int, user: str, sent: float, exc: Exception) -> None:
        """Connection `i` failed a request: an error (the traffic stops if every one does)."""
        with self.lock:
            self.errors.append(f"conn {i} user {user}: {exc!r}")

    def version_of(self, r: Resp) -> str:
        return r.header("x-app-version") or r.text

    def _run(self, i: int) -> None:
        mine = self.users[i::len(self.conns)] or self.users
        conn, k = self.conns[i], 0
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            user = mine[k % len(mine)]
            n, k = k, k + 1
            sent = time.time()
            try:
                r = self.ask(conn, user, n)
            except (OSError, ConnectionError, ValueError, IndexError) as exc:
                self.cut(i, user, sent, exc)
                conn.close()
                try:
                    conn = self.conns[i] = Conn(self.envoy.port)
                except OSError as exc2:
                    with self.lock:
                        self.errors.append(f"conn {i}: reconnect failed: {exc2!r}")
                    return
                continue
            with self.lock:
                self.samples.append(Sample(i, user, sent, time.time(), r.status, self.version_of(r)))

    def snapshot(self) -> list[Sample]:
        with self.lock:
            return list(self.samples)

    def wait_for(self, n: int, what: str, timeout: float = 30.0,
                 where: Callable[[Sample], bool] = lambda s: True) -> list[Sample]:
        """Waits until `n` samples matching `where` came in on every connection; returns all."""
        def enough():
            snap = self.snapshot()
            per = collections.Counter(s.conn for s in snap if where(s))
            if self.errors and not any(t.is_alive() for t in self.threads):
                raise AssertionError(f"{what}: the traffic stopped: {self.errors[-1]}")
            return snap if all(per[c] >= n for c in range(len(self.conns))) else None
        return wait_until(enough, timeout, what)


# --------------------------------------------------------------------------- guard trips, timed

def crossing(samples: Sequence["Sample"], guard: dict, gray: str = "v2") -> float:
    """When the limit was crossed, from the client's view: the first gray response after which
    the last window_s seconds of gray responses meet the trip condition (stable all fine)."""
    window, mn, limit = guard["window_s"], guard["min_requests"], guard["max_error_percent"]
    seen = sorted((s for s in samples if s.version == gray), key=lambda s: s.got)
    lo = errors = 0
    for i, s in enumerate(seen):
        errors += s.status >= 500
        while seen[lo].got <= s.got - window:
            errors -= seen[lo].status >= 500
            lo += 1
        n = i + 1 - lo
        if n >= mn and errors * 100 > limit * n:
            return s.got
    raise AssertionError("the gray responses never crossed the guard's limit")


def switch_latencies(samples: Sequence["Sample"], t_cross: float, gray: str = "v2") -> list[float]:
    """Per connection: from the crossing to the first request it sent after its last gray
    response (what that connection's worker routed to stable from then on)."""
    out = []
    for c in sorted({s.conn for s in samples}):
        mine = [s for s in samples if s.conn == c]
        last_gray = max((s.sent for s in mine if s.version == gray), default=None)
        assert last_gray is not None, f"connection {c} never saw {gray}"
        after = [s.sent for s in mine if s.sent > last_gray]
        assert after, f"connection {c} sent nothing after its last {gray} response"
        out.append(min(after) - t_cross)
    return out



def wait_on_every_worker(envoy: "Envoy", headers: Sequence[Header], check: Callable[[Resp], object],
                         what: str, timeout: float = 10.0) -> None:
    """Waits until `check` holds for the response to `headers` on a connection on every worker
    (a pushed config, a trip: each worker learns of it separately)."""
    conns = open_on_every_worker(envoy, envoy.concurrency)
    try:
        for i, c in enumerate(conns):
            wait_until(lambda c=c: check(c.get("/", list(headers))), timeout, f"connection {i}: {what}")
    finally:
        for c in conns:
            c.close()


_push_gens = itertools.count(10_000)   # above the generations tests number themselves


def push_everywhere(envoy: "Envoy", config: dict, gen: int | None = None,
                    headers: Sequence[Header] = (("x-user-id", "push-probe"),)) -> int:
    """Pushes `config` through ECDS marked as generation `gen` (its responses carry
    x-graysplit-gen-<gen>; by default a new number), and waits until a connection on every
    worker is answered under it: a pushed config reaches each worker separately (DESIGN.md
    "Tests"). Returns the generation."""
    gen = next(_push_gens) if gen is None else gen
    write_ecds(envoy.ecds_path, marked(config, gen))
    wait_on_every_worker(envoy, headers, lambda r: r.header(f"{GEN_HEADER_PREFIX}{gen}"),
                         f"serves config generation {gen}")
    return gen


# --------------------------------------------------------------------------- guards

def graysplit_stat(envoy: "Envoy", family: str, version: str, suffix: str = "",
                   rule: str = "ramp") -> int:
    """A per-rule, per-version graysplit metric (`wasmcustom.graysplit_<family>...`)."""
    return envoy.counter(f"wasmcustom.graysplit_{family}.rule.{rule}.version.{version}{suffix}")


def tripped(envoy: "Envoy", version: str, rule: str = "ramp") -> bool:
    return graysplit_stat(envoy, "guard_tripped", version, rule=rule) == 1


class LoadGen:
    """Steady keep-alive traffic from threads (one connection each, loopback only), bounded by a
    request count and a deadline. Each response is attributed to the config generation that
    served it (the pushed configs echo the version in `x-graysplit-gen-<n>`; see LiveRamp) and
    checked against the version that generation gives its user (mmh3, DESIGN's bucket ranges).
    """

    def __init__(self, envoy: "Envoy", users: Sequence[str], *, conns: int = 8,
                 max_conns: int = 32, max_requests: int = 2_000_000, max_seconds: float = 60.0,
                 versions: Iterable[str] = ()):
        self.envoy = envoy
        self.users = list(users)
        self.versions = set(versions)
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        # Filled in by LiveRamp: gen -> {user: expected version}.
        self.expected: dict[int, dict[str, str]] = {}
        self.requests = 0
        self.failures: list[str] = []      # non-200, unexpected body, connection errors
        self.wrong: list[str] = []         # a version other than its generation gives the user
        self.conns = open_on_every_worker(envoy, conns, max_conns)
        n = len(self.conns)
        self.count = [0] * n                         # responses per connection
        self.gen = [0] * n                           # last generation seen per connection
        self.first_seen: list[dict[int, float]] = [{} for _ in range(n)]
        self.by_gen: list[dict[int, int]] = [{} for _ in range(n)]
        # observed[gen][user] = version served (set by whichever connection serves the user)
        self.observed: dict[int, dict[str, str]] = {}
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def start(self) -> "LoadGen":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=15)
        for c in self.conns:
            c.close()

    def __enter__(self) -> "LoadGen":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def _fail(self, msg: str) -> None:
        with self.lock:
            if len(self.failures) < 1000:
                self.failures.append(msg)
            else:
                self.failures.append("...")
                del self.failures[1000:]

    def _run(self, i: int) -> None:
        mine = self.users[i::len(self.conns)] or self.users
        k = 0
        conn = self.conns[i]
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if self.requests >= self.max_requests:
                    return
                self.requests += 1
            user = mine[k % len(mine)]
            k += 1
            try:
                r = conn.get("/", [("x-user-id", user)])
            except (OSError, ConnectionError, ValueError, IndexError) as exc:
                self._fail(f"conn {i} user {user}: {exc!r}")
                conn.close()
                try:
                    conn = self.conns[i] = Conn(self.envoy.port)
                except OSError as exc2:
                    self._fail(f"conn {i}: reconnect failed: {exc2!r}")
                    return
                continue
            t = time.monotonic()
            if r.status != 200 or (self.versions and r.text not in self.versions):
                self._fail(f"conn {i} user {user}: {r.status} {r.body[:80]!r}")
                continue
            gens = [int(k_[len(GEN_HEADER_PREFIX):]) for k_, _ in r.headers
                    if k_.startswith(GEN_HEADER_PREFIX)]
            gen = gens[0] if len(gens) == 1 else None
            if gen is None:
                self._fail(f"conn {i} user {user}: no single generation marker in {r.headers}")
                continue
            with self.lock:
                self.count[i] += 1
                if gen < self.gen[i]:
                    self.wrong.append(f"conn {i} went back from generation {self.gen[i]} to {gen}")
                self.gen[i] = max(self.gen[i], gen)
                self.first_seen[i].setdefault(gen, t)
                self.by_gen[i][gen] = self.by_gen[i].get(gen, 0) + 1
                want = self.expected.get(gen, {}).get(user)
                if want is not None and r.text != want and len(self.wrong) < 1000:
                    self.wrong.append(f"user {user} got {r.text} under generation {gen}, "
                                      f"which gives {want}")
                seen = self.observed.setdefault(gen, {})
                prev = seen.setdefault(user, r.text)
                if prev != r.text and len(self.wrong) < 1000:
                    self.wrong.append(f"user {user} flipped {prev} -> {r.text} within "
                                      f"generation {gen}")

    def snapshot(self) -> tuple[list[int], list[int]]:
        with self.lock:
            return list(self.count), list(self.gen)


@dataclass
class Step:
    label: str
    gen: int
    accepted: bool
    visible_ms: float | None = None       # rename -> the last connection's first new response
    rejected_ms: float | None = None      # rename -> update_rejected counter moved


class LiveRamp:
    """Pushes plugin configs through ECDS (write + rename) while a LoadGen runs, and measures
    how long each takes to reach every connection (hence every worker).

    Every pushed config gets `response_header: x-graysplit-gen-<n>` (n counts the pushes, bad
    ones included), so each response says which config served it. That makes the checks exact:
    no window has to be left out around a push."""

    def __init__(self, envoy: "Envoy", load: LoadGen, ecds_stat_prefix: str = ECDS_STAT,
                 step_timeout: float = 10.0):
        self.envoy = envoy
        self.load = load
        self.stat = ecds_stat_prefix
        self.timeout = step_timeout
        self.gen = 0
        self.steps: list[Step] = []

    def expect(self, gen: int, config: dict) -> None:
        stable = config["stable"]
        split_rules = [r for r in config.get("rules", []) if "split" in r]
        exp: dict[str, str] = {}
        for u in self.load.users:
            version = stable
            for rule in split_rules:  # these configs: split rules without conditions
                if rule.get("enabled", True):
                    version = expected_split(rule.get("salt", rule["name"]), u,
                                             [(s["version"], s["percent"])
                                              for s in rule["split"]], stable)
                    break
            exp[u] = version
        with self.load.lock:
            self.load.expected[gen] = exp

    def initial(self, config: dict) -> None:
        """Expect `config` as generation 1 (Envoy started with `marked(config, 1)`)."""
        self.gen = 1
        self.expect(1, config)

    def wait_for(self, pred: Callable[[], object], what: str):
        def check():
            if not self.load.running:
                raise AssertionError(f"load generator stopped while waiting for {what}")
            return pred()
        return wait_until(check, self.timeout, what, interval=0.002)

    def push(self, label: str, config: dict, hold: int, *, bad: bool = False) -> Step:
        """Push `config`; wait until every connection serves it (or, when `bad`, until Envoy
        rejects it), then until every connection has answered `hold` more requests."""
        self.gen += 1
        gen = self.gen
        if not bad:
            self.expect(gen, config)
        rejected0 = self.envoy.counter(self.stat + "update_rejected")
        count0, gen0 = self.load.snapshot()
        t0 = time.monotonic()
        assert self.envoy.ecds_path, "LiveRamp needs an Envoy reading ECDS from a file"
        write_ecds(self.envoy.ecds_path, marked(config, gen))
        step = Step(label, gen, accepted=not bad)
        if bad:
            self.wait_for(lambda: self.envoy.counter(self.stat + "update_rejected") > rejected0,
                       f"Envoy to reject the bad config ({label})")
            step.rejected_ms = (time.monotonic() - t0) * 1000
            self.wait_for(lambda: all(c >= c0 + hold
                                   for c, c0 in zip(self.load.snapshot()[0], count0)),
                       f"{hold} more responses per connection after the rejected push")
            _, gens = self.load.snapshot()
            assert gens == gen0, f"a connection changed config after a rejected push: " \
                                 f"{gen0} -> {gens}"
        else:
            self.wait_for(lambda: all(gen in fs for fs in self.load.first_seen),
                       f"every connection to serve config {gen} ({label})")
            seen = [fs[gen] for fs in self.load.first_seen]
            step.visible_ms = (max(seen) - t0) * 1000
            self.wait_for(lambda: all(bg.get(gen, 0) >= hold for bg in self.load.by_gen),
                       f"{hold} responses per connection under config {gen} ({label})")
        self.steps.append(step)
        return step


def ramp_cycle(stable: str = "v1", gray: str = "v2", salt: str = "release") -> list[tuple]:
    """The live release the ramp tests and the soak push, as (label, config, bad?):
    1% -> 10% -> a broken push -> 50% -> 100% -> 0% (rollback) -> 50% -> kill switch."""
    def ramp(percent: float, **extra) -> dict:
        return plugin_config([{"name": "ramp", "salt": salt,
                               "split": [{"version": gray, "percent": percent}], **extra}],
                             stable=stable)
    broken = ramp(50)
    broken["rules"] = broken["rules"] + [{"name": "typo", "when": {"source_cidrs": ["10.0.0.0/33"]},
                                          "version": gray}]
    return [("1%", ramp(1), False), ("10%", ramp(10), False), ("bad push", broken, True),
            ("50%", ramp(50), False), ("100%", ramp(100), False),
            ("0% rollback", ramp(0), False), ("50% again", ramp(50), False),
            ("kill switch", ramp(50, enabled=False), False)]


# Lines for the end-of-run summary (conftest prints them; tests also write them to .run/).
SUMMARY: list[str] = []


# DESIGN.md's example configuration (its ramp's expires_at moved far out, so it stays active).
DESIGN_EXAMPLE = {
    "route_header": "x-graysplit-version",
    "stable": "v2.0",
    "identity": {
        "from": [{"header": "x-user-id"}, {"cookie": "uid"}, {"query": "uid"}],
        "sticky_cookie": {"name": "graysplit_uid", "max_age_s": 2592000},
    },
    "override": {"header": "x-gray-release", "trusted_cidrs": ["10.0.0.0/8", "127.0.0.1/32"]},
    "response_header": "x-graysplit-version",
    "rules": [
        {"name": "vip-stay-stable", "when": {"users": ["ceo@example.com"]}, "version": "v2.0"},
        {"name": "legal-pilot", "when": {"headers": [{"name": "x-department", "exact": "legal"}]},
         "version": "v2.1"},
        {"name": "office", "when": {"source_cidrs": ["192.168.0.0/16"], "path_prefix": "/api/"},
         "version": "v2.1"},
        {"name": "ramp", "split": [{"version": "v2.1", "percent": 10}], "salt": "release-2.1",
         "expires_at": "2099-12-01T00:00:00Z"},
    ],
}
