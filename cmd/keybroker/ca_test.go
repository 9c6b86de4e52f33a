package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

func readCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := readLeaf(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// TestCAInitAndIssue: ca init writes a file CA (ca.crt 0644, ca.key 0600,
// ca.yaml) and refuses to replace it; cert issue gives each kind its
// usages and hosts, refuses hosts for clients and admins, never overwrites,
// and never prints the key.
func TestCAInitAndIssue(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	certs := filepath.Join(dir, "certs")
	r := runCLI(t, nil, nil, "ca", "init", "--trust-domain", "kb.example", "--dir", caDir)
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "created the CA of trust domain kb.example") {
		t.Errorf("ca init said:\n%s", r.stdout)
	}
	for f, mode := range map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "ca.yaml": 0o644} {
		if got := fileMode(t, filepath.Join(caDir, f)); got != mode {
			t.Errorf("%s mode %v, want %v", f, got, mode)
		}
	}
	caCert := readCertFile(t, filepath.Join(caDir, "ca.crt"))
	if got := caCert.NotAfter.Sub(caCert.NotBefore).Round(24 * time.Hour); got != identity.CAValidity {
		t.Errorf("CA lifetime %v, want %v", got, identity.CAValidity)
	}
	before, _ := os.ReadFile(filepath.Join(caDir, "ca.key"))
	r = runCLI(t, nil, nil, "ca", "init", "--trust-domain", "kb.example", "--dir", caDir)
	wantCode(t, r, exitInvalid)
	if !strings.Contains(r.stderr, "already holds a CA") || !strings.Contains(r.stderr, "remove") {
		t.Errorf("second ca init said: %s", r.stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(caDir, "ca.key")); string(after) != string(before) {
		t.Error("a refused ca init changed ca.key")
	}
	wantCode(t, runCLI(t, nil, nil, "ca", "init", "--trust-domain", "KB.example", "--dir", filepath.Join(dir, "bad")), exitUsage)

	for _, tc := range []struct {
		args   []string
		usages string
		hosts  string
	}{
		{[]string{"--kind", "central", "--name", "central-1", "--dns", "central.kb.example", "--ip", "127.0.0.1"}, "serverAuth, clientAuth", "central.kb.example, 127.0.0.1"},
		{[]string{"--kind", "edge", "--name", "edge-eu", "--ip", "127.0.0.1"}, "serverAuth, clientAuth", "127.0.0.1"},
		{[]string{"--kind", "admin", "--name", "ops"}, "clientAuth", ""},
		{[]string{"--kind", "client", "--name", "billing", "--validity", "24h"}, "clientAuth", ""},
	} {
		r := runCLI(t, nil, nil, append([]string{"cert", "issue", "--ca-dir", caDir, "--out", certs}, tc.args...)...)
		wantCode(t, r, exitOK)
		name := tc.args[3]
		c := readCertFile(t, filepath.Join(certs, name+".crt"))
		if got := usageNames(c); got != tc.usages {
			t.Errorf("%s: usages %q, want %q", name, got, tc.usages)
		}
		if got := hostNames(c); got != tc.hosts {
			t.Errorf("%s: hosts %q, want %q", name, got, tc.hosts)
		}
		id, _ := identity.FromCertificate(c)
		for _, want := range []string{"wrote " + filepath.Join(certs, name+".crt"), "id       " + id.String(), "usages   " + tc.usages, "expires  "} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("cert issue %s output lacks %q:\n%s", name, want, r.stdout)
			}
		}
		if strings.Contains(r.stdout+r.stderr, "PRIVATE KEY") {
			t.Errorf("cert issue printed a private key:\n%s", r.stdout)
		}
		if got := fileMode(t, filepath.Join(certs, name+".key")); got != 0o600 {
			t.Errorf("%s.key mode %v, want 0600", name, got)
		}
		if _, err := tls.LoadX509KeyPair(filepath.Join(certs, name+".crt"), filepath.Join(certs, name+".key")); err != nil {
			t.Errorf("%s: the files are not a pair: %v", name, err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: certPool(caCert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s does not verify against ca.crt: %v", name, err)
		}
	}
	if got := readCertFile(t, filepath.Join(certs, "billing.crt")); got.NotAfter.Sub(got.NotBefore) != 24*time.Hour+time.Minute {
		t.Errorf("--validity 24h gave %v", got.NotAfter.Sub(got.NotBefore))
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"client with a DNS name", []string{"--kind", "client", "--name", "x", "--dns", "x.kb.example"}, exitUsage, "a client certificate carries no --dns or --ip"},
		{"admin with an IP", []string{"--kind", "admin", "--name", "y", "--ip", "10.0.0.1"}, exitUsage, "an admin certificate carries no"},
		{"IP given as --dns", []string{"--kind", "edge", "--name", "e", "--dns", "10.0.0.1"}, exitUsage, "give it with --ip"},
		{"not an IP", []string{"--kind", "edge", "--name", "e", "--ip", "edge.example"}, exitUsage, "not an IP address"},
		{"wildcard", []string{"--kind", "edge", "--name", "e", "--dns", "*.kb.example"}, exitUsage, "no wildcard"},
		{"unknown kind", []string{"--kind", "robot", "--name", "e"}, exitUsage, "robot"},
		{"bad name", []string{"--kind", "client", "--name", "a/b"}, exitUsage, "--name"},
		{"other trust domain", []string{"--kind", "client", "--name", "z", "--trust-domain", "other.example"}, exitUsage, "issues for kb.example"},
		{"existing files", []string{"--kind", "edge", "--name", "edge-eu"}, exitInvalid, "cert renew"},
		{"no CA", []string{"--kind", "client", "--name", "z", "--ca-dir", dir}, exitUsage, "keybroker ca init"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, nil, nil, append([]string{"cert", "issue", "--ca-dir", caDir, "--out", certs}, tc.args...)...)
			wantCode(t, r, tc.code)
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", r.stderr, tc.want)
			}
		})
	}
}

