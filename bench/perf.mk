# Benchmarks (`make bench` runs them all): CPU per request and bulk throughput beside Caddy
# and nginx (bench/perf.sh), and the older HTTP/3 comparisons with Caddy. Each load is
# bounded by BENCH_DURATION; everything runs on loopback.
BENCH_DURATION ?= 8s

.PHONY: bench-cpu bench-bulk bench-h3

bench-cpu:
	bench/perf.sh cpu $(BENCH_DURATION) 32

bench-bulk:
	bench/perf.sh bulk $(BENCH_DURATION) 1

# HTTP/3 in and out (h3_proxy.sh, h3_upstream.sh) and the cost of trace export.
bench-h3: jaeger
	bench/h3_proxy.sh $(BENCH_DURATION) 50
	bench/h3_upstream.sh $(BENCH_DURATION) 50
	bench/tracing_cost.sh $(BENCH_DURATION) 50
