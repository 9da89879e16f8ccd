#!/usr/bin/env bash
# Builds promtool from the Prometheus Go module and prints its path. tests/prometheus_rules.rs
# runs `promtool check rules` and `promtool test rules` on the chart's PrometheusRule, so the
# alerts are checked as Prometheus itself evaluates them.
#
# The module version is pinned here (override with PROMETHEUS_MODULE_VERSION; Prometheus 3.x is
# published as module versions v0.3xx.y) and the binary is cached under a directory keyed by
# it, so the first run builds (several minutes on two cores; the build runs under `nice`)
# and later runs return at once. `go install pkg@version` verifies every module against the
# checksum database, so no go.sum lives in this repository.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
version="${PROMETHEUS_MODULE_VERSION:-v0.316.0}"
out="$CREDVEND_CACHE/promtool-$version"

build_promtool() (
  local tmp="$1"
  command -v go >/dev/null || { log "Go is needed to build promtool $version"; exit 1; }
  log "building promtool $version into $out (several minutes the first time)"
  export CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS="-buildvcs=false"
  # Outside any module, so the repository's own Go modules (tests/k8s) play no part.
  cd "$tmp"
  # remove_all_sd leaves out the optional service discoveries (cloud SDKs): checking and
  # unit-testing rules needs none of them, and they are most of the build.
  nice -n 10 go install -trimpath -tags remove_all_sd -ldflags="-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@$version"
)
with_lock "$out.lock" build_into "$out" build_promtool
echo "$out/promtool"