func certPool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestCertRenew: renew keeps the SPIFFE id and hosts, changes the serial
// and the key (or, with --keep-key, only the serial), keeps the old
// lifetime by default, and refuses a certificate another CA issued.
func TestCertRenew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caDir, certs := filepath.Join(dir, "ca"), filepath.Join(dir, "certs")
	wantCode(t, runCLI(t, nil, nil, "ca", "init", "--trust-domain", "kb.example", "--dir", caDir), exitOK)
	wantCode(t, runCLI(t, nil, nil, "cert", "issue", "--ca-dir", caDir, "--kind", "edge", "--name", "edge-eu",
		"--dns", "edge-eu.kb.example", "--ip", "10.0.0.5", "--validity", "10d", "--out", certs), exitOK)
	certFile, keyFile := filepath.Join(certs, "edge-eu.crt"), filepath.Join(certs, "edge-eu.key")
	old := readCertFile(t, certFile)
	oldKey, _ := os.ReadFile(keyFile)

	r := runCLI(t, nil, nil, "cert", "renew", "--ca-dir", caDir, "--cert", certFile)
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "renewed "+certFile+" with a new key") || !strings.Contains(r.stdout, "spiffe://kb.example/edge/edge-eu") {
		t.Errorf("renew said:\n%s", r.stdout)
	}
	renewed := readCertFile(t, certFile)
	newKey, _ := os.ReadFile(keyFile)
	if diff := cmp.Diff(old.URIs, renewed.URIs); diff != "" {
		t.Errorf("URIs changed (-old +new):\n%s", diff)
	}
	if hostNames(old) != hostNames(renewed) || usageNames(old) != usageNames(renewed) {
		t.Errorf("hosts/usages %q %q became %q %q", hostNames(old), usageNames(old), hostNames(renewed), usageNames(renewed))
	}
	if old.SerialNumber.Cmp(renewed.SerialNumber) == 0 {
		t.Error("the serial number did not change")
	}
	if string(oldKey) == string(newKey) {
		t.Error("the key did not change")
	}
	if got := renewed.NotAfter.Sub(renewed.NotBefore); got != 10*24*time.Hour+time.Minute {
		t.Errorf("renewed lifetime %v, want the old 10d", got)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("renewed files are not a pair: %v", err)
	}
	if fileMode(t, keyFile) != 0o600 || fileMode(t, certFile) != 0o644 {
		t.Errorf("modes %v %v after renew", fileMode(t, keyFile), fileMode(t, certFile))
	}

	r = runCLI(t, nil, nil, "cert", "renew", "--ca-dir", caDir, "--cert", certFile, "--keep-key", "--validity", "2d")
	wantCode(t, r, exitOK)
	kept := readCertFile(t, certFile)
	if after, _ := os.ReadFile(keyFile); string(after) != string(newKey) {
		t.Error("--keep-key replaced the key")
	}
	if !kept.PublicKey.(*ecdsa.PublicKey).Equal(renewed.PublicKey) || kept.SerialNumber.Cmp(renewed.SerialNumber) == 0 {
		t.Error("--keep-key: want the same public key and a new serial")
	}
	if got := kept.NotAfter.Sub(kept.NotBefore); got != 2*24*time.Hour+time.Minute {
		t.Errorf("--validity 2d gave %v", got)
	}

	// An old client certificate with host names (as keybroker dev used to
	// issue) is renewed without them.
	ca, err := identity.LoadCA(filepath.Join(caDir, "ca.crt"), filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(9), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs: []*url.URL{{Scheme: "spiffe", Host: "kb.example", Path: "/client/app"}}, DNSNames: []string{"localhost"},
	}, ca.Cert, &k.PublicKey, loadKey(t, filepath.Join(caDir, "ca.key")))
	if err != nil {
		t.Fatal(err)
	}
	appFile := writeFile(t, certs, "app.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	r = runCLI(t, nil, nil, "cert", "renew", "--ca-dir", caDir, "--cert", appFile, "--validity", "7d")
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "dropped the host names") {
		t.Errorf("renew of a client certificate with hosts said:\n%s", r.stdout)
	}
	if app := readCertFile(t, appFile); hostNames(app) != "" || usageNames(app) != "clientAuth" {
		t.Errorf("renewed app certificate: hosts %q, usages %q; want none, clientAuth", hostNames(app), usageNames(app))
	}

	// A certificate from another CA is not renewed, and nothing changes.
	otherDir := filepath.Join(dir, "other")
	wantCode(t, runCLI(t, nil, nil, "ca", "init", "--trust-domain", "kb.example", "--dir", otherDir), exitOK)
	r = runCLI(t, nil, nil, "cert", "renew", "--ca-dir", otherDir, "--cert", certFile)
	wantCode(t, r, exitInvalid)
	if !strings.Contains(r.stderr, "not issued by the CA") {
		t.Errorf("renew with another CA said: %s", r.stderr)
	}
	if now := readCertFile(t, certFile); now.SerialNumber.Cmp(kept.SerialNumber) != 0 {
		t.Error("a refused renew replaced the certificate")
	}
}

