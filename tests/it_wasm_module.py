"""The built module's surface: which callbacks it exports, and its size. Envoy calls every
callback a module exports on every request (about 1.5k instructions each, `make bench-probe`),
so graysplit exports only those it needs (src/abi.rs, src/lib.rs); this keeps it that way, and
keeps the release build within the 150 KB that issue #4 set (README, Size)."""

from __future__ import annotations

from harness import WASM

# The release build's size budget, in bytes (150 KB read as 150,000, the stricter reading).
SIZE_BUDGET = 150_000

# What Envoy may call. Not proxy_on_log, proxy_on_done, body, trailer, tick or http-call
# callbacks: graysplit has nothing to do there, and each would cost every request a VM call.
EXPECTED_FUNCTIONS = {
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_delete",
}


def leb128(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def sections(data: bytes):
    assert data[:8] == b"\0asm\x01\0\0\0", "not a wasm module (version 1)"
    at = 8
    while at < len(data):
        sid = data[at]
        size, at = leb128(data, at + 1)
        yield sid, data[at:at + size]
        at += size


def name(body: bytes, at: int) -> tuple[str, int]:
    n, at = leb128(body, at)
    return body[at:at + n].decode(), at + n


def entries(data: bytes, section: int):
    """(module or "", name, kind) of each entry of the import (2) or export (7) section. Only
    function imports are read correctly past their kind (imports() refuses the others)."""
    for sid, body in sections(data):
        if sid != section:
            continue
        count, at = leb128(body, 0)
        for _ in range(count):
            module = ""
            if section == 2:
                module, at = name(body, at)
            field, at = name(body, at)
            kind = body[at]
            _, at = leb128(body, at + 1)   # the index (an export's; a function import's type)
            yield module, field, kind


def exports(data: bytes) -> dict[str, int]:
    """name -> kind (0 function, 1 table, 2 memory, 3 global)."""
    return {field: kind for _, field, kind in entries(data, 7)}


def imports(data: bytes) -> set[tuple[str, str]]:
    out = set()
    for module, field, kind in entries(data, 2):
        assert kind == 0, f"import {module}.{field} is not a function"
        out.add((module, field))
    return out


def it_exports_only_the_callbacks_graysplit_needs():
    found = exports(WASM.read_bytes())
    functions = {name for name, kind in found.items() if kind == 0}
    assert functions == EXPECTED_FUNCTIONS, (
        f"unexpected exports {sorted(functions - EXPECTED_FUNCTIONS)}, "
        f"missing {sorted(EXPECTED_FUNCTIONS - functions)}")
    assert found.get("memory") == 2, "the host needs the module's memory exported as `memory`"


def it_imports_proxy_wasm_abi_0_2_1_host_functions_and_wasi_only():
    found = imports(WASM.read_bytes())
    modules = {m for m, _ in found}
    assert modules <= {"env", "wasi_snapshot_preview1"}, modules
    proxy = {name for m, name in found if m == "env"}
    assert proxy, "no proxy-wasm host functions imported"
    assert all(name.startswith("proxy_") for name in proxy), sorted(proxy)
    # graysplit reads headers, properties and the plugin config, and writes headers, one
    # property, counters and log lines; it never sends local replies or makes calls out.
    for never in ("proxy_send_local_response", "proxy_http_call", "proxy_grpc_call",
                  "proxy_set_tick_period_milliseconds", "proxy_call_foreign_function"):
        assert never not in proxy, never


def it_fits_the_size_budget():
    size = WASM.stat().st_size
    assert size <= SIZE_BUDGET, (
        f"{WASM} is {size:,} bytes, over the {SIZE_BUDGET:,} budget: see README's Size section "
        f"for where the bytes go (twiggy) before adding more")
