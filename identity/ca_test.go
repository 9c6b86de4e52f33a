package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func parsePEM(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIssueUsagesPerKind: each kind gets exactly the extended key usages
// its role needs, one URI SAN, digitalSignature, CN = name, a 128-bit-class
// random serial, its default lifetime, and host SANs only when it serves.
func TestIssueUsagesPerKind(t *testing.T) {
	ca, err := NewCA("kb.test", CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	server := x509.ExtKeyUsageServerAuth
	client := x509.ExtKeyUsageClientAuth
	for _, tc := range []struct {
		kind     Kind
		hosts    []string
		usages   []x509.ExtKeyUsage
		validity time.Duration
	}{
		{Client, nil, []x509.ExtKeyUsage{client}, 7 * 24 * time.Hour},
		{Admin, nil, []x509.ExtKeyUsage{client}, 7 * 24 * time.Hour},
		{Edge, []string{"edge-eu-1.kb.example", "10.0.0.5"}, []x509.ExtKeyUsage{server, client}, 30 * 24 * time.Hour},
		{Central, []string{"central.kb.example"}, []x509.ExtKeyUsage{server, client}, 30 * 24 * time.Hour},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			id := Identity{TrustDomain: "kb.test", Kind: tc.kind, Name: "n-1"}
			certPEM, keyPEM, err := ca.Issue(id, tc.hosts, 0)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Fatalf("certificate and key do not pair: %v", err)
			}
			c := parsePEM(t, certPEM)
			if diff := cmp.Diff(tc.usages, c.ExtKeyUsage); diff != "" {
				t.Errorf("ExtKeyUsage (-want +got):\n%s", diff)
			}
			if c.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("KeyUsage = %v, want digitalSignature only", c.KeyUsage)
			}
			if len(c.URIs) != 1 || c.URIs[0].String() != id.String() {
				t.Errorf("URIs = %v, want exactly [%s]", c.URIs, id)
			}
			if c.Subject.CommonName != "n-1" {
				t.Errorf("CN = %q, want n-1", c.Subject.CommonName)
			}
			if c.IsCA {
				t.Error("leaf is a CA")
			}
			if got := c.NotAfter.Sub(c.NotBefore) - time.Minute; got.Round(time.Minute) != tc.validity {
				t.Errorf("lifetime %v, want %v", got, tc.validity)
			}
			var hosts []string
			hosts = append(hosts, c.DNSNames...)
			for _, ip := range c.IPAddresses {
				hosts = append(hosts, ip.String())
			}
			if diff := cmp.Diff(tc.hosts, hosts); diff != "" {
				t.Errorf("host SANs (-want +got):\n%s", diff)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 || c.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %x: want positive, random, at most 128 bits", c.SerialNumber)
			}
			// The chain verifies for the usages of the kind, and for no
			// other: a client certificate cannot serve.
			if f := CheckChain(c, nil, []*x509.Certificate{ca.Cert}, time.Now()); f != nil {
				t.Errorf("CheckChain: %v", f)
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: pool(ca.Cert), KeyUsages: []x509.ExtKeyUsage{server}})
			if gotServe, wantServe := err == nil, tc.kind.Serves(); gotServe != wantServe {
				t.Errorf("verifies as a server: %v (%v), want %v", gotServe, err, wantServe)
			}
			for _, f := range Check(c, time.Now()) {
				t.Errorf("Check found: %v", f)
			}
		})
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestIssueRefuses: hosts for a client or admin, bad hosts for a node,
// other trust domains and negative lifetimes are refused with an error
// naming the problem.
func TestIssueRefuses(t *testing.T) {
	ca, err := NewCA("kb.test", CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		id       Identity
		hosts    []string
		validity time.Duration
		want     string
	}{
		{"client with a host", Identity{"kb.test", Client, "app"}, []string{"127.0.0.1"}, 0, "client certificates carry no DNS names or IP addresses"},
		{"admin with a name", Identity{"kb.test", Admin, "ops"}, []string{"ops.kb.test"}, 0, "admin certificates carry no DNS names"},
		{"wildcard", Identity{"kb.test", Edge, "e"}, []string{"*.kb.test"}, 0, "neither a DNS name"},
		{"host with a port", Identity{"kb.test", Edge, "e"}, []string{"kb.test:443"}, 0, "neither a DNS name"},
		{"empty host", Identity{"kb.test", Central, "c"}, []string{""}, 0, "neither a DNS name"},
		{"other trust domain", Identity{"x.test", Client, "a"}, nil, 0, "not in trust domain"},
		{"unknown kind", Identity{"kb.test", "robot", "a"}, nil, 0, "kind"},
		{"negative validity", Identity{"kb.test", Client, "a"}, nil, -time.Hour, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, k, err := ca.Issue(tc.id, tc.hosts, tc.validity)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Issue = %d, %d bytes, %v; want an error containing %q", len(c), len(k), err, tc.want)
			}
		})
	}
}

