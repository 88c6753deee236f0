"""The container engine (Docker) as the functional tests use it.

- `problem()`: why no container can run here (no docker CLI, no daemon, no image), or None.
- `run_argv(...)`: the `docker run` command of one Envoy (harness.Envoy with
  ENVOY_RUNTIME=container): host networking, so Envoy binds 127.0.0.1 / [::1] ports of this
  host and sees the clients' own source addresses; files mounted at their host paths, so the
  configs the harness writes need no rewriting.
- Every container a test run starts is labelled with the pytest process that owns it. It is
  removed by Envoy.stop(), at exit, by a reaper process when pytest dies (SIGKILL included),
  and at the next session's start if all that failed. Compose projects are named after the
  owner too (`project_name()`) and cleaned the same way.

The image is ENVOY_IMAGE (default graysplit/envoy:1.40.0-local, built by `make envoy-image`),
run with `--pull never`: no registry is needed, and none is asked.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

LOCAL_IMAGE = "graysplit/envoy:1.40.0-local"   # what scripts/envoy_image.py builds (its TAG)
IMAGE = os.environ.get("ENVOY_IMAGE") or LOCAL_IMAGE
LABEL = "graysplit.test.owner"        # value: the pid of the pytest process that started it
PROJECT_PREFIX = "graysplit-it-"      # compose projects: graysplit-it-<owner pid>-<n>

_names = itertools.count()


def docker(*args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check, stdin=subprocess.DEVNULL)


@functools.cache
def problem() -> str | None:
    """Why containers cannot run here, or None. Cached: asked once per test run."""
    if shutil.which("docker") is None:
        return "no docker CLI (as root, `make engine` installs Debian's docker.io)"
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    if info.returncode != 0:
        why = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"no container engine answers ({why}); as root, `make engine` starts one"
    if docker("image", "inspect", IMAGE).returncode != 0:
        hint = "`make envoy-image` builds it" if IMAGE == LOCAL_IMAGE else f"`docker pull {IMAGE}`"
        return f"image {IMAGE} is not here ({hint})"
    return None


def unique_name(kind: str) -> str:
    return f"graysplit-{kind}-{os.getpid()}-{next(_names)}"


def run_argv(name: str, envoy_args: list[str], *, read_only: list[Path],
             writable: list[Path]) -> list[str]:
    """`docker run` for Envoy with `envoy_args`. `read_only` (the wasm, the bootstrap, the
    directory of the ECDS file: a rename in it is seen through the mount) and `writable` (what
    Envoy writes: admin address file, access log; created here, since a bind mount needs its
    source) are mounted at their own paths."""
    for path in writable:
        path.touch()
    mounts = [f"type=bind,source={p},target={p},readonly" for p in dict.fromkeys(read_only)]
    mounts += [f"type=bind,source={p},target={p}" for p in dict.fromkeys(writable)]
    watch_reaper()
    return ["docker", "run", "--rm", "--pull", "never", "--name", name,
            "--label", f"{LABEL}={os.getpid()}", "--network", "host",
            # The official image's entrypoint drops to uid 101 unless ENVOY_UID is 0; the test's
            # files are the test runner's, mode 0700 directories included. The local image has
            # no entrypoint and runs as root anyway.
            "--env", "ENVOY_UID=0",
            *itertools.chain.from_iterable(("--mount", m) for m in mounts),
            IMAGE, "envoy", *envoy_args]


def remove(name: str) -> None:
    """Remove a container, running or not; nothing if it is gone already."""
    docker("rm", "--force", name)


def project_name() -> str:
    return f"{PROJECT_PREFIX}{os.getpid()}-{next(_names)}"


def remove_owned_by(owner: int) -> list[str]:
    """Remove every container and compose network that the test run `owner` started; returns
    what it removed."""
    ids = docker("ps", "--all", "--quiet", "--filter", f"label={LABEL}={owner}").stdout.split()
    projects = {p for p in docker("ps", "--all", "--format",
                                  '{{.Label "com.docker.compose.project"}}').stdout.split()
                if p.startswith(f"{PROJECT_PREFIX}{owner}-")}
    networks = [n for n in docker("network", "ls", "--format",
                                  '{{.Label "com.docker.compose.project"}} {{.ID}}').stdout.splitlines()
                if n.startswith(f"{PROJECT_PREFIX}{owner}-")]
    for project in projects:
        ids += docker("ps", "--all", "--quiet", "--filter",
                      f"label=com.docker.compose.project={project}").stdout.split()
    if ids:
        docker("rm", "--force", *ids)
    for line in networks:
        docker("network", "rm", line.split()[1])
    return ids + [n.split()[0] for n in networks]


def remove_leftovers() -> list[str]:
    """Containers and compose networks of earlier test runs whose pytest is gone (killed before
    its reaper could clean up). Nothing, quietly, where no engine runs."""
    if shutil.which("docker") is None:
        return []
    try:
        owners = set(docker("ps", "--all", "--filter", f"label={LABEL}", "--format",
                            f'{{{{.Label "{LABEL}"}}}}', timeout=10).stdout.split())
        fmt = '{{.Label "com.docker.compose.project"}}'
        labels = (docker("ps", "--all", "--format", fmt, timeout=10).stdout.split()
                  + docker("network", "ls", "--format", fmt, timeout=10).stdout.split())
    except subprocess.TimeoutExpired:
        return []
    owners |= {m.group(1) for p in labels if (m := re.match(rf"{PROJECT_PREFIX}(\d+)-", p))}
    removed = []
    for owner in sorted(owners):
        if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
            removed += remove_owned_by(int(owner))
    return removed


_REAPER = """
import sys
sys.path.insert(0, sys.argv[1])
sys.stdin.read()          # EOF: the test run has ended, however it ended
import engine
engine.remove_owned_by(int(sys.argv[2]))
"""


@functools.cache
def watch_reaper() -> subprocess.Popen:
    """A process that waits for this one to end (its stdin pipe closes, even on SIGKILL) and
    then removes what this test run left. In its own session, so Ctrl-C spares it."""
    reaper = subprocess.Popen([sys.executable, "-c", _REAPER, str(Path(__file__).parent),
                               str(os.getpid())], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    atexit.register(remove_owned_by, os.getpid())
    return reaper
