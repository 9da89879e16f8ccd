#!/usr/bin/env bash
# Builds the test node's sandbox ("pause") program (tests/pause, standard library only) and
# prints its path. It is static (CGO_ENABLED=0), so the image the tests make of it needs
# nothing else. Cached outside the clone, keyed by the hash of its sources.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
src="$(cd "$here/../tests/pause" && pwd)"
out="$CREDVEND_CACHE/pause-$(cd "$src" && sha256sum go.mod main.go | sha256sum | cut -c1-12)"

build_pause() {
  command -v go >/dev/null || { log "Go is needed to build the pause program"; exit 1; }
  log "building the pause program (tests/pause) into $out"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
    nice go build -trimpath -ldflags="-s -w" -o "$1/pause" .)
}
with_lock "$out.lock" build_into "$out" build_pause
echo "$out/pause"
