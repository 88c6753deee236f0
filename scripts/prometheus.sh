#!/usr/bin/env bash
# `make prometheus`: make sure `prometheus` and `promtool` run here (tests/it_prometheus.py and
# `make prometheus-rules` use them).
#
# Where either is missing: as root, install Debian's `prometheus` package with apt-get (it
# carries both). Exit status: 0 both run; 3 they are missing and cannot be installed here, and
# why (not root, no apt-get): the caller may skip what needs them; 1 the install failed.
set -uo pipefail

have() { command -v prometheus >/dev/null && command -v promtool >/dev/null; }

say() {
  echo "prometheus: $(prometheus --version 2>&1 | head -n 1) at $(command -v prometheus); promtool at $(command -v promtool)"
}

if have; then
  say
  exit 0
fi

. "$(dirname "$0")/debian.sh"
debian_can_install prometheus/promtool prometheus || exit 3

echo "installing Debian's prometheus (prometheus or promtool is missing)"
# --no-install-recommends: the server and promtool only, not the node exporter it recommends.
debian_install prometheus --no-install-recommends || exit 1
if ! have; then
  echo "Debian's prometheus is installed but prometheus or promtool is still not on PATH" >&2
  exit 1
fi
say
exit 0
