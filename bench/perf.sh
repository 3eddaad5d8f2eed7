#!/usr/bin/env bash
# CPU per request and bulk throughput, quic-ingress beside its peers in one run, loopback.
#   bench/perf.sh cpu  [DURATION=8s] [CONNECTIONS=32]
#       1 KiB responses from an nginx backend. HTTP/3: quic-ingress against Caddy.
#       HTTP/1.1 and HTTP/2 over TLS: quic-ingress against nginx as a reverse proxy.
#   bench/perf.sh bulk [DURATION=8s] [CONNECTIONS=1]
#       1 MiB and 100 MiB responses: quic-ingress and Caddy over HTTP/3, and the backend
#       directly over HTTP/1.1.
# Each row gives the server's CPU (utime+stime from /proc over the load, threads and
# worker processes included) per request or in cores, and the client's (oha's rusage), so
# the table says which side limits. Every load is bounded by DURATION.
MODE=${1:-cpu}; shift || true
DEFAULT_CONNS=32; [ "$MODE" = bulk ] && DEFAULT_CONNS=1
set -- "${1:-8s}" "${2:-$DEFAULT_CONNS}"
source "$(dirname "$0")/common.sh"
command -v caddy >/dev/null || scripts/ensure-packages.sh caddy
command -v nginx >/dev/null || scripts/ensure-packages.sh nginx
MEASURE="python3 bench/measure.py"

# Ports of their own (196xx), so this can run beside the other benches' leftovers.
BACKEND=19601 NGINX_PROXY=19602 QI=19603 QI_ADMIN=19604 CADDY=19605 QI1=19606 QI1_ADMIN=19607

# nginx workers run as an unprivileged user: they must reach the files.
chmod 755 "$work"
mkdir -p "$work/www" "$work/nginx-backend" "$work/nginx-proxy"
head -c 1024 /dev/zero | tr '\0' x > "$work/www/1k"
if [ "$MODE" = bulk ]; then
  head -c $((1 << 20)) /dev/urandom > "$work/www/1m"
  head -c $((100 << 20)) /dev/urandom > "$work/www/100m"
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# nginx's working files under $1; its error log at `error` only.
nginx_conf() {
  cat <<NGINX
worker_processes 2;
pid $1/nginx.pid;
error_log $1/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  keepalive_requests 1000000;
  sendfile on;
NGINX
}
# The backend every proxy forwards to: static files.
{ nginx_conf "$work/nginx-backend"; cat <<NGINX
  server { listen 127.0.0.1:$BACKEND; root $work/www; }
}
NGINX
} > "$work/nginx-backend/nginx.conf"
# nginx as the TCP peer: TLS, HTTP/1.1 and HTTP/2, pooled keep-alive connections upstream.
{ nginx_conf "$work/nginx-proxy"; cat <<NGINX
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PROXY ssl http2;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
} > "$work/nginx-proxy/nginx.conf"
nginx -p "$work/nginx-backend" -c "$work/nginx-backend/nginx.conf" -g 'daemon off;' & pids+=($!)
nginx -p "$work/nginx-proxy" -c "$work/nginx-proxy/nginx.conf" -g 'daemon off;' & nginx_proxy=$!; pids+=($nginx_proxy)

cat > "$work/qi.yaml" <<YAML
server: {address: "127.0.0.1:$QI"}
telemetry: {admin_address: "127.0.0.1:$QI_ADMIN"}
routes: [{id: r, path: /, backend_group: g}]
backend_groups: [{id: g, backends: [{url: "http://127.0.0.1:$BACKEND"}]}]
YAML
# The access log is off (warn), as it is for the peers; QI_LOG=info turns it on.
RUST_LOG=${QI_LOG:-warn} "$BIN" serve --config "$work/qi.yaml" >"$work/qi.log" 2>&1 & qi=$!; pids+=($qi)
# The same proxy on one runtime thread (--worker-threads 1): on 2 cores shared with the
# client and the backend, the second thread costs more in hand-offs than it brings.
sed -e "s/:$QI\"/:$QI1\"/" -e "s/:$QI_ADMIN\"/:$QI1_ADMIN\"/" "$work/qi.yaml" > "$work/qi1.yaml"
RUST_LOG=${QI_LOG:-warn} "$BIN" --worker-threads 1 serve --config "$work/qi1.yaml" >"$work/qi1.log" 2>&1 & qi1=$!; pids+=($qi1)

caddy_globals > "$work/Caddyfile"
cat >> "$work/Caddyfile" <<CADDY
https://127.0.0.1:$CADDY {
	tls internal
	reverse_proxy 127.0.0.1:$BACKEND
}
CADDY
HOME=$work XDG_DATA_HOME=$work caddy run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 & caddy=$!; pids+=($caddy)

