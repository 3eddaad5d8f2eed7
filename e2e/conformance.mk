# e2e/conformance.mk: the Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance,
# the version in e2e/conformance/go.mod) against quic-ingress installed with helm on the
# node cluster of e2e/node.mk, run twice: with the suite's own HTTP/1.1 + HTTP/2 client and
# with an HTTP/3 client. Reports go to conformance/reports/. See e2e/conformance/README.md.
#
# Included from the root Makefile after e2e/node.mk.
#
#   conformance-images  the suite's backend images, built here from the same module
#                       (echo-basic under every tag its manifests name; CoreDNS, which its
#                       base manifests deploy) as OCI archives beside the node's images
#   conformance         images, cluster-up, helm install, both runs, cluster-down
#                       (CONFORMANCE_RUN_TEST=Name runs one test; CONFORMANCE_SKIP=A,B skips
#                       tests; CONFORMANCE_PROTOCOLS="tcp h3"; NODE_KEEP=1 keeps the cluster)
#   test-conformance    the part of make test: both protocols, both profiles, without the
#                       tests the README lists as known failures, reports to a scratch
#                       directory (the committed reports come from make conformance)

CONFORMANCE_SRC     := e2e/conformance
CONFORMANCE_GOENV    = $(TESTENV_GOENV) CGO_ENABLED=0
GATEWAY_API_VERSION  = $(eval GATEWAY_API_VERSION := $(shell awk '$$1 == "sigs.k8s.io/gateway-api/conformance" { print $$2; exit }' $(CONFORMANCE_SRC)/go.mod))$(GATEWAY_API_VERSION)
# The tags of echo-basic that the suite's manifests of this version use.
ECHO_BASIC_TAGS     := v1.5.1 v1.6.0-dev.2 v1.6.0-dev.3
COREDNS_VERSION     := v1.12.2
CONFORMANCE_BIN_DIR := $(TESTENV_CACHE)/bin/conformance-$(COREDNS_VERSION)
CONFORMANCE_RUN_TEST ?=
CONFORMANCE_SKIP ?=
CONFORMANCE_SKIP_H3 ?=
CONFORMANCE_PROTOCOLS ?= tcp h3
CONFORMANCE_REPORT_DIR ?= conformance/reports
# Known failures, each explained in the README ("Gateway API conformance"): none left.
CONFORMANCE_KNOWN_FAILURES :=
CONFORMANCE_KNOWN_FAILURES_H3 :=

.PHONY: conformance-images conformance test-conformance

$(CONFORMANCE_BIN_DIR)/coredns:
	@mkdir -p $(@D)
	@echo "conformance: building CoreDNS $(COREDNS_VERSION) from its Go module" >&2
	cd $(CONFORMANCE_SRC) && $(CONFORMANCE_GOENV) GOBIN=$(abspath $(@D)) \
	  go install -trimpath -ldflags '-s -w' github.com/coredns/coredns@$(COREDNS_VERSION)

conformance-images: $(CONFORMANCE_BIN_DIR)/coredns
	@mkdir -p $(IMAGE_DIR)/echo-basic $(IMAGE_DIR)/coredns
	cd $(CONFORMANCE_SRC) && $(CONFORMANCE_GOENV) go build -trimpath -ldflags '-s -w' \
	  -o $(abspath $(IMAGE_DIR))/echo-basic/echo-basic sigs.k8s.io/gateway-api/conformance/echo-basic
	@cp $(CONFORMANCE_BIN_DIR)/coredns $(IMAGE_DIR)/coredns/coredns
	@for tag in $(ECHO_BASIC_TAGS); do \
	  scripts/build-image.sh $(CONFORMANCE_SRC)/echo-basic.Containerfile $(IMAGE_DIR)/echo-basic \
	    registry.k8s.io/gateway-api/echo-basic:$$tag $(IMAGE_DIR)/echo-basic-$$tag.oci.tar || exit 1; \
	done
	scripts/build-image.sh $(CONFORMANCE_SRC)/coredns.Containerfile $(IMAGE_DIR)/coredns \
	  registry.k8s.io/coredns/coredns:$(COREDNS_VERSION) $(IMAGE_DIR)/coredns.oci.tar

conformance: $(HELM_BIN) image conformance-images $(NODE_BIN) $(TESTENV_BIN)
	@was_up=$$(scripts/node-cluster.sh status $(NODE_DIR) $(NODE_BIN) && echo yes); \
	cleanup() { if [ -z "$$was_up" ] && [ -z "$(NODE_KEEP)" ]; then $(MAKE) --no-print-directory cluster-down; fi; }; \
	trap cleanup EXIT; trap 'exit 130' INT TERM; \
	$(MAKE) --no-print-directory cluster-up || exit 1; \
	rc=0; \
	$(TESTENV_GOENV) GATEWAY_API_VERSION=$(GATEWAY_API_VERSION) HELM=$(HELM_BIN) \
	  KUBECTL=$(abspath $(NODE_DIR))/bin/kubectl KUBECONFIG=$(abspath $(NODE_DIR))/kubeconfig \
	  IMAGE=$(IMAGE) RUN_TEST=$(CONFORMANCE_RUN_TEST) SKIP_TESTS=$(CONFORMANCE_SKIP) SKIP_TESTS_H3=$(CONFORMANCE_SKIP_H3) \
	  PROTOCOLS="$(CONFORMANCE_PROTOCOLS)" REPORT_DIR=$(abspath $(CONFORMANCE_REPORT_DIR)) \
	  scripts/conformance.sh || rc=$$?; \
	exit $$rc

test-conformance:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory conformance CONFORMANCE_SKIP=$(CONFORMANCE_KNOWN_FAILURES) \
	  CONFORMANCE_SKIP_H3=$(CONFORMANCE_KNOWN_FAILURES_H3) \
	  CONFORMANCE_REPORT_DIR=$(abspath target)/conformance-reports && \
	grep -H 'summary:' $(abspath target)/conformance-reports/*.yaml && \
	echo "test-conformance: passed in $$(( $$(date +%s) - start )) s (reports in $(abspath target)/conformance-reports)"
