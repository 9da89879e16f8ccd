#!/usr/bin/env bash
# Installs wrk, the benchmark's HTTP load generator (Debian's package: one small C program,
# keep-alive, TLS, Lua-scripted requests and exact latency percentiles), and prints its path.
# Idempotent: an installed wrk is used as it is; the package lists are refreshed (once) only
# when the package is not found. Needs root and apt.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

install() {
  if dpkg-query -W -f='${Status}' wrk 2>/dev/null | grep -q 'install ok installed'; then return; fi
  command -v apt-get >/dev/null || { log "apt-get is needed to install wrk"; exit 1; }
  [ "$(id -u)" -eq 0 ] || { log "root is needed to install wrk"; exit 1; }
  log "installing wrk with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends wrk >&2; then
    log "refreshing the package lists (apt-get update) and retrying"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends wrk >&2
  fi
}
with_lock "$CREDVEND_CACHE/wrk.lock" install
command -v wrk
