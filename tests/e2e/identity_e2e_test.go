package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

// issueCustom issues from the cluster's CA (its key read from ca.key) a
// certificate for id with exactly the extended key usages eku, as PEM —
// the certificates corporate CAs hand out, which identity.CA does not.
func (c *cluster) issueCustom(t *testing.T, id identity.Identity, eku []x509.ExtKeyUsage, hosts []string) (certPEM, keyPEM []byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(c.dir, "ca.key"))
	must(t, "reading ca.key", err)
	b, _ := pem.Decode(raw)
	caKey, err := x509.ParseECPrivateKey(b.Bytes)
	must(t, "parsing ca.key", err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, "key", err)
	sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: id.Name}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku, URIs: []*url.URL{id.URL()}}
	for _, h := range hosts {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(h))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca.Cert, &key.PublicKey, caKey)
	must(t, "issuing", err)
	kder, err := x509.MarshalECPrivateKey(key)
	must(t, "marshalling the key", err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// rogueServer serves grpc.health.v1 and nothing else with a certificate of
// the cluster's CA for id: a peer of the trust domain posing as a node.
func (c *cluster) rogueServer(t *testing.T, id identity.Identity) string {
	t.Helper()
	var hosts []string // a client certificate carries none, and needs none: servers are known by SPIFFE id
	if id.Kind != identity.Client && id.Kind != identity.Admin {
		hosts = []string{"127.0.0.1"}
	}
	certPEM, keyPEM, err := c.ca.Issue(id, hosts, time.Hour)
	must(t, "issuing", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "pair", err)
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestServersCheckedByKind: an edge whose central address reaches a peer
// of the trust domain presenting a client (or edge) certificate refuses
// it and logs why; the CLI and the SDK refuse a node presenting a client
// certificate, and say why in the error the user sees.
func TestServersCheckedByKind(t *testing.T) {
	c := newEdgeClusterOn(t, softkmsRoots, basicRoots, "")
	for _, kind := range []identity.Kind{identity.Client, identity.Edge} {
		rogue := c.rogueServer(t, identity.Identity{TrustDomain: e2eTrustDomain, Kind: kind, Name: "mallory"})
		name := "edge-to-rogue-" + string(kind)
		c.addEdge(t, &edgeNode{name: name, region: "eu", via: rogue, staleness: time.Minute})
		rec := c.edges[name].p.waitLog(t, 0, "TLS handshake with the server failed")
		// A client certificate as issued has no serverAuth usage, which
		// refuses it before its kind is looked at (TestClientChecksServer
		// refuses a client certificate that has the usage, by kind).
		want := "spiffe://kb.test/client/mallory (serial"
		if kind == identity.Edge {
			want = "dialled an edge certificate (spiffe://kb.test/edge/mallory) as central"
		}
		if reason, _ := rec["reason"].(string); !strings.Contains(reason, want) {
			t.Errorf("edge log reason %q, want %q", reason, want)
		}
		if kind == identity.Client && !strings.Contains(fmt.Sprint(rec["reason"]), "has no serverAuth extended key usage") {
			t.Errorf("edge log reason %q does not say the certificate cannot serve", rec["reason"])
		}
	}
	rogue := c.rogueServer(t, identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Client, Name: "mallory"})
	out, code := c.cli(t, rogue, identity.Client, "app", nil, "random", "--length", "8")
	if code != exitTLS || !strings.Contains(out, "spiffe://kb.test/client/mallory (serial") || !strings.Contains(out, "has no serverAuth extended key usage") {
		t.Errorf("CLI at a client certificate: exit %d, %q; want %d and the reason", code, out, exitTLS)
	}
	// The operations port is no gRPC port, and the CLI says so.
	if out, code := c.cli(t, c.central.opsAddr, identity.Admin, "ops", nil, "random", "--length", "8"); code == 0 ||
		!strings.Contains(out, "is not a keybroker gRPC port") {
		t.Errorf("CLI at the operations port: exit %d, %q; want a refusal naming the port's kind", code, out)
	}
	files, err := c.ca.IssueFiles(identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Client, Name: "app"}, nil, time.Hour, c.dir, "sdk-app", c.caFile)
	must(t, "issuing", err)
	cl, err := client.New(t.Context(), client.Config{Addrs: []string{rogue}, Direct: true, MaxAttempts: 1, CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key})
	must(t, "client.New", err)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cl.GenerateRandom(ctx, 8); err == nil || !strings.Contains(err.Error(), "has no serverAuth extended key usage") {
		t.Errorf("SDK at a client certificate: %v, want a refusal saying why", err)
	}

	// A client certificate with serverAuth alone, sent anyway: central
	// says why it refuses it, instead of logging nothing.
	id := identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Client, Name: "corp-app"}
	certPEM, keyPEM := c.issueCustom(t, id, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, nil)
	mark := c.central.mark()
	r := c.dialWith(t, c.central.addr, id.String(), certPEM, keyPEM)
	_, _ = healthpb.NewHealthClient(r.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	rec := c.central.waitLog(t, mark, "TLS handshake refused")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "spiffe://kb.test/client/corp-app") ||
		!strings.Contains(reason, "has no clientAuth extended key usage; a keybroker client, admin or edge certificate needs it") {
		t.Errorf("central refused the handshake saying %q, want the missing clientAuth usage named", reason)
	}
}

