"""The fleet view (DESIGN.md "Observability"): prometheus/'s rules, checked and unit-tested by
promtool, and loaded into a real Prometheus (Debian's `prometheus` package, `make prometheus`)
that scrapes two Envoys running the filter, one of whose guards trips.

The Prometheus server is the test's child: its own config and storage in the test's tmp dir, a
free port on 127.0.0.1, scrape and rule evaluation every second, killed at the end and, should
pytest itself die, by the kernel (PR_SET_PDEATHSIG, as the harness does for Envoy). The test
reads what Prometheus says through its HTTP API (/api/v1/targets, /api/v1/alerts,
/api/v1/query), as Grafana or Alertmanager would.
"""

from __future__ import annotations

import http.server
import json
import math
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

import harness
import run
from harness import REPO, plugin_config, wait_until
from upstream import App, Apps

PROMETHEUS_DIR = REPO / "prometheus"
RULE_FILES = sorted(PROMETHEUS_DIR.glob("*-rules.yml"))
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
JOB = "graysplit"


def binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"no {name} here: `make prometheus` installs Debian's prometheus package "
                    f"(as root)")
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


# --------------------------------------------------------------------------- promtool

def it_promtool_accepts_the_recording_and_alerting_rules():
    assert {p.name for p in RULE_FILES} == {"recording-rules.yml", "alerting-rules.yml"}
    out = promtool("check", "rules", *map(str, RULE_FILES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULE_FILES), out.stdout


def it_the_rules_pass_their_promtool_unit_tests():
    assert UNIT_TESTS, "no prometheus/tests/*.test.yml"
    out = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(UNIT_TESTS), out.stdout


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((PROMETHEUS_DIR / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def it_the_dashboard_reads_the_recording_rules():
    """Every expression of the Grafana dashboard reads recording rules of prometheus/, so what
    it shows is what the rules compute (a real Prometheus runs each one, below)."""
    recorded = {r["record"] for g in yaml.safe_load((PROMETHEUS_DIR / "recording-rules.yml")
                                                     .read_text())["groups"] for r in g["rules"]}
    exprs = dashboard_exprs()
    assert exprs
    used = set()
    for e in exprs:
        names = set(re.findall(r"graysplit[a-z0-9_:]*", e))
        assert names and names <= recorded, f"{e}: not recording rules: {names - recorded}"
        used |= names
    # All but the helpers of other rules.
    assert used == recorded - {"graysplit:llm_stable_answers_with_output:rate5m",
                               "graysplit:gray_entry:proxies", "graysplit:gray_version:info"}, \
        sorted(recorded - used)


# --------------------------------------------------------------------------- Prometheus server

class Prometheus:
    """One Prometheus server scraping `targets` (host:port of Envoy admins) every second, with
    prometheus/'s rules evaluated every second."""

    def __init__(self, workdir: Path, targets: list[str]):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULE_FILES],
            "scrape_configs": [{"job_name": JOB, "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": targets}]}],
        }, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "Prometheus":
        exe = binary("prometheus")
        for _ in range(5):   # a free port taken by someone else in between: another one
            port = run.free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [exe, f"--config.file={self.config}",
                     f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=run.die_with_parent)
            try:
                wait_until(self.ready, 30, "Prometheus /-/ready")
                return self
            except RuntimeError:
                if "address already in use" not in self.log():
                    raise
        raise AssertionError(f"Prometheus found no free port:\n{self.log()}")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"Prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False     # 503 while it replays its WAL / loads

    def stop(self) -> None:
        if self.proc is not None:
            run.stop_envoy(self.proc)    # SIGTERM, SIGKILL after 5 s
            self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[tuple, float]:
        """An instant query: {sorted label items (without __name__): value}."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")):
                float(s["value"][1]) for s in data["result"]}

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def rule_health(self) -> list[str]:
        """Rules whose last evaluation failed (a rule file Prometheus took but cannot run)."""
        bad = []
        for g in self.api("rules")["groups"]:
            for r in g["rules"]:
                if r.get("health") not in ("ok", "unknown"):
                    bad.append(f"{r['name']}: {r.get('health')} {r.get('lastError')}")
        return bad


@pytest.fixture
def prometheus_factory(tmp_path):
    binary("prometheus")
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus{len(started)}", targets)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()


def wait_for(prom: Prometheus, predicate, timeout: float, what: str):
    """wait_until, and on a timeout Prometheus's log and its rules' health in the message."""
    try:
        return wait_until(predicate, timeout, what, interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrules not ok: {prom.rule_health()}\n"
                             f"Prometheus log (end):\n{prom.log()[-4000:]}") from None


def eventually(prom: Prometheus, expr: str, check, timeout: float = 15) -> dict[tuple, float]:
    """The result of `expr` once `check(result)` holds. Prometheus writes the rules of one
    evaluation one after the other and scrapes on its own clock, so a query right after another
    may still see the previous evaluation: the tests wait for what they expect, not assert it at
    once; on a timeout the message has the last result."""
    last: list = [None]

    def probe():
        last[0] = prom.query(expr)
        return last[0] if check(last[0]) else None
    try:
        return wait_for(prom, probe, timeout, f"{expr} to hold")
    except AssertionError as exc:
        raise AssertionError(f"{expr}: last {last[0]}\n{exc}") from None


def targets_up(prom: Prometheus, admins: list[str]) -> bool:
    active = prom.api("targets", state="active")["activeTargets"]
    health = {t["labels"]["instance"]: t["health"] for t in active}
    return all(health.get(a) == "up" for a in admins)


class Paced:
    """Gentle traffic through several Envoys (the machine is shared): every `period_s`, one GET
    to each Envoy on its keep-alive connection, the users in turn; errors are only counted (a
    503 of a failing gray app is the point)."""

    def __init__(self, envoys, users, period_s: float = 0.01, request=None):
        self.envoys, self.users, self.period = envoys, list(users), period_s
        self.request = request or (lambda conn, user: conn.get("/", [("x-user-id", user)]))
        self.stop_event = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Paced":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        conns = [e.conn() for e in self.envoys]
        k = 0
        try:
            while not self.stop_event.wait(self.period):
                user = self.users[k % len(self.users)]
                k += 1
                for i, e in enumerate(self.envoys):
                    try:
                        self.request(conns[i], user)
                        self.sent += 1
                    except (OSError, ConnectionError, ValueError, AssertionError) as exc:
                        self.failures.append(f"{e.admin}: {exc!r}")
                        conns[i].close()
                        try:
                            conns[i] = e.conn()
                        except OSError as exc2:
                            self.failures.append(f"{e.admin}: reconnect: {exc2!r}")
                            return
        finally:
            for c in conns:
                c.close()


GUARD = {"max_error_percent": 10, "min_requests": 20, "window_s": 10}
GUARDED = plugin_config([{"name": "ramp", "salt": "fleet", "guard": GUARD,
                          "split": [{"version": "v2", "percent": 50}]}])
USERS = [f"user-{i}" for i in range(200)]


def key(**labels: str) -> tuple:
    return tuple(sorted({"job": JOB, **labels}.items()))


def it_prometheus_alerts_on_the_proxy_whose_guard_tripped_and_aggregates_the_fleet(
        start_envoy, prometheus_factory):
    apps_a, apps_b = Apps(["v1", "v2"]), Apps(["v1", "v2"])
    try:
        a = start_envoy(GUARDED, upstreams=apps_a.ports)
        b = start_envoy(GUARDED, upstreams=apps_b.ports)
        prom = prometheus_factory([a.admin, b.admin])
        wait_for(prom, lambda: targets_up(prom, [a.admin, b.admin]), 30,
                 "both Envoys' /stats/prometheus scraped and up")
        with Paced([a, b], USERS) as traffic:
            # Healthy first: the recording rules have per-version values, nothing fires.
            eventually(prom, "graysplit:guard_error_share:ratio_rate5m", lambda v: v == {
                key(rule="ramp", version="v1"): 0, key(rule="ramp", version="v2"): 0}, 30)
            assert prom.alerts("GraysplitGuardTripped") == []

            # Envoy a's gray app fails; its guard trips, b's does not.
            apps_a["v2"].status = 503
            wait_until(lambda: harness.tripped(a, "v2"), 20, "Envoy a's guard to trip v2")

            def firing():
                alerts = prom.alerts("GraysplitGuardTripped")
                return alerts if any(x["state"] == "firing" for x in alerts) else None
            alerts = wait_for(prom, firing, 30, "GraysplitGuardTripped firing in Prometheus")
            assert [(x["state"], x["labels"]) for x in alerts] == [("firing", {
                "alertname": "GraysplitGuardTripped", "severity": "warning", "job": JOB,
                "instance": a.admin, "rule": "ramp", "version": "v2"})], alerts
            assert alerts[0]["annotations"]["summary"] == \
                f"graysplit rolled back v2 of rule ramp on {a.admin}"
            assert not harness.tripped(b, "v2")

            # The fleet's series (no instance label): one of two proxies tripped, v2 gray on
            # both (tripped on a, live on b), its split 0 % on a and 50 % on b; both proxies'
            # stable is v1.
            v2 = key(rule="ramp", version="v2")
            eventually(prom, "graysplit:guard_tripped:proxies", lambda v: v == {v2: 1})
            eventually(prom, "graysplit:gray_entry:proxies", lambda v: v == {v2: 2})
            eventually(prom, "graysplit:split_basis_points:min", lambda v: v == {v2: 0})
            eventually(prom, "graysplit:split_basis_points:max", lambda v: v == {v2: 5000})
            eventually(prom, "graysplit:stable_version:proxies", lambda v: v == {key(version="v1"): 2})
            eventually(prom, "graysplit:gray_version:info", lambda v: v == {v2: 1})
            # v2's error share pools both proxies: a's errors over a's and b's responses.
            eventually(prom, "graysplit:guard_error_share:ratio_rate5m", lambda v: set(v) == {
                key(rule="ramp", version="v1"), v2} and v[key(rule="ramp", version="v1")] == 0
                and 0 < v[v2] < 1)
            decisions = prom.query('graysplit:decisions:rate5m{rule="ramp"}')
            assert set(decisions) == {key(rule="ramp", version="v1"),
                                      key(rule="ramp", version="v2")}, decisions
            assert all(v > 0 for v in decisions.values()), decisions
            assert prom.rule_health() == []
            # Every query of the Grafana dashboard runs (its variables at "All").
            for expr in dashboard_exprs():
                prom.query(expr.replace("$job", ".*").replace("$rule", ".*")
                           .replace("$version", ".*"))
        assert not traffic.failures, traffic.failures[:5]
        harness.SUMMARY.append(f"prometheus: {traffic.sent} requests through two Envoys, "
                               f"GraysplitGuardTripped firing for {a.admin} only")
    finally:
        apps_a.close()
        apps_b.close()


# --------------------------------------------------------------------------- answers (`llm`)

class ChatApp(App):
    """An OpenAI chat completions JSON answer with `completion_tokens` = self.output_tokens; to a
    request that asks `"stream": true` (and not `stream_options.include_usage`), server-sent
    events that end `stop` with no usage, as OpenAI streams them: an answer that reports no
    output tokens."""

    output_tokens = 10

    def respond(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        if json.loads(body or b"{}").get("stream"):
            h.send_response(200)
            h.send_header("content-type", "text/event-stream")
            h.send_header("transfer-encoding", "chunked")
            h.send_header("x-app-version", self.version)
            h.end_headers()
            base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                    "model": self.version}
            events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                   "content": "ok"},
                                            "finish_reason": None}]},
                      {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            for e in [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]:
                chunk = e.encode()
                h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
            return
        out = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": self.version,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": self.output_tokens,
                      "total_tokens": 7 + self.output_tokens},
        }).encode()
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(out)))
        h.send_header("x-app-version", self.version)
        h.end_headers()
        h.wfile.write(out)


LLM = plugin_config([{"name": "ramp", "salt": "fleet",
                      "split": [{"version": "v2", "percent": 50}]}], llm={"paths": ["/v1/"]})
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                     "stream": True}).encode()


def it_prometheus_compares_a_gray_versions_answers_with_stables_across_proxies(
        start_envoy, prometheus_factory):
    apps_a, apps_b = Apps(["v1", "v2"], kind=ChatApp), Apps(["v1", "v2"], kind=ChatApp)
    for apps in (apps_a, apps_b):
        apps["v2"].output_tokens = 30       # gray answers three times as long as stable's
    try:
        try:
            a = start_envoy(LLM, upstreams=apps_a.ports)
        except RuntimeError as exc:
            if "unknown field `llm`" in str(exc):
                pytest.skip("the built wasm has no `llm` yet (issue 17): its answers' metrics "
                            "are tested by promtool only")
            raise
        b = start_envoy(LLM, upstreams=apps_b.ports)
        prom = prometheus_factory([a.admin, b.admin])
        wait_for(prom, lambda: targets_up(prom, [a.admin, b.admin]), 30, "both Envoys up")

        # Every third request streams without include_usage: an answer (ending stop) that
        # reports no output tokens, which must not pull the means down.
        asked = [0]

        def chat(conn, user):
            asked[0] += 1
            r = conn.request("POST", "/v1/chat/completions",
                             [("x-user-id", user), ("content-type", "application/json")],
                             STREAM if asked[0] % 3 == 0 else CHAT)
            assert r.status == 200, r

        v1, v2 = key(rule="ramp", version="v1"), key(rule="ramp", version="v2")
        with Paced([a, b], USERS, period_s=0.02, request=chat) as traffic:
            # Enough answers with an output count of each version for the output-ratio alert
            # (20 in 5 minutes; Envoy shows the histogram's count at its stats flush).
            eventually(prom, 'graysplit:llm_answers_with_output:rate5m{rule="ramp"} * 300 >= 30',
                       lambda v: len(v) == 2, 60)
        assert not traffic.failures, traffic.failures[:5]
        # Quiet now: the last scrapes read each Envoy's tokens counters and output-tokens
        # histograms (after a stats flush) with no answer ending in between, so the ratios are
        # exact: output tokens over the answers that reported them, the streams left out.
        eventually(prom, 'graysplit:llm_output_tokens_per_answer:ratio_rate5m{rule="ramp"}',
                   lambda v: set(v) == {v1, v2} and math.isclose(v[v1], 10, rel_tol=1e-9)
                   and math.isclose(v[v2], 30, rel_tol=1e-9))
        eventually(prom, "graysplit:llm_stable_output_tokens_per_answer:ratio_rate5m",
                   lambda v: set(v) == {key(rule="ramp")}
                   and math.isclose(v[key(rule="ramp")], 10, rel_tol=1e-9))
        # ... while both versions had answers without an output count (about one in three),
        # each counted as an answer, ending stop.
        eventually(prom, 'sum without (finish) (graysplit:llm_answers:rate5m{rule="ramp"})'
                   ' / graysplit:llm_answers_with_output:rate5m{rule="ramp"}',
                   lambda v: set(v) == {v1, v2} and all(x > 1 for x in v.values()))
        # A plain split (no guard, no schedule: no split gauge): v2 is gray as it is not
        # stable, and only it is compared.
        eventually(prom, "graysplit:llm_output_tokens_per_answer_vs_stable:ratio_rate5m",
                   lambda v: set(v) == {v2} and math.isclose(v[v2], 3, rel_tol=1e-9))
        eventually(prom, 'graysplit:llm_error_share:ratio_rate5m{rule="ramp"}',
                   lambda v: v == {v1: 0, v2: 0})
        # The alert on it is pending (it fires after 10 minutes of this). Its group is evaluated
        # on its own clock: wait for an evaluation that saw the ratio above.
        def pending():
            alerts = prom.alerts("GraysplitOutputTokensRatioHigh")
            return alerts if alerts and alerts[0]["state"] == "pending" and \
                alerts[0]["annotations"]["summary"] == \
                "v2's answers are 3.00 times as long as stable's in rule ramp" else None
        alerts = wait_for(prom, pending, 15, "GraysplitOutputTokensRatioHigh pending at 3.00")
        assert [x["labels"] for x in alerts] == [{
            "alertname": "GraysplitOutputTokensRatioHigh", "severity": "warning", "job": JOB,
            "rule": "ramp", "version": "v2"}], alerts
        # Envoy shows histograms at its stats flush (every 5 s by default). The JSON answers'
        # first token is their first body byte, within a second.
        p95 = eventually(prom, 'graysplit:llm_first_token_ms:p95_rate5m{rule="ramp"}',
                         lambda v: set(v) == {v1, v2} and not any(map(math.isnan, v.values())), 30)
        assert all(0 < x <= 1000 for x in p95.values()), p95
        assert prom.rule_health() == []
        harness.SUMMARY.append(f"prometheus: {traffic.sent} chat answers through two Envoys (a "
                               f"third streamed without usage), v2's output tokens per answer "
                               f"3.0 times stable's in Prometheus")
    finally:
        apps_a.close()
        apps_b.close()
