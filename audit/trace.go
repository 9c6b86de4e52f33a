package audit

import (
	"context"
	"sync"
)

// maxTraced bounds the backend calls one audit line lists; further calls
// are counted in BackendCallsDropped.
const maxTraced = 16

type traceKey struct{}

type trace struct {
	mu      sync.Mutex
	calls   []string
	dropped int
}

// WithTrace returns a context that records the calls made to roots of
// trust while serving one request, for that request's audit line.
func WithTrace(ctx context.Context) context.Context {
	return context.WithValue(ctx, traceKey{}, &trace{})
}

// NoteBackendCall records a call to backend (its configured name) for op
// in ctx's trace, if ctx has one. A call shared by concurrent requests
// (a coalesced miss) is recorded in the request that made it.
func NoteBackendCall(ctx context.Context, backend, op string) {
	t, ok := ctx.Value(traceKey{}).(*trace)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.calls) == maxTraced {
		t.dropped++
		return
	}
	t.calls = append(t.calls, backend+":"+op)
}

// Traced returns the calls recorded in ctx's trace and how many more were
// made than it lists.
func Traced(ctx context.Context) (calls []string, dropped int) {
	t, ok := ctx.Value(traceKey{}).(*trace)
	if !ok {
		return nil, 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.calls...), t.dropped
}
