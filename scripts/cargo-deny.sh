#!/usr/bin/env bash
# Installs cargo-deny (pinned) into the cache once and prints its path.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
version=0.20.2
root="$CREDVEND_CACHE/cargo-deny-$version"
build() {
  if [ -x "$root/bin/cargo-deny" ]; then return; fi
  log "building cargo-deny $version (once)"
  cargo install --quiet --locked --root "$root" --version "$version" cargo-deny >&2
}
with_lock "$root.lock" build
echo "$root/bin/cargo-deny"
