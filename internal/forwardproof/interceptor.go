package forwardproof

import (
	"context"
	"crypto"
	"crypto/tls"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
)

const adminService = "/keybroker.v1.KeyAdmin/"

type audienceKey struct{}

// WithAudience asks the Interceptor to sign the next call made with ctx
// for edge, a SPIFFE id: the caller knows (from LookupKey) that the node
// it calls forwards the operation.
func WithAudience(ctx context.Context, edge string) context.Context {
	return context.WithValue(ctx, audienceKey{}, edge)
}

// Interceptor signs forward proofs for a client's calls: when the caller
// says the node forwards (WithAudience), on KeyAdmin calls to a connection
// known to reach an edge, and when an edge answers that it needs a proof
// (IsRequired) — then the audience is the edge the TLS handshake of the
// connection authenticated, never what the edge says, and the call is
// retried on the same connection. Calls a node serves itself are not
// signed. Once the connection's node is known, it is the audience even
// when WithAudience names another (LookupKey's answer may be stale), and a
// connection known to reach a node that is not an edge gets no proof.
//
// An edge gets one proof per call: one that answers Required to a call
// already signed for it is not given another (each would let a
// compromised edge run the call once more); the call is signed anew only
// when the retry finds another node behind the connection.
//
// Which node a connection reaches is learnt from the first call made on it
// (grpc.Peer) and remembered, so later unsigned calls carry no extra call
// options; signed ones learn it again.
// An edge's request for a proof is remembered too, for the method and key
// it was asked for, on that connection, for ForwardMemory: further such
// calls are signed up front instead of costing a refused round trip each
// (a caller that does not route by LookupKey, such as keybroker bench
// against one edge, would otherwise pay two calls for every forwarded one).
// A connection re-established to another node behind the same address is
// noticed when that node asks for a proof again: the retry learns the peer
// anew, and a call is tried at most three times.
type Interceptor struct {
	signer crypto.Signer
	now    func() time.Time
	// peers maps a *grpc.ClientConn to the SPIFFE id of the edge it last
	// reached, or "" when that was not an edge.
	peers sync.Map
	// forwards maps a forwarded call (forwardsKey) to when the memory of
	// its edge asking for a proof ends; nForwards counts its entries, so
	// that a client whose calls are never forwarded does not look.
	forwards  sync.Map
	nForwards atomic.Int64
}

// ForwardMemory is how long an edge's request for a proof is remembered
// for the method and key it concerned.
const ForwardMemory = time.Minute

// maxForwards bounds the remembered requests for proofs; past it, the
// memory starts over.
const maxForwards = 4096

// forwardsKey is a kind of call an edge asked a proof for.
type forwardsKey struct {
	cc     *grpc.ClientConn
	method string
	key    string
}

// keyOf is the key a request names, for remembering which calls an edge
// forwards: its key id, or the key in a ciphertext's header.
func keyOf(req proto.Message) string {
	switch r := req.(type) {
	case *kbv1.DecryptRequest: // before the interface case: it has GetKeyId too
		if id, _, err := managed.PeekKeyID(r.GetCiphertext()); err == nil {
			return id
		}
		return r.GetKeyId()
	case *kbv1.ReEncryptRequest:
		id, _, _ := managed.PeekKeyID(r.GetCiphertext())
		return id + "\x00" + r.GetDestinationKeyId()
	case interface{ GetKeyId() string }:
		return r.GetKeyId()
	}
	return ""
}

// remembered says whether an edge asked for a proof for k lately.
func (in *Interceptor) remembered(k forwardsKey) bool {
	if in.nForwards.Load() == 0 {
		return false
	}
	v, ok := in.forwards.Load(k)
	return ok && in.now().Before(v.(time.Time))
}

// remember notes that an edge asked for a proof for k.
func (in *Interceptor) remember(k forwardsKey) {
	if in.nForwards.Load() >= maxForwards {
		in.forwards.Clear()
		in.nForwards.Store(0)
	}
	if _, loaded := in.forwards.Swap(k, in.now().Add(ForwardMemory)); !loaded {
		in.nForwards.Add(1)
	}
}

// SignerOf is the key forward proofs are signed with under t: its first
// certificate's private key. It is nil — calls go unsigned, and edges
// refuse those they would forward — when t supplies its certificate only
// through GetClientCertificate, or when the key is not a crypto.Signer.
func SignerOf(t *tls.Config) crypto.Signer {
	if t == nil || len(t.Certificates) == 0 || len(t.Certificates[0].Certificate) == 0 {
		return nil
	}
	signer, _ := t.Certificates[0].PrivateKey.(crypto.Signer)
	return signer
}

// NewInterceptor signs with signer, the client certificate's private key
// (nil: calls are never signed, and a forwarding edge refuses them). now
// is the clock (nil: time.Now).
func NewInterceptor(signer crypto.Signer, now func() time.Time) *Interceptor {
	if now == nil {
		now = time.Now
	}
	return &Interceptor{signer: signer, now: now}
}

// edgeOf is what the interceptor knows of cc: the edge it reaches ("" when
// not an edge), and whether it knows at all.
func (in *Interceptor) edgeOf(cc *grpc.ClientConn) (string, bool) {
	v, ok := in.peers.Load(cc)
	if !ok {
		return "", false
	}
	return v.(string), true
}

// learn records the node a call on cc reached, if the call reached one.
func (in *Interceptor) learn(cc *grpc.ClientConn, p *peer.Peer) {
	if p.AuthInfo == nil {
		return
	}
	id, _ := EdgeOf(p)
	in.peers.Store(cc, id)
}

