# quic-ingress: `make run` (quick start) and `make test` (everything) set up what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE ?= $(HOME)/.cache/quic-ingress
# Build output lives outside the clone so fresh clones (CI) reuse it.
export CARGO_TARGET_DIR ?= $(CACHE)/cargo-target
export CARGO_TERM_COLOR ?= never
# Incremental state is for edit-compile loops in a shell (./target); for these builds it
# only grows the cache (5.9 GiB of 24 on 2026-12-03).
export CARGO_INCREMENTAL ?= 0
VENV := $(CACHE)/venv
PYTHON := $(VENV)/bin/python3
export QUIC_INGRESS_PYTHON := $(PYTHON)

-include e2e/testenv.mk
-include e2e/gateway.mk
-include e2e/node.mk
-include e2e/conformance.mk
-include tests/h2spec.mk tests/browser/browser.mk
-include fuzz/fuzz.mk
-include bench/routes.mk bench/idle.mk bench/perf.mk

# Jaeger (an OTLP receiver with a query API) for the trace tests, built from the Go module
# proxy once per machine and version (see tools/jaeger/go.mod).
JAEGER_BIN := $(CACHE)/bin/jaeger-$(shell cat tools/jaeger/go.mod tools/jaeger/go.sum | sha256sum | cut -c1-12)
export QUIC_INGRESS_JAEGER := $(JAEGER_BIN)

bench: cache-trim $(if $(wildcard bench/perf.mk),bench-cpu bench-bulk bench-h3) $(if $(wildcard bench/routes.mk),bench-routes) \
  $(if $(wildcard bench/idle.mk),bench-idle)
	@echo "make bench: every benchmark ran"

.PHONY: help run build release test lint bench test-unit test-integration deps python-deps system-deps jaeger jaeger-path \
  cache-trim

help:
	@echo "make run   - build, start three demo backends and the proxy on 127.0.0.1:8443"
	@echo "make test  - install test dependencies, lint, and run every test (including the cluster and node tests; needs root)"
	@echo "make bench - every benchmark beside its peer (Caddy, nginx), loopback, bounded in time"

build:
	cargo build --bins

release:
	cargo build --release --bins

run: release
	scripts/run-demo.sh "$(CARGO_TARGET_DIR)/release/quic-ingress" examples/standalone.yaml

# Bounds the cache before a long run: stale artifacts go, then whole build directories if
# the cache is over its cap or the disk short of space (see the script's header).
cache-trim:
	@scripts/cache-trim.sh "$(CACHE)"

## Test dependencies: Debian packages and a Python venv with the third-party HTTP/3 client.
deps: system-deps python-deps

system-deps:
	@scripts/ensure-packages.sh curl prometheus

python-deps: $(VENV)/.installed-$(shell sha256sum tests/clients/requirements.txt 2>/dev/null | cut -c1-12)

$(VENV)/.installed-%:
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

jaeger: $(JAEGER_BIN)

# For scripts: builds if needed, prints only the path.
jaeger-path: $(JAEGER_BIN)
	@echo $(JAEGER_BIN)

$(JAEGER_BIN):
	@mkdir -p $(@D)
	@echo "building Jaeger for the trace tests (the first build on a machine takes minutes)" >&2
	cd tools/jaeger && GOMODCACHE=$(CACHE)/go/mod GOCACHE=$(CACHE)/go/build GOFLAGS="-p=2 -buildvcs=false" \
		go build -trimpath -ldflags "-s -w" -o $@.tmp github.com/jaegertracing/jaeger/cmd/jaeger
	@mv $@.tmp $@

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --workspace -- -D warnings

test-unit:
	cargo test --lib --bins
	cargo test -p heap-purge

test-integration: deps build jaeger
	cargo test -p quic-ingress --test '*'

test: cache-trim deps lint test-unit test-integration test-browser fuzz-smoke $(if $(wildcard e2e/testenv.mk),test-e2e) \
  $(if $(wildcard e2e/node.mk),test-node) $(if $(wildcard e2e/conformance.mk),test-conformance)
	@echo "make test: all suites passed"
