package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/managed"
)

// TestKeyCacheClock: the cache never holds more than its capacity, keeps
// a key used since the hand last passed over one that was not, keeps the
// newer revision of a key, and forgets what it is told to.
func TestKeyCacheClock(t *testing.T) {
	c := newKeyCache(3)
	key := func(id string, rev uint64) *managed.Key { return &managed.Key{ID: id, Revision: rev} }
	for _, id := range []string{"a", "b", "c"} {
		c.put(key(id, 1))
	}
	c.get("a") // a is used: the hand spares it once
	c.put(key("d", 1))
	if c.len() != 3 || c.peek("a") == nil || c.peek("b") != nil || c.peek("d") == nil {
		t.Errorf("after d: a %v b %v c %v d %v, want a, c, d kept and b evicted", c.peek("a"), c.peek("b"), c.peek("c"), c.peek("d"))
	}
	c.put(key("a", 5))
	c.put(key("a", 4))
	if got := c.peek("a").Revision; got != 5 {
		t.Errorf("a at revision %d, want the newer 5", got)
	}
	c.drop("c")
	c.drop("nope")
	if c.len() != 2 || c.peek("c") != nil {
		t.Errorf("after drop(c): %d keys, c %v", c.len(), c.peek("c"))
	}
	for i := range 100 {
		c.put(key(fmt.Sprintf("k%d", i), 1))
		if c.len() > 3 {
			t.Fatalf("%d keys cached, capacity 3", c.len())
		}
	}
	for id, s := range c.slots {
		if c.ring[s.at] != s || s.key.ID != id {
			t.Errorf("slot %s at %d does not match the ring", id, s.at)
		}
	}
	c.clear()
	if c.len() != 0 || len(c.ring) != 0 {
		t.Errorf("after clear: %d keys, ring %d", c.len(), len(c.ring))
	}
}

// TestRegistryCacheIsBounded: however many keys are read, listed or
// written, the registry holds at most its cache size decoded, and serves
// every key right.
func TestRegistryCacheIsBounded(t *testing.T) {
	ctx := t.Context()
	r, _, _ := newRegistry(t)
	r.SetCacheSize(10)
	for i := range 60 {
		if _, err := r.Create(ctx, aesKey(fmt.Sprintf("k%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.Cached(); n > 10 {
		t.Errorf("%d keys cached after 60 creations, want at most 10", n)
	}
	for i := range 60 {
		id := fmt.Sprintf("k%02d", i)
		if k, err := r.Get(ctx, id); err != nil || k.ID != id {
			t.Fatalf("Get(%s) = %v, %v", id, k, err)
		}
	}
	r.SetCacheSize(10)
	if _, _, err := r.List(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := r.Page(ctx, "k09", 20)
	if err != nil || len(p.Keys) != 20 || p.Keys[0].ID != "k10" || !p.More {
		t.Fatalf("Page(after k09, 20) = %d keys from %v, more %v, %v; want 20 from k10 and more", len(p.Keys), p.Keys, p.More, err)
	}
	if n := r.Cached(); n != 0 {
		t.Errorf("%d keys cached by listings alone, want 0", n)
	}
}

// slowGet is a store whose Get of key "shared", once armed, reads the
// store and then waits to return until released: a load that read a key
// before a change the feed then reports.
type slowGet struct {
	store.Store
	armed   chan struct{} // closed by the Get that has read
	release chan struct{}
}

func (s *slowGet) Get(ctx context.Context, kind store.Kind, id string) (store.Object, error) {
	o, err := s.Store.Get(ctx, kind, id)
	if kind == KindKeys && id == "shared" && s.armed != nil {
		armed := s.armed
		s.armed = nil
		close(armed)
		<-s.release
	}
	return o, err
}

// TestLoadRacingTheFeedIsNotCached: a key not cached is read from the
// store; when another central changes it while that read is in flight,
// the feed (which does not decode keys it does not cache) fences the read,
// so its stale result is returned once but never cached, and the next Get
// serves the change.
func TestLoadRacingTheFeedIsNotCached(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r0, c, _ := newRegistry(t)
	slow := &slowGet{Store: r0.Store(), release: make(chan struct{})}
	r1 := NewRegistry(slow, c.Now)
	other := NewRegistry(r0.Store(), c.Now)
	k, err := other.Create(ctx, aesKey("shared"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { r1.Follow(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := r1.WaitFollowed(wctx, k.Revision); err != nil {
		t.Fatal(err)
	}
	armed := make(chan struct{})
	slow.armed = armed
	got := make(chan *managed.Key, 1)
	go func() { k, _ := r1.Get(ctx, "shared"); got <- k }()
	<-armed // r1's load has read the enabled key
	d, err := other.Update(ctx, "shared", k.Revision, Disable)
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.WaitFollowed(wctx, d.Revision); err != nil {
		t.Fatal(err)
	}
	close(slow.release)
	if first := <-got; first == nil || first.State != managed.StateEnabled {
		t.Fatalf("the racing Get = %v, want the key as it read it (enabled)", first)
	}
	if k, err := r1.Get(ctx, "shared"); err != nil || k.State != managed.StateDisabled {
		t.Errorf("Get after the feed reported the disable = %v, %v; want disabled (the racing read not cached)", k, err)
	}
}
