#!/usr/bin/env bash
# Prepares the Python virtualenv with moto (our STS peer) and boto3, and prints its python.
#
# tests/python/requirements.in names the direct requirements; tests/python/requirements.txt is
# the whole tree compiled from it, every package pinned with its hashes, and pip installs it
# with --require-hashes: a fresh machine gets exactly the files CI got, or the install fails.
# The venv is keyed by the lock file's hash (and the Python version), so a change of pins makes
# a fresh venv and an unchanged one is reused as is.
#
# `venv.sh --lock` recompiles requirements.txt from requirements.in (pip-tools in a throwaway
# venv); commit both files together.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
dir="$(cd "$here/../tests/python" && pwd)"
requirements="$dir/requirements.txt"

if [ "${1:-}" = "--lock" ]; then
  tools="$(mktemp -d)"
  trap 'rm -rf "$tools"' EXIT
  log "compiling $requirements from requirements.in (pip-tools)"
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check pip-tools
  (cd "$dir" && "$tools/bin/pip-compile" --quiet --no-emit-find-links --allow-unsafe \
    --generate-hashes --no-emit-index-url --strip-extras \
    --output-file=requirements.txt requirements.in)
  exit 0
fi

key="$(sha256sum "$requirements" | cut -c1-12)"
venv="$CREDVEND_CACHE/venv-py$(python3 -c 'import sys;print(f"{sys.version_info[0]}{sys.version_info[1]}")')-$key"
build() {
  if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then return; fi
  log "creating Python venv $venv (moto, boto3; locked by $requirements)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$requirements"
  touch "$venv/.complete"
}
with_lock "$venv.lock" build
echo "$venv/bin/python"
