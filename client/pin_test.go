package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

// pinNode is a node that answers LookupKey with what its test tells it,
// and Encrypt with a fixed blob.
type pinNode struct {
	kbv1.UnimplementedKeyBrokerServer
	answer   []*kbv1.LookupNode
	encrypts int
}

func (n *pinNode) LookupKey(context.Context, *kbv1.LookupKeyRequest) (*kbv1.LookupKeyResponse, error) {
	return &kbv1.LookupKeyResponse{Nodes: n.answer}, nil
}

func (n *pinNode) Encrypt(context.Context, *kbv1.EncryptRequest) (*kbv1.EncryptResponse, error) {
	n.encrypts++
	return &kbv1.EncryptResponse{Ciphertext: []byte("x")}, nil
}

// startPinNode serves n over mutual TLS as id, issued by ca.
func startPinNode(t *testing.T, ca *identity.CA, id identity.Identity, n *pinNode) string {
	t.Helper()
	return serveTLS(t, ca, id, func(srv *grpc.Server) {
		kbv1.RegisterKeyBrokerServer(srv, n)
	})
}

// TestRoutedNodeIsPinned: a node a lookup answer names at an address is
// dialled expecting exactly that node's SPIFFE id. An edge that registered
// another edge's address (or any address where another node of the
// deployment answers) cannot lead clients to that other node as itself:
// the handshake is refused and says who answered.
func TestRoutedNodeIsPinned(t *testing.T) {
	t.Parallel()
	const td = "kb.test"
	ca, files := testCA(t, identity.Client, "app")
	other := &pinNode{}
	otherAddr := startPinNode(t, ca, identity.Identity{TrustDomain: td, Kind: identity.Edge, Name: "edge-b"}, other)
	// The first node says edge-a serves the key at otherAddr, where edge-b
	// answers.
	first := &pinNode{answer: []*kbv1.LookupNode{{NodeId: "edge-a", Kind: "edge", Address: otherAddr, Region: "eu",
		Reason: kbv1.LookupReason_LOOKUP_REASON_MATERIAL_HELD}}}
	firstAddr := startPinNode(t, ca, identity.Identity{TrustDomain: td, Kind: identity.Edge, Name: "edge-c"}, first)

	cl, err := client.New(t.Context(), client.Config{Addrs: []string{firstAddr}, CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// The call tried otherAddr, was refused there in the handshake, and
	// fell back to the configured node.
	if _, err := cl.Encrypt(ctx, "k1", []byte("secret"), nil); err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	if other.encrypts != 0 || cl.Calls()[otherAddr] == 0 || first.encrypts != 1 {
		t.Errorf("edge-b served %d Encrypt calls meant for edge-a (%d tried there); the configured node %d, want 0, >0, 1",
			other.encrypts, cl.Calls()[otherAddr], first.encrypts)
	}
	// Alone, the refusal is the caller's error, naming both.
	cl1, err := client.New(t.Context(), client.Config{Addrs: []string{otherAddr}, CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cl1.Close()
	other.answer = first.answer
	if _, err := cl1.Encrypt(ctx, "k1", []byte("secret"), nil); err == nil ||
		!strings.Contains(err.Error(), "dialled spiffe://kb.test/edge/edge-a but the server is spiffe://kb.test/edge/edge-b") {
		t.Errorf("Encrypt at edge-b named as edge-a: %v; want the handshake refused naming both", err)
	}
	if other.encrypts != 0 {
		t.Errorf("edge-b served %d Encrypt calls meant for edge-a", other.encrypts)
	}

	// Where the answer is true, the same client is served there.
	first.answer[0].NodeId = "edge-b"
	cl2, err := client.New(t.Context(), client.Config{Addrs: []string{firstAddr}, CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	if _, err := cl2.Encrypt(ctx, "k1", []byte("secret"), nil); err != nil || other.encrypts != 1 || first.encrypts != 1 {
		t.Fatalf("Encrypt at the node the lookup named: %v (edge-b served %d)", err, other.encrypts)
	}
}

// lagNode is a node that has not replicated a key yet, under a policy that
// grants keys by their labels: it denies every call on the key, as a node
// authorizes a key it does not know (existence is not leaked).
type lagNode struct {
	kbv1.UnimplementedKeyBrokerServer
	calls int
}

func (n *lagNode) LookupKey(context.Context, *kbv1.LookupKeyRequest) (*kbv1.LookupKeyResponse, error) {
	n.calls++
	return nil, status.Error(codes.PermissionDenied, "spiffe://kb.test/client/app may not LookupKey key k1")
}

func (n *lagNode) Encrypt(context.Context, *kbv1.EncryptRequest) (*kbv1.EncryptResponse, error) {
	n.calls++
	return nil, status.Error(codes.PermissionDenied, "spiffe://kb.test/client/app may not Encrypt key k1")
}

// TestLaggingNodePassesOn: a node that denies a key it has not replicated
// yet passes the call on to the next node, which knows the key; when
// every node denies, the caller is denied.
func TestLaggingNodePassesOn(t *testing.T) {
	t.Parallel()
	const td = "kb.test"
	ca, files := testCA(t, identity.Client, "app")
	lag := &lagNode{}
	lagAddr := startLagNode(t, ca, identity.Identity{TrustDomain: td, Kind: identity.Edge, Name: "edge-a"}, lag)
	knows := &pinNode{}
	knowsAddr := startPinNode(t, ca, identity.Identity{TrustDomain: td, Kind: identity.Central, Name: "central-2"}, knows)
	for _, tc := range []struct {
		name  string
		addrs []string
		ok    bool
	}{
		{"a later node knows the key", []string{lagAddr, knowsAddr}, true},
		{"every node denies", []string{lagAddr}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, err := client.New(t.Context(), client.Config{Addrs: tc.addrs, CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key, MaxAttempts: 3})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			before := lag.calls
			_, err = cl.Encrypt(t.Context(), "k1", []byte("m"), nil)
			switch {
			case tc.ok && err != nil:
				t.Errorf("Encrypt = %v; want the node that knows the key to serve it", err)
			case !tc.ok && (!errors.Is(err, client.ErrPermissionDenied) || status.Code(err) != codes.PermissionDenied):
				t.Errorf("Encrypt = %v; want PermissionDenied", err)
			case !tc.ok && lag.calls-before != 2:
				t.Errorf("the denying node got %d calls (lookup and operation), want 2: a denial is not retried", lag.calls-before)
			}
		})
	}
}

// startLagNode serves n over mutual TLS as id, issued by ca.
func startLagNode(t *testing.T, ca *identity.CA, id identity.Identity, n *lagNode) string {
	t.Helper()
	return serveTLS(t, ca, id, func(srv *grpc.Server) {
		kbv1.RegisterKeyBrokerServer(srv, n)
	})
}

// serveTLS serves over mutual TLS as id, issued by ca, what register
// adds to the server; it stops with the test.
func serveTLS(t *testing.T, ca *identity.CA, id identity.Identity, register func(*grpc.Server)) string {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(id, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	m, err := identity.NewMaterial(&pair, []*x509.Certificate{ca.Cert})
	if err != nil {
		t.Fatal(err)
	}
	live := identity.NewLive(identity.Static{M: m}, nil, nil)
	t.Cleanup(func() { live.Close() })
	srv := grpc.NewServer(grpc.Creds(live.ServerCredentials()))
	register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// testCA is a CA of trust domain kb.test written into a fresh directory,
// and the files of the caller kind/name it issues there.
func testCA(t *testing.T, kind identity.Kind, name string) (*identity.CA, identity.TLSFiles) {
	t.Helper()
	ca, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := ca.WriteCA(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	files, err := ca.IssueFiles(identity.Identity{TrustDomain: "kb.test", Kind: kind, Name: name}, nil, time.Hour, dir, name, caFile)
	if err != nil {
		t.Fatal(err)
	}
	return ca, files
}
