// Package tick runs a function at a fixed interval until a context ends:
// the loop each background task of a node (a sweep, a progress request,
// a publication) would otherwise write again.
package tick

import (
	"context"
	"time"
)

// Every calls fn every d until ctx ends; the first call is d after the
// start. A call that runs long delays the next (ticks are not queued).
func Every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
