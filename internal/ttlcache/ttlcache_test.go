package ttlcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/keybroker/keybroker/internal/flight"
)

// clock is an injected clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// eviction is one OnEvict call.
type eviction struct {
	k string
	v int
	r Reason
}

// recorder records OnEvict calls.
type recorder struct {
	mu  sync.Mutex
	got []eviction
}

func (r *recorder) onEvict(k string, v *int, why Reason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, eviction{k, *v, why})
}

func (r *recorder) take() []eviction {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got
	r.got = nil
	return got
}

func newTest(t *testing.T, capacity int) (*Cache[string, *int], *clock, *recorder) {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	rec := &recorder{}
	return New(Config[string, *int]{Capacity: capacity, TTL: time.Minute, Now: clk.now, OnEvict: rec.onEvict}), clk, rec
}

func value(n int) func(context.Context) (*int, error) {
	return func(context.Context) (*int, error) { return &n, nil }
}

func load(t *testing.T, c *Cache[string, *int], k string, n int) int {
	t.Helper()
	v, err := c.GetOrLoad(t.Context(), k, value(n))
	if err != nil {
		t.Fatalf("GetOrLoad(%q) = %v", k, err)
	}
	return *v
}

func TestExpiry(t *testing.T) {
	c, clk, rec := newTest(t, 10)
	load(t, c, "a", 1)
	clk.add(time.Minute - time.Nanosecond)
	if v, ok := c.Get("a"); !ok || *v != 1 {
		t.Fatalf("Get(a) just before the TTL = %v, %v; want 1, true", v, ok)
	}
	clk.add(time.Nanosecond)
	if _, ok := c.Get("a"); ok {
		t.Fatal("Get(a) at the TTL found the entry")
	}
	if got, want := rec.take(), []eviction{{"a", 1, Expired}}; !slices.Equal(got, want) {
		t.Errorf("OnEvict calls = %v, want %v", got, want)
	}
	if n := c.Len(); n != 0 {
		t.Errorf("Len = %d after expiry, want 0", n)
	}
	if got := load(t, c, "a", 2); got != 2 {
		t.Errorf("GetOrLoad after expiry = %d, want a fresh load (2)", got)
	}
	s := c.Stats()
	if s.Hits != 1 || s.Misses != 3 || s.Evictions() != 1 || s.Evictions(Expired) != 1 {
		t.Errorf("Stats = %+v, want 1 hit, 3 misses, 1 expiry", s)
	}
}

// TestMonotonicExpiry: with no clock, expiry reads the monotonic clock.
func TestMonotonicExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := New(Config[string, int]{Capacity: 1, TTL: time.Minute})
		if _, err := c.GetOrLoad(t.Context(), "a", func(context.Context) (int, error) { return 1, nil }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute - time.Nanosecond)
		if _, ok := c.Get("a"); !ok {
			t.Fatal("entry gone before its TTL")
		}
		time.Sleep(time.Nanosecond)
		if _, ok := c.Get("a"); ok {
			t.Fatal("entry alive at its TTL")
		}
	})
}

func TestLRUOrderAndCapacity(t *testing.T) {
	c, _, rec := newTest(t, 2)
	load(t, c, "a", 1)
	load(t, c, "b", 2)
	if _, ok := c.Get("a"); !ok { // a is now the most recently used
		t.Fatal("a missing")
	}
	load(t, c, "c", 3) // pushes out b
	if got, want := rec.take(), []eviction{{"b", 2, Capacity}}; !slices.Equal(got, want) {
		t.Errorf("OnEvict calls = %v, want %v", got, want)
	}
	for k, want := range map[string]bool{"a": true, "b": false, "c": true} {
		if _, ok := c.Get(k); ok != want {
			t.Errorf("Get(%q) found = %v, want %v", k, ok, want)
		}
	}
	if n := c.Len(); n != 2 {
		t.Errorf("Len = %d, want the capacity 2", n)
	}
	// Capacity below 1 means 1.
	one := New(Config[string, int]{Capacity: 0, TTL: time.Minute})
	for i := range 3 {
		one.GetOrLoad(t.Context(), fmt.Sprint(i), func(context.Context) (int, error) { return i, nil })
	}
	if n := one.Len(); n != 1 {
		t.Errorf("Len of a zero-capacity cache = %d, want 1", n)
	}
}

