# tests/browser/browser.mk: headless Chromium against quic-ingress (tests/browser/*.mjs).
# Included from the root Makefile (which defines CACHE and `build`).
#
#   browser-deps   Debian's chromium, and playwright-core from package-lock.json (npm ci),
#                  both only when missing or when the lock file changed
#   test-browser   build quic-ingress, then run the browser tests (node --test)
#
# playwright-core drives the system Chromium over the DevTools protocol; it never downloads
# a browser. node_modules stays in tests/browser (ignored by git), npm's cache in $(CACHE).
BROWSER_DIR := tests/browser
BROWSER_STAMP := $(BROWSER_DIR)/node_modules/.installed-$(shell cat $(BROWSER_DIR)/package-lock.json 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: browser-deps test-browser

browser-deps: $(BROWSER_STAMP)
	@scripts/ensure-packages.sh chromium

$(BROWSER_STAMP): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	cd $(BROWSER_DIR) && npm ci --cache $(CACHE)/npm --no-audit --no-fund --loglevel=error
	@touch $@

test-browser: browser-deps build
	cd $(BROWSER_DIR) && QUIC_INGRESS_BIN=$(abspath $(CARGO_TARGET_DIR))/debug/quic-ingress \
	  node --test --test-concurrency=1 browser.test.mjs
