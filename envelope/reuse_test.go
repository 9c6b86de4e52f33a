package envelope

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// epochClock is a clock that stands still while any caller holds it
// (hold/release) and moves only between, so that a test knows the time at
// which a Reuser checked a period: the time the caller read when it took
// hold.
type epochClock struct {
	mu sync.RWMutex
	ns atomic.Int64
}

func newEpochClock() *epochClock {
	c := &epochClock{}
	c.ns.Store(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *epochClock) Now() time.Time { return time.Unix(0, c.ns.Load()) }
func (c *epochClock) hold() time.Time {
	c.mu.RLock()
	return c.Now()
}
func (c *epochClock) release() { c.mu.RUnlock() }
func (c *epochClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ns.Add(int64(d))
}

// TestReuserConcurrentLimits runs many goroutines through one Reuser
// across data-key rollovers by message count, byte count and period, with
// the clock moving meanwhile, and checks every hand-out: no data key
// serves more than MaxMessages messages or MaxBytes bytes, nor any message
// at or after the end of its period, and a spent key is replaced promptly
// rather than refused forever.
func TestReuserConcurrentLimits(t *testing.T) {
	const (
		period   = time.Minute
		maxMsgs  = 37
		maxBytes = 5000
		workers  = 16
		perG     = 1500
	)
	clk := newEpochClock()
	r, err := NewReuser(ReusePolicy{Period: period, MaxMessages: maxMsgs, MaxBytes: maxBytes}, 8, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	type usage struct {
		born         time.Time
		msgs, bytes  int
		first, final time.Time
	}
	var mu sync.Mutex
	use := map[*DataKey]*usage{}
	create := func(context.Context) (*DataKey, error) {
		dk, err := GenerateDataKey(material(1), "k", 1)
		if err != nil {
			return nil, err
		}
		// The clock stands still during the Get that creates the key,
		// so this is the time the Reuser starts its period from.
		mu.Lock()
		use[dk] = &usage{born: clk.Now()}
		mu.Unlock()
		return dk, nil
	}
	var wg sync.WaitGroup
	var totalMsgs, totalBytes, elapsed atomic.Int64
	for g := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range perG {
				n := rng.IntN(300)
				now := clk.hold()
				dk, err := r.Get(t.Context(), "p", n, create)
				clk.release()
				if err != nil {
					t.Error(err)
					return
				}
				totalBytes.Add(int64(n))
				if totalMsgs.Add(1)%4 == 0 {
					// 0-15 s every 4 messages: periods end at every
					// phase of the counts, and often before them.
					d := time.Duration(rng.IntN(16)) * time.Second
					elapsed.Add(int64(d))
					clk.advance(d)
				}
				mu.Lock()
				u := use[dk]
				u.msgs++
				u.bytes += n
				if u.first.IsZero() || now.Before(u.first) {
					u.first = now
				}
				if now.After(u.final) {
					u.final = now
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var full, spent int
	for dk, u := range use {
		if u.msgs == 0 {
			continue
		}
		if u.msgs > maxMsgs || u.bytes > maxBytes {
			t.Errorf("data key %p sealed %d messages and %d bytes; limits %d and %d", dk, u.msgs, u.bytes, maxMsgs, maxBytes)
		}
		if !u.final.Before(u.born.Add(period)) {
			t.Errorf("data key %p born at %s sealed a message at %s, past its %s period", dk, u.born.Format(time.TimeOnly), u.final.Format(time.TimeOnly), period)
		}
		if u.first.Before(u.born) {
			t.Errorf("data key %p born at %s sealed a message at %s, before it was made", dk, u.born.Format(time.TimeOnly), u.first.Format(time.TimeOnly))
		}
		if u.msgs == maxMsgs {
			full++
		}
		if u.bytes > maxBytes-300 {
			spent++
		}
	}
	// Each key ends by its count, its bytes or its period; counting a
	// refused message conservatively may end one a little early, but
	// never makes many more keys than the limits call for.
	ideal := int(totalMsgs.Load())/maxMsgs + int(totalBytes.Load())/maxBytes + int(time.Duration(elapsed.Load())/period) + 1
	if created := int(r.Created()); created > 2*ideal {
		t.Errorf("%d data keys for %d messages, %d bytes and %s; want at most %d", created, totalMsgs.Load(), totalBytes.Load(), time.Duration(elapsed.Load()), 2*ideal)
	}
	if full == 0 || spent == 0 || len(use)-full-spent <= 0 {
		t.Errorf("of %d data keys %d reached the message limit and %d the byte limit: the test no longer crosses all three limits", len(use), full, spent)
	}
	t.Logf("%d messages, %d bytes over %s: %d data keys, %d ended at the message limit, %d near the byte limit", totalMsgs.Load(), totalBytes.Load(), time.Duration(elapsed.Load()), r.Created(), full, spent)
}

// TestReuserForgetConcurrent: once Forget has returned, no Get that starts
// hands out a data key that was in use before Forget was called, however
// many goroutines are taking keys from the lock-free table meanwhile.
func TestReuserForgetConcurrent(t *testing.T) {
	r, err := NewReuser(ReusePolicy{}, 16, nil)
	if err != nil {
		t.Fatal(err)
	}
	create := func(context.Context) (*DataKey, error) { return GenerateDataKey(material(1), "k", 1) }
	var phase atomic.Int32 // 0 before Forget, 1 during, 2 after
	var mu sync.Mutex
	before := map[*DataKey]bool{}
	var wg sync.WaitGroup
	var handed [3]atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			p := fmt.Sprintf("p%d", g%3)
			for after := 0; after < 2000; {
				p0 := phase.Load()
				if p0 == 2 {
					after++
				}
				dk, err := r.Get(t.Context(), p, 1, create)
				if err != nil {
					t.Error(err)
					return
				}
				p1 := phase.Load()
				handed[g%3].Add(1)
				mu.Lock()
				if p1 == 0 {
					before[dk] = true
				}
				if p0 == 2 && before[dk] {
					t.Errorf("partition %s: a Get that started after Forget handed out a forgotten data key", p)
				}
				mu.Unlock()
			}
		})
	}
	// Every partition has its data key before Forget.
	for handed[0].Load() < 1000 || handed[1].Load() < 1000 || handed[2].Load() < 1000 {
		time.Sleep(100 * time.Microsecond)
	}
	phase.Store(1)
	r.Forget(func(string) bool { return true })
	phase.Store(2)
	wg.Wait()
	if r.Created() < 6 {
		t.Errorf("created %d data keys, want at least 3 before Forget and 3 after", r.Created())
	}
}

// TestReuserManyPartitions: more partitions than the lock-free table has
// slots each keep their own data key, and an entry evicted or forgotten
// from the map is never served from the table.
func TestReuserManyPartitions(t *testing.T) {
	r, err := NewReuser(ReusePolicy{}, 1024, nil)
	if err != nil {
		t.Fatal(err)
	}
	create := func(id string) func(context.Context) (*DataKey, error) {
		return func(context.Context) (*DataKey, error) { return GenerateDataKey(material(1), id, 1) }
	}
	const parts = 5 * hotSlots
	first := map[string]*DataKey{}
	for round := range 3 {
		for i := range parts {
			p := fmt.Sprintf("p%d", i)
			dk, err := r.Get(t.Context(), p, 1, create(p))
			if err != nil {
				t.Fatal(err)
			}
			if dk.KeyID != p {
				t.Fatalf("partition %s got the data key of %s", p, dk.KeyID)
			}
			if round == 0 {
				first[p] = dk
			} else if dk != first[p] {
				t.Fatalf("round %d: partition %s got a new data key", round, p)
			}
		}
	}
	if r.Created() != parts {
		t.Errorf("created %d data keys for %d partitions", r.Created(), parts)
	}
	r.Forget(func(p string) bool { return p == "p7" })
	if dk := r.Take("p7", 1); dk != nil {
		t.Error("Take handed out a forgotten data key")
	}
	if dk := r.Take("p8", 1); dk != first["p8"] {
		t.Error("Take lost a data key that was not forgotten")
	}

	// Room for two: the third partition evicts one of the first two,
	// which must then be made anew, not served from the table.
	small, err := NewReuser(ReusePolicy{}, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "b", "c"} {
		if _, err := small.Get(t.Context(), p, 1, create(p)); err != nil {
			t.Fatal(err)
		}
	}
	gone := 0
	for _, p := range []string{"a", "b"} {
		if small.Take(p, 1) == nil {
			gone++
		}
	}
	if gone != 1 {
		t.Errorf("after a third partition in a Reuser of two, %d of the first two are still served, want 1", 2-gone)
	}
}

// TestReuserMonotonicPeriod: with the default clock the period is checked
// against the monotonic clock; an entry past its period is not handed out.
func TestReuserMonotonicPeriod(t *testing.T) {
	r, err := NewReuser(ReusePolicy{MaxMessages: 2}, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.mono {
		t.Fatal("a Reuser on the default clock does not use the monotonic check")
	}
	create := func(context.Context) (*DataKey, error) { return GenerateDataKey(material(1), "k", 1) }
	a, err := r.Get(t.Context(), "p", 1, create)
	if err != nil {
		t.Fatal(err)
	}
	if r.Take("p", 1) != a {
		t.Fatal("the data key was not reused within its limits")
	}
	if r.Take("p", 1) != nil {
		t.Fatal("Take handed out a third message under MaxMessages 2")
	}
	b, err := r.Get(t.Context(), "p", 1, create)
	if err != nil || b == a {
		t.Fatalf("Get after the count ran out = same key %v, %v", b == a, err)
	}
	// End b's period by hand: expires is read from time.Now, so it has a
	// monotonic reading, as the check needs.
	r.mu.Lock()
	r.entries["p"].expires = time.Now().Add(-time.Nanosecond)
	r.mu.Unlock()
	if r.Take("p", 1) != nil {
		t.Fatal("Take handed out a data key past its period")
	}
	if c, err := r.Get(t.Context(), "p", 1, create); err != nil || c == b {
		t.Fatalf("Get after the period = same key %v, %v", c == b, err)
	}
	if r.Created() != 3 {
		t.Errorf("created %d data keys, want 3", r.Created())
	}
}
