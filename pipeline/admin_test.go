package pipeline_test

import (
	"errors"
	"testing"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// TestAdminWithoutAnAdmin: a pipeline with no Admin (an edge's) refuses
// every admin operation with ErrNoAdmin, a FailedPrecondition, before it
// asks the policy or the performer anything, and audits each refusal.
func TestAdminWithoutAnAdmin(t *testing.T) {
	svc := newService(t)
	p, path := newPipeline(t, centralPerformer{svc}, staticPolicies{parsePolicies(t, `permit (principal, action, resource);`)})
	ctx := t.Context()
	admin := pipeline.Caller{Who: identity.Identity{TrustDomain: td, Kind: identity.Admin, Name: "ops"}, RequestID: "rid-admin"}
	calls := map[string]func() (*managed.Key, error){
		"CreateKey": func() (*managed.Key, error) {
			return p.CreateKey(ctx, admin, pipeline.CreateKeyInput{KeyID: "new", Type: managed.AES256GCM, Mode: managed.ModeDerive})
		},
		"RotateKey": func() (*managed.Key, error) { return p.RotateKey(ctx, admin, "payments") },
		"UpdateKey": func() (*managed.Key, error) {
			return p.UpdateKey(ctx, admin, pipeline.UpdateKeyInput{KeyID: "payments", RemoveLabels: []string{"team"}})
		},
		"DisableKey":          func() (*managed.Key, error) { return p.DisableKey(ctx, admin, "payments") },
		"EnableKey":           func() (*managed.Key, error) { return p.EnableKey(ctx, admin, "payments") },
		"ScheduleKeyDeletion": func() (*managed.Key, error) { return p.ScheduleKeyDeletion(ctx, admin, "payments", 0) },
		"CancelKeyDeletion":   func() (*managed.Key, error) { return p.CancelKeyDeletion(ctx, admin, "payments") },
	}
	for op, call := range calls {
		if k, err := call(); !errors.Is(err, pipeline.ErrNoAdmin) || !errors.Is(err, managed.ErrFailedPrecondition) || k != nil {
			t.Errorf("%s without an Admin = %v, %v; want ErrNoAdmin", op, k, err)
		}
	}
	lines := auditLines(t, path)
	if len(lines) != len(calls) {
		t.Fatalf("%d audit lines, want one per refused call (%d)", len(lines), len(calls))
	}
	for _, r := range lines {
		if calls[string(r.Operation)] == nil || r.Outcome == "ok" || r.Decision != "" || r.RequestID != "rid-admin" {
			t.Errorf("audit line %+v: want a refusal of an admin operation, decided by no policy", r)
		}
	}
	if k, err := svc.Get(ctx, "payments"); err != nil || k.State != managed.StateEnabled || k.Labels["team"] != "payments" || k.Primary != 1 {
		t.Errorf("payments after the refusals: %+v, %v; want it as it was", k, err)
	}
	if _, err := svc.Get(ctx, "new"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("Get(new) = %v, want NotFound: nothing was created", err)
	}
}
