// Package placement decides where a key's material may be held and which
// nodes a client should call for an operation on a key. It is domain
// code: it works on Node, this package's one description of a cluster
// member, and knows nothing of gRPC. Package rpc converts the wire
// inventory and the LookupKey answer at its edge; the central tier
// (broker/server) and the edge (edgecache) call this package for their
// own decisions.
//
// # Placement
//
// An edge may hold a key's material when the key has material (not
// backend mode) and Cedar's HoldMaterial decision allows the edge as a
// principal (EdgePrincipal: its enrolled region and labels) on the key
// (managed.Key.PolicyKey) under the key's own placement expression
// (MayHold; Hold is the Cedar decision alone). The central tier asks it
// before sealing material to an edge; the edge asks it before fetching and
// to drop material placement no longer allows.
//
// # Routing
//
// Lookup orders the nodes able to perform an operation on a key now, each
// with the Reason it qualifies. It reads only replicated state — the key,
// the inventory, the policy — so every node gives the same answer for the
// same client (see Lookup for the one exception: a client that names no
// region is local to the node it asks).
//
// # Concurrency
//
// Every function is pure: it reads its arguments and changes nothing, so
// callers may share nodes, keys and policy sets between goroutines.
package placement

import (
	"cmp"
	"slices"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// Node kinds.
const (
	KindCentral = "central"
	KindEdge    = "edge"
)

// Node is a member of the cluster as placement and routing see it: what
// the central tier's inventory says of it.
type Node struct {
	ID string
	// Kind is KindCentral or KindEdge.
	Kind    string
	Address string
	// Region and Labels are an edge's enrolled ones; placement follows
	// them.
	Region string
	Labels map[string]string
	// Prefetch: the edge takes the material of every key placed on it
	// with Watch, rather than on first use.
	Prefetch bool
	// Connected: the edge follows the central tier now (its Watch stream
	// is open). Central nodes are always connected.
	Connected bool
	// Enrolled: an admin enrolled the edge.
	Enrolled bool
}

// Reason is why a node qualifies for an operation on a key: what it then
// does with the call.
type Reason uint8

// Reasons, best first for a call that needs material.
const (
	_ Reason = iota
	// MaterialHeld: the edge prefetches, so it holds the material.
	MaterialHeld
	// PlacementAllowsFetch: the edge may fetch the material on first use.
	PlacementAllowsFetch
	// ForwardOnly: the edge forwards the call to the central tier.
	ForwardOnly
	// RootOfTrust: a central node, in front of the roots of trust.
	RootOfTrust
	// Replica: the edge answers from its replica of the key's metadata
	// and public keys; no material is needed.
	Replica
)

var reasonNames = [...]string{"UNSPECIFIED", "MATERIAL_HELD", "PLACEMENT_ALLOWS_FETCH", "FORWARD_ONLY", "ROOT_OF_TRUST", "REPLICA"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "UNKNOWN"
}

// Candidate is a node Lookup offers and why.
type Candidate struct {
	Node   Node
	Reason Reason
}

// replicaOps need no material: an edge answers them from its replica.
func replicaOp(op policy.Action) bool {
	switch op {
	case policy.Verify, policy.GetPublicKey, policy.DescribeKey:
		return true
	}
	return false
}

// EdgePrincipal is an edge as Cedar sees it: placement follows the region
// and labels it was enrolled with. The kind is always edge, whatever n's
// kind: it is how placement sees any node.
func EdgePrincipal(n Node, trustDomain string) policy.Principal {
	return policy.Principal{Kind: policy.KindEdge, Name: n.ID, TrustDomain: trustDomain, Region: n.Region, Labels: n.Labels}
}

// MayHold says whether placement lets edge hold k's material: the key
// has material (not backend mode) and the global HoldMaterial policies
// and the key's placement expression allow the edge (Hold).
func MayHold(k *managed.Key, edge *Node, set *policy.Set, trustDomain string) bool {
	if !k.Mode.HoldsMaterial() {
		return false
	}
	return Hold(k, *edge, set, trustDomain).Allowed
}

// Hold is Cedar's HoldMaterial decision for edge on k: the global
// policies and k's placement expression. It does not look at k's mode; a
// caller that needs the decision itself (for its audit line) checks that
// k has material, as MayHold does.
func Hold(k *managed.Key, edge Node, set *policy.Set, trustDomain string) policy.Decision {
	return set.AuthorizeHoldMaterial(EdgePrincipal(edge, trustDomain), k.PolicyKey(), k.Placement)
}

// EdgeReason is why edge qualifies for op on k: material it holds or may
// fetch, its replica, or forwarding to the central tier. It is what the
// edge then does.
func EdgeReason(k *managed.Key, op policy.Action, edge *Node, set *policy.Set, trustDomain string) Reason {
	switch {
	case replicaOp(op):
		return Replica
	case !MayHold(k, edge, set, trustDomain):
		return ForwardOnly
	case edge.Prefetch:
		return MaterialHeld
	}
	return PlacementAllowsFetch
}

// Input is what a node knows when it answers LookupKey: the key, the node
// inventory and the placement policy — all replicated, so every node gives
// the same answer for the same client.
type Input struct {
	Key *managed.Key
	// Op is the operation the client means to perform.
	Op           policy.Action
	ClientLabels map[string]string
	// Nodes is the inventory: central nodes and edges.
	Nodes []Node
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
// (Input.CentralUnreachable): it cannot tell whether the central tier is
// down or only out of its reach, and the client keeps its own configured
// addresses after the answer anyway. Offering the central tier sent
// clients (the SDK routes by this answer) to a node that was down.
//
// Every node that is not an edge counts as central. Lookup does not change
// in.Nodes.
func Lookup(in Input) []Candidate {
	region := in.ClientLabels["region"]
	self := ""
	if region == "" {
		self = in.Self
		for i := range in.Nodes {
			if in.Nodes[i].ID == in.Self {
				region = in.Nodes[i].Region
			}
		}
	}
	type ranked struct {
		group int
		c     Candidate
	}
	var out []ranked
	for i := range in.Nodes {
		n := &in.Nodes[i]
		if n.Kind != KindEdge {
			if !in.CentralUnreachable {
				out = append(out, ranked{4, Candidate{*n, RootOfTrust}})
			}
			continue
		}
		if !n.Connected {
			continue
		}
		reason := EdgeReason(in.Key, in.Op, n, in.Policy, in.TrustDomain)
		local := n.Region == region
		switch {
		case reason != ForwardOnly && local:
			out = append(out, ranked{1, Candidate{*n, reason}})
		case reason != ForwardOnly:
			out = append(out, ranked{2, Candidate{*n, reason}})
		case local && !in.CentralUnreachable:
			out = append(out, ranked{3, Candidate{*n, reason}})
		}
	}
	slices.SortStableFunc(out, func(a, b ranked) int {
		if c := cmp.Compare(a.group, b.group); c != 0 {
			return c
		}
		if (a.c.Node.ID == self) != (b.c.Node.ID == self) {
			if a.c.Node.ID == self {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.c.Node.ID, b.c.Node.ID)
	})
	cands := make([]Candidate, len(out))
	for i, r := range out {
		cands[i] = r.c
	}
	return cands
}
