#!/usr/bin/env bash
# Fetches the CRDs of the chart's optional features — cert-manager's Certificate and Issuer,
# the Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule — and prints the
# directory that holds them (one YAML file each). tests/chart.rs applies them to a real API
# server before the chart with every option on, so those objects are checked against the real
# schemas; it reads the directory from CREDVEND_CHART_CRDS (`make test` passes it), so no test
# touches the network.
#
# The files come from the projects' published Go modules (`go mod download`, verified against
# the checksum database), pinned below; the directory is keyed by those pins, so bumping one
# fetches afresh and an unchanged list is reused as is. Bump the versions together with the
# ones the README says the chart is tested with.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

# module@version, then the files to take from it.
sources=(
  "github.com/cert-manager/cert-manager@v1.21.2"
  "  deploy/crds/cert-manager.io_certificates.yaml"
  "  deploy/crds/cert-manager.io_issuers.yaml"
  "github.com/prometheus-operator/prometheus-operator@v0.85.0"
  "  example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
  "  example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"
  "  example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
)
key="$(printf '%s\n' "${sources[@]}" | sha256sum | cut -c1-12)"
out="$CREDVEND_CACHE/chart-crds-$key"

# Copies every listed file into $1 (a subshell, so the cd stays local).
fetch_crds() (
  local tmp="$1" entry dir=""
  command -v go >/dev/null || { log "Go is needed to fetch the cert-manager and Prometheus Operator CRDs"; exit 1; }
  log "fetching the cert-manager and Prometheus Operator CRDs into $out"
  # Outside any module, so the repository's own Go modules play no part.
  cd "$tmp"
  for entry in "${sources[@]}"; do
    if [[ "$entry" != " "* ]]; then
      dir="$(go mod download -json "$entry" | awk -F'"' '$2 == "Dir" { print $4 }')"
      [ -d "$dir" ] || { log "go mod download $entry gave no directory"; exit 1; }
    else
      cp "$dir/${entry#  }" "$tmp/"
    fi
  done
)
with_lock "$out.lock" build_into "$out" fetch_crds
echo "$out"
