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
