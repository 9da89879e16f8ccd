#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, through cargo-fuzz) and runs them.
#
#   scripts/fuzz.sh smoke        every target for a few seconds on its committed corpus
#                                (what `make test` runs: a regression in a parser fails it)
#   scripts/fuzz.sh run [T...]   every target (or the named ones) for FUZZ_RUNS executions
#                                (default 1000000), then folds the new inputs that add
#                                coverage into fuzz/corpus/<target> (minimized; commit them)
#
# The build is cached outside the clone, under CREDVEND_CACHE/fuzz-target. Runs use one job
# in-process (no -jobs/-fork: one process per target, its stats on stderr); crash inputs land in
# fuzz/artifacts/<target>/.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"
targets_all=(endpoint admission binding token sts)
mode="${1:-smoke}"
shift || true
targets=("$@")
[ "$#" -gt 0 ] || targets=("${targets_all[@]}")

cargo_fuzz="$("$here/cargo-fuzz.sh")"
target_dir="$CREDVEND_CACHE/fuzz-target"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
# Safe Rust only (the crate's one unsafe module, src/agent/resident.rs, is reachable from no
# target), so no sanitizer: the targets' own assertions and Rust's overflow checks (on in fuzz
# builds) are the oracles. Without a sanitizer every flag cargo-fuzz passes is a stable one, so
# the stable toolchain builds it.
(cd "$repo" && "$cargo_fuzz" fuzz build --sanitizer none --codegen-units 16 \
  --target-dir "$target_dir") </dev/null >&2

flags=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  corpus="$repo/fuzz/corpus/$t"
  mkdir -p "$corpus" "$repo/fuzz/artifacts/$t" "$work/$t"
  common=("${flags[@]}" "-dict=$repo/fuzz/dict/$t.dict" "-artifact_prefix=$repo/fuzz/artifacts/$t/")
  case "$mode" in
    smoke)
      log "fuzz smoke: $t"
      # New inputs go to the scratch directory (first), never into the committed corpus.
      "$bin_dir/$t" "${common[@]}" -max_total_time="${FUZZ_SMOKE_SECONDS:-4}" "$work/$t" "$corpus" >&2
      ;;
    run)
      log "fuzzing $t for ${FUZZ_RUNS:-1000000} executions"
      "$bin_dir/$t" "${common[@]}" -runs="${FUZZ_RUNS:-1000000}" "$work/$t" "$corpus" >&2
      log "minimizing fuzz/corpus/$t"
      mkdir -p "$work/$t.min"
      # The smallest set of inputs that covers every edge reached (not every hit count or
      # comparison), so the committed corpus stays small; fuzzing rebuilds the rest in seconds.
      "$bin_dir/$t" "${common[@]}" -set_cover_merge=1 -use_counters=0 -use_cmp=0 \
        "$work/$t.min" "$corpus" "$work/$t" >&2
      rm -rf "$corpus"
      mv "$work/$t.min" "$corpus"
      ;;
    *) log "usage: scripts/fuzz.sh smoke|run [target...]"; exit 2 ;;
  esac
done