// TestEdgeServerAuthOnlyRefusesToStart: an edge certificate with the
// serverAuth usage alone (common from corporate CAs) cannot dial the
// central tier; the edge says so and does not start, instead of looping on
// "tls: bad certificate".
func TestEdgeServerAuthOnlyRefusesToStart(t *testing.T) {
	c := newCluster(t)
	id := identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Edge, Name: "edge-corp"}
	certPEM, keyPEM := c.issueCustom(t, id, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []string{"127.0.0.1"})
	must(t, "cert", os.WriteFile(filepath.Join(c.dir, "edge-corp.crt"), certPEM, 0o644))
	must(t, "key", os.WriteFile(filepath.Join(c.dir, "edge-corp.key"), keyPEM, 0o600))
	config := filepath.Join(c.dir, "edge-corp.yaml")
	must(t, "config", os.WriteFile(config, []byte(`node_id: edge-corp
trust_domain: kb.test
listen: 127.0.0.1:0
ops_listen: 127.0.0.1:0
tls: {ca: ca.crt, cert: edge-corp.crt, key: edge-corp.key}
data_dir: edge-corp
central: {address: "127.0.0.1:1"}
`), 0o600))
	cmd := exec.CommandContext(t.Context(), keybrokerBin, "edge", "--config", config)
	cmd.Env = processEnv()
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the edge started with a serverAuth-only certificate:\n%s", out)
	}
	if want := "has no clientAuth extended key usage; an edge certificate needs serverAuth (clients dial it) and clientAuth (it dials the central tier)"; !strings.Contains(string(out), want) {
		t.Errorf("edge output does not say %q:\n%s", want, out)
	}
}

