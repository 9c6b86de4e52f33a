package broker

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/byid"
	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/managed"
)

// TestTwoCentralsShareOneEtcd: two services over one etcd prefix, each
// following the store's feed as a central node does, serve one registry.
// A key created at one encrypts there and decrypts at the other; a
// rotation at the second is what the first encrypts with next; a disable
// at the first is refused at the second; a deletion at either is gone at
// both — each seen through the feed, with no call between the nodes.
func TestTwoCentralsShareOneEtcd(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, b := twoCentrals(t, ctx, newEnv(t), "/shared/")
	// seen waits until svc has applied the change that made k.
	seen := func(svc *Service, k *managed.Key) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		if err := svc.Registry().WaitFollowed(wctx, k.Revision); err != nil {
			t.Fatalf("the other central did not follow revision %d: %v", k.Revision, err)
		}
	}
	for _, mode := range []managed.Mode{managed.ModeDerive, managed.ModeWrap} {
		id := "shared-" + string(mode)
		k, err := a.CreateKey(ctx, CreateParams{ID: id, Type: managed.AES256GCM, Mode: mode})
		if err != nil {
			t.Fatal(err)
		}
		seen(b, k)
		ct, _, err := byid.Ops{P: a}.Encrypt(ctx, id, []byte("across centrals"), map[string]string{"t": "1"})
		if err != nil {
			t.Fatal(err)
		}
		if pt, _, _, err := (byid.Ops{P: b}).Decrypt(ctx, ct, map[string]string{"t": "1"}, ""); err != nil || !bytes.Equal(pt, []byte("across centrals")) {
			t.Fatalf("%s: decrypt at the other central = %q, %v", mode, pt, err)
		}
		// Rotated at b: a encrypts under version 2 once it has followed.
		rk, err := b.RotateKey(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		seen(a, rk)
		ct2, used, err := byid.Ops{P: a}.Encrypt(ctx, id, []byte("v2"), nil)
		if err != nil || used.Primary != 2 {
			t.Fatalf("%s: encrypt at a after b's rotation: primary %d, %v; want 2", mode, used.Primary, err)
		}
		if _, _, v, err := (byid.Ops{P: b}).Decrypt(ctx, ct2, nil, ""); err != nil || v != 2 {
			t.Errorf("%s: b decrypts a's v2 ciphertext as version %d, %v", mode, v, err)
		}
		// Disabled at a: b refuses once it has followed.
		dk, err := a.SetState(ctx, id, Disable)
		if err != nil {
			t.Fatal(err)
		}
		seen(b, dk)
		if _, _, err := (byid.Ops{P: b}).Encrypt(ctx, id, []byte("x"), nil); !errors.Is(err, managed.ErrFailedPrecondition) {
			t.Errorf("%s: encrypt at b after a's disable: %v, want FailedPrecondition", mode, err)
		}
	}
	// Concurrent rotations at both: versions stay contiguous, none lost.
	if _, err := a.CreateKey(ctx, CreateParams{ID: "busy", Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 20)
	for i := range 20 {
		svc := a
		if i%2 == 1 {
			svc = b
		}
		go func() { _, err := svc.RotateKey(ctx, "busy"); errs <- err }()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Errorf("rotation: %v", err)
		}
	}
	k, err := a.Registry().load(ctx, "busy") // the store's, not a's cache, which may not have followed b's last yet
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Versions) != 21 || k.Primary != 21 {
		t.Errorf("after 20 rotations at two centrals: %d versions, primary %d; want 21", len(k.Versions), k.Primary)
	}
	for i, v := range k.Versions {
		if v.Version != uint32(i+1) {
			t.Errorf("version %d at position %d: not contiguous", v.Version, i)
		}
	}
}

