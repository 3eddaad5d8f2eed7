// The Gateway API conformance suite against quic-ingress. The suite's own flags
// (-gateway-class, -supported-features, -conformance-profiles, -report-output, -run-test,
// -skip-tests, ...) are passed by `make conformance`; this file adds -quic-ingress.protocol,
// which chooses the client the HTTP tests use: "tcp" (the suite's own HTTP/1.1 and HTTP/2
// client) or "h3" (HTTP/3 over QUIC to the Gateway's UDP port, see h3_round_tripper_test.go).
package conformance_test

import (
	"flag"
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

var (
	protocol = flag.String("quic-ingress.protocol", "tcp",
		`client for the HTTP tests: "tcp" (the suite's HTTP/1.1 and HTTP/2 client) or "h3"`)
	h3Port = flag.String("quic-ingress.h3-port", "443",
		"UDP port of the Gateway's QUIC listener, used by -quic-ingress.protocol=h3 for http:// URLs")
)

func TestConformance(t *testing.T) {
	opts := conformance.DefaultOptions(t)
	switch *protocol {
	case "tcp":
	case "h3":
		opts.RoundTripper = &h3RoundTripper{
			timeout: opts.TimeoutConfig.RequestTimeout,
			udpPort: *h3Port,
			debug:   opts.Debug,
		}
	default:
		t.Fatalf("-quic-ingress.protocol=%q: want tcp or h3", *protocol)
	}
	conformance.RunConformanceWithOptions(t, opts)
}
