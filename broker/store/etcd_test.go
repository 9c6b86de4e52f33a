package store_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/store/storetest"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

var prefixes atomic.Int64

// freshPrefix is a prefix no other test of this run uses.
func freshPrefix() string { return fmt.Sprintf("/kbtest/%d/", prefixes.Add(1)) }

func openEtcd(t *testing.T, endpoints []string, prefix string) *store.Etcd {
	t.Helper()
	s, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: endpoints, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEtcd runs the conformance suite on the etcd store, against a real
// etcd member; a reopen is a new client on the same prefix.
func TestEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		prefix := freshPrefix()
		return func() (store.Store, error) {
			return store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: prefix})
		}
	})
}

// Two central nodes on one prefix see one store: a write at either is read,
// watched and compared-and-swapped at the other, and each one's Revision
// follows the other's commits. Another prefix sees none of it.
func TestEtcdSharedByTwoNodes(t *testing.T) {
	c := etcdtest.Start(t, 1)
	prefix := freshPrefix()
	a, b := openEtcd(t, c.Endpoints(), prefix), openEtcd(t, c.Endpoints(), prefix)
	other := openEtcd(t, c.Endpoints(), freshPrefix())
	ctx := t.Context()
	w, err := b.Watch(ctx, b.Revision())
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.Put(ctx, "keys", "k", []byte("from a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if o, err := b.Get(ctx, "keys", "k"); err != nil || string(o.Value) != "from a" || o.Revision != r {
		t.Errorf("b.Get = %+v, %v", o, err)
	}
	select {
	case ev := <-w.C():
		if ev.Revision != r || ev.Object.ID != "k" {
			t.Errorf("b's watcher saw %+v, want the put at %d", ev, r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("b's watcher saw nothing")
	}
	if _, err := b.Put(ctx, "keys", "k", []byte("stale"), 0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("b's create of a's object: %v, want ErrConflict", err)
	}
	r2, err := b.Put(ctx, "keys", "k", []byte("from b"), r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Put(ctx, "keys", "k", []byte("lost"), r); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a's update at the old revision: %v, want ErrConflict (a lost update)", err)
	}
	// a learns b's revision from its follower, without a call of its own.
	deadline := time.Now().Add(30 * time.Second)
	for a.Revision() < r2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.Revision() < r2 {
		t.Errorf("a.Revision() = %d, want at least %d", a.Revision(), r2)
	}
	if objs, _, err := other.List(ctx, "keys"); err != nil || len(objs) != 0 {
		t.Errorf("another prefix lists %d objects, %v", len(objs), err)
	}
	if _, err := other.Get(ctx, "keys", "k"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("another prefix's Get: %v, want ErrNotFound", err)
	}
}

// A revision etcd compacted away gives ErrCompacted, and the watcher
// resyncs with List; a revision it keeps still resumes.
func TestEtcdWatchCompacted(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := openEtcd(t, c.Endpoints(), freshPrefix())
	ctx := t.Context()
	var revs []uint64
	rev := uint64(0)
	for i := range 30 {
		var err error
		if rev, err = s.Put(ctx, "keys", "k", []byte{byte(i)}, rev); err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}
	if _, err := c.Client(t).Compact(ctx, int64(revs[20])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Watch(ctx, revs[2]); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("Watch(%d) after compaction at %d: err = %v, want ErrCompacted", revs[2], revs[20], err)
	}
	w, err := s.Watch(ctx, revs[25])
	if err != nil {
		t.Fatalf("Watch(%d) = %v", revs[25], err)
	}
	if ev := <-w.C(); ev.Revision != revs[26] {
		t.Errorf("first event = %d, want %d", ev.Revision, revs[26])
	}
}

// A watcher resumes at another member of a three-member cluster from the
// revision it last handled: revisions are the cluster's.
func TestEtcdResumeAtAnotherMember(t *testing.T) {
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	eps := c.Endpoints()
	a := openEtcd(t, eps[:1], prefix)
	b := openEtcd(t, eps[2:], prefix)
	ctx := t.Context()
	var revs []uint64
	for i := range 5 {
		r, err := a.Put(ctx, "keys", fmt.Sprintf("k%d", i), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r)
	}
	w, err := b.Watch(ctx, revs[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range revs[2:] {
		select {
		case ev := <-w.C():
			if ev.Revision != want {
				t.Errorf("event at %d, want %d", ev.Revision, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no event %d at the other member", want)
		}
	}
}
