"""`graysplit compare` (DESIGN.md "Shadow"): records written here as the OpenTelemetry
Collector's file exporter writes them (one ExportLogsServiceRequest per line, pdata's JSON:
intValue as strings, observedTimeUnixNano, empty body and ids) and as POSTed bodies, and the
CLI's figures checked against the same figures computed here from DESIGN's definitions:
nearest-rank percentiles, and the bootstrap with its own SplitMix64 (compare's help says how
it draws)."""

from __future__ import annotations

import json
import math
import random

from harness import cli

MASK = (1 << 64) - 1


def splitmix64(seed: int):
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def nearest_rank(values, p: float):
    """Of n values, the one at rank ceil(p/100 * n) (at least 1); None for none."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, -(-round(p * 10) * len(s) // 1000))
    return s[rank - 1]


# --------------------------------------------------------------------------- the records

def attr(key: str, value) -> dict:
    if isinstance(value, bool):
        raise TypeError(key)
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def make_records(rng: random.Random, rule: str, n: int) -> list[dict]:
    """n records of `rule` as plain dicts: the attributes present, by DESIGN's names."""
    out = []
    for i in range(n):
        result = rng.choices(["paired", "shadow_failed", "timed_out"], [8, 1, 1])[0]
        r = {
            "graysplit.rule": rule,
            "graysplit.result": result,
            "graysplit.user_hash": f"{rng.getrandbits(64):016x}",
            "primary.version": "v2.0",
            "shadow.version": "v2.1",
            "primary.status": rng.choice([200, 200, 200, 500]),
            "primary.total_ms": rng.randint(50, 5000),
            "shadow.total_ms": rng.randint(50, 5000) if result != "timed_out" else 60000,
            "primary.finish": rng.choice(["stop", "stop", "length"]),
            "primary.answer_chars": rng.randint(0, 2000),
            "shadow.answer_chars": rng.randint(0, 2000),
            "primary.answer_sha256": "0" * 64,
            "shadow.answer_sha256": "0" * 64,
        }
        if i % 3:
            r["graysplit.request_id"] = f"req-{rule}-{i}"
        if rng.random() < 0.9:
            r["primary.tokens.input"] = rng.randint(1, 500)
            r["primary.tokens.output"] = rng.randint(0, 800)
        if result == "paired":
            r["shadow.status"] = rng.choice([200, 200, 200, 503])
            r["shadow.finish"] = rng.choice(["stop", "stop", "length", "tool_calls"])
            r["graysplit.similarity"] = rng.random()
            if rng.random() < 0.85:
                r["shadow.tokens.output"] = rng.randint(0, 1200)
        else:
            r["shadow.finish"] = "aborted"
            if result == "timed_out" and rng.random() < 0.5:
                r["shadow.status"] = 504
        out.append(r)
    return out


def log_record(r: dict, t: int) -> dict:
    """As pdata's JSON marshaler writes a LogRecord."""
    return {"timeUnixNano": str(t), "observedTimeUnixNano": str(t + 1000), "body": {},
            "attributes": [attr(k, v) for k, v in r.items()], "traceId": "", "spanId": ""}


def request(records: list[dict], t0: int, others: int = 0) -> dict:
    logs = [log_record(r, t0 + i) for i, r in enumerate(records)]
    # Other logs the collector receives: no graysplit.rule, ignored by compare.
    logs += [{"timeUnixNano": str(t0), "body": {"stringValue": "GET /healthz"},
              "attributes": [attr("http.status_code", 200)]} for _ in range(others)]
    return {"resourceLogs": [{
        "resource": {"attributes": [attr("service.name", "graysplit")]},
        "scopeLogs": [{"scope": {"name": "graysplit"}, "logRecords": logs}],
    }]}


