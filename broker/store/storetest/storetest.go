// Package storetest is the conformance suite every store.Store passes:
// compare-and-swap, persistence across a reopen, paged reads (ListPage in
// id order after a given id; Scan at one revision while the kind
// changes), the change feed (backlog then live, resumed from a revision,
// cut when its reader falls behind, ended by Close or its context),
// concurrent writers losing no update, the names keys really have, and the
// bound on a value.
//
// Revisions are checked relative to the first write of a test, since an
// etcd store's revisions are etcd's; within one test a single writer's
// commits are consecutive in every store.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// Opener opens the same store each time it is called (the first call
// creates it): a store a test closes and reopens must hold what it held.
type Opener func() (store.Store, error)

// Run runs the suite; fresh returns an Opener for a new, empty store.
func Run(t *testing.T, fresh func(t *testing.T) Opener) {
	open := func(t *testing.T) (store.Store, Opener) {
		t.Helper()
		o := fresh(t)
		s, err := o()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, o
	}
	t.Run("CompareAndSwap", func(t *testing.T) { s, _ := open(t); testCompareAndSwap(t, s) })
	t.Run("Persistence", func(t *testing.T) { s, o := open(t); testPersistence(t, s, o) })
	t.Run("WatchBacklogThenLive", func(t *testing.T) { s, _ := open(t); testWatchBacklogThenLive(t, s) })
	t.Run("WatchBounds", func(t *testing.T) { s, _ := open(t); testWatchBounds(t, s) })
	t.Run("SlowWatcherIsCut", func(t *testing.T) { s, _ := open(t); testSlowWatcherIsCut(t, s) })
	t.Run("CloseEndsWatchers", func(t *testing.T) { s, _ := open(t); testCloseEndsWatchers(t, s) })
	t.Run("ConcurrentCAS", func(t *testing.T) { s, _ := open(t); testConcurrentCAS(t, s) })
	t.Run("Names", func(t *testing.T) { s, _ := open(t); testNames(t, s) })
	t.Run("BoundedValue", func(t *testing.T) { s, _ := open(t); testBoundedValue(t, s) })
	t.Run("ListPage", func(t *testing.T) { s, _ := open(t); testListPage(t, s) })
	t.Run("ScanOneRevision", func(t *testing.T) { s, _ := open(t); testScanOneRevision(t, s) })
}

