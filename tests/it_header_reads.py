"""A plan that may read many headers fetches the whole header map in one host call
(`WHOLE_MAP_MIN_HEADERS` in src/config.rs); one that reads few asks for each header. Both ways
must see a request the same: first values of repeated headers, every cookie header,
pseudo-headers (`:path`, `:method`, `:scheme`). Header names and values that are not UTF-8
never trap the VM, whichever way they are read (DESIGN.md "v2 corrections")."""

import re

import pytest

from harness import Conn, bucket, plugin_config

STICKY = {"from": [{"header": "x-user-id"}, {"cookie": "uid"}],
          "sticky_cookie": {"name": "gs_uid", "max_age_s": 3600}}

# Reads x-team, cookie, :path, :method and x-user-id: five headers, so the whole map.
MANY = [
    {"name": "team", "when": {"headers": [{"name": "x-team", "exact": "legal"}]}, "version": "v-team"},
    {"name": "beta", "when": {"cookies": [{"name": "beta", "exact": "1"}]}, "version": "v-beta"},
    {"name": "qa", "when": {"query": [{"name": "qa", "present": True}]}, "version": "v-qa"},
    {"name": "writes", "when": {"methods": ["POST"], "path_prefix": "/admin"}, "version": "v-writes"},
    {"name": "ramp", "split": [{"version": "v2", "percent": 50}]},
]

CASES = [
    # (path, headers, expected (rule-derived) version or None for "by the split")
    ("/", [("x-team", "legal")], "v-team"),
    ("/", [("x-team", "sales"), ("x-team", "legal")], None),          # first value only
    ("/", [("cookie", "a=1"), ("cookie", "beta=1")], "v-beta"),       # the second cookie header
    ("/", [("cookie", "beta=0; beta=1")], None),                      # first occurrence wins
    ("/x?a=1&qa", [], "v-qa"),
    ("/admin/users", [], None),                                       # GET is not POST
]


def split_version(user: str) -> str:
    return "v2" if bucket("ramp", user) < 5000 else "v1"


def it_whole_map_and_single_reads_see_requests_alike(start_envoy):
    whole = start_envoy(plugin_config(MANY, identity=STICKY))
    # The same rules without the query, method and path ones: three headers, read one by one.
    few = start_envoy(plugin_config(MANY[:2] + MANY[4:], identity=STICKY))
    for path, headers, want in CASES:
        user = [("x-user-id", "user-7")]
        got = whole.version(path, headers + user)
        assert got == (want or split_version("user-7")), (path, headers, got)
        if want not in ("v-qa",):
            assert few.version(path, headers + user) == got, (path, headers)
    r = whole.request("POST", "/admin/x", [("x-user-id", "user-7")])
    assert r.text == "v-writes", r


def it_whole_map_reads_cookie_identity_and_the_scheme(start_envoy):
    envoy = start_envoy(plugin_config(MANY, identity=STICKY), scheme="https")
    r = envoy.get("/", [("cookie", "theme=dark"), ("cookie", "uid=user-9")])
    assert r.text == split_version("user-9"), "uid from the second cookie header"
    assert r.all("set-cookie") == [], "an id was found: nothing minted"
    r = envoy.get("/", [("cookie", "theme=dark")])
    m = re.match(r"^gs_uid=([0-9a-f]{32});(.*)$", r.header("set-cookie") or "")
    assert m, r
    assert "Secure" in [a.strip() for a in m.group(2).split(";")], "the :scheme pseudo-header is read"
    assert r.text == split_version(m.group(1)), "the minted id decides this request"


# An empty value is a value: `present: true` and `exact: ""` hold for it, and an empty first
# `cookie` header still lets the next one be read. (Envoy returns an empty value without
# allocating, as a null pointer; read as "absent" it would break all three, but only for
# plans that read headers one by one.)
EMPTY = [
    {"name": "flag", "when": {"headers": [{"name": "x-flag", "present": True}]}, "version": "v-flag"},
    {"name": "blank", "when": {"headers": [{"name": "x-blank", "exact": ""}]}, "version": "v-blank"},
    {"name": "ramp", "split": [{"version": "v2", "percent": 50}]},
]
IDENTITY = {"from": [{"header": "x-user-id"}, {"cookie": "uid"}]}


