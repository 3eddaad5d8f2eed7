# Sourced by the benchmark scripts: arguments, paths, the release build, the oha load
# generator, and a work directory whose processes are stopped on exit.
#   DURATION (default 10s) and CONNECTIONS (default 50) come from $1 and $2.
set -euo pipefail
DURATION=${1:-10s}; CONNS=${2:-50}
CACHE=${CACHE:-$HOME/.cache/quic-ingress}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/cargo-target}
BIN=$CARGO_TARGET_DIR/release/quic-ingress
OHA=${OHA:-$CACHE/tools/bin/oha}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x "$OHA" ] || cargo install oha --locked --features http3 --root "$CACHE/tools"
# BENCH_NO_BUILD=1 runs the binary already built (a rebuild takes long on a loaded machine).
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --bins -q

work=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

# Caddy's global options for a peer run: no admin API, never touching the machine's trust
# store (skip_install_trust), HTTP/1.1, 2 and 3, errors only.
caddy_globals() {
  cat <<'CADDY'
{
	admin off
	skip_install_trust
	default_sni 127.0.0.1
	auto_https disable_redirects
	servers {
		protocols h1 h2 h3
	}
	log {
		level ERROR
	}
}
CADDY
}
