package forwardproof

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/secret"
)

// fakeNode answers every call as the node whose leaf certificate is
// peers[i] for the i-th attempt (the last one thereafter), filling
// grpc.Peer as gRPC does, and records the audience each attempt was signed
// for ("" unsigned).
type fakeNode struct {
	peers     []*x509.Certificate
	required  bool // answer every call Required
	audiences []string
}

func (f *fakeNode) invoke(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
	leaf := f.peers[min(len(f.audiences), len(f.peers)-1)]
	aud := ""
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		if v := md.Get(MetadataKey); len(v) == 1 {
			var p kbv1.ForwardProof
			var c kbv1.ForwardProofClaims
			if proto.Unmarshal([]byte(v[0]), &p) != nil || proto.Unmarshal(p.GetClaims(), &c) != nil {
				panic("a malformed proof")
			}
			aud = c.GetAudience()
		}
	}
	f.audiences = append(f.audiences, aud)
	for _, o := range opts {
		if po, ok := o.(grpc.PeerCallOption); ok {
			*po.PeerAddr = peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}}}
		}
	}
	if f.required {
		return Required("this edge forwards the call")
	}
	return nil
}

// leaf issues a certificate for kind/name.
func leaf(t *testing.T, ca *identity.CA, kind identity.Kind, name string) *x509.Certificate {
	t.Helper()
	certPEM, _, err := ca.Issue(identity.Identity{TrustDomain: ca.TrustDomain, Kind: kind, Name: name}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestInterceptorSignsOncePerEdge: the interceptor gives an edge one
// proof for a call, however often it asks; it signs anew only for another
// node than the one it signed for, and it signs for the node the
// connection is known to reach rather than the one LookupKey named.
func TestInterceptorSignsOncePerEdge(t *testing.T) {
	ca, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	edge1, edge2 := leaf(t, ca, identity.Edge, "edge-1"), leaf(t, ca, identity.Edge, "edge-2")
	central := leaf(t, ca, identity.Central, "central-1")
	const id1, id2 = "spiffe://kb.test/edge/edge-1", "spiffe://kb.test/edge/edge-2"
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const method = "/keybroker.v1.KeyBroker/Encrypt"
	req := &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("p")}

	for _, tc := range []struct {
		name string
		// learnt, when set, is the node a first call on the connection
		// reached (answered without Required).
		learnt   *x509.Certificate
		audience string // WithAudience, as from LookupKey
		peers    []*x509.Certificate
		required bool
		want     []string // the audience of each attempt
	}{
		{"an edge always asking, on a new connection", nil, "", []*x509.Certificate{edge1}, true, []string{"", id1}},
		{"an edge always asking, for the audience LookupKey named", nil, id1, []*x509.Certificate{edge1}, true, []string{id1}},
		{"an edge always asking, on a connection known to reach it", edge1, "", []*x509.Certificate{edge1}, true, []string{"", id1}},
		{"a known edge always asking, for the audience LookupKey named", edge1, id1, []*x509.Certificate{edge1}, true, []string{id1}},
		{"another edge behind the address", nil, id1, []*x509.Certificate{edge2}, true, []string{id1, id2}},
		{"another edge behind the address, then a third", nil, id1, []*x509.Certificate{edge2, edge1}, true, []string{id1, id2, id1}},
		{"LookupKey names another edge than the connection reaches", edge2, id1, []*x509.Certificate{edge2}, false, []string{id2}},
		{"LookupKey names an edge, the connection reaches central", central, id1, []*x509.Certificate{central}, false, []string{""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := grpc.NewClient("passthrough:///node", grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			in := NewInterceptor(key, nil)
			if tc.learnt != nil {
				f := &fakeNode{peers: []*x509.Certificate{tc.learnt}}
				if err := in.Unary(t.Context(), "/keybroker.v1.KeyBroker/GenerateRandom", &kbv1.GenerateRandomRequest{}, nil, cc, f.invoke); err != nil {
					t.Fatal(err)
				}
			}
			ctx := t.Context()
			if tc.audience != "" {
				ctx = WithAudience(ctx, tc.audience)
			}
			f := &fakeNode{peers: tc.peers, required: tc.required}
			err = in.Unary(ctx, method, req, nil, cc, f.invoke)
			if tc.required != IsRequired(err) {
				t.Errorf("Unary = %v, want Required: %v", err, tc.required)
			}
			if diff := cmp.Diff(tc.want, f.audiences); diff != "" {
				t.Errorf("audiences of the attempts (-want +got):\n%s", diff)
			}
		})
	}
}

// TestKeyOf: the key a request names, for remembering what an edge
// forwards — a Decrypt's is its ciphertext's.
func TestKeyOf(t *testing.T) {
	dk, err := envelope.GenerateDataKey(secret.Copy(bytes.Repeat([]byte{1}, 32)), "ct-key", 1)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := dk.Seal([]byte("p"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		req  proto.Message
		want string
	}{
		{&kbv1.EncryptRequest{KeyId: "k"}, "k"},
		{&kbv1.DecryptRequest{Ciphertext: ct}, "ct-key"},
		{&kbv1.ReEncryptRequest{Ciphertext: ct, DestinationKeyId: "dst"}, "ct-key\x00dst"},
		{&kbv1.GenerateRandomRequest{}, ""},
	} {
		if got := keyOf(tc.req); got != tc.want {
			t.Errorf("keyOf(%T) = %q, want %q", tc.req, got, tc.want)
		}
	}
}

// connInfo stands for the AuthInfo of connection n.
type connInfo struct{ n int }

func (connInfo) AuthType() string { return "test" }

// connKeys is a ConnSigner whose connection n presented keys[n].
type connKeys struct{ keys []*ecdsa.PrivateKey }

func (c connKeys) Public() crypto.PublicKey { return c.keys[0].Public() }
func (c connKeys) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return c.keys[0].Sign(r, d, o)
}
func (c connKeys) SignerFor(ai credentials.AuthInfo) crypto.Signer {
	if i, ok := ai.(connInfo); ok {
		return c.keys[i.n]
	}
	return c
}

// TestConnSignerSignsOnTheConnection: with a ConnSigner the proof is
// signed when gRPC writes the call on a connection, with the key presented
// on that connection, so a call made just before a rotation and sent on a
// connection made after it still carries a proof the central tier
// accepts. A transparent retry on a connection of the same key sends the
// same proof; on one of another key it fails Unavailable instead of
// giving the edge a second proof of the call.
func TestConnSignerSignsOnTheConnection(t *testing.T) {
	var keys []*ecdsa.PrivateKey
	for range 2 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	in := NewInterceptor(connKeys{keys}, nil)
	var creds credentials.PerRPCCredentials
	invoker := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		if _, ok := metadata.FromOutgoingContext(ctx); ok {
			t.Error("the proof went into the outgoing metadata before the connection was chosen")
		}
		for _, o := range opts {
			if c, ok := o.(grpc.PerRPCCredsCallOption); ok {
				creds = c.Creds
			}
		}
		return nil
	}
	ctx := WithAudience(t.Context(), "spiffe://kb.test/edge/e1")
	if err := in.Unary(ctx, "/keybroker.v1.KeyBroker/Encrypt", &kbv1.EncryptRequest{KeyId: "k"}, &kbv1.EncryptResponse{}, nil, invoker); err != nil {
		t.Fatal(err)
	}
	if creds == nil {
		t.Fatal("no per-call credentials to sign the proof on the connection")
	}
	on := func(n int) (string, error) {
		md, err := creds.GetRequestMetadata(credentials.NewContextWithRequestInfo(t.Context(), credentials.RequestInfo{AuthInfo: connInfo{n}}))
		return md[MetadataKey], err
	}
	proof, err := on(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse([]byte(proof), keys[1].Public()); err != nil {
		t.Errorf("proof on connection 1 does not verify with its key: %v", err)
	}
	if _, err := Parse([]byte(proof), keys[0].Public()); err == nil {
		t.Error("proof on connection 1 verifies with another connection's key")
	}
	again, err := on(1)
	if err != nil || again != proof {
		t.Errorf("second attempt on a connection of the same key: %v, same proof %t; want the same proof", err, again == proof)
	}
	if _, err := on(0); status.Code(err) != codes.Unavailable {
		t.Errorf("attempt on a connection of another key: %v, want Unavailable", err)
	}
}

// TestLiveSignerIsConnSigner: the signer identity.Live.DialCredentials
// gives the SDK and the CLI signs on the connection.
func TestLiveSignerIsConnSigner(t *testing.T) {
	ca, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "app"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	m, err := identity.NewMaterial(&cert, []*x509.Certificate{ca.Cert})
	if err != nil {
		t.Fatal(err)
	}
	l := identity.NewLive(identity.Static{M: m}, nil, nil)
	defer l.Close()
	_, signer := l.DialCredentials(identity.AcceptKinds(identity.Edge), "")
	if _, ok := signer.(ConnSigner); !ok {
		t.Fatalf("DialCredentials' signer %T is not a ConnSigner", signer)
	}
}
