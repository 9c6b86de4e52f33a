package pkcs11

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/pkcs11"
)

func testPool(max int) (*pool, *atomic.Int64, *atomic.Int64) {
	var opened, dropped atomic.Int64
	p := newPool(max,
		func() (*session, error) { return &session{h: pkcs11.SessionHandle(opened.Add(1))}, nil },
		func(*session) { dropped.Add(1) },
		poolGauges{})
	return p, &opened, &dropped
}

func TestPoolBoundAndReuse(t *testing.T) {
	p, opened, _ := testPool(2)
	ctx := t.Context()
	a, err := p.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("two holders got the same session")
	}
	// The pool is exhausted: a waiter honours its context.
	cctx, cancel := context.WithCancel(ctx)
	got := make(chan error, 1)
	go func() { _, err := p.get(cctx); got <- err }()
	for p.nWaiting.Load() == 0 {
		// let the waiter queue up (it is runnable; no sleeping)
		runtime.Gosched()
	}
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Errorf("get with a cancelled context while exhausted = %v, want context.Canceled", err)
	}
	p.put(a)
	c, err := p.get(ctx)
	if err != nil || c != a {
		t.Errorf("get after put = %v, %v; want the returned session", c, err)
	}
	if n := opened.Load(); n != 2 {
		t.Errorf("opened %d sessions, want 2", n)
	}
	p.put(b)
	p.put(c)
}

func TestPoolDropsDeadAndPoisoned(t *testing.T) {
	p, opened, dropped := testPool(2)
	ctx := t.Context()
	a, _ := p.get(ctx)
	a.dead.Store(true)
	p.put(a) // dead: forgotten, not closed
	b, _ := p.get(ctx)
	b.poisoned = true
	p.put(b) // poisoned: closed
	if d := dropped.Load(); d != 1 {
		t.Errorf("closed %d sessions, want 1 (the poisoned one)", d)
	}
	c, _ := p.get(ctx)
	if c == a || c == b {
		t.Error("a dead or poisoned session was reused")
	}
	p.put(c)
	// An idle session killed by a sweep is skipped on get.
	c.dead.Store(true)
	d, _ := p.get(ctx)
	if d == c {
		t.Error("an idle session that died was handed out")
	}
	p.put(d)
	if n := opened.Load(); n != 4 {
		t.Errorf("opened %d sessions, want 4", n)
	}
	if got := p.nOpen.Load(); got != 1 {
		t.Errorf("nOpen = %d, want 1", got)
	}
}

func TestPoolClose(t *testing.T) {
	p, _, dropped := testPool(1)
	ctx := t.Context()
	held, _ := p.get(ctx)
	var wg sync.WaitGroup
	waiterErr := make(chan error, 1)
	wg.Go(func() { _, err := p.get(ctx); waiterErr <- err })
	for p.nWaiting.Load() == 0 {
		runtime.Gosched()
	}
	closed := make(chan struct{})
	go func() { p.close(); close(closed) }()
	if err := <-waiterErr; !errors.Is(err, errClosed) {
		t.Errorf("waiter during close = %v, want errClosed", err)
	}
	select {
	case <-closed:
		t.Fatal("close returned while a session was still held")
	default:
	}
	p.put(held)
	<-closed
	wg.Wait()
	if d := dropped.Load(); d != 1 {
		t.Errorf("closed %d sessions, want 1", d)
	}
	if _, err := p.get(ctx); !errors.Is(err, errClosed) {
		t.Errorf("get after close = %v, want errClosed", err)
	}
}
