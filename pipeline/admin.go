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
	// AliasTarget is the key a named alias (without alias/) names, or
	// managed.ErrNotFound: the central tier's record, which decides.
	AliasTarget(ctx context.Context, name string) (string, error)
	// CreateAlias gives a named alias to key id; managed.ErrAlreadyExists
	// when it is taken.
	CreateAlias(ctx context.Context, name, id string) (*managed.Key, error)
	// DeleteAlias removes a named alias, which must name key id.
	DeleteAlias(ctx context.Context, name, id string) (*managed.Key, error)
	// UpdateAlias moves a named alias from key from to key to.
	UpdateAlias(ctx context.Context, name, from, to string) (*managed.Key, error)
}

// AliasResolver is what a Performer that knows named aliases implements
// (the central tier from its records, an edge from its replica's keys):
// ResolveAlias is the id of the key alias name names, or
// managed.ErrNotFound.
type AliasResolver interface {
	ResolveAlias(ctx context.Context, name string) (string, error)
}

// ResolveAlias is the id of the key named alias name (without alias/)
// names; found is false when no named alias has that name, and then
// alias/<name> names key <name>. No policy is asked and nothing is
// audited: the operation that uses the key authorizes and audits it, on
// the key the alias resolved to.
func (p *Pipeline) ResolveAlias(ctx context.Context, name string) (id string, found bool, err error) {
	r, ok := p.perf.(AliasResolver)
	if !ok || managed.ValidateAlias(name) != nil {
		return "", false, nil
	}
	id, err = r.ResolveAlias(ctx, name)
	switch {
	case errors.Is(err, managed.ErrNotFound):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return id, true, nil
}

// The alias operations are audited as CreateAlias, DeleteAlias and
// UpdateAlias and authorized as UpdateKey on the key (both keys, for a
// move): an alias is a name of the key, part of its metadata as its labels
// are, and whoever may point an alias at a key redirects the callers that
// use the alias to that key.
const (
	opCreateAlias policy.Action = "CreateAlias"
	opDeleteAlias policy.Action = "DeleteAlias"
	opUpdateAlias policy.Action = "UpdateAlias"
)

// CreateAlias gives a named alias (without alias/) to key id.
func (p *Pipeline) CreateAlias(ctx context.Context, caller Caller, name, id string) (*managed.Key, error) {
	return p.aliasCall(ctx, caller, opCreateAlias, name, id)
}

// DeleteAlias removes a named alias. It returns the key the alias named,
// as it is left (nil if the key is gone).
func (p *Pipeline) DeleteAlias(ctx context.Context, caller Caller, name string) (*managed.Key, error) {
	return p.aliasCall(ctx, caller, opDeleteAlias, name, "")
}

// UpdateAlias points a named alias at key to.
func (p *Pipeline) UpdateAlias(ctx context.Context, caller Caller, name, to string) (*managed.Key, error) {
	return p.aliasCall(ctx, caller, opUpdateAlias, name, to)
}

// aliasCall runs an alias operation: the key it changes (id; for
// DeleteAlias and UpdateAlias the key the alias names now too) authorized
// as UpdateKey, then performed, under one audit line that names the key
// and, in its detail, the alias.
func (p *Pipeline) aliasCall(ctx context.Context, caller Caller, op policy.Action, name, id string) (*managed.Key, error) {
	ctx, c := p.Begin(ctx, caller, op, id)
	fail := func(err error) (*managed.Key, error) { return nil, c.End(ctx, err) }
	if p.admin == nil {
		return fail(noAdmin())
	}
	if err := managed.ValidateAlias(name); err != nil {
		return fail(err)
	}
	c.SetDetail("alias/" + name)
	var from string
	if op != opCreateAlias {
		t, err := p.admin.AliasTarget(ctx, name)
		switch {
		case errors.Is(err, managed.ErrNotFound):
			// As for an unknown key: a caller the policy would not let
			// change a key learns PermissionDenied, not whether the alias
			// exists.
			if derr := c.Decide(p.policy.Current().AuthorizeKey(c.Principal(), policy.UpdateKey, policy.Key{Name: "alias/" + name})); derr != nil {
				return fail(derr)
			}
			return fail(err)
		case err != nil:
			return fail(err)
		}
		from = t
		if op == opDeleteAlias {
			id = t
		}
		c.SetKey(id)
	}
	if err := CheckKeyID(id); err != nil {
		return fail(err)
	}
	if _, err := c.AuthorizeKey(ctx, policy.UpdateKey); err != nil {
		return fail(err)
	}
	if op == opUpdateAlias && from != id {
		c.SetDetail("alias/" + name + " from key " + from)
		fk, err := p.perf.Get(ctx, from)
		res := policy.Key{Name: from}
		if err == nil {
			res = fk.PolicyKey()
		}
		if derr := c.Decide(p.policy.Current().AuthorizeKey(c.Principal(), policy.UpdateKey, res)); derr != nil {
			return fail(derr)
		}
	}
	var k *managed.Key
	var err error
	switch op {
	case opCreateAlias:
		k, err = p.admin.CreateAlias(ctx, name, id)
	case opDeleteAlias:
		k, err = p.admin.DeleteAlias(ctx, name, id)
	case opUpdateAlias:
		k, err = p.admin.UpdateAlias(ctx, name, from, id)
	}
	if err != nil {
		return fail(err)
	}
	if k != nil {
		c.SetVersion(k.Primary)
	}
	return k, c.End(ctx, nil)
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
