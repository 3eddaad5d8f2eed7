# tests/h2spec.mk: h2spec, the HTTP/2 conformance suite (github.com/summerwind/h2spec), built
# from the Go module proxy once per machine and version, for tests/h2spec.rs. Included from
# the root Makefile (which defines CACHE).
#
#   h2spec        build it into $(CACHE)/bin (idempotent: nothing to do once built)
#   test-h2spec   run only the h2spec test against `quic-ingress serve`
#
# v2.2.1 is the newest release; it predates Go modules (hence +incompatible), so its
# dependencies resolve to their newest versions when it is first built on a machine.
H2SPEC_VERSION ?= v2.2.1+incompatible
H2SPEC_BIN := $(CACHE)/bin/h2spec-$(subst +,-,$(H2SPEC_VERSION))
export QUIC_INGRESS_H2SPEC := $(H2SPEC_BIN)

.PHONY: h2spec test-h2spec

h2spec: $(H2SPEC_BIN)
	@echo "h2spec: $(H2SPEC_BIN)"

$(H2SPEC_BIN):
	@mkdir -p $(@D) $(CACHE)/go/h2spec-bin
	GOMODCACHE=$(CACHE)/go/mod GOCACHE=$(CACHE)/go/build GOFLAGS="-p=2 -trimpath" \
	  GOBIN=$(CACHE)/go/h2spec-bin go install -ldflags '-s -w' \
	  github.com/summerwind/h2spec/cmd/h2spec@$(H2SPEC_VERSION)
	mv $(CACHE)/go/h2spec-bin/h2spec $@

# tests/h2spec.rs is one of the integration tests (`cargo test --test '*'`).
test-integration: $(H2SPEC_BIN)

test-h2spec: $(H2SPEC_BIN) build
	cargo test -p quic-ingress --test h2spec -- --nocapture
