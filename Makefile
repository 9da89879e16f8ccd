# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what they need (cached outside the clone, keyed by version) and are idempotent.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Resolved lazily, only by the targets that need them.
PYTHON = $(shell scripts/venv.sh)
# Two lines: kube-apiserver, then etcd (see scripts/k8s-bins.sh).
K8S_BINS = $(shell scripts/k8s-bins.sh)
# The helm CLI the chart tests lint and render with (see scripts/helm-bin.sh).
HELM = $(shell scripts/helm-bin.sh)
# CREDVEND_SDK_*=path words for the SDK conformance clients (the Rust one is a cargo example,
# built here because `cargo test --all-targets` compiles examples as tests, not as programs).
SDK_ENV = $(shell scripts/sdk-clients.sh)

.PHONY: help
help:
	@echo "make demo   run the end-to-end demo (installs what it needs)"
	@echo "make test   run every check and test (fmt, clippy, cargo-deny, fuzz smoke, unit, integration)"
	@echo "make fuzz   fuzz every parser for FUZZ_RUNS executions (default 1000000) and minimize fuzz/corpus"

.PHONY: venv
venv:
	@scripts/venv.sh >/dev/null

.PHONY: k8s-bins
k8s-bins:
	@scripts/k8s-bins.sh >/dev/null

.PHONY: helm-bin
helm-bin:
	@scripts/helm-bin.sh >/dev/null

.PHONY: sdks
sdks:
	scripts/sdk-clients.sh

# Runs the SDK conformance suite and regenerates the README's compatibility section from it.
.PHONY: sdk-matrix
sdk-matrix:
	scripts/sdk-matrix.sh

.PHONY: lint
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	"$$(scripts/cargo-deny.sh)" deny --log-level error check bans licenses sources

# The fuzz targets (fuzz/, nightly via cargo-fuzz, built under the cache dir; see
# scripts/fuzz.sh). `fuzz-smoke` replays each target's corpus and fuzzes it for seconds.
.PHONY: fuzz
fuzz:
	scripts/fuzz.sh run

.PHONY: fuzz-smoke
fuzz-smoke:
	scripts/fuzz.sh smoke

.PHONY: test
test: lint k8s-bins fuzz-smoke
	CREDVEND_PYTHON="$(PYTHON)" \
	CREDVEND_KUBE_APISERVER="$(word 1,$(K8S_BINS))" CREDVEND_ETCD="$(word 2,$(K8S_BINS))" \
	CREDVEND_HELM="$(HELM)" \
	$(SDK_ENV) cargo test --locked --lib --bins --tests --benches --no-fail-fast

.PHONY: demo
demo: k8s-bins helm-bin
	CREDVEND_PYTHON="$(PYTHON)" \
	CREDVEND_KUBE_APISERVER="$(word 1,$(K8S_BINS))" CREDVEND_ETCD="$(word 2,$(K8S_BINS))" \
	CREDVEND_HELM="$(HELM)" cargo test --locked --test demo

# The agent alone: moto, the agent with a token file, and boto3 (no Kubernetes).
.PHONY: demo-agent
demo-agent:
	CREDVEND_PYTHON="$(PYTHON)" scripts/demo.sh
