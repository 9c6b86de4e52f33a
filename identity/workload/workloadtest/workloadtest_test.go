package workloadtest_test

import (
	"context"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/identity/workload/workloadtest"
)

const id = "spiffe://kb.test/central/c1"

func dial(t *testing.T, w *workloadtest.Workload) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// A call without the security header is refused, as SPIRE's agent refuses
// it: the header is what stops a browser-driven SSRF from reading SVIDs.
func TestHeaderRequired(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	c := dial(t, srv.MustAddWorkload(t, id))
	for _, tc := range []struct {
		name string
		md   metadata.MD
	}{
		{"none", nil},
		{"false", metadata.Pairs("workload.spiffe.io", "false")},
		{"twice", metadata.Pairs("workload.spiffe.io", "true", "workload.spiffe.io", "true")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cx := metadata.NewOutgoingContext(ctx(t), tc.md)
			s, err := c.FetchX509SVID(cx, &workload.X509SVIDRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != workloadtest.HeaderMissing {
				t.Errorf("FetchX509SVID without the header = %v, want InvalidArgument %q", err, workloadtest.HeaderMissing)
			}
			b, err := c.FetchX509Bundles(cx, &workload.X509BundlesRequest{})
			if err == nil {
				_, err = b.Recv()
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("FetchX509Bundles without the header = %v, want InvalidArgument", err)
			}
			if _, err := c.FetchJWTSVID(cx, &workload.JWTSVIDRequest{Audience: []string{"x"}}); status.Code(err) != codes.InvalidArgument {
				t.Errorf("FetchJWTSVID without the header = %v, want InvalidArgument", err)
			}
		})
	}
}

// The SVIDs served are valid X509-SVIDs by go-spiffe's rules, chain to the
// bundle, and every rotation brings a new key and serial on the open
// stream.
func TestStreamsValidSVIDsAndRotations(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{Hosts: []string{"127.0.0.1", "localhost"}})
	w := srv.MustAddWorkload(t, id)
	s, err := dial(t, w).FetchX509SVID(withHeader(ctx(t)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var prev *x509svid.SVID
	for i := range 3 {
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != id {
			t.Fatalf("response %d: %d SVIDs, want one for %s", i, len(resp.Svids), id)
		}
		v, err := x509svid.ParseRaw(resp.Svids[0].X509Svid, resp.Svids[0].X509SvidKey)
		if err != nil {
			t.Fatalf("response %d: not a valid X509-SVID: %v", i, err)
		}
		roots, err := x509.ParseCertificates(resp.Svids[0].Bundle)
		if err != nil || len(roots) != 1 {
			t.Fatalf("response %d: bundle: %d certificates, %v", i, len(roots), err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(roots[0])
		leaf := v.Certificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"}); err != nil {
			t.Errorf("response %d: SVID does not verify against the bundle for localhost: %v", i, err)
		}
		if prev != nil && (leaf.SerialNumber.Cmp(prev.Certificates[0].SerialNumber) == 0 || leaf.PublicKeyAlgorithm != prev.Certificates[0].PublicKeyAlgorithm ||
			string(leaf.RawSubjectPublicKeyInfo) == string(prev.Certificates[0].RawSubjectPublicKeyInfo)) {
			t.Errorf("response %d: rotation kept the serial or the key", i)
		}
		if !leaf.Equal(w.SVIDs()[0]) {
			t.Errorf("response %d: streamed SVID is not Workload.SVIDs()[0]", i)
		}
		prev = v
		if err := srv.RotateSVIDs(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBundleStreamFollowsCARotation(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{TrustDomain: "example.org"})
	b, err := dial(t, srv.MustAddWorkload(t, "spiffe://example.org/edge/e1")).FetchX509Bundles(withHeader(ctx(t)), &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want int) {
		t.Helper()
		resp, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		certs, err := x509.ParseCertificates(resp.Bundles["spiffe://example.org"])
		if err != nil || len(certs) != want {
			t.Fatalf("bundle: %d certificates (%v), want %d", len(certs), err, want)
		}
	}
	next(1)
	if _, err := srv.PrepareCA(); err != nil {
		t.Fatal(err)
	}
	next(2)
	if err := srv.ActivateCA(); err != nil {
		t.Fatal(err)
	}
	next(2)
	srv.RetireCAs()
	next(1)
	if got := srv.Bundle(); len(got) != 1 || !got[0].Equal(srv.ActiveCA()) {
		t.Errorf("Bundle() after RetireCAs = %d certificates, want the active CA", len(got))
	}
}

func TestUnregisteredWorkloadIsDenied(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	s, err := dial(t, srv.MustAddWorkload(t)).FetchX509SVID(withHeader(ctx(t)), &workload.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchX509SVID for a workload with no ids = %v, want PermissionDenied", err)
	}
}

func TestCloseRemovesSockets(t *testing.T) {
	srv, err := workloadtest.New(workloadtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := srv.AddWorkload(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	if _, err := os.Stat(w.Path()); !os.IsNotExist(err) {
		t.Errorf("socket %s still there after Close (%v)", w.Path(), err)
	}
	if _, err := srv.AddWorkload(id); err == nil {
		t.Error("AddWorkload after Close succeeded")
	}
}

func TestBadOptions(t *testing.T) {
	for _, opts := range []workloadtest.Options{
		{TrustDomain: "Not A Domain"},
		{TTL: -time.Second},
		{RotateEvery: -time.Second},
	} {
		if srv, err := workloadtest.New(opts); err == nil {
			_ = srv.Close()
			t.Errorf("New(%+v) succeeded, want an error", opts)
		}
	}
	srv := workloadtest.Start(t, workloadtest.Options{})
	if _, err := srv.AddWorkload("not-a-spiffe-id"); err == nil {
		t.Error("AddWorkload(not-a-spiffe-id) succeeded")
	}
}
