# e2e/node.mk: a single-node Kubernetes cluster on this machine that runs real pods, for
# the node tests (see e2e/README.md, "Node cluster").
#
# Included from the root Makefile (after e2e/testenv.mk, whose API server it reuses).
#
#   node-build        build the node binary once per machine and source change (cached)
#   image             build the quic-ingress and pause images into OCI archives
#   cluster-up        start containerd, the API server, controller-manager, scheduler,
#                     kubelet, kube-proxy and the LoadBalancer address helper
#   cluster-down      stop everything and remove every trace (mounts, netns, bridge,
#                     iptables chains, containerd state)
#   test-node         make image, cluster-up, run e2e/tests/node.rs against it

NODE_SRC   := e2e/node
NODE_DIR   ?= target/node
IMAGE_DIR  ?= target/image
NODE_BIN = $(TESTENV_CACHE)/bin/node-$(NODE_HASH)
NODE_HASH = $(eval NODE_HASH := $(shell { go env GOVERSION; echo '$(TESTENV_LDFLAGS)'; \
  cat $(NODE_SRC)/go.mod $(NODE_SRC)/go.sum $(filter-out %_test.go,$(wildcard $(NODE_SRC)/*.go)); } | sha256sum | cut -c1-16))$(NODE_HASH)

.PHONY: node-build node-print-bin

node-build: $(NODE_BIN)
	@echo "node: $(NODE_BIN)" >&2

node-print-bin: $(NODE_BIN)
	@echo $(NODE_BIN)

$(TESTENV_CACHE)/bin/node-%:
	@mkdir -p $(@D)
	@echo "node: building kube-controller-manager, kube-scheduler, kubelet and kube-proxy $(TESTENV_K8S_VERSION) (the first build on a machine takes several minutes)" >&2
	@start=$$(date +%s); \
	cd $(NODE_SRC) && $(TESTENV_GOENV) go build -trimpath -ldflags '$(TESTENV_LDFLAGS)' -o $@.tmp . && \
	mv $@.tmp $@ && echo "node: built in $$(( $$(date +%s) - start ))s" >&2
	@ls -t $(@D)/node-* 2>/dev/null | grep -v '\.tmp$$' | tail -n +4 | xargs -r rm -f

## Images: quic-ingress (Dockerfile) and the pod sandbox image, both FROM scratch.
MUSL_TARGET := x86_64-unknown-linux-musl
IMAGE_REPO  ?= localhost/quic-ingress
IMAGE_TAG   ?= $(shell awk '$$1 == "appVersion:" { gsub(/"/, "", $$2); print $$2 }' charts/quic-ingress/Chart.yaml)
IMAGE       ?= $(IMAGE_REPO):$(IMAGE_TAG)
PAUSE_IMAGE ?= localhost/quic-ingress-pause:1
IMAGE_CONTEXT := $(IMAGE_DIR)/context/rootfs
IMAGE_BIN = $(abspath $(E2E_TARGET_DIR))/$(MUSL_TARGET)/release/quic-ingress

.PHONY: image image-context image-deps node-deps

# What the node cluster and the image build need from Debian, installed when missing
# (fast when present): containerd, runc, the CNI plugins, iptables and conntrack for
# kube-proxy, openssl for kubelet's certificates, buildah when no docker or podman works.
node-deps:
	@scripts/ensure-packages.sh containerd runc iptables conntrack openssl
	@[ -x /usr/lib/cni/bridge ] || { SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
	  echo "installing: containernetworking-plugins"; $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq containernetworking-plugins; }
	@command -v docker >/dev/null 2>&1 || command -v podman >/dev/null 2>&1 || scripts/ensure-packages.sh buildah

image-deps:
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	@command -v musl-gcc >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
	  echo "installing: musl-tools"; $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq musl-tools; }
	@test -s /etc/ssl/certs/ca-certificates.crt || scripts/ensure-packages.sh ca-certificates
	@scripts/ensure-packages.sh file

# A static musl binary (ring's C and assembly build with musl-gcc), stripped, staged with
# the Debian CA bundle and the passwd/group entries of the non-root user the image runs as.
image-context: image-deps
	CARGO_PROFILE_RELEASE_STRIP=symbols nice -n 10 cargo build --release --locked \
	  --target $(MUSL_TARGET) -p quic-ingress --bin quic-ingress
	@rm -rf $(IMAGE_CONTEXT) && mkdir -p $(IMAGE_CONTEXT)/usr/local/bin $(IMAGE_CONTEXT)/etc/ssl/certs $(IMAGE_CONTEXT)/tmp
	@cp $(IMAGE_BIN) $(IMAGE_CONTEXT)/usr/local/bin/quic-ingress
	@cp -L /etc/ssl/certs/ca-certificates.crt $(IMAGE_CONTEXT)/etc/ssl/certs/
	@printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > $(IMAGE_CONTEXT)/etc/passwd
	@printf 'root:x:0:\nnonroot:x:65532:\n' > $(IMAGE_CONTEXT)/etc/group
	@chmod 1777 $(IMAGE_CONTEXT)/tmp
	@file $(IMAGE_CONTEXT)/usr/local/bin/quic-ingress 2>/dev/null | grep -qE 'statically linked|static-pie linked' || \
	  { echo "image: $(IMAGE_BIN) is not statically linked" >&2; exit 1; }

image: image-context
	@mkdir -p $(IMAGE_DIR)/pause
	musl-gcc -static -Os -s -o $(IMAGE_DIR)/pause/pause e2e/node/pause/pause.c
	scripts/build-image.sh e2e/node/pause/Containerfile $(IMAGE_DIR)/pause $(PAUSE_IMAGE) $(IMAGE_DIR)/pause.oci.tar
	scripts/build-image.sh Dockerfile . $(IMAGE) $(IMAGE_DIR)/quic-ingress.oci.tar
	@echo "image: $(IMAGE) in $(IMAGE_DIR)/quic-ingress.oci.tar, $$(du -k $(IMAGE_DIR)/quic-ingress.oci.tar | cut -f1) KiB (binary $$(du -k $(IMAGE_CONTEXT)/usr/local/bin/quic-ingress | cut -f1) KiB)"

## The cluster: scripts/node-cluster.sh does the work; these targets hand it the binaries.
.PHONY: cluster-up cluster-down test-node

cluster-up: node-deps $(NODE_BIN) $(TESTENV_BIN)
	@test -f $(IMAGE_DIR)/quic-ingress.oci.tar -a -f $(IMAGE_DIR)/pause.oci.tar || $(MAKE) --no-print-directory image
	PAUSE_IMAGE=$(PAUSE_IMAGE) scripts/node-cluster.sh up $(NODE_DIR) $(NODE_BIN) $(TESTENV_BIN) $(IMAGE_DIR)

cluster-down:
	scripts/node-cluster.sh down $(NODE_DIR) $(NODE_BIN)

# The node tests (e2e/tests/node.rs, ignored by plain cargo test) against the cluster of
# cluster-up. A cluster this target started is removed afterwards, whatever happened: the
# tests failed, cluster-up failed half-way, or make was interrupted (NODE_KEEP=1 keeps it
# for inspection); one that was already up stays up. The test binary is built before the
# cluster starts, so a compile error leaves nothing to clean.
NODE_TEST_ARGS ?=
NODE_KEEP ?=
NODE_TEST_ENV = QUIC_INGRESS_TEST_KUBECONFIG=$(abspath $(NODE_DIR))/kubeconfig QUIC_INGRESS_IMAGE=$(IMAGE) \
  QUIC_INGRESS_HELM=$(HELM_BIN) QUIC_INGRESS_KUBECTL=$(abspath $(NODE_DIR))/bin/kubectl \
  QUIC_INGRESS_TESTENV_DIR=$(abspath $(TESTENV_DIR))/runs
test-node: node-deps $(HELM_BIN) image $(NODE_BIN) $(TESTENV_BIN)
	cargo test -p quic-ingress-e2e --test node --no-run
	@was_up=$$(scripts/node-cluster.sh status $(NODE_DIR) $(NODE_BIN) && echo yes); \
	cleanup() { if [ -z "$$was_up" ] && [ -z "$(NODE_KEEP)" ]; then $(MAKE) --no-print-directory cluster-down; fi; }; \
	trap cleanup EXIT; trap 'exit 130' INT TERM; \
	$(MAKE) --no-print-directory cluster-up || exit 1; \
	$(NODE_TEST_ENV) cargo test -p quic-ingress-e2e --test node $(NODE_TEST_ARGS) -- --ignored --nocapture

# The node module's own unit tests (the LoadBalancer helper's address choice). Not part of
# make test: the test binary needs the whole module compiled for tests, minutes the first time.
.PHONY: node-unit
node-unit:
	cd $(NODE_SRC) && $(TESTENV_GOENV) go test -trimpath .
