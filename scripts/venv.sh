#!/usr/bin/env bash
# Prepares the Python virtualenv with moto (our STS peer) and boto3, and prints its python.
# Keyed by the requirements file's hash, so a change of pins makes a fresh venv and an
# unchanged one is reused as is.
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
req="$here/../tests/python/requirements.txt"
key="$(sha256sum "$req" | cut -c1-12)"
venv="$CREDVEND_CACHE/venv-py$(python3 -c 'import sys;print(f"{sys.version_info[0]}{sys.version_info[1]}")')-$key"
build() {
  if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then return; fi
  log "creating Python venv $venv (moto, boto3)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  touch "$venv/.complete"
}
with_lock "$venv.lock" build
echo "$venv/bin/python"
