#!/usr/bin/env bash
# Installs cargo-fuzz (pinned) into the cache once and prints its path.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
cargo_tool cargo-fuzz 0.13.2
