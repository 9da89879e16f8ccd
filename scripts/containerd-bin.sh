#!/usr/bin/env bash
# Builds containerd 2.x from its published Go module and prints the directory holding
#   containerd               the container runtime the test node's kubelet talks CRI to
#   containerd-shim-runc-v2  the per-pod shim that starts containers with runc
#   ctr                      the client the tests import their OCI image archives with
# The version is pinned here (override with CONTAINERD_VERSION): containerd 2.x, because the
# kubelet drops containerd 1.x support after 1.37, so Debian's 1.6 would not outlive a kubelet
# upgrade. Static (CGO_ENABLED=0) and without the btrfs, devmapper and zfs snapshotters, which
# need C libraries; the test node uses overlayfs. The binaries are cached outside the clone,
# keyed by version, so the first run builds (about two minutes on two cores) and later runs
# return at once. `go install pkg@version` resolves containerd's own go.mod and the checksum
# database verifies every module it downloads.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
version="${CONTAINERD_VERSION:-v2.4.2}"
out="$CREDVEND_CACHE/containerd-$version"

build_containerd() (
  local tmp="$1" cmd
  command -v go >/dev/null || { log "Go is needed to build containerd $version"; exit 1; }
  log "building containerd $version into $out (a few minutes the first time)"
  export CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS="-buildvcs=false"
  # Outside any module, so the repository's own Go modules play no part.
  cd "$tmp"
  # What containerd's release build stamps in, so `containerd --version` names the release.
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    nice go install -trimpath -tags no_btrfs,no_devmapper,no_zfs \
      -ldflags="-s -w -X=github.com/containerd/containerd/v2/version.Version=$version" \
      "github.com/containerd/containerd/v2/cmd/$cmd@$version"
  done
)
with_lock "$out.lock" build_into "$out" build_containerd
echo "$out"