def it_empty_header_values_are_values_one_by_one_and_from_the_whole_map(start_envoy):
    # x-flag, x-blank, x-user-id, cookie: four headers, read one by one; with the query and
    # method rules the plan reads six, so the whole map.
    few = start_envoy(plugin_config(EMPTY, identity=IDENTITY))
    whole = start_envoy(plugin_config(EMPTY[:2] + MANY[2:4] + EMPTY[2:], identity=IDENTITY))
    for envoy, how in ((few, "one by one"), (whole, "whole map")):
        assert envoy.version("/", [("x-flag", "")]) == "v-flag", how
        assert envoy.version("/", [("x-blank", "")]) == "v-blank", how
        assert envoy.version("/", [("x-blank", "x"), ("x-user-id", "user-3")]) == split_version("user-3"), how
        assert envoy.version("/", [("cookie", ""), ("cookie", "uid=user-5")]) == split_version("user-5"), how
        assert envoy.version("/", [("x-user-id", ""), ("cookie", "uid=user-6")]) == split_version("user-6"), \
            f"{how}: an empty id header is skipped"


# --------------------------------------------------------------------------- non-UTF-8 names

# An Envoy Lua filter ahead of graysplit (Lua strings are bytes) that, on a request carrying
# `x-lua-odd`, adds headers whose names are not UTF-8 (and one whose value is not), then
# checks they are in the header map graysplit will read, and says so on the response
# (`x-lua-added: yes`). Envoy's codecs refuse such names from clients (400 over HTTP/1.1, the
# connection closed over HTTP/2), but its header map takes them from a filter: this is how a
# name with bytes 0x80-0xff reaches graysplit for real.
ODD_NAMES = ["x-\\255\\254", "\\128", "x-caf\\195", "x-\\192\\175-team"]
LUA_ODD = {"name": "envoy.filters.http.lua", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
    "default_source_code": {"inline_string": "\n".join([
        "function envoy_on_request(h)",
        "  if h:headers():get('x-lua-odd') == nil then return end",
        *[f"  h:headers():add('{n}', 'odd')" for n in ODD_NAMES],
        "  h:headers():add('x-lua-value', 'v\\255\\254\\195')",
        "  local found = 0",
        "  for k, v in pairs(h:headers()) do",
        *[f"    if k == '{n}' then found = found + 1 end" for n in ODD_NAMES],
        "  end",
        f"  if found == {len(ODD_NAMES)} then",
        "    h:streamInfo():dynamicMetadata():set('graysplit.test', 'odd', 'yes')",
        "  end",
        "end",
        "function envoy_on_response(h)",
        "  local m = h:streamInfo():dynamicMetadata():get('graysplit.test')",
        "  if m and m['odd'] == 'yes' then h:headers():add('x-lua-added', 'yes') end",
        "end",
    ])}}}

# The whole map (MANY reads five headers), and cookies from several `cookie` headers (a plan
# that reads few headers reads the first `cookie` header alone, then the whole map for a cookie
# that is not in it).
COOKIE_RULES = [
    {"name": "beta", "when": {"cookies": [{"name": "beta", "exact": "1"}]}, "version": "v-beta"},
    {"name": "ramp", "split": [{"version": "v2", "percent": 50}]},
]
ODD_CONFIGS = {
    "whole map": plugin_config(MANY),
    "cookie headers": plugin_config(COOKIE_RULES, identity={"from": [{"cookie": "uid"}]}),
}
# Per config: (headers of a normal request, the version it gets), each also sent with the odd
# names added by Lua and with odd bytes of its own.
ODD_CASES = {
    "whole map": [([("x-team", "legal")], "v-team"),
                  ([("x-user-id", "user-7")], split_version("user-7")),
                  ([("cookie", "a=1"), ("cookie", "beta=1")], "v-beta")],
    "cookie headers": [([("cookie", "a=1"), ("cookie", "beta=1")], "v-beta"),
                       ([("cookie", "theme=dark"), ("cookie", "uid=user-9")], split_version("user-9")),
                       ([("cookie", "uid=user-5")], split_version("user-5"))],
}


