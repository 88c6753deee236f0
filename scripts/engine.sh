#!/usr/bin/env bash
# `make engine`: make sure a container engine answers `docker info`.
#
# Where none does: as root, install Debian's docker.io when dockerd is missing and start dockerd
# (systemctl where systemd runs, else dockerd in the background, log in /var/log/dockerd.log).
# Exit status: 0 an engine runs; 3 none can run here and why (not root, no apt-get): the caller
# may skip the container tests; 1 it should have run and did not (install or start failed).
set -uo pipefail

log=/var/log/dockerd.log

running() { docker info >/dev/null 2>&1; }

say_engine() {
  echo "container engine: $(docker version --format 'Docker {{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}} at '"$(command -v docker)"' (API {{.Client.APIVersion}})' 2>/dev/null)"
}

if command -v docker >/dev/null && running; then
  say_engine
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  if command -v docker >/dev/null; then
    why="docker info fails as uid $(id -u): $(docker info 2>&1 >/dev/null | tail -n 1)"
  else
    why="no docker here, and installing docker.io and starting dockerd needs root (uid $(id -u))"
  fi
  echo "no container engine: $why" >&2
  exit 3
fi

if ! command -v dockerd >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "no container engine: dockerd is missing and there is no apt-get to install Debian's docker.io" >&2
    exit 3
  fi
  echo "installing Debian's docker.io (dockerd is missing)"
  . "$(dirname "$0")/debian.sh"
  debian_install docker.io || exit 1
fi

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  echo "starting dockerd (systemctl start docker)"
  systemctl start docker || true
else
  echo "starting dockerd (in the background, log in $log)"
  # Its own session: it outlives make, and make's Ctrl-C does not reach it.
  setsid dockerd >>"$log" 2>&1 </dev/null &
fi
for _ in $(seq 1 120); do
  if running; then
    say_engine
    exit 0
  fi
  sleep 0.5
done
echo "dockerd did not answer within 60 s; the end of $log:" >&2
tail -n 20 "$log" >&2 2>/dev/null
exit 1