// TestCertShow: show prints the id, usages and expiry, and exits 7 naming
// the problem for an edge certificate with serverAuth only (the corporate
// CA case), one without a SPIFFE id, an expired one, and one another CA
// signed.
func TestCertShow(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	wantCode(t, runCLI(t, nil, nil, "ca", "init", "--trust-domain", "kb.example", "--dir", caDir), exitOK)
	wantCode(t, runCLI(t, nil, nil, "cert", "issue", "--ca-dir", caDir, "--kind", "edge", "--name", "edge-eu", "--ip", "127.0.0.1", "--out", dir), exitOK)
	caFile := filepath.Join(caDir, "ca.crt")

	r := runCLI(t, nil, nil, "cert", "show", filepath.Join(dir, "edge-eu.crt"), "--ca", caFile)
	wantCode(t, r, exitOK)
	for _, want := range []string{"id           spiffe://kb.example/edge/edge-eu", "kind         edge", "ext usage    serverAuth, clientAuth",
		"hosts        127.0.0.1", "issuer       CN=keybroker CA kb.example", "expires in 30d", "ok: usable"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}

	ca, err := identity.LoadCA(caFile, filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	caKey := loadKey(t, filepath.Join(caDir, "ca.key"))
	handMade := func(name string, edit func(*x509.Certificate)) string {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(42),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			URIs:         []*url.URL{{Scheme: "spiffe", Host: "kb.example", Path: "/edge/" + name}},
			DNSNames:     []string{name + ".corp.example"},
		}
		edit(tmpl)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, dir, name+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	for _, tc := range []struct {
		name string
		file string
		ca   string
		want []string
	}{
		{"serverAuth-only edge", handMade("corp-edge", func(*x509.Certificate) {}), caFile,
			[]string{"ext usage    serverAuth\n", "problem: an edge certificate lacks the clientAuth extended key usage", "usage its kind needs"}},
		{"no SPIFFE id", handMade("plain", func(c *x509.Certificate) { c.URIs = nil }), "",
			[]string{"id           none", "problem: no keybroker SPIFFE id"}},
		{"expired", handMade("old", func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-72*time.Hour), time.Now().Add(-time.Hour)
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		}), "", []string{"expired ", "problem: expired at"}},
		{"another CA", filepath.Join(dir, "edge-eu.crt"), writeFile(t, dir, "other-ca.crt", mustNewCA(t).CertPEM()),
			[]string{"problem: not signed by the CA given (unknown authority)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"cert", "show", tc.file}
			if tc.ca != "" {
				args = append(args, "--ca", tc.ca)
			}
			r := runCLI(t, nil, nil, args...)
			wantCode(t, r, exitVerifyFailed)
			for _, want := range tc.want {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("show lacks %q:\n%s", want, r.stdout)
				}
			}
			if !strings.Contains(r.stderr, "will refuse this certificate") {
				t.Errorf("stderr: %s", r.stderr)
			}
		})
	}
	wantCode(t, runCLI(t, nil, nil, "cert", "show", filepath.Join(caDir, "ca.key")), exitUsage)
}

