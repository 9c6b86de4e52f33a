// Package flight coalesces concurrent calls for the same thing into one
// (singleflight) while every caller keeps its own deadline: the data-key
// caches, the central material cache and the edge's material fetches use
// it, so N concurrent misses cost one backend call or one fetch.
//
// A shared call's failure is everyone's, with two exceptions that concern
// only the caller the call ran for: that caller giving up (its ctx ended),
// and a refusal the callee marks with Personal (the caller's own budget is
// spent). Then a caller that joined the call runs it again under its own
// ctx instead of inheriting the other's failure.
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
// short answers a status, which wraps no context error. An error marked
// with Personal is returned to the caller the call ran under alone; the
// others run the call again under their own ctx, as when it gave up.
func Do(ctx context.Context, g *singleflight.Group, key string, fn func(context.Context) (any, error)) (any, error) {
	for attempt := 0; ; attempt++ {
		// led is set when this caller's fn is the shared call; the
		// channel receive below orders its write before the read.
		led := false
		ch := g.DoChan(key, func() (any, error) {
			led = true
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
			var p personal
			switch {
			case errors.As(res.Err, &a):
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if attempt == maxRetries {
					return nil, a.err
				}
			case errors.As(res.Err, &p):
				if led {
					return nil, res.Err
				}
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if attempt == maxRetries {
					return nil, res.Err
				}
			default:
				return res.Val, res.Err
			}
		}
	}
}

// Personal marks err as concerning only the caller a call ran for — a
// refusal of that caller, not a failure of the thing called — so that Do
// does not hand it to the callers that joined the call. The mark survives
// wrapping with %w, so a shared call nested in another is retried by the
// outer call's other callers too. errors.Is and errors.As see through it.
func Personal(err error) error {
	if err == nil {
		return nil
	}
	return personal{err}
}

// personal is an error marked by Personal.
type personal struct{ err error }

func (p personal) Error() string { return p.err.Error() }
func (p personal) Unwrap() error { return p.err }

// abandoned is the error of a shared call whose caller gave up.
type abandoned struct{ err error }

func (a abandoned) Error() string { return a.err.Error() }
func (a abandoned) Unwrap() error { return a.err }
