package server

import (
	"context"
	"errors"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
)

type edgeSync struct {
	kbv1.UnimplementedEdgeSyncServer
	s *Server
}

// Register records the calling edge's address, sealing key and prefetch.
// Only edge certificates may call it, an edge registers as the name its
// certificate carries, and only an enrolled edge may register: its region
// and labels are the enrolled ones, which the response carries — those in
// the request are ignored.
func (e *edgeSync) Register(ctx context.Context, r *kbv1.RegisterEdgeRequest) (*kbv1.RegisterEdgeResponse, error) {
	tctx, c, err := e.s.Begin(ctx, "RegisterEdge", "")
	if err != nil {
		return nil, err
	}
	if err := edgeOnly(c); err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	n, err := e.s.svc.Registry().RegisterNode(ctx, broker.Registration{
		ID: c.Who().Name, Address: r.GetAddress(), SealingKey: r.GetSealingPublicKey(), Prefetch: r.GetPrefetch(),
	})
	if errors.Is(err, managed.ErrPermissionDenied) {
		c.Deny("not-enrolled")
		return nil, e.s.End(tctx, c, notEnrolled(c.Who().Name, "is not enrolled"))
	}
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	c.Allow("")
	return &kbv1.RegisterEdgeResponse{CentralNodeId: e.s.node, Revision: n.Revision, Lease: durationpb.New(e.s.lease),
		Region: n.Region, Labels: n.Labels}, e.s.End(tctx, c, nil)
}

// FetchMaterial gives an edge one key version's material, sealed to the
// edge's registered key, when placement — the global HoldMaterial policies
// and the key's placement expression — lets the edge hold it. A refusal is
// audited like any other.
func (e *edgeSync) FetchMaterial(ctx context.Context, r *kbv1.FetchMaterialRequest) (*kbv1.FetchMaterialResponse, error) {
	tctx, c, err := e.s.Begin(ctx, policy.HoldMaterial, r.GetKeyId())
	if err != nil {
		return nil, err
	}
	c.SetVersion(r.GetKeyVersion())
	if err := edgeOnly(c); err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	if err := pipeline.CheckKeyID(r.GetKeyId()); err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	node, err := enrolledEdge(tctx, e.s, c)
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	k, res, err := e.lookupKey(tctx, r.GetKeyId())
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	expr := ""
	if k != nil {
		expr = k.Placement
	}
	if err := c.Decide(e.s.policy.Current().AuthorizeHoldMaterial(placement.EdgePrincipal(node.Placement(), c.Who().TrustDomain), res, expr)); err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	if k == nil {
		return nil, e.s.End(tctx, c, status.Errorf(codes.NotFound, "key %s does not exist", clip.Quote(r.GetKeyId())))
	}
	v := r.GetKeyVersion()
	if v == 0 {
		v = k.Primary
		c.SetVersion(v)
	}
	blob, err := e.s.svc.SealMaterial(tctx, node, k, v)
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	return &kbv1.FetchMaterialResponse{SealedMaterial: blob}, e.s.End(tctx, c, nil)
}

// edgeOnly refuses callers whose certificate is not an edge's, recording
// the refusal for the audit line.
func edgeOnly(c *pipeline.Call) error {
	if c.Who().Kind == identity.Edge {
		return nil
	}
	c.Deny("edge-only")
	return status.Errorf(codes.PermissionDenied, "%s is not an edge: EdgeSync serves edge certificates only", c.Who())
}

// forwardTarget is a unary method an edge may forward.
type forwardTarget struct {
	srv     any
	handler grpc.MethodHandler
}

// forwardable is every unary KeyBroker and KeyAdmin method, by full name.
func (s *Server) forwardable() map[string]forwardTarget {
	out := map[string]forwardTarget{}
	for _, svc := range []struct {
		desc *grpc.ServiceDesc
		srv  any
	}{{&kbv1.KeyBroker_ServiceDesc, s.KeyBroker()}, {&kbv1.KeyAdmin_ServiceDesc, &keyAdmin{s: s}}} {
		for _, m := range svc.desc.Methods {
			out["/"+svc.desc.ServiceName+"/"+m.MethodName] = forwardTarget{svc.srv, m.Handler}
		}
	}
	return out
}

