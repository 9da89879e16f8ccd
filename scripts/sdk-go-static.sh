#!/usr/bin/env bash
# Builds the Go SDK conformance client (tests/sdk/go) as a static binary (CGO_ENABLED=0) and
# prints its path: the pod-level tests put it alone into an app image, which has no C library.
# Cached outside the clone, keyed by the hash of the client's module files.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
src="$(cd "$here/../tests/sdk/go" && pwd)"
out="$CREDVEND_CACHE/sdk-go-static-$(cd "$src" && sha256sum go.mod go.sum main.go | sha256sum | cut -c1-12)"

build_client() {
  command -v go >/dev/null || { log "Go is needed to build the Go SDK client"; exit 1; }
  log "building the static Go SDK client (tests/sdk/go) into $out"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
    nice go build -trimpath -ldflags="-s -w" -o "$1/sdk-client-go" .)
}
with_lock "$out.lock" build_into "$out" build_client
echo "$out/sdk-client-go"
