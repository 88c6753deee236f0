"""Fixtures: Envoy processes (or containers) owned by the tests, their logs printed when a test
fails."""

from __future__ import annotations

import atexit
from pathlib import Path

import pytest

import engine
import harness
from harness import RUNNING, WASM, Envoy, bootstrap


def pytest_sessionstart(session):
    """Containers of earlier runs that died before they could remove them (see tests/engine.py)."""
    removed = engine.remove_leftovers()
    if removed:
        print(f"removed {len(removed)} containers and networks left by earlier test runs")


def pytest_report_header(config):
    return f"Envoy runtime: {harness.RUNTIME}" + (
        f" (image {engine.IMAGE})" if harness.RUNTIME == "container" else "")


def launch(workdir: Path, config, *, ecds: bool = False, wait: bool = True,
           concurrency: int = 2, **kw) -> Envoy:
    """Start an Envoy for `config` (inline), or with ECDS from `workdir/ecds.yaml` when `ecds`
    (config then is the first pushed config, or None for no file yet)."""
    if (config is not None or ecds) and not WASM.exists():
        pytest.fail(f"{WASM} is missing: run `make build` first", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    access_log = workdir / "access.log"
    if ecds:
        ecds_path = workdir / "ecds.yaml"
        if config is not None:
            harness.write_ecds(ecds_path, config)
        doc = bootstrap(None, access_log=access_log, ecds_path=ecds_path, **kw)
    else:
        doc = bootstrap(config, access_log=access_log, **kw)
    envoy = Envoy(workdir, doc, concurrency=concurrency, ecds_path=workdir / "ecds.yaml")
    return envoy.launch() if wait else envoy.start()


@pytest.fixture
def start_envoy(tmp_path):
    """Factory: start_envoy(plugin_config, **bootstrap options) -> a ready Envoy, stopped after
    the test."""
    started: list[Envoy] = []

    def start(config, **kw) -> Envoy:
        e = launch(tmp_path / f"envoy{len(started)}", config, **kw)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


def module_envoy(request, tmp_path_factory, config, **kw) -> Envoy:
    """An Envoy shared by the tests of one module (for configs nobody mutates)."""
    e = launch(tmp_path_factory.mktemp(request.module.__name__), config, **kw)
    request.addfinalizer(e.stop)
    return e


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.failed:
        for e in list(RUNNING):
            log = e.log()
            if len(log) > 60000:
                log = "...\n" + log[-60000:]
            rep.sections.append((f"Envoy log {e.log_path}", log))
    return rep


@atexit.register
def _kill_leftovers() -> None:
    for e in list(RUNNING):
        e.stop()


def pytest_terminal_summary(terminalreporter):
    """Figures the tests measured (e.g. live-ramp step latencies), shown without `-s`."""
    if harness.SUMMARY:
        terminalreporter.section("graysplit measurements")
        for line in harness.SUMMARY:
            terminalreporter.write_line(line)
