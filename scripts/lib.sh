# Shared helpers for the build scripts. Source it; do not run it.
# Everything slow is cached outside the clone, under CREDVEND_CACHE, keyed by version.
set -euo pipefail
CREDVEND_CACHE="${CREDVEND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/credvend}"
mkdir -p "$CREDVEND_CACHE"
log() { printf '==> %s\n' "$*" >&2; }
# Serialises concurrent builds of the same cached artefact (two `make` runs at once).
with_lock() { local lock="$1"; shift; mkdir -p "$(dirname "$lock")"; exec 9>"$lock"; flock 9; "$@"; }

# build_into OUT FUNCTION: unless OUT is complete, runs FUNCTION TMPDIR and renames TMPDIR to
# OUT only when every command of FUNCTION succeeded (errexit stays in force: the function is
# never run as a condition), so a failed or interrupted build never looks cached. Call it
# under with_lock; leftovers of an earlier failed build are removed first.
build_into() {
  local out="$1" build="$2" tmp
  if [ -f "$out/.complete" ]; then return 0; fi
  rm -rf "$out".tmp.*
  tmp="$(mktemp -d "$out.tmp.XXXXXX")"
  "$build" "$tmp"
  touch "$tmp/.complete"
  rm -rf "$out"
  mv "$tmp" "$out"
}

# cargo_tool NAME VERSION: installs the cargo subcommand NAME at VERSION into the cache once
# (serialised by a lock) and prints its path.
cargo_tool() {
  local name="$1" version="$2"
  local root="$CREDVEND_CACHE/$name-$version"
  _cargo_tool_install() {
    if [ -x "$root/bin/$name" ]; then return; fi
    log "building $name $version (once)"
    cargo install --quiet --locked --root "$root" --version "$version" "$name" >&2
  }
  with_lock "$root.lock" _cargo_tool_install
  echo "$root/bin/$name"
}
