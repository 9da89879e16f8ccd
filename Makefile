# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what they need (cached outside the clone, keyed by version) and are idempotent.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# $(call installed,SCRIPT): what an installer script prints. An installer that fails stops make
# right there, with the script's own messages (its stderr is never captured) and this line,
# instead of an empty path that a test trips over minutes later.
installed = $(strip $(eval _installed := $(shell $(1)))$(if $(filter 0,$(.SHELLSTATUS)),$(_installed),$(error $(1) failed; its messages are above)))

# Resolved lazily, only by the targets that need them.
PYTHON = $(call installed,scripts/venv.sh)
# Five lines: kube-apiserver, etcd, kubelet, controller-manager, scheduler (scripts/k8s-bins.sh).
K8S_BINS = $(call installed,scripts/k8s-bins.sh)
# The oldest supported release (README "Compatibility"): kube-apiserver, then etcd.
K8S_OLDEST = $(call installed,scripts/k8s-bins.sh tests/k8s-oldest)
# The test node's other parts (tests/support/node.rs): containerd's directory, the sandbox
# program, the static Go SDK client of the app image. `node-bins` builds them first, so a
# failure stops make with the script's own message; these lookups then hit the cache.
NODE_ENV = CREDVEND_KUBELET="$(word 3,$(K8S_BINS))" \
	CREDVEND_KUBE_CONTROLLER_MANAGER="$(word 4,$(K8S_BINS))" \
	CREDVEND_KUBE_SCHEDULER="$(word 5,$(K8S_BINS))" \
	CREDVEND_CONTAINERD_DIR="$(call installed,scripts/containerd-bin.sh)" \
	CREDVEND_PAUSE="$(call installed,scripts/pause-bin.sh)" \
	CREDVEND_SDK_GO_STATIC="$(call installed,scripts/sdk-go-static.sh)"
# The helm CLI the chart tests lint and render with (see scripts/helm-bin.sh).
HELM = $(call installed,scripts/helm-bin.sh)
# The cert-manager and Prometheus Operator CRDs the chart tests apply (scripts/chart-crds.sh).
CHART_CRDS = $(call installed,scripts/chart-crds.sh)
# promtool, which unit-tests the chart's alerts (see scripts/promtool-bin.sh).
PROMTOOL = $(call installed,scripts/promtool-bin.sh)
# The benchmark's load generator and baseline servers (scripts/wrk-bin.sh,
# scripts/bench-baselines.sh).
BENCH_ENV = CREDVEND_WRK="$(call installed,scripts/wrk-bin.sh)" \
	CREDVEND_BENCH_BASELINES="$(call installed,scripts/bench-baselines.sh)"
# CREDVEND_SDK_*=path words for the SDK conformance clients (the Rust one is a cargo example,
# built here because `cargo test --all-targets` compiles examples as tests, not as programs).
SDK_ENV = $(call installed,scripts/sdk-clients.sh)

.PHONY: help
help:
	@echo "make demo   run the end-to-end demo (installs what it needs)"
	@echo "make test   run every check and test (fmt, clippy, cargo-deny, fuzz smoke, unit, integration)"
	@echo "make bench  measure the agent, the endpoint and the webhook against baselines; writes BENCHMARKS.md"
	@echo "make fuzz   fuzz every parser for FUZZ_RUNS executions (default 1000000) and minimize fuzz/corpus"

.PHONY: venv
venv:
	@scripts/venv.sh >/dev/null

.PHONY: k8s-bins
k8s-bins:
	@scripts/k8s-bins.sh >/dev/null

.PHONY: k8s-oldest
k8s-oldest:
	@scripts/k8s-bins.sh tests/k8s-oldest >/dev/null

# runc and the CNI plugins from apt (skipped when installed), then containerd, the sandbox
# program and the app image's Go client (cached builds).
.PHONY: node-bins
node-bins:
	@scripts/node-deps.sh
	@scripts/containerd-bin.sh >/dev/null
	@scripts/pause-bin.sh >/dev/null
	@scripts/sdk-go-static.sh >/dev/null

.PHONY: helm-bin
helm-bin:
	@scripts/helm-bin.sh >/dev/null

.PHONY: promtool-bin
promtool-bin:
	@scripts/promtool-bin.sh >/dev/null

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
	deny="$$(scripts/cargo-deny.sh)" && "$$deny" deny --log-level error check bans licenses sources

# The fuzz targets (fuzz/, nightly via cargo-fuzz, built under the cache dir; see
# scripts/fuzz.sh). `fuzz-smoke` replays each target's corpus and fuzzes it for seconds.
.PHONY: fuzz
fuzz:
	scripts/fuzz.sh run

.PHONY: fuzz-smoke
fuzz-smoke:
	scripts/fuzz.sh smoke

.PHONY: test
test: lint k8s-bins k8s-oldest node-bins helm-bin fuzz-smoke
	CREDVEND_PYTHON="$(PYTHON)" \
	CREDVEND_KUBE_APISERVER="$(word 1,$(K8S_BINS))" CREDVEND_ETCD="$(word 2,$(K8S_BINS))" \
	CREDVEND_KUBE_APISERVER_OLDEST="$(word 1,$(K8S_OLDEST))" CREDVEND_ETCD_OLDEST="$(word 2,$(K8S_OLDEST))" \
	$(NODE_ENV) CREDVEND_HELM="$(HELM)" CREDVEND_CHART_CRDS="$(CHART_CRDS)" CREDVEND_PROMTOOL="$(PROMTOOL)" \
	$(SDK_ENV) $(BENCH_ENV) cargo test --locked --lib --bins --tests --benches --no-fail-fast

# The release binary, moto, a real control plane, wrk and the baselines of bench/baseline
# (tests/bench/system); prints one table and writes BENCHMARKS.md. `make test` runs the same
# code as a smoke run of seconds.
.PHONY: bench
bench: k8s-bins
	CREDVEND_PYTHON="$(PYTHON)" \
	CREDVEND_KUBE_APISERVER="$(word 1,$(K8S_BINS))" CREDVEND_ETCD="$(word 2,$(K8S_BINS))" \
	$(BENCH_ENV) cargo bench --locked --bench system

.PHONY: demo
demo: k8s-bins node-bins helm-bin
	CREDVEND_PYTHON="$(PYTHON)" \
	CREDVEND_KUBE_APISERVER="$(word 1,$(K8S_BINS))" CREDVEND_ETCD="$(word 2,$(K8S_BINS))" \
	$(NODE_ENV) CREDVEND_HELM="$(HELM)" cargo test --locked --test demo

# The agent alone: moto, the agent with a token file, and boto3 (no Kubernetes).
.PHONY: demo-agent
demo-agent:
	CREDVEND_PYTHON="$(PYTHON)" scripts/demo.sh
