# e2e/testenv.mk: build and run the control plane for cluster tests (embedded etcd,
# kube-apiserver and kubectl in one Go binary; see e2e/README.md).
#
# Included from the root Makefile; paths are relative to the repository root. Also
# usable on its own: make -f e2e/testenv.mk testenv-up
#
#   testenv-build      build the binary once per machine and source change (cached)
#   testenv-up         start it in the background, wait for /readyz, write kubeconfigs
#   testenv-down       stop it (SIGTERM: apiserver, then etcd; data removed)
#   test-e2e           build quic-ingress, run the cluster tests (each test binary starts
#                      its own control plane unless QUIC_INGRESS_TEST_KUBECONFIG names a
#                      cluster; tests that run the controller need root for a netns)
#   e2e-deps           install iproute2 if `ip` is missing
#   helm               install helm into the cache (for chart tests)

TESTENV_SRC   := e2e/testenv
TESTENV_DIR   ?= target/testenv
TESTENV_CACHE ?= $(HOME)/.cache/quic-ingress
# Two compile jobs: each can take over a GB on the large apiserver packages, and the
# reference machine has two cores.
TESTENV_GOENV := GOMODCACHE=$(TESTENV_CACHE)/go/mod GOCACHE=$(TESTENV_CACHE)/go/build \
                 GOFLAGS="-p=2 -buildvcs=false"

# Lazily evaluated once (the $(eval) rewrites the variable on first use), so including
# this file costs nothing for targets that do not need them.
TESTENV_K8S_VERSION = $(eval TESTENV_K8S_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" { print $$2; exit }' $(TESTENV_SRC)/go.mod))$(TESTENV_K8S_VERSION)
TESTENV_K8S_MINOR = $(word 2,$(subst ., ,$(TESTENV_K8S_VERSION)))
# Both version packages: component-base for the server, client-go for kubectl.
TESTENV_LDFLAGS = -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
  -X $(p).gitVersion=$(TESTENV_K8S_VERSION) -X $(p).gitMajor=1 \
  -X $(p).gitMinor=$(TESTENV_K8S_MINOR) -X $(p).gitTreeState=clean)
