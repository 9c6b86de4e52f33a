package budget

import (
	"fmt"
	"testing"
	"time"
)

// clock is a manual clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestTake(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	b, err := New(Config{Rate: 10, Burst: 5, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if !b.Take("spiffe://kb/client/a") {
			t.Fatalf("Take #%d within the burst = false, want true", i+1)
		}
	}
	if b.Take("spiffe://kb/client/a") {
		t.Error("Take beyond the burst = true, want false")
	}
	if !b.Take("spiffe://kb/client/b") {
		t.Error("Take by another principal = false, want true: buckets are per principal")
	}
	c.t = c.t.Add(100 * time.Millisecond) // one token at 10/s
	if !b.Take("spiffe://kb/client/a") {
		t.Error("Take after 100ms at 10/s = false, want true")
	}
	if b.Take("spiffe://kb/client/a") {
		t.Error("second Take after 100ms at 10/s = true, want false")
	}
}

func TestBounded(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	b, err := New(Config{Rate: 1, Burst: 1, MaxPrincipals: 3, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		b.Take(fmt.Sprint("p", i))
	}
	if got := b.Tracked(); got != 3 {
		t.Errorf("Tracked() after 10 principals = %d, want 3", got)
	}
	// p9 is still tracked (and empty); p0 was dropped and starts afresh.
	if b.Take("p9") {
		t.Error("Take(p9), a tracked empty bucket = true, want false")
	}
	if !b.Take("p0") {
		t.Error("Take(p0), a dropped bucket = false, want true")
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, c := range []Config{{Rate: 0, Burst: 1}, {Rate: -1, Burst: 1}, {Rate: 1, Burst: 0}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) = nil error, want one", c)
		}
	}
}
