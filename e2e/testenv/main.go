// Command testenv runs a real, single-process Kubernetes control plane for tests:
// embedded etcd plus kube-apiserver (RBAC, service-account keys, static tokens) on
// 127.0.0.1, and writes one kubeconfig per test identity. It also carries kubectl
// (`testenv kubectl ...`) so tests use a client of exactly the server's version.
//
// There is no kube-controller-manager: nothing creates EndpointSlices, finalizes
// namespaces or collects garbage. Tests create the objects a controller would.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// identity is one static-token user. Only admin has a group; the others start with no
// permissions at all, so RBAC decides everything they may do.
type identity struct {
	name   string
	groups []string
}

var identities = []identity{
	{name: "admin", groups: []string{"system:masters"}},
	{name: "nobody"},
	{name: "controller"},
}

const clusterName = "quic-ingress-testenv"

func main() {
	// Busybox style: a link named kubectl is kubectl.
	if filepath.Base(os.Args[0]) == "kubectl" {
		os.Exit(runKubectl(os.Args[1:]))
	}
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "kubectl":
			os.Exit(runKubectl(os.Args[2:]))
		case "kube-apiserver":
			// The bare apiserver with caller-chosen flags, for debugging.
			os.Args = append([]string{"kube-apiserver"}, os.Args[2:]...)
			os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
		case "version", "--version":
			fmt.Println(version.Get().GitVersion)
			return
		}
	}
	if err := serve(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		os.Exit(1)
	}
}

func runKubectl(args []string) int {
	// kubectl's cobra command parses os.Args itself (and uses argv[0] for plugin lookup).
	os.Args = append([]string{"kubectl"}, args...)
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
		return 1
	}
	return 0
}

type options struct {
	dataDir       string
	outDir        string
	port          int
	readyTimeout  time.Duration
	stopOnEOF     bool
	keepData      bool
	address       string
	apiserverArgs []string
}

func serve(args []string) error {
	fs := flag.NewFlagSet("testenv", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, keys and tokens (default: a new temporary directory, removed on exit)")
	fs.StringVar(&o.outDir, "out-dir", "", "where to write kubeconfig, kubeconfig-<identity> and the ready marker (default: the data directory)")
	fs.IntVar(&o.port, "port", 0, "kube-apiserver secure port on 127.0.0.1 (0: a free port)")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 3*time.Minute, "give up when /readyz is not OK by then")
	fs.BoolVar(&o.stopOnEOF, "stop-on-stdin-eof", false, "shut down when stdin reaches EOF, i.e. when the parent process is gone")
	fs.BoolVar(&o.keepData, "keep-data", false, "keep a temporary data directory on exit")
	fs.StringVar(&o.address, "address", "127.0.0.1", "IPv4 address kube-apiserver binds to, advertises and has in its certificate; "+
		"a non-loopback one (the node cluster's bridge address) also becomes the endpoint of the kubernetes Service, so pods reach the API server")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: testenv [flags] [-- extra kube-apiserver flags]\n"+
			"       testenv kubectl ARGS...\n       testenv version\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	o.apiserverArgs = fs.Args()
	if ip := net.ParseIP(o.address); ip == nil || ip.To4() == nil {
		return fmt.Errorf("--address %q is not an IPv4 address", o.address)
	}
	return run(o)
}

func run(o options) (err error) {
	started := time.Now()
	removeData := false
	if o.dataDir == "" {
		if o.dataDir, err = os.MkdirTemp("", "quic-ingress-testenv-"); err != nil {
			return err
		}
		removeData = !o.keepData
	} else if err = os.MkdirAll(o.dataDir, 0o700); err != nil {
		return err
	}
	if removeData {
		defer os.RemoveAll(o.dataDir)
	}
	if o.outDir == "" {
		o.outDir = o.dataDir
	}
	if err = os.MkdirAll(o.outDir, 0o755); err != nil {
		return err
	}
	// Files in the out dir describe a live server; none may outlive it.
	var written []string
	defer func() {
		for _, f := range written {
			os.Remove(f)
		}
	}()
	readyFile := filepath.Join(o.outDir, "ready")
	os.Remove(readyFile)

	if o.stopOnEOF {
		go func() {
			io.Copy(io.Discard, os.Stdin) //nolint:errcheck
			// The apiserver owns SIGTERM handling; taking the same path shuts down in order.
			syscall.Kill(os.Getpid(), syscall.SIGTERM) //nolint:errcheck
		}()
	}

	ports, err := freePorts(o.address, 3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, port := ports[0], ports[1], ports[2]
	if o.port != 0 {
		port = o.port
	}

	etcd, err := startEtcd(filepath.Join(o.dataDir, "etcd"), etcdClient, etcdPeer)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	// etcd's Close panics when called twice.
	var stopEtcdOnce sync.Once
	stopEtcd := func() {
		stopEtcdOnce.Do(func() {
			etcd.Close()
			<-etcd.Server.StopNotify()
		})
	}
	defer stopEtcd()

	pki := filepath.Join(o.dataDir, "pki")
	caPEM, err := writePKI(pki, net.ParseIP(o.address))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	tokens, err := writeTokens(filepath.Join(o.dataDir, "tokens.csv"))
	if err != nil {
		return err
	}
	server := "https://" + net.JoinHostPort(o.address, strconv.Itoa(port))
	// The kubernetes Service would point at a loopback address, which Endpoints
	// validation rejects; tests that run no pods need no Service. On a reachable
	// address, the lease reconciler publishes it as the Service's endpoint.
	reconciler := "none"
	if !net.ParseIP(o.address).IsLoopback() {
		reconciler = "lease"
	}
	for _, id := range identities {
		name := "kubeconfig"
		if id.name != "admin" {
			name += "-" + id.name
		}
		path := filepath.Join(o.outDir, name)
		if err := writeKubeconfig(path, server, caPEM, id.name, tokens[id.name]); err != nil {
			return err
		}
		written = append(written, path)
	}

	args := []string{
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--bind-address=" + o.address,
		"--advertise-address=" + o.address,
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + pki,
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
		"--service-account-key-file=" + filepath.Join(pki, "sa.key"),
		"--authorization-mode=RBAC",
		"--token-auth-file=" + filepath.Join(o.dataDir, "tokens.csv"),
		"--allow-privileged=true",
		"--endpoint-reconciler-type=" + reconciler,
		"--profiling=false",
	}
	args = append(args, o.apiserverArgs...)

	cmd := apiserver.NewAPIServerCommand()
	cmd.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- cmd.Execute() }()

	ready := make(chan error, 1)
	go func() { ready <- waitReady(server, caPEM, tokens["admin"], o.readyTimeout) }()

	select {
	case err := <-done:
		return fmt.Errorf("kube-apiserver stopped before it was ready: %v", err)
	case err := <-ready:
		if err != nil {
			syscall.Kill(os.Getpid(), syscall.SIGTERM) //nolint:errcheck
			<-done
			return err
		}
	}
	info, _ := json.Marshal(map[string]any{
		"server":     server,
		"kubeconfig": filepath.Join(o.outDir, "kubeconfig"),
		"pid":        os.Getpid(),
		"version":    version.Get().GitVersion,
		"startup_ms": time.Since(started).Milliseconds(),
	})
	if err := writeFileAtomic(readyFile, append(info, '\n'), 0o644); err != nil {
		return err
	}
	written = append(written, readyFile)
	fmt.Printf("testenv: ready %s\n", info)

	err = <-done
	// etcd goes second: the apiserver flushes its last writes on the way out.
	stopEtcd()
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	fmt.Printf("testenv: stopped after %s\n", time.Since(started).Round(time.Millisecond))
	return nil
}

