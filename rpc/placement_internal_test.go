package rpc

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/placement"
)

// TestOperationAction: every operation the API defines reaches placement
// as an action, and OPERATION_UNSPECIFIED and undefined values are refused
// (LookupKey answers InvalidArgument).
func TestOperationAction(t *testing.T) {
	seen := map[string]bool{}
	for v, name := range kbv1.Operation_name {
		op := kbv1.Operation(v)
		a, ok := operationAction(op)
		if op == kbv1.Operation_OPERATION_UNSPECIFIED {
			if ok {
				t.Errorf("operationAction(%s) = %q, want refused", op, a)
			}
			continue
		}
		if !ok || a == "" {
			t.Errorf("operationAction(%s) = %q, %v, want an action", op, a, ok)
		}
		// Names match modulo case and underscores (REENCRYPT is ReEncrypt).
		if want := strings.ReplaceAll(strings.TrimPrefix(name, "OPERATION_"), "_", ""); !strings.EqualFold(string(a), want) {
			t.Errorf("operationAction(%s) = %q, want the action named %s", op, a, want)
		}
		if seen[string(a)] {
			t.Errorf("operationAction(%s) = %q, which another operation also names", op, a)
		}
		seen[string(a)] = true
	}
	if a, ok := operationAction(kbv1.Operation(9999)); ok {
		t.Errorf("operationAction(9999) = %q, want refused", a)
	}
}

// TestLookupToProto: each candidate becomes the LookupNode it always was —
// id, address, kind and region from the inventory, the reason by name.
func TestLookupToProto(t *testing.T) {
	for r := placement.Reason(0); r <= placement.Replica+1; r++ {
		c := placement.Candidate{Node: placement.Node{ID: "edge-1", Kind: "edge", Address: "edge-1.example:7443", Region: "eu",
			Labels: map[string]string{"pci": "yes"}, Prefetch: true, Connected: true, Enrolled: true}, Reason: r}
		want := kbv1.LookupReason_LOOKUP_REASON_UNSPECIFIED
		if r >= placement.MaterialHeld && r <= placement.Replica {
			want = kbv1.LookupReason(kbv1.LookupReason_value["LOOKUP_REASON_"+r.String()])
			if want == kbv1.LookupReason_LOOKUP_REASON_UNSPECIFIED {
				t.Fatalf("reason %s has no wire name", r)
			}
		}
		got := lookupToProto([]placement.Candidate{c})
		wantNodes := []*kbv1.LookupNode{{NodeId: "edge-1", Address: "edge-1.example:7443", Kind: "edge", Region: "eu", Reason: want}}
		if diff := cmp.Diff(wantNodes, got, protocmp.Transform()); diff != "" {
			t.Errorf("lookupToProto(reason %s) mismatch (-want +got):\n%s", r, diff)
		}
	}
	if got := lookupToProto(nil); len(got) != 0 {
		t.Errorf("lookupToProto(nil) = %v, want none", got)
	}
}
