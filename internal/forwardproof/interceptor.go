package forwardproof

import (
	"context"
	"crypto"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/identity"
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
// known to reach an edge, and when an edge answers FailedPrecondition with
// the RequiredTrailer — then the audience is the edge the TLS handshake of
// that call authenticated, never what the edge says, and the call is
// retried once on the same connection. Calls a node serves itself are not
// signed.
type Interceptor struct {
	signer crypto.Signer
	now    func() time.Time
	edges  sync.Map // *grpc.ClientConn → the edge's SPIFFE id, for KeyAdmin calls
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

// Unary is the interceptor, for grpc.WithChainUnaryInterceptor.
func (in *Interceptor) Unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	msg, ok := req.(proto.Message)
	if !ok || in.signer == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	admin := strings.HasPrefix(method, adminService)
	aud, _ := ctx.Value(audienceKey{}).(string)
	if aud == "" && admin {
		if v, ok := in.edges.Load(cc); ok {
			aud = v.(string)
		}
	}
	if aud != "" {
		sctx, err := in.sign(ctx, method, msg, aud)
		if err != nil {
			return err
		}
		return invoker(sctx, method, req, reply, cc, opts...)
	}
	var p peer.Peer
	var tr metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p), grpc.Trailer(&tr))...)
	if err == nil || status.Code(err) != codes.FailedPrecondition || len(tr.Get(RequiredTrailer)) == 0 {
		return err
	}
	aud, ok = EdgeOf(&p)
	if !ok {
		return err
	}
	if admin {
		in.edges.Store(cc, aud)
	}
	sctx, serr := in.sign(ctx, method, msg, aud)
	if serr != nil {
		return err
	}
	return invoker(sctx, method, req, reply, cc, opts...)
}

func (in *Interceptor) sign(ctx context.Context, method string, msg proto.Message, aud string) (context.Context, error) {
	raw, err := Marshal(msg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding a request to sign: %v", err)
	}
	proof, err := Sign(in.signer, Claims{Method: method, Request: raw, Audience: aud, IssuedAt: in.now()}, nil)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "signing a forward proof: %v", err)
	}
	return metadata.AppendToOutgoingContext(ctx, MetadataKey, string(proof)), nil
}

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
