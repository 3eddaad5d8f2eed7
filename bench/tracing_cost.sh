#!/usr/bin/env bash
# The cost of trace export: the same HTTP/3 load through quic-ingress without tracing and
# with every request traced to Jaeger over OTLP, side by side on loopback.
#   bench/tracing_cost.sh [DURATION=10s] [CONNECTIONS=50]
source "$(dirname "$0")/common.sh"
JAEGER=$(make -s --no-print-directory jaeger-path)
"$BIN" demo-backend --listen 127.0.0.1:18901 --name bench >/dev/null 2>&1 & pids+=($!)
"$JAEGER" --set=receivers.otlp.protocols.http.endpoint=127.0.0.1:18918 --set=receivers.otlp.protocols.grpc.endpoint=127.0.0.1:18917 \
  --set=extensions.jaeger_query.http.endpoint=127.0.0.1:18986 --set=extensions.jaeger_query.grpc.endpoint=127.0.0.1:18985 \
  --set=extensions.healthcheckv2.http.endpoint=127.0.0.1:18933 --set=service.telemetry.metrics.level=none >"$work/jaeger.log" 2>&1 & pids+=($!)

run_proxy() { # name port admin tracing-yaml
  cat > "$work/$1.yaml" <<YAML
server: {address: "127.0.0.1:$2"}
telemetry:
  admin_address: "127.0.0.1:$3"
$4
routes: [{id: r, path: /, backend_group: g}]
backend_groups: [{id: g, backends: [{url: "http://127.0.0.1:18901"}]}]
YAML
  RUST_LOG=warn "$BIN" serve --config "$work/$1.yaml" >"$work/$1.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$3/readyz" >/dev/null && return 0; sleep 0.05; done; return 1
}
run_proxy off 18943 18991 ""
run_proxy on 18944 18992 '  tracing: {endpoint: "http://127.0.0.1:18918", sampling_ratio: 1.0}'
load() { "$OHA" -z "$DURATION" -c "$CONNS" --no-tui --insecure --http-version 3 --output-format json "$1" > "$2"; }
load https://127.0.0.1:18943/ "$work/off.json"
load https://127.0.0.1:18944/ "$work/on.json"
python3 - "$work/off.json" "$work/on.json" "$DURATION" "$CONNS" <<'PY'
import json, sys
off, on = (json.load(open(p)) for p in sys.argv[1:3])
f = lambda r: (r["statusCodeDistribution"].get("200", 0) / r["summary"]["total"], r["latencyPercentiles"]["p99"] * 1000)
a, b = f(off), f(on)
print(f"HTTP/3 through quic-ingress, oha -z {sys.argv[3]} -c {sys.argv[4]}, loopback")
print(f"tracing off: {a[0]:8.0f} req/s  p99 {a[1]:6.2f} ms")
print(f"tracing on : {b[0]:8.0f} req/s  p99 {b[1]:6.2f} ms  (every request exported to Jaeger over OTLP)")
print(f"ratio on/off: throughput {b[0]/a[0]:.2f}x, p99 {b[1]/a[1]:.2f}x")
PY
