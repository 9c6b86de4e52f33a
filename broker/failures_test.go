package broker

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/managed"
)

func TestFailedUnwraps(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	f := newFailedUnwraps(time.Minute, 3, func() time.Time { return now })
	wrapped := []byte("forged data key")
	if f.failed("k", 1, wrapped) {
		t.Fatal("failed before any failure = true")
	}
	f.remember("k", 1, wrapped)
	for _, tc := range []struct {
		id   string
		v    uint32
		w    []byte
		want bool
	}{
		{"k", 1, wrapped, true},
		{"k", 2, wrapped, false},
		{"k2", 1, wrapped, false},
		{"k", 1, []byte("forged data kez"), false},
	} {
		if got := f.failed(tc.id, tc.v, tc.w); got != tc.want {
			t.Errorf("failed(%q, %d, %q) = %v, want %v", tc.id, tc.v, tc.w, got, tc.want)
		}
	}
	now = now.Add(59 * time.Second)
	if !f.failed("k", 1, wrapped) {
		t.Error("failed after 59s of a 1m memory = false, want true")
	}
	now = now.Add(time.Second)
	if f.failed("k", 1, wrapped) {
		t.Error("failed after 1m of a 1m memory = true, want false: failures are remembered briefly")
	}

	// Bounded: the oldest goes first.
	for i := range 5 {
		f.remember("k", 1, fmt.Appendf(nil, "w%d", i))
	}
	if n := f.order.Len(); n != 3 || len(f.m) != 3 {
		t.Errorf("after 5 failures in a memory of 3: %d entries (%d in the map), want 3", n, len(f.m))
	}
	if f.failed("k", 1, []byte("w0")) || !f.failed("k", 1, []byte("w4")) {
		t.Error("a full memory dropped the newest failure instead of the oldest")
	}
}

// TestMaterialChargedToCaller: material derivations are charged to the
// principal in the context — an edge fetching material spends the edge's
// budget, not its clients' — and the node's own work (no principal) is not
// charged.
func TestMaterialChargedToCaller(t *testing.T) {
	r, _ := softRoots(t)
	frozen := time.Unix(1_800_000_000, 0)
	b, err := budget.New(budget.Config{Rate: 1, Burst: 2, Now: func() time.Time { return frozen }})
	if err != nil {
		t.Fatal(err)
	}
	r.SetBudget(b)
	ms := NewMaterials(r, 100, time.Hour, nil)
	key := func(i int) *managed.Key {
		return &managed.Key{ID: fmt.Sprint("k", i), Type: managed.AES256GCM, Mode: managed.ModeDerive, Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf-root"}}}
	}
	edgeCtx := identity.NewContext(t.Context(), identity.Identity{TrustDomain: "kb.test", Kind: identity.Edge, Name: "edge-1"})
	clientCtx := identity.NewContext(t.Context(), identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "app"})
	for i := range 2 {
		if _, err := ms.Get(edgeCtx, key(i), 1); err != nil {
			t.Fatalf("edge fetch %d within its burst: %v", i, err)
		}
	}
	if _, err := ms.Get(edgeCtx, key(2), 1); !errors.Is(err, managed.ErrResourceExhausted) {
		t.Errorf("edge fetch beyond its burst = %v, want ErrResourceExhausted", err)
	}
	if _, err := ms.Get(edgeCtx, key(0), 1); err != nil {
		t.Errorf("edge fetch of cached material = %v, want it served without a backend call", err)
	}
	if _, err := ms.Get(clientCtx, key(3), 1); err != nil {
		t.Errorf("a client's derivation after the edge spent its budget = %v, want it served", err)
	}
	for i := 4; i < 10; i++ {
		if _, err := ms.Get(t.Context(), key(i), 1); err != nil {
			t.Errorf("the node's own derivation %d = %v, want it never charged", i, err)
		}
	}
	if n := r.Refused()[CallKey{"soft", "derive"}]; n != 1 {
		t.Errorf("refusals counted = %d, want 1", n)
	}
}