// Unary is the interceptor, for grpc.WithChainUnaryInterceptor.
func (in *Interceptor) Unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	msg, ok := req.(proto.Message)
	if !ok || in.signer == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	edge, known := in.edgeOf(cc)
	aud, _ := ctx.Value(audienceKey{}).(string)
	if known {
		// What the connection's handshake authenticated beats what
		// LookupKey said: sign for the edge it reaches, and not at all
		// when it reaches no edge.
		switch {
		case edge == "":
			aud = ""
		case aud != "" || strings.HasPrefix(method, adminService) || in.remembered(forwardsKey{cc, method, keyOf(msg)}):
			aud = edge
		}
	}
	// A call made unsigned on a connection already known goes without
	// grpc.Peer; every other one learns which node answered.
	sctx, sopts, err := in.signed(ctx, method, msg, aud)
	if err != nil {
		return err
	}
	err = in.invoke(sctx, method, req, reply, cc, invoker, append(opts[:len(opts):len(opts)], sopts...), !known || aud != "")
	if IsRequired(err) {
		in.remember(forwardsKey{cc, method, keyOf(msg)})
	}
	// Asked for a proof: sign for the edge this connection reaches,
	// learning it again with each try. An edge that asks again for a call
	// already signed for it gets no new proof: each proof would let it
	// run the call once more.
	for try := 0; try < 2 && IsRequired(err); try++ {
		edge, _ = in.edgeOf(cc)
		if aud != "" && edge == aud {
			break
		}
		// edge "": not known to be an edge; this try only learns which
		// node answers, and is asked again.
		aud = edge
		sctx, sopts, serr := in.signed(ctx, method, msg, aud)
		if serr != nil {
			return err
		}
		err = in.invoke(sctx, method, req, reply, cc, invoker, append(opts[:len(opts):len(opts)], sopts...), true)
	}
	return err
}

// invoke makes one attempt of the call, learning the node that answers
// when learn is set.
func (in *Interceptor) invoke(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption, learn bool) error {
	if !learn {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	var p peer.Peer
	err := invoker(ctx, method, req, reply, cc, append(opts[:len(opts):len(opts)], grpc.Peer(&p))...)
	in.learn(cc, &p)
	return err
}

// signed is ctx carrying a proof of the call for aud, or the call option
// that signs it on the connection it is sent on (ConnSigner); ctx itself
// when aud is "".
func (in *Interceptor) signed(ctx context.Context, method string, msg proto.Message, aud string) (context.Context, []grpc.CallOption, error) {
	if aud == "" {
		return ctx, nil, nil
	}
	raw, err := Marshal(msg)
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "encoding a request to sign: %v", err)
	}
	c := Claims{Method: method, Request: raw, Audience: aud, IssuedAt: in.now()}
	if cs, ok := in.signer.(ConnSigner); ok {
		return ctx, []grpc.CallOption{grpc.PerRPCCredentials(&connProof{signer: cs, claims: c})}, nil
	}
	proof, err := Sign(in.signer, c, nil)
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "signing a forward proof: %v", err)
	}
	return metadata.AppendToOutgoingContext(ctx, MetadataKey, string(proof)), nil, nil
}

// ConnSigner is a signer whose key may differ from one connection to the
// next: a client whose certificate rotates presents the new one on new
// connections while older ones stay open (identity.Live.DialCredentials).
// A proof must be signed with the key of the certificate the edge saw on
// the connection the call travels on, which is chosen only after the
// interceptor has run; so the Interceptor, given a ConnSigner, signs when
// gRPC writes the call on a connection (a per-call
// credentials.PerRPCCredentials), with SignerFor that connection's
// AuthInfo.
type ConnSigner interface {
	crypto.Signer
	// SignerFor is the key of the certificate we presented on the
	// connection whose handshake gave ai.
	SignerFor(ai credentials.AuthInfo) crypto.Signer
}

// connProof signs one call's proof on the connection it is sent on. gRPC
// asks again when it moves a call that was never processed to another
// connection (a transparent retry): on a connection that presented the
// same key the same proof is sent again (its nonce is spent once), and on
// one that presented another key the attempt fails Unavailable, for the
// caller to make a new call, rather than give an edge two proofs of one
// call.
type connProof struct {
	signer ConnSigner
	claims Claims

	mu    sync.Mutex
	key   crypto.PublicKey
	proof string
}

func (p *connProof) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	var ai credentials.AuthInfo
	if ri, ok := credentials.RequestInfoFromContext(ctx); ok {
		ai = ri.AuthInfo
	}
	signer := p.signer.SignerFor(ai)
	pub := signer.Public()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.key != nil {
		if k, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(p.key) {
			return nil, status.Error(codes.Unavailable, "forward proof: the call moved to a connection made with another certificate of ours; retry it")
		}
		return map[string]string{MetadataKey: p.proof}, nil
	}
	proof, err := Sign(signer, p.claims, nil)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "signing a forward proof: %v", err)
	}
	p.key, p.proof = pub, string(proof)
	return map[string]string{MetadataKey: p.proof}, nil
}

func (*connProof) RequireTransportSecurity() bool { return true }

// EdgeOf is the SPIFFE id of the edge a call reached, from the leaf
// certificate of its TLS handshake; false when the peer is not an edge.
func EdgeOf(p *peer.Peer) (string, bool) {
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return "", false
	}
	id, err := identity.FromCertificate(ti.State.PeerCertificates[0])
	if err != nil || id.Kind != identity.Edge {
		return "", false
	}
	return id.String(), true
}
