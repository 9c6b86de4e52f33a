package client

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/identity"
)

// TestCallerTLSGetsServerCheck: a caller's own tls.Config keeps its own
// checks and gains keybroker's: the node must be an edge or central of the
// client's trust domain.
func TestCallerTLSGetsServerCheck(t *testing.T) {
	ca, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(id identity.Identity) *x509.Certificate {
		c, k, err := ca.Issue(id, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf
	}
	theirsCalled := false
	cfg := withServerCheck(&tls.Config{VerifyConnection: func(tls.ConnectionState) error { theirsCalled = true; return nil }}, "kb.test", identity.AcceptKinds(identity.Edge, identity.Central))
	for _, tc := range []struct {
		id   identity.Identity
		want string
	}{
		{identity.Identity{TrustDomain: "kb.test", Kind: identity.Central, Name: "c1"}, ""},
		{identity.Identity{TrustDomain: "kb.test", Kind: identity.Edge, Name: "e1"}, ""},
		{identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "mallory"}, "dialled a client certificate"},
		{identity.Identity{TrustDomain: "kb.test", Kind: identity.Admin, Name: "ops"}, "dialled an admin certificate"},
	} {
		err := cfg.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf(tc.id)}})
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("server %s: %v, want %q", tc.id, err, tc.want)
		}
	}
	if !theirsCalled {
		t.Error("the caller's own VerifyConnection was not called")
	}
	other, _ := identity.NewCA("evil.test", time.Hour)
	c, k, _ := other.Issue(identity.Identity{TrustDomain: "evil.test", Kind: identity.Central, Name: "c1"}, nil, time.Hour)
	pair, _ := tls.X509KeyPair(c, k)
	if err := cfg.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{pair.Leaf}}); err == nil || !strings.Contains(err.Error(), "not in trust domain kb.test") {
		t.Errorf("a central of another trust domain: %v", err)
	}
}
