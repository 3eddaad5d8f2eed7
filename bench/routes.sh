#!/usr/bin/env bash
# Route propagation and memory at scale against the real API server (bench/README.md,
# "Route propagation and memory at scale"): builds the release binary, the testenv control
# plane and the Gateway API CRDs if needed, then runs the bench-routes program
# (bench/routes/main.rs), which prints its figures and writes them to target/bench-routes.txt.
#   bench/routes.sh              # every phase, the defaults of bench/routes/main.rs
#   BENCH_PHASES=ingress BENCH_SIZES=3000 BENCH_MEMORY= bench/routes.sh
#   BENCH_BIN=/path/to/quic-ingress bench/routes.sh   # measure another build of the controller
# Needs root (the backends run in a network namespace of their own). At most BENCH_TIMEOUT
# seconds (default 3600).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE=${CACHE:-$HOME/.cache/quic-ingress}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/cargo-target}
nice -n 10 cargo build --release -q -p quic-ingress --bins
nice -n 10 cargo build --release -q -p quic-ingress-e2e --example bench-routes
make -s e2e-deps
testenv=$(make -s --no-print-directory -f e2e/testenv.mk testenv-print-bin)
crds=$(make -s --no-print-directory -f e2e/gateway.mk gateway-api-crds-print-dir)
mkdir -p target
export QUIC_INGRESS_BIN=${BENCH_BIN:-$CARGO_TARGET_DIR/release/quic-ingress}
export QUIC_INGRESS_TESTENV_BIN=$testenv QUIC_INGRESS_GATEWAY_CRDS=$crds
export QUIC_INGRESS_TESTENV_DIR=${QUIC_INGRESS_TESTENV_DIR:-$PWD/target/testenv/runs}
export BENCH_OUT=${BENCH_OUT:-$PWD/target/bench-routes.txt}
# Never a developer's cluster: the program starts a control plane of its own.
unset KUBECONFIG QUIC_INGRESS_TEST_KUBECONFIG
exec timeout --kill-after=30 "${BENCH_TIMEOUT:-3600}" "$CARGO_TARGET_DIR/release/examples/bench-routes"
