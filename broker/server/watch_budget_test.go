package server

import (
	"fmt"
	"sync"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
)

// TestWatchSnapshotWaitsForBudget: a prefetching edge whose snapshot needs
// more calls to the roots of trust than its budget's burst gets the whole
// snapshot on one stream, every key's material sealed to it and opening,
// while the budget still refuses the calls past it (the stream waited for
// the budget rather than failing with ResourceExhausted and starting the
// snapshot again).
func TestWatchSnapshotWaitsForBudget(t *testing.T) {
	e, edge := prefetchingEdge(t, budgetKeys)
	// The budget's clock moves 1 ms each time it is read, so each attempt
	// refills 0.4 of a call: past the burst, attempts are refused however
	// fast or slow the machine is, and every third one goes through.
	var mu sync.Mutex
	clock := time.Unix(1_700_000_000, 0)
	bud, err := budget.New(budget.Config{Rate: 400, Burst: 5, Now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(time.Millisecond)
		return clock
	}})
	if err != nil {
		t.Fatal(err)
	}
	e.roots.SetBudget(bud)
	refusedBefore := refusals(e)
	if got := wholeSnapshot(t, edge); got != budgetKeys {
		t.Fatalf("snapshot of %d keys, want %d", got, budgetKeys)
	}
	if refusals(e) == refusedBefore {
		t.Fatal("the budget refused no call: the test did not spend it")
	}
}

// TestEdgeBudgetIsTheEdges: with an edge budget set, a prefetching edge's
// snapshot is charged to it and not to the budget every other principal
// shares: a client budget of one call (on a clock that never moves) refuses
// nothing of the snapshot, and the edge budget counts its calls.
func TestEdgeBudgetIsTheEdges(t *testing.T) {
	e, edge := prefetchingEdge(t, budgetKeys)
	frozen := func() time.Time { return time.Unix(1_700_000_000, 0) }
	clients, err := budget.New(budget.Config{Rate: 1, Burst: 1, Now: frozen})
	if err != nil {
		t.Fatal(err)
	}
	edges, err := budget.New(budget.Config{Rate: 1, Burst: 10 * budgetKeys, Now: frozen})
	if err != nil {
		t.Fatal(err)
	}
	e.roots.SetBudget(clients)
	e.roots.SetEdgeBudget(edges)
	if got := wholeSnapshot(t, edge); got != budgetKeys {
		t.Fatalf("snapshot of %d keys, want %d", got, budgetKeys)
	}
	if r := refusals(e); r != 0 {
		t.Fatalf("%d calls refused: the edge was charged to the clients' budget", r)
	}
	if clients.Tracked() != 0 {
		t.Fatalf("the clients' budget tracks %d principals, want none", clients.Tracked())
	}
	if edges.Tracked() != 1 {
		t.Fatalf("the edge budget tracks %d principals, want the edge", edges.Tracked())
	}
}

// budgetKeys is how many keys the budget tests' edge may hold.
const budgetKeys = 120

// prefetchingEdge makes n derive-mode keys placed in region eu and a
// registered prefetching edge there, edge-1.
func prefetchingEdge(t *testing.T, n int) (*testEnv, *testEdge) {
	t.Helper()
	e := start(t)
	for i := range n {
		if _, err := e.svc.CreateKey(t.Context(), broker.CreateParams{ID: fmt.Sprintf("tenant-%07d", i), Type: managed.AES256GCM,
			Mode: managed.ModeDerive, Placement: `principal.region == "eu"`}); err != nil {
			t.Fatal(err)
		}
	}
	e.enroll(t, "edge-1", "eu", nil)
	edge, _, err := e.register(t, "edge-1", "eu")
	if err != nil {
		t.Fatal(err)
	}
	return e, edge
}

// wholeSnapshot reads a chunked snapshot to its end, checking that every
// version's material opens with the edge's key, and counts its keys.
func wholeSnapshot(t *testing.T, edge *testEdge) int {
	t.Helper()
	stream, err := edge.sync.Watch(t.Context(), &kbv1.WatchRequest{ChunkedSnapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for more := true; more; {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv after %d keys: %v", got, err)
		}
		snap := ev.GetSnapshot()
		if snap == nil {
			t.Fatalf("got %T, want a snapshot chunk", ev.GetEvent())
		}
		for _, k := range snap.GetKeys() {
			id := k.GetMetadata().GetKeyId()
			if len(k.GetVersions()) == 0 {
				t.Fatalf("key %s has no versions", id)
			}
			for _, v := range k.GetVersions() {
				if _, err := sealed.Open(edge.sk, v.GetSealedMaterial(), "edge-1", id, v.GetVersion()); err != nil {
					t.Fatalf("key %s version %d: material does not open: %v", id, v.GetVersion(), err)
				}
			}
			got++
		}
		more = snap.GetMore()
	}
	return got
}

func refusals(e *testEnv) uint64 {
	var n uint64
	for _, c := range e.roots.Refused() {
		n += c
	}
	return n
}
