#!/usr/bin/env bash
# Builds the Kubernetes binaries the integration tests run and prints their paths, one per
# line. With no argument it builds the newest supported release, from the Go module in
# tests/k8s:
#
#   line 1: kube-apiserver
#   line 2: etcd
#   line 3: kubelet
#   line 4: kube-controller-manager
#   line 5: kube-scheduler
#
# The last three make the real node of the pod-level tests; tests that need only admission
# use the first two. `k8s-bins.sh tests/k8s-oldest` builds the oldest supported release the
# same way; a module builds (and this prints) only the commands its go.mod names as tools,
# kube-apiserver and etcd first, so the oldest prints two lines.
# The binaries are cached outside the clone in a directory keyed by the Kubernetes version
# and a hash of the module files, so a change of pins builds afresh and an unchanged module
# is reused as is. The first build takes several minutes (about 170 Go modules); later runs
# return at once. Needs Go (the version in tests/k8s/go.mod, which the go command fetches if
# older) and the Go module proxy; go.sum makes the download verifiable.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
mod="$(cd "${1:-$here/../tests/k8s}" && pwd)"
k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$mod/go.mod")"
[ -n "$k8s_version" ] || { log "no k8s.io/kubernetes requirement in $mod/go.mod"; exit 1; }
key="$(cat "$mod/go.mod" "$mod/go.sum" "$mod/etcd/main.go" | sha256sum | cut -c1-12)"
out="$CREDVEND_CACHE/k8s-$k8s_version-$key"
# The commands to build, in the order they are printed: those the module names as tools.
cmds=()
tools="$(awk '/^tool \(/ { block = 1; next } block && /^\)/ { block = 0 } block { print $1 } /^tool [^(]/ { print $2 }' "$mod/go.mod")"
for cmd in kube-apiserver kubelet kube-controller-manager kube-scheduler; do
  if grep -qx "k8s.io/kubernetes/cmd/$cmd" <<<"$tools"; then cmds+=("$cmd"); fi
done
[ "${cmds[0]:-}" = kube-apiserver ] || { log "$mod/go.mod names no tool k8s.io/kubernetes/cmd/kube-apiserver"; exit 1; }

# Builds the commands and etcd into $1 (a subshell, so the cd stays local).
build_k8s() (
  local tmp="$1"
  command -v go >/dev/null || { log "Go is needed to build kube-apiserver and etcd"; exit 1; }
  log "building ${cmds[*]} $k8s_version and etcd into $out (several minutes the first time)"
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
  for cmd in "${cmds[@]}"; do
    go build -trimpath -ldflags="${ldflags[*]}" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  go build -trimpath -ldflags="-s -w" -o "$tmp/etcd" ./etcd
)
with_lock "$out.lock" build_into "$out" build_k8s
echo "$out/kube-apiserver"
echo "$out/etcd"
for cmd in "${cmds[@]:1}"; do echo "$out/$cmd"; done
