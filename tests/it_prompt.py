"""Pilots by what is asked (`when.prompt`) and a model released as a version (`versions.<v>.model`),
through a real Envoy, per DESIGN.md "Prompt matchers and versions as models".

Every version is an LLM API stand-in of its own (tests/llm_upstream.py) that keeps the request body
byte for byte as it arrived. The questions are asked with the real `openai` and `anthropic`
clients (and raw HTTP/1.1 where a test needs bytes no client writes: unusual spacing, escapes,
chunked bodies, non-JSON). What is proven: which version each prompt source picks (OpenAI chat,
Anthropic Messages, OpenAI Responses, Dify), Unicode case folding (CJK, accented Latin), earlier
user, assistant and system messages never matching, regex and length matchers (characters, not
bytes), no prompt for bodies that are absent, not JSON, or longer than `body.max_bytes`; the
rewritten body equal, byte for byte, to the expected one (only the top-level `model` string's
value changed, `content-length` the new length, a chunked body still whole); skipped rewrites
passing unchanged and counted; a rewrite with the user id and the session pin from the same
body; and bad matchers and versions refused by a real Envoy with their JSON paths.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from harness import Conn, user_in
from it_config import refused_at
from llm_upstream import anthropic_client, launch, llm_apps, openai_client

SALT = "release-2.1"
VERSIONS = ("v1", "ppt", "re", "long", "v2")
CANARY = "qwen3-72b-canary"
PIN_KEY = "a pin key of at least thirty-two characters, for tests"
CONFIG = {
    "stable": "v1",
    "identity": {"from": [{"body": "/user"}, {"header": "x-user-id"}]},
    "response_header": "x-graysplit-version",
    "body": {"max_bytes": 4096},
    "versions": {"v2": {"model": CANARY}},
    "session_pin": {"cookie": "gs_pin", "idle_s": 600, "key": PIN_KEY},
    "rules": [
        {"name": "canary", "when": {"headers": [{"name": "x-canary", "present": True}]}, "version": "v2"},
        {"name": "ppt-pilot", "when": {"prompt": [{"contains_any": ["PPT", "幻灯片", "Slides", "Été"]}]},
         "version": "ppt"},
        {"name": "tickets", "when": {"prompt": [{"regex": r"\bTICKET-[0-9]{3,}\b"}]}, "version": "re"},
        {"name": "long-docs", "when": {"prompt": [{"min_chars": 500}, {"max_chars": 600}]}, "version": "long"},
        {"name": "ramp", "salt": SALT, "when": {"path_prefix": "/ramp"},
         "split": [{"version": "v2", "percent": 50}]},
    ],
}
GRAY_USER = user_in(SALT, 0, 5000)
STABLE_USER = user_in(SALT, 5000, 10000)

_tags = iter(range(10**9))


def tag() -> str:
    return f"p-{next(_tags)}"


@pytest.fixture(scope="module")
def apps():
    a = llm_apps(VERSIONS)
    yield a
    a.close()


@pytest.fixture(scope="module")
def envoy(apps, tmp_path_factory):
    e = launch(tmp_path_factory.mktemp("prompt"), CONFIG, apps.ports)
    yield e
    e.stop()


def served(apps, t: str):
    """(version, answer) of the app that answered request `t`."""
    found = [(v, apps[v].answer(t)) for v in VERSIONS if apps[v].answer(t) is not None]
    assert len(found) == 1, f"{t}: answered by {[v for v, _ in found]}"
    return found[0]


def chat(envoy, messages, **kw) -> str:
    t = tag()
    openai_client(envoy.port).chat.completions.create(
        model="qwen3-72b", messages=messages, extra_headers={"x-test-id": t}, **kw)
    return t


def post(envoy, path: str, body: bytes, headers=(), ctype="application/json"):
    """A raw HTTP/1.1 POST of exactly `body`; returns (tag, response)."""
    t = tag()
    with Conn(envoy.port) as c:
        hs = [("x-test-id", t)] + ([("content-type", ctype)] if ctype else []) + list(headers)
        return t, c.request("POST", path, hs, body=body)


def rewrites(envoy) -> dict[str, int]:
    got = envoy.stats(r"^wasmcustom\.graysplit_model_rewrites_total\.")
    return {r: got.get(f"wasmcustom.graysplit_model_rewrites_total.version.v2.result.{r}", 0)
            for r in ("rewritten", "skipped")}


# --------------------------------------------------------------------------- the prompt

def it_every_prompt_source_is_read(envoy, apps):
    # OpenAI chat: the last user message, a string or text parts.
    t = chat(envoy, [{"role": "system", "content": "You answer briefly."},
                     {"role": "user", "content": "Make a PPT about Envoy"}])
    assert served(apps, t)[0] == "ppt"
    t = chat(envoy, [{"role": "user", "content": [
        {"type": "text", "text": "Here is a picture"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "turn it into slides"}]}])
    assert served(apps, t)[0] == "ppt"
    # Anthropic Messages: text blocks of the last user message.
    t = tag()
    anthropic_client(envoy.port).messages.create(
        model="claude-x", max_tokens=64, system="be brief",
        messages=[{"role": "user", "content": [{"type": "text", "text": "请做一个"},
                                               {"type": "text", "text": "幻灯片"}]}],
        extra_headers={"x-test-id": t})
    assert served(apps, t)[0] == "ppt"
    # OpenAI Responses: a string input, and the last user item of a list.
    t = tag()
    openai_client(envoy.port).responses.create(model="gpt-x", input="Ticket TICKET-4711 is open",
                                               extra_headers={"x-test-id": t})
    assert served(apps, t)[0] == "re"
    t = tag()
    openai_client(envoy.port).responses.create(
        model="gpt-x", extra_headers={"x-test-id": t},
        input=[{"role": "user", "content": "make slides"},
               {"role": "assistant", "content": "done"},
               {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "now a summary of TICKET-123"}]}])
    assert served(apps, t)[0] == "re", "the last user item, not the earlier one"
    # Dify: `query`.
    t, r = post(envoy, "/v1/chat-messages", json.dumps(
        {"inputs": {}, "query": "做个幻灯片", "response_mode": "blocking", "user": "u1"}).encode())
    assert r.status == 200 and served(apps, t)[0] == "ppt"


def it_case_folds_unicode_and_only_the_last_user_message_counts(envoy, apps):
    cases = [
        ("please make a ppt", "ppt"),
        ("SLIDES please", "ppt"),
        ("un résumé pour l'ÉTÉ", "ppt"),          # needle "Été": accented Latin folds
        ("un résumé pour l'ete", "v1"),           # ... but accents are not dropped
        ("幻灯片", "ppt"),                          # CJK: no case, found as is
        ("幻灯", "v1"),
        ("slide", "v1"),
    ]
    for text, want in cases:
        t = chat(envoy, [{"role": "user", "content": text}])
        assert served(apps, t)[0] == want, text
    # PPT in the system prompt, an earlier user message and the assistant's answer: not the prompt.
    t = chat(envoy, [{"role": "system", "content": "You make PPT decks and slides."},
                     {"role": "user", "content": "Make me a PPT"},
                     {"role": "assistant", "content": "Here are your slides (幻灯片)."},
                     {"role": "user", "content": "Thanks, what time is it?"}])
    assert served(apps, t)[0] == "v1"
    # A last user message of a tool result only: the empty prompt, no match.
    t = tag()
    anthropic_client(envoy.port).messages.create(
        model="claude-x", max_tokens=64, extra_headers={"x-test-id": t},
        messages=[{"role": "user", "content": "make slides"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ppt", "input": {}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                "content": "PPT saved"}]}])
    assert served(apps, t)[0] == "v1"


def it_regex_and_length_matchers(envoy, apps):
    for text, want in [
        ("see TICKET-123", "re"),
        ("see TICKET-12", "v1"),             # {3,}
        ("see xTICKET-123", "v1"),           # \b
        ("see ticket-123", "v1"),            # a regex matches the prompt as sent
        ("a" * 499, "v1"),
        ("a" * 500, "long"),
        ("a" * 600, "long"),
        ("a" * 601, "v1"),
        ("文" * 550, "long"),                 # 550 characters, 1650 bytes
        ("文" * 450 + "a" * 50, "long"),
        ("é" * 601, "v1"),
    ]:
        t = chat(envoy, [{"role": "user", "content": text}])
        assert served(apps, t)[0] == want, text[:40]


def it_no_prompt_without_a_readable_json_body(envoy, apps):
    ppt = {"model": "m", "messages": [{"role": "user", "content": "make a PPT"}]}
    # The same prompt, readable: the pilot takes it.
    t, _ = post(envoy, "/v1/chat/completions", json.dumps(ppt).encode())
    assert served(apps, t)[0] == "ppt"
    # Not JSON by its content-type, by its bytes, or not UTF-8; and past body.max_bytes (4096).
    long = dict(ppt, metadata={"pad": "x" * 5000})
    for body, ctype, why in [
        (json.dumps(ppt).encode(), "text/plain", "content-type"),
        (b"make a PPT", "application/json", "not JSON"),
        (json.dumps(ppt).encode()[:-1], "application/json", "cut"),
        (json.dumps(ppt).encode().replace(b"make", b"\xffmake"), "application/json", "not UTF-8"),
        (json.dumps(long).encode(), "application/json", "past max_bytes"),
        (json.dumps({"messages": {"role": "user", "content": "PPT"}}).encode(), "application/json", "not a list"),
    ]:
        t, r = post(envoy, "/v1/chat/completions", body, ctype=ctype)
        assert served(apps, t)[0] == "v1", why
        assert served(apps, t)[1].raw == body, f"{why}: passed byte for byte"
    # No body at all.
    t = tag()
    with Conn(envoy.port) as c:
        r = c.get("/v1/models", [("x-test-id", t)])
    assert r.header("x-graysplit-version") == "v1"


# --------------------------------------------------------------------------- the model

# Bodies as clients write them and as no client does; `{M}` is the top-level model literal.
TEMPLATES = [
    '{"model":{M},"messages":[{"role":"user","content":"hi"}]}',
    '{\n  "messages" : [ {"role":"user", "content":"h\\u00e9llo \\"q\\" \\\\ \\/"} ] ,\n'
    '  "model"\t:\t{M} ,\n  "stream":false\n}\n',
    '{"metadata": {"model": "nested-stays"}, "tools": [{"model": "also"}], "model": {M},'
    ' "messages": [{"role": "user", "content": "model: \\"x\\""}]}',
    '  {"temperature": 0.5e0, "n": 1, "model": {M}, "user": "u-\\u4e2d"}  ',
]


@pytest.mark.parametrize("i", range(len(TEMPLATES)))
@pytest.mark.parametrize("model", ['"qwen3-72b"', '"q\\u0077en3-72b"', '"a\\"b\\\\c"'])
def it_only_the_top_level_model_changes_byte_for_byte(envoy, apps, i, model):
    sent = TEMPLATES[i].replace("{M}", model).encode()
    want = TEMPLATES[i].replace("{M}", json.dumps(CANARY)).encode()
    before = rewrites(envoy)
    t, r = post(envoy, "/v1/chat/completions", sent, [("x-canary", "1")])
    v, a = served(apps, t)
    assert (r.status, v) == (200, "v2")
    assert a.raw == want
    assert a.headers["content-length"] == str(len(want))
    after = rewrites(envoy)
    assert (after["rewritten"] - before["rewritten"], after["skipped"] - before["skipped"]) == (1, 0)


def chunked_post(port: int, path: str, headers, pieces: list[bytes]) -> bytes:
    """A POST with a chunked body sent piece by piece; returns the raw response head."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nhost: graysplit.test\r\ntransfer-encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    s.sendall(head.encode())
    for p in pieces:
        s.sendall(b"%x\r\n%s\r\n" % (len(p), p))
    s.sendall(b"0\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    s.close()
    return got


def it_a_chunked_body_is_rewritten_whole(envoy, apps):
    sent = json.dumps({"messages": [{"role": "user", "content": "x" * 900}], "model": "qwen3-72b",
                       "stream": False}).encode()
    want = sent.replace(b'"qwen3-72b"', json.dumps(CANARY).encode())
    t = tag()
    pieces = [sent[i:i + 97] for i in range(0, len(sent), 97)]
    head = chunked_post(envoy.port, "/v1/chat/completions",
                        [("x-test-id", t), ("content-type", "application/json"), ("x-canary", "1")], pieces)
    assert head.startswith(b"HTTP/1.1 200"), head
    v, a = served(apps, t)
    assert v == "v2" and a.raw == want


def it_skipped_bodies_pass_unchanged_and_are_counted(envoy, apps):
    before = rewrites(envoy)
    cases = [
        (b'{"messages": [], "metadata": {"model": "nested"}}', "application/json", "no top-level model"),
        (b'{"model": 7, "messages": []}', "application/json", "not a string"),
        (b'{"model": "a", "model": null}', "application/json", "the last model is not a string"),
        (b'{"model": "qwen3-72b",', "application/json", "not JSON"),
        (b'{"model": "qwen3-72b"}', "text/plain", "not a JSON content-type"),
        (json.dumps({"model": "qwen3-72b", "pad": "x" * 5000}).encode(), "application/json", "past max_bytes"),
    ]
    for body, ctype, why in cases:
        t, r = post(envoy, "/v1/chat/completions", body, [("x-canary", "1")], ctype=ctype)
        v, a = served(apps, t)
        assert v == "v2" and a.raw == body, why
    t = tag()
    with Conn(envoy.port) as c:
        assert c.get("/v1/models", [("x-test-id", t), ("x-canary", "1")]).header("x-graysplit-version") == "v2"
    after = rewrites(envoy)
    assert after["rewritten"] - before["rewritten"] == 0
    assert after["skipped"] - before["skipped"] == len(cases) + 1


def it_real_clients_ask_the_canary_and_see_its_answer(envoy, apps):
    for stream in (False, True):
        t = tag()
        out = openai_client(envoy.port, headers={"x-canary": "1"}).chat.completions.create(
            model="qwen3-72b", stream=stream, messages=[{"role": "user", "content": "hello"}],
            extra_headers={"x-test-id": t})
        if stream:
            chunks = list(out)
            got_model = chunks[0].model
        else:
            got_model = out.model
        v, a = served(apps, t)
        assert (v, a.request["model"]) == ("v2", CANARY)
        assert got_model == CANARY, "the answer's model is the upstream's, untouched"
        t = tag()
        anthropic_client(envoy.port, headers={"x-canary": "1"}).messages.create(
            model="claude-x", max_tokens=32, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-test-id": t})
        assert served(apps, t)[1].request["model"] == CANARY


def it_a_body_identity_and_its_pin_come_from_the_body_that_is_rewritten(envoy, apps):
    for user, want_v, want_model in [(GRAY_USER, "v2", CANARY), (STABLE_USER, "v1", "qwen3-72b")]:
        sent = json.dumps({"user": user, "model": "qwen3-72b",
                           "messages": [{"role": "user", "content": "hello"}]}).encode()
        t, r = post(envoy, "/ramp/v1/chat/completions", sent)
        v, a = served(apps, t)
        assert (v, a.request["model"], a.request["user"]) == (want_v, want_model, user)
        assert a.raw == sent.replace(b'"qwen3-72b"', json.dumps(want_model).encode())
        pins = [c for c in r.all("set-cookie") if c.startswith("gs_pin.ramp=")]
        assert len(pins) == 1 and f":{want_v}:" in pins[0], r.all("set-cookie")


def it_prometheus_labels_the_rewrites(envoy):
    text = envoy.prometheus()
    assert 'graysplit_model_rewrites_total{version="v2",result="rewritten"}' in text.replace(
        'result="rewritten",version="v2"', 'version="v2",result="rewritten"'), text[-3000:]


# --------------------------------------------------------------------------- refused

BASE = {"stable": "v1", "rules": []}


@pytest.mark.parametrize("case", [
    ("backreference", {"regex": r"(a)\1"}, r"rules\[0\]\.when\.prompt\[0\]\.regex", "backreferences are not supported"),
    ("invalid", {"regex": "(unclosed"}, r"rules\[0\]\.when\.prompt\[0\]\.regex", ""),
    ("over-size", {"regex": "(?:a{1000}|b{1000}){100}"}, r"rules\[0\]\.when\.prompt\[0\]\.regex", "64 KiB"),
    ("two-in-one", {"min_chars": 1, "max_chars": 9}, r"rules\[0\]\.when\.prompt\[0\]", "exactly one of"),
    ("empty-list", {"contains_any": []}, r"rules\[0\]\.when\.prompt\[0\]\.contains_any", "must not be empty"),
    ("empty-needle", {"contains_any": ["ok", ""]}, r"rules\[0\]\.when\.prompt\[0\]\.contains_any\[1\]", "empty"),
    ("too-many-chars", {"max_chars": 10**7}, r"rules\[0\]\.when\.prompt\[0\]\.max_chars", "at most"),
    ("unknown", {"semantic": "ppt"}, r"rules\[0\]\.when\.prompt\[0\](\.semantic)?", "unknown field"),
], ids=lambda c: c[0])
def it_bad_prompt_matchers_are_refused_at_their_path(tmp_path, case):
    _, matcher, path, word = case
    cfg = dict(BASE, rules=[{"name": "p", "when": {"prompt": [matcher]}, "version": "v2"}])
    refused_at(tmp_path, cfg, path, word)


@pytest.mark.parametrize("case", [
    ("empty-prompt", {"rules": [{"name": "p", "when": {"prompt": []}, "version": "v2"}]},
     r"rules\[0\]\.when\.prompt", "must not be empty"),
    ("bad-version", {"versions": {"v/2": {"model": "m"}}}, r'versions\["v/2"\]', "version name"),
    ("empty-model", {"versions": {"v2": {"model": ""}}}, r"versions\.v2\.model", "model name"),
    ("model-type", {"versions": {"v2": {"model": 5}}}, r"versions\.v2\.model", "expected a string"),
    ("unknown", {"versions": {"v2": {"model": "m", "weight": 5}}}, r"versions\.v2(\.weight)?", "unknown field"),
], ids=lambda c: c[0])
def it_bad_versions_are_refused_at_their_path(tmp_path, case):
    _, top, path, word = case
    refused_at(tmp_path, dict(BASE, **top), path, word)


# --------------------------------------------------------------------------- the CLI

def it_explain_and_simulate_read_the_body_s_prompt_and_model(tmp_path):
    from harness import bucket, cli
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(CONFIG))
    ask = lambda text, user: json.dumps({"user": user, "model": "qwen3-72b",  # noqa: E731
                                         "messages": [{"role": "system", "content": "PPT"},
                                                      {"role": "user", "content": text}]})
    body = tmp_path / "b.json"
    body.write_text(ask("请做一个幻灯片", "u-1"))
    out = cli("explain", str(cfg), "--body", str(body)).stdout
    assert "version: ppt" in out and "rule:    ppt-pilot" in out, out
    assert 'prompt:  "请做一个幻灯片" (7 characters)' in out, out
    assert "model:   as the client sent it (ppt has no model in versions)" in out, out
    body.write_text(ask("what time is it?", GRAY_USER))
    out = cli("explain", str(cfg), "--body", str(body), "--path", "/ramp/v1/chat/completions").stdout
    assert "version: v2" in out and f"bucket:  {bucket(SALT, GRAY_USER)} of 10000" in out, out
    assert "not true that the prompt contains one of" in out, out
    assert f'model:   the upstream is asked for "{CANARY}" (the body said "qwen3-72b"' in out, out
    # Past body.max_bytes: no body, as in the filter.
    body.write_text(json.dumps({"model": "qwen3-72b", "pad": "x" * 5000,
                                "messages": [{"role": "user", "content": "make a PPT"}]}))
    p = cli("explain", str(cfg), "--body", str(body), "--header", "x-canary: 1")
    assert "version: v2" in p.stdout and "longer than body.max_bytes" in p.stderr, p
    assert "prompt:  none: no JSON body within body.max_bytes" in p.stdout, p.stdout
    assert "the body passes unchanged (longer than body.max_bytes; counted skipped)" in p.stdout, p.stdout
    body.write_text(ask("hello", "ignored"))
    out = cli("simulate", str(cfg), "--users", "2000", "--body", str(body), "--path", "/ramp/x").stdout
    got = {v: int(n) for v, n in re.findall(r"^ramp\s+(\S+)\s+(\d+)", out, re.M)}
    want = {"v1": 0, "v2": 0}
    for i in range(2000):
        want["v2" if bucket(SALT, f"sim-user-{i}") < 5000 else "v1"] += 1
    assert got == want, out
    assert f'v2: model "{CANARY}" (the body\'s model rewritten)' in out, out


def it_the_readme_configs_of_these_sections_are_valid():
    from harness import REPO, cli
    text = (REPO / "README.md").read_text()
    part = text[text.index("## Pilots by what is asked"):text.index("## The hashing contract")]
    blocks = re.findall(r"```json\n(.*?)```", part, re.S)
    assert len(blocks) == 2
    for b in blocks:
        p = cli("check", "-", stdin=b)
        assert p.returncode == 0 and ": ok:" in p.stdout, p.stdout + p.stderr
