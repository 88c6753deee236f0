#!/usr/bin/env python3
"""`make shadow-demo`: the same question to the gray version, answers paired (DESIGN.md "Shadow"),
against a real Envoy, in well under a minute.

It starts, all on 127.0.0.1 (free ports; Envoy always stopped at the end, and killed by the
kernel should this script die, PR_SET_PDEATHSIG):
  - two OpenAI-compatible chat completions apps (tests/llm_upstream.py), stable v1 and gray v2,
    whose answers to the same question differ a little (v2 rewords some sentences, adds one
    now and then, is a bit slower, and runs out of tokens on a few questions);
  - an OTLP/HTTP logs receiver (tests/otlp_receiver.py) standing in for the OpenTelemetry
    Collector: it writes what it accepts into .run/shadow-records.jsonl the way the
    Collector's file exporter does (one ExportLogsServiceRequest a line, OTLP/JSON);
  - an Envoy with graysplit (tests/harness.py's bootstrap, 2 workers) whose rule sends 10% of
    users to v2 and, of the others, shadows 50% to v2, records to `shadow_sink` (cluster
    otel-collector, the receiver).
Then 50 users ask 200 questions with the real `openai` client (half of them streamed), it
checks that every user got their own version's answer, waits for the records, prints the
cohort counts from Envoy's stats (graysplit_shadow_total), runs `graysplit compare` on the
records file and prints what it says. Exits non-zero when no record arrived, or graysplit does
not behave as DESIGN.md says.

    .venv/bin/python scripts/shadow_demo.py       (`make shadow-demo` builds the wasm and CLI first)
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
import run  # noqa: E402  (scripts/run.py: bucketing, the wasm's path)
import harness  # noqa: E402  (tests/harness.py: the bootstrap, the Envoy process)
from llm_upstream import LLMApp, openai_client  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

CLI = ROOT / "target" / "release" / "graysplit"
RECORDS = ROOT / ".run" / "shadow-records.jsonl"
WORKERS = 2
USERS = [f"user-{i:02d}@example.com" for i in range(50)]
QUESTIONS_PER_USER = 4
AT_ONCE = 8            # questions in flight at once
SPLIT_PERCENT = 10     # of users on v2 (their answers are not shadowed: they are v2's already)
SHADOW_PERCENT = 50    # of the others, also asked on v2
SALT = "release-2"
SHADOW_RESULTS = ("sent", "paired", "shadow_failed", "timed_out", "skipped_busy", "skipped_size",
                  "sink_failed")

failures: list[str] = []


def check(ok: bool, what: str) -> str:
    if not ok:
        failures.append(what)
    return "ok" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------
# The questions, and what each version answers.

TASKS = ["roll back a release", "ramp a version to 50%", "pin a user to a version",
         "read the split counters", "add a pilot rule", "shadow the gray version",
         "check a config before pushing it", "stop a schedule"]
PLACES = ["Envoy", "Istio", "docker compose", "Kubernetes", "the CLI"]

# Each answer is these sentences; v2 says some of them its own way (the second form).
SENTENCES = [
    ("To {task} with {place}, open the plugin config and change one field.",
     "To {task} with {place}, edit the plugin config and change a single field."),
    ("Push it: {place} applies it live, without a restart.",
     "Push it and {place} applies it live, with no restart at all."),
    ("Watch the counters per version for a minute.",
     "Keep an eye on the per-version counters for a few minutes."),
    ("If anything looks off, push the previous config again.",
     "If something looks wrong, push the previous config back."),
    ("Every user keeps their version while you do it.",
     "Users stay on the version they had while this happens."),
]
EXTRA = "Keep the old file next to the new one, so going back is one command."


def questions() -> list[str]:
    return [f"How do I {t} in {p}?" for t in TASKS for p in PLACES]


def answers(n: int, question: str) -> tuple[dict, dict]:
    """The script fields (tests/llm_upstream.py `Script`) of v1's and v2's answer to question n."""
    rng = random.Random(n)
    task, place = question[len("How do I "):-1].rsplit(" in ", 1)
    v1 = [a for a, _ in SENTENCES]
    v2 = [b if rng.random() < 0.45 else a for a, b in SENTENCES]
    if rng.random() < 0.5:
        v2.append(EXTRA)
    text1, text2 = (" ".join(s).format(task=task, place=place) for s in (v1, v2))
    length = n % 11 == 3            # v2 runs out of tokens on a few questions
    if length:
        text2 = text2[:len(text2) * 2 // 3]

    def tokens(text: str) -> int:
        return round(len(text.split()) * 1.3)
    base = {"input_tokens": 18 + len(question.split()), "model": "gpt-4o-mini"}
    return ({**base, "text": text1, "output_tokens": tokens(text1), "events": 8,
             "first_token_delay_s": 0.015, "delay_s": 0.002},
            {**base, "text": text2, "output_tokens": tokens(text2), "events": 8,
             "first_token_delay_s": 0.025, "delay_s": 0.004,
             "ending": "length" if length else "stop"})


# ---------------------------------------------------------------------------------------------

def plugin_config() -> dict:
    return harness.plugin_config([{
        "name": "ramp", "salt": SALT,
        "split": [{"version": "v2", "percent": SPLIT_PERCENT}],
        "shadow": {"version": "v2", "percent": SHADOW_PERCENT, "cluster": "CLUSTER-OF-V2",
                   "max_in_flight": 64},
    }], identity={"from": [{"header": "x-user-id"}]},
        shadow_sink={"cluster": "otel-collector", "authority": "otel-collector:4318"})


def envoy_doc(config: dict, apps: dict[str, LLMApp], receiver: OtlpReceiver,
              access_log: Path) -> tuple[dict, dict]:
    """The bootstrap (tests/harness.py: a route and a cluster per version, to the apps), plus
    the cluster otel-collector of the receiver; the config's shadow cluster is v2's."""
    doc = harness.bootstrap(config, access_log=access_log,
                            upstreams={v: a.port for v, a in apps.items()})
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
    config["rules"][0]["shadow"]["cluster"] = next(
        r["route"]["cluster"] for r in routes if "route" in r and any(
            h.get("string_match", {}).get("exact") == "v2" for h in r["match"].get("headers", [])))
    gray = next(f for f in hcm["http_filters"] if f["name"] == harness.FILTER_NAME)
    gray["typed_config"]["config"]["configuration"]["value"] = harness.plugin_json(config)
    doc["static_resources"]["clusters"].append({
        "name": "otel-collector", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "otel-collector", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": receiver.port}}}}]}]}})
    return doc, config


def shadow_counts(envoy: harness.Envoy) -> dict[str, int]:
    got = envoy.stats(r"^wasmcustom\.graysplit_shadow_total\.")
    prefix = "wasmcustom.graysplit_shadow_total.rule.ramp.result."
    return {r: got.get(prefix + r, 0) for r in SHADOW_RESULTS}


def ask_all(port: int, qs: list[str]) -> list[tuple[str, int, str, str, bool]]:
    """Every user asks QUESTIONS_PER_USER questions, AT_ONCE at a time: (user, question, served
    by, answer text, streamed) of each."""
    client = openai_client(port)
    jobs = [(u, (i * 7 + k * 3) % len(qs), (i + k) % 2 == 0)
            for k in range(QUESTIONS_PER_USER) for i, u in enumerate(USERS)]

    def one(job):
        user, q, stream = job
        kw = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": qs[q]}],
                  extra_headers={"x-user-id": user, "x-script": f"q{q}"})
        if stream:
            raw = client.chat.completions.with_raw_response.create(
                stream=True, stream_options={"include_usage": True}, **kw)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(**kw)
            text = raw.parse().choices[0].message.content
        return user, q, raw.headers.get("x-app-version", "?"), text, stream

    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(one, jobs))


def main() -> int:
    t0 = time.monotonic()
    run.require_wasm()
    if not CLI.exists():
        raise SystemExit(f"{CLI} is missing: run `make cli` (or `make shadow-demo`)")
    RECORDS.parent.mkdir(parents=True, exist_ok=True)
    RECORDS.write_text("")   # the Collector's file exporter truncates its file at start, too
    tmp = Path(tempfile.mkdtemp(prefix="graysplit-shadow-demo-"))
    qs = questions()
    apps = {v: LLMApp(v) for v in ("v1", "v2")}
    for n, q in enumerate(qs):
        a1, a2 = answers(n, q)
        apps["v1"].script(f"q{n}", **a1)
        apps["v2"].script(f"q{n}", **a2)
    receiver = OtlpReceiver(export_file=RECORDS)
    envoy = None
    ok = False
    try:
        doc, config = envoy_doc(plugin_config(), apps, receiver, tmp / "access.log")
        doc["stats_flush_interval"] = "0.25s"
        envoy = harness.Envoy(tmp / "envoy", doc, concurrency=WORKERS).launch()
        rule = config["rules"][0]
        shadow = rule["shadow"]
        shadow_salt = f"{SALT}:shadow"
        print(f"graysplit shadow demo: Envoy 1.40 with {WORKERS} workers on 127.0.0.1:{envoy.port}, "
              f"filter {run.WASM.name} ({run.WASM.stat().st_size} bytes)")
        print(f"   v1 (stable), v2 (gray): OpenAI chat completions apps on 127.0.0.1:{apps['v1'].port}, "
              f":{apps['v2'].port}")
        print(f"   OTLP/HTTP receiver on 127.0.0.1:{receiver.port} (Envoy cluster otel-collector), writing "
              f"{RECORDS.relative_to(ROOT)} as the Collector's file exporter does")
        print(f"config: rule '{rule['name']}' (salt '{SALT}') sends {SPLIT_PERCENT}% of users to v2; of the "
              f"others, {SHADOW_PERCENT}% (bucket of '{shadow_salt}:' + id) are also asked on v2 "
              f"(cluster {shadow['cluster']}); records to shadow_sink cluster otel-collector\n")

        # 1. The questions.
        started = time.monotonic()
        got = ask_all(envoy.port, qs)
        took = time.monotonic() - started
        streamed = sum(1 for *_, s in got if s)
        print(f"1) {len(USERS)} users ask {len(got)} questions with the openai client ({streamed} streamed, "
              f"{AT_ONCE} at a time): {took:.1f} s")
        want = {u: run.split_version(rule, "v1", u)[1] for u in USERS}
        cohort = {u for u in USERS if want[u] == "v1" and run.bucket(shadow_salt, u) < SHADOW_PERCENT * 100}
        by_version = {v: sum(1 for _, _, s, _, _ in got if s == v) for v in ("v1", "v2")}
        wrong = [(u, s) for u, _, s, _, _ in got if s != want[u]]
        print(f"   answered by v1 {by_version['v1']}, v2 {by_version['v2']}; every user on the version the "
              f"bucketing contract gives them: {check(not wrong, f'{len(wrong)} answers from another version, e.g. {wrong[:2]}')}")
        texts = {v: {n: answers(n, q)[i]["text"] for n, q in enumerate(qs)} for i, v in enumerate(("v1", "v2"))}
        not_own = [(u, q) for u, q, s, text, _ in got if s in texts and text != texts[s][q]]
        print(f"   each user got only their version's answer (a shadow's never reaches them): "
              f"{check(not not_own, f'{len(not_own)} answers not the primary version own, e.g. {not_own[:2]}')}")
        in_cohort = sum(1 for u, *_ in got if u in cohort)
        print(f"   the shadow cohort by the contract (on v1, bucket < {SHADOW_PERCENT * 100}): "
              f"{len(cohort)} users, {in_cohort} questions")

        # 2. The records: each shadow ends (paired, failed or timed out), then its record leaves
        #    with the next batch (within about a second) and the receiver writes it to the file.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            c = shadow_counts(envoy)
            ended = c["paired"] + c["shadow_failed"] + c["timed_out"]
            if c["sent"] >= in_cohort and ended >= c["sent"]:
                break
            time.sleep(0.05)
        try:
            receiver.wait_for(ended - shadow_counts(envoy)["sink_failed"],
                              max(1.0, deadline - time.monotonic()), accepted=True)
        except AssertionError:
            pass   # said below
        c = shadow_counts(envoy)
        records = receiver.accepted_records
        print(f"\n2) cohort counts, graysplit_shadow_total (curl {envoy.admin}/stats?filter=graysplit_shadow_total):")
        print("   " + ", ".join(f"{r} {c[r]}" for r in SHADOW_RESULTS))
        sent, paired = c["sent"], c["paired"]
        print(f"   sent = the cohort's questions: {check(sent == in_cohort, f'sent {sent}, the cohort asked {in_cohort}')}; "
              f"all paired: {check(paired == sent, f'{paired} of {sent} shadows paired')}")
        posts = sum(1 for q in receiver.requests if q.accepted)
        print(f"   {len(records)} records arrived in {posts} OTLP/HTTP POSTs to the receiver "
              f"({RECORDS.stat().st_size:,} bytes in {RECORDS.relative_to(ROOT)})  "
              f"{check(len(records) > 0, 'no records arrived')}"
              + (f", one per pair: {check(len(records) == paired, f'{len(records)} records for {paired} pairs')}"
                 if records else ""))
        if records:
            r = next((r for r in records if r.get("graysplit.similarity", 1.0) < 1.0), records[0])
            shown = ["graysplit.result", "primary.version", "shadow.version", "primary.status",
                     "shadow.status", "primary.total_ms", "shadow.total_ms", "primary.tokens.output",
                     "shadow.tokens.output", "primary.finish", "shadow.finish", "graysplit.similarity"]
            print("   one of them: " + ", ".join(
                f"{k}={r.get(k):.3f}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}"
                for k in shown if k in r))

        # 3. graysplit compare.
        cmd = [str(CLI), "compare", str(RECORDS)]
        print(f"\n3) $ {CLI.relative_to(ROOT)} compare {RECORDS.relative_to(ROOT)}")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        for line in (out.stdout + out.stderr).rstrip("\n").splitlines():
            print(f"   {line}")
        check(out.returncode == 0, f"graysplit compare exited with {out.returncode}")
        print(f"\nrecords: {RECORDS}")
        ok = not failures
    except Exception as e:  # Envoy's log (printed below) says why
        failures.append(f"demo failed: {e!r}")
    finally:
        if envoy is not None:
            if not ok:
                print(f"\n--- Envoy log ---\n{envoy.log()[-6000:]}", file=sys.stderr)
            envoy.stop()
        receiver.close()
        for a in apps.values():
            a.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'OK' if ok else 'FAILED: ' + '; '.join(failures)}  ({time.monotonic() - t0:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
