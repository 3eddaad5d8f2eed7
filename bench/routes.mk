# bench/routes.mk: `make bench-routes`, route propagation and memory at scale against the
# real API server (bench/routes.sh; figures in bench/README.md). Included from the root
# Makefile. Needs root, like the cluster tests.
.PHONY: bench-routes

bench-routes:
	bench/routes.sh
