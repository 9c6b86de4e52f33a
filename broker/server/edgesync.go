package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/policy"
)

// EdgeLease is how long an edge's registration holds without a
// heartbeat. (Heartbeats come with Watch.)
const EdgeLease = 30 * time.Second

type edgeSync struct {
	kbv1.UnimplementedEdgeSyncServer
	s *Server
}

// Register records the calling edge. Only edge certificates may call it,
// and an edge registers as the name its certificate carries.
func (e *edgeSync) Register(ctx context.Context, r *kbv1.RegisterEdgeRequest) (*kbv1.RegisterEdgeResponse, error) {
	c, err := e.s.begin(ctx, "RegisterEdge", "")
	if err != nil {
		return nil, err
	}
	if c.who.Kind != identity.Edge {
		c.rec.Decision = "deny"
		c.rec.PolicyID = "edge-only"
		return nil, c.end(status.Errorf(codes.PermissionDenied, "%s is not an edge: EdgeSync serves edge certificates only", c.who))
	}
	c.rec.Decision = "allow"
	n, err := e.s.svc.Registry().RegisterNode(ctx, &broker.Node{
		ID: c.who.Name, Region: r.GetRegion(), Labels: r.GetLabels(), Address: r.GetAddress(), SealingKey: r.GetSealingPublicKey(),
	})
	if err != nil {
		return nil, c.end(err)
	}
	return &kbv1.RegisterEdgeResponse{CentralNodeId: e.s.node, Revision: n.Revision, Lease: durationpb.New(EdgeLease)}, c.end(nil)
}

// FetchMaterial gives an edge one key version's material, sealed to the
// edge's registered key, when placement — the global HoldMaterial policies
// and the key's placement expression — lets the edge hold it. A refusal is
// audited like any other.
func (e *edgeSync) FetchMaterial(ctx context.Context, r *kbv1.FetchMaterialRequest) (*kbv1.FetchMaterialResponse, error) {
	c, err := e.s.begin(ctx, policy.HoldMaterial, r.GetKeyId())
	if err != nil {
		return nil, err
	}
	c.rec.Version = r.GetKeyVersion()
	if c.who.Kind != identity.Edge {
		c.rec.Decision, c.rec.PolicyID = "deny", "edge-only"
		return nil, c.end(status.Errorf(codes.PermissionDenied, "%s is not an edge: EdgeSync serves edge certificates only", c.who))
	}
	if err := checkKeyID(r.GetKeyId()); err != nil {
		return nil, c.end(err)
	}
	node, err := e.s.svc.Registry().Node(ctx, c.who.Name)
	if err != nil {
		return nil, c.end(status.Errorf(codes.FailedPrecondition, "edge %s must Register first: %v", c.who.Name, err))
	}
	k, err := e.s.svc.Registry().Get(ctx, r.GetKeyId())
	res := policy.Key{Name: r.GetKeyId()}
	placement := ""
	if err == nil {
		res = policy.Key{Name: k.ID, Type: string(k.Type), Mode: string(k.Mode), Labels: k.Labels}
		placement = k.Placement
	} else if !errors.Is(err, broker.ErrNotFound) {
		return nil, c.end(err)
	}
	who := policy.Principal{Kind: policy.KindEdge, Name: node.ID, TrustDomain: c.who.TrustDomain, Region: node.Region, Labels: node.Labels}
	if err := c.decide(e.s.policy.Current().AuthorizeHoldMaterial(who, res, placement)); err != nil {
		return nil, c.end(err)
	}
	if k == nil {
		return nil, c.end(status.Errorf(codes.NotFound, "key %q does not exist", r.GetKeyId()))
	}
	v := r.GetKeyVersion()
	if v == 0 {
		v = k.Primary
		c.rec.Version = v
	}
	blob, err := e.s.svc.SealMaterial(ctx, node, k, v)
	if err != nil {
		return nil, c.end(err)
	}
	return &kbv1.FetchMaterialResponse{SealedMaterial: blob}, c.end(nil)
}