// TestEdgeRevokesAndRotatesLive: at a running edge, a client certificate
// put on the deny list has its open connection closed and its next call
// refused, with the reason on both sides; a certificate rotated on disk is
// presented on new handshakes without a restart, while the connection
// open before keeps working.
func TestEdgeRevokesAndRotatesLive(t *testing.T) {
	c := newEdgeClusterOn(t, softkmsRoots, basicRoots, "")
	deny := filepath.Join(c.dir, "deny.txt")
	must(t, "deny", os.WriteFile(deny, []byte("# nobody yet\n"), 0o600))
	c.addEdge(t, &edgeNode{name: "edge-eu-1", region: "eu", staleness: time.Minute, tls: ", deny: deny.txt, reload_interval: 100ms"})
	e := c.edges["edge-eu-1"]

	// Rotation: the serial each connection sees.
	serialOf := func(r *rpc) string {
		var p peer.Peer
		// grpc.health.v1: the same TLS and authentication as every call,
		// and no wait for the edge to follow the central tier.
		_, err := healthpb.NewHealthClient(r.conn).Check(t.Context(), &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		must(t, "Health.Check", err)
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber.Text(16)
	}
	old := c.dial(t, e.p.addr, identity.Client, "app")
	before := serialOf(old)
	mark := e.p.mark()
	files, err := c.ca.IssueFiles(identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Edge, Name: e.name}, []string{"127.0.0.1"}, time.Hour, c.dir, e.name, c.caFile)
	must(t, "rotating the edge certificate", err)
	rotated := mustSerial(t, files.Cert)
	e.p.waitLog(t, mark, "identity reloaded")
	// The edge takes the certificate an instant after reading it (once
	// it is checked for the edge's role): new connections see it soon.
	waitSerial := func(addr, want string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			got := serialOf(c.dial(t, addr, identity.Client, "app"))
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("new connections still see serial %s, want the rotated %s", got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitSerial(e.p.addr, rotated)
	if got := serialOf(old); got != before {
		t.Errorf("the connection open before the rotation sees serial %s, want %s: a healthy connection must not be dropped", got, before)
	}

	// Revocation by deny list.
	victim := identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Client, Name: "lost-laptop"}
	held := c.dial(t, e.p.addr, victim.Kind, victim.Name)
	serialOf(held)
	mark = e.p.mark()
	must(t, "deny", os.WriteFile(deny, []byte(victim.String()+"\n"), 0o600))
	rec := e.p.waitLog(t, mark, "closing an authenticated connection")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "spiffe://kb.test/client/lost-laptop is on the deny list") {
		t.Errorf("edge closed the connection saying %q, want the deny list named", reason)
	}
	out, code := c.cli(t, e.p.addr, victim.Kind, victim.Name, nil, "random", "--length", "8")
	if code == 0 || !strings.Contains(out, "the server refused our certificate") {
		t.Errorf("CLI with a denied certificate: exit %d, %q; want a refusal saying the server refused it", code, out)
	}
	rec = e.p.waitLog(t, mark, "TLS handshake refused")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "is on the deny list") {
		t.Errorf("edge refused the handshake saying %q, want the deny list named", reason)
	}
	// Others are untouched.
	serialOf(old)

	// SIGHUP re-reads the files at once, with polling off.
	c.addEdge(t, &edgeNode{name: "edge-hup", region: "eu", staleness: time.Minute, tls: ", reload_interval: 0s"})
	h := c.edges["edge-hup"]
	files, err = c.ca.IssueFiles(identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Edge, Name: h.name}, []string{"127.0.0.1"}, time.Hour, c.dir, h.name, c.caFile)
	must(t, "rotating the edge certificate", err)
	rotated = mustSerial(t, files.Cert)
	mark = h.p.mark()
	must(t, "SIGHUP", h.p.cmd.Process.Signal(syscall.SIGHUP))
	h.p.waitLog(t, mark, "identity reloaded")
	waitSerial(h.p.addr, rotated)
}

func mustSerial(t *testing.T, certFile string) string {
	t.Helper()
	raw, err := os.ReadFile(certFile)
	must(t, "reading the certificate", err)
	b, _ := pem.Decode(raw)
	cert, err := x509.ParseCertificate(b.Bytes)
	must(t, "parsing the certificate", err)
	return cert.SerialNumber.Text(16)
}

