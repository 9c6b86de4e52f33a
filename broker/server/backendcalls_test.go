package server

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/budget"
)

// TestGenerateRandomAuditsItsBackendCall: GenerateRandom goes through the
// decorator every root is behind, like every other call to a root of
// trust: its audit line lists the call ("soft:random"), the call is
// counted once, and it is charged to the caller's budget — a caller past
// it is refused before the backend is asked. Before the decorator, the
// handler passed the bare request context, so the audit line listed no
// backend call.
func TestGenerateRandomAuditsItsBackendCall(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	frozen := time.Unix(1_800_000_000, 0)
	bud, err := budget.New(budget.Config{Rate: 1, Burst: 1, Now: func() time.Time { return frozen }})
	if err != nil {
		t.Fatal(err)
	}
	e.roots.SetBudget(bud)
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "app"))
	random := broker.CallKey{Backend: "soft", Op: "random"}

	before := e.roots.Calls()[random]
	resp, err := kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 16})
	if err != nil {
		t.Fatalf("GenerateRandom: %v", err)
	}
	if len(resp.GetRandom()) != 16 {
		t.Errorf("GenerateRandom(16) gave %d bytes", len(resp.GetRandom()))
	}
	if n := e.roots.Calls()[random] - before; n != 1 {
		t.Errorf("GenerateRandom made %d counted backend calls, want 1", n)
	}

	// The budget (a burst of one) is spent: the next call is refused,
	// not counted, and the backend is not asked.
	_, err = kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 16})
	code(t, "GenerateRandom past the budget", err, codes.ResourceExhausted)
	if n := e.roots.Calls()[random] - before; n != 1 {
		t.Errorf("after a refused GenerateRandom, %d counted backend calls, want 1", n)
	}
	if n := e.roots.Refused()[random]; n != 1 {
		t.Errorf("refusals counted = %d, want 1", n)
	}

	e.audit.Sync()
	var lines [][]string
	var outcomes []string
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "GenerateRandom" {
			lines = append(lines, r.BackendCalls)
			outcomes = append(outcomes, r.Outcome)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d GenerateRandom audit lines, want 2", len(lines))
	}
	if !slices.Equal(lines[0], []string{"soft:random"}) || outcomes[0] != "ok" {
		t.Errorf("GenerateRandom audit line: backend_calls %q outcome %q, want [soft:random] ok", lines[0], outcomes[0])
	}
	if len(lines[1]) != 0 || outcomes[1] != codes.ResourceExhausted.String() {
		t.Errorf("refused GenerateRandom audit line: backend_calls %q outcome %q, want none and %s", lines[1], outcomes[1], codes.ResourceExhausted)
	}
}
