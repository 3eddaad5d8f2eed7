# `make bench-idle`: idle HTTP/3 connections on one replica (bench/idle_quic.sh). Included
# from the Makefile. BENCH_IDLE connections, a BENCH_IDLE_RATE req/s load on others.
BENCH_IDLE ?= 10000
BENCH_IDLE_RATE ?= 1000
BENCH_IDLE_DURATION ?= 10

.PHONY: bench-idle
bench-idle:
	bench/idle_quic.sh $(BENCH_IDLE) $(BENCH_IDLE_RATE) $(BENCH_IDLE_DURATION)
