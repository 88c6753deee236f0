# Sourced by scripts/engine.sh and scripts/prometheus.sh: installs a Debian package as they do.
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
