#!/usr/bin/env bash
# HTTP/3 reverse-proxy throughput and latency: quic-ingress against Caddy (a peer with
# HTTP/3), side by side on loopback, same demo backend, same oha load.
#   bench/h3_proxy.sh [DURATION=10s] [CONNECTIONS=50]
# Prints requests/s, p50/p99 latency and peak RSS for each, and the ratios.
source "$(dirname "$0")/common.sh"
command -v caddy >/dev/null || scripts/ensure-packages.sh caddy

"$BIN" demo-backend --listen 127.0.0.1:18801 --name bench >/dev/null 2>&1 & pids+=($!)
cat > "$work/qi.yaml" <<YAML
server: {address: "127.0.0.1:18443"}
telemetry: {admin_address: "127.0.0.1:18490"}
routes: [{id: r, path: /, backend_group: g}]
backend_groups: [{id: g, backends: [{url: "http://127.0.0.1:18801"}]}]
YAML
RUST_LOG=warn "$BIN" serve --config "$work/qi.yaml" >"$work/qi.log" 2>&1 & qi=$!; pids+=($qi)
caddy_globals > "$work/Caddyfile"
cat >> "$work/Caddyfile" <<CADDY
https://127.0.0.1:18444 {
	tls internal
	reverse_proxy 127.0.0.1:18801
}
CADDY
HOME=$work XDG_DATA_HOME=$work caddy run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 & caddy=$!; pids+=($caddy)

wait_ready() { for _ in $(seq 1 200); do "$OHA" -n 1 --no-tui --insecure --http-version 3 "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready: $1" >&2; return 1; }
wait_ready https://127.0.0.1:18443/ && wait_ready https://127.0.0.1:18444/

run() { "$OHA" -z "$DURATION" -c "$CONNS" --no-tui --insecure --http-version 3 --output-format json "$1" > "$2"; }
peak() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
run https://127.0.0.1:18443/bench "$work/qi.json"
run https://127.0.0.1:18444/bench "$work/caddy.json"
python3 - "$work/qi.json" "$work/caddy.json" "$(peak $qi)" "$(peak $caddy)" "$DURATION" "$CONNS" <<'PY'
import json, sys
qi, cd = (json.load(open(p)) for p in sys.argv[1:3])
def fig(r):
    ok = r["statusCodeDistribution"].get("200", 0)
    # Successful responses per second of load. A run longer than the load ("run s") means
    # requests stalled at the end; that shows in p99, not in this rate.
    load_secs = float(sys.argv[5].rstrip("s"))
    return ok / load_secs, r["latencyPercentiles"]["p50"]*1000, r["latencyPercentiles"]["p99"]*1000, ok, r["summary"]["total"]
q, c = fig(qi), fig(cd)
print(f"HTTP/3 reverse proxy, oha -z {sys.argv[5]} -c {sys.argv[6]}, loopback, one demo backend")
print(f"{'':12}{'200/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'200s':>9}{'run s':>7}{'peak RSS MiB':>14}")
print(f"{'quic-ingress':12}{q[0]:10.0f}{q[1]:9.2f}{q[2]:9.2f}{q[3]:9d}{q[4]:7.1f}{int(sys.argv[3])/1024:14.1f}")
print(f"{'caddy':12}{c[0]:10.0f}{c[1]:9.2f}{c[2]:9.2f}{c[3]:9d}{c[4]:7.1f}{int(sys.argv[4])/1024:14.1f}")
print(f"ratio quic-ingress/caddy: throughput {q[0]/c[0]:.2f}x, p99 {q[2]/c[2]:.2f}x, memory {int(sys.argv[3])/int(sys.argv[4]):.2f}x")
PY
