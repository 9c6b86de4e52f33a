package server

import (
	"context"
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
	if err := c.edgeOnly(); err != nil {
		return nil, c.end(err)
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
	if err := c.edgeOnly(); err != nil {
		return nil, c.end(err)
	}
	if err := checkKeyID(r.GetKeyId()); err != nil {
		return nil, c.end(err)
	}
	node, err := c.registeredEdge()
	if err != nil {
		return nil, c.end(err)
	}
	k, res, err := c.lookupKey()
	if err != nil {
		return nil, c.end(err)
	}
	placement := ""
	if k != nil {
		placement = k.Placement
	}
	if err := c.decide(e.s.policy.Current().AuthorizeHoldMaterial(edgePrincipal(node, c.who.TrustDomain), res, placement)); err != nil {
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

// edgeOnly refuses callers whose certificate is not an edge's, recording
// the refusal for the audit line.
func (c *call) edgeOnly() error {
	if c.who.Kind == identity.Edge {
		return nil
	}
	c.rec.Decision, c.rec.PolicyID = "deny", "edge-only"
	return status.Errorf(codes.PermissionDenied, "%s is not an edge: EdgeSync serves edge certificates only", c.who)
}

// registeredEdge loads the calling edge's registration.
func (c *call) registeredEdge() (*broker.Node, error) {
	n, err := c.s.svc.Registry().Node(c.ctx, c.who.Name)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "edge %s must Register first: %v", c.who.Name, err)
	}
	return n, nil
}

// edgePrincipal is a registered edge as Cedar sees it: placement follows
// the region and labels it registered.
func edgePrincipal(n *broker.Node, trustDomain string) policy.Principal {
	return policy.Principal{Kind: policy.KindEdge, Name: n.ID, TrustDomain: trustDomain, Region: n.Region, Labels: n.Labels}
}
