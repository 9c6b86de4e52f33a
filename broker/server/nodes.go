package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/policy"
)

// Edge enrollment. An edge belongs to the cluster once an admin has
// enrolled it (EnrollNode), with the region and labels placement and
// LookupKey see for it; the edge's own Register supplies only its address,
// sealing key and prefetch. RemoveNode deletes the record: the edge's Watch
// stream is cut at once with wire.NotEnrolledReason, its FetchMaterial, Forward
// and Register are refused until it is enrolled again, and the deletion
// reaches every edge's inventory (and so LookupKey) as a Watch event.

// notEnrolled is the status refusing edge id, which is not enrolled
// (wire.IsNotEnrolled recognises it).
func notEnrolled(id, why string) error {
	return wire.NotEnrolled(fmt.Sprintf("edge %s %s: %s", id, why, broker.EnrollHint(id)))
}

// nodeOp runs one enrollment call: authorized on the service, audited with
// the node and what changed in the detail.
func (a *keyAdmin) nodeOp(ctx context.Context, op policy.Action, id string, run func(context.Context) (string, error)) error {
	tctx, c, err := a.s.Begin(ctx, op, "")
	if err != nil {
		return err
	}
	c.SetDetail("node " + id)
	if err := broker.ValidateNodeID(id); err != nil {
		return a.s.End(tctx, c, err)
	}
	if err := c.AuthorizeService(op); err != nil {
		return a.s.End(tctx, c, err)
	}
	detail, err := run(tctx)
	if err != nil {
		return a.s.End(tctx, c, err)
	}
	c.SetDetail("node " + id + detail)
	return a.s.End(tctx, c, nil)
}

// EnrollNode admits an edge with the region and labels given.
func (a *keyAdmin) EnrollNode(ctx context.Context, r *kbv1.EnrollNodeRequest) (*kbv1.Node, error) {
	var out *kbv1.Node
	err := a.nodeOp(ctx, policy.EnrollNode, r.GetNodeId(), func(ctx context.Context) (string, error) {
		n, err := a.s.svc.Registry().EnrollNode(ctx, r.GetNodeId(), r.GetRegion(), r.GetLabels())
		if err != nil {
			return "", err
		}
		out = a.s.nodeProto(n)
		return ": enrolled " + describePlacement(n), nil
	})
	return out, err
}

// UpdateNode changes an enrolled edge's region or labels. Placement follows
// at once: the edge's Watch stream re-reads its record and seals material
// under the new region and labels, FetchMaterial decides with them, and an
// honest edge re-checks what it holds when its inventory entry changes.
func (a *keyAdmin) UpdateNode(ctx context.Context, r *kbv1.UpdateNodeRequest) (*kbv1.Node, error) {
	var out *kbv1.Node
	err := a.nodeOp(ctx, policy.UpdateNode, r.GetNodeId(), func(ctx context.Context) (string, error) {
		n, err := a.s.svc.Registry().UpdateNode(ctx, r.GetNodeId(), broker.NodeUpdate{Region: r.Region, Labels: r.GetLabels(), ReplaceLabels: r.GetReplaceLabels()})
		if err != nil {
			return "", err
		}
		out = a.s.nodeProto(n)
		return ": now " + describePlacement(n), nil
	})
	return out, err
}

// RemoveNode withdraws an edge: its record goes, its Watch stream is cut
// at once, and it is refused until it is enrolled again.
func (a *keyAdmin) RemoveNode(ctx context.Context, r *kbv1.RemoveNodeRequest) (*kbv1.RemoveNodeResponse, error) {
	var out *kbv1.RemoveNodeResponse
	err := a.nodeOp(ctx, policy.RemoveNode, r.GetNodeId(), func(ctx context.Context) (string, error) {
		rev, err := a.s.svc.Registry().RemoveNode(ctx, r.GetNodeId())
		if err != nil {
			return "", err
		}
		a.s.live.remove(r.GetNodeId(), notEnrolled(r.GetNodeId(), "was removed"))
		out = &kbv1.RemoveNodeResponse{Revision: rev}
		return ": removed", nil
	})
	return out, err
}

func describePlacement(n *broker.Node) string {
	keys := slices.Sorted(maps.Keys(n.Labels))
	labels := make([]string, len(keys))
	for i, k := range keys {
		labels[i] = k + "=" + n.Labels[k]
	}
	return fmt.Sprintf("region %q labels [%s]", n.Region, strings.Join(labels, " "))
}

// nodeProto is an edge's record as the inventory shows it, with what is
// known of its liveness.
func (s *Server) nodeProto(n *broker.Node) *kbv1.Node {
	kn := &kbv1.Node{NodeId: n.ID, Kind: "edge", Address: n.Address, Region: n.Region, Labels: n.Labels,
		Revision: n.Revision, Prefetch: n.Prefetch, Enrolled: n.Enrolled}
	if !n.LastSeen.IsZero() {
		kn.LastSeen = timestamppb.New(n.LastSeen)
	}
	s.live.describe(kn)
	return kn
}

// callingEdge is the gate of the EdgeSync calls only an enrolled edge
// makes: it refuses a caller that is not an edge (edgeOnly), then is
// enrolledEdge. A refusal is marked on c for the caller to End.
func callingEdge(ctx context.Context, s *Server, c *pipeline.Call) (*broker.Node, error) {
	if err := edgeOnly(c); err != nil {
		return nil, err
	}
	return enrolledEdge(ctx, s, c)
}

// enrolledEdge loads the calling edge's record and refuses an edge that
// is not enrolled, or is enrolled but has not registered since.
func enrolledEdge(ctx context.Context, s *Server, c *pipeline.Call) (*broker.Node, error) {
	n, err := s.svc.Registry().Node(ctx, c.Who().Name)
	switch {
	case err != nil && !errors.Is(err, managed.ErrNotFound):
		return nil, err
	case err != nil || !n.Enrolled:
		c.Deny("not-enrolled")
		return nil, notEnrolled(c.Who().Name, "is not enrolled")
	case !n.IsRegistered():
		return nil, status.Errorf(codes.FailedPrecondition, "edge %s must Register first", c.Who().Name)
	}
	return n, nil
}
