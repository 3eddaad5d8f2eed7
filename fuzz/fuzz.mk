# Fuzzing with cargo-fuzz (nightly, libFuzzer). Included from the Makefile.
#   make fuzz        every target for FUZZ_SECS seconds each (default 60)
#   make fuzz-smoke  every target for FUZZ_SMOKE_SECS seconds each (default 3), in `make
#                    test`: built in the dev profile without a sanitizer, so a cold build
#                    takes minutes, not the half hour the optimised ASan build can take
# Corpora live in fuzz/corpus/<target>; new inputs found go to the cache, not the tree,
# so a run leaves the checkout clean. Crashes land in fuzz/artifacts/<target>.
FUZZ_TARGETS := config route_matching normalize_path client_hello header_mapping translate proxy_protocol
FUZZ_SECS ?= 60
FUZZ_SMOKE_SECS ?= 3
CARGO_FUZZ_ROOT := $(CACHE)/cargo-fuzz
CARGO_FUZZ := $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz
FUZZ_TARGET_DIR := $(CACHE)/fuzz-target
FUZZ_SMOKE_TARGET_DIR := $(CACHE)/fuzz-target-smoke
FUZZ_WORK := $(CACHE)/fuzz-corpus
# cargo-fuzz runs as a cargo subcommand of the nightly toolchain.
CARGO_FUZZ_RUN := PATH=$(CARGO_FUZZ_ROOT)/bin:$$PATH cargo +nightly fuzz

.PHONY: fuzz fuzz-smoke fuzz-build fuzz-smoke-build cargo-fuzz

cargo-fuzz: $(CARGO_FUZZ)

$(CARGO_FUZZ):
	CARGO_INSTALL_ROOT=$(CARGO_FUZZ_ROOT) cargo install cargo-fuzz --locked --version 0.13.2

FUZZ_FULL := --target-dir $(FUZZ_TARGET_DIR) -O
FUZZ_SMOKE := --target-dir $(FUZZ_SMOKE_TARGET_DIR) --dev -s none

fuzz-build: $(CARGO_FUZZ)
	cd fuzz && $(CARGO_FUZZ_RUN) build $(FUZZ_FULL)

fuzz-smoke-build: $(CARGO_FUZZ)
	cd fuzz && $(CARGO_FUZZ_RUN) build $(FUZZ_SMOKE)

# One target ($(1)) for $(2) seconds with build flags $(3): a working corpus seeded from
# the checked-in one, then a timed run; a crash fails the run.
define fuzz_run
	@mkdir -p $(FUZZ_WORK)/$(1)
	@cp -n fuzz/corpus/$(1)/* $(FUZZ_WORK)/$(1)/ 2>/dev/null || true
	set -o pipefail; cd fuzz && $(CARGO_FUZZ_RUN) run $(3) $(1) $(FUZZ_WORK)/$(1) -- \
		-max_total_time=$(2) -print_final_stats=1 -rss_limit_mb=2048 2>&1 \
		| { grep -E 'stat::number_of_executed_units|ERROR|panicked|SUMMARY|Test unit written' || true; } | sed 's/^/$(1): /'

endef

fuzz: fuzz-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_run,$(t),$(FUZZ_SECS),$(FUZZ_FULL)))

fuzz-smoke: fuzz-smoke-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_run,$(t),$(FUZZ_SMOKE_SECS),$(FUZZ_SMOKE)))