def write_exporter_file(path, records: list[dict], per_line: int = 7) -> None:
    with open(path, "w") as f:
        for i in range(0, len(records), per_line):
            f.write(json.dumps(request(records[i:i + per_line], 1_700_000_000_000_000_000 + i,
                                       others=i % 2), separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------- the figures

def figures(records: list[dict], seed: int) -> dict:
    results = {k: sum(r["graysplit.result"] == k for r in records)
               for k in ("paired", "shadow_failed", "timed_out")}
    both = [r for r in records if "primary.status" in r and "shadow.status" in r]
    paired = [r for r in records if r["graysplit.result"] == "paired"]
    tokens = [(r["primary.tokens.output"], r["shadow.tokens.output"]) for r in paired
              if "primary.tokens.output" in r and "shadow.tokens.output" in r]
    sims = [r["graysplit.similarity"] for r in records if "graysplit.similarity" in r]
    out = {"primary": None, "shadow": None, "ratio": None, "ratio_ci95": None}
    if tokens:
        n = len(tokens)
        sp, ss = sum(p for p, _ in tokens), sum(s for _, s in tokens)
        out["primary"], out["shadow"] = sp / n, ss / n
        if sp > 0:
            out["ratio"] = ss / sp
            draw = splitmix64(seed)
            ratios = []
            for _ in range(1000):
                picks = [tokens[next(draw) % n] for _ in range(n)]
                p = sum(x for x, _ in picks)
                if p > 0:
                    ratios.append(sum(y for _, y in picks) / p)
            out["ratio_ci95"] = [nearest_rank(ratios, 2.5), nearest_rank(ratios, 97.5)]

    def side(key):
        ms = [r[key] for r in paired if key in r]
        return {"p50": nearest_rank(ms, 50), "p95": nearest_rank(ms, 95)}

    return {
        "pairs": len(records),
        "results": results,
        "status_agreement": (sum(r["primary.status"] == r["shadow.status"] for r in both) / len(both)
                             if both else None),
        "total_ms": {"primary": side("primary.total_ms"), "shadow": side("shadow.total_ms")},
        "output_tokens": out,
        "similarity": {f"p{p}": nearest_rank(sims, p) for p in (10, 50, 90)},
        "finish_mismatches": sum(r.get("primary.finish") != r.get("shadow.finish") for r in paired
                                 if "primary.finish" in r and "shadow.finish" in r),
    }


def assert_close(got, want, where="$"):
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: {got} vs {want}"
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} vs {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-12), \
            f"{where}: {got} vs {want}"
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


def recorded(tmp_path):
    """Two files: the file exporter's lines, and a saved POST body (pretty-printed) for the
    same rule, which compare merges after the first file's records."""
    rng = random.Random(18)
    ramp, pilot = make_records(rng, "ramp", 90), make_records(rng, "ppt-pilot", 30)
    more_ramp = make_records(rng, "ramp", 12)
    # A rule whose shadows all failed: its paired figures have no data.
    failed = [dict(r, **{"graysplit.result": "shadow_failed"}) for r in make_records(rng, "down", 3)]
    for r in failed:
        r.pop("shadow.status", None)
        r.pop("graysplit.similarity", None)
        r.pop("shadow.tokens.output", None)
    lines = tmp_path / "collector.jsonl"
    mixed = ramp[:40] + pilot + ramp[40:] + failed
    write_exporter_file(lines, mixed)
    posted = tmp_path / "posted.json"
    posted.write_text(json.dumps(request(more_ramp, 1_700_000_100_000_000_000, others=2), indent=2))
    return [lines, posted], {"ramp": ramp + more_ramp, "ppt-pilot": pilot, "down": failed}


# --------------------------------------------------------------------------- tests

def it_compare_json_gives_the_figures_computed_from_the_records(tmp_path):
    files, by_rule = recorded(tmp_path)
    r = cli("compare", "--json", *files)
    assert r.returncode == 0, r
    got = json.loads(r.stdout)
    want = {"rules": {rule: figures(records, 0) for rule, records in by_rule.items()}}
    assert_close(got, want)
    down = got["rules"]["down"]
    assert down["total_ms"]["primary"]["p50"] is None and down["output_tokens"]["ratio_ci95"] is None
    assert down["status_agreement"] is None, "no record with both statuses"


def it_compare_seed_makes_the_interval_reproducible(tmp_path):
    files, by_rule = recorded(tmp_path)
    runs = [json.loads(cli("compare", "--json", "--seed", seed, *files).stdout)
            for seed in ("5", "5", "6")]
    ci = [run["rules"]["ramp"]["output_tokens"]["ratio_ci95"] for run in runs]
    assert ci[0] == ci[1], "the same seed, the same interval"
    assert ci[0] != ci[2], "another seed, other resamples"
    assert_close(ci[0], figures(by_rule["ramp"], 5)["output_tokens"]["ratio_ci95"])
    assert_close(ci[2], figures(by_rule["ramp"], 6)["output_tokens"]["ratio_ci95"])


def it_compare_prints_a_table_per_rule(tmp_path):
    files, by_rule = recorded(tmp_path)
    r = cli("compare", *files)
    assert r.returncode == 0, r
    out = r.stdout
    print(out)
    for rule, records in by_rule.items():
        f = figures(records, 0)
        res = f["results"]
        assert (f"rule {rule}: {f['pairs']} pairs ({res['paired']} paired, "
                f"{res['shadow_failed']} shadow_failed, {res['timed_out']} timed_out)") in out, out
    ramp = out.split("rule ramp:")[1]
    f = figures(by_rule["ramp"], 0)
    ms = f["total_ms"]
    assert f"{ms['primary']['p50']:>10} {ms['shadow']['p50']:>10}" in ramp.splitlines()[2], ramp
    t = f["output_tokens"]
    lo, hi = t["ratio_ci95"]
    assert f"{t['ratio']:.3f}   95% CI {lo:.3f} .. {hi:.3f}" in ramp, ramp
    s = f["similarity"]
    assert f"{s['p10']:.3f} / {s['p50']:.3f} / {s['p90']:.3f}" in ramp, ramp
    assert f"{100 * f['status_agreement']:.1f}%" in ramp, ramp
    assert out.index("rule down:") < out.index("rule ppt-pilot:") < out.index("rule ramp:"), "by name"


def it_compare_reads_stdin_and_says_when_there_are_no_records(tmp_path):
    files, by_rule = recorded(tmp_path)
    r = cli("compare", "--json", "-", stdin=files[0].read_text())
    assert r.returncode == 0, r
    assert json.loads(r.stdout)["rules"]["ppt-pilot"]["pairs"] == len(by_rule["ppt-pilot"])
    other = json.dumps(request([], 1, others=3))
    r = cli("compare", "-", stdin=other + "\n")
    assert r.returncode == 0 and "no shadow records" in r.stdout, r
    assert json.loads(cli("compare", "--json", "-", stdin=other).stdout) == {"rules": {}}


def it_compare_names_the_file_and_line_of_a_bad_line(tmp_path):
    good = json.dumps(request(make_records(random.Random(1), "r", 2), 1))
    cases = [
        (f"{good}\n{good}\nnot json\n", ":3: not JSON: "),
        (f"{good}\n\n{good[:-40]}\n", ":3: not JSON: EOF while parsing"),
        (f'{good}\n{{"resourceSpans": []}}\n', ":2: not an OTLP logs request: an OTLP traces export"),
        (f"{good}\n[1, 2]\n", ":2: not an OTLP logs request: not a JSON object"),
        ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": ['
         '{"key": "graysplit.rule", "value": {"stringValue": "r"}}, '
         '{"key": "graysplit.result", "value": {"stringValue": "paired"}}, '
         '{"key": "primary.status", "value": {"doubleValue": 200.5}}]}]}]}]}\n',
         ":1: resourceLogs[0].scopeLogs[0].logRecords[0]: attribute primary.status: "
         "an intValue expected, got a doubleValue"),
    ]
    for i, (text, want) in enumerate(cases):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(text)
        r = cli("compare", path)
        assert r.returncode == 1, (text, r)
        assert r.stderr.startswith(f"{path}{want}"), (want, r.stderr)
        assert r.stdout == "", "no figures from a bad file"


def it_compare_refuses_usage_errors_and_missing_files(tmp_path):
    r = cli("compare")
    assert r.returncode == 2 and "usage: graysplit compare" in r.stderr, r
    r = cli("compare", "--seed", "x", tmp_path)
    assert r.returncode == 2 and "--seed" in r.stderr, r
    r = cli("compare", "--jsn", tmp_path)
    assert r.returncode == 2 and "unknown option --jsn" in r.stderr, r
    missing = tmp_path / "missing.jsonl"
    r = cli("compare", missing)
    assert r.returncode == 1 and r.stderr.startswith(f"{missing}: "), r
    assert "compare [--json] [--seed N] FILE..." in cli("--help").stdout
