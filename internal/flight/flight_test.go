package flight

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestDoCoalesces: concurrent callers share one call and its result.
func TestDoCoalesces(t *testing.T) {
	var g singleflight.Group
	var calls atomic.Int64
	release := make(chan struct{})
	started := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]any, 50)
	for i := range results {
		wg.Go(func() {
			v, err := Do(t.Context(), &g, "k", func(context.Context) (any, error) {
				if calls.Add(1) == 1 {
					close(started)
				}
				<-release
				return "v", nil
			})
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		})
	}
	<-started
	close(release)
	wg.Wait()
	if calls.Load() > int64(len(results)) || calls.Load() < 1 {
		t.Fatalf("calls = %d", calls.Load())
	}
	for i, v := range results {
		if v != "v" {
			t.Errorf("result %d = %v", i, v)
		}
	}
}

// TestDoSurvivesTheFirstCallerGivingUp: when the caller whose ctx the
// shared call runs under cancels — and the call answers with a gRPC
// status, which wraps no context error — a caller with a live ctx runs it
// again and succeeds, instead of failing with the other's cancellation.
func TestDoSurvivesTheFirstCallerGivingUp(t *testing.T) {
	var g singleflight.Group
	firstCtx, cancel := context.WithCancel(t.Context())
	inFirst := make(chan struct{})
	var calls atomic.Int64
	fn := func(ctx context.Context) (any, error) {
		if calls.Add(1) == 1 {
			close(inFirst)
			<-ctx.Done()
			return nil, status.Error(codes.Canceled, "context canceled")
		}
		return "second", nil
	}
	firstErr := make(chan error, 1)
	go func() {
		_, err := Do(firstCtx, &g, "k", fn)
		firstErr <- err
	}()
	<-inFirst
	secondDone := make(chan any, 1)
	go func() {
		v, err := Do(t.Context(), &g, "k", fn)
		if err != nil {
			t.Error(err)
		}
		secondDone <- v
	}()
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v, want its own cancellation", err)
	}
	if v := <-secondDone; v != "second" {
		t.Errorf("second caller = %v, want the retried result", v)
	}
}

// TestDoReturnsRealErrors: a failure not caused by cancellation reaches
// every caller, once.
func TestDoReturnsRealErrors(t *testing.T) {
	var g singleflight.Group
	boom := errors.New("boom")
	var calls atomic.Int64
	_, err := Do(t.Context(), &g, "k", func(context.Context) (any, error) { calls.Add(1); return nil, boom })
	if !errors.Is(err, boom) || calls.Load() != 1 {
		t.Errorf("Do = %v after %d calls, want boom after 1", err, calls.Load())
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Do(ctx, &g, "k", func(context.Context) (any, error) { t.Error("called with a dead ctx"); return nil, nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Do with a cancelled ctx = %v", err)
	}
}

// TestDoPersonalErrorsStayWithTheirCaller: a refusal marked Personal
// reaches only the caller the shared call ran for; a caller that joined
// runs the call again under its own ctx.
func TestDoPersonalErrorsStayWithTheirCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g singleflight.Group
		refused := errors.New("your budget is spent")
		type who struct{}
		release := make(chan struct{})
		fn := func(ctx context.Context) (any, error) {
			<-release
			if ctx.Value(who{}) == "first" {
				return nil, fmt.Errorf("loading: %w", Personal(refused))
			}
			return "second's", nil
		}
		firstErr := make(chan error, 1)
		go func() {
			_, err := Do(context.WithValue(t.Context(), who{}, "first"), &g, "k", fn)
			firstErr <- err
		}()
		synctest.Wait()
		second := make(chan any, 1)
		go func() {
			v, err := Do(context.WithValue(t.Context(), who{}, "second"), &g, "k", fn)
			if err != nil {
				t.Errorf("second caller: %v, want its own result", err)
			}
			second <- v
		}()
		synctest.Wait()
		close(release)
		if err := <-firstErr; !errors.Is(err, refused) {
			t.Errorf("first caller: %v, want its own refusal", err)
		}
		if v := <-second; v != "second's" {
			t.Errorf("second caller = %v, want the result of its own run", v)
		}
	})
}
