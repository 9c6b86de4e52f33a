package rpc_test

import (
	"path/filepath"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
)

type swappablePolicies struct{ p atomic.Pointer[policy.Set] }

func (s *swappablePolicies) Current() *policy.Set { return s.p.Load() }

// TestDecisionsFollowChanges: remembered decisions never outlive what
// they were made on — a key replaced by a changed one, a reloaded policy
// set, another caller or another action is decided afresh.
func TestDecisionsFollowChanges(t *testing.T) {
	parse := func(text string) *policy.Set {
		s, err := policy.Parse(map[string][]byte{"p.cedar": []byte(text)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	permissive := parse(serverPolicies)
	strict := parse(`@id("nothing") forbid (principal, action, resource);`)
	pols := &swappablePolicies{}
	pols.p.Store(permissive)
	log, err := audit.Open(filepath.Join(t.TempDir(), "audit.jsonl"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = log.Close() })
	node := fakeNode{keys: map[string]*managed.Key{
		"payments": testKey("payments", managed.AES256GCM, managed.ModeDerive, map[string]string{"team": "payments"}, ""),
	}}
	s, err := rpc.New(rpc.Config{Node: node, Policy: pols, Audit: log, NodeID: "central-1", TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	check := func(step, caller string, op policy.Action, want codes.Code) {
		t.Helper()
		ctx := callerContext(t, caller, "rid-"+step)
		c, err := s.Begin(ctx, op, "payments")
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.AuthorizeKey(op)
		if got := status.Code(c.End(err)); got != want {
			t.Errorf("%s: %s %s on payments = %v, want %v", step, caller, op, got, want)
		}
	}
	check("first", "app", policy.Encrypt, codes.OK)
	check("again", "app", policy.Encrypt, codes.OK)
	check("another caller", "stranger", policy.Encrypt, codes.PermissionDenied)
	check("another action", "app", policy.Decrypt, codes.PermissionDenied)

	relabelled := node.keys["payments"].Clone()
	relabelled.Labels["team"] = "security"
	node.keys["payments"] = relabelled
	check("key relabelled", "app", policy.Encrypt, codes.PermissionDenied)
	back := relabelled.Clone()
	back.Labels["team"] = "payments"
	node.keys["payments"] = back
	check("label restored", "app", policy.Encrypt, codes.OK)

	pols.p.Store(strict)
	check("policy reloaded", "app", policy.Encrypt, codes.PermissionDenied)
	pols.p.Store(permissive)
	check("policy back", "app", policy.Encrypt, codes.OK)

	delete(node.keys, "payments")
	check("key gone", "ops", policy.Encrypt, codes.NotFound)
}
