package conformance_test

// An HTTP/3 client for the conformance suite's RoundTripper option: every request of the
// HTTP tests goes over QUIC to the Gateway's UDP listener, and the echo backend's answer
// is captured the way the suite's DefaultRoundTripper captures it (that function is not
// exported, so its capture steps are repeated here).
//
// Where to send: an https:// URL goes to the same address and port over UDP, verified
// against the CA the test hands over. HTTP/3 has no plaintext form, so an http:// URL (a
// Gateway listener of protocol HTTP) goes to the same address on -quic-ingress.h3-port,
// with the request's host as SNI and no certificate check (the TCP run checks none for
// those listeners either). The controller serves those listeners' routes on its QUIC
// listener only when started with --gateway-http-over-h3 (see e2e/conformance/README.md).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"sigs.k8s.io/gateway-api/conformance/utils/roundtripper"
	"sigs.k8s.io/gateway-api/conformance/utils/tlog"
)

type h3RoundTripper struct {
	timeout time.Duration
	udpPort string
	debug   bool
}

func (h *h3RoundTripper) CaptureRoundTrip(request roundtripper.Request) (*roundtripper.CapturedRequest, *roundtripper.CapturedResponse, error) {
	if request.Protocol == roundtripper.H2CPriorKnowledgeProtocol {
		return nil, nil, errors.New("h2c prior knowledge has no HTTP/3 form")
	}
	transport := &http3.Transport{
		TLSClientConfig: &tls.Config{NextProtos: []string{http3.NextProtoH3}},
		QUICConfig:      &quic.Config{HandshakeIdleTimeout: h.timeout},
		Dial: func(ctx context.Context, addr string, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
			return quic.DialAddrEarly(ctx, addr, tlsConf, conf)
		},
	}
	// One transport per request, closed after it, as the suite's client disables
	// keep-alives: no QUIC connection outlives its test.
	defer transport.Close()

	target := request.URL
	if target.Scheme == "https" {
		conf, err := verifiedTLS(request)
		if err != nil {
			return nil, nil, err
		}
		transport.TLSClientConfig = conf
	} else {
		host, _, err := net.SplitHostPort(target.Host)
		if err != nil {
			host = target.Host
		}
		target.Scheme = "https"
		target.Host = net.JoinHostPort(host, h.udpPort)
		sni := request.Host
		if h, _, err := net.SplitHostPort(sni); err == nil {
			sni = h
		}
		transport.TLSClientConfig = &tls.Config{
			ServerName:         sni,
			NextProtos:         []string{http3.NextProtoH3},
			InsecureSkipVerify: true, //nolint:gosec // plaintext listeners have no certificate to check
		}
	}

	client := &http.Client{Transport: transport}
	if request.UnfollowRedirect {
		client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	method := "GET"
	if request.Method != "" {
		method = request.Method
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	var body io.Reader
	if request.Body != "" {
		body = strings.NewReader(request.Body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target.String(), body)
	if err != nil {
		return nil, nil, err
	}
	if request.Host != "" {
		req.Host = request.Host
	}
	for name, value := range request.Headers {
		req.Header.Set(name, value[0])
	}
	if h.debug {
		if dump, err := httputil.DumpRequestOut(req, true); err == nil {
			tlog.Logf(request.T, "Sending HTTP/3 request:\n%s\n", dump)
		}
	}

	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if h.debug {
		tlog.Logf(request.T, "Received HTTP/3 response: %s %v\n%s\n", resp.Status, resp.Header, raw)
	}

	captured := &roundtripper.CapturedRequest{}
	if resp.Header.Get("Content-type") == "application/json" {
		if err := json.Unmarshal(raw, captured); err != nil {
			return nil, nil, fmt.Errorf("unexpected error reading response: %w", err)
		}
	} else {
		captured.Method = method
	}
	response := &roundtripper.CapturedResponse{
		StatusCode:    resp.StatusCode,
		ContentLength: resp.ContentLength,
		Protocol:      resp.Proto,
		Headers:       resp.Header,
	}
	if resp.TLS != nil {
		response.PeerCertificates = resp.TLS.PeerCertificates
	}
	if roundtripper.IsRedirect(resp.StatusCode) {
		location, err := resp.Location()
		if err != nil {
			return nil, nil, err
		}
		response.RedirectRequest = &roundtripper.RedirectRequest{
			Scheme: location.Scheme,
			Host:   location.Hostname(),
			Port:   location.Port(),
			Path:   location.Path,
		}
	}
	return captured, response, nil
}

// verifiedTLS is the suite's TLS check for https:// requests: the test's CA and server name.
func verifiedTLS(request roundtripper.Request) (*tls.Config, error) {
	if request.ServerName == "" || len(request.ServerCertificate) == 0 {
		return nil, errors.New("https request has no server name or trusted certificate")
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(request.ServerCertificate) {
		return nil, errors.New("the test's trusted certificate is not PEM")
	}
	return &tls.Config{
		ServerName:           request.ServerName,
		RootCAs:              roots,
		NextProtos:           []string{http3.NextProtoH3},
		GetClientCertificate: request.GetClientCertificateHook,
	}, nil
}