wait_ready() { # URL [oha flags]
  for _ in $(seq 1 200); do
    "$OHA" -n 1 --no-tui --insecure "${@:2}" "$1" 2>/dev/null | grep -q '\[200\]' && return 0; sleep 0.05
  done
  echo "not ready: $1" >&2; return 1
}
wait_ready "http://127.0.0.1:$BACKEND/1k"
wait_ready "https://127.0.0.1:$NGINX_PROXY/1k"
wait_ready "https://127.0.0.1:$QI/1k" --http-version 3
wait_ready "https://127.0.0.1:$QI1/1k" --http-version 3
wait_ready "https://127.0.0.1:$CADDY/1k" --http-version 3

# PROFILE=DIR: each quic-ingress load also runs under `perf record` (DIR/NAME.perf.data);
# build with CARGO_PROFILE_RELEASE_DEBUG=line-tables-only for symbols with lines.
# STRACE=DIR: the HTTP/3 loads' UDP syscalls are traced to DIR/NAME.strace, and
# `measure.py udp DIR/NAME.strace` says how many packets each carried (GSO, GRO).
load() { # NAME PID URL [oha flags]
  local rec=
  if [ -n "${PROFILE:-}" ] && [[ $1 == quic-ingress* ]]; then
    mkdir -p "$PROFILE"
    perf record -q -F 999 --call-graph dwarf,16384 -p "$2" -o "$PROFILE/$1.perf.data" -- sleep "${DURATION%s}" 2>/dev/null & rec=$!
  fi
  if [ -n "${STRACE:-}" ] && [[ $1 == quic-ingress-h3* ]]; then
    mkdir -p "$STRACE"
    timeout "$DURATION" strace -f -qq -e trace=sendmsg,sendmmsg,recvmsg,recvmmsg -v -s 0 -o "$STRACE/$1.strace" -p "$2" & rec=$!
  fi
  $MEASURE load "$work/$1.json" "$2" -- "$OHA" -z "$DURATION" -c "$CONNS" --no-tui --insecure --output-format json "${@:4}" "$3"
  if [ -n "$rec" ]; then wait "$rec" || true; fi
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; caddy $(caddy version | cut -d' ' -f1), $(nginx -v 2>&1 | cut -d' ' -f3), $("$OHA" --version)"
case "$MODE" in
  cpu)
    load quic-ingress-h3 $qi "https://127.0.0.1:$QI/1k" --http-version 3
    load quic-ingress-h3-1w $qi1 "https://127.0.0.1:$QI1/1k" --http-version 3
    load caddy-h3 $caddy "https://127.0.0.1:$CADDY/1k" --http-version 3
    load quic-ingress-h1 $qi "https://127.0.0.1:$QI/1k" --http-version 1.1
    load nginx-h1 $nginx_proxy "https://127.0.0.1:$NGINX_PROXY/1k" --http-version 1.1
    load quic-ingress-h2 $qi "https://127.0.0.1:$QI/1k" --http-version 2
    load nginx-h2 $nginx_proxy "https://127.0.0.1:$NGINX_PROXY/1k" --http-version 2
    echo "1 KiB responses, oha -z $DURATION -c $CONNS, nginx backend, loopback"
    $MEASURE report cpu "$work"/{quic-ingress-h3,quic-ingress-h3-1w,caddy-h3,quic-ingress-h1,nginx-h1,quic-ingress-h2,nginx-h2}.json \
      quic-ingress-h3/caddy-h3 quic-ingress-h3-1w/caddy-h3 quic-ingress-h1/nginx-h1 quic-ingress-h2/nginx-h2
    ;;
  bulk)
    for size in 1m 100m; do
      load quic-ingress-h3-$size $qi "https://127.0.0.1:$QI/$size" --http-version 3
      load caddy-h3-$size $caddy "https://127.0.0.1:$CADDY/$size" --http-version 3
      load direct-h1-$size "${pids[0]}" "http://127.0.0.1:$BACKEND/$size" --http-version 1.1
    done
    echo "1 MiB and 100 MiB responses, oha -z $DURATION -c $CONNS, nginx backend, loopback (server = the proxy; direct = nginx itself)"
    $MEASURE report bulk "$work"/{quic-ingress-h3,caddy-h3,direct-h1}-{1m,100m}.json \
      quic-ingress-h3-1m/caddy-h3-1m quic-ingress-h3-1m/direct-h1-1m quic-ingress-h3-100m/caddy-h3-100m quic-ingress-h3-100m/direct-h1-100m
    ;;
  *) echo "usage: bench/perf.sh cpu|bulk [DURATION] [CONNECTIONS]" >&2; exit 2 ;;
esac
