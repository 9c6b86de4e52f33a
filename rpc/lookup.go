package rpc

import (
	"cmp"
	"slices"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// LookupInput is what a node knows when it answers LookupKey: the key, the
// node inventory and the placement policy — all replicated, so every node
// gives the same answer for the same client.
type LookupInput struct {
	Key          *managed.Key
	Op           kbv1.Operation
	ClientLabels map[string]string
	// Nodes is the inventory: central nodes and edges.
	Nodes []*kbv1.Node
	// Self is the answering node's id.
	Self        string
	Policy      *policy.Set
	TrustDomain string
	// CentralUnreachable says the answering node has lost the central
	// tier (an edge whose Watch stream is down): the central nodes and
	// the edges that would only forward to them are left out, so that a
	// client is not sent to a central tier its edge cannot reach either.
	CentralUnreachable bool
}

// replicaOps need no material: an edge answers them from its replica.
var replicaOps = map[kbv1.Operation]bool{
	kbv1.Operation_OPERATION_VERIFY:         true,
	kbv1.Operation_OPERATION_GET_PUBLIC_KEY: true,
	kbv1.Operation_OPERATION_DESCRIBE_KEY:   true,
}

// EdgeReason is why an edge qualifies for op on k: material it holds or
// may fetch, its replica, or forwarding to the central tier. It is what
// the edge then does.
func EdgeReason(k *managed.Key, op kbv1.Operation, edge *kbv1.Node, set *policy.Set, trustDomain string) kbv1.LookupReason {
	switch {
	case replicaOps[op]:
		return kbv1.LookupReason_LOOKUP_REASON_REPLICA
	case !MayHold(k, edge, set, trustDomain):
		return kbv1.LookupReason_LOOKUP_REASON_FORWARD_ONLY
	case edge.GetPrefetch():
		return kbv1.LookupReason_LOOKUP_REASON_MATERIAL_HELD
	}
	return kbv1.LookupReason_LOOKUP_REASON_PLACEMENT_ALLOWS_FETCH
}

// MayHold says whether placement lets an edge hold k's material: the key
// has material (not backend mode) and the global HoldMaterial policies and
// the key's placement expression allow the edge.
func MayHold(k *managed.Key, edge *kbv1.Node, set *policy.Set, trustDomain string) bool {
	if k.Mode == managed.ModeBackend {
		return false
	}
	return set.AuthorizeHoldMaterial(EdgePrincipal(edge, trustDomain), PolicyKey(k), k.Placement).Allowed
}

// EdgePrincipal is an edge as Cedar sees it: placement follows the region
// and labels it registered.
func EdgePrincipal(n *kbv1.Node, trustDomain string) policy.Principal {
	return policy.Principal{Kind: policy.KindEdge, Name: n.GetNodeId(), TrustDomain: trustDomain, Region: n.GetRegion(), Labels: n.GetLabels()}
}

// Lookup orders the nodes able to perform an operation now:
//
//  1. edges that serve it locally (material held, placement allows a
//     fetch, or from the replica) in the client's region,
//  2. such edges in other regions,
//  3. edges in the client's region that forward to the central tier,
//  4. the central tier.
//
// The client's region is its "region" label. A client that gives none is
// taken to be local to the answering node: its region is the node's, and
// the node comes first in its group. Otherwise nodes in a group are in id
// order, so every node gives the same answer for the same client.
// Edges that serve locally come before forwarding ones because they keep
// serving while the central tier is unreachable. Edges that do not follow
// the central tier (no Watch stream open: the inventory's connected flag,
// which the central tier broadcasts the moment it changes) are left out, so
// are forwarding edges in other regions, which would add a hop and a region
// to a call the central tier answers directly. Leases are not consulted:
// every edge's copy of another edge's lease is only as fresh as the last
// inventory broadcast, so answers would differ from node to node.
//
// An edge that has lost the central tier answers without groups 3 and 4
// (LookupInput.CentralUnreachable): it cannot tell whether the central
// tier is down or only out of its reach, and the client keeps its own
// configured addresses after the answer anyway. Offering the central tier
// sent clients (the SDK routes by this answer) to a node that was down.
func Lookup(in LookupInput) []*kbv1.LookupNode {
	region := in.ClientLabels["region"]
	self := ""
	if region == "" {
		self = in.Self
		for _, n := range in.Nodes {
			if n.GetNodeId() == in.Self {
				region = n.GetRegion()
			}
		}
	}
	type ranked struct {
		group int
		node  *kbv1.LookupNode
	}
	var out []ranked
	for _, n := range in.Nodes {
		ln := &kbv1.LookupNode{NodeId: n.GetNodeId(), Address: n.GetAddress(), Kind: n.GetKind(), Region: n.GetRegion()}
		if n.GetKind() != "edge" {
			if !in.CentralUnreachable {
				ln.Reason = kbv1.LookupReason_LOOKUP_REASON_ROOT_OF_TRUST
				out = append(out, ranked{4, ln})
			}
			continue
		}
		if !n.GetConnected() {
			continue
		}
		ln.Reason = EdgeReason(in.Key, in.Op, n, in.Policy, in.TrustDomain)
		local := n.GetRegion() == region
		switch {
		case ln.Reason != kbv1.LookupReason_LOOKUP_REASON_FORWARD_ONLY && local:
			out = append(out, ranked{1, ln})
		case ln.Reason != kbv1.LookupReason_LOOKUP_REASON_FORWARD_ONLY:
			out = append(out, ranked{2, ln})
		case local && !in.CentralUnreachable:
			out = append(out, ranked{3, ln})
		}
	}
	slices.SortStableFunc(out, func(a, b ranked) int {
		if c := cmp.Compare(a.group, b.group); c != 0 {
			return c
		}
		if (a.node.NodeId == self) != (b.node.NodeId == self) {
			if a.node.NodeId == self {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.node.NodeId, b.node.NodeId)
	})
	nodes := make([]*kbv1.LookupNode, len(out))
	for i, r := range out {
		nodes[i] = r.node
	}
	return nodes
}