def h2_get(port: int, headers: list[tuple[bytes, bytes]]) -> "Resp | str":
    """One GET on a new HTTP/2 (h2c) connection, the headers sent as given (the h2 library's
    own header checks off): the response, or "refused" when Envoy reset the stream or closed
    the connection."""
    import socket

    import h2.config
    import h2.connection
    import h2.events
    from harness import Resp

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                (b":authority", b"graysplit.test"), (b":path", b"/"), *headers],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        status, got, body = None, [], b""
        for _ in range(100):                 # bounded: a response is a few frames
            data = sock.recv(65536)
            if not data:
                return "refused"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    got = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers]
                    status = int(dict(got)[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return "refused"
                elif isinstance(ev, h2.events.StreamEnded):
                    return Resp(status, [(k, v) for k, v in got if not k.startswith(":")], body)
            sock.sendall(conn.data_to_send())
        raise AssertionError("no end of the HTTP/2 response")
    finally:
        sock.close()


def b(headers) -> list[tuple[bytes, bytes]]:
    return [(k if isinstance(k, bytes) else k.encode(), v if isinstance(v, bytes) else v.encode())
            for k, v in headers]


def vm_health(envoy) -> dict[str, int]:
    """What Envoy says of graysplit's VMs: how many it created and reloaded (the filter's
    failure_policy is FAIL_RELOAD: a VM that trapped is replaced, `wasm.graysplit.vm_reload*`)."""
    return {k: v for k, v in envoy.stats(r"^wasm\.").items()
            if k.endswith(".created") or ".vm_reload" in k}


@pytest.mark.parametrize("which", list(ODD_CONFIGS))
def it_non_utf8_header_names_and_values_never_trap_the_vm(start_envoy, which):
    """Header names with bytes 0x80-0xff and values that are not UTF-8 never trap the VM, for a
    plan that reads the whole header map and for one that reads cookies from several `cookie`
    headers. Such names reach graysplit through the Lua filter ahead of it (checked: Lua sees
    them in the map and says so), over HTTP/1.1 and HTTP/2: every request gets the decision it
    gets without them (a non-UTF-8 name matches no rule). Sent by a client over a raw socket,
    Envoy's codecs refuse such names (HTTP/1.1: 400; HTTP/2: the connection is closed), which
    is fine, and let odd values through, which get decisions. Afterwards normal requests on new
    connections still get decisions, no VM was created or reloaded, and the log shows no panic
    and no failed Wasm call. (v2 read the map with the proxy-wasm SDK's get_map_bytes, which
    unwraps names as UTF-8: the first such name trapped the VM, and Envoy answered 503.)"""
    envoy = start_envoy(ODD_CONFIGS[which], before_filters=[LUA_ODD])
    before = vm_health(envoy)
    assert before, envoy.stats(r"^wasm\.")
    cases = ODD_CASES[which]
    for headers, want in cases:
        assert envoy.version("/", headers) == want, (headers, "without odd names")
        # The odd names, added by Lua, over HTTP/1.1 and HTTP/2.
        r = envoy.get("/", [("x-lua-odd", "1"), *headers])
        assert (r.status, r.text, r.header("x-lua-added")) == (200, want, "yes"), (headers, r)
        r = h2_get(envoy.port, b([("x-lua-odd", "1"), *headers]))
        assert r != "refused" and (r.status, r.text, r.header("x-lua-added")) == (200, want, "yes"), \
            (headers, "HTTP/2", r)
        # Odd values of other headers, from the client itself: a decision, the same one.
        odd_values = [("x-odd", b"\xff\xfe"), ("x-also-odd", b"caf\xc3"), ("cookie", b"junk=\xff\xc0\xaf")]
        r = envoy.get("/", [*odd_values, *headers])
        assert (r.status, r.text) == (200, want), (headers, "odd values, HTTP/1.1", r)
        r = h2_get(envoy.port, b([*odd_values, *headers]))
        assert r != "refused" and (r.status, r.text) == (200, want), (headers, "odd values, HTTP/2", r)
    # Odd names from the client itself: refused by the codec, or decided like the others.
    headers, want = cases[0]
    for name in (b"x-\xffodd", b"x-\xc3", b"\x80", b"x-caf\xc3\xa9"):
        with Conn(envoy.port) as c:
            c.sock.sendall(encode_raw(name, headers))
            r = c._read_response()
        assert r.status == 400 or (r.status, r.text) == (200, want), (name, "HTTP/1.1", r)
    for name in (b"x-\xffodd", b"\x80"):      # Envoy closes such a connection after a second
        r = h2_get(envoy.port, [(name, b"1"), *b(headers)])
        assert r == "refused" or (r.status, r.text) == (200, want), (name, "HTTP/2", r)
    # Still healthy: normal requests on new connections get their decisions.
    for headers, want in cases:
        assert envoy.version("/", headers) == want
        r = h2_get(envoy.port, b(headers))
        assert r != "refused" and (r.status, r.text) == (200, want), r
    assert vm_health(envoy) == before, "a Wasm VM was created or reloaded"
    log = envoy.log()
    assert "panicked" not in log and "failed: Uncaught" not in log, \
        [line for line in log.splitlines() if "panicked" in line or "Uncaught" in line][:3]


def encode_raw(odd_name: bytes, headers) -> bytes:
    """An HTTP/1.1 GET with a header named `odd_name` (raw bytes) before `headers`."""
    out = [b"GET / HTTP/1.1", b"host: graysplit.test", odd_name + b": 1"]
    out += [k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) for k, v in headers]
    return b"\r\n".join(out) + b"\r\n\r\n"
