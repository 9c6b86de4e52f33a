package server

import (
	"context"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
)

type keyAdmin struct {
	kbv1.UnimplementedKeyAdminServer
	s *Server
}

// centralAdmin is the central tier's broker.Service as the pipeline's
// Admin.
type centralAdmin struct{ svc *broker.Service }

var _ pipeline.Admin = centralAdmin{}

func (a centralAdmin) RootFor(m managed.Mode, t managed.KeyType, requested string) (string, error) {
	return a.svc.RootFor(m, t, requested)
}

func (a centralAdmin) CreateKey(ctx context.Context, in pipeline.CreateKeyInput, root string) (*managed.Key, error) {
	return a.svc.CreateKey(ctx, broker.CreateParams{ID: in.KeyID, Type: in.Type, Mode: in.Mode, Derived: in.Derived, RootKey: root,
		Labels: in.Labels, RotationPeriod: in.RotationPeriod, Description: in.Description, Placement: in.Placement})
}

func (a centralAdmin) RotateKey(ctx context.Context, id string) (*managed.Key, error) {
	return a.svc.RotateKey(ctx, id)
}

func (a centralAdmin) UpdateKey(ctx context.Context, in pipeline.UpdateKeyInput, authorize func(before, after *managed.Key) error) (*managed.Key, error) {
	return a.svc.UpdateKey(ctx, broker.UpdateParams{ID: in.KeyID, ExpectedRevision: in.ExpectedRevision, Description: in.Description,
		Labels: in.Labels, ReplaceLabels: in.ReplaceLabels, RemoveLabels: in.RemoveLabels, RotationPeriod: in.RotationPeriod,
		MinDecryptionVersion: in.MinDecryptionVersion, Placement: in.Placement, Authorize: authorize})
}

func (a centralAdmin) SetState(ctx context.Context, id string, to pipeline.StateChange) (*managed.Key, error) {
	change := map[pipeline.StateChange]func(*managed.Key) error{
		pipeline.Disable: broker.Disable, pipeline.Enable: broker.Enable, pipeline.CancelDeletion: broker.CancelDeletion}[to]
	if change == nil {
		return nil, managed.Errorf(managed.ErrInvalidArgument, "state change %d is not one", to)
	}
	return a.svc.SetState(ctx, id, change)
}

func (a centralAdmin) ScheduleDeletion(ctx context.Context, id string, window time.Duration) (*managed.Key, error) {
	return a.svc.ScheduleDeletion(ctx, id, window)
}

func (a centralAdmin) AliasTarget(ctx context.Context, name string) (string, error) {
	return a.svc.AliasTarget(ctx, name)
}

func (a centralAdmin) CreateAlias(ctx context.Context, name, id string) (*managed.Key, error) {
	return a.svc.CreateAlias(ctx, name, id)
}

func (a centralAdmin) DeleteAlias(ctx context.Context, name, id string) (*managed.Key, error) {
	return a.svc.DeleteAlias(ctx, name, id)
}

func (a centralAdmin) UpdateAlias(ctx context.Context, name, from, to string) (*managed.Key, error) {
	return a.svc.UpdateAlias(ctx, name, from, to)
}

// The KeyAdmin service converts each request and calls the pipeline's
// admin operation, which authorizes, performs and audits it.

func (a *keyAdmin) CreateKey(ctx context.Context, r *kbv1.CreateKeyRequest) (*kbv1.KeyMetadata, error) {
	typ, ok := wire.TypeFromProto(r.GetType())
	if !ok {
		typ = managed.KeyType(r.GetType().String()) // refused by the pipeline, by this name
	}
	mode, ok := wire.ModeFromProto(r.GetMode())
	if !ok {
		mode = managed.Mode(r.GetMode().String())
	}
	return a.call(ctx, policy.CreateKey, r.GetKeyId(), func(ctx context.Context, caller pipeline.Caller) (*managed.Key, error) {
		return a.s.Pipeline().CreateKey(ctx, caller, pipeline.CreateKeyInput{KeyID: r.GetKeyId(), Type: typ, Mode: mode, Derived: r.GetDerived(),
			RootKey: r.GetRootKey(), Labels: r.GetLabels(), RotationPeriod: r.GetRotationPeriod().AsDuration(), Description: r.GetDescription(),
			Placement: r.GetPlacement()})
	})
}

