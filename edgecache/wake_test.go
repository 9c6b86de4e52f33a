package edgecache

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// fakeConn is a connection whose state the test sets. Its calls fail
// (waitRetry makes none).
type fakeConn struct {
	mu       sync.Mutex
	st       connectivity.State
	changed  chan struct{}
	connects int
}

func newFakeConn(st connectivity.State) *fakeConn {
	return &fakeConn{st: st, changed: make(chan struct{})}
}

func (f *fakeConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unavailable, "fake")
}

func (f *fakeConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unavailable, "fake")
}

func (f *fakeConn) GetState() connectivity.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeConn) set(st connectivity.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeConn) WaitForStateChange(ctx context.Context, from connectivity.State) bool {
	for {
		f.mu.Lock()
		st, ch := f.st, f.changed
		f.mu.Unlock()
		if st != from {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (f *fakeConn) Connect() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connects++
}

// TestWaitRetryWakesWhenConnectionReturns: a retry wait ends when the
// connection to the central tier comes back up — not when the backoff
// (an hour here) has passed — and an idle connection is asked to connect.
// A connection that stays ready, or a wait that may not be woken, waits
// the backoff out.
func TestWaitRetryWakesWhenConnectionReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fc := newFakeConn(connectivity.Idle)
		c := &Cache{cfg: Config{Central: fc}}
		start := time.Now()
		done := make(chan [2]bool, 1)
		go func() {
			woken, ok := c.waitRetry(t.Context(), time.Hour, true)
			done <- [2]bool{woken, ok}
		}()
		synctest.Wait()
		fc.mu.Lock()
		connects := fc.connects
		fc.mu.Unlock()
		if connects == 0 {
			t.Error("an idle connection was not asked to connect")
		}
		time.Sleep(3 * time.Second) // fake time: the connection is down a while
		fc.set(connectivity.Connecting)
		synctest.Wait()
		fc.set(connectivity.Ready)
		if got := <-done; got != [2]bool{true, true} {
			t.Errorf("waitRetry = woken %v, ok %v; want woken by the connection", got[0], got[1])
		}
		if waited := time.Since(start); waited != 3*time.Second {
			t.Errorf("waitRetry waited %v, want until the connection was back (3s)", waited)
		}
		if c.stats.wakes.Load() != 1 {
			t.Errorf("wakes = %d, want 1", c.stats.wakes.Load())
		}

		for _, tc := range []struct {
			name     string
			st       connectivity.State
			wakeable bool
		}{
			{"a connection that stays ready", connectivity.Ready, true},
			{"a wait that may not be woken", connectivity.TransientFailure, false},
		} {
			fc := newFakeConn(tc.st)
			c := &Cache{cfg: Config{Central: fc}}
			start := time.Now()
			go func() {
				time.Sleep(time.Second)
				fc.set(connectivity.Ready)
			}()
			woken, ok := c.waitRetry(t.Context(), 2*time.Minute, tc.wakeable)
			if woken || !ok || time.Since(start) < time.Minute {
				t.Errorf("%s: waitRetry = woken %v, ok %v after %v; want the backoff (1-2 minutes) waited out", tc.name, woken, ok, time.Since(start))
			}
		}
	})
}
