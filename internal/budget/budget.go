// Package budget bounds each principal's share of a shared, costly
// resource — at keybroker's central tier, calls to the roots of trust — with
// a token bucket per principal.
//
// # Why
//
// A cloud KMS quota or an HSM's throughput is shared by every caller: one
// client sending batches of requests that each need a backend call would
// otherwise drain it for everyone. Each principal gets Rate calls a second
// on average and Burst at once; a call beyond that is refused before the
// backend is called.
//
// # Bounds
//
// At most MaxPrincipals buckets are kept; when a new principal comes and
// the table is full, the bucket used least recently is dropped (that
// principal starts afresh with a full bucket next time). Principals are
// certificate identities, so cycling through many to reset one's own
// bucket needs many certificates.
//
// # Concurrency
//
// A Budget is safe for concurrent use; Take holds one mutex for a map
// lookup and a token-bucket update.
package budget

import (
	"container/list"
	"errors"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults.
const (
	DefaultRate          = 500
	DefaultBurst         = 1000
	DefaultMaxPrincipals = 10_000
	// DefaultEdgeRate and DefaultEdgeBurst are an edge's: see
	// config.BackendBudget.
	DefaultEdgeRate  = 20_000
	DefaultEdgeBurst = 20_000
)

// Config assembles a Budget.
type Config struct {
	// Rate is the calls a second each principal may make on average.
	// Required; above 0.
	Rate float64
	// Burst is the calls a principal may make at once. Required; at
	// least 1.
	Burst int
	// MaxPrincipals bounds the buckets kept (0: DefaultMaxPrincipals).
	MaxPrincipals int
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Budget holds a token bucket per principal.
type Budget struct {
	limit rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu sync.Mutex
	m  map[string]*list.Element // principal → element of lru holding *bucket
	// lru orders the buckets, most recently used first.
	lru *list.List
}

type bucket struct {
	principal string
	lim       *rate.Limiter
}

// New builds a Budget.
func New(c Config) (*Budget, error) {
	if !(c.Rate > 0) || c.Burst < 1 {
		return nil, errors.New("budget: rate must be above 0 and burst at least 1")
	}
	if c.MaxPrincipals <= 0 {
		c.MaxPrincipals = DefaultMaxPrincipals
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &Budget{limit: rate.Limit(c.Rate), burst: c.Burst, max: c.MaxPrincipals, now: c.Now,
		m: map[string]*list.Element{}, lru: list.New()}, nil
}

// Take charges principal one call. It reports false, charging nothing,
// when the principal's bucket is empty.
func (b *Budget) Take(principal string) bool {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	el, ok := b.m[principal]
	if ok {
		b.lru.MoveToFront(el)
	} else {
		if b.lru.Len() >= b.max {
			old := b.lru.Back()
			b.lru.Remove(old)
			delete(b.m, old.Value.(*bucket).principal)
		}
		el = b.lru.PushFront(&bucket{principal: principal, lim: rate.NewLimiter(b.limit, b.burst)})
		b.m[principal] = el
	}
	return el.Value.(*bucket).lim.AllowN(now, 1)
}

// Tracked is the number of principals whose buckets are kept.
func (b *Budget) Tracked() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lru.Len()
}