// Forward performs a KeyBroker or KeyAdmin call an edge relays for a
// client. The call runs as the principal whose certificate chain and
// forward proof show it made exactly this call to this edge, recently and
// once (see the package doc), and only when the policy lets the edge
// forward it (Forward, default deny) on every key the request names. It is
// then authorized by the policy as that principal and audited with the
// edge's request id and the edge named as Via, so an edge can relay what it
// may not do itself but never more than its client asked for. Refusals are
// audited with the edge as the actor and the reason.
//
// The proof's nonce is spent only once the edge's Forward decision allows
// the call, just before it runs: a refused forward neither uses up the
// client's proof nor fills the replay cache. ForwardRequest.principal is
// ignored (deprecated; edges no longer set it): the proof names the
// principal, and an edge's word is neither trusted nor echoed. Nor is an
// unknown method, so what an edge sends cannot bloat the audit log.
func (e *edgeSync) Forward(ctx context.Context, r *kbv1.ForwardRequest) (*kbv1.ForwardResponse, error) {
	t, known := e.s.forward[r.GetMethod()]
	op := "an unknown method"
	if known {
		op = callinfo.MethodName(r.GetMethod())
	}
	tctx, c, err := e.s.Begin(ctx, "Forward", "")
	if err != nil {
		return nil, err
	}
	refuse := func(c *pipeline.Call, err error) (*kbv1.ForwardResponse, error) {
		c.SetDetail("forward " + op)
		return nil, e.s.End(tctx, c, err)
	}
	node, err := callingEdge(tctx, e.s, c)
	if err != nil {
		return refuse(c, err)
	}
	if !known {
		return refuse(c, status.Error(codes.Unimplemented, "this method cannot be forwarded: only unary KeyBroker and KeyAdmin methods can"))
	}
	proofRefused := func(err error) (*kbv1.ForwardResponse, error) {
		c.Deny("forward-proof")
		code := codes.PermissionDenied
		if errors.Is(err, errReplayFull) || errors.Is(err, errNonceUnrecorded) {
			code = codes.Unavailable
		}
		return refuse(c, status.Error(code, "edge "+c.Who().Name+" may not forward "+op+": "+err.Error()))
	}
	proof, err := e.s.proofs.verify(c.Who(), r)
	if err != nil {
		return proofRefused(err)
	}
	admin := strings.HasPrefix(r.GetMethod(), "/"+kbv1.KeyAdmin_ServiceDesc.ServiceName+"/")
	edgeP := placement.EdgePrincipal(node.Placement(), c.Who().TrustDomain)
	fctx := callinfo.WithForwarder(identity.NewContext(ctx, proof.who), c.Who().Name)
	var decodeErr, denied error
	var unrecorded bool // the proof was good but its nonce could not be recorded
	resp, err := t.handler(t.srv, fctx, func(v any) error {
		decodeErr = proto.Unmarshal(r.GetRequest(), v.(proto.Message))
		return decodeErr
	}, func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		// The edge's own right to relay this call, decided on every key
		// the request names (the service when it names none).
		keys, err := e.forwardedKeys(tctx, c, req)
		if err != nil {
			denied = err
			return nil, err
		}
		for _, key := range keys {
			if len(keys) > 1 {
				c.SetKey(key.Name) // the refusal names the key refused
			}
			if err := c.Decide(e.s.policy.Current().AuthorizeForward(edgeP, key, op, admin)); err != nil {
				denied = err
				return nil, err
			}
		}
		if err := e.s.proofs.record(ctx, proof); err != nil {
			unrecorded = true
			denied = err
			return nil, err
		}
		return h(ctx, req)
	})
	switch {
	case decodeErr != nil:
		return refuse(c, rpc.Invalid("forwarded %s request: %v", op, decodeErr))
	case unrecorded:
		return proofRefused(denied)
	case denied != nil:
		return refuse(c, denied)
	case err != nil:
		return nil, err // the call itself was audited, as the client
	}
	out, err := proto.Marshal(resp.(proto.Message))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding the forwarded response: %v", err)
	}
	return &kbv1.ForwardResponse{Response: out}, nil
}

// forwardedKeys are the keys a forwarded request names, as Cedar sees
// them, in a stable order — several for batches and ReEncrypt to another
// key — or one nil (the service) when it names none. The edge's Forward
// must be allowed on each.
func (e *edgeSync) forwardedKeys(ctx context.Context, c *pipeline.Call, req any) ([]*policy.Key, error) {
	var ids []string
	add := func(id string) {
		if id != "" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	peek := func(ct []byte) {
		if id, _, err := managed.PeekKeyID(ct); err == nil {
			add(id)
		}
	}
	switch m := req.(type) {
	case *kbv1.DecryptRequest:
		peek(m.GetCiphertext())
		add(m.GetKeyId())
	case *kbv1.ReEncryptRequest:
		peek(m.GetCiphertext())
		add(m.GetDestinationKeyId())
	case *kbv1.BatchEncryptRequest:
		for _, it := range m.GetItems() {
			add(it.GetKeyId())
		}
	case *kbv1.BatchDecryptRequest:
		for _, it := range m.GetItems() {
			peek(it.GetCiphertext())
			add(it.GetKeyId())
		}
	case *kbv1.BatchGenerateDataKeyRequest:
		for _, it := range m.GetItems() {
			add(it.GetKeyId())
		}
	case interface{ GetKeyId() string }:
		add(m.GetKeyId())
	}
	if len(ids) == 0 {
		return []*policy.Key{nil}, nil
	}
	if len(ids) == 1 {
		c.SetKey(ids[0])
	}
	keys := make([]*policy.Key, 0, len(ids))
	for _, id := range ids {
		k, err := e.s.svc.Registry().Get(ctx, id)
		switch {
		case err == nil:
			pk := k.PolicyKey()
			keys = append(keys, &pk)
		case errors.Is(err, managed.ErrNotFound):
			keys = append(keys, &policy.Key{Name: id})
		default:
			return nil, err
		}
	}
	return keys, nil
}

// Acknowledge records the last revision an edge has applied. It is
// bookkeeping, not an operation on keys, and is not audited. Only an edge
// with its Watch stream open is recorded (an edge not enrolled has none),
// and never past the registry's revision.
func (e *edgeSync) Acknowledge(ctx context.Context, r *kbv1.AcknowledgeRequest) (*kbv1.AcknowledgeResponse, error) {
	who, ok := identity.FromContext(ctx)
	if !ok || who.Kind != identity.Edge {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not an edge: EdgeSync serves edge certificates only", who)
	}
	e.s.live.ack(who.Name, r.GetAppliedRevision(), e.s.svc.Registry().Store().Revision())
	return &kbv1.AcknowledgeResponse{}, nil
}

// lookupKey loads a key and its Cedar resource. An unknown key comes back
// nil with the resource of a key with no labels, so that the policy, not
// the registry, decides what the caller learns.
func (e *edgeSync) lookupKey(ctx context.Context, id string) (*managed.Key, policy.Key, error) {
	k, err := e.s.svc.Get(ctx, id)
	switch {
	case err == nil:
		return k, k.PolicyKey(), nil
	case errors.Is(err, managed.ErrNotFound):
		return nil, policy.Key{Name: id}, nil
	}
	return nil, policy.Key{}, err
}