// putN creates objects id-000 .. id-(n-1) of kind, in a shuffled order, and
// returns the ids in id order.
func putN(t *testing.T, s store.Store, kind store.Kind, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("id-%03d", i)
	}
	for i := range n {
		j := (i * 7) % n // a permutation when n and 7 are coprime
		if _, err := s.Put(t.Context(), kind, ids[j], []byte("v-"+ids[j]), 0); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func pageIDs(p store.Page) []string {
	var ids []string
	for _, o := range p.Objects {
		ids = append(ids, o.ID)
	}
	return ids
}

func testListPage(t *testing.T, s store.Store) {
	ctx := t.Context()
	ids := putN(t, s, "keys", 20)
	if _, err := s.Put(ctx, "nodes", "zz", []byte("n"), 0); err != nil { // another kind: never listed
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		after    string
		limit    int
		want     []string
		wantMore bool
	}{
		{"first page", "", 5, ids[:5], true},
		{"after an id", ids[4], 5, ids[5:10], true},
		{"after an absent id", "id-0045", 3, ids[5:8], true},
		{"last page exactly", ids[14], 5, ids[15:], false},
		{"last page short", ids[16], 5, ids[17:], false},
		{"all at once", "", 20, ids, false},
		{"more than there is", "", 100, ids, false},
		{"after the last", ids[19], 5, nil, false},
		{"before the first", "a", 2, ids[:2], true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := s.ListPage(ctx, "keys", tc.after, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := pageIDs(p); fmt.Sprint(got) != fmt.Sprint(tc.want) || p.More != tc.wantMore {
				t.Errorf("ListPage(%q, %d) = %v more=%v, want %v more=%v", tc.after, tc.limit, got, p.More, tc.want, tc.wantMore)
			}
			if p.Revision != s.Revision() {
				t.Errorf("ListPage revision = %d, want the store's %d", p.Revision, s.Revision())
			}
			for _, o := range p.Objects {
				if o.Kind != "keys" || string(o.Value) != "v-"+o.ID || o.Revision == 0 {
					t.Errorf("object %+v: want kind keys, value v-%s and a revision", o, o.ID)
				}
			}
		})
	}
	// Paging from the last id through the whole kind gives each object once.
	var got []string
	for after := ""; ; {
		p, err := s.ListPage(ctx, "keys", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pageIDs(p)...)
		if !p.More {
			break
		}
		after = p.Objects[len(p.Objects)-1].ID
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Errorf("paged through %v, want %v", got, ids)
	}
	if p, err := s.ListPage(ctx, "policies", "", 10); err != nil || len(p.Objects) != 0 || p.More {
		t.Errorf("ListPage(empty kind) = %+v, %v; want no objects", p, err)
	}
	for _, limit := range []int{0, -1, store.MaxPage + 1} {
		if _, err := s.ListPage(ctx, "keys", "", limit); err == nil {
			t.Errorf("ListPage(limit %d) = nil error, want one", limit)
		}
	}
	if _, err := s.ListPage(ctx, "a/b", "", 1); err == nil {
		t.Error("ListPage(kind with a slash) = nil error, want one")
	}
}

// testScanOneRevision changes the kind while a scan is between pages: the
// scan's later pages still show the kind as it was at its first revision.
func testScanOneRevision(t *testing.T, s store.Store) {
	ctx := t.Context()
	ids := putN(t, s, "keys", 10)
	first, err := s.Get(ctx, "keys", ids[9])
	if err != nil {
		t.Fatal(err)
	}
	start := s.Revision()
	var got []string
	var revs []uint64
	var mores []bool
	changed := false
	err = s.Scan(ctx, "keys", 4, func(p store.Page) error {
		got = append(got, pageIDs(p)...)
		revs = append(revs, p.Revision)
		mores = append(mores, p.More)
		for _, o := range p.Objects {
			if o.ID == ids[9] && (string(o.Value) != "v-"+ids[9] || o.Revision != first.Revision) {
				t.Errorf("scan shows %s as %q at %d, want it as it was at the scan's revision", o.ID, o.Value, o.Revision)
			}
		}
		if changed {
			return nil
		}
		changed = true
		// Another writer, while the scanner holds the first page.
		done := make(chan error, 1)
		go func() {
			_, err := s.Put(ctx, "keys", "id-0055", []byte("new"), 0)
			if err == nil {
				var o store.Object
				if o, err = s.Get(ctx, "keys", ids[7]); err == nil {
					_, err = s.Delete(ctx, "keys", ids[7], o.Revision)
				}
			}
			if err == nil {
				_, err = s.Put(ctx, "keys", ids[9], []byte("changed"), first.Revision)
			}
			done <- err
		}()
		return <-done
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Errorf("scanned %v, want %v (the kind at the scan's revision)", got, ids)
	}
	for i, r := range revs {
		if r != start {
			t.Errorf("page %d at revision %d, want %d", i, r, start)
		}
	}
	if fmt.Sprint(mores) != "[true true false]" {
		t.Errorf("More flags %v, want [true true false]", mores)
	}
	// An error from fn ends the scan and is returned.
	stop := errors.New("stop")
	calls := 0
	if err := s.Scan(ctx, "keys", 2, func(store.Page) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Scan with a failing fn = %v after %d calls, want stop after 1", err, calls)
	}
	calls = 0
	if err := s.Scan(ctx, "policies", 2, func(p store.Page) error {
		calls++
		if len(p.Objects) != 0 || p.More {
			t.Errorf("Scan(empty kind) page = %+v, want an empty last page", p)
		}
		return nil
	}); err != nil || calls != 1 {
		t.Errorf("Scan(empty kind) = %v after %d calls, want one empty page", err, calls)
	}
}

func testCompareAndSwap(t *testing.T, s store.Store) {
	ctx := t.Context()
	base := s.Revision()
	r1, err := s.Put(ctx, "keys", "payments", []byte("v1"), 0)
	if err != nil || r1 <= base || s.Revision() != r1 {
		t.Fatalf("create = %d, %v; want a revision above %d, and Revision() = %d", r1, err, base, s.Revision())
	}
	if _, err := s.Put(ctx, "keys", "payments", []byte("again"), 0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second create: err = %v, want ErrConflict", err)
	}
	if _, err := s.Put(ctx, "keys", "payments", []byte("stale"), r1+7); !errors.Is(err, store.ErrConflict) {
		t.Errorf("update at the wrong revision: err = %v, want ErrConflict", err)
	}
	r2, err := s.Put(ctx, "keys", "payments", []byte("v2"), r1)
	if err != nil || r2 != r1+1 {
		t.Fatalf("update = %d, %v; want %d", r2, err, r1+1)
	}
	o, err := s.Get(ctx, "keys", "payments")
	if err != nil || string(o.Value) != "v2" || o.Revision != r2 || o.Kind != "keys" || o.ID != "payments" {
		t.Errorf("Get = %+v, %v; want v2 at %d", o, err, r2)
	}
	if _, err := s.Get(ctx, "keys", "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(missing) err = %v", err)
	}
	if _, err := s.Get(ctx, "nodes", "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(missing kind) err = %v", err)
	}
	if _, err := s.Delete(ctx, "keys", "payments", r1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Delete at the wrong revision: err = %v", err)
	}
	if _, err := s.Delete(ctx, "keys", "payments", 0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Delete of a present object at revision 0: err = %v, want ErrConflict", err)
	}
	if r, err := s.Delete(ctx, "keys", "payments", r2); err != nil || r != r2+1 {
		t.Errorf("Delete = %d, %v; want %d", r, err, r2+1)
	}
	if _, err := s.Delete(ctx, "keys", "payments", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Delete(missing) err = %v", err)
	}
	if _, err := s.Delete(ctx, "keys", "payments", r2); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Delete(missing) at a revision: err = %v, want ErrConflict", err)
	}
	if got := s.Revision(); got != r2+1 {
		t.Errorf("Revision() = %d, want %d (failed writes must not advance it)", got, r2+1)
	}
}

