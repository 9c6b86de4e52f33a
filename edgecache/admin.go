package edgecache

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/policy"
)

// Admin is the KeyAdmin service at the edge: every call is forwarded to
// the central tier, which authorizes and performs it as the caller. The
// edge audits that it relayed the call and what came back.
func (c *Cache) Admin(s Calls) kbv1.KeyAdminServer { return &edgeAdmin{c: c, s: s} }

// Calls runs the audited calls of the edge's own gRPC services (Admin,
// UnaryInterceptor): the node's gRPC front-end (rpc.Server) begins them as
// the caller it authenticated and turns their errors into statuses. An
// interface, so that the cache does not import the front-end.
type Calls interface {
	Begin(ctx context.Context, op policy.Action, key string) (context.Context, *pipeline.Call, error)
	End(ctx context.Context, c *pipeline.Call, err error) error
}

type edgeAdmin struct {
	kbv1.UnimplementedKeyAdminServer
	c *Cache
	s Calls
}

// readYourWrites bounds how long a forwarded key change waits for the
// change to reach this edge's replica before answering.
const readYourWrites = 5 * time.Second

// relay forwards the incoming admin call (the request as the client sent
// it: Cache.forward reads it from the call), auditing it here. A call that changed a
// key answers once the change has reached this edge's replica (within
// readYourWrites), so that a client's next call to this edge sees it: a
// key just created can be used, one just disabled is refused.
func relay[Resp proto.Message](a *edgeAdmin, ctx context.Context, op policy.Action, key string, resp Resp) (Resp, error) {
	var zero Resp
	ctx, call, err := a.s.Begin(ctx, op, key)
	if err != nil {
		return zero, err
	}
	call.SetBackend(servedCentral)
	if err := a.c.forward(ctx, adminService+string(op), resp); err != nil {
		return zero, a.s.End(ctx, call, err)
	}
	if md, ok := any(resp).(*kbv1.KeyMetadata); ok && a.c.Connected() {
		if !a.c.waitRevision(ctx, md.GetRevision(), readYourWrites) {
			a.c.log.Warn("a forwarded key change has not reached the replica yet", "key", key, "revision", md.GetRevision(), "replica_revision", a.c.Revision())
		}
	}
	return resp, a.s.End(ctx, call, nil)
}

func (a *edgeAdmin) CreateKey(ctx context.Context, r *kbv1.CreateKeyRequest) (*kbv1.KeyMetadata, error) {
	return relay(a, ctx, policy.CreateKey, r.GetKeyId(), &kbv1.KeyMetadata{})
}

func (a *edgeAdmin) RotateKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return relay(a, ctx, policy.RotateKey, r.GetKeyId(), &kbv1.KeyMetadata{})
}

func (a *edgeAdmin) UpdateKey(ctx context.Context, r *kbv1.UpdateKeyRequest) (*kbv1.KeyMetadata, error) {
	return relay(a, ctx, policy.UpdateKey, r.GetKeyId(), &kbv1.KeyMetadata{})
}

func (a *edgeAdmin) DisableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return relay(a, ctx, policy.DisableKey, r.GetKeyId(), &kbv1.KeyMetadata{})
}

func (a *edgeAdmin) EnableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return relay(a, ctx, policy.EnableKey, r.GetKeyId(), &kbv1.KeyMetadata{})
}

func (a *edgeAdmin) ScheduleKeyDeletion(ctx context.Context, r *kbv1.ScheduleKeyDeletionRequest) (*kbv1.KeyMetadata, error) {
	return relay(a, ctx, policy.ScheduleKeyDeletion, r.GetKeyId(), &kbv1.KeyMetadata{})
}

func (a *edgeAdmin) CancelKeyDeletion(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return relay(a, ctx, policy.CancelKeyDeletion, r.GetKeyId(), &kbv1.KeyMetadata{})
}

// ListNodes is forwarded while the edge follows the central tier. An
// edge that has lost it answers from its replica instead, which holds the
// inventory: the answer says so (from_replica: this edge, the revision,
// when it last heard from the central tier), since every other node's
// entry is as of then. The caller is authorized as the central tier would
// (Cedar ListNodes on Service, with the replica's policy) and the call is
// audited here; past max_staleness it is refused like any other call.
func (a *edgeAdmin) ListNodes(ctx context.Context, r *kbv1.ListNodesRequest) (*kbv1.ListNodesResponse, error) {
	if !a.c.Connected() {
		return a.replicaNodes(ctx)
	}
	resp, err := relay(a, ctx, policy.ListNodes, "", &kbv1.ListNodesResponse{})
	if status.Code(err) == codes.Unavailable {
		// The central tier went away, or cannot be reached, while the
		// stream has not noticed yet.
		return a.replicaNodes(ctx)
	}
	return resp, err
}

// replicaNodes answers ListNodes from the replica. This edge's own entry
// says it does not follow the central tier, whatever the central tier
// last broadcast.
func (a *edgeAdmin) replicaNodes(ctx context.Context) (*kbv1.ListNodesResponse, error) {
	ctx, call, err := a.s.Begin(ctx, policy.ListNodes, "")
	if err != nil {
		return nil, err
	}
	call.SetBackend(servedLocal)
	if err := a.c.Serving(); err != nil {
		return nil, a.s.End(ctx, call, err)
	}
	if err := call.AuthorizeService(policy.ListNodes); err != nil {
		return nil, a.s.End(ctx, call, err)
	}
	a.c.mu.RLock()
	nodes, rev, synced := a.c.nodes, a.c.revision, a.c.synced
	a.c.mu.RUnlock()
	resp := &kbv1.ListNodesResponse{Nodes: make([]*kbv1.Node, 0, len(nodes)),
		FromReplica: &kbv1.ReplicaView{NodeId: a.c.cfg.NodeID, Revision: rev}}
	if !synced.IsZero() {
		resp.FromReplica.SyncedAt = timestamppb.New(synced)
	}
	for _, n := range nodes {
		if n.GetNodeId() == a.c.cfg.NodeID && n.GetKind() == "edge" {
			n = proto.CloneOf(n)
			n.Connected = false
		}
		resp.Nodes = append(resp.Nodes, n)
	}
	return resp, a.s.End(ctx, call, nil)
}

func (a *edgeAdmin) EnrollNode(ctx context.Context, r *kbv1.EnrollNodeRequest) (*kbv1.Node, error) {
	return relay(a, ctx, policy.EnrollNode, "", &kbv1.Node{})
}

func (a *edgeAdmin) UpdateNode(ctx context.Context, r *kbv1.UpdateNodeRequest) (*kbv1.Node, error) {
	return relay(a, ctx, policy.UpdateNode, "", &kbv1.Node{})
}

func (a *edgeAdmin) RemoveNode(ctx context.Context, r *kbv1.RemoveNodeRequest) (*kbv1.RemoveNodeResponse, error) {
	return relay(a, ctx, policy.RemoveNode, "", &kbv1.RemoveNodeResponse{})
}
