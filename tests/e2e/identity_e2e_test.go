package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestServersCheckedByKind: an edge whose central address reaches a peer
// of the trust domain presenting a client (or edge) certificate refuses
// it and logs why; the CLI and the SDK refuse a node presenting a client
// certificate, and say why in the error the user sees.
func TestServersCheckedByKind(t *testing.T) {
	c := framework.NewProcessesOn(t, framework.SoftkmsRoots, framework.BasicRoots, "")
	for _, kind := range []identity.Kind{identity.Client, identity.Edge} {
		rogue := c.RogueServer(t, identity.Identity{TrustDomain: framework.TrustDomain, Kind: kind, Name: "mallory"})
		name := "edge-to-rogue-" + string(kind)
		c.AddEdge(t, &framework.EdgeNode{Name: name, Region: "eu", Via: rogue, Staleness: time.Minute})
		rec := c.Edges[name].Proc.WaitLog(t, 0, "TLS handshake with the server failed")
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
	rogue := c.RogueServer(t, identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "mallory"})
	out, code := c.CLIAs(t, rogue, identity.Client, "app", nil, "random", "--length", "8")
	if code != exitTLS || !strings.Contains(out, "spiffe://kb.test/client/mallory (serial") || !strings.Contains(out, "has no serverAuth extended key usage") {
		t.Errorf("CLI at a client certificate: exit %d, %q; want %d and the reason", code, out, exitTLS)
	}
	// The operations port is no gRPC port, and the CLI says so.
	if out, code := c.CLIAs(t, c.Central.OpsAddr, identity.Admin, "ops", nil, "random", "--length", "8"); code == 0 ||
		!strings.Contains(out, "is not a keybroker gRPC port") {
		t.Errorf("CLI at the operations port: exit %d, %q; want a refusal naming the port's kind", code, out)
	}
	files, err := c.CA.IssueFiles(identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "app"}, nil, time.Hour, c.Dir, "sdk-app", c.CAFile)
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
	id := identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "corp-app"}
	certPEM, keyPEM := c.IssueCustom(t, id, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, nil)
	mark := c.Central.Mark()
	r := c.DialWith(t, c.Central.Addr, id.String(), certPEM, keyPEM)
	_, _ = healthpb.NewHealthClient(r.Conn).Check(ctx, &healthpb.HealthCheckRequest{})
	rec := c.Central.WaitLog(t, mark, "TLS handshake refused")
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
	c := framework.NewSetup(t)
	id := identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Edge, Name: "edge-corp"}
	certPEM, keyPEM := c.IssueCustom(t, id, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []string{"127.0.0.1"})
	must(t, "cert", os.WriteFile(filepath.Join(c.Dir, "edge-corp.crt"), certPEM, 0o644))
	must(t, "key", os.WriteFile(filepath.Join(c.Dir, "edge-corp.key"), keyPEM, 0o600))
	config := filepath.Join(c.Dir, "edge-corp.yaml")
	must(t, "config", os.WriteFile(config, []byte(`node_id: edge-corp
trust_domain: kb.test
listen: 127.0.0.1:0
ops_listen: 127.0.0.1:0
tls: {ca: ca.crt, cert: edge-corp.crt, key: edge-corp.key}
data_dir: edge-corp
central: {address: "127.0.0.1:1"}
`), 0o600))
	cmd := exec.CommandContext(t.Context(), framework.Binary(), "edge", "--config", config)
	cmd.Env = framework.ProcessEnv()
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
	c := framework.NewProcessesOn(t, framework.SoftkmsRoots, framework.BasicRoots, "")
	deny := filepath.Join(c.Dir, "deny.txt")
	must(t, "deny", os.WriteFile(deny, []byte("# nobody yet\n"), 0o600))
	c.AddEdge(t, &framework.EdgeNode{Name: "edge-eu-1", Region: "eu", Staleness: time.Minute, TLS: ", deny: deny.txt, reload_interval: 100ms"})
	e := c.Edges["edge-eu-1"]

	// Rotation: the serial each connection sees.
	serialOf := func(r *framework.Conn) string {
		var p peer.Peer
		// grpc.health.v1: the same TLS and authentication as every call,
		// and no wait for the edge to follow the central tier.
		_, err := healthpb.NewHealthClient(r.Conn).Check(t.Context(), &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		must(t, "Health.Check", err)
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber.Text(16)
	}
	old := c.Dial(t, e.Proc.Addr, identity.Client, "app")
	before := serialOf(old)
	mark := e.Proc.Mark()
	files, err := c.CA.IssueFiles(identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Edge, Name: e.Name}, []string{"127.0.0.1"}, time.Hour, c.Dir, e.Name, c.CAFile)
	must(t, "rotating the edge certificate", err)
	rotated := mustSerial(t, files.Cert)
	e.Proc.WaitLog(t, mark, "identity reloaded")
	// The edge takes the certificate an instant after reading it (once
	// it is checked for the edge's role): new connections see it soon.
	waitSerial := func(addr, want string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			got := serialOf(c.Dial(t, addr, identity.Client, "app"))
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("new connections still see serial %s, want the rotated %s", got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitSerial(e.Proc.Addr, rotated)
	if got := serialOf(old); got != before {
		t.Errorf("the connection open before the rotation sees serial %s, want %s: a healthy connection must not be dropped", got, before)
	}

	// Revocation by deny list.
	victim := identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "lost-laptop"}
	held := c.Dial(t, e.Proc.Addr, victim.Kind, victim.Name)
	serialOf(held)
	mark = e.Proc.Mark()
	must(t, "deny", os.WriteFile(deny, []byte(victim.String()+"\n"), 0o600))
	rec := e.Proc.WaitLog(t, mark, "closing an authenticated connection")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "spiffe://kb.test/client/lost-laptop is on the deny list") {
		t.Errorf("edge closed the connection saying %q, want the deny list named", reason)
	}
	out, code := c.CLIAs(t, e.Proc.Addr, victim.Kind, victim.Name, nil, "random", "--length", "8")
	if code == 0 || !strings.Contains(out, "the server refused our certificate") {
		t.Errorf("CLI with a denied certificate: exit %d, %q; want a refusal saying the server refused it", code, out)
	}
	rec = e.Proc.WaitLog(t, mark, "TLS handshake refused")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "is on the deny list") {
		t.Errorf("edge refused the handshake saying %q, want the deny list named", reason)
	}
	// Others are untouched.
	serialOf(old)

	// SIGHUP re-reads the files at once, with polling off.
	c.AddEdge(t, &framework.EdgeNode{Name: "edge-hup", Region: "eu", Staleness: time.Minute, TLS: ", reload_interval: 0s"})
	h := c.Edges["edge-hup"]
	files, err = c.CA.IssueFiles(identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Edge, Name: h.Name}, []string{"127.0.0.1"}, time.Hour, c.Dir, h.Name, c.CAFile)
	must(t, "rotating the edge certificate", err)
	rotated = mustSerial(t, files.Cert)
	mark = h.Proc.Mark()
	must(t, "SIGHUP", h.Proc.Cmd.Process.Signal(syscall.SIGHUP))
	h.Proc.WaitLog(t, mark, "identity reloaded")
	waitSerial(h.Proc.Addr, rotated)
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
	c := &framework.Processes{Setup: framework.NewSetupOn(t, framework.SoftkmsRoots, framework.BasicRoots), Edges: map[string]*framework.EdgeNode{}}
	deny := filepath.Join(c.Dir, "deny.txt")
	must(t, "deny", os.WriteFile(deny, []byte("# nobody yet\n"), 0o600))
	cfg, err := os.ReadFile(c.Config)
	must(t, "reading central.yaml", err)
	cfg = []byte(strings.Replace(string(cfg), "tls: {ca: ca.crt, cert: central.crt, key: central.key}",
		"tls: {ca: ca.crt, cert: central.crt, key: central.key, deny: deny.txt, reload_interval: 100ms}", 1))
	cfg = append(cfg, "edges: {lease: 2s, heartbeat: 200ms}\n"...)
	must(t, "writing central.yaml", os.WriteFile(c.Config, cfg, 0o600))
	c.Central = c.StartCentral(t)
	c.Admin = c.Dial(t, c.Central.Addr, identity.Admin, "ops")
	c.AddEdge(t, &framework.EdgeNode{Name: "edge-bad", Region: "eu", Staleness: time.Minute})
	e := c.Edges["edge-bad"]
	e.Proc.WaitLog(t, 0, "following the central tier")

	mark, emark := c.Central.Mark(), e.Proc.Mark()
	must(t, "deny", os.WriteFile(deny, []byte("spiffe://kb.test/edge/edge-bad # compromised\n"), 0o600))
	rec := c.Central.WaitLog(t, mark, "closing an authenticated connection")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "spiffe://kb.test/edge/edge-bad is on the deny list") {
		t.Errorf("central closed the edge's connection saying %q, want the deny list named", reason)
	}
	rec = c.Central.WaitLog(t, mark, "TLS handshake refused")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "is on the deny list") {
		t.Errorf("central refused the edge's handshake saying %q", reason)
	}
	rec = e.Proc.WaitLog(t, emark, "TLS handshake with the server failed")
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "the server refused our certificate") {
		t.Errorf("the edge says %q, want that central refused its certificate", reason)
	}
}

