# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what they need (cached outside the clone, keyed by version) and are idempotent.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Resolved lazily, only by the targets that need them.
PYTHON = $(shell scripts/venv.sh)
# Two lines: kube-apiserver, then etcd (see scripts/k8s-bins.sh).
K8S_BINS = $(shell scripts/k8s-bins.sh)

.PHONY: help
help:
	@echo "make demo   run the end-to-end demo (installs what it needs)"
	@echo "make test   run every check and test (fmt, clippy, cargo-deny, unit, integration)"

.PHONY: venv
venv:
	@scripts/venv.sh >/dev/null

.PHONY: k8s-bins
k8s-bins:
	@scripts/k8s-bins.sh >/dev/null

.PHONY: lint
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	"$$(scripts/cargo-deny.sh)" deny --log-level error check bans licenses sources

.PHONY: test
test: lint k8s-bins
	CREDVEND_PYTHON="$(PYTHON)" \
	CREDVEND_KUBE_APISERVER="$(word 1,$(K8S_BINS))" CREDVEND_ETCD="$(word 2,$(K8S_BINS))" \
	cargo test --locked --all-targets

.PHONY: demo
demo:
	CREDVEND_PYTHON="$(PYTHON)" scripts/demo.sh