// TestLeafNeverOutlivesCA: a leaf asked to live past the CA expires with
// it.
func TestLeafNeverOutlivesCA(t *testing.T) {
	ca, err := NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := ca.Issue(Identity{"kb.test", Edge, "e"}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := parsePEM(t, c).NotAfter; !got.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter = %v, want the CA's %v", got, ca.Cert.NotAfter)
	}
}

// TestCATrustDomain: the CA certificate names its trust domain.
func TestCATrustDomain(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca, err := NewSignerCA("kb.test", key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if td, err := CATrustDomain(ca.Cert); td != "kb.test" || err != nil {
		t.Errorf("CATrustDomain = %q, %v", td, err)
	}
	if len(ca.Cert.URIs) != 1 || ca.Cert.URIs[0].String() != "spiffe://kb.test" {
		t.Errorf("CA URIs = %v, want [spiffe://kb.test]", ca.Cert.URIs)
	}
}

// TestLoadSignerCA: a CA certificate loads only with its own key.
func TestLoadSignerCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "ca.crt")
	if err := ca.WriteCA(certFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := LoadSignerCA(certFile, other); err == nil || !strings.Contains(err.Error(), "not the key") {
		t.Errorf("LoadSignerCA with another key: %v, want refused", err)
	}
	got, err := LoadCA(certFile, filepath.Join(dir, "ca.key"))
	if err != nil || got.TrustDomain != "kb.test" {
		t.Fatalf("LoadCA = %+v, %v", got, err)
	}
	// A leaf is not a CA.
	leafPEM, _, _ := ca.Issue(Identity{"kb.test", Client, "a"}, nil, 0)
	leafFile := filepath.Join(dir, "leaf.crt")
	if err := writeFile(leafFile, leafPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSignerCA(leafFile, other); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("LoadSignerCA of a leaf: %v, want refused", err)
	}
}

