package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"sync"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// leaf is a verified leaf certificate as FromPeer sees it: only its URI
// SANs matter.
func leaf(t testing.TB, uris ...string) *x509.Certificate {
	t.Helper()
	c := &x509.Certificate{}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		c.URIs = append(c.URIs, u)
	}
	return c
}

func peerContext(cert *x509.Certificate) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
		State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}}})
}

// TestFromPeerRemembersEachLeaf checks that the identity FromPeer
// remembers is the one of the very certificate presented, that the trust
// domain is still checked on every call, and that a certificate that does
// not parse is refused every time.
func TestFromPeerRemembersEachLeaf(t *testing.T) {
	alice := leaf(t, "spiffe://kb.test/client/alice")
	bob := leaf(t, "spiffe://kb.test/admin/bob")
	other := leaf(t, "spiffe://other.test/client/alice")
	for range 3 {
		for _, tc := range []struct {
			cert *x509.Certificate
			want string
		}{{alice, "spiffe://kb.test/client/alice"}, {bob, "spiffe://kb.test/admin/bob"}} {
			id, err := FromPeer(peerContext(tc.cert), "kb.test")
			if err != nil || id.String() != tc.want {
				t.Fatalf("FromPeer = %v, %v; want %s", id, err, tc.want)
			}
		}
		if _, err := FromPeer(peerContext(other), "kb.test"); err == nil {
			t.Fatal("a certificate of another trust domain was accepted")
		}
		if _, err := FromPeer(peerContext(alice), "other.test"); err == nil {
			t.Fatal("a remembered certificate was accepted for another trust domain")
		}
		// Two SPIFFE ids: refused, and not remembered as either.
		if _, err := FromPeer(peerContext(leaf(t, "spiffe://kb.test/client/a", "spiffe://kb.test/admin/b")), "kb.test"); err == nil {
			t.Fatal("a certificate with two SPIFFE ids was accepted")
		}
	}
	// A certificate with the same contents is another certificate, and
	// parsed for itself.
	twin := leaf(t, "spiffe://kb.test/client/alice")
	if id, err := FromPeer(peerContext(twin), "kb.test"); err != nil || id.Name != "alice" {
		t.Fatalf("FromPeer(twin) = %v, %v", id, err)
	}
}

// TestLeafCacheIsBounded checks that the cache starts afresh rather than
// growing past maxLeafIDs, and still answers right after.
func TestLeafCacheIsBounded(t *testing.T) {
	var c leafCache
	certs := make([]*x509.Certificate, maxLeafIDs+10)
	for i := range certs {
		certs[i] = leaf(t, fmt.Sprintf("spiffe://kb.test/client/c%d", i))
		if id, err := c.of(certs[i]); err != nil || id.Name != fmt.Sprintf("c%d", i) {
			t.Fatalf("of(c%d) = %v, %v", i, id, err)
		}
	}
	n := 0
	c.m.Load().Range(func(any, any) bool { n++; return true })
	if n > maxLeafIDs {
		t.Fatalf("cache holds %d identities, bound %d", n, maxLeafIDs)
	}
	if id, err := c.of(certs[0]); err != nil || id.Name != "c0" {
		t.Fatalf("of(c0) after a reset = %v, %v", id, err)
	}
}

// TestLeafCacheConcurrent runs lookups of a few certificates from many
// goroutines (for the race detector).
func TestLeafCacheConcurrent(t *testing.T) {
	var c leafCache
	certs := []*x509.Certificate{leaf(t, "spiffe://kb.test/client/a"), leaf(t, "spiffe://kb.test/edge/b")}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				cert := certs[(g+i)%2]
				id, err := c.of(cert)
				if err != nil || id.String() != cert.URIs[0].String() {
					t.Errorf("of = %v, %v; want %s", id, err, cert.URIs[0])
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkFromPeer is the cost of a call's authentication: the first
// call on a connection parses its certificate's SPIFFE id ("parse"),
// later calls find it remembered ("remembered").
func BenchmarkFromPeer(b *testing.B) {
	cert := leaf(b, "spiffe://kb.test/client/app")
	ctx := peerContext(cert)
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := FromCertificate(cert); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("remembered", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := FromPeer(ctx, "kb.test"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
