# Sourced by scripts/engine.sh, prometheus.sh and registry.sh: installs a Debian package as they do.
#
# debian_can_install WHAT PKG: returns 0 when PKG can be installed here (root, apt-get); else
# prints why, as "no WHAT: ...", and returns 3 (the callers' "missing, cannot be installed here").
debian_can_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "no $1: installing Debian's $2 package needs root (uid $(id -u))" >&2
    return 3
  fi
  if ! command -v apt-get >/dev/null; then
    echo "no $1: there is no apt-get to install Debian's $2 package" >&2
    return 3
  fi
}
#
# debian_install PKG [apt-get install options...]: installs PKG (running `apt-get update` first
# when the package lists do not know it yet, as on a fresh machine), its output in
# /tmp/graysplit-PKG-install.log; on failure prints the log's tail and returns 1.
debian_install() {
  local pkg=$1
  shift
  local log="/tmp/graysplit-$pkg-install.log"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)"')" ]; then
    apt-get update -q >/dev/null || { echo "apt-get update failed" >&2; return 1; }
  fi
  apt-get install -y -q "$@" "$pkg" >"$log" 2>&1 || {
    tail -n 20 "$log" >&2
    echo "apt-get install $pkg failed (log above, all of it in $log)" >&2
    return 1
  }
}
