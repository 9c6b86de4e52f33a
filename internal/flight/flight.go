// Package flight coalesces concurrent calls for the same thing into one
// (singleflight) while every caller keeps its own deadline: the data-key
// caches, the central material cache and the edge's material fetches use
// it, so N concurrent misses cost one backend call or one fetch.
package flight

import (
	"context"
	"errors"

	"golang.org/x/sync/singleflight"
)

// maxRetries bounds how often a caller re-runs a shared call that failed
// only because the caller that started it gave up.
const maxRetries = 3

// Do runs fn once for all concurrent callers with the same key. Each
// caller waits under its own ctx. The shared call runs under the first
// caller's ctx; when it fails because that caller gave up, a caller whose
// own ctx is live runs it again (a few times at most). Whether the first
// caller gave up is read from its ctx, not from the error: a gRPC call cut
// short answers a status, which wraps no context error.
func Do(ctx context.Context, g *singleflight.Group, key string, fn func(context.Context) (any, error)) (any, error) {
	for attempt := 0; ; attempt++ {
		ch := g.DoChan(key, func() (any, error) {
			if err := ctx.Err(); err != nil {
				return nil, abandoned{err}
			}
			v, err := fn(ctx)
			if err != nil && ctx.Err() != nil {
				return nil, abandoned{err}
			}
			return v, err
		})
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case res := <-ch:
			var a abandoned
			if !errors.As(res.Err, &a) {
				return res.Val, res.Err
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if attempt == maxRetries {
				return nil, a.err
			}
		}
	}
}

// abandoned is the error of a shared call whose caller gave up.
type abandoned struct{ err error }

func (a abandoned) Error() string { return a.err.Error() }
func (a abandoned) Unwrap() error { return a.err }
