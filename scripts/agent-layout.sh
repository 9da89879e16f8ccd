#!/usr/bin/env bash
# Re-records layout/agent.order, the order in which the release binary's linker places the
# functions the agent runs (see build.rs for why), and rebuilds the binary with it.
#
# Re-record it after a dependency upgrade, a new Rust toolchain or a change to what the agent
# does at start or per request: symbol names change with them, and names the list no longer
# finds fall back to the default layout (`make bench` shows the cost in the agent's RSS and
# prints how much of the list the binary still has). It needs valgrind (from apt) and the
# tests' Python venv (moto); it takes a release build and about a minute.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"

install_valgrind() {
  if command -v valgrind >/dev/null; then return; fi
  [ "$(id -u)" -eq 0 ] || { log "root is needed to install valgrind"; exit 1; }
  log "installing valgrind with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends valgrind >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends valgrind >&2; }
}
with_lock "$CREDVEND_CACHE/valgrind.lock" install_valgrind
python="$("$here/venv.sh")"
target="${CARGO_TARGET_DIR:-$repo/target}"

cd "$repo"
log "building the release binary"
cargo build --release --locked --bin credvend >&2
log "running the agent under callgrind"
"$python" "$here/agent_layout.py" "$target/release/credvend" layout/agent.order
log "relinking with the new layout"
cargo build --release --locked --bin credvend >&2
