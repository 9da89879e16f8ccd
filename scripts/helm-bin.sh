#!/usr/bin/env bash
# Builds the helm CLI from its published Go module and prints its path. The chart tests
# (tests/chart.rs) lint and render the chart with it.
#
# The version is pinned here (override with HELM_VERSION) so every run renders with the same
# helm; the binary is cached outside the clone under a directory keyed by that version, so the
# first run builds (about three minutes on two cores) and later runs return at once.
# `go install pkg@version` resolves helm's own go.mod and the checksum database verifies every
# module it downloads, so no go.sum needs to live in this repository.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
version="${HELM_VERSION:-v4.3.1}"
major="${version%%.*}"
out="$CREDVEND_CACHE/helm-$version"

# Installs helm into $1 (a subshell, so the cd and exports stay local).
build_helm() (
  local tmp="$1"
  command -v go >/dev/null || { log "Go is needed to build helm $version"; exit 1; }
  log "building helm $version into $out (a few minutes the first time)"
  export CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS="-buildvcs=false"
  # Outside any module, so the repository's own Go modules (tests/k8s) play no part.
  cd "$tmp"
  # What helm's release build stamps in, so `helm version` reports the real release
  # rather than a bare "v4.3" with an "unreleased" suffix.
  go install -trimpath \
    -ldflags="-s -w -X=helm.sh/helm/$major/internal/version.version=$version -X=helm.sh/helm/$major/internal/version.metadata= -X=helm.sh/helm/$major/internal/version.gitTreeState=clean" \
    "helm.sh/helm/$major/cmd/helm@$version"
)
with_lock "$out.lock" build_into "$out" build_helm
echo "$out/helm"