func testPersistence(t *testing.T, s store.Store, open Opener) {
	ctx := t.Context()
	var revs []uint64
	for i := range 5 {
		r, err := s.Put(ctx, "keys", fmt.Sprintf("k%d", i), []byte{byte(i)}, 0)
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r)
	}
	base := revs[0] - 1
	s.Close()
	s2, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Revision() != base+5 {
		t.Errorf("Revision() after reopen = %d, want %d (the last write's)", s2.Revision(), base+5)
	}
	objs, rev, err := s2.List(ctx, "keys")
	if err != nil || len(objs) != 5 || rev != base+5 {
		t.Fatalf("List after reopen = %d objects at %d, %v; want 5 at %d", len(objs), rev, err, base+5)
	}
	for i, o := range objs {
		if o.ID != fmt.Sprintf("k%d", i) || !bytes.Equal(o.Value, []byte{byte(i)}) || o.Revision != base+uint64(i)+1 {
			t.Errorf("object %d = %+v", i, o)
		}
	}
	if r, err := s2.Put(ctx, "keys", "k5", nil, 0); err != nil || r != base+6 {
		t.Errorf("Put after reopen = %d, %v; want revision %d", r, err, base+6)
	}
	// A watcher resumes from a revision committed before the reopen.
	w, err := s2.Watch(ctx, base+3)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint64{base + 4, base + 5, base + 6} {
		if ev := next(t, w); ev.Revision != want {
			t.Errorf("event revision = %d, want %d", ev.Revision, want)
		}
	}
}

func testWatchBacklogThenLive(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ra, _ := s.Put(ctx, "keys", "a", []byte("1"), 0)
	base := ra - 1
	rb, _ := s.Put(ctx, "keys", "b", []byte("1"), 0)
	w, err := s.Watch(ctx, ra)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		rev := rb
		for i := range 100 {
			var err error
			if rev, err = s.Put(ctx, "keys", "b", []byte{byte(i)}, rev); err != nil {
				t.Error(err)
				return
			}
		}
		s.Delete(ctx, "keys", "a", ra)
	})
	var got []store.Event
	for len(got) < 102 {
		got = append(got, next(t, w))
	}
	wg.Wait()
	for i, ev := range got {
		if want := base + uint64(i) + 2; ev.Revision != want || ev.Object.Revision != want {
			t.Fatalf("event %d has revision %d (object %d), want %d (order or gap)", i, ev.Revision, ev.Object.Revision, want)
		}
	}
	if last := got[len(got)-1]; last.Type != store.Delete || last.Object.ID != "a" || last.Object.Kind != "keys" || len(last.Object.Value) != 0 {
		t.Errorf("last event = %+v, want delete of a", last)
	}
	if got[0].Type != store.Put || got[0].Object.ID != "b" || string(got[0].Object.Value) != "1" {
		t.Errorf("first event = %+v, want put of b", got[0])
	}
}

func testWatchBounds(t *testing.T, s store.Store) {
	ctx := t.Context()
	r, err := s.Put(ctx, "keys", "k", []byte("v"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Watch(ctx, r+10); err == nil {
		t.Error("Watch from a future revision succeeded")
	}
	// A watch from the current revision waits for the next commit.
	wctx, cancel := context.WithCancel(ctx)
	w, err := s.Watch(wctx, r)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Put(ctx, "keys", "k", []byte("w"), r)
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, w); ev.Revision != r2 || string(ev.Object.Value) != "w" {
		t.Errorf("event = %+v, want the put at %d", ev, r2)
	}
	// Its context ends it: the channel closes.
	cancel()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case _, ok := <-w.C():
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("the channel stayed open after the watch's context ended")
		}
	}
}

