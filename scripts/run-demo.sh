#!/usr/bin/env bash
# `make run`: three demo backends and the proxy in the foreground; Ctrl-C stops them all.
set -euo pipefail
BIN=${1:?binary}; CONFIG=${2:?config}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN" --log-format text demo-backend --listen 127.0.0.1:8001 --name api-1 & pids+=($!)
"$BIN" --log-format text demo-backend --listen 127.0.0.1:8002 --name api-2 --protocol h2 & pids+=($!)
"$BIN" --log-format text demo-backend --listen 127.0.0.1:8003 --name web & pids+=($!)
"$BIN" --log-format text serve --config "$CONFIG" & pids+=($!)
proxy=$!

for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
  kill -0 "$proxy" 2>/dev/null || { echo "the proxy exited; see the log above" >&2; exit 1; }
  sleep 0.1
done
curl -sf http://127.0.0.1:9090/readyz >/dev/null || { echo "the proxy did not become ready" >&2; exit 1; }

cat <<MSG

quic-ingress is serving HTTP/3 (UDP) and HTTP/1.1+2 (TCP) on 127.0.0.1:8443.
Try:
  $BIN get -k https://127.0.0.1:8443/api/hello        # HTTP/3, round robin over api-1/api-2
  $BIN get -k --http2 -i https://127.0.0.1:8443/      # HTTP/2 over TCP, shows Alt-Svc
  curl -sk https://127.0.0.1:8443/                    # any HTTPS client works over TCP
Admin: http://127.0.0.1:9090/readyz  http://127.0.0.1:9090/debug/routes
Ctrl-C stops everything.
MSG
wait "$proxy"
