#!/usr/bin/env bash
# Idle HTTP/3 connections on one replica: RSS per idle connection, the proxy's CPU while
# they are held (keep-alive PINGs), and the p99 of a fixed-rate load on other connections
# with and without them; then 100 MiB downloads over HTTP/3, so a transport change that
# saves memory is seen not to cost throughput.
#   bench/idle_quic.sh [IDLE=10000] [RATE=1000] [DURATION=10]
# Client: examples/idle_quic.rs (quinn + h3, one process, source addresses 127.0.1.x).
# Environment: SOURCES (40), KEEP_ALIVE (15 s), HOLD (20 s), BULK (3 downloads; 0 skips).
# Bounded: every phase of the client has a deadline, and the whole run a timeout.
set -euo pipefail
IDLE=${1:-10000}; RATE=${2:-1000}; DURATION=${3:-10}
SOURCES=${SOURCES:-40}; KEEP_ALIVE=${KEEP_ALIVE:-15}; HOLD=${HOLD:-20}; BULK=${BULK:-3}
CACHE=${CACHE:-$HOME/.cache/quic-ingress}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/cargo-target}
# QI_BIN: another proxy binary to measure (a build of an earlier commit), not rebuilt.
BIN=${QI_BIN:-$CARGO_TARGET_DIR/release/quic-ingress}
CLIENT=$CARGO_TARGET_DIR/release/examples/idle_quic
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# One invocation, so the proxy and the client share one feature set (and one build).
[ -n "${QI_BIN:-}" ] && [ -x "$CLIENT" ] || cargo build --release --bins --example idle_quic -q

work=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$BIN" demo-backend --listen 127.0.0.1:18811 --name bench >/dev/null 2>&1 & pids+=($!)
# The caps are raised here for the test only: the defaults (20,000 connections, 500 per
# IP) already admit 10,000 idle connections over 40 addresses, but a larger IDLE needs
# more. Retry is off (its threshold above any handshake count): the client is on loopback.
per_ip=$(( IDLE / SOURCES + 100 ))
cat > "$work/qi.yaml" <<YAML
server:
  address: "127.0.0.1:18543"
  limits:
    retry_above_handshakes: 4294967295
    max_connections: $(( IDLE + 1000 > 20000 ? IDLE + 1000 : 20000 ))
    max_connections_per_ip: $(( per_ip > 500 ? per_ip : 500 ))
telemetry: {admin_address: "127.0.0.1:18590"}
routes: [{id: r, path: /, backend_group: g}]
backend_groups: [{id: g, backends: [{url: "http://127.0.0.1:18811"}]}]
YAML
RUST_LOG=warn "$BIN" serve --config "$work/qi.yaml" >"$work/qi.log" 2>&1 & qi=$!; pids+=($qi)
for _ in $(seq 1 200); do
  curl -sf http://127.0.0.1:18590/readyz >/dev/null 2>&1 && break
  sleep 0.05
done
curl -sf http://127.0.0.1:18590/readyz >/dev/null || { echo "proxy not ready" >&2; cat "$work/qi.log" >&2; exit 1; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(git rev-parse --short HEAD)"
echo "== idle HTTP/3 connections: $IDLE idle, load $RATE req/s for ${DURATION}s =="
timeout 900 "$CLIENT" idle --target 127.0.0.1:18543 --pid "$qi" --idle "$IDLE" --sources "$SOURCES" \
  --keep-alive "$KEEP_ALIVE" --hold "$HOLD" --rate "$RATE" --duration "$DURATION"
echo "proxy peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$qi/status)"
if [ "$BULK" -gt 0 ]; then
  echo "== bulk: $BULK downloads of 100 MiB over one HTTP/3 connection =="
  timeout 600 "$CLIENT" bulk --target 127.0.0.1:18543 --path '/big?bytes=104857600' --count "$BULK"
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
