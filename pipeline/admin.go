package pipeline

import (
	"context"
	"errors"
	"time"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// ErrNoAdmin is behind the error (errors.Is; a managed
// ErrFailedPrecondition) of an admin operation asked of a node whose
// pipeline has no Admin (an edge): keys are created and changed at the
// central tier only.
var ErrNoAdmin = errors.New("keys are created and changed at the central tier, not at this node")

func noAdmin() error { return managed.Errorf(managed.ErrFailedPrecondition, "%w", ErrNoAdmin) }

// Admin performs the admin operations on keys: at the central tier,
// broker.Service (adapted by broker/server); an edge has none. The
// pipeline has authorized the caller before it calls one, except where a
// method says otherwise.
type Admin interface {
	// RootFor is the root key a new key of mode m and type t would use
	// (requested, or the mode's default when it is ""), as its
	// declaration spells it; an error for a root the key could not use.
	RootFor(m managed.Mode, t managed.KeyType, requested string) (string, error)
	// CreateKey creates in's key on root (RootFor's answer).
	CreateKey(ctx context.Context, in CreateKeyInput, root string) (*managed.Key, error)
	// RotateKey adds a primary version.
	RotateKey(ctx context.Context, id string) (*managed.Key, error)
	// UpdateKey changes a key's metadata in one compare-and-swap, asking
	// authorize about the key as it was and as it would be, inside it.
	UpdateKey(ctx context.Context, in UpdateKeyInput, authorize func(before, after *managed.Key) error) (*managed.Key, error)
	// SetState applies a lifecycle transition.
	SetState(ctx context.Context, id string, to StateChange) (*managed.Key, error)
	// ScheduleDeletion puts a key in pending deletion for window (0: the
	// default 30 days).
	ScheduleDeletion(ctx context.Context, id string, window time.Duration) (*managed.Key, error)
}

// StateChange is a lifecycle transition of SetState.
type StateChange int

const (
	// Disable stops every operation on an enabled key.
	Disable StateChange = iota + 1
	// Enable re-enables a disabled key.
	Enable
	// CancelDeletion returns a key pending deletion to Disabled: an admin
	// enables it again deliberately (as AWS KMS does).
	CancelDeletion
)

// CreateKeyInput is a CreateKey request. A front-end that cannot convert
// the type or mode it was sent passes its own name for it, which the
// pipeline refuses, naming it.
type CreateKeyInput struct {
	KeyID   string
	Type    managed.KeyType
	Mode    managed.Mode
	Derived bool
	// RootKey is the root key asked for ("": the mode's default).
	RootKey        string
	Labels         map[string]string
	RotationPeriod time.Duration
	Description    string
	Placement      string
}

// UpdateKeyInput is an UpdateKey request: nil and empty fields are left
// as they are.
type UpdateKeyInput struct {
	KeyID string
	// ExpectedRevision, when not 0, must be the key's revision.
	ExpectedRevision uint64
	Description      *string
	// Labels are added (or changed); with ReplaceLabels they replace the
	// key's labels. RemoveLabels are then removed.
	Labels               map[string]string
	ReplaceLabels        bool
	RemoveLabels         []string
	RotationPeriod       *time.Duration
	MinDecryptionVersion *uint32
	Placement            *string
}

// CreateKey creates a key. The resource authorized is the key as it would
// be created, labels and root key included, so policies can scope admins
// by label and confine them to their roots; the root is the one the key
// will use (the mode's default when the request names none), as its
// declaration spells it. A root the key could not use is refused only
// after the policy allowed the call, so that callers who may not create
// keys learn nothing of the roots.
func (p *Pipeline) CreateKey(ctx context.Context, caller Caller, in CreateKeyInput) (*managed.Key, error) {
	ctx, c := p.Begin(ctx, caller, policy.CreateKey, in.KeyID)
	switch {
	case p.admin == nil:
		return nil, c.End(ctx, noAdmin())
	case CheckKeyID(in.KeyID) != nil:
		return nil, c.End(ctx, CheckKeyID(in.KeyID))
	case !in.Type.Valid():
		return nil, c.End(ctx, managed.Errorf(managed.ErrInvalidArgument, "type %s is not a key type", in.Type))
	case !in.Mode.Valid():
		return nil, c.End(ctx, managed.Errorf(managed.ErrInvalidArgument, "mode %s is not a key mode", in.Mode))
	}
	root, rootErr := p.admin.RootFor(in.Mode, in.Type, in.RootKey)
	if rootErr != nil {
		root = in.RootKey
	}
	res := policy.Key{Name: in.KeyID, Type: string(in.Type), Mode: string(in.Mode), Labels: in.Labels, Root: root}
	if err := c.Decide(p.policy.Current().AuthorizeKey(c.Principal(), policy.CreateKey, res)); err != nil {
		return nil, c.End(ctx, err)
	}
	if rootErr != nil {
		return nil, c.End(ctx, rootErr)
	}
	k, err := p.admin.CreateKey(ctx, in, root)
	if err != nil {
		return nil, c.End(ctx, err)
	}
	c.SetVersion(k.Primary)
	return k, c.End(ctx, nil)
}

// adminCall runs an admin operation on an existing key: KeyCall (the
// caller authorized on the key as it is), then run, recording the
// primary version the key is left with.
func (p *Pipeline) adminCall(ctx context.Context, caller Caller, op policy.Action, id string, run func(ctx context.Context, c *Call) (*managed.Key, error)) (*managed.Key, error) {
	if p.admin == nil {
		ctx, c := p.Begin(ctx, caller, op, id)
		return nil, c.End(ctx, noAdmin())
	}
	return KeyCall(ctx, p, caller, op, id, func(ctx context.Context, c *Call, _ *managed.Key) (*managed.Key, error) {
		k, err := run(ctx, c)
		if err != nil {
			return nil, err
		}
		c.SetVersion(k.Primary)
		return k, nil
	})
}

// RotateKey adds a primary version to a key.
func (p *Pipeline) RotateKey(ctx context.Context, caller Caller, id string) (*managed.Key, error) {
	return p.adminCall(ctx, caller, policy.RotateKey, id, func(ctx context.Context, _ *Call) (*managed.Key, error) {
		return p.admin.RotateKey(ctx, id)
	})
}

// UpdateKey changes a key's metadata. The caller must be allowed UpdateKey
// on the key as it is and as it will be: otherwise an admin confined to
// some labels could relabel a key out of, or into, another team's reach.
// Both are asked inside the compare-and-swap, on the record written.
func (p *Pipeline) UpdateKey(ctx context.Context, caller Caller, in UpdateKeyInput) (*managed.Key, error) {
	return p.adminCall(ctx, caller, policy.UpdateKey, in.KeyID, func(ctx context.Context, c *Call) (*managed.Key, error) {
		return p.admin.UpdateKey(ctx, in, func(before, after *managed.Key) error {
			set := p.policy.Current()
			for _, k := range []*managed.Key{before, after} {
				if err := c.Decide(set.AuthorizeKey(c.Principal(), policy.UpdateKey, k.PolicyKey())); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// DisableKey disables an enabled key.
func (p *Pipeline) DisableKey(ctx context.Context, caller Caller, id string) (*managed.Key, error) {
	return p.setState(ctx, caller, policy.DisableKey, id, Disable)
}

// EnableKey enables a disabled key.
func (p *Pipeline) EnableKey(ctx context.Context, caller Caller, id string) (*managed.Key, error) {
	return p.setState(ctx, caller, policy.EnableKey, id, Enable)
}

// CancelKeyDeletion returns a key pending deletion to Disabled.
func (p *Pipeline) CancelKeyDeletion(ctx context.Context, caller Caller, id string) (*managed.Key, error) {
	return p.setState(ctx, caller, policy.CancelKeyDeletion, id, CancelDeletion)
}

func (p *Pipeline) setState(ctx context.Context, caller Caller, op policy.Action, id string, to StateChange) (*managed.Key, error) {
	return p.adminCall(ctx, caller, op, id, func(ctx context.Context, _ *Call) (*managed.Key, error) {
		return p.admin.SetState(ctx, id, to)
	})
}

// ScheduleKeyDeletion puts a key in pending deletion for window (0: the
// default 30 days; managed.MinPendingWindow to MaxPendingWindow).
func (p *Pipeline) ScheduleKeyDeletion(ctx context.Context, caller Caller, id string, window time.Duration) (*managed.Key, error) {
	return p.adminCall(ctx, caller, policy.ScheduleKeyDeletion, id, func(ctx context.Context, _ *Call) (*managed.Key, error) {
		return p.admin.ScheduleDeletion(ctx, id, window)
	})
}
