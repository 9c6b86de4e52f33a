package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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

// One node leads at a time; when it gives up, another is elected.
func TestEtcdLeadOneAtATime(t *testing.T) {
	c := etcdtest.Start(t, 1)
	prefix := freshPrefix()
	a, b := openEtcd(t, c.Endpoints(), prefix), openEtcd(t, c.Endpoints(), prefix)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var leading, overlaps atomic.Int32
	type leader struct {
		started chan struct{}
		release chan struct{}
	}
	run := func(l leader) func(context.Context) {
		return func(ctx context.Context) {
			if leading.Add(1) > 1 {
				overlaps.Add(1)
			}
			defer leading.Add(-1)
			close(l.started)
			select {
			case <-l.release:
			case <-ctx.Done():
			}
		}
	}
	la := leader{make(chan struct{}), make(chan struct{})}
	lb := leader{make(chan struct{}), make(chan struct{})}
	doneA, doneB := make(chan struct{}), make(chan struct{})
	go func() { defer close(doneA); store.Lead(ctx, a, "sweep", "a", run(la)) }()
	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not happen", what)
		}
	}
	wait(la.started, "a leading")
	go func() { defer close(doneB); store.Lead(ctx, b, "sweep", "b", run(lb)) }()
	select {
	case <-lb.started:
		t.Fatal("b leads while a does")
	default:
	}
	close(la.release) // a's run returns: a resigns, b is elected
	wait(lb.started, "b leading after a resigned")
	close(lb.release)
	cancel()
	<-doneA
	<-doneB
	if overlaps.Load() != 0 {
		t.Errorf("%d times two nodes led at once", overlaps.Load())
	}
}

