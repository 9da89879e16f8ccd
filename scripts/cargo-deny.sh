#!/usr/bin/env bash
# Installs cargo-deny (pinned) into the cache once and prints its path.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
cargo_tool cargo-deny 0.20.2