func testSlowWatcherIsCut(t *testing.T, s store.Store) {
	ctx := t.Context()
	w, err := s.Watch(ctx, s.Revision())
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads: the channel buffer and the queue fill. Eight writers,
	// so a store whose commits wait for a disk share the waits.
	total := store.MaxWatchQueue + 2000
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < total; i += 8 {
				if _, err := s.Put(ctx, "keys", fmt.Sprintf("k%d", i), []byte{byte(i)}, 0); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	n := 0
	for range w.C() {
		n++
	}
	if !errors.Is(w.Err(), store.ErrSlowWatcher) {
		t.Errorf("Err() = %v, want ErrSlowWatcher", w.Err())
	}
	if n == 0 || n >= total {
		t.Errorf("delivered %d events before the cut", n)
	}
}

func testCloseEndsWatchers(t *testing.T, s store.Store) {
	w, err := s.Watch(t.Context(), s.Revision())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for range w.C() {
	}
	if !errors.Is(w.Err(), store.ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", w.Err())
	}
	if _, err := s.Put(t.Context(), "keys", "x", nil, 0); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Put after Close: %v", err)
	}
	if _, err := s.Watch(t.Context(), 0); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Watch after Close: %v", err)
	}
}

func testConcurrentCAS(t *testing.T, s store.Store) {
	ctx := t.Context()
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
					} else if !errors.Is(err, store.ErrConflict) {
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

// testNames: ids as keys have them (slashes, colons, dots) come back as
// they went in, and a kind never lists another's objects.
func testNames(t *testing.T, s store.Store) {
	ctx := t.Context()
	from := s.Revision()
	ids := []string{"team/app:key.v1", "a", "a/b/c", "keysx"}
	for _, id := range ids {
		if _, err := s.Put(ctx, "keys", id, []byte(id), 0); err != nil {
			t.Fatalf("Put %q: %v", id, err)
		}
	}
	if _, err := s.Put(ctx, "keysx", "other", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if o, err := s.Get(ctx, "keys", id); err != nil || o.ID != id || string(o.Value) != id {
			t.Errorf("Get %q = %+v, %v", id, o, err)
		}
	}
	objs, _, err := s.List(ctx, "keys")
	if err != nil || len(objs) != len(ids) {
		t.Fatalf("List(keys) = %d objects, %v; want %d", len(objs), err, len(ids))
	}
	for _, o := range objs {
		if o.Kind != "keys" || string(o.Value) != o.ID {
			t.Errorf("listed %+v", o)
		}
	}
	w, err := s.Watch(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if ev := next(t, w); ev.Object.ID != id || ev.Object.Kind != "keys" {
			t.Errorf("event %+v, want keys/%s", ev.Object, id)
		}
	}
	if ev := next(t, w); ev.Object.Kind != "keysx" || ev.Object.ID != "other" {
		t.Errorf("event %+v, want keysx/other", ev.Object)
	}
	for _, bad := range []struct {
		kind store.Kind
		id   string
	}{{"", "x"}, {"keys", ""}, {"a/b", "x"}} {
		if _, err := s.Put(ctx, bad.kind, bad.id, nil, 0); err == nil {
			t.Errorf("Put(%q, %q) succeeded", bad.kind, bad.id)
		}
	}
}

func testBoundedValue(t *testing.T, s store.Store) {
	ctx := t.Context()
	before := s.Revision()
	if _, err := s.Put(ctx, "keys", "big", make([]byte, store.MaxValue+1), 0); err == nil {
		t.Error("a value over MaxValue was stored")
	}
	if _, err := s.Get(ctx, "keys", "big"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after a refused Put: %v, want ErrNotFound", err)
	}
	if s.Revision() != before {
		t.Errorf("a refused Put moved the revision from %d to %d", before, s.Revision())
	}
	if _, err := s.Put(ctx, "keys", "max", make([]byte, store.MaxValue), 0); err != nil {
		t.Errorf("a value of MaxValue bytes: %v", err)
	}
}

// next is the watcher's next event, failing the test if the channel
// closes or nothing comes for 30 s.
func next(t *testing.T, w *store.Watcher) store.Event {
	t.Helper()
	select {
	case ev, ok := <-w.C():
		if !ok {
			t.Fatalf("watch ended: %v", w.Err())
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no event in 30 s")
	}
	return store.Event{}
}
