# Fuzzing with cargo-fuzz (nightly, libFuzzer). Included from the Makefile.
#   make fuzz        every target for FUZZ_SECS seconds each (default 60)
#   make fuzz-smoke  every target for FUZZ_SMOKE_SECS seconds each (default 5)
# Corpora live in fuzz/corpus/<target>; new inputs found go to the cache, not the tree,
# so a run leaves the checkout clean. Crashes land in fuzz/artifacts/<target>.
FUZZ_TARGETS := config route_matching normalize_path client_hello header_mapping translate
FUZZ_SECS ?= 60
FUZZ_SMOKE_SECS ?= 5
CARGO_FUZZ_ROOT := $(CACHE)/cargo-fuzz
CARGO_FUZZ := $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz
FUZZ_TARGET_DIR := $(CACHE)/fuzz-target
FUZZ_WORK := $(CACHE)/fuzz-corpus
# cargo-fuzz runs as a cargo subcommand of the nightly toolchain.
CARGO_FUZZ_RUN := PATH=$(CARGO_FUZZ_ROOT)/bin:$$PATH cargo +nightly fuzz

.PHONY: fuzz fuzz-smoke fuzz-build cargo-fuzz

cargo-fuzz: $(CARGO_FUZZ)

$(CARGO_FUZZ):
	CARGO_INSTALL_ROOT=$(CARGO_FUZZ_ROOT) cargo install cargo-fuzz --locked --version 0.13.2

fuzz-build: $(CARGO_FUZZ)
	cd fuzz && $(CARGO_FUZZ_RUN) build --target-dir $(FUZZ_TARGET_DIR) -O

# One target: a working corpus seeded from the checked-in one, then a timed run.
define fuzz_run
	@mkdir -p $(FUZZ_WORK)/$(1)
	@cp -n fuzz/corpus/$(1)/* $(FUZZ_WORK)/$(1)/ 2>/dev/null || true
	set -o pipefail; cd fuzz && $(CARGO_FUZZ_RUN) run --target-dir $(FUZZ_TARGET_DIR) -O $(1) $(FUZZ_WORK)/$(1) -- \
		-max_total_time=$(2) -print_final_stats=1 -rss_limit_mb=2048 2>&1 \
		| { grep -E 'stat::number_of_executed_units|ERROR|panicked|SUMMARY|Test unit written' || true; } | sed 's/^/$(1): /'

endef

fuzz: fuzz-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_run,$(t),$(FUZZ_SECS)))

fuzz-smoke: fuzz-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_run,$(t),$(FUZZ_SMOKE_SECS)))
