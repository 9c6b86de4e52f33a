package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

func openTest(t *testing.T, history uint64) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := Open(path, history)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestCompareAndSwap(t *testing.T) {
	ctx := t.Context()
	s, _ := openTest(t, 0)
	r1, err := s.Put(ctx, "keys", "payments", []byte("v1"), 0)
	if err != nil || r1 != 1 {
		t.Fatalf("create = %d, %v; want revision 1", r1, err)
	}
	if _, err := s.Put(ctx, "keys", "payments", []byte("again"), 0); !errors.Is(err, ErrConflict) {
		t.Errorf("second create: err = %v, want ErrConflict", err)
	}
	if _, err := s.Put(ctx, "keys", "payments", []byte("stale"), 7); !errors.Is(err, ErrConflict) {
		t.Errorf("update at the wrong revision: err = %v, want ErrConflict", err)
	}
	r2, err := s.Put(ctx, "keys", "payments", []byte("v2"), r1)
	if err != nil || r2 != 2 {
		t.Fatalf("update = %d, %v", r2, err)
	}
	o, err := s.Get(ctx, "keys", "payments")
	if err != nil || string(o.Value) != "v2" || o.Revision != 2 {
		t.Errorf("Get = %+v, %v; want v2 at 2", o, err)
	}
	if _, err := s.Get(ctx, "keys", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(missing) err = %v", err)
	}
	if _, err := s.Get(ctx, "nodes", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(missing kind) err = %v", err)
	}
	if _, err := s.Delete(ctx, "keys", "payments", r1); !errors.Is(err, ErrConflict) {
		t.Errorf("Delete at the wrong revision: err = %v", err)
	}
	if r, err := s.Delete(ctx, "keys", "payments", r2); err != nil || r != 3 {
		t.Errorf("Delete = %d, %v", r, err)
	}
	if _, err := s.Delete(ctx, "keys", "payments", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete(missing) err = %v", err)
	}
	if s.Revision() != 3 {
		t.Errorf("Revision() = %d, want 3 (failed writes must not advance it)", s.Revision())
	}
}

func TestPersistence(t *testing.T) {
	ctx := t.Context()
	s, path := openTest(t, 0)
	for i := range 5 {
		if _, err := s.Put(ctx, "keys", fmt.Sprintf("k%d", i), []byte{byte(i)}, 0); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s2, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	objs, rev, err := s2.List(ctx, "keys")
	if err != nil || len(objs) != 5 || rev != 5 {
		t.Fatalf("List after reopen = %d objects at %d, %v; want 5 at 5", len(objs), rev, err)
	}
	if r, err := s2.Put(ctx, "keys", "k5", nil, 0); err != nil || r != 6 {
		t.Errorf("Put after reopen = %d, %v; want revision 6", r, err)
	}
	// A watcher resumes from a revision committed before the restart.
	w, err := s2.Watch(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint64{4, 5, 6} {
		if ev := <-w.C(); ev.Revision != want {
			t.Errorf("event revision = %d, want %d", ev.Revision, want)
		}
	}
}

func TestWatchBacklogThenLive(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s, _ := openTest(t, 0)
	s.Put(ctx, "keys", "a", []byte("1"), 0)
	s.Put(ctx, "keys", "b", []byte("1"), 0)
	w, err := s.Watch(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		rev := uint64(2)
		for i := range 100 {
			var err error
			if rev, err = s.Put(ctx, "keys", "b", []byte{byte(i)}, rev); err != nil {
				t.Error(err)
				return
			}
		}
		s.Delete(ctx, "keys", "a", 1)
	})
	var got []Event
	for ev := range w.C() {
		got = append(got, ev)
		if len(got) == 102 {
			break
		}
	}
	wg.Wait()
	for i, ev := range got {
		if ev.Revision != uint64(i+2) {
			t.Fatalf("event %d has revision %d, want %d (order or gap)", i, ev.Revision, i+2)
		}
	}
	if last := got[len(got)-1]; last.Type != Delete || last.Object.ID != "a" {
		t.Errorf("last event = %+v, want delete of a", last)
	}
	if got[0].Object.ID != "b" || string(got[0].Object.Value) != "1" {
		t.Errorf("first event = %+v, want put of b", got[0])
	}
}

func TestWatchCompacted(t *testing.T) {
	ctx := t.Context()
	s, _ := openTest(t, 10)
	rev := uint64(0)
	for i := range 30 {
		var err error
		if rev, err = s.Put(ctx, "keys", "k", []byte{byte(i)}, rev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Watch(ctx, 2); !errors.Is(err, ErrCompacted) {
		t.Errorf("Watch(2) after compaction: err = %v, want ErrCompacted", err)
	}
	w, err := s.Watch(ctx, 25)
	if err != nil {
		t.Fatalf("Watch(25) = %v", err)
	}
	if ev := <-w.C(); ev.Revision != 26 {
		t.Errorf("first event = %d, want 26", ev.Revision)
	}
	if _, err := s.Watch(ctx, 31); err == nil {
		t.Error("Watch from a future revision succeeded")
	}
}

func TestSlowWatcherIsCut(t *testing.T) {
	ctx := t.Context()
	s, _ := openTest(t, 0)
	w, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads: the channel buffer (1024) and the queue (10000) fill.
	rev := uint64(0)
	for i := range maxQueued + 2000 {
		if rev, err = s.Put(ctx, "keys", "k", []byte{byte(i)}, rev); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range w.C() {
		n++
	}
	if !errors.Is(w.Err(), ErrSlowWatcher) {
		t.Errorf("Err() = %v, want ErrSlowWatcher", w.Err())
	}
	if n == 0 || n >= maxQueued+2000 {
		t.Errorf("delivered %d events before the cut", n)
	}
}

func TestCloseEndsWatchers(t *testing.T) {
	s, _ := openTest(t, 0)
	w, err := s.Watch(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for range w.C() {
	}
	if !errors.Is(w.Err(), ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", w.Err())
	}
	if _, err := s.Put(t.Context(), "keys", "x", nil, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: %v", err)
	}
}

func TestConcurrentCAS(t *testing.T) {
	ctx := t.Context()
	s, _ := openTest(t, 0)
	s.Put(ctx, "counters", "c", []byte{0}, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 8 {
		wg.Go(func() {
			for range 25 {
				for {
					o, err := s.Get(ctx, "counters", "c")
					if err != nil {
						t.Error(err)
						return
					}
					if _, err := s.Put(ctx, "counters", "c", []byte{o.Value[0] + 1}, o.Revision); err == nil {
						mu.Lock()
						wins++
						mu.Unlock()
						break
					} else if !errors.Is(err, ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	o, _ := s.Get(ctx, "counters", "c")
	if o.Value[0] != 200 || wins != 200 {
		t.Errorf("counter = %d after %d wins, want 200: a lost update", o.Value[0], wins)
	}
}

func BenchmarkPut(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "r.db"), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rev := uint64(0)
	for b.Loop() {
		if rev, err = s.Put(b.Context(), "keys", "k", []byte("value"), rev); err != nil {
			b.Fatal(err)
		}
	}
}
