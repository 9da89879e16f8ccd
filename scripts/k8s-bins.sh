#!/usr/bin/env bash
# Builds the Kubernetes binaries the integration tests run (from the Go module in
# tests/k8s) and prints their paths, one per line:
#
#   line 1: kube-apiserver
#   line 2: etcd
#   line 3: kubelet
#   line 4: kube-controller-manager
#   line 5: kube-scheduler
#
# The last three make the real node of the pod-level tests; tests that need only admission
# use the first two.
# The binaries are cached outside the clone in a directory keyed by the Kubernetes version
# and a hash of the module files, so a change of pins builds afresh and an unchanged module
# is reused as is. The first build takes several minutes (about 170 Go modules); later runs
# return at once. Needs Go (the version in tests/k8s/go.mod, which the go command fetches if
# older) and the Go module proxy; go.sum makes the download verifiable.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
mod="$(cd "$here/../tests/k8s" && pwd)"
k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$mod/go.mod")"
[ -n "$k8s_version" ] || { log "no k8s.io/kubernetes requirement in $mod/go.mod"; exit 1; }
key="$(cat "$mod/go.mod" "$mod/go.sum" "$mod/etcd/main.go" | sha256sum | cut -c1-12)"
out="$CREDVEND_CACHE/k8s-$k8s_version-$key"

# Builds both binaries into $1 (a subshell, so the cd stays local).
build_k8s() (
  local tmp="$1"
  command -v go >/dev/null || { log "Go is needed to build kube-apiserver and etcd"; exit 1; }
  log "building kube-apiserver, kubelet, kube-controller-manager, kube-scheduler $k8s_version and etcd into $out (several minutes the first time)"
  cd "$mod"
  export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
  # What `make release` stamps into kube-apiserver, so /version reports the real release.
  # The build date is the module's publication time rather than now, which keeps the
  # binary reproducible; the commit is not known from a module download and stays empty.
  local minor build_date pkg ldflags=(-s -w)
  minor="$(cut -d. -f2 <<<"$k8s_version")"
  build_date="$(go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=(
      "-X=$pkg.gitVersion=$k8s_version" "-X=$pkg.gitMajor=1" "-X=$pkg.gitMinor=$minor"
      "-X=$pkg.gitTreeState=clean" "-X=$pkg.gitCommit=" "-X=$pkg.buildDate=$build_date"
    )
  done
  for cmd in kube-apiserver kubelet kube-controller-manager kube-scheduler; do
    go build -trimpath -ldflags="${ldflags[*]}" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  go build -trimpath -ldflags="-s -w" -o "$tmp/etcd" ./etcd
)
with_lock "$out.lock" build_into "$out" build_k8s
echo "$out/kube-apiserver"
echo "$out/etcd"
echo "$out/kubelet"
echo "$out/kube-controller-manager"
echo "$out/kube-scheduler"
