package broker

import (
	"fmt"
	"testing"
	"time"
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
