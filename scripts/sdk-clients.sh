#!/usr/bin/env bash
# Installs and builds the five SDK conformance clients (tests/sdk/*) and prints one KEY=value
# line per client for tests/sdk_conformance.rs (`make test` passes them to cargo test):
#   CREDVEND_SDK_PYTHON   python with boto3 (the venv of scripts/venv.sh); runs tests/sdk/python/client.py
#   CREDVEND_SDK_RUST     the `sdk-client-rust` Cargo example (aws-config as pinned by Cargo.lock)
#   CREDVEND_SDK_GO       the aws-sdk-go-v2 client binary
#   CREDVEND_SDK_JAVA_JAR the AWS SDK for Java v2 client, `java -jar` with its lib/ beside it
#   CREDVEND_SDK_JS_DIR   a directory whose node_modules holds AWS SDK for JavaScript v3; runs
#                         tests/sdk/js/client.js with NODE_PATH=$CREDVEND_SDK_JS_DIR/node_modules
# Each artefact lives under CREDVEND_CACHE, keyed by the hash of the files that define it (pins,
# lock files, sources), so an unchanged client is reused as is and a changed one is rebuilt
# beside the old. Builds go to a temp dir that is renamed into place, so an interrupted build
# is never mistaken for a finished one.
# --no-rust skips the cargo example (the conformance test itself uses that: cargo builds
# examples together with the tests, and a nested cargo would wait on the running one's lock).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
root="$(cd "$here/.." && pwd)"
sdk="$root/tests/sdk"

# Hash of files' names and contents, stable across machines and clones.
key_of() { (cd "$1" && shift && sha256sum "$@") | sha256sum | cut -c1-12; }

# Runs the build function $2 to fill a fresh temp dir, then renames it to $1.
build_go() {
  log "building the Go SDK client (aws-sdk-go-v2, see tests/sdk/go/go.mod)"
  (cd "$sdk/go" && GOFLAGS=-mod=readonly go build -trimpath -o "$1/sdk-client-go" .)
}

build_java() {
  log "building the Java SDK client (AWS SDK for Java v2, see tests/sdk/java/pom.xml)"
  # Maven writes target/ beside the pom, so build a copy rather than the clone's own tree.
  cp -r "$sdk/java/pom.xml" "$sdk/java/src" "$1/"
  (cd "$1" && mvn -B -q -Dstyle.color=never package >&2)
  mv "$1/target/sdk-client-java.jar" "$1/target/lib" "$1/"
  rm -rf "$1/target" "$1/src" "$1/pom.xml"
}

build_js() {
  log "installing the JavaScript SDK client's packages (AWS SDK v3, see tests/sdk/js/package-lock.json)"
  cp "$sdk/js/package.json" "$sdk/js/package-lock.json" "$1/"
  (cd "$1" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
}

python="$("$here/venv.sh")"
echo "CREDVEND_SDK_PYTHON=$python"

if [ "${1:-}" != "--no-rust" ]; then
  target="${CARGO_TARGET_DIR:-$root/target}"
  log "building the Rust SDK client (cargo example sdk-client-rust)"
  (cd "$root" && cargo build --quiet --locked --example sdk-client-rust)
  echo "CREDVEND_SDK_RUST=$target/debug/examples/sdk-client-rust"
fi

go_out="$CREDVEND_CACHE/sdk-go-$(key_of "$sdk/go" go.mod go.sum main.go)"
with_lock "$go_out.lock" build_into "$go_out" build_go
echo "CREDVEND_SDK_GO=$go_out/sdk-client-go"

java_out="$CREDVEND_CACHE/sdk-java-$(key_of "$sdk/java" pom.xml $(cd "$sdk/java" && find src -type f | sort))"
with_lock "$java_out.lock" build_into "$java_out" build_java
echo "CREDVEND_SDK_JAVA_JAR=$java_out/sdk-client-java.jar"

js_out="$CREDVEND_CACHE/sdk-js-$(key_of "$sdk/js" package.json package-lock.json)"
with_lock "$js_out.lock" build_into "$js_out" build_js
echo "CREDVEND_SDK_JS_DIR=$js_out"