func TestPutReplaces(t *testing.T) {
	c, _, rec := newTest(t, 10)
	one, two := 1, 2
	c.Put("a", &one)
	c.Put("a", &two)
	if got, want := rec.take(), []eviction{{"a", 1, Replaced}}; !slices.Equal(got, want) {
		t.Errorf("OnEvict calls = %v, want %v", got, want)
	}
	if v, ok := c.Get("a"); !ok || *v != 2 || c.Len() != 1 {
		t.Errorf("Get(a) = %v, %v with %d entries; want 2, one entry", v, ok, c.Len())
	}
}

func TestForgetAndPurge(t *testing.T) {
	c, _, rec := newTest(t, 10)
	for i, k := range []string{"x/1", "x/2", "y/1", "z/1"} {
		load(t, c, k, i)
	}
	c.Forget("z/1")
	c.Forget("absent")
	c.ForgetIf(func(k string, _ *int) bool { return k[0] == 'x' })
	if got, want := rec.take(), []eviction{{"z/1", 3, Forgotten}, {"x/2", 1, Forgotten}, {"x/1", 0, Forgotten}}; !slices.Equal(got, want) {
		t.Errorf("OnEvict calls = %v, want %v", got, want)
	}
	if _, ok := c.Get("y/1"); !ok {
		t.Error("ForgetIf dropped an entry it did not match")
	}
	c.Purge()
	if got, want := rec.take(), []eviction{{"y/1", 2, Purged}}; !slices.Equal(got, want) {
		t.Errorf("OnEvict calls = %v, want %v", got, want)
	}
	c.Purge()
	if got := rec.take(); len(got) != 0 {
		t.Errorf("a second Purge evicted %v", got)
	}
	// The cache works after Purge.
	if load(t, c, "y/1", 9) != 9 || c.Len() != 1 {
		t.Error("nothing cached after Purge")
	}
}

// TestOnEvictOncePerRemoval: every value stored leaves through OnEvict
// exactly once, whatever removes it; after Close nothing is kept and
// OnEvict is never called again.
func TestOnEvictOncePerRemoval(t *testing.T) {
	clk := &clock{t: time.Unix(0, 0)}
	var mu sync.Mutex
	evicted := map[*int]int{}
	c := New(Config[string, *int]{Capacity: 4, TTL: time.Minute, Now: clk.now, OnEvict: func(_ string, v *int, _ Reason) {
		mu.Lock()
		evicted[v]++
		mu.Unlock()
	}})
	var stored []*int
	var smu sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := fmt.Sprint((g*7 + i) % 11)
				c.GetOrLoad(t.Context(), k, func(context.Context) (*int, error) {
					v := new(int)
					smu.Lock()
					stored = append(stored, v)
					smu.Unlock()
					return v, nil
				})
				switch i % 50 {
				case 10:
					c.Forget(k)
				case 20:
					c.ForgetIf(func(k string, _ *int) bool { return len(k) == 2 })
				case 30:
					clk.add(time.Minute)
				case 40:
					c.Purge()
				}
			}
		})
	}
	wg.Wait()
	c.Close()
	mu.Lock()
	total := 0
	for v, n := range evicted {
		if n != 1 {
			t.Errorf("value %p evicted %d times, want once", v, n)
		}
		total += n
	}
	mu.Unlock()
	if s := c.Stats(); s.Evictions() != uint64(total) {
		t.Errorf("Stats count %d evictions, OnEvict saw %d", s.Evictions(), total)
	}
	if total > len(stored) {
		t.Errorf("%d evictions of %d values loaded", total, len(stored))
	}
	// After Close: loads run for their callers, nothing is kept, OnEvict is
	// not called.
	before := total
	if got := load(t, c, "late", 7); got != 7 {
		t.Errorf("GetOrLoad after Close = %d, want 7", got)
	}
	if c.Put("late", new(int)) {
		t.Error("Put after Close kept its value")
	}
	c.Purge()
	c.Forget("late")
	mu.Lock()
	after := len(evicted)
	mu.Unlock()
	if c.Len() != 0 || after != before {
		t.Errorf("after Close: Len %d, %d more OnEvict calls; want 0, 0", c.Len(), after-before)
	}
}

func TestCoalescedLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _, _ := newTest(t, 10)
		var calls atomic.Int64
		release := make(chan struct{})
		var wg sync.WaitGroup
		got := make([]int, 50)
		for i := range got {
			wg.Go(func() {
				v, err := c.GetOrLoad(t.Context(), "k", func(context.Context) (*int, error) {
					calls.Add(1)
					<-release
					n := 42
					return &n, nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				got[i] = *v
			})
		}
		synctest.Wait() // every caller is in the cache, one in load
		close(release)
		wg.Wait()
		if n := calls.Load(); n != 1 {
			t.Errorf("%d concurrent misses made %d loads, want 1", len(got), n)
		}
		for i, v := range got {
			if v != 42 {
				t.Errorf("caller %d got %d, want 42", i, v)
			}
		}
		if s := c.Stats(); s.Misses != uint64(len(got)) {
			t.Errorf("Misses = %d, want one per caller (%d)", s.Misses, len(got))
		}
	})
}

func TestLoadErrorNotCached(t *testing.T) {
	c, _, rec := newTest(t, 10)
	boom := errors.New("boom")
	calls := 0
	for range 2 {
		if _, err := c.GetOrLoad(t.Context(), "k", func(context.Context) (*int, error) { calls++; return nil, boom }); !errors.Is(err, boom) {
			t.Fatalf("GetOrLoad = %v, want boom", err)
		}
	}
	if calls != 2 || c.Len() != 0 || len(rec.take()) != 0 {
		t.Errorf("after two failed loads: %d calls, %d entries; want 2 calls, nothing cached", calls, c.Len())
	}
}

// TestPersonalErrorNotShared: a load refused for the caller it ran for
// (flight.Personal) is that caller's alone; a caller that joined loads
// again under its own ctx and gets its own result.
func TestPersonalErrorNotShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _, _ := newTest(t, 10)
		refused := errors.New("your budget is spent")
		type who struct{}
		release := make(chan struct{})
		ld := func(ctx context.Context) (*int, error) {
			<-release
			if ctx.Value(who{}) == "first" {
				return nil, fmt.Errorf("loading: %w", flight.Personal(refused))
			}
			n := 2
			return &n, nil
		}
		firstErr := make(chan error, 1)
		go func() {
			_, err := c.GetOrLoad(context.WithValue(t.Context(), who{}, "first"), "k", ld)
			firstErr <- err
		}()
		synctest.Wait()
		second := make(chan int, 1)
		go func() {
			v, err := c.GetOrLoad(context.WithValue(t.Context(), who{}, "second"), "k", ld)
			if err != nil {
				t.Errorf("second caller: %v, want its own result", err)
				second <- 0
				return
			}
			second <- *v
		}()
		synctest.Wait()
		close(release)
		if err := <-firstErr; !errors.Is(err, refused) {
			t.Errorf("first caller: %v, want its own refusal", err)
		}
		if v := <-second; v != 2 {
			t.Errorf("second caller = %d, want the result of its own load", v)
		}
	})
}

// TestForgetFencesLoadsInFlight: a value whose load began before Forget
// returned is handed to its caller but not kept, so no lookup after
// Forget sees it.
func TestForgetFencesLoadsInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			forget func(c *Cache[string, *int])
		}{
			{"Forget", func(c *Cache[string, *int]) { c.Forget("k") }},
			{"ForgetIf", func(c *Cache[string, *int]) { c.ForgetIf(func(string, *int) bool { return true }) }},
			{"Purge", func(c *Cache[string, *int]) { c.Purge() }},
		} {
			c, _, rec := newTest(t, 10)
			release := make(chan struct{})
			done := make(chan int, 1)
			go func() {
				v, err := c.GetOrLoad(t.Context(), "k", func(context.Context) (*int, error) {
					<-release
					n := 1
					return &n, nil
				})
				if err != nil {
					t.Error(err)
				}
				done <- *v
			}()
			synctest.Wait()
			tc.forget(c)
			close(release)
			if v := <-done; v != 1 {
				t.Errorf("%s: the loading caller got %d, want 1", tc.name, v)
			}
			if _, ok := c.Get("k"); ok {
				t.Errorf("%s: a value loaded across it was kept", tc.name)
			}
			if got := rec.take(); len(got) != 0 {
				t.Errorf("%s: OnEvict got %v for a value never kept", tc.name, got)
			}
		}
	})
}

