#!/usr/bin/env bash
# `make registry`: make sure Debian's `docker-registry` (the Distribution registry 2.8) is here,
# for tests/it_wasm_image.py, which starts it on 127.0.0.1 with storage in a temp dir and pushes
# the module's image there (`make wasm-push`). Nothing here starts it: the package's service is
# not used.
#
# Exit status: 0 it is installed; 3 it is missing and cannot be installed here, and why (not
# root, no apt-get): the caller may skip what needs it; 1 the install failed.
set -uo pipefail

say() { echo "registry: $(docker-registry --version 2>&1 | head -n 1) at $(command -v docker-registry)"; }

if command -v docker-registry >/dev/null; then
  say
  exit 0
fi
. "$(dirname "$0")/debian.sh"
debian_can_install docker-registry docker-registry || exit 3
echo "installing Debian's docker-registry (the Distribution registry, for the image tests)"
debian_install docker-registry --no-install-recommends || exit 1
command -v docker-registry >/dev/null || { echo "docker-registry installed but not on PATH" >&2; exit 1; }
say
