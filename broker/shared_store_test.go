package broker

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

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
	e := newEnv(t)
	etcd := etcdtest.Start(t, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	central := func() *Service {
		st, err := store.OpenEtcd(ctx, store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/shared/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		svc, err := NewService(ServiceConfig{
			Registry: NewRegistry(st, e.clock.Now), Roots: e.roots, Materials: NewMaterials(e.roots, 100, time.Hour, e.clock.Now),
			DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf-root", managed.ModeWrap: "softkms:aes-root"}, Now: e.clock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); svc.Registry().Follow(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return svc
	}
	a, b := central(), central()
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