// A write made under a leadership that is gone — its lease revoked, as
// when the leader is killed or cut off and its lease runs out — is
// refused with ErrFenced, while the leader's writes succeed and its lost
// races are still ErrConflict.
func TestEtcdFenceRefusesOldLeader(t *testing.T) {
	c := etcdtest.Start(t, 1)
	prefix := freshPrefix()
	s := openEtcd(t, c.Endpoints(), prefix)
	cli := c.Client(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	led := make(chan context.Context, 1)
	go store.Lead(ctx, s, "sweep", "a", func(ctx context.Context) {
		led <- ctx
		<-ctx.Done()
	})
	var lctx context.Context
	select {
	case lctx = <-led:
	case <-time.After(30 * time.Second):
		t.Fatal("not elected")
	}
	r, err := s.Put(lctx, "keys", "k", []byte("by the leader"), 0)
	if err != nil {
		t.Fatalf("the leader's write: %v", err)
	}
	if _, err := s.Put(lctx, "keys", "k", []byte("stale"), 0); !errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrFenced) {
		t.Errorf("the leader's lost race: %v, want ErrConflict", err)
	}
	// The lease ends: the write in flight keeps the old leadership's
	// fence but must not land.
	inFlight := context.WithoutCancel(lctx)
	resp, err := cli.Get(t.Context(), prefix+"elect/sweep/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("election keys: %d, %v", len(resp.Kvs), err)
	}
	if _, err := cli.Revoke(t.Context(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(inFlight, "keys", "k", []byte("after the lease"), r); !errors.Is(err, store.ErrFenced) {
		t.Errorf("a write under a revoked leadership: %v, want ErrFenced", err)
	}
	if _, err := s.Delete(inFlight, "keys", "k", r); !errors.Is(err, store.ErrFenced) {
		t.Errorf("a delete under a revoked leadership: %v, want ErrFenced", err)
	}
	if o, err := s.Get(t.Context(), "keys", "k"); err != nil || string(o.Value) != "by the leader" {
		t.Errorf("the object after the fenced writes: %+v, %v", o, err)
	}
	select {
	case <-lctx.Done():
	case <-time.After(30 * time.Second):
		t.Error("the leader's context outlived its lease")
	}
}

// What a node announces is present while the node lives and gone at once
// when it stops, or when its lease runs out (revoked here, as when the node
// is killed and LeaseTTL passes).
func TestEtcdPresence(t *testing.T) {
	c := etcdtest.Start(t, 1)
	prefix := freshPrefix()
	a, b := openEtcd(t, c.Endpoints(), prefix), openEtcd(t, c.Endpoints(), prefix)
	ctx := t.Context()
	actx, stopA := context.WithCancel(ctx)
	doneA := make(chan struct{})
	go func() { defer close(doneA); a.Announce(actx, "centrals", "central-1", []byte("127.0.0.1:7443")) }()
	go b.Announce(ctx, "centrals", "central-2", []byte("127.0.0.1:7444"))
	present := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			objs, err := b.Present(ctx, "centrals")
			var got []string
			for _, o := range objs {
				got = append(got, o.ID+"="+string(o.Value))
			}
			if err == nil && fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("present = %v, %v; want %v", got, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	present("central-1=127.0.0.1:7443", "central-2=127.0.0.1:7444")
	stopA()
	<-doneA
	present("central-2=127.0.0.1:7444")
	// b's lease ends without b stopping: it is gone, then announced again.
	resp, err := c.Client(t).Get(ctx, prefix+"present/centrals/central-2")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("central-2's presence: %v", err)
	}
	if _, err := c.Client(t).Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	present("central-2=127.0.0.1:7444")
}

// TestEtcdQuietFeedAdvances: a watcher of a prefix nobody writes still
// advances — progress events carry etcd's revision past other prefixes'
// writes — so a consumer resumes from a recent revision, not one etcd
// compacts away; and after a compaction past its last object change, a
// watcher resumed from the progress revision needs no resync.
func TestEtcdQuietFeedAdvances(t *testing.T) {
	c := etcdtest.Start(t, 1)
	quiet := openEtcd(t, c.Endpoints(), freshPrefix())
	busy := openEtcd(t, c.Endpoints(), freshPrefix())
	ctx := t.Context()
	if _, err := quiet.Put(ctx, "keys", "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	w, err := quiet.Watch(ctx, quiet.Revision())
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := range 20 {
		if last, err = busy.Put(ctx, "keys", "other", []byte{byte(i)}, last); err != nil {
			t.Fatal(err)
		}
	}
	var progress uint64
	for progress < last {
		select {
		case ev, ok := <-w.C():
			if !ok {
				t.Fatalf("feed ended: %v", w.Err())
			}
			if ev.Type != store.Progress {
				t.Fatalf("event %+v on a prefix nobody wrote", ev)
			}
			progress = ev.Revision
		case <-time.After(30 * time.Second):
			t.Fatalf("no progress to revision %d (last %d)", last, progress)
		}
	}
	if _, err := c.Client(t).Compact(ctx, int64(last)); err != nil {
		t.Fatal(err)
	}
	if _, err := quiet.Watch(ctx, progress); err != nil {
		t.Errorf("Watch from the progress revision %d after compaction at %d: %v", progress, last, err)
	}
	if time.Since(quiet.Heard()) > time.Minute {
		t.Errorf("Heard = %v while etcd answers", quiet.Heard())
	}
}

// TestEtcdUnreachableIsUnavailable: with etcd gone, every request ends
// within the request timeout as ErrUnavailable — retryable elsewhere —
// and never as the caller's own deadline or an unnamed error.
func TestEtcdUnreachableIsUnavailable(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: freshPrefix(), RequestTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := t.Context()
	rev, err := s.Put(ctx, "keys", "k", []byte("v"), 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Members[0].Stop()
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s with etcd gone: %v, want ErrUnavailable (and not DeadlineExceeded)", op, err)
		}
	}
	_, err = s.Put(ctx, "keys", "k", []byte("w"), rev)
	check("Put", err)
	_, err = s.Get(ctx, "keys", "k")
	check("Get", err)
	_, _, err = s.List(ctx, "keys")
	check("List", err)
	check("Claim", s.Claim(ctx, "nonces", "n", time.Minute))
}

// TestEtcdWatchFromAProgressRevision: an edge's resume point may be a
// revision etcd made with no object change (a progress notification
// carried it: a write elsewhere in etcd). A central just started — whose
// Revision is the last object change — watches from it, and an edge
// resuming there is replayed, not sent a full snapshot; a revision etcd
// has not made is ErrFuture. (A million keys on etcd: every central restart
// sent its edges a snapshot of all of them.)
func TestEtcdWatchFromAProgressRevision(t *testing.T) {
	c := etcdtest.Start(t, 1)
	prefix := freshPrefix()
	ctx := t.Context()
	a := openEtcd(t, c.Endpoints(), prefix)
	if _, err := a.Put(ctx, "keys", "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Put(ctx, "/elsewhere", "x")
	if err != nil {
		t.Fatal(err)
	}
	progress := uint64(resp.Header.Revision)
	restarted := openEtcd(t, c.Endpoints(), prefix)
	if restarted.Revision() >= progress {
		t.Fatalf("the restarted store's Revision %d is not below the progress revision %d: the test shows nothing", restarted.Revision(), progress)
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	if _, err := restarted.Watch(wctx, progress); err != nil {
		t.Fatalf("Watch from a revision etcd made: %v", err)
	}
	if _, err := restarted.Watch(ctx, progress+1000); !errors.Is(err, store.ErrFuture) {
		t.Errorf("Watch from a revision etcd has not made: %v, want ErrFuture", err)
	}
}