// TestCentralRevokesEdge: an edge put on central's deny list (a
// compromised edge) has its connections to the central tier closed, and
// its reconnections refused with the reason logged on both sides.
func TestCentralRevokesEdge(t *testing.T) {
	c := &edgeCluster{cluster: newClusterOn(t, softkmsRoots, basicRoots), edges: map[string]*edgeNode{}}
	deny := filepath.Join(c.dir, "deny.txt")
	must(t, "deny", os.WriteFile(deny, []byte("# nobody yet\n"), 0o600))
	cfg, err := os.ReadFile(c.config)
	must(t, "reading central.yaml", err)
	cfg = []byte(strings.Replace(string(cfg), "tls: {ca: ca.crt, cert: central.crt, key: central.key}",
		"tls: {ca: ca.crt, cert: central.crt, key: central.key, deny: deny.txt, reload_interval: 100ms}", 1))
	cfg = append(cfg, "edges: {lease: 2s, heartbeat: 200ms}\n"...)
	must(t, "writing central.yaml", os.WriteFile(c.config, cfg, 0o600))
	c.central = c.startCentral(t)
	c.admin = c.dial(t, c.central.addr, identity.Admin, "ops")
	c.addEdge(t, &edgeNode{name: "edge-bad", region: "eu", staleness: time.Minute})
	e := c.edges["edge-bad"]
	e.p.waitLog(t, 0, "following the central tier")

	mark, emark := c.central.mark(), e.p.mark()
	must(t, "deny", os.WriteFile(deny, []byte("spiffe://kb.test/edge/edge-bad # compromised\n"), 0o600))
	rec := c.central.waitLog(t, mark, "closing an authenticated connection")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "spiffe://kb.test/edge/edge-bad is on the deny list") {
		t.Errorf("central closed the edge's connection saying %q, want the deny list named", reason)
	}
	rec = c.central.waitLog(t, mark, "TLS handshake refused")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "is on the deny list") {
		t.Errorf("central refused the edge's handshake saying %q", reason)
	}
	rec = e.p.waitLog(t, emark, "TLS handshake with the server failed")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "the server refused our certificate") {
		t.Errorf("the edge says %q, want that central refused its certificate", reason)
	}
}

// TestSDKForwardsAcrossRotation: after the SDK's own certificate rotates,
// a call an edge forwards on the connection opened before is still proven
// with the key of the certificate that connection presented — the chain
// the edge passes on — and succeeds.
func TestSDKForwardsAcrossRotation(t *testing.T) {
	c := newEdgeCluster(t, &edgeNode{name: "edge-eu-1", region: "eu", prefetch: true, staleness: time.Hour})
	ctx := t.Context()
	m, err := c.admin.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "hsm", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_BACKEND, Labels: map[string]string{"owner": e2eTrustDomain}})
	must(t, "CreateKey", err)
	c.waitApplied(t, m.GetRevision())
	app := identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Client, Name: "app"}
	files, err := c.ca.IssueFiles(app, nil, time.Hour, c.dir, "sdk-rot", c.caFile)
	must(t, "client certificate", err)
	src, err := identity.NewFileSource(files, identity.FileOptions{ReloadInterval: -1})
	must(t, "source", err)
	defer src.Close()
	edge := c.edges["edge-eu-1"].p.addr
	cl, err := client.New(ctx, client.Config{Addrs: []string{edge}, Direct: true, Source: src})
	must(t, "client.New", err)
	defer cl.Close()
	if _, err := cl.Encrypt(ctx, "hsm", []byte("before"), nil); err != nil {
		t.Fatalf("forwarded Encrypt before the rotation: %v", err)
	}
	_, err = c.ca.IssueFiles(app, nil, time.Hour, c.dir, "sdk-rot", c.caFile)
	must(t, "rotating the client certificate", err)
	must(t, "reload", src.Reload())
	if _, err := cl.Encrypt(ctx, "hsm", []byte("after"), nil); err != nil {
		t.Errorf("forwarded Encrypt on the connection opened before the rotation: %v", err)
	}
	if n := len(cl.Calls()); n != 1 {
		t.Errorf("calls went to %d nodes, want the edge alone", n)
	}
}
