#!/usr/bin/env bash
# Installs the Debian packages the test node runs pods with, and prints nothing on stdout:
#   runc                         the OCI runtime containerd's runc shim starts containers with
#   containernetworking-plugins  the CNI plugins (bridge, host-local, loopback) for pod networking
# Neither package starts a daemon. Idempotent: an installed package is left alone, and the
# package lists are refreshed (once) only when a package is not found.
# Needs root and apt (the tests that use them run the node as root anyway).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
packages=(runc containernetworking-plugins)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_missing() {
  local missing=() p
  for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "apt-get is needed to install ${missing[*]}"; exit 1; }
  [ "$(id -u)" -eq 0 ] || { log "root is needed to install ${missing[*]} (and to run the test node)"; exit 1; }
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    log "refreshing the package lists (apt-get update) and retrying"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
  for p in "${missing[@]}"; do
    installed "$p" || { log "$p is still not installed"; exit 1; }
  done
}
with_lock "$CREDVEND_CACHE/node-deps.lock" install_missing
