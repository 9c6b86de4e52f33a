package audit

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
)

func TestTrace(t *testing.T) {
	// Without a trace, noting is a no-op.
	NoteBackendCall(context.Background(), "soft", "derive")
	if calls, dropped := Traced(context.Background()); calls != nil || dropped != 0 {
		t.Errorf("Traced without a trace = %v, %d", calls, dropped)
	}
	ctx := WithTrace(context.Background())
	NoteBackendCall(ctx, "hsm", "derive")
	NoteBackendCall(ctx, "hsm", "wrap-data-key")
	if calls, dropped := Traced(ctx); !slices.Equal(calls, []string{"hsm:derive", "hsm:wrap-data-key"}) || dropped != 0 {
		t.Errorf("Traced = %v, %d", calls, dropped)
	}
	// Concurrent notes are all counted; the list is bounded.
	ctx = WithTrace(context.Background())
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() { NoteBackendCall(ctx, "hsm", fmt.Sprint("op", i)) })
	}
	wg.Wait()
	calls, dropped := Traced(ctx)
	if len(calls) != maxTraced || dropped != 100-maxTraced {
		t.Errorf("100 calls traced as %d listed + %d dropped, want %d + %d", len(calls), dropped, maxTraced, 100-maxTraced)
	}
}
