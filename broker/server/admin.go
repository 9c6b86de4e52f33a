package server

import (
	"context"

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

func (a *keyAdmin) CreateKey(ctx context.Context, r *kbv1.CreateKeyRequest) (*kbv1.KeyMetadata, error) {
	tctx, c, err := a.s.Begin(ctx, policy.CreateKey, r.GetKeyId())
	if err != nil {
		return nil, err
	}
	typ, okT := wire.TypeFromProto(r.GetType())
	mode, okM := wire.ModeFromProto(r.GetMode())
	switch {
	case pipeline.CheckKeyID(r.GetKeyId()) != nil:
		return nil, a.s.End(tctx, c, pipeline.CheckKeyID(r.GetKeyId()))
	case !okT:
		return nil, a.s.End(tctx, c, rpc.Invalid("type %s is not a key type", r.GetType()))
	case !okM:
		return nil, a.s.End(tctx, c, rpc.Invalid("mode %s is not a key mode", r.GetMode()))
	}
	// The resource is the key as it would be created, labels and root key
	// included, so policies can scope admins by label and confine them to
	// their roots. The root is the one the key will use (the mode's
	// default when the request names none), as its declaration spells
	// it. A root the key could not use is refused only after the policy
	// allowed the call, so that callers who may not create keys learn
	// nothing of the roots.
	root, rootErr := a.s.svc.RootFor(mode, typ, r.GetRootKey())
	if rootErr != nil {
		root = r.GetRootKey()
	}
	res := policy.Key{Name: r.GetKeyId(), Type: string(typ), Mode: string(mode), Labels: r.GetLabels(), Root: root}
	if err := c.Decide(a.s.policy.Current().AuthorizeKey(c.Principal(), policy.CreateKey, res)); err != nil {
		return nil, a.s.End(tctx, c, err)
	}
	if rootErr != nil {
		return nil, a.s.End(tctx, c, rootErr)
	}
	k, err := a.s.svc.CreateKey(ctx, broker.CreateParams{
		ID: r.GetKeyId(), Type: typ, Mode: mode, Derived: r.GetDerived(), RootKey: root,
		Labels: r.GetLabels(), RotationPeriod: r.GetRotationPeriod().AsDuration(), Description: r.GetDescription(),
		Placement: r.GetPlacement(),
	})
	if err != nil {
		return nil, a.s.End(tctx, c, err)
	}
	c.SetVersion(k.Primary)
	return rpc.KeyMetadata(k, c.Admin()), a.s.End(tctx, c, nil)
}

// adminOp runs a key-changing admin operation.
func (a *keyAdmin) adminOp(ctx context.Context, op policy.Action, id string, run func(context.Context, *pipeline.Call) (*managed.Key, error)) (*kbv1.KeyMetadata, error) {
	return rpc.KeyCall(ctx, a.s.Server, op, id, func(ctx context.Context, c *pipeline.Call, _ *managed.Key) (*kbv1.KeyMetadata, error) {
		k, err := run(ctx, c)
		if err != nil {
			return nil, err
		}
		c.SetVersion(k.Primary)
		return rpc.KeyMetadata(k, c.Admin()), nil
	})
}

func (a *keyAdmin) RotateKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.adminOp(ctx, policy.RotateKey, r.GetKeyId(), func(tctx context.Context, c *pipeline.Call) (*managed.Key, error) {
		return a.s.svc.RotateKey(tctx, r.GetKeyId())
	})
}

func (a *keyAdmin) UpdateKey(ctx context.Context, r *kbv1.UpdateKeyRequest) (*kbv1.KeyMetadata, error) {
	return a.adminOp(ctx, policy.UpdateKey, r.GetKeyId(), func(tctx context.Context, c *pipeline.Call) (*managed.Key, error) {
		p := broker.UpdateParams{ID: r.GetKeyId(), ExpectedRevision: r.GetExpectedRevision(), Labels: r.GetLabels(),
			ReplaceLabels: r.GetReplaceLabels(), Description: r.Description, MinDecryptionVersion: r.MinDecryptionVersion,
			Placement: r.Placement}
		// The caller must be allowed UpdateKey on the key as it is and as
		// it will be: otherwise an admin confined to some labels could
		// relabel a key out of, or into, another team's reach. Both are
		// asked inside the compare-and-swap, on the record written.
		p.Authorize = func(before, after *managed.Key) error {
			set := a.s.policy.Current()
			for _, k := range []*managed.Key{before, after} {
				if err := c.Decide(set.AuthorizeKey(c.Principal(), policy.UpdateKey, k.PolicyKey())); err != nil {
					return err
				}
			}
			return nil
		}
		if r.RotationPeriod != nil {
			d := r.GetRotationPeriod().AsDuration()
			p.RotationPeriod = &d
		}
		return a.s.svc.UpdateKey(tctx, p)
	})
}

func (a *keyAdmin) DisableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.adminOp(ctx, policy.DisableKey, r.GetKeyId(), func(tctx context.Context, c *pipeline.Call) (*managed.Key, error) {
		return a.s.svc.SetState(tctx, r.GetKeyId(), broker.Disable)
	})
}

func (a *keyAdmin) EnableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.adminOp(ctx, policy.EnableKey, r.GetKeyId(), func(tctx context.Context, c *pipeline.Call) (*managed.Key, error) {
		return a.s.svc.SetState(tctx, r.GetKeyId(), broker.Enable)
	})
}

func (a *keyAdmin) ScheduleKeyDeletion(ctx context.Context, r *kbv1.ScheduleKeyDeletionRequest) (*kbv1.KeyMetadata, error) {
	return a.adminOp(ctx, policy.ScheduleKeyDeletion, r.GetKeyId(), func(tctx context.Context, c *pipeline.Call) (*managed.Key, error) {
		// An unset window is zero: the default 30 days.
		return a.s.svc.ScheduleDeletion(tctx, r.GetKeyId(), r.GetPendingWindow().AsDuration())
	})
}

func (a *keyAdmin) CancelKeyDeletion(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return a.adminOp(ctx, policy.CancelKeyDeletion, r.GetKeyId(), func(tctx context.Context, c *pipeline.Call) (*managed.Key, error) {
		return a.s.svc.SetState(tctx, r.GetKeyId(), broker.CancelDeletion)
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
