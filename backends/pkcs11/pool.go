package pkcs11

import (
	"context"
	"sync"
	"sync/atomic"
)

// pool bounds and recycles a backend's sessions.
//
// tokens is a semaphore: a caller holds one token for as long as it holds a
// session, so at most cap(tokens) sessions exist. Waiting for a token is the
// only blocking step and honours the caller's context. Idle sessions are
// kept LIFO, so a lightly loaded backend keeps using the same few sessions.
type pool struct {
	tokens chan struct{}
	done   chan struct{} // closed by close: waiters give up
	open   func() (*session, error)
	drop   func(*session) // closes a session we own (not dead)
	gauges poolGauges

	mu     sync.Mutex
	idle   []*session
	closed bool

	nOpen, nInUse, nWaiting atomic.Int64
}

// poolGauges receives the pool's levels; the zero value records nothing.
type poolGauges struct {
	open, inUse, waiting func(delta float64)
}

func newPool(max int, open func() (*session, error), drop func(*session), g poolGauges) *pool {
	nop := func(float64) {}
	if g.open == nil {
		g.open, g.inUse, g.waiting = nop, nop, nop
	}
	return &pool{
		tokens: make(chan struct{}, max),
		done:   make(chan struct{}),
		open:   open,
		drop:   drop,
		gauges: g,
	}
}

// get returns a session, waiting for one if max are in use. It fails with
// ctx.Err() when the context ends first and errClosed after close.
func (p *pool) get(ctx context.Context) (*session, error) {
	select {
	case p.tokens <- struct{}{}:
	default:
		p.nWaiting.Add(1)
		p.gauges.waiting(1)
		select {
		case p.tokens <- struct{}{}:
		case <-ctx.Done():
			p.nWaiting.Add(-1)
			p.gauges.waiting(-1)
			return nil, ctx.Err()
		case <-p.done:
			p.nWaiting.Add(-1)
			p.gauges.waiting(-1)
			return nil, errClosed
		}
		p.nWaiting.Add(-1)
		p.gauges.waiting(-1)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.tokens
		return nil, errClosed
	}
	var s *session
	for n := len(p.idle); n > 0 && s == nil; n = len(p.idle) {
		s, p.idle = p.idle[n-1], p.idle[:n-1]
		if s.dead.Load() {
			p.nOpen.Add(-1)
			p.gauges.open(-1)
			s = nil
		}
	}
	p.mu.Unlock()
	if s == nil {
		var err error
		if s, err = p.open(); err != nil {
			<-p.tokens
			return nil, err
		}
		p.nOpen.Add(1)
		p.gauges.open(1)
	}
	p.nInUse.Add(1)
	p.gauges.inUse(1)
	return s, nil
}

// put returns a session. Dead sessions are forgotten and poisoned ones
// closed; after close every session is closed.
func (p *pool) put(s *session) {
	p.nInUse.Add(-1)
	p.gauges.inUse(-1)
	p.mu.Lock()
	keep := !p.closed && !s.dead.Load() && !s.poisoned
	if keep {
		p.idle = append(p.idle, s)
	}
	p.mu.Unlock()
	if !keep {
		if !s.dead.Load() {
			p.drop(s)
		}
		p.nOpen.Add(-1)
		p.gauges.open(-1)
	}
	<-p.tokens
}

// close stops the pool: waiters fail, sessions in use are closed when
// returned, and close returns once every session is back and closed.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	// Wait for the holders: each put frees a token.
	for range cap(p.tokens) {
		p.tokens <- struct{}{}
	}
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, s := range idle {
		if !s.dead.Load() {
			p.drop(s)
		}
		p.nOpen.Add(-1)
		p.gauges.open(-1)
	}
}
