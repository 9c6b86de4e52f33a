package node

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/identity"
)

// TestFrontTLSMutual: with a client CA, an AWS front-end's listener refuses
// a connection without a client certificate and one whose certificate
// another CA signed, and serves one chaining to the configured CA; without
// one it asks for none. Real TLS handshakes over loopback.
func TestFrontTLSMutual(t *testing.T) {
	ca, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "client-ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	srvCert := issue(t, ca, identity.Identity{TrustDomain: "kb.test", Kind: identity.Central, Name: "central"}, "127.0.0.1")
	base := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{srvCert}}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM())
	app := identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "app"}
	good, stranger := issue(t, ca, app, ""), issue(t, other, app, "")

	get := func(t *testing.T, cfg *tls.Config, certs ...tls.Certificate) error {
		t.Helper()
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
		srv.TLS = cfg
		srv.StartTLS()
		defer srv.Close()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
		resp, err := c.Get(srv.URL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if string(body) != "ok" {
			t.Fatalf("served %q", body)
		}
		return nil
	}

	plain, err := FrontTLS(base, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := get(t, plain); err != nil {
		t.Fatalf("without client_ca, a client without a certificate: %v", err)
	}
	mutual, err := FrontTLS(base, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if base.ClientAuth != tls.NoClientCert {
		t.Fatal("FrontTLS changed the node's own configuration")
	}
	if err := get(t, mutual); err == nil {
		t.Fatal("with client_ca, a client without a certificate was served")
	}
	if err := get(t, mutual, stranger); err == nil {
		t.Fatal("with client_ca, a certificate of another CA was served")
	}
	if err := get(t, mutual, good); err != nil {
		t.Fatalf("with client_ca, a certificate of that CA: %v", err)
	}

	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{empty: "holds no PEM certificate", filepath.Join(dir, "missing.pem"): "no such file"} {
		if _, err := FrontTLS(base, path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("FrontTLS(%s): %v, want an error saying %q", path, err, want)
		}
	}
}

func issue(t *testing.T, ca *identity.CA, id identity.Identity, host string) tls.Certificate {
	t.Helper()
	var hosts []string
	if host != "" {
		hosts = []string{host}
	}
	certPEM, keyPEM, err := ca.Issue(id, hosts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