// centralOnEtcd is a service on the etcd prefix whose registry follows the
// store's feed until ctx ends, as a central node's does.
func centralOnEtcd(t *testing.T, ctx context.Context, e *env, endpoints []string, prefix string) (*Service, *store.Etcd) {
	t.Helper()
	st, err := store.OpenEtcd(ctx, store.EtcdConfig{Endpoints: endpoints, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := NewService(ServiceConfig{
		Registry: NewRegistry(st, e.clock.Now), Roots: e.roots, Materials: NewMaterials(e.roots, 100, time.Hour, e.clock.Now),
		DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf-root", managed.ModeWrap: "softkms:aes-root"}, Now: e.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); svc.Registry().Follow(fctx) }()
	t.Cleanup(func() { stop(); <-done; st.Close() })
	return svc, st
}

// twoCentrals is two services on one prefix of a new etcd member, each
// following the store's feed until ctx ends (centralOnEtcd), with a
// derive-mode AES-256-GCM key of each of ids made at a.
func twoCentrals(t *testing.T, ctx context.Context, e *env, prefix string, ids ...string) (a, b *Service) {
	t.Helper()
	etcd := etcdtest.Start(t, 1)
	a, _ = centralOnEtcd(t, ctx, e, etcd.Endpoints(), prefix)
	b, _ = centralOnEtcd(t, ctx, e, etcd.Endpoints(), prefix)
	for _, id := range ids {
		if _, err := a.CreateKey(ctx, CreateParams{ID: id, Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// TestSweepOnceAcrossLeaders: with two centrals on one etcd, a due rotation
// happens exactly once — the elected sweeper rotates it, the next leader
// finds it done; and a sweep whose leadership ended before it wrote (its
// lease revoked, as when a leader is killed) is fenced off, leaving the
// rotation to the next leader, once.
func TestSweepOnceAcrossLeaders(t *testing.T) {
	e := newEnv(t)
	etcd := etcdtest.Start(t, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, sta := centralOnEtcd(t, ctx, e, etcd.Endpoints(), "/sweep/")
	b, stb := centralOnEtcd(t, ctx, e, etcd.Endpoints(), "/sweep/")
	period := managed.MinRotationPeriod
	if _, err := a.CreateKey(ctx, CreateParams{ID: "due", Type: managed.AES256GCM, Mode: managed.ModeDerive, RotationPeriod: period}); err != nil {
		t.Fatal(err)
	}
	// sweepAsLeader elects svc, sweeps once as the central node's loop
	// does (after catching up with the feed), and gives the leadership up.
	// revoke, when set, ends the lease before the sweep writes.
	sweepAsLeader := func(svc *Service, st *store.Etcd, name string, revoke bool) ([]string, error) {
		t.Helper()
		lctx, lcancel := context.WithCancel(ctx)
		defer lcancel()
		var rotated []string
		var err error
		store.Lead(lctx, st, "sweep", name, func(run context.Context) {
			defer lcancel()
			if err = svc.Registry().WaitFollowed(run, st.Revision()); err != nil {
				return
			}
			if revoke {
				resp, gerr := etcd.Client(t).Get(ctx, "/sweep/elect/sweep/", clientv3.WithPrefix())
				if gerr != nil || len(resp.Kvs) != 1 {
					t.Fatalf("election keys: %v", gerr)
				}
				if _, rerr := etcd.Client(t).Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); rerr != nil {
					t.Fatal(rerr)
				}
				run = context.WithoutCancel(run) // the sweep was already under way
			}
			rotated, _, err = svc.Sweep(run, nil)
		})
		return rotated, err
	}
	versions := func() int {
		k, err := a.Registry().load(ctx, "due")
		if err != nil {
			t.Fatal(err)
		}
		return len(k.Versions)
	}
	e.clock.Advance(period + time.Minute)
	if rotated, err := sweepAsLeader(a, sta, "a", false); err != nil || len(rotated) != 1 {
		t.Fatalf("first leader's sweep: %v, %v; want the due key rotated", rotated, err)
	}
	if rotated, err := sweepAsLeader(b, stb, "b", false); err != nil || len(rotated) != 0 {
		t.Errorf("next leader's sweep: %v, %v; want nothing (rotated already)", rotated, err)
	}
	if n := versions(); n != 2 {
		t.Fatalf("%d versions after one period, want 2", n)
	}
	e.clock.Advance(period + time.Minute)
	if rotated, err := sweepAsLeader(a, sta, "a", true); !errors.Is(err, store.ErrFenced) || len(rotated) != 0 {
		t.Errorf("a sweep whose lease ended: %v, %v; want ErrFenced and nothing rotated", rotated, err)
	}
	if n := versions(); n != 2 {
		t.Fatalf("%d versions after the fenced sweep, want 2", n)
	}
	if rotated, err := sweepAsLeader(b, stb, "b", false); err != nil || len(rotated) != 1 {
		t.Errorf("the next leader's sweep: %v, %v; want the due key rotated", rotated, err)
	}
	if n := versions(); n != 3 {
		t.Errorf("%d versions after two periods, want 3 (each rotation exactly once)", n)
	}
}

// TestRegistryFailsClosedCutOffFromEtcd: a central whose store has gone
// silent (its only etcd member stopped) refuses writes and, past its
// bound, serves no key from its cache — with codes a client retries at
// another central — rather than serve a key another central may have
// disabled meanwhile.
func TestRegistryFailsClosedCutOffFromEtcd(t *testing.T) {
	e := newEnv(t)
	etcd := etcdtest.Start(t, 1)
	ctx := t.Context()
	svc, st := centralOnEtcd(t, ctx, e, etcd.Endpoints(), "/cutoff/")
	svc.Registry().FailClosedAfter(3 * time.Second)
	k, err := svc.CreateKey(ctx, CreateParams{ID: "cut", Type: managed.AES256GCM, Mode: managed.ModeDerive})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Registry().Get(ctx, k.ID); err != nil {
		t.Fatalf("Get while etcd answers: %v", err)
	}
	etcd.Members[0].Stop()
	deadline := time.Now().Add(time.Minute)
	for svc.Registry().Current() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("still current a minute after etcd stopped (heard %v)", st.Heard())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := svc.Registry().Get(ctx, k.ID); !errors.Is(err, managed.ErrUnavailable) {
		t.Errorf("Get of a cached key, cut off: %v, want ErrUnavailable", err)
	}
	if _, err := svc.RotateKey(ctx, k.ID); !errors.Is(err, managed.ErrUnavailable) {
		t.Errorf("RotateKey, cut off: %v, want ErrUnavailable", err)
	}
	if _, _, err := svc.Registry().List(ctx); !errors.Is(err, managed.ErrUnavailable) {
		t.Errorf("List, cut off: %v, want ErrUnavailable", err)
	}
}