func mustNewCA(t *testing.T) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA("kb.example", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func loadKey(t *testing.T, path string) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	k, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestCAInPKCS11Token: ca init --key creates the CA key in a real
// SoftHSM2 token (no ca.key file), ca.yaml records the key URI, and cert
// issue signs through the token a certificate that verifies against
// ca.crt; a second ca init on the same key is refused by the token.
func TestCAInPKCS11Token(t *testing.T) {
	tok := softhsmtest.New(t)
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	uri := tok.URI("keybroker-ca")
	r := runCLI(t, nil, nil, "ca", "init", "--trust-domain", "kb.example", "--dir", caDir, "--key", uri)
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "key          the root of trust: "+uri) {
		t.Errorf("ca init said:\n%s", r.stdout)
	}
	if _, err := os.Stat(filepath.Join(caDir, "ca.key")); err == nil {
		t.Error("ca init wrote ca.key for a key kept in the token")
	}
	y, err := os.ReadFile(filepath.Join(caDir, "ca.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := parseCAYAML("ca.yaml", y); err != nil || got.KeyURI != uri || got.TrustDomain != "kb.example" {
		t.Errorf("ca.yaml = %+v, %v\n%s", got, err, y)
	}
	r = runCLI(t, nil, nil, "cert", "issue", "--ca-dir", caDir, "--kind", "central", "--name", "central-1", "--ip", "127.0.0.1", "--out", dir)
	wantCode(t, r, exitOK)
	leaf := readCertFile(t, filepath.Join(dir, "central-1.crt"))
	caCert := readCertFile(t, filepath.Join(caDir, "ca.crt"))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: certPool(caCert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the certificate issued through the token does not verify against ca.crt: %v", err)
	}
	r = runCLI(t, nil, nil, "cert", "renew", "--ca-dir", caDir, "--cert", filepath.Join(dir, "central-1.crt"))
	wantCode(t, r, exitOK)

	// The key exists: a new CA in another directory cannot take it over.
	r = runCLI(t, nil, nil, "ca", "init", "--trust-domain", "kb.example", "--dir", filepath.Join(dir, "ca2"), "--key", uri)
	if r.code == exitOK {
		t.Errorf("a second ca init reused the token key:\n%s", r.stdout)
	}
}

// TestCAYAML: the ca.yaml of docs/config.md parses; unknown fields, two
// keys or none, and a key URI naming no key are refused.
func TestCAYAML(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "```text\n# ca.yaml")
	doc, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatal("docs/config.md has no ca.yaml example")
	}
	y, err := parseCAYAML("ca.yaml", []byte("# ca.yaml"+doc))
	if err != nil || y.TrustDomain != "kb.example" || !strings.HasPrefix(y.KeyURI, "pkcs11:token=kb-ca;object=keybroker-ca?") {
		t.Errorf("the documented ca.yaml = %+v, %v", y, err)
	}
	for _, bad := range []string{
		"trust_domain: kb.example\ncert: ca.crt\nkey_file: ca.key\nkey: x\n",
		"trust_domain: kb.example\ncert: ca.crt\n",
		"trust_domain: kb.example\ncert: ca.crt\nkey_file: ca.key\nkey_uri: \"softkms:ca;path=/x;kek-source=/y\"\n",
		"trust_domain: kb.example\ncert: ca.crt\nkey_uri: \"softkms:path=/x;kek-source=/y\"\n",
		"cert: ca.crt\nkey_file: ca.key\n",
	} {
		if _, err := parseCAYAML("ca.yaml", []byte(bad)); err == nil {
			t.Errorf("parseCAYAML accepted:\n%s", bad)
		}
	}
}
