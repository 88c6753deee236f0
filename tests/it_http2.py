"""HTTP/2 (h2c, prior knowledge): many streams of one connection decided at once, each on its
own, and cookie crumbs. gRPC and most service-to-service traffic (an Istio mesh, an LLM
gateway in front of model servers) arrive this way."""

from __future__ import annotations

import re
import socket

import h2.config
import h2.connection
import h2.events

from harness import Resp, bucket, plugin_config

RAMP = {"name": "ramp", "split": [{"version": "v2", "percent": 50}]}
STICKY = {"from": [{"header": "x-user-id"}, {"cookie": "uid"}],
          "sticky_cookie": {"name": "gs_uid", "max_age_s": 3600}}


def h2_get_all(port: int, requests: list[tuple[str, list[tuple[str, str]]]]) -> list[Resp]:
    """Sends every request as its own stream on ONE HTTP/2 connection, all before reading any
    response, and returns the responses in request order."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        ids = []
        for path, headers in requests:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "graysplit.test"),
                                    (":path", path), *headers], end_stream=True)
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


def expect(user: str) -> str:
    return "v2" if bucket("ramp", user) < 5000 else "v1"


def it_http2_streams_of_one_connection_each_get_their_users_version(start_envoy):
    envoy = start_envoy(plugin_config([RAMP]))
    users = [f"h2-user-{i}" for i in range(64)]
    for attempt in range(3):   # the same users again: sticky across connections too
        responses = h2_get_all(envoy.port, [("/", [("x-user-id", u)]) for u in users])
        for u, r in zip(users, responses):
            assert r.status == 200, r
            assert r.text == expect(u), f"attempt {attempt}: {u} (bucket {bucket('ramp', u)}) got {r.text}"
            assert r.header("x-graysplit-version") == r.text, f"response_header of {u}'s stream: {r}"
    assert {expect(u) for u in users} == {"v1", "v2"}, "the sample covers both versions"


def it_http2_cookie_crumbs_are_read_as_one_cookie_header(start_envoy):
    # An HTTP/2 client may split `cookie` into crumbs (RFC 9113 8.2.3); Envoy joins them before
    # the filter. The id is in the last crumb.
    envoy = start_envoy(plugin_config([
        {"name": "pilot", "when": {"cookies": [{"name": "beta", "exact": "1"}]}, "version": "v-pilot"},
        RAMP]))
    crumbs = [("cookie", "theme=dark"), ("cookie", "session=3f9a"), ("cookie", "uid=crumb-user")]
    [r] = h2_get_all(envoy.port, [("/", crumbs)])
    assert r.text == expect("crumb-user"), r
    [r] = h2_get_all(envoy.port, [("/", [("cookie", "uid=x"), ("cookie", "beta=1")])])
    assert r.text == "v-pilot", r


def it_http2_streams_mint_their_own_sticky_cookies(start_envoy):
    envoy = start_envoy(plugin_config([RAMP], identity=STICKY))
    requests = [("/", [])] * 8 + [("/", [("x-user-id", "known-user")])] * 2
    responses = h2_get_all(envoy.port, requests)
    minted = []
    for r in responses[:8]:
        cookies = r.all("set-cookie")
        assert len(cookies) == 1, r
        m = re.match(r"^gs_uid=([0-9a-f]{32});", cookies[0])
        assert m, cookies
        assert r.text == expect(m.group(1)), f"the minted id {m.group(1)} is this stream's identity"
        minted.append(m.group(1))
    assert len(set(minted)) == 8, f"each stream mints its own id: {minted}"
    for r in responses[8:]:
        assert r.all("set-cookie") == [] and r.text == expect("known-user"), r
