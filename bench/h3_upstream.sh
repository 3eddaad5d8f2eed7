#!/usr/bin/env bash
# HTTP/3 end to end: clients → proxy → HTTP/3 upstream. quic-ingress (`h3://` backend)
# against Caddy (`reverse_proxy` with `versions 3`), side by side on loopback, both in front
# of the same HTTP/3 origin (a Caddy static responder), same oha load.
#   bench/h3_upstream.sh [DURATION=10s] [CONNECTIONS=50]
source "$(dirname "$0")/common.sh"
command -v caddy >/dev/null || scripts/ensure-packages.sh caddy

caddy_globals > "$work/Caddyfile"
cat >> "$work/Caddyfile" <<CADDY
# The origin: HTTP/3 only matters here; it answers a small body.
https://127.0.0.1:18831 {
	tls internal
	respond "origin ok" 200
}
# Caddy as the HTTP/3 proxy under test, speaking HTTP/3 upstream.
https://127.0.0.1:18832 {
	tls internal
	reverse_proxy https://127.0.0.1:18831 {
		transport http {
			versions 3
			tls_insecure_skip_verify
		}
	}
}
CADDY
HOME=$work XDG_DATA_HOME=$work caddy run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 & caddy=$!; pids+=($caddy)

cat > "$work/qi.yaml" <<YAML
server: {address: "127.0.0.1:18833"}
telemetry: {admin_address: "127.0.0.1:18834"}
routes: [{id: r, path: /, backend_group: g}]
backend_groups:
  - id: g
    backends: [{url: "h3://127.0.0.1:18831"}]
    tls: {insecure_skip_verify: true}
YAML
RUST_LOG=warn "$BIN" serve --config "$work/qi.yaml" >"$work/qi.log" 2>&1 & qi=$!; pids+=($qi)

wait_ready() { for _ in $(seq 1 200); do "$OHA" -n 1 --no-tui --insecure --http-version 3 "$1" 2>/dev/null | grep -q '\[200\]' && return 0; sleep 0.05; done; echo "not ready: $1" >&2; return 1; }
wait_ready https://127.0.0.1:18831/ && wait_ready https://127.0.0.1:18832/ && wait_ready https://127.0.0.1:18833/

run() { "$OHA" -z "$DURATION" -c "$CONNS" --no-tui --insecure --http-version 3 --output-format json "$1" > "$2"; }
peak() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
run https://127.0.0.1:18833/ "$work/qi.json"
qi_rss=$(peak $qi)
run https://127.0.0.1:18832/ "$work/caddy.json"
python3 - "$work/qi.json" "$work/caddy.json" "$qi_rss" "$DURATION" "$CONNS" <<'PY'
import json, sys
qi, cd = (json.load(open(p)) for p in sys.argv[1:3])
load_secs = float(sys.argv[4].rstrip("s"))
def fig(r):
    ok = r["statusCodeDistribution"].get("200", 0)
    return ok / load_secs, r["latencyPercentiles"]["p50"]*1000, r["latencyPercentiles"]["p99"]*1000, ok, r["summary"]["total"]
q, c = fig(qi), fig(cd)
print(f"HTTP/3 in, HTTP/3 upstream, oha -z {sys.argv[4]} -c {sys.argv[5]}, loopback, one Caddy HTTP/3 origin")
print(f"{'':12}{'200/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'200s':>9}")
print(f"{'quic-ingress':12}{q[0]:10.0f}{q[1]:9.2f}{q[2]:9.2f}{q[3]:9d}   (peak RSS {int(sys.argv[3])/1024:.1f} MiB)")
print(f"{'caddy':12}{c[0]:10.0f}{c[1]:9.2f}{c[2]:9.2f}{c[3]:9d}   (Caddy's RSS includes the origin: not compared)")
print(f"ratio quic-ingress/caddy: throughput {q[0]/c[0]:.2f}x, p99 {q[2]/c[2]:.2f}x")
PY