// TestCheckFindings: Check flags what keybroker or its peers refuse, as
// problems, and what a role does not need, as warnings. The corporate-CA
// edge certificate with serverAuth only is the case issue 14 saw loop on
// "tls: bad certificate".
func TestCheckFindings(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca, err := NewSignerCA("kb.test", caKey, CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	make := func(edit func(*x509.Certificate)) *x509.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(30 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			URIs:         []*url.URL{{Scheme: "spiffe", Host: "kb.test", Path: "/edge/edge-eu-1"}},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		edit(tmpl)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	spiffe := func(path string) []*url.URL { return []*url.URL{{Scheme: "spiffe", Host: "kb.test", Path: path}} }
	for _, tc := range []struct {
		name     string
		edit     func(*x509.Certificate)
		problems []string
		warnings []string
	}{
		{"good edge", func(*x509.Certificate) {}, nil, nil},
		{"edge with serverAuth only", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} },
			[]string{"lacks the clientAuth extended key usage: the edge dials the central tier"}, nil},
		{"edge with clientAuth only", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} },
			[]string{"lacks the serverAuth extended key usage: clients refuse the edge"}, nil},
		{"no SPIFFE id", func(c *x509.Certificate) { c.URIs = nil }, []string{"no keybroker SPIFFE id"}, nil},
		{"two SPIFFE ids", func(c *x509.Certificate) { c.URIs = append(spiffe("/edge/a"), spiffe("/edge/b")...) }, []string{"no keybroker SPIFFE id"}, nil},
		{"expired", func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-48*time.Hour), now.Add(-time.Hour) }, []string{"expired at"}, nil},
		{"not yet valid", func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour) }, []string{"not valid until"}, nil},
		{"renewal due", func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-29*24*time.Hour), now.Add(24*time.Hour) }, nil, []string{"expires in"}},
		{"no digitalSignature", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }, []string{"lacks digitalSignature"}, nil},
		{"client that can serve", func(c *x509.Certificate) { c.URIs = spiffe("/client/app") },
			nil, []string{"also allows serverAuth", "carries DNS names or IP addresses"}},
		{"admin without clientAuth", func(c *x509.Certificate) {
			c.URIs, c.IPAddresses, c.ExtKeyUsage = spiffe("/admin/ops"), nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}, []string{"lacks the clientAuth extended key usage: every node refuses it"}, []string{"also allows serverAuth"}},
		{"central without hosts", func(c *x509.Certificate) { c.URIs, c.IPAddresses = spiffe("/central/c"), nil }, nil, []string{"no DNS names or IP addresses"}},
		{"no EKU at all", func(c *x509.Certificate) { c.ExtKeyUsage = nil }, nil, []string{"no extended key usage"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var problems, warnings []string
			for _, f := range Check(make(tc.edit), now) {
				if f.Problem {
					problems = append(problems, f.Text)
				} else {
					warnings = append(warnings, f.Text)
				}
			}
			match := func(kind string, got, want []string) {
				if len(got) != len(want) {
					t.Errorf("%s = %q, want %d matching %q", kind, got, len(want), want)
					return
				}
				for _, w := range want {
					if !slices.ContainsFunc(got, func(g string) bool { return strings.Contains(g, w) }) {
						t.Errorf("%s = %q, want one containing %q", kind, got, w)
					}
				}
			}
			match("problems", problems, tc.problems)
			match("warnings", warnings, tc.warnings)
		})
	}

	// Chain checks: another CA, and the usage the kind needs.
	other, _ := NewCA("kb.test", time.Hour)
	edge := make(func(*x509.Certificate) {})
	if f := CheckChain(edge, nil, []*x509.Certificate{other.Cert}, now); f == nil || !strings.Contains(f.Text, "unknown authority") {
		t.Errorf("CheckChain against another CA = %v, want unknown authority", f)
	}
	serverOnly := make(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })
	if f := CheckChain(serverOnly, nil, []*x509.Certificate{ca.Cert}, now); f == nil || !strings.Contains(f.Text, "usage") {
		t.Errorf("CheckChain of a serverAuth-only edge = %v, want a usage refusal", f)
	}
}

// TestClientCertificateCannotServe: a client's certificate (clientAuth
// only, no hosts) presented by a server — a stolen client key posing as a
// node — fails the TLS handshake of a client that trusts the same CA.
func TestClientCertificateCannotServe(t *testing.T) {
	c := newCluster(t, "kb.test")
	addr, seen := serve(t, c.issue(t, Client, "mallory"), "kb.test")
	cfg, err := c.issue(t, Admin, "ops").ClientConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if err := call(t, addr, cfg); err == nil {
		t.Fatal("a client certificate served a TLS handshake")
	}
	// Even a client that names no host (as one checking SPIFFE ids, not
	// host names, does) refuses it: the chain lacks serverAuth.
	cfg.InsecureSkipVerify = true
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: cfg.RootCAs, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	if err := call(t, addr, cfg); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("a client certificate served a handshake checked by usage: %v", err)
	}
	if n := len(seen()); n != 0 {
		t.Errorf("%d calls reached the impostor's handler", n)
	}
}
