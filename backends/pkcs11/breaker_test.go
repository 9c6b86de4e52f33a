package pkcs11

import (
	"sync"
	"testing"
	"time"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestBreaker(t *testing.T) {
	clock := &testClock{t: time.Unix(1000, 0)}
	var changes []BreakerState
	br := newBreaker(3, time.Minute, clock.now, func(s BreakerState) { changes = append(changes, s) })
	allow := func(wantProbe, wantOK bool) bool {
		t.Helper()
		probe, ok := br.allow()
		if probe != wantProbe || ok != wantOK {
			t.Fatalf("allow() = %v, %v; want %v, %v (state %v)", probe, ok, wantProbe, wantOK, br.State())
		}
		return probe
	}

	// Failures below the threshold, then a success, leave it closed.
	for range 2 {
		allow(false, true)
		br.failure(false)
	}
	allow(false, true)
	br.success(false)
	if got := br.failures.Load(); got != 0 {
		t.Fatalf("failures after a success = %d, want 0", got)
	}
	// Three consecutive failed recoveries open it.
	for range 3 {
		allow(false, true)
		br.failure(false)
	}
	if got := br.State(); got != BreakerOpen {
		t.Fatalf("state after 3 failures = %v, want open", got)
	}
	allow(false, false)
	clock.advance(59 * time.Second)
	allow(false, false)

	// Half-open: one probe at a time.
	clock.advance(time.Second)
	if got := br.State(); got != BreakerHalfOpen {
		t.Fatalf("state after the cool-down = %v, want half-open", got)
	}
	p := allow(true, true)
	allow(false, false) // a second caller fails fast while the probe runs
	br.release(p)       // the probe gave no verdict (cancelled)
	p = allow(true, true)
	br.failure(p) // probe failed: open again for a full cool-down
	if got := br.State(); got != BreakerOpen {
		t.Fatalf("state after a failed probe = %v, want open", got)
	}
	clock.advance(30 * time.Second)
	allow(false, false)
	clock.advance(30 * time.Second)
	p = allow(true, true)
	br.success(p)
	if got := br.State(); got != BreakerClosed {
		t.Fatalf("state after a successful probe = %v, want closed", got)
	}
	allow(false, true)

	want := []BreakerState{BreakerOpen, BreakerHalfOpen, BreakerOpen, BreakerHalfOpen, BreakerClosed}
	if len(changes) != len(want) {
		t.Fatalf("state changes = %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("state changes = %v, want %v", changes, want)
		}
	}
}

func TestBreakerConcurrent(t *testing.T) {
	clock := &testClock{t: time.Unix(0, 0)}
	br := newBreaker(2, time.Second, clock.now, nil)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for j := range 200 {
				probe, ok := br.allow()
				if !ok {
					clock.advance(100 * time.Millisecond)
					continue
				}
				if (i+j)%3 == 0 {
					br.failure(probe)
				} else {
					br.success(probe)
				}
			}
		})
	}
	wg.Wait()
	_ = br.State()
}