// TestCopy: with Copy set, callers get copies made under the lock, and
// OnEvict may destroy the cached value without touching theirs.
func TestCopy(t *testing.T) {
	type secret struct{ b []byte }
	c := New(Config[string, *secret]{Capacity: 1, TTL: time.Minute,
		Copy:    func(s *secret) *secret { return &secret{b: slices.Clone(s.b)} },
		OnEvict: func(_ string, s *secret, _ Reason) { clear(s.b) },
	})
	var cached *secret
	got, err := c.GetOrLoad(t.Context(), "a", func(context.Context) (*secret, error) {
		cached = &secret{b: []byte("material")}
		return cached, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	hit, _ := c.Get("a")
	if got == cached || hit == cached || hit == got {
		t.Fatal("a caller got the cached value itself, not a copy")
	}
	c.Purge()
	if string(cached.b) == "material" {
		t.Error("OnEvict did not zero the cached value")
	}
	if string(got.b) != "material" || string(hit.b) != "material" {
		t.Errorf("callers' copies = %q, %q after eviction, want intact", got.b, hit.b)
	}
}

// TestViewKeysAreCopied: a key passed as a View of a buffer the caller
// then reuses is stored as a copy.
func TestViewKeysAreCopied(t *testing.T) {
	c, _, _ := newTest(t, 10)
	buf := []byte("key-1")
	if _, err := c.GetOrLoad(t.Context(), View[string](buf), value(1)); err != nil {
		t.Fatal(err)
	}
	copy(buf, "key-2")
	if _, ok := c.Get("key-1"); !ok {
		t.Error("the stored key changed with the caller's buffer")
	}
	if _, ok := c.Get(View[string](buf)); ok {
		t.Error("found key-2, never stored")
	}
}

// TestGetDoesNotAllocate: a hit, looked up with a View, allocates nothing.
func TestGetDoesNotAllocate(t *testing.T) {
	c := New(Config[string, *int]{Capacity: 10, TTL: time.Hour})
	c.GetOrLoad(t.Context(), "key", value(1))
	buf := []byte("key")
	if n := testing.AllocsPerRun(100, func() { c.Get(View[string](buf)) }); n != 0 {
		t.Errorf("Get allocates %v times per call, want 0", n)
	}
}

func BenchmarkGet(b *testing.B) {
	for _, clk := range []string{"monotonic", "injected"} {
		b.Run(clk, func(b *testing.B) {
			cfg := Config[string, *int]{Capacity: 1024, TTL: time.Hour}
			if clk == "injected" {
				cfg.Now = time.Now
			}
			c := New(cfg)
			keys := make([][]byte, 64)
			for i := range keys {
				keys[i] = fmt.Appendf(nil, "key-%d\x00\x00\x00\x01", i)
				c.GetOrLoad(b.Context(), string(keys[i]), value(i))
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, ok := c.Get(View[string](keys[i%len(keys)])); !ok {
					b.Fatal("miss")
				}
				i++
			}
		})
	}
}

// TestForgetGroup: with Config.Group, ForgetGroup drops exactly the
// group's entries (each through OnEvict as Forgotten) and leaves the
// others; entries pushed out by capacity or replaced leave their group
// too, so a later ForgetGroup does not meet them.
func TestForgetGroup(t *testing.T) {
	var forgotten []string
	c := New(Config[string, int]{Capacity: 5, TTL: time.Hour,
		Group: func(k string) string { return k[:1] },
		OnEvict: func(k string, _ int, r Reason) {
			if r == Forgotten {
				forgotten = append(forgotten, k)
			}
		}})
	for i, k := range []string{"a1", "b1", "a2", "c1", "a3"} {
		c.Put(k, i)
	}
	c.Put("a1", 10) // replaced: still one entry in group a
	c.Put("b2", 5)  // capacity: "b1", the least recently used, goes
	c.ForgetGroup("a")
	slices.Sort(forgotten)
	if want := []string{"a1", "a2", "a3"}; !slices.Equal(forgotten, want) {
		t.Errorf("forgotten %v, want %v", forgotten, want)
	}
	for _, k := range []string{"b2", "c1"} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("%s was dropped with group a", k)
		}
	}
	if c.Len() != 2 {
		t.Errorf("%d entries left, want 2", c.Len())
	}
	forgotten = nil
	c.ForgetGroup("b")
	if !slices.Equal(forgotten, []string{"b2"}) {
		t.Errorf("group b forgot %v, want [b2] (b1 left with capacity)", forgotten)
	}
	if len(c.groups) != 1 {
		t.Errorf("%d groups indexed, want 1 (c)", len(c.groups))
	}
}
