"""Self-tests of the test-side pieces of issue 18 (DESIGN.md "Shadow: the same question to the
gray version, answers paired"): tests/otlp_receiver.py, a real OTLP/HTTP logs receiver decoding
with the `opentelemetry-proto` package, and tests/similarity_ref.py, the reference of the
record's similarity and user hash. No Envoy here: requests are POSTed from the test, built by
hand or as src/shadow/record.rs's encoder writes them, and the receiver's file is read back by
`graysplit compare --json` (`make cli`)."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import threading
import time

import pytest

import similarity_ref as ref
from harness import cli
from otlp_receiver import (OtlpReceiver, export_request, log_record, log_records, parse_otlp_json,
                           read_export_file, to_otlp_json)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse)


def post(receiver: OtlpReceiver, body: bytes | dict, *, content_type: str = "application/json",
         path: str | None = None, method: str = "POST", headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=timeout)
    try:
        conn.request(method, path or receiver.path, body=body,
                     headers={"content-type": content_type, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def receiver(tmp_path):
    r = OtlpReceiver(export_file=tmp_path / "export.jsonl", bodies_file=tmp_path / "bodies.jsonl")
    yield r
    r.close()


# --------------------------------------------------------------------------- decoding

# Every attribute of DESIGN's table, with its kind.
FULL = {
    "graysplit.rule": "ramp",
    "graysplit.result": "paired",
    "graysplit.user_hash": ref.user_hash("ramp:shadow", "user-42"),
    "graysplit.request_id": "req-\"7\"",
    "primary.version": "v2.0",
    "shadow.version": "v2.1",
    "primary.status": 200,
    "shadow.status": 503,
    "primary.total_ms": 1234,
    "shadow.total_ms": 2500,
    "primary.first_token_ms": 41,
    "primary.tokens.input": 12,
    "primary.tokens.output": 34,
    "shadow.tokens.input": 0,
    "shadow.tokens.output": 2**63 - 1,
    "primary.finish": "stop",
    "shadow.finish": "length",
    "primary.answer_chars": 5,
    "shadow.answer_chars": 0,
    "primary.answer_sha256": ref.answer_sha256("héllo"),
    "shadow.answer_sha256": ref.answer_sha256(""),
    "graysplit.similarity": 1 / 3,
    "primary.text": "héllo\n",
    "shadow.text": "«Paris» — 😀",
}
KINDS = {k: ("int" if isinstance(v, int) else "double" if isinstance(v, float) else "string")
         for k, v in FULL.items()}


def it_decodes_a_hand_built_json_request_with_every_attribute_and_its_kind(receiver):
    body = export_request([log_record(FULL, time_unix_nano=1_760_000_000_123_456_789),
                           log_record({"http.method": "GET"}, body={"stringValue": "other"})])
    status, headers, answer = post(receiver, body)
    assert (status, headers["content-type"], json.loads(answer)) == (200, "application/json", {})
    records = receiver.wait_for(2, timeout=5)
    r = records[0]
    assert r.values() == FULL
    assert {k: kind for k, (kind, _) in r.attributes.items()} == KINDS
    assert [k for k, _, _ in r.attribute_list] == list(FULL), "in the order sent"
    assert r.time_unix_nano == 1_760_000_000_123_456_789, "a fixed64 past 2**53, exact"
    assert (r.resource, r.scope_name) == ({"service.name": ("string", "graysplit")}, "graysplit")
    assert (r.body, r.trace_id, r.span_id) == (None, "", "")
    assert records[1].body == ("string", "other") and "graysplit.rule" not in records[1]
    assert (receiver.request_count, receiver.record_count) == (1, 2)
    q = receiver.requests[0]
    assert (q.encoding, q.notes, q.error, q.accepted) == ("json", [], None, True)


# What src/shadow/record.rs's encode_batch wrote. The first: its own unit test's exact batch
# (a_small_batch_is_this_exact_otlp_json). The second: a paired and a timed-out record written
# by encode_batch in a throwaway binary on the graysplit crate (the texts: PRIMARY_TEXT,
# SHADOW_TEXT; user "user-42" under salt "ramp:shadow"; the similarity from similarity.rs).
ENCODED_MINIMAL = (
    '{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"graysplit"}}]},'
    '"scopeLogs":[{"scope":{"name":"graysplit"},"logRecords":[{"timeUnixNano":"1700000000123456789","attributes":['
    '{"key":"graysplit.rule","value":{"stringValue":"ramp"}},'
    '{"key":"graysplit.result","value":{"stringValue":"shadow_failed"}},'
    '{"key":"graysplit.user_hash","value":{"stringValue":"b7473093dcbf5dc0"}},'
    '{"key":"primary.version","value":{"stringValue":"v2.0"}},'
    '{"key":"shadow.version","value":{"stringValue":"v2.1"}},'
    '{"key":"primary.status","value":{"intValue":"200"}},'
    '{"key":"primary.total_ms","value":{"intValue":"10"}},'
    '{"key":"shadow.total_ms","value":{"intValue":"10"}},'
    '{"key":"primary.finish","value":{"stringValue":"stop"}},'
    '{"key":"shadow.finish","value":{"stringValue":"aborted"}},'
    '{"key":"primary.answer_chars","value":{"intValue":"5"}},'
    '{"key":"shadow.answer_chars","value":{"intValue":"0"}},'
    '{"key":"primary.answer_sha256","value":{"stringValue":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}},'
    '{"key":"shadow.answer_sha256","value":{"stringValue":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}'
    ']}]}]}]}')
PRIMARY_TEXT = "Paris is the capital of France.\n"
SHADOW_TEXT = "The capital: «Paris» — \"Ville\"\tλ😀"
ENCODED_PAIR = (
    r'{"resourceLogs":[{"resource":{"attributes":['
    r'{"key":"service.name","value":{"stringValue":"graysplit"}}]},"scopeLogs":[{"scope":{"name":"graysplit"},"logRecords":['
    r'{"timeUnixNano":"1760000000123456789","attributes":['
    r'{"key":"graysplit.rule","value":{"stringValue":"ramp"}},'
    r'{"key":"graysplit.result","value":{"stringValue":"paired"}},'
    r'{"key":"graysplit.user_hash","value":{"stringValue":"9e4d006f024402fe"}},'
    r'{"key":"graysplit.request_id","value":{"stringValue":"req-7"}},'
    r'{"key":"primary.version","value":{"stringValue":"v2.0"}},'
    r'{"key":"shadow.version","value":{"stringValue":"v2.1"}},'
    r'{"key":"primary.status","value":{"intValue":"200"}},'
    r'{"key":"shadow.status","value":{"intValue":"503"}},'
    r'{"key":"primary.total_ms","value":{"intValue":"1234"}},'
    r'{"key":"shadow.total_ms","value":{"intValue":"2500"}},'
    r'{"key":"primary.first_token_ms","value":{"intValue":"41"}},'
    r'{"key":"primary.tokens.input","value":{"intValue":"12"}},'
    r'{"key":"primary.tokens.output","value":{"intValue":"34"}},'
    r'{"key":"shadow.tokens.output","value":{"intValue":"9223372036854775807"}},'
    r'{"key":"primary.finish","value":{"stringValue":"stop"}},'
    r'{"key":"shadow.finish","value":{"stringValue":"length"}},'
    r'{"key":"primary.answer_chars","value":{"intValue":"32"}},'
    r'{"key":"shadow.answer_chars","value":{"intValue":"33"}},'
    r'{"key":"primary.answer_sha256","value":{"stringValue":"4489b99a287517af6e7c4bdab43bf6ba44326429bf416f10352ce3b59c1bf800"}},'
    r'{"key":"shadow.answer_sha256","value":{"stringValue":"58d21cc251ceaeadc4fa94c87a40a2ab47775237dfdea5df26879601bd516fdc"}},'
    r'{"key":"graysplit.similarity","value":{"doubleValue":0.2553191489361702}},'
    r'{"key":"primary.text","value":{"stringValue":"Paris is the capital of France.\n"}},'
    r'{"key":"shadow.text","value":{"stringValue":"The capital: «Paris» — \"Ville\"\tλ😀"}}]},'
    r'{"timeUnixNano":"1760000001000000000","attributes":['
    r'{"key":"graysplit.rule","value":{"stringValue":"ramp"}},'
    r'{"key":"graysplit.result","value":{"stringValue":"timed_out"}},'
    r'{"key":"graysplit.user_hash","value":{"stringValue":"9e4d006f024402fe"}},'
    r'{"key":"primary.version","value":{"stringValue":"v2.0"}},'
    r'{"key":"shadow.version","value":{"stringValue":"v2.1"}},'
    r'{"key":"primary.status","value":{"intValue":"200"}},'
    r'{"key":"primary.total_ms","value":{"intValue":"1234"}},'
    r'{"key":"shadow.total_ms","value":{"intValue":"60000"}},'
    r'{"key":"primary.tokens.input","value":{"intValue":"12"}},'
    r'{"key":"primary.tokens.output","value":{"intValue":"34"}},'
    r'{"key":"primary.finish","value":{"stringValue":"stop"}},'
    r'{"key":"shadow.finish","value":{"stringValue":"aborted"}},'
    r'{"key":"primary.answer_chars","value":{"intValue":"32"}},'
    r'{"key":"shadow.answer_chars","value":{"intValue":"0"}},'
    r'{"key":"primary.answer_sha256","value":{"stringValue":"4489b99a287517af6e7c4bdab43bf6ba44326429bf416f10352ce3b59c1bf800"}},'
    r'{"key":"shadow.answer_sha256","value":{"stringValue":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}]}]}]}]}')


def it_decodes_what_the_record_encoder_writes(receiver):
    for body in (ENCODED_MINIMAL, ENCODED_PAIR):
        status, _, _ = post(receiver, body.encode())
        assert status == 200, receiver.errors
    records = receiver.wait_for(3, timeout=5)
    assert [q.notes for q in receiver.requests] == [[], []], "decimal strings, lowerCamelCase"
    minimal, paired, timed_out = records
    assert minimal.values()["graysplit.user_hash"] == ref.user_hash("shadow-2.1", "alice")
    assert minimal.get("primary.answer_sha256") == ref.answer_sha256("hello")
    assert "shadow.status" not in minimal and "graysplit.similarity" not in minimal

    # The paired record, attribute by attribute, against what the test computes itself.
    want = {
        "graysplit.rule": ("string", "ramp"),
        "graysplit.result": ("string", "paired"),
        "graysplit.user_hash": ("string", ref.user_hash("ramp:shadow", "user-42")),
        "graysplit.request_id": ("string", "req-7"),
        "primary.version": ("string", "v2.0"),
        "shadow.version": ("string", "v2.1"),
        "primary.status": ("int", 200),
        "shadow.status": ("int", 503),
        "primary.total_ms": ("int", 1234),
        "shadow.total_ms": ("int", 2500),
        "primary.first_token_ms": ("int", 41),
        "primary.tokens.input": ("int", 12),
        "primary.tokens.output": ("int", 34),
        "shadow.tokens.output": ("int", 2**63 - 1),
        "primary.finish": ("string", "stop"),
        "shadow.finish": ("string", "length"),
        "primary.answer_chars": ("int", ref.answer_chars(PRIMARY_TEXT)),
        "shadow.answer_chars": ("int", ref.answer_chars(SHADOW_TEXT)),
        "primary.answer_sha256": ("string", ref.answer_sha256(PRIMARY_TEXT)),
        "shadow.answer_sha256": ("string", ref.answer_sha256(SHADOW_TEXT)),
        "graysplit.similarity": ("double", ref.similarity(PRIMARY_TEXT, SHADOW_TEXT)),
        "primary.text": ("string", ref.captured_text(PRIMARY_TEXT)),
        "shadow.text": ("string", ref.captured_text(SHADOW_TEXT)),
    }
    assert paired.attributes == want
    assert paired.time_unix_nano == 1_760_000_000_123_456_789
    assert paired.get("graysplit.similarity") == 12 / 47, "unrounded: 12 shared of 47 grams"
    assert timed_out.get("graysplit.result") == "timed_out"
    absent = {"shadow.status", "graysplit.similarity", "graysplit.request_id", "shadow.text",
              "primary.text", "primary.first_token_ms", "shadow.tokens.output"}
    assert not absent & set(timed_out.attributes)
    assert timed_out.get("shadow.finish") == "aborted"


def it_takes_protobuf_and_gzip_and_answers_in_the_request_s_encoding(receiver):
    message, _ = parse_otlp_json(ENCODED_PAIR)
    status, headers, answer = post(receiver, message.SerializeToString(),
                                   content_type="application/x-protobuf")
    assert (status, headers["content-type"]) == (200, "application/x-protobuf")
    assert ExportLogsServiceResponse.FromString(answer) == ExportLogsServiceResponse()
    status, _, answer = post(receiver, gzip.compress(ENCODED_PAIR.encode()),
                             headers={"content-encoding": "gzip"})
    assert (status, answer) == (200, b"{}")
    status, _, _ = post(receiver, gzip.compress(message.SerializeToString()),
                        content_type="application/x-protobuf; charset=binary",
                        headers={"content-encoding": "gzip"})
    assert status == 200
    proto, js, js_gz = (q.records for q in receiver.wait_for_requests(3, timeout=5))
    assert [r.attributes for r in proto] == [r.attributes for r in js] == [r.attributes for r in js_gz]
    assert [q.encoding for q in receiver.requests] == ["protobuf", "json", "protobuf"]


def it_applies_otlp_json_s_deviations_from_protobuf_json(receiver):
    ids = {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174"}
    body = export_request([log_record({"n": 7}, severityNumber=9, **ids)])
    body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"][0]["value"]["intValue"] = 7
    body["resourceLogs"][0]["someFutureField"] = {"x": 1}
    body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["observedTimeUnixNano"] = 5
    assert post(receiver, body)[0] == 200, receiver.errors
    (r,) = receiver.wait_for(1, timeout=5)
    assert (r.trace_id, r.span_id) == (ids["traceId"].lower(), ids["spanId"].lower()), "hex, not base64"
    assert r.attributes["n"] == ("int", 7) and r.severity_number == 9
    assert r.proto.trace_id == bytes.fromhex(ids["traceId"])
    assert receiver.requests[0].notes == [
        "resourceLogs[0].scopeLogs[0].logRecords[0].attributes[0].value.intValue: a 64-bit "
        "integer as a JSON number (7); OTLP/JSON writes decimal strings",
        "resourceLogs[0].scopeLogs[0].logRecords[0].observedTimeUnixNano: a 64-bit integer as a "
        "JSON number (5); OTLP/JSON writes decimal strings",
        "resourceLogs[0].someFutureField: unknown field, ignored",
    ]

    def refused(body) -> str:
        status, headers, answer = post(receiver, body if isinstance(body, bytes) else json.dumps(body).encode())
        assert (status, headers["content-type"]) == (400, "application/json"), answer
        return json.loads(answer)["message"]

    def rec(**fields) -> dict:   # a record with these fields as spelt (no renaming)
        return export_request([{**fields, "attributes": [{"key": "a", "value": {"stringValue": "b"}}]}])
    assert "severityNumber: an enum by name" in refused(rec(severityNumber="SEVERITY_NUMBER_INFO"))
    assert "is not hex" in refused(rec(traceId=base64.b64encode(bytes(16)).decode()))
    assert "3 bytes; a span_id is 8 bytes" in refused(rec(spanId="abcdef"))
    assert "time_unix_nano: an original field name" in refused(rec(time_unix_nano="5"))
    assert "not JSON" in refused(b"{\"resourceLogs\": [")
    assert "a JSON array expected" in refused({"resourceLogs": {}})
    assert "given twice" in refused(b'{"resourceLogs": [], "resourceLogs": []}')
    assert "not an ExportLogsServiceRequest" in refused(
        export_request([{"attributes": [{"key": "a", "value": {"stringValue": "x", "intValue": "1"}}]}]))
    assert post(receiver, b"\x00\x01", content_type="application/x-protobuf")[0] == 400
    assert post(receiver, b"{}", content_type="text/plain")[0] == 415
    assert post(receiver, b"{}", path="/v1/traces")[0] == 404
    assert post(receiver, b"", method="GET")[0] == 405
    assert post(receiver, b"not gzip", headers={"content-encoding": "gzip"})[0] == 400
    assert receiver.record_count == 1, "a refused request keeps no records"
    assert len(receiver.errors) == 13 and all(": 4" in e for e in receiver.errors)

    lenient = OtlpReceiver(strict=False)
    try:
        assert post(lenient, rec(severityNumber="SEVERITY_NUMBER_INFO", time_unix_nano="5"))[0] == 200
        (r,) = lenient.wait_for(1, timeout=5)
        assert (r.severity_number, r.time_unix_nano) == (9, 5)
        assert len(lenient.requests[0].notes) == 2
    finally:
        lenient.close()


# --------------------------------------------------------------------------- failures

def it_answers_a_status_it_is_told_and_keeps_what_came(receiver, tmp_path):
    one = export_request([log_record({"graysplit.rule": "r", "graysplit.result": "paired"})])
    receiver.answer(500)
    status, headers, answer = post(receiver, one)
    assert (status, headers["content-type"]) == (500, "application/json")
    assert json.loads(answer)["code"] == 13
    status, headers, answer = post(receiver, ExportLogsServiceRequest().SerializeToString(),
                                   content_type="application/x-protobuf")
    assert (status, headers["content-type"]) == (500, "application/x-protobuf")
    assert answer.startswith(b"\x08\x0d\x12"), "a google.rpc.Status, code 13 (INTERNAL)"
    receiver.answer_next(503, times=2)
    receiver.answer()   # the default back to 200; the two planned answers first
    assert [post(receiver, one)[0] for _ in range(3)] == [503, 503, 200]
    assert [q.status for q in receiver.requests] == [500, 500, 503, 503, 200]
    assert receiver.record_count == 4, "every record that came is kept"
    assert len(receiver.accepted_records) == 1
    lines = (tmp_path / "export.jsonl").read_text().splitlines()
    assert len(lines) == 1, "only an accepted export is written"
    assert len((tmp_path / "bodies.jsonl").read_text().splitlines()) == 1


def it_delays_or_resets_without_holding_what_came(receiver):
    body = json.dumps(export_request([log_record({"k": "v"})])).encode()
    receiver.answer_next(delay_s=30)
    got: dict = {}

    def client():
        try:
            got["answer"] = post(receiver, body, timeout=0.5)
        except (TimeoutError, socket.timeout) as e:
            got["error"] = e
    t = threading.Thread(target=client)
    started = time.monotonic()
    t.start()
    receiver.wait_for(1, timeout=5)
    assert time.monotonic() - started < 5, "the records are there before the answer"
    t.join(10)
    assert isinstance(got.get("error"), (TimeoutError, socket.timeout)), got
    assert receiver.accepted_records == [], "not answered yet"
    receiver.answer_next(reset=True)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        post(receiver, body)
    assert post(receiver, body)[0] == 200
    qs = receiver.wait_for_requests(3, timeout=5)
    assert [q.status for q in qs[1:]] == [None, 200] and not qs[1].answered
    with pytest.raises(AssertionError, match="waiting for 9 records; got 3"):
        receiver.wait_for(9, timeout=0.2)
    started = time.monotonic()
    receiver.close()   # cuts the pending 30 s delay short
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- the file, and compare

def shadow_record(result: str, p_status, s_status, p_ms, s_ms, p_out, s_out, p_fin, s_fin,
                  sim=None) -> dict:
    r = {"graysplit.rule": "ramp", "graysplit.result": result,
         "graysplit.user_hash": ref.user_hash("ramp:shadow", f"u{p_ms}"),
         "primary.version": "v2.0", "shadow.version": "v2.1", "primary.status": p_status}
    if s_status is not None:
        r["shadow.status"] = s_status
    r.update({"primary.total_ms": p_ms, "shadow.total_ms": s_ms})
    if p_out is not None:
        r["primary.tokens.output"] = p_out
    if s_out is not None:
        r["shadow.tokens.output"] = s_out
    r.update({"primary.finish": p_fin, "shadow.finish": s_fin})
    if sim is not None:
        r["graysplit.similarity"] = sim
    return r


RAMP = [
    shadow_record("paired", 200, 200, 100, 150, 10, 20, "stop", "stop", 0.5),
    shadow_record("paired", 200, 500, 200, 400, 20, 40, "stop", "length", 0.25),
    shadow_record("paired", 200, 200, 300, 100, 30, 60, "length", "length", 0.75),
    shadow_record("paired", 200, 200, 400, 200, 40, 80, "stop", "stop", 1.0),
    shadow_record("shadow_failed", 200, None, 50, 5, 5, None, "stop", "aborted"),
    shadow_record("timed_out", 503, None, 70, 60000, None, None, "stop", "aborted"),
]
PILOT = [{**shadow_record("shadow_failed", 200, None, 10, 3, None, None, "stop", "aborted"),
          "graysplit.rule": "pilot"}]
# Worked out by hand from DESIGN's definitions (nearest-rank: rank ceil(p/100 * n)):
# status agreement over the 4 records with both statuses, 3 equal; total_ms, tokens and endings
# over the 4 paired records: primary [100 200 300 400] p50 = rank 2, p95 = rank 4; shadow sorted
# [100 150 200 400]; tokens 25 and 50 per answer, every pair's ratio 2, so every resample's
# too; similarity sorted [0.25 0.5 0.75 1.0]: p10 rank 1, p50 rank 2, p90 rank 4; one ending
# mismatch among the paired (stop / length).
WANT = {
    "ramp": {
        "pairs": 6, "results": {"paired": 4, "shadow_failed": 1, "timed_out": 1},
        "status_agreement": 0.75,
        "total_ms": {"primary": {"p50": 200, "p95": 400}, "shadow": {"p50": 150, "p95": 400}},
        "output_tokens": {"primary": 25, "shadow": 50, "ratio": 2.0, "ratio_ci95": [2.0, 2.0]},
        "similarity": {"p10": 0.25, "p50": 0.5, "p90": 1.0},
        "finish_mismatches": 1,
    },
    "pilot": {
        "pairs": 1, "results": {"paired": 0, "shadow_failed": 1, "timed_out": 0},
        "status_agreement": None,
        "total_ms": {"primary": {"p50": None, "p95": None}, "shadow": {"p50": None, "p95": None}},
        "output_tokens": {"primary": None, "shadow": None, "ratio": None, "ratio_ci95": None},
        "similarity": {"p10": None, "p50": None, "p90": None},
        "finish_mismatches": 0,
    },
}


def it_writes_the_file_exporter_s_lines_that_compare_reads(receiver, tmp_path):
    t0 = 1_760_000_000_000_000_000
    bodies = [
        export_request([log_record(r, time_unix_nano=t0 + i) for i, r in enumerate(RAMP[:3])]),
        # another service's log in the same export: no graysplit.rule, ignored by compare
        export_request([log_record({"http.method": "GET"}, body={"stringValue": "GET /"}),
                        *(log_record(r, time_unix_nano=t0 + 3 + i) for i, r in enumerate(RAMP[3:]))]),
    ]
    for b in bodies:
        assert post(receiver, b)[0] == 200
    assert post(receiver, ExportLogsServiceRequest.FromString(
        parse_otlp_json(json.dumps(export_request([log_record(PILOT[0])])))[0].SerializeToString()
    ).SerializeToString(), content_type="application/x-protobuf")[0] == 200
    receiver.answer(500)   # a lost export: in neither file
    assert post(receiver, export_request([log_record(RAMP[0])]))[0] == 500
    receiver.wait_for(1 + len(RAMP) + len(PILOT) + 1, accepted=False, timeout=5)

    export = tmp_path / "export.jsonl"
    lines = export.read_text().splitlines()
    assert len(lines) == 3, "one line per accepted export"
    first = json.loads(lines[0])
    rec0 = first["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert list(rec0) == ["timeUnixNano", "body", "attributes", "traceId", "spanId"]
    assert (rec0["timeUnixNano"], rec0["body"], rec0["traceId"]) == (str(t0), {}, "")
    assert rec0["attributes"][5] == {"key": "primary.status", "value": {"intValue": "200"}}
    back = [[r.attribute_list for r in log_records(m)] for m in read_export_file(export)]
    assert back == [[r.attribute_list for r in q.records] for q in receiver.requests[:3]]
    assert to_otlp_json(parse_otlp_json(lines[1])[0]) == lines[1], "a line reads back the same"

    for args in (["--json", export], ["--json", tmp_path / "bodies.jsonl", tmp_path / "pilot.json"]):
        if len(args) == 3:   # the POSTed bodies (JSON ones only), the protobuf one as a file
            (tmp_path / "pilot.json").write_text(json.dumps(export_request([log_record(PILOT[0])]), indent=2))
        out = cli("compare", *args)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got == {"rules": WANT}, json.dumps(got, indent=1)
    table = cli("compare", export)
    assert table.returncode == 0 and "ramp" in table.stdout and "pilot" in table.stdout, table


def it_writes_plain_otlp_json_without_the_collector_s_empty_fields(tmp_path):
    with OtlpReceiver(path="/custom/logs", export_file=tmp_path / "f", collector_style=False) as r:
        assert post(r, ENCODED_MINIMAL.encode())[0] == 200
        r.wait_for(1, accepted=True, timeout=5)
        line = (tmp_path / "f").read_text()
    assert line == ENCODED_MINIMAL + "\n", "the filter's own encoding, byte for byte"


# --------------------------------------------------------------------------- the reference

def it_computes_similarity_as_design_defines_it():
    # (a, b, |A ∩ B| / |A ∪ B|): the hand-counted cases of similarity.rs's unit tests, and the
    # places where Python's own str functions are not DESIGN's definition.
    cases = [
        ("abc", "abc", 1.0), ("abcd", "abce", 1 / 3), ("abcd", "xyz", 0.0), ("aaaa", "aaa", 1.0),
        ("abab", "aba", 0.5), ("ABC", "abc", 1.0), ("ab", "abc", 0.0), ("ab", "\0ab", 0.0),
        ("幻灯片", "幻灯片制作", 1 / 3), ("👍🏽ok", "👍ok", 0.0),
        ("İx", "i\u0307x", 1.0), ("İ", "i", 0.0),
        ("ΟΔΟΣ", "οδος", 1.0), ("ΟΔΟΣ", "οδοσ", 1 / 3), ("ΣΑ", "σα", 1.0),
        ("ΟΔΟΣ'", "οδος'", 1.0), ("Ο'Σ", "ο'ς", 1.0), ("'Σ'", "'σ'", 1.0),   # case-ignorable '
        ("a  b\t\nc", "a b c", 1.0), ("a\u3000b", "a b", 1.0), ("a\u00a0\u2028\u0085b", "a b", 1.0),
        ("  abc \n", "abc", 1.0), ("a b", "ab", 0.0),
        ("a\x1fb", "a b", 0.0),     # U+001F: str.isspace() says yes, White_Space says no
        ("a\u200bb", "a b", 0.0),   # ZERO WIDTH SPACE: not White_Space either
        ("\ua7cbx", "\u0264x", 1.0),   # a capital of Unicode 16.0, unknown to Python 3.11's tables
        ("", "", 1.0), (" \t\n", "\u3000", 1.0), ("", "a", 0.0), ("  ", "abc", 0.0),
    ]
    for a, b, want in cases:
        assert ref.similarity(a, b) == pytest.approx(want, abs=1e-15), (a, b)
        assert ref.similarity(b, a) == ref.similarity(a, b), (a, b)
    assert ref.lower("ΟΔΟΣ ΣΑ Σ") == "οδος σα σ"
    # Only the first 65536 bytes count, cut at a character boundary, before lower-casing.
    assert ref.similarity("a" * 65535 + "é", "aaa") == 1.0, "é straddles the cut: left out"
    assert ref.similarity("a" * 65534 + "é", "aaa") == 0.5
    assert ref.similarity("x" * 65536 + "yz", "xxx") == 1.0
    assert ref.similarity("幻" * 65536, "幻幻幻") == 1.0
    assert ref.lower(ref.cut("Α" * 32767 + "ΣΑ", ref.MAX_BYTES))[-1] == "ς", "no context past the cut"
    assert ref.cut("héllo", 2) == "h" and ref.captured_text("😀" * 5000) == "😀" * 4096
    with pytest.raises(ValueError):
        ref.similarity("\ud800", "a")


def it_hashes_users_as_design_says():
    # hashlib.sha256(f"{salt}:{user}".encode()).hexdigest()[:16], as record.rs's test pins it
    assert ref.user_hash("shadow-2.1", "alice") == "b7473093dcbf5dc0"
    assert ref.user_hash("ramp:shadow", b"user-42") == "9e4d006f024402fe"
    assert ref.user_hash("s", "用户-7") == "4aec1a4cd7d5064f"