// freePorts asks the kernel for distinct free ports on the address. Holding all listeners
// until every port is known keeps them distinct; the window before the servers bind is
// short and only matters for concurrent starts.
func freePorts(address string, n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(address, "0"))
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startEtcd(dir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "testenv"
	cfg.Dir = dir
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	// Throwaway data: durability buys nothing and fsync dominates start-up on slow disks.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(time.Minute):
		e.Close()
		return nil, errors.New("not ready after a minute")
	}
}

// writePKI creates a CA, a serving certificate for 127.0.0.1/localhost/the in-cluster
// names (and the bind address) signed by it, and the service-account signing key. It returns the CA in PEM so
// kubeconfigs can verify the server instead of skipping verification.
//
// A data directory that already holds them (a restart with --data-dir) keeps them, so
// kubeconfigs written by the earlier run still verify the server.
func writePKI(dir string, address net.IP) ([]byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if caPEM, ok := existingPKI(dir); ok {
		return caPEM, nil
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "quic-ingress-testenv-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 0, 0, 1)},
	}
	if !address.IsLoopback() {
		srvTmpl.IPAddresses = append(srvTmpl.IPAddresses, address)
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := map[string][]byte{
		"ca.crt":        caPEM,
		"apiserver.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
	}
	for name, key := range map[string]*ecdsa.PrivateKey{"apiserver.key": srvKey, "sa.key": saKey} {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		files[name] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return caPEM, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// existingPKI returns the CA of a complete set of files left by an earlier run.
func existingPKI(dir string) ([]byte, bool) {
	for _, name := range []string{"apiserver.crt", "apiserver.key", "sa.key"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return nil, false
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, false
	}
	return caPEM, true
}

// writeTokens writes the static token file (token,user,uid,"groups") with a fresh
// random token per identity, or reuses the file of an earlier run on the same data
// directory when it names every identity (so its kubeconfigs keep working).
func writeTokens(path string) (map[string]string, error) {
	if tokens, ok := existingTokens(path); ok {
		return tokens, nil
	}
	tokens := map[string]string{}
	var b strings.Builder
	for _, id := range identities {
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			return nil, err
		}
		tok := hex.EncodeToString(raw)
		tokens[id.name] = tok
		fmt.Fprintf(&b, "%s,%s,%s", tok, id.name, id.name)
		if len(id.groups) > 0 {
			fmt.Fprintf(&b, ",\"%s\"", strings.Join(id.groups, ","))
		}
		b.WriteString("\n")
	}
	return tokens, os.WriteFile(path, []byte(b.String()), 0o600)
}

func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	ctx := clusterName + "-" + user
	cfg.Contexts[ctx] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = ctx
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}

// writeFileAtomic makes sure a reader polling for the file never sees half of it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitReady polls /readyz the way a client would: over TLS verified against our CA,
// with the admin token.
func waitReady(server string, caPEM []byte, token string, timeout time.Duration) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("/readyz not OK after %s; last answer: %s", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func existingTokens(path string) (map[string]string, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	tokens := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.SplitN(line, ",", 3)
		if len(fields) >= 2 && fields[0] != "" {
			tokens[fields[1]] = fields[0]
		}
	}
	for _, id := range identities {
		if tokens[id.name] == "" {
			return nil, false
		}
	}
	return tokens, true
}
