# Shared helpers for the build scripts. Source it; do not run it.
# Everything slow is cached outside the clone, under CREDVEND_CACHE, keyed by version.
set -euo pipefail
CREDVEND_CACHE="${CREDVEND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/credvend}"
mkdir -p "$CREDVEND_CACHE"
log() { printf '==> %s\n' "$*" >&2; }
# Serialises concurrent builds of the same cached artefact (two `make` runs at once).
with_lock() { local lock="$1"; shift; mkdir -p "$(dirname "$lock")"; exec 9>"$lock"; flock 9; "$@"; }
