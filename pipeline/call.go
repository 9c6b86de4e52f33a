package pipeline

import (
	"context"
	"errors"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// ErrAuditDown is the error of a call refused because its audit line could
// not be written: whatever the call did, its result is withheld. A batch
// stops at it rather than going on unaudited.
var ErrAuditDown = errors.New("audit log unavailable: the operation is refused")

// Call follows one audited call from its decision to its audit line. It
// holds no context: the methods that act take the call's.
type Call struct {
	p      *Pipeline
	caller Caller
	rec    audit.Record
}

// Begin starts an audited call: op on key ("" for none) by caller; op is
// a policy action or, for calls no policy decides, the call's name. The
// context it returns traces the backend calls made for the call, which
// End lists in the audit line: perform the call under it.
func (p *Pipeline) Begin(ctx context.Context, caller Caller, op policy.Action, key string) (context.Context, *Call) {
	return audit.WithTrace(ctx), &Call{p: p, caller: caller, rec: audit.Record{
		RequestID: caller.RequestID, ClientRequestID: caller.ClientRequestID, Principal: caller.Who.String(),
		Node: p.node, Operation: audit.Operation(op), Key: key, Via: caller.Via,
	}}
}

// Caller is who makes the call.
func (c *Call) Caller() Caller { return c.caller }

// Who is the caller's identity.
func (c *Call) Who() identity.Identity { return c.caller.Who }

// Principal is the caller as Cedar sees it.
func (c *Call) Principal() policy.Principal { return c.caller.Principal() }

// Admin reports whether the caller is an admin.
func (c *Call) Admin() bool { return c.caller.Admin() }

// RequestID is the call's request id.
func (c *Call) RequestID() string { return c.rec.RequestID }

// Operation is what the call does, as its audit line names it.
func (c *Call) Operation() audit.Operation { return c.rec.Operation }

// Key is the key the call is about, if any.
func (c *Call) Key() string { return c.rec.Key }

// SetKey names the key the call is about (a refusal names the key it
// refused).
func (c *Call) SetKey(id string) { c.rec.Key = id }

// SetVersion records the key version used.
func (c *Call) SetVersion(v uint32) { c.rec.Version = v }

// SetBackend records what served the call.
func (c *Call) SetBackend(b string) { c.rec.Backend = b }

// SetDetail records a detail for the audit line (what the call did, for
// calls whose outcome alone does not say).
func (c *Call) SetDetail(d string) { c.rec.Detail = d }

// Allow records a decision to allow made by a rule that is not a policy
// (an enrolled edge's own calls); policyID names the rule, if any.
func (c *Call) Allow(policyID string) { c.rec.Decision, c.rec.PolicyID = audit.Allow, policyID }

// Deny records a refusal made by a rule that is not a policy
// ("not-enrolled", "edge-only", "forward-proof"); the caller returns the
// refusal's error.
func (c *Call) Deny(policyID string) { c.rec.Decision, c.rec.PolicyID = audit.Deny, policyID }

// Decide records a policy decision and turns a denial into a
// managed.ErrPermissionDenied naming the caller, the operation and the
// resource.
func (c *Call) Decide(d policy.Decision) error {
	c.rec.PolicyID = d.PolicyID()
	if d.Allowed {
		c.rec.Decision = audit.Allow
		return nil
	}
	c.rec.Decision = audit.Deny
	return managed.Errorf(managed.ErrPermissionDenied, "%s may not %s %s", c.caller.Who, c.rec.Operation, describeResource(c.rec.Key))
}

func describeResource(key string) string {
	if key == "" {
		return "on this service"
	}
	return "key " + key
}

// AuthorizeService asks the policy about op on no key.
func (c *Call) AuthorizeService(op policy.Action) error {
	return c.Decide(c.p.policy.Current().AuthorizeService(c.Principal(), op))
}

// AuthorizeKey resolves the call's key (Performer.Get, once) and asks the
// policy about op on it, through the decision cache. An unknown key is
// authorized as a key with no labels, so existence is not leaked; a
// caller allowed near it learns it does not exist (ErrNotFound).
func (c *Call) AuthorizeKey(ctx context.Context, op policy.Action) (*managed.Key, error) {
	p := c.p
	k, err := p.perf.Get(ctx, c.rec.Key)
	var res policy.Key
	switch {
	case err == nil:
		res = k.PolicyKey()
		c.rec.Backend = p.perf.Served(k, op)
	case errors.Is(err, managed.ErrNotFound):
		k, res = nil, policy.Key{Name: c.rec.Key}
	default:
		return nil, err
	}
	set := p.policy.Current()
	var dec policy.Decision
	if k != nil {
		dec = p.decisions.decide(set, c.caller.Who, op, k, func() policy.Decision { return set.AuthorizeKey(c.Principal(), op, res) })
	} else {
		dec = set.AuthorizeKey(c.Principal(), op, res)
	}
	if derr := c.Decide(dec); derr != nil {
		return nil, derr
	}
	if k == nil {
		return nil, managed.Errorf(managed.ErrNotFound, "key %q does not exist", c.rec.Key)
	}
	return k, nil
}

// End writes the call's audit line — outcome ok, or Config.Outcome's name
// and detail of err — with the backend calls traced in ctx (Begin's), and
// returns err. If the line cannot be written the call fails with
// ErrAuditDown, whatever it did.
func (c *Call) End(ctx context.Context, err error) error {
	c.rec.BackendCalls, c.rec.BackendCallsDropped = audit.Traced(ctx)
	c.rec.Outcome = "ok"
	if err != nil {
		c.rec.Outcome, c.rec.Detail = c.p.outcome(err)
	}
	if aerr := c.p.audit.Append(c.rec); aerr != nil {
		c.p.log.Error("audit append failed; refusing the call", "request_id", c.rec.RequestID, "err", aerr)
		return ErrAuditDown
	}
	return err
}

// Record is the call's audit record as it stands.
func (c *Call) Record() audit.Record { return c.rec }
