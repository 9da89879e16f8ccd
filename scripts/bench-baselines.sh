#!/usr/bin/env bash
# Builds the benchmark's baseline servers (bench/baseline: baseline-http, baseline-tls) with
# credvend's release profile, installs them stripped as the Dockerfile installs credvend
# (`install -s`), and prints the directory that holds them. The target dir lives in
# the cache, so a rebuild compiles only what changed (cargo decides; the sources are ours).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
target="$CREDVEND_CACHE/bench-baseline-target"

build() {
  log "building the benchmark baselines (bench/baseline)"
  CARGO_TARGET_DIR="$target" cargo build --quiet --release --locked \
    --manifest-path "$here/../bench/baseline/Cargo.toml" >&2
  for bin in baseline-http baseline-tls; do
    install -s -D -m 0755 "$target/release/$bin" "$target/shipped/$bin"
  done
}
with_lock "$target.lock" build
echo "$target/shipped"
