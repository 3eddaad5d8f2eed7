#!/usr/bin/env bash
# Runs the Gateway API conformance suite against quic-ingress on a cluster that runs pods
# (make conformance starts the node cluster first; any cluster works, see
# e2e/conformance/README.md): installs the standard-channel CRDs of the suite's version
# from the Go module cache, installs the chart with its GatewayClass, then runs the suite
# twice (the suite's HTTP/1.1 + HTTP/2 client, then HTTP/3) and writes both reports.
#
# Environment: KUBECONFIG, KUBECTL, HELM, IMAGE (repo:tag), GATEWAY_API_VERSION,
# GOMODCACHE/GOCACHE; optional RUN_TEST (one test), SKIP_TESTS (comma-separated names;
# SKIP_TESTS_H3 adds names for the HTTP/3 run only),
# PROFILES (GATEWAY-HTTP,GATEWAY-GRPC), PROTOCOLS ("tcp h3"), REPORT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KUBECONFIG:?}" "${KUBECTL:?}" "${HELM:?}" "${IMAGE:?}" "${GATEWAY_API_VERSION:?}"
PROTOCOLS=${PROTOCOLS:-tcp h3}
PROFILES=${PROFILES:-GATEWAY-HTTP,GATEWAY-GRPC}
SKIP_TESTS=${SKIP_TESTS:-}
SKIP_TESTS_H3=${SKIP_TESTS_H3:-}
REPORT_DIR=${REPORT_DIR:-conformance/reports}
RELEASE=quic-ingress NAMESPACE=quic-ingress
log() { echo "conformance: $*" >&2; }

module=$(cd e2e/conformance && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)
log "CRDs: standard channel of sigs.k8s.io/gateway-api $GATEWAY_API_VERSION ($module)"
"$KUBECTL" apply --server-side --force-conflicts -f "$module/config/crd/standard/" >/dev/null
"$KUBECTL" wait --for condition=Established --timeout 60s crd --all >/dev/null

# The features tested are those our GatewayClass lists in status.supportedFeatures (the
# suite reads them; FEATURES=a,b overrides).
FEATURES=${FEATURES:-}
version=$(awk '$1 == "appVersion:" { gsub(/"/, "", $2); print $2 }' charts/quic-ingress/Chart.yaml)

# The suite is one tenant whose routes mostly have no hostnames: host ownership (which
# keeps host-less routes from catching other namespaces' hosts) is off, as for any
# single-tenant cluster.
install() { # $1: extra controller arguments
  "$HELM" upgrade --install "$RELEASE" charts/quic-ingress -n "$NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set resources.requests.cpu=10m --set resources.requests.memory=32Mi \
    --set gatewayClass.create=true --set service.httpPort=80 \
    --set controller.hostOwnership=none \
    --set-json "controller.extraArgs=$1" --wait --timeout 3m >/dev/null
}

# The suite deletes its namespaces when it ends but does not wait for them to go, and the
# next run cannot create its Gateways in a namespace still terminating (a CI run failed so
# on 2026-12-04, the HTTP/3 run starting 2 s after the TCP one).
wait_for_suite_namespaces() {
  local deadline=$(($(date +%s) + 180))
  while "$KUBECTL" get namespaces -o name | grep '^namespace/gateway-conformance-' >/dev/null; do
    if (($(date +%s) > deadline)); then
      log "the suite's namespaces of the last run are still there after 180 s"
      return 1
    fi
    sleep 1
  done
}

mkdir -p "$REPORT_DIR"
rc=0
for protocol in $PROTOCOLS; do
  wait_for_suite_namespaces
  case $protocol in
    tcp) install '[]' ;;
    # HTTP/3 has no plaintext form: the suite's HTTP listeners are reached over QUIC on the
    # UDP port of the TLS listener, which serves their routes only with this flag.
    h3) install '["--gateway-http-over-h3"]' ;;
    *) log "unknown protocol $protocol"; exit 2 ;;
  esac
  skip=$SKIP_TESTS
  if [ "$protocol" = h3 ] && [ -n "$SKIP_TESTS_H3" ]; then skip=${skip:+$skip,}$SKIP_TESTS_H3; fi
  report="$REPORT_DIR/gateway-api-$GATEWAY_API_VERSION-quic-ingress-$protocol-report.yaml"
  case $report in /*) ;; *) report="$PWD/$report" ;; esac
  started=$(date +%s)
  log "run over $protocol -> $report"
  (cd e2e/conformance && go test -count=1 -timeout 60m . -args \
      -quic-ingress.protocol="$protocol" -gateway-class=quic \
      -conformance-profiles="$PROFILES" ${FEATURES:+-supported-features="$FEATURES"} \
      ${skip:+-skip-tests="$skip"} \
      -organization=quic-ingress -project=quic-ingress -url=https://quic-ingress.dev \
      -version="v$version" -contact=quic-ingress-maintainers -mode=default \
      -report-output="$report" ${RUN_TEST:+-run-test="$RUN_TEST"}) || rc=$?
  log "run over $protocol: exit $rc in $(( $(date +%s) - started )) s"
done
exit $rc
