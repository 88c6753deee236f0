"""The built module's surface: the proxy-wasm ABI it speaks, what it imports, and its size.
graysplit is built on the proxy-wasm SDK (0.2.5), which exports every callback of ABI 0.2.1;
Envoy calls each exported one on every request (README, Benchmarks: the SDK's no-op (g) against
(f)). The size budget: issue #9 set 400 KiB for the move onto the SDK and serde (325,643 bytes
then); schedules and guards (issue #10) and claims, bodies and pins (issue #11: prost, hmac,
sha2, serde_json's Value) brought it to about 460 KB, then 512 KiB; v3's answer readers (issue #17)
took it past that (563 KB, 612 KB with the first half of the shadow), and the budget is now the product's own, 640 KiB (README, Size).
With the shadow's pairing cargo's build is 658 KB; `make build` runs Binaryen's `wasm-opt -O3`
over it (scripts/wasm_opt.sh), and the budget is checked on that file, the one Envoy loads."""

from __future__ import annotations

from harness import WASM

# The release build's size budget, in bytes (640 KiB).
SIZE_BUDGET = 640 * 1024

# What Envoy needs of a proxy-wasm module at start and on every request: the ABI marker, the
# WASI reactor entry, the allocator the host hands values back with, and the callbacks graysplit
# acts in. The SDK exports the rest of ABI 0.2.1's callbacks too; these must be among them.
REQUIRED_FUNCTIONS = {
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_done",
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


def it_exports_the_proxy_wasm_abi_0_2_1_entry_points():
    found = exports(WASM.read_bytes())
    functions = {name for name, kind in found.items() if kind == 0}
    assert REQUIRED_FUNCTIONS <= functions, f"missing {sorted(REQUIRED_FUNCTIONS - functions)}"
    others = sorted(f for f in functions - REQUIRED_FUNCTIONS if not f.startswith("proxy_on_"))
    assert not others, f"exports beyond the ABI's callbacks: {others}"
    assert found.get("memory") == 2, "the host needs the module's memory exported as `memory`"


def it_imports_proxy_wasm_host_functions_and_wasi_only():
    found = imports(WASM.read_bytes())
    modules = {m for m, _ in found}
    assert modules <= {"env", "wasi_snapshot_preview1"}, modules
    proxy = {name for m, name in found if m == "env"}
    assert proxy, "no proxy-wasm host functions imported"
    assert all(name.startswith("proxy_") for name in proxy), sorted(proxy)
    # The calls graysplit makes on every request are there (the SDK's trait methods keep the
    # rest of the ABI imported, whether graysplit calls them or not).
    for used in ("proxy_get_header_map_value", "proxy_replace_header_map_value",
                 "proxy_increment_metric", "proxy_set_property", "proxy_define_metric"):
        assert used in proxy, used
    wasi = {name for m, name in found if m == "wasi_snapshot_preview1"}
    assert "random_get" in wasi, "minted sticky-cookie ids come from WASI random_get"


def it_fits_the_size_budget():
    size = WASM.stat().st_size
    assert size <= SIZE_BUDGET, (
        f"{WASM} is {size:,} bytes, over the {SIZE_BUDGET:,} budget: see README's Size section "
        f"for where the bytes go (twiggy) before adding more")