// call runs an admin operation of the pipeline for the caller in ctx and
// answers the key's metadata or the gRPC status of its error.
func (a *keyAdmin) call(ctx context.Context, op policy.Action, key string, run func(context.Context, pipeline.Caller) (*managed.Key, error)) (*kbv1.KeyMetadata, error) {
	caller, err := rpc.CallerOf(ctx)
	if err != nil {
		return nil, err
	}
	k, err := run(ctx, caller)
	if err != nil {
		return nil, a.s.Answer(caller, op, key, err)
	}
	return rpc.KeyMetadata(k, caller.Admin()), nil
}

func (a *keyAdmin) RotateKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.call(ctx, policy.RotateKey, r.GetKeyId(), func(ctx context.Context, caller pipeline.Caller) (*managed.Key, error) {
		return a.s.Pipeline().RotateKey(ctx, caller, r.GetKeyId())
	})
}

func (a *keyAdmin) UpdateKey(ctx context.Context, r *kbv1.UpdateKeyRequest) (*kbv1.KeyMetadata, error) {
	in := pipeline.UpdateKeyInput{KeyID: r.GetKeyId(), ExpectedRevision: r.GetExpectedRevision(), Labels: r.GetLabels(),
		ReplaceLabels: r.GetReplaceLabels(), Description: r.Description, MinDecryptionVersion: r.MinDecryptionVersion, Placement: r.Placement}
	if r.RotationPeriod != nil {
		d := r.GetRotationPeriod().AsDuration()
		in.RotationPeriod = &d
	}
	return a.call(ctx, policy.UpdateKey, r.GetKeyId(), func(ctx context.Context, caller pipeline.Caller) (*managed.Key, error) {
		return a.s.Pipeline().UpdateKey(ctx, caller, in)
	})
}

func (a *keyAdmin) DisableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.call(ctx, policy.DisableKey, r.GetKeyId(), func(ctx context.Context, caller pipeline.Caller) (*managed.Key, error) {
		return a.s.Pipeline().DisableKey(ctx, caller, r.GetKeyId())
	})
}

func (a *keyAdmin) EnableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.call(ctx, policy.EnableKey, r.GetKeyId(), func(ctx context.Context, caller pipeline.Caller) (*managed.Key, error) {
		return a.s.Pipeline().EnableKey(ctx, caller, r.GetKeyId())
	})
}

func (a *keyAdmin) ScheduleKeyDeletion(ctx context.Context, r *kbv1.ScheduleKeyDeletionRequest) (*kbv1.KeyMetadata, error) {
	return a.call(ctx, policy.ScheduleKeyDeletion, r.GetKeyId(), func(ctx context.Context, caller pipeline.Caller) (*managed.Key, error) {
		// An unset window is zero: the default 30 days.
		return a.s.Pipeline().ScheduleKeyDeletion(ctx, caller, r.GetKeyId(), r.GetPendingWindow().AsDuration())
	})
}

func (a *keyAdmin) CancelKeyDeletion(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.call(ctx, policy.CancelKeyDeletion, r.GetKeyId(), func(ctx context.Context, caller pipeline.Caller) (*managed.Key, error) {
		return a.s.Pipeline().CancelKeyDeletion(ctx, caller, r.GetKeyId())
	})
}

// ListNodes lists this central node and the registered edges, with
// whether each follows the central tier now, its lease and the last
// revision it acknowledged.
func (a *keyAdmin) ListNodes(ctx context.Context, _ *kbv1.ListNodesRequest) (*kbv1.ListNodesResponse, error) {
	tctx, c, err := a.s.Begin(ctx, policy.ListNodes, "")
	if err != nil {
		return nil, err
	}
	if err := c.AuthorizeService(policy.ListNodes); err != nil {
		return nil, a.s.End(tctx, c, err)
	}
	nodes, err := a.s.inventory(ctx)
	if err != nil {
		return nil, a.s.End(tctx, c, err)
	}
	return &kbv1.ListNodesResponse{Nodes: nodes}, a.s.End(tctx, c, nil)
}
