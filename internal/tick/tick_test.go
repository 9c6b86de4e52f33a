package tick

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestEvery: fn runs once per interval, first after one interval, and not
// after ctx ends.
func TestEvery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		var calls atomic.Int32
		done := make(chan struct{})
		go func() { defer close(done); Every(ctx, time.Second, func() { calls.Add(1) }) }()
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		if calls.Load() != 0 {
			t.Errorf("%d calls before the first interval", calls.Load())
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if calls.Load() != 3 {
			t.Errorf("%d calls after 3.5 intervals, want 3", calls.Load())
		}
		cancel()
		<-done
		time.Sleep(5 * time.Second)
		if calls.Load() != 3 {
			t.Errorf("%d calls after ctx ended, want 3", calls.Load())
		}
	})
}