// TestSDKForwardsAcrossRotation: after the SDK's own certificate rotates,
// a call an edge forwards on the connection opened before is still proven
// with the key of the certificate that connection presented — the chain
// the edge passes on — and succeeds.
func TestSDKForwardsAcrossRotation(t *testing.T) {
	c := framework.NewProcesses(t, &framework.EdgeNode{Name: "edge-eu-1", Region: "eu", Prefetch: true, Staleness: time.Hour})
	ctx := t.Context()
	m, err := c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "hsm", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_BACKEND, Labels: map[string]string{"owner": framework.TrustDomain}})
	must(t, "CreateKey", err)
	c.WaitApplied(t, m.GetRevision())
	app := identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "app"}
	files, err := c.CA.IssueFiles(app, nil, time.Hour, c.Dir, "sdk-rot", c.CAFile)
	must(t, "client certificate", err)
	src, err := identity.NewFileSource(files, identity.FileOptions{ReloadInterval: -1})
	must(t, "source", err)
	defer src.Close()
	edge := c.Edges["edge-eu-1"].Proc.Addr
	cl, err := client.New(ctx, client.Config{Addrs: []string{edge}, Direct: true, Source: src})
	must(t, "client.New", err)
	defer cl.Close()
	if _, err := cl.Encrypt(ctx, "hsm", []byte("before"), nil); err != nil {
		t.Fatalf("forwarded Encrypt before the rotation: %v", err)
	}
	_, err = c.CA.IssueFiles(app, nil, time.Hour, c.Dir, "sdk-rot", c.CAFile)
	must(t, "rotating the client certificate", err)
	must(t, "reload", src.Reload())
	if _, err := cl.Encrypt(ctx, "hsm", []byte("after"), nil); err != nil {
		t.Errorf("forwarded Encrypt on the connection opened before the rotation: %v", err)
	}
	if n := len(cl.Calls()); n != 1 {
		t.Errorf("calls went to %d nodes, want the edge alone", n)
	}
}