# The binary's name carries a hash of everything that goes into it, so a change to the
# sources, the module graph, the flags or the Go version builds a new one.
TESTENV_HASH = $(eval TESTENV_HASH := $(shell { go env GOVERSION; echo '$(TESTENV_LDFLAGS)'; \
  cat $(TESTENV_SRC)/go.mod $(TESTENV_SRC)/go.sum $(TESTENV_SRC)/*.go; } | sha256sum | cut -c1-16))$(TESTENV_HASH)
TESTENV_BIN = $(TESTENV_CACHE)/bin/testenv-$(TESTENV_HASH)

HELM_VERSION ?= v3.22.0
HELM_BIN = $(TESTENV_CACHE)/bin/helm-$(HELM_VERSION)

.PHONY: testenv-build testenv-print-bin testenv-up testenv-down test-e2e e2e-deps helm helm-print-bin

testenv-build: $(TESTENV_BIN)
	@echo "testenv: $(TESTENV_BIN)" >&2

# For the Rust helper: builds if needed, prints only the path on stdout.
testenv-print-bin: $(TESTENV_BIN)
	@echo $(TESTENV_BIN)

$(TESTENV_CACHE)/bin/testenv-%:
	@mkdir -p $(@D)
	@echo "testenv: building kube-apiserver $(TESTENV_K8S_VERSION), etcd and kubectl (the first build on a machine takes several minutes)" >&2
	@start=$$(date +%s); \
	cd $(TESTENV_SRC) && $(TESTENV_GOENV) go build -trimpath -ldflags '$(TESTENV_LDFLAGS)' -o $@.tmp . && \
	mv $@.tmp $@ && echo "testenv: built in $$(( $$(date +%s) - start ))s" >&2
	@# Keep the three newest builds; older source versions are unlikely to come back.
	@ls -t $(@D)/testenv-* 2>/dev/null | grep -v '\.tmp$$' | tail -n +4 | xargs -r rm -f

testenv-up: $(TESTENV_BIN)
	@mkdir -p $(TESTENV_DIR)/bin
	@ln -sf $(TESTENV_BIN) $(TESTENV_DIR)/bin/kubectl
	@dir=$(TESTENV_DIR); \
	if [ -f $$dir/pid ] && [ -f $$dir/ready ] && kill -0 $$(cat $$dir/pid) 2>/dev/null; then \
	  echo "testenv: already running (pid $$(cat $$dir/pid))"; \
	else \
	  rm -f $$dir/ready $$dir/pid; \
	  setsid $(TESTENV_BIN) --out-dir $$dir > $$dir/testenv.log 2>&1 < /dev/null & \
	  pid=$$!; echo $$pid > $$dir/pid; \
	  i=0; while [ ! -f $$dir/ready ]; do \
	    if ! kill -0 $$pid 2>/dev/null; then \
	      echo "testenv: exited before it was ready; last lines of $$dir/testenv.log:" >&2; \
	      tail -n 30 $$dir/testenv.log >&2; rm -f $$dir/pid; exit 1; \
	    fi; \
	    i=$$((i + 1)); if [ $$i -gt 1200 ]; then \
	      echo "testenv: not ready after 120s; see $$dir/testenv.log" >&2; kill $$pid; exit 1; \
	    fi; \
	    sleep 0.1; \
	  done; \
	  echo "testenv: ready $$(cat $$dir/ready)"; \
	fi; \
	abs=$$(cd $$dir && pwd); \
	echo "Use it with:"; \
	echo "  export KUBECONFIG=$$abs/kubeconfig     # admin (system:masters)"; \
	echo "  export PATH=$$abs/bin:\$$PATH         # kubectl $(TESTENV_K8S_VERSION), built in"; \
	echo "  kubectl get ns"; \
	echo "Other identities: $$abs/kubeconfig-nobody, $$abs/kubeconfig-controller (no permissions)."; \
	echo "With KUBECONFIG exported, 'make test-e2e' reuses this control plane. Stop it with 'make testenv-down'."

testenv-down:
	@dir=$(TESTENV_DIR); \
	if [ ! -f $$dir/pid ]; then echo "testenv: not running"; exit 0; fi; \
	pid=$$(cat $$dir/pid); \
	if kill -0 $$pid 2>/dev/null && grep -q testenv /proc/$$pid/cmdline 2>/dev/null; then \
	  kill -TERM $$pid; i=0; \
	  while kill -0 $$pid 2>/dev/null; do \
	    i=$$((i + 1)); if [ $$i -gt 300 ]; then echo "testenv: still running after 30s, killing" >&2; kill -KILL $$pid; break; fi; \
	    sleep 0.1; \
	  done; \
	  echo "testenv: stopped (pid $$pid)"; \
	else \
	  echo "testenv: pid $$pid is not running"; \
	fi; \
	rm -f $$dir/pid $$dir/ready

# The controller and demo backends the cluster tests run: a test crate cannot name another
# package's binary, so it is built first and handed over in QUIC_INGRESS_BIN.
E2E_TARGET_DIR = $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
QUIC_INGRESS_BIN ?= $(abspath $(E2E_TARGET_DIR))/debug/quic-ingress

# `ip` (iproute2) makes the test host's network namespace (see e2e/README.md).
e2e-deps:
	@command -v ip >/dev/null 2>&1 || { \
	  echo "installing: iproute2"; SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq iproute2; }

test-e2e: $(TESTENV_BIN) $(HELM_BIN) e2e-deps
	cargo build -p quic-ingress --bins
	QUIC_INGRESS_BIN=$(QUIC_INGRESS_BIN) QUIC_INGRESS_HELM=$(HELM_BIN) \
	QUIC_INGRESS_TESTENV_BIN=$(TESTENV_BIN) QUIC_INGRESS_TESTENV_DIR=$(abspath $(TESTENV_DIR))/runs \
	  cargo test -p quic-ingress-e2e $(E2E_TEST_ARGS)

# For the chart test: builds helm if needed, prints only its path on stdout.
helm-print-bin: $(HELM_BIN)
	@echo $(HELM_BIN)

helm: $(HELM_BIN)
	@mkdir -p $(TESTENV_DIR)/bin
	@ln -sf $(HELM_BIN) $(TESTENV_DIR)/bin/helm
	@echo "helm: $(HELM_BIN) (linked as $(TESTENV_DIR)/bin/helm)"

$(HELM_BIN):
	@mkdir -p $(@D) $(TESTENV_CACHE)/go/helm-bin
	GOMODCACHE=$(TESTENV_CACHE)/go/mod GOCACHE=$(TESTENV_CACHE)/go/build GOFLAGS="-p=2 -trimpath" \
	  GOBIN=$(TESTENV_CACHE)/go/helm-bin go install \
	  -ldflags '-s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) -X helm.sh/helm/v3/internal/version.gitTreeState=clean' \
	  helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(TESTENV_CACHE)/go/helm-bin/helm $@
