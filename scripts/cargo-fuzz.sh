#!/usr/bin/env bash
# Installs cargo-fuzz (pinned) into the cache once and prints its path.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
version=0.13.2
root="$CREDVEND_CACHE/cargo-fuzz-$version"
build() {
  if [ -x "$root/bin/cargo-fuzz" ]; then return; fi
  log "building cargo-fuzz $version (once)"
  cargo install --quiet --locked --root "$root" --version "$version" cargo-fuzz >&2
}
with_lock "$root.lock" build
echo "$root/bin/cargo-fuzz"
