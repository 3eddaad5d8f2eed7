# e2e/gateway.mk: the Gateway API CRDs for the cluster tests, from the Go module
# sigs.k8s.io/gateway-api itself (never copied into this repository). Included from the
# root Makefile; also usable alone: make -f e2e/gateway.mk gateway-api-crds-print-dir
#
#   gateway-api-crds             download the module into the Go module cache if missing
#   gateway-api-crds-print-dir   the same, then print the standard-channel CRD directory
#
# `make test-e2e` depends on gateway-api-crds and passes the directory to the tests in
# QUIC_INGRESS_GATEWAY_CRDS; they apply it with kubectl (server-side, idempotent).

GATEWAY_API_VERSION ?= v1.6.3
GATEWAY_API_CACHE   ?= $(HOME)/.cache/quic-ingress
GATEWAY_API_MOD      = $(GATEWAY_API_CACHE)/go/mod/sigs.k8s.io/gateway-api@$(GATEWAY_API_VERSION)
GATEWAY_API_CRDS     = $(GATEWAY_API_MOD)/config/crd/standard
export QUIC_INGRESS_GATEWAY_CRDS = $(GATEWAY_API_CRDS)

.PHONY: gateway-api-crds gateway-api-crds-print-dir

gateway-api-crds: $(GATEWAY_API_CRDS)/gateway.networking.k8s.io_httproutes.yaml

gateway-api-crds-print-dir: gateway-api-crds
	@echo $(GATEWAY_API_CRDS)

# The module cache is read-only and verified against the checksum database, so a
# download is all it takes; a second run finds the file and does nothing.
$(GATEWAY_API_CRDS)/gateway.networking.k8s.io_httproutes.yaml:
	@echo "gateway-api: downloading sigs.k8s.io/gateway-api@$(GATEWAY_API_VERSION) into the Go module cache" >&2
	cd / && GOMODCACHE=$(GATEWAY_API_CACHE)/go/mod GOFLAGS=-mod=mod go mod download sigs.k8s.io/gateway-api@$(GATEWAY_API_VERSION)
	@test -f $@ || { echo "gateway-api: $@ missing from the module" >&2; exit 1; }

# Cluster tests need the CRDs.
test-e2e: gateway-api-crds
